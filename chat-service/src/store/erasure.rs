//! Erasure of a user (`EraseUser`): finding what they wrote, deleting what
//! belongs to them outside the room logs, and the audit record.

use proto::chat::v1::Erasure;
use sqlx::Row;
use sqlx::any::AnyRow;
use tracing::Instrument;

use super::Store;
use crate::error::ChatError;

fn erasure_from(row: &AnyRow) -> Result<Erasure, ChatError> {
    Ok(Erasure {
        id: row.try_get("id")?,
        user_id: row.try_get("user_id")?,
        credential: row.try_get("credential")?,
        requested_by: row.try_get("requested_by")?,
        messages: row.try_get("messages")?,
        attachments: row.try_get("attachments")?,
        at: row.try_get("created_at")?,
    })
}

impl Store {
    /// `(room, message)` of the user's messages that are not tombstones
    /// yet, at most `limit`.
    pub(crate) async fn live_messages_of(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<(String, String)>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT room_id, id FROM messages \
                 WHERE sender_id = $1 AND deleted_at IS NULL LIMIT $2",
            )
            .bind(user_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|row| Ok((row.try_get("room_id")?, row.try_get("id")?)))
                .collect()
        }
        .instrument(self.span("sql SELECT messages"))
        .await
    }

    /// The rooms the user is a member of, at most `limit`.
    pub(crate) async fn memberships_of(
        &self,
        user_id: &str,
        limit: u32,
    ) -> Result<Vec<String>, ChatError> {
        let rows = sqlx::query("SELECT room_id FROM members WHERE user_id = $1 LIMIT $2")
            .bind(user_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .instrument(self.span("sql SELECT members"))
            .await?;
        rows.iter().map(|row| Ok(row.try_get("room_id")?)).collect()
    }

    /// Deletes what is the user's outside the room logs: notifications,
    /// reactions, blocks either way, bans, reports they filed, and the
    /// text of reports about their messages; any membership left.
    pub(crate) async fn forget_user(&self, user_id: &str) -> Result<(), ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            for sql in [
                "DELETE FROM notifications WHERE user_id = $1",
                "DELETE FROM reactions WHERE user_id = $1",
                "DELETE FROM user_blocks WHERE blocker_id = $1 OR blocked_id = $1",
                "DELETE FROM room_bans WHERE user_id = $1",
                "DELETE FROM reports WHERE reporter_id = $1",
                "UPDATE reports SET text = '' WHERE sender_id = $1",
                "DELETE FROM members WHERE user_id = $1",
            ] {
                sqlx::query(sql)
                    .bind(user_id.to_string())
                    .execute(&mut *tx)
                    .await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .instrument(self.span("sql DELETE notifications"))
        .await
    }

    /// Stores the audit record of an erasure.
    pub(crate) async fn record_erasure(&self, erasure: &Erasure) -> Result<(), ChatError> {
        sqlx::query(
            "INSERT INTO erasures (id, user_id, credential, requested_by, messages, \
             attachments, created_at) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        )
        .bind(erasure.id.clone())
        .bind(erasure.user_id.clone())
        .bind(erasure.credential.clone())
        .bind(erasure.requested_by.clone())
        .bind(erasure.messages)
        .bind(erasure.attachments)
        .bind(erasure.at)
        .execute(&self.reader)
        .instrument(self.span("sql INSERT erasures"))
        .await?;
        Ok(())
    }

    /// Audit records, newest first, all or one user's, at most 100.
    pub(crate) async fn erasures(&self, user_id: &str) -> Result<Vec<Erasure>, ChatError> {
        let rows = sqlx::query(
            "SELECT id, user_id, credential, requested_by, messages, attachments, created_at \
             FROM erasures WHERE ($1 = '' OR user_id = $1) ORDER BY created_at DESC, id DESC \
             LIMIT 100",
        )
        .bind(user_id.to_string())
        .fetch_all(&self.reader)
        .instrument(self.span("sql SELECT erasures"))
        .await?;
        rows.iter().map(erasure_from).collect()
    }
}
