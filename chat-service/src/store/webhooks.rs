//! The durable webhook queue: each endpoint's cursor in the log, the
//! deliveries planned from it, their attempts, and the dead letters.

use proto::chat::v1::WebhookDelivery;
use sqlx::Row;
use tracing::Instrument;

use super::{Bind, Params, Store};
use crate::error::ChatError;

/// A delivery to store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NewDelivery {
    /// Also the idempotency key.
    pub id: String,
    pub kind: String,
    /// The user who must have no live connection (offline notifications).
    pub user_id: Option<String>,
    pub body: String,
}

/// A delivery claimed for one attempt.
#[derive(Debug, Clone)]
pub(crate) struct Claimed {
    pub id: String,
    pub kind: String,
    pub user_id: Option<String>,
    pub body: String,
    /// Attempts made before this one.
    pub attempts: u32,
}

/// What the recipient (or the way to it) answered to one attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// 2xx, or dropped because the user was online: done.
    Done,
    /// Try again at `next_at`.
    Retry { next_at: i64, error: String },
    /// Attempts used up: a dead letter.
    Dead { at: i64, error: String },
}

const DELIVERY_COLUMNS: &str =
    "id, endpoint, kind, body, attempts, last_error, created_at, dead_at";

impl Store {
    /// The endpoint's cursor; a new endpoint starts at the log's head (it
    /// gets what is appended from now on, not the history).
    pub(crate) async fn webhook_cursor(&self, endpoint: &str) -> Result<i64, ChatError> {
        async {
            let row = sqlx::query("SELECT position FROM webhook_cursors WHERE endpoint = $1")
                .bind(endpoint.to_string())
                .fetch_optional(&self.reader)
                .await?;
            if let Some(row) = row {
                return Ok(row.try_get("position")?);
            }
            let head = self.log_bounds().await?.head;
            sqlx::query(
                "INSERT INTO webhook_cursors (endpoint, position) VALUES ($1, $2) \
                 ON CONFLICT (endpoint) DO NOTHING",
            )
            .bind(endpoint.to_string())
            .bind(head)
            .execute(&self.reader)
            .await?;
            let row = sqlx::query("SELECT position FROM webhook_cursors WHERE endpoint = $1")
                .bind(endpoint.to_string())
                .fetch_one(&self.reader)
                .await?;
            Ok(row.try_get("position")?)
        }
        .instrument(self.span("sql SELECT webhook_cursors"))
        .await
    }

