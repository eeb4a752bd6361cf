//! Row mapping: the columns selected for rooms and messages, and building
//! a `Room` or `Message` from a row.

use proto::chat::v1::{Message, Quote, Room, User, Visibility};
use sqlx::Row;
use sqlx::any::AnyRow;

use crate::error::ChatError;

pub(super) const ROOM_COLUMNS: &str =
    "id, name, visibility, owner_id, last_seq, created_at, topic, metadata, deleted_at";

/// [`ROOM_COLUMNS`] of a query where the rooms table is `r`.
pub(super) const ROOM_COLUMNS_R: &str = "r.id, r.name, r.visibility, r.owner_id, r.last_seq, \
     r.created_at, r.topic, r.metadata, r.deleted_at";

pub(super) const MESSAGE_COLUMNS: &str = "id, room_id, seq, sender_id, sender_name, text, thread_id, \
                               metadata, client_msg_id, created_at, edited_at, deleted_at, reply_to, kind, attachments";

pub(super) fn room_from(row: &AnyRow) -> Result<Room, ChatError> {
    let visibility: String = row.try_get("visibility")?;
    Ok(Room {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        visibility: protocol::Visibility::parse(&visibility)
            .map_or(Visibility::Unspecified, protocol::Visibility::to_proto)
            as i32,
        owner_id: row.try_get("owner_id")?,
        last_seq: row.try_get("last_seq")?,
        created_at: row.try_get("created_at")?,
        unread: 0,
        topic: row.try_get("topic")?,
        metadata_json: row.try_get("metadata")?,
        deleted: row.try_get::<Option<i64>, _>("deleted_at")?.is_some(),
        member_count: 0,
    })
}

/// A stored quote (`""`: the message replies to nothing).
pub(super) fn quote_from(json: &str) -> Option<Box<Quote>> {
    if json.is_empty() {
        return None;
    }
    serde_json::from_str::<protocol::Quote>(json)
        .ok()
        .map(|q| Box::new(Quote::from(&q)))
}

pub(super) fn message_from(row: &AnyRow) -> Result<Message, ChatError> {
    let deleted_at: Option<i64> = row.try_get("deleted_at")?;
    let deleted = deleted_at.is_some();
    Ok(Message {
        id: row.try_get("id")?,
        room_id: row.try_get("room_id")?,
        seq: row.try_get("seq")?,
        sender: Some(User {
            id: row.try_get("sender_id")?,
            name: row.try_get("sender_name")?,
        }),
        // A deleted message is a tombstone: its content is gone.
        text: if deleted {
            String::new()
        } else {
            row.try_get("text")?
        },
        thread_id: row.try_get("thread_id")?,
        created_at: row.try_get("created_at")?,
        edited_at: row.try_get("edited_at")?,
        deleted,
        client_msg_id: row.try_get("client_msg_id")?,
        metadata_json: if deleted {
            String::new()
        } else {
            row.try_get("metadata")?
        },
        reactions: Vec::new(),
        // A tombstone quotes nothing either.
        reply_to: if deleted {
            None
        } else {
            quote_from(&row.try_get::<String, _>("reply_to")?)
        },
        kind: row.try_get("kind")?,
        // Nor does it carry files.
        attachments: if deleted {
            Vec::new()
        } else {
            super::attachments::attachments_from(
                &row.try_get::<String, _>("attachments")?,
                &row.try_get::<String, _>("room_id")?,
            )
        },
    })
}
