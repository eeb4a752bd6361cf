//! A user's notifications (mentions): listing, adding and marking read.

use proto::chat::v1::Notification;
use sqlx::{Any, Row, Transaction};
use tracing::Instrument;

use super::Store;
use crate::error::ChatError;

impl Store {
    /// A user's notifications, newest first.
    pub(crate) async fn notifications(
        &self,
        user_id: &str,
        unread_only: bool,
        limit: u32,
    ) -> Result<Vec<Notification>, ChatError> {
        async {
            let filter = if unread_only {
                " AND read_at IS NULL"
            } else {
                ""
            };
            let rows = sqlx::query(&format!(
                "SELECT id, user_id, kind, room_id, message_id, body, created_at, read_at \
                 FROM notifications WHERE user_id = $1{filter} \
                 ORDER BY created_at DESC, id DESC LIMIT $2"
            ))
            .bind(user_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(Notification {
                        id: r.try_get("id")?,
                        kind: r.try_get("kind")?,
                        room_id: r.try_get("room_id")?,
                        message_id: r.try_get("message_id")?,
                        json: r.try_get("body")?,
                        created_at: r.try_get("created_at")?,
                        read: r.try_get::<Option<i64>, _>("read_at")?.is_some(),
                        user_id: r.try_get("user_id")?,
                    })
                })
                .collect()
        }
        .instrument(self.span("sql SELECT notifications"))
        .await
    }

    /// Stores one notification on its own (not caused by a message).
    pub(crate) async fn add_notification(
        &self,
        notification: &Notification,
    ) -> Result<(), ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            insert_notification(&mut tx, notification, self.caps.notifications).await?;
            tx.commit().await?;
            Ok(())
        }
        .instrument(self.span("sql INSERT notifications"))
        .await
    }

    /// Marks some of a user's notifications read (others' ids are
    /// ignored), or all of them when `ids` is `None`.
    pub(crate) async fn read_notifications(
        &self,
        user_id: &str,
        ids: Option<&[String]>,
    ) -> Result<(), ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            let now = common::ids::now_ms();
            let Some(ids) = ids else {
                sqlx::query(
                    "UPDATE notifications SET read_at = $1 WHERE user_id = $2 AND read_at IS NULL",
                )
                .bind(now)
                .bind(user_id.to_string())
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                return Ok(());
            };
            for id in ids {
                sqlx::query(
                    "UPDATE notifications SET read_at = $1 \
                     WHERE id = $2 AND user_id = $3 AND read_at IS NULL",
                )
                .bind(now)
                .bind(id.clone())
                .bind(user_id.to_string())
                .execute(&mut *tx)
                .await?;
            }
            tx.commit().await?;
            Ok(())
        }
        .instrument(self.span("sql UPDATE notifications"))
        .await
    }
}

impl Store {
    /// Deletes some of a user's notifications (others' ids are ignored), or
    /// all of them when `ids` is `None`; returns the ids deleted (with
    /// `None`, how many went is all that matters: an empty list).
    pub(crate) async fn clear_notifications(
        &self,
        user_id: &str,
        ids: Option<&[String]>,
    ) -> Result<Vec<String>, ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            let mut cleared = Vec::new();
            match ids {
                None => {
                    sqlx::query("DELETE FROM notifications WHERE user_id = $1")
                        .bind(user_id.to_string())
                        .execute(&mut *tx)
                        .await?;
                }
                Some(ids) => {
                    for id in ids {
                        let deleted =
                            sqlx::query("DELETE FROM notifications WHERE id = $1 AND user_id = $2")
                                .bind(id.clone())
                                .bind(user_id.to_string())
                                .execute(&mut *tx)
                                .await?
                                .rows_affected();
                        if deleted > 0 {
                            cleared.push(id.clone());
                        }
                    }
                }
            }
            tx.commit().await?;
            Ok(cleared)
        }
        .instrument(self.span("sql DELETE notifications"))
        .await
    }
}

/// Stores a notification and drops the user's oldest beyond `cap`.
pub(super) async fn insert_notification(
    tx: &mut Transaction<'_, Any>,
    n: &Notification,
    cap: u32,
) -> Result<(), ChatError> {
    sqlx::query(
        "INSERT INTO notifications (id, user_id, kind, room_id, message_id, body, created_at) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(n.id.clone())
    .bind(n.user_id.clone())
    .bind(n.kind.clone())
    .bind(n.room_id.clone())
    .bind(n.message_id.clone())
    .bind(n.json.clone())
    .bind(n.created_at)
    .execute(&mut **tx)
    .await?;
    sqlx::query(
        "DELETE FROM notifications WHERE user_id = $1 AND id NOT IN \
         (SELECT id FROM notifications WHERE user_id = $2 \
          ORDER BY created_at DESC, id DESC LIMIT $3)",
    )
    .bind(n.user_id.clone())
    .bind(n.user_id.clone())
    .bind(i64::from(cap))
    .execute(&mut **tx)
    .await?;
    Ok(())
}
