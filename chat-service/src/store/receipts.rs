//! Read and delivery receipts: how far each member has got in a room.

use proto::chat::v1::{ReadMark, ReceiptKind};
use sqlx::Row;
use tracing::Instrument;

use super::Store;
use crate::error::ChatError;

impl Store {
    /// Members' read marks, furthest first (at most `limit`; members who
    /// read nothing are left out).
    pub(crate) async fn read_marks(
        &self,
        room_id: &str,
        limit: u32,
    ) -> Result<Vec<ReadMark>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT user_id, read_seq FROM members WHERE room_id = $1 AND read_seq > 0 \
                 ORDER BY read_seq DESC, user_id LIMIT $2",
            )
            .bind(room_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(ReadMark {
                        user_id: r.try_get("user_id")?,
                        seq: r.try_get("read_seq")?,
                    })
                })
                .collect()
        }
        .instrument(self.span("sql SELECT members"))
        .await
    }

    /// Moves a member's mark forward to `seq` (a read mark also moves the
    /// delivered mark); returns the mark afterwards and whether it moved.
    /// `None` when the user is not a member.
    pub(crate) async fn mark_receipt(
        &self,
        room_id: &str,
        user_id: &str,
        kind: ReceiptKind,
        seq: i64,
    ) -> Result<Option<(i64, bool)>, ChatError> {
        async {
            let (sql, column) = match kind {
                ReceiptKind::Read => (
                    "UPDATE members SET read_seq = $1, \
                       delivered_seq = CASE WHEN delivered_seq < $1 THEN $1 ELSE delivered_seq END \
                     WHERE room_id = $2 AND user_id = $3 AND read_seq < $1",
                    "read_seq",
                ),
                _ => (
                    "UPDATE members SET delivered_seq = $1 \
                     WHERE room_id = $2 AND user_id = $3 AND delivered_seq < $1",
                    "delivered_seq",
                ),
            };
            let moved = sqlx::query(sql)
                .bind(seq)
                .bind(room_id.to_string())
                .bind(user_id.to_string())
                .execute(&self.reader)
                .await?
                .rows_affected()
                > 0;
            let row = sqlx::query(&format!(
                "SELECT {column} AS mark FROM members WHERE room_id = $1 AND user_id = $2"
            ))
            .bind(room_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
            Ok(row
                .map(|r| r.try_get::<i64, _>("mark"))
                .transpose()?
                .map(|mark| (mark, moved)))
        }
        .instrument(self.span("sql UPDATE members"))
        .await
    }
}
