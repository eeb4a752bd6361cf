//! Attachments' metadata: recording an upload within the owner's quota,
//! claiming uploads for a message (in the message's transaction), finding
//! one a caller may download, and the ones the clean-up job deletes.

use proto::chat::v1::{Attachment, Message};
use sqlx::any::AnyRow;
use sqlx::{Any, Row, Transaction};
use tracing::Instrument;

use super::Store;
use crate::error::ChatError;

const COLUMNS: &str = "a.id, a.owner_id, a.mime, a.size, a.width, a.height, a.name, \
                       a.created_at, a.room_id";

fn attachment_from(row: &AnyRow) -> Result<Attachment, ChatError> {
    Ok(Attachment {
        id: row.try_get("id")?,
        owner_id: row.try_get("owner_id")?,
        mime: row.try_get("mime")?,
        size: row.try_get("size")?,
        width: row.try_get("width")?,
        height: row.try_get("height")?,
        name: row.try_get("name")?,
        created_at: row.try_get("created_at")?,
        room_id: row
            .try_get::<Option<String>, _>("room_id")?
            .unwrap_or_default(),
    })
}

impl Store {
    /// Bytes `owner` has stored.
    pub(crate) async fn attachment_usage(&self, owner: &str) -> Result<i64, ChatError> {
        async {
            let row = sqlx::query(
                "SELECT CAST(COALESCE(SUM(size), 0) AS BIGINT) AS used FROM attachments \
                 WHERE owner_id = $1",
            )
            .bind(owner.to_string())
            .fetch_one(&self.reader)
            .await?;
            Ok(row.try_get::<i64, _>("used")?)
        }
        .instrument(self.span("sql SELECT attachments"))
        .await
    }

    /// Records an upload; `TooLarge` when it would take its owner past
    /// `quota` bytes. One statement checks and inserts, so it never reads
    /// in a transaction before writing (SQLite could not then wait for the
    /// write lock).
    pub(crate) async fn create_attachment(
        &self,
        attachment: &Attachment,
        quota: i64,
    ) -> Result<(), ChatError> {
        async {
            let inserted = sqlx::query(
                "INSERT INTO attachments (id, owner_id, mime, size, width, height, name, created_at) \
                 SELECT $1, $2, $3, $4, $5, $6, $7, $8 \
                 WHERE (SELECT COALESCE(SUM(size), 0) FROM attachments WHERE owner_id = $2) + $4 <= $9",
            )
            .bind(attachment.id.clone())
            .bind(attachment.owner_id.clone())
            .bind(attachment.mime.clone())
            .bind(attachment.size)
            .bind(attachment.width)
            .bind(attachment.height)
            .bind(attachment.name.clone())
            .bind(attachment.created_at)
            .bind(quota)
            .execute(&self.reader)
            .await?
            .rows_affected();
            if inserted == 0 {
                let used = self.attachment_usage(&attachment.owner_id).await?;
                return Err(ChatError::TooLarge(format!(
                    "storage quota of {quota} bytes reached ({used} used)"
                )));
            }
            Ok(())
        }
        .instrument(self.span("sql INSERT attachments"))
        .await
    }

    /// `owner`'s uploads among `ids` that no message carries yet, in the
    /// order of `ids`; `NotFound` when one is missing, sent or someone else's.
    pub(crate) async fn unsent_attachments(
        &self,
        owner: &str,
        ids: &[String],
    ) -> Result<Vec<Attachment>, ChatError> {
        let mut found = Vec::with_capacity(ids.len());
        for id in ids {
            let sql = format!(
                "SELECT {COLUMNS} FROM attachments a \
                 WHERE a.id = $1 AND a.owner_id = $2 AND a.message_id IS NULL"
            );
            let row = sqlx::query(&sql)
                .bind(id.clone())
                .bind(owner.to_string())
                .fetch_optional(&self.reader)
                .instrument(self.span("sql SELECT attachments"))
                .await?;
            let row = row.ok_or(ChatError::NotFound("attachment"))?;
            found.push(attachment_from(&row)?);
        }
        Ok(found)
    }

