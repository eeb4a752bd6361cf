//! The global order of the room logs: every appended event takes the next
//! position from the one-row `log_head` table in the transaction that stores
//! it, and `Watch` and the webhook planner read the logs by position.
//!
//! The writer locks `log_head` first in every batch ([`lock_head`]), before
//! any room row, so replicas sharing a Postgres database append one batch at
//! a time and always take the locks in the same order (no deadlock); a batch
//! takes positions only after the previous one committed, so a reader never
//! sees position k+1 before k.

use proto::chat::v1::WatchEvent;
use sqlx::{Any, AnyConnection, Row, Transaction};
use tracing::Instrument;

use super::{Bind, Params, Store};
use crate::error::ChatError;

/// The positions still stored: the oldest (`head + 1` when none is) and the
/// newest handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Bounds {
    pub oldest: i64,
    pub head: i64,
}

/// Locks the log head until the transaction on `conn` ends.
pub(crate) async fn lock_head(conn: &mut AnyConnection) -> Result<(), ChatError> {
    sqlx::query("UPDATE log_head SET position = position WHERE id = 1")
        .execute(conn)
        .await?;
    Ok(())
}

/// Takes `n` positions; returns the last of them (the first is `last - n + 1`).
pub(super) async fn take_positions(
    tx: &mut Transaction<'_, Any>,
    n: i64,
) -> Result<i64, ChatError> {
    let row =
        sqlx::query("UPDATE log_head SET position = position + $1 WHERE id = 1 RETURNING position")
            .bind(n)
            .fetch_one(&mut **tx)
            .await?;
    Ok(row.try_get("position")?)
}

impl Store {
    /// The oldest position still stored and the newest handed out.
    pub(crate) async fn log_bounds(&self) -> Result<Bounds, ChatError> {
        async {
            let row = sqlx::query(
                "SELECT h.position AS head, \
                 (SELECT MIN(position) FROM room_events) AS oldest FROM log_head h WHERE h.id = 1",
            )
            .fetch_one(&self.reader)
            .await?;
            let head: i64 = row.try_get("head")?;
            let oldest: Option<i64> = row.try_get("oldest")?;
            Ok(Bounds {
                oldest: oldest.unwrap_or(head + 1),
                head,
            })
        }
        .instrument(self.span("sql SELECT log_head"))
        .await
    }

    /// Events with a position above `after`, in order, at most `limit`;
    /// only `rooms`' when not empty.
    pub(crate) async fn log_after(
        &self,
        after: i64,
        rooms: &[String],
        limit: u32,
    ) -> Result<Vec<WatchEvent>, ChatError> {
        async {
            let mut params = Params::new(self.positional);
            let mut sql = format!(
                "SELECT position, room_id, seq, kind, body, created_at FROM room_events \
                 WHERE position > {}",
                params.push(Bind::Int(after))
            );
            if !rooms.is_empty() {
                let list: Vec<String> = rooms
                    .iter()
                    .map(|room| params.push(Bind::Text(room.clone())))
                    .collect();
                sql.push_str(&format!(" AND room_id IN ({})", list.join(", ")));
            }
            sql.push_str(&format!(
                " ORDER BY position LIMIT {}",
                params.push(Bind::Int(i64::from(limit)))
            ));
            let rows = params.query(&sql).fetch_all(&self.reader).await?;
            rows.iter()
                .map(|row| {
                    Ok(WatchEvent {
                        position: row.try_get("position")?,
                        room_id: row.try_get("room_id")?,
                        seq: row.try_get("seq")?,
                        kind: row.try_get("kind")?,
                        json: row.try_get("body")?,
                        created_at: row.try_get("created_at")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(ChatError::from)
        }
        .instrument(self.span("sql SELECT room_events"))
        .await
    }
}