    /// Stores `deliveries` for `endpoint` (once each: a repeated id is
    /// skipped) and, in the same transaction, moves its cursor to
    /// `position` when given.
    pub(crate) async fn enqueue_webhooks(
        &self,
        endpoint: &str,
        deliveries: &[NewDelivery],
        position: Option<i64>,
        now: i64,
    ) -> Result<(), ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            for delivery in deliveries {
                sqlx::query(
                    "INSERT INTO webhook_deliveries \
                     (id, endpoint, kind, user_id, body, attempts, next_at, created_at) \
                     VALUES ($1, $2, $3, $4, $5, 0, $6, $7) ON CONFLICT (id) DO NOTHING",
                )
                .bind(delivery.id.clone())
                .bind(endpoint.to_string())
                .bind(delivery.kind.clone())
                .bind(delivery.user_id.clone())
                .bind(delivery.body.clone())
                .bind(now)
                .bind(now)
                .execute(&mut *tx)
                .await?;
            }
            if let Some(position) = position {
                sqlx::query(
                    "UPDATE webhook_cursors SET position = $1 \
                     WHERE endpoint = $2 AND position < $1",
                )
                .bind(position)
                .bind(endpoint.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .instrument(self.span("sql INSERT webhook_deliveries"))
        .await
    }

    /// Claims up to `limit` of the endpoint's due deliveries: each is
    /// pushed to `lease_until`, so no other dispatcher (replica) takes it
    /// while the attempt runs, and a crashed attempt is retried then.
    pub(crate) async fn claim_webhooks(
        &self,
        endpoint: &str,
        now: i64,
        lease_until: i64,
        limit: u32,
    ) -> Result<Vec<Claimed>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT id, kind, user_id, body, attempts, next_at FROM webhook_deliveries \
                 WHERE endpoint = $1 AND dead_at IS NULL AND next_at <= $2 \
                 ORDER BY next_at, created_at, id LIMIT $3",
            )
            .bind(endpoint.to_string())
            .bind(now)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            let mut claimed = Vec::with_capacity(rows.len());
            for row in rows {
                let id: String = row.try_get("id")?;
                let due: i64 = row.try_get("next_at")?;
                let taken = sqlx::query(
                    "UPDATE webhook_deliveries SET next_at = $1 \
                     WHERE id = $2 AND next_at = $3 AND dead_at IS NULL",
                )
                .bind(lease_until)
                .bind(id.clone())
                .bind(due)
                .execute(&self.reader)
                .await?
                .rows_affected();
                if taken == 1 {
                    let attempts: i64 = row.try_get("attempts")?;
                    claimed.push(Claimed {
                        id,
                        kind: row.try_get("kind")?,
                        user_id: row.try_get("user_id")?,
                        body: row.try_get("body")?,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                    });
                }
            }
            Ok(claimed)
        }
        .instrument(self.span("sql UPDATE webhook_deliveries"))
        .await
    }

    /// Records an attempt's outcome.
    pub(crate) async fn finish_webhook(
        &self,
        id: &str,
        outcome: &Outcome,
    ) -> Result<(), ChatError> {
        async {
            let query = match outcome {
                Outcome::Done => {
                    sqlx::query("DELETE FROM webhook_deliveries WHERE id = $1").bind(id.to_string())
                }
                Outcome::Retry { next_at, error } => sqlx::query(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, next_at = $1, \
                     last_error = $2 WHERE id = $3",
                )
                .bind(*next_at)
                .bind(error.clone())
                .bind(id.to_string()),
                Outcome::Dead { at, error } => sqlx::query(
                    "UPDATE webhook_deliveries SET attempts = attempts + 1, dead_at = $1, \
                     last_error = $2 WHERE id = $3",
                )
                .bind(*at)
                .bind(error.clone())
                .bind(id.to_string()),
            };
            query.execute(&self.reader).await?;
            Ok(())
        }
        .instrument(self.span("sql UPDATE webhook_deliveries"))
        .await
    }

    /// When the next live delivery of `endpoint` is due, if any.
    pub(crate) async fn next_webhook_due(&self, endpoint: &str) -> Result<Option<i64>, ChatError> {
        let row = sqlx::query(
            "SELECT MIN(next_at) AS due FROM webhook_deliveries \
             WHERE endpoint = $1 AND dead_at IS NULL",
        )
        .bind(endpoint.to_string())
        .fetch_one(&self.reader)
        .instrument(self.span("sql SELECT webhook_deliveries"))
        .await?;
        Ok(row.try_get("due")?)
    }

    /// Dead letters in id order, after `after`, only `endpoint`'s when given.
    pub(crate) async fn dead_webhooks(
        &self,
        endpoint: Option<&str>,
        after: Option<&str>,
        limit: u32,
    ) -> Result<Vec<WebhookDelivery>, ChatError> {
        async {
            let mut params = Params::new(self.positional);
            let mut sql = format!(
                "SELECT {DELIVERY_COLUMNS} FROM webhook_deliveries WHERE dead_at IS NOT NULL"
            );
            if let Some(endpoint) = endpoint {
                let p = params.push(Bind::Text(endpoint.to_string()));
                sql.push_str(&format!(" AND endpoint = {p}"));
            }
            if let Some(after) = after {
                let p = params.push(Bind::Text(after.to_string()));
                sql.push_str(&format!(" AND id > {p}"));
            }
            let p = params.push(Bind::Int(i64::from(limit)));
            sql.push_str(&format!(" ORDER BY id LIMIT {p}"));
            let rows = params.query(&sql).fetch_all(&self.reader).await?;
            rows.iter()
                .map(|row| {
                    let attempts: i64 = row.try_get("attempts")?;
                    let dead_at: Option<i64> = row.try_get("dead_at")?;
                    Ok(WebhookDelivery {
                        id: row.try_get("id")?,
                        endpoint: row.try_get("endpoint")?,
                        kind: row.try_get("kind")?,
                        body: row.try_get("body")?,
                        attempts: u32::try_from(attempts).unwrap_or(u32::MAX),
                        last_error: row.try_get("last_error")?,
                        created_at: row.try_get("created_at")?,
                        dead_at: dead_at.unwrap_or_default(),
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()
                .map_err(ChatError::from)
        }
        .instrument(self.span("sql SELECT webhook_deliveries"))
        .await
    }

    /// Puts dead letters back in the queue (due `now`, attempts from 0):
    /// the ones in `ids`, or with none every one of `endpoint` (or all).
    pub(crate) async fn redrive_webhooks(
        &self,
        ids: &[String],
        endpoint: Option<&str>,
        now: i64,
    ) -> Result<u64, ChatError> {
        async {
            let mut params = Params::new(self.positional);
            let mut sql = format!(
                "UPDATE webhook_deliveries SET dead_at = NULL, attempts = 0, last_error = '', \
                 next_at = {} WHERE dead_at IS NOT NULL",
                params.push(Bind::Int(now))
            );
            if !ids.is_empty() {
                let list: Vec<String> = ids
                    .iter()
                    .map(|id| params.push(Bind::Text(id.clone())))
                    .collect();
                sql.push_str(&format!(" AND id IN ({})", list.join(", ")));
            }
            if let Some(endpoint) = endpoint {
                let p = params.push(Bind::Text(endpoint.to_string()));
                sql.push_str(&format!(" AND endpoint = {p}"));
            }
            Ok(params
                .query(&sql)
                .execute(&self.reader)
                .await?
                .rows_affected())
        }
        .instrument(self.span("sql UPDATE webhook_deliveries"))
        .await
    }

    /// The users a `message.new` notifies by itself: the mentioned ones
    /// (their stored `mention` notifications) and, in a direct room, the
    /// other member. As `(user, reason, notification JSON)`.
    pub(crate) async fn message_recipients(
        &self,
        room_id: &str,
        message_id: &str,
        sender_id: &str,
    ) -> Result<Vec<(String, &'static str, Option<String>)>, ChatError> {
        async {
            let mut recipients = Vec::new();
            let mentions = sqlx::query(
                "SELECT user_id, body FROM notifications \
                 WHERE message_id = $1 AND kind = 'mention' ORDER BY user_id",
            )
            .bind(message_id.to_string())
            .fetch_all(&self.reader)
            .await?;
            for row in mentions {
                recipients.push((
                    row.try_get("user_id")?,
                    "mention",
                    Some(row.try_get("body")?),
                ));
            }
            let direct = sqlx::query(
                "SELECT m.user_id FROM rooms r JOIN members m ON m.room_id = r.id \
                 WHERE r.id = $1 AND r.visibility = 'direct' AND m.user_id <> $2 \
                 ORDER BY m.user_id",
            )
            .bind(room_id.to_string())
            .bind(sender_id.to_string())
            .fetch_all(&self.reader)
            .await?;
            for row in direct {
                let user: String = row.try_get("user_id")?;
                if !recipients.iter().any(|(u, _, _)| *u == user) {
                    recipients.push((user, "direct_message", None));
                }
            }
            Ok(recipients)
        }
        .instrument(self.span("sql SELECT notifications"))
        .await
    }
}
