//! Users' blocks, and how two users stand: whether they share a room and
//! whether one blocks the other.

use std::collections::HashSet;

use proto::chat::v1::Block;
use sqlx::Row;
use tracing::Instrument;

use super::{Bind, Params, Store, in_list};
use crate::error::ChatError;

impl Store {
    /// `blocker` blocks `blocked` (again: nothing changes); `TooLarge` past
    /// the cap.
    pub(crate) async fn block(&self, blocker: &str, blocked: &str) -> Result<(), ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            let exists = sqlx::query(
                "SELECT blocked_id FROM user_blocks WHERE blocker_id = $1 AND blocked_id = $2",
            )
            .bind(blocker.to_string())
            .bind(blocked.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if exists.is_some() {
                tx.rollback().await?;
                return Ok(());
            }
            let count: i64 =
                sqlx::query("SELECT COUNT(*) AS n FROM user_blocks WHERE blocker_id = $1")
                    .bind(blocker.to_string())
                    .fetch_one(&mut *tx)
                    .await?
                    .try_get("n")?;
            let cap = self.caps.blocks;
            if count >= i64::from(cap) {
                tx.rollback().await?;
                return Err(ChatError::TooLarge(format!(
                    "you may block at most {cap} users"
                )));
            }
            sqlx::query(
                "INSERT INTO user_blocks (blocker_id, blocked_id, created_at) VALUES ($1, $2, $3)",
            )
            .bind(blocker.to_string())
            .bind(blocked.to_string())
            .bind(common::ids::now_ms())
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(())
        }
        .instrument(self.span("sql INSERT user_blocks"))
        .await
    }

    /// `blocker` no longer blocks `blocked`.
    pub(crate) async fn unblock(&self, blocker: &str, blocked: &str) -> Result<(), ChatError> {
        async {
            sqlx::query("DELETE FROM user_blocks WHERE blocker_id = $1 AND blocked_id = $2")
                .bind(blocker.to_string())
                .bind(blocked.to_string())
                .execute(&self.reader)
                .await?;
            Ok(())
        }
        .instrument(self.span("sql DELETE user_blocks"))
        .await
    }

    /// The users `blocker` blocks, newest first.
    pub(crate) async fn blocks(&self, blocker: &str) -> Result<Vec<Block>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT blocked_id, created_at FROM user_blocks WHERE blocker_id = $1 \
                 ORDER BY created_at DESC, blocked_id",
            )
            .bind(blocker.to_string())
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Block {
                        user_id: r.try_get("blocked_id")?,
                        created_at: r.try_get("created_at")?,
                    })
                })
                .collect()
        }
        .instrument(self.span("sql SELECT user_blocks"))
        .await
    }

    /// Those of `users` who block `user`.
    pub(crate) async fn blockers_of(
        &self,
        user: &str,
        users: &[String],
    ) -> Result<HashSet<String>, ChatError> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        async {
            let mut params = Params::new(self.positional);
            let me = params.push(Bind::Text(user.to_string()));
            let list = in_list(&mut params, users);
            let sql = format!(
                "SELECT blocker_id AS id FROM user_blocks \
                 WHERE blocked_id = {me} AND blocker_id IN ({list})"
            );
            ids(params.query(&sql).fetch_all(&self.reader).await?)
        }
        .instrument(self.span("sql SELECT user_blocks"))
        .await
    }

    /// Those of `users` who are members of a room `user` is a member of
    /// (of `room_id` only, when given).
    pub(crate) async fn sharing_a_room(
        &self,
        user: &str,
        users: &[String],
        room_id: Option<&str>,
    ) -> Result<HashSet<String>, ChatError> {
        if users.is_empty() {
            return Ok(HashSet::new());
        }
        async {
            let mut params = Params::new(self.positional);
            let me = params.push(Bind::Text(user.to_string()));
            let list = in_list(&mut params, users);
            let mut sql = format!(
                "SELECT DISTINCT them.user_id AS id FROM members mine \
                 JOIN members them ON them.room_id = mine.room_id \
                 JOIN rooms r ON r.id = mine.room_id \
                 WHERE mine.user_id = {me} AND them.user_id IN ({list}) \
                   AND r.deleted_at IS NULL"
            );
            if let Some(room_id) = room_id {
                let room = params.push(Bind::Text(room_id.to_string()));
                sql.push_str(&format!(" AND mine.room_id = {room}"));
            }
            ids(params.query(&sql).fetch_all(&self.reader).await?)
        }
        .instrument(self.span("sql SELECT members"))
        .await
    }
}

fn ids(rows: Vec<sqlx::any::AnyRow>) -> Result<HashSet<String>, ChatError> {
    rows.iter()
        .map(|r| Ok(r.try_get::<String, _>("id")?))
        .collect()
}