    /// An attachment `user_id` may download from `room_id`: one carried by
    /// a live message of the room while they are a member, or their own
    /// upload not sent yet.
    pub(crate) async fn visible_attachment(
        &self,
        room_id: &str,
        attachment_id: &str,
        user_id: &str,
    ) -> Result<Option<Attachment>, ChatError> {
        async {
            let sql = format!(
                "SELECT {COLUMNS} FROM attachments a \
                 JOIN messages m ON m.id = a.message_id \
                 JOIN members mb ON mb.room_id = m.room_id AND mb.user_id = $1 \
                 WHERE a.id = $2 AND m.room_id = $3 AND m.deleted_at IS NULL"
            );
            let row = sqlx::query(&sql)
                .bind(user_id.to_string())
                .bind(attachment_id.to_string())
                .bind(room_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            if let Some(row) = row {
                return Ok(Some(attachment_from(&row)?));
            }
            let sql = format!(
                "SELECT {COLUMNS} FROM attachments a \
                 WHERE a.id = $1 AND a.owner_id = $2 AND a.message_id IS NULL"
            );
            let row = sqlx::query(&sql)
                .bind(attachment_id.to_string())
                .bind(user_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(attachment_from).transpose()
        }
        .instrument(self.span("sql SELECT attachments"))
        .await
    }

    /// An attachment whose bytes may still be served: not yet sent, or
    /// carried by a message that is not deleted.
    pub(crate) async fn live_attachment(&self, id: &str) -> Result<Option<Attachment>, ChatError> {
        async {
            let sql = format!(
                "SELECT {COLUMNS} FROM attachments a \
                 LEFT JOIN messages m ON m.id = a.message_id \
                 WHERE a.id = $1 AND (a.message_id IS NULL \
                   OR (m.id IS NOT NULL AND m.deleted_at IS NULL))"
            );
            let row = sqlx::query(&sql)
                .bind(id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(attachment_from).transpose()
        }
        .instrument(self.span("sql SELECT attachments"))
        .await
    }

    /// Attachments whose bytes are no longer wanted, at most `limit`: sent
    /// with no message after `unreferenced_before` (ms), or carried by a
    /// message that is deleted or gone (deleted, retention, erasure, a
    /// purged room).
    pub(crate) async fn unwanted_attachments(
        &self,
        unreferenced_before: i64,
        limit: u32,
    ) -> Result<Vec<String>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT a.id FROM attachments a LEFT JOIN messages m ON m.id = a.message_id \
                 WHERE (a.message_id IS NULL AND a.created_at < $1) \
                    OR (a.message_id IS NOT NULL AND (m.id IS NULL OR m.deleted_at IS NOT NULL)) \
                 LIMIT $2",
            )
            .bind(unreferenced_before)
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|row| Ok(row.try_get("id")?))
                .collect::<Result<Vec<String>, ChatError>>()
        }
        .instrument(self.span("sql SELECT attachments"))
        .await
    }

    /// Every attachment `owner` uploaded, at most `limit`.
    pub(crate) async fn attachments_of(
        &self,
        owner: &str,
        limit: u32,
    ) -> Result<Vec<String>, ChatError> {
        async {
            let rows = sqlx::query("SELECT id FROM attachments WHERE owner_id = $1 LIMIT $2")
                .bind(owner.to_string())
                .bind(i64::from(limit))
                .fetch_all(&self.reader)
                .await?;
            rows.iter()
                .map(|row| Ok(row.try_get("id")?))
                .collect::<Result<Vec<String>, ChatError>>()
        }
        .instrument(self.span("sql SELECT attachments"))
        .await
    }

    /// Deletes the metadata of attachments whose bytes are gone.
    pub(crate) async fn delete_attachment_rows(&self, ids: &[String]) -> Result<(), ChatError> {
        async {
            for id in ids {
                sqlx::query("DELETE FROM attachments WHERE id = $1")
                    .bind(id.clone())
                    .execute(&self.reader)
                    .await?;
            }
            Ok(())
        }
        .instrument(self.span("sql DELETE attachments"))
        .await
    }
}

/// Ties the message's attachments to it, inside its transaction; each must
/// still be its sender's and unsent (`NotFound` otherwise: a concurrent
/// send took it, or the clean-up job deleted it).
pub(super) async fn claim(
    tx: &mut Transaction<'_, Any>,
    message: &Message,
) -> Result<(), ChatError> {
    let sender = message
        .sender
        .as_ref()
        .map(|s| s.id.clone())
        .unwrap_or_default();
    for attachment in &message.attachments {
        let claimed = sqlx::query(
            "UPDATE attachments SET message_id = $1, room_id = $2 \
             WHERE id = $3 AND owner_id = $4 AND message_id IS NULL",
        )
        .bind(message.id.clone())
        .bind(message.room_id.clone())
        .bind(attachment.id.clone())
        .bind(sender.clone())
        .execute(&mut **tx)
        .await?
        .rows_affected();
        if claimed != 1 {
            return Err(ChatError::NotFound("attachment"));
        }
    }
    Ok(())
}

/// The `attachments` column of a message: the JSON array clients receive.
pub(super) fn attachments_column(message: &Message) -> String {
    if message.attachments.is_empty() {
        return String::new();
    }
    let list: Vec<protocol::Attachment> = message
        .attachments
        .iter()
        .map(protocol::Attachment::from)
        .collect();
    serde_json::to_string(&list).unwrap_or_default()
}

/// The attachments of a stored `attachments` column.
pub(super) fn attachments_from(json: &str, room_id: &str) -> Vec<Attachment> {
    if json.is_empty() {
        return Vec::new();
    }
    serde_json::from_str::<Vec<protocol::Attachment>>(json)
        .unwrap_or_default()
        .into_iter()
        .map(|a| Attachment {
            id: a.id,
            mime: a.mime,
            size: a.size,
            width: a.width,
            height: a.height,
            name: a.name,
            room_id: room_id.to_string(),
            ..Attachment::default()
        })
        .collect()
}
