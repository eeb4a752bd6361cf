//! What the clean-up job deletes: a room's log, messages and reactions
//! older than its retention, in bounded batches of short transactions on
//! the read pool (never through the group-commit writer, whose appends go
//! on between batches); and deleted rooms' tombstones.

use sqlx::Row;
use tracing::Instrument;

use super::Store;
use crate::error::ChatError;

impl Store {
    /// Live rooms whose retention is on, with their days: their own
    /// `retention_days`, else `global_days` (0: off).
    pub(crate) async fn retained_rooms(
        &self,
        global_days: u32,
    ) -> Result<Vec<(String, i64)>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT id, retention_days FROM rooms WHERE deleted_at IS NULL \
                 AND (retention_days > 0 OR (retention_days IS NULL AND $1 > 0))",
            )
            .bind(i64::from(global_days))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|row| {
                    let days: Option<i64> = row.try_get("retention_days")?;
                    Ok((row.try_get("id")?, days.unwrap_or(i64::from(global_days))))
                })
                .collect()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// Deletes the oldest log events of a room created before `cutoff`
    /// (ms), at most `batch`, with the messages they began, those messages'
    /// reactions and notifications, and records the highest seq deleted
    /// (recovery from before it is `history_truncated`). Returns how many
    /// events went; 0 when nothing older is left.
    pub(crate) async fn expire_batch(
        &self,
        room_id: &str,
        cutoff: i64,
        batch: u32,
    ) -> Result<u64, ChatError> {
        async {
            // Read outside the transaction: on SQLite a transaction that
            // reads first cannot take the write lock once the writer has
            // committed meanwhile (it would fail with SQLITE_BUSY instead of
            // waiting). Events up to `upto` never change once older than
            // the cutoff, so reading first is safe.
            let row = sqlx::query(
                "SELECT MAX(seq) AS upto, COUNT(*) AS n FROM (SELECT seq FROM room_events \
                 WHERE room_id = $1 AND created_at < $2 ORDER BY seq LIMIT $3) t",
            )
            .bind(room_id.to_string())
            .bind(cutoff)
            .bind(i64::from(batch))
            .fetch_one(&self.reader)
            .await?;
            let Some(upto) = row.try_get::<Option<i64>, _>("upto")? else {
                return Ok(0);
            };
            let mut tx = self.reader.begin().await?;
            let room = room_id.to_string();
            for sql in [
                "DELETE FROM notifications WHERE room_id = $1 AND message_id IN \
                 (SELECT id FROM messages WHERE room_id = $1 AND seq <= $2)",
                "DELETE FROM reactions WHERE message_id IN \
                 (SELECT id FROM messages WHERE room_id = $1 AND seq <= $2)",
                "DELETE FROM messages WHERE room_id = $1 AND seq <= $2",
                "DELETE FROM room_events WHERE room_id = $1 AND seq <= $2",
                "UPDATE rooms SET truncated_seq = $2 WHERE id = $1 AND truncated_seq < $2",
            ] {
                sqlx::query(sql)
                    .bind(room.clone())
                    .bind(upto)
                    .execute(&mut *tx)
                    .await?;
            }
            let deleted: i64 = row.try_get("n")?;
            tx.commit().await?;
            Ok(u64::try_from(deleted).unwrap_or_default())
        }
        .instrument(self.span("sql DELETE room_events"))
        .await
    }

    /// Sets a room's own retention (`None`: back to the global one).
    pub(crate) async fn set_retention(
        &self,
        room_id: &str,
        days: Option<u32>,
    ) -> Result<(), ChatError> {
        let changed = sqlx::query(
            "UPDATE rooms SET retention_days = $1 WHERE id = $2 AND deleted_at IS NULL",
        )
        .bind(days.map(i64::from))
        .bind(room_id.to_string())
        .execute(&self.reader)
        .instrument(self.span("sql UPDATE rooms"))
        .await?
        .rows_affected();
        if changed == 0 {
            return Err(ChatError::NotFound("room"));
        }
        Ok(())
    }

    /// Purges rooms deleted before `before` (ms): what `room.delete` left —
    /// the tombstone row and its `room.deleted` event — at most `limit`
    /// rooms. Returns how many went.
    pub(crate) async fn purge_deleted_rooms(
        &self,
        before: i64,
        limit: u32,
    ) -> Result<u64, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT id FROM rooms WHERE deleted_at IS NOT NULL AND deleted_at < $1 LIMIT $2",
            )
            .bind(before)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            let mut purged = 0;
            for row in &rows {
                let id: String = row.try_get("id")?;
                let mut tx = self.reader.begin().await?;
                for sql in [
                    "DELETE FROM room_events WHERE room_id = $1",
                    "DELETE FROM messages WHERE room_id = $1",
                    "DELETE FROM members WHERE room_id = $1",
                    "DELETE FROM room_bans WHERE room_id = $1",
                    "DELETE FROM notifications WHERE room_id = $1",
                    "DELETE FROM reports WHERE room_id = $1",
                    "DELETE FROM rooms WHERE id = $1",
                ] {
                    sqlx::query(sql).bind(id.clone()).execute(&mut *tx).await?;
                }
                tx.commit().await?;
                purged += 1;
            }
            Ok(purged)
        }
        .instrument(self.span("sql DELETE rooms"))
        .await
    }
}
