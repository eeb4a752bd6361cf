//! Messages: reading one, a page of history, appending (one or in bulk),
//! editing and deleting (redacting what the log carried).

use std::collections::HashMap;

use proto::chat::v1::{Message, Notification, RoomEvent};
use protocol::{MessageDeleted, MessageEvent, ServerFrame};
use serde_json::json;
use sqlx::{Any, AnyConnection, Connection, Row, Transaction};
use tracing::Instrument;

use super::notifications::insert_notification;
use super::reactions::reactions_of;
use super::rows::{MESSAGE_COLUMNS, message_from};
use super::{
    Bind, HistoryQuery, Params, Store, bind_all, insert_event, log_event, message_new, next_seq,
};
use crate::error::ChatError;

impl Store {
    /// A message by id, within a room.
    pub(crate) async fn message(
        &self,
        room_id: &str,
        message_id: &str,
    ) -> Result<Option<Message>, ChatError> {
        async {
            let sql =
                format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND id = $2");
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .bind(message_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            let Some(mut message) = row.as_ref().map(message_from).transpose()? else {
                return Ok(None);
            };
            message.reactions = reactions_of(&self.reader, std::slice::from_ref(&message.id))
                .await?
                .remove(&message.id)
                .unwrap_or_default();
            Ok(Some(message))
        }
        .instrument(self.span("sql SELECT messages"))
        .await
    }

    /// The message a sender stored under `client_msg_id`, if any (retries).
    pub(crate) async fn message_by_client_id(
        &self,
        room_id: &str,
        sender_id: &str,
        client_msg_id: &str,
    ) -> Result<Option<Message>, ChatError> {
        async {
            let sql = format!(
                "SELECT {MESSAGE_COLUMNS} FROM messages \
                 WHERE room_id = $1 AND sender_id = $2 AND client_msg_id = $3"
            );
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .bind(sender_id.to_string())
                .bind(client_msg_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(message_from).transpose()
        }
        .instrument(self.span("sql SELECT messages"))
        .await
    }

    /// Stores a message under the room's next seq and logs `message.new`.
    /// A repeated `(room, sender, client_msg_id)` is a `Conflict`.
    /// `notifications` (mentions) are stored in the same transaction.
    pub(crate) async fn insert_message(
        &self,
        conn: &mut AnyConnection,
        mut message: Message,
        notifications: &[Notification],
    ) -> Result<(Message, RoomEvent), ChatError> {
        async {
            let mut tx = conn.begin().await?;
            message.seq = next_seq(&mut tx, &message.room_id).await?;
            let sender = message.sender.clone().unwrap_or_default();
            let (reply_to_id, reply_to) = quote_columns(&message);
            if message.kind.is_empty() {
                message.kind = protocol::MessageKind::Text.as_str().to_string();
            }
            let attachments = super::attachments::attachments_column(&message);
            sqlx::query(
                "INSERT INTO messages (id, room_id, seq, sender_id, sender_name, text, thread_id, \
                   metadata, client_msg_id, created_at, reply_to_id, reply_to, kind, attachments) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
            )
            .bind(message.id.clone())
            .bind(message.room_id.clone())
            .bind(message.seq)
            .bind(sender.id)
            .bind(sender.name)
            .bind(message.text.clone())
            .bind(message.thread_id.clone())
            .bind(message.metadata_json.clone())
            .bind(message.client_msg_id.clone())
            .bind(message.created_at)
            .bind(reply_to_id)
            .bind(reply_to)
            .bind(message.kind.clone())
            .bind(attachments)
            .execute(&mut *tx)
            .await?;
            super::attachments::claim(&mut tx, &message).await?;
            let event = message_new(&message);
            insert_event(&mut tx, &event, Some(&message.id), message.created_at).await?;
            for notification in notifications {
                insert_notification(&mut tx, notification, self.caps.notifications).await?;
            }
            tx.commit().await?;
            Ok((message, event))
        }
        .instrument(self.span("sql INSERT messages"))
        .await
    }

    /// Stores many messages at once (group commit): one statement takes the
    /// seqs of every room involved, multi-row inserts store the messages,
    /// their events and notifications. Seqs within a room follow the order
    /// given. Returns `None`, with nothing stored, when the batch must be
    /// stored one message at a time instead: a repeated `client_msg_id` or
    /// a missing room (the single path gives those their own errors).
    pub(crate) async fn insert_messages(
        &self,
        conn: &mut AnyConnection,
        batch: &[(Message, Vec<Notification>)],
    ) -> Result<Option<Vec<(Message, RoomEvent)>>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            // Messages per room, in first-seen order.
            let mut counts: Vec<(String, i64)> = Vec::new();
            for (message, _) in batch {
                match counts.iter_mut().find(|(room, _)| *room == message.room_id) {
                    Some((_, n)) => *n += 1,
                    None => counts.push((message.room_id.clone(), 1)),
                }
            }
            let last = take_seqs(&mut tx, self.positional, &counts).await?;
            if last.len() != counts.len() {
                tx.rollback().await?;
                return Ok(None);
            }
            // Hand out seqs: a room with k messages and new last L gets L-k+1..=L.
            let mut next: HashMap<&str, i64> = counts
                .iter()
                .map(|(room, k)| (room.as_str(), last[room] - k + 1))
                .collect();
            let mut stored = Vec::with_capacity(batch.len());
            for (message, _) in batch {
                let mut message = message.clone();
                let seq = next
                    .get_mut(message.room_id.as_str())
                    .ok_or(ChatError::NotFound("room"))?;
                message.seq = *seq;
                *seq += 1;
                let event = message_new(&message);
                stored.push((message, event));
            }
            for chunk in stored.chunks(BULK_ROWS) {
                let inserted = insert_message_rows(&mut tx, self.positional, chunk).await?;
                if inserted != chunk.len() {
                    tx.rollback().await?;
                    return Ok(None);
                }
                insert_event_rows(&mut tx, self.positional, chunk).await?;
            }
            for (_, notifications) in batch {
                for notification in notifications {
                    insert_notification(&mut tx, notification, self.caps.notifications).await?;
                }
            }
            tx.commit().await?;
            Ok(Some(stored))
        }
        .instrument(self.span("sql INSERT messages"))
        .await
    }

    /// A page of messages in seq order, and whether more exist in the
    /// direction of paging (older without `after`, newer with it).
    pub(crate) async fn history(
        &self,
        q: HistoryQuery<'_>,
    ) -> Result<(Vec<Message>, bool), ChatError> {
        async {
            let mut sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1");
            let mut binds = vec![Bind::Text(q.room_id.to_string())];
            let mut condition = |sql: &mut String, clause: &str, bind: Bind| {
                binds.push(bind);
                sql.push_str(&format!(" AND {clause} ${}", binds.len()));
            };
            if let Some(before) = q.before {
                condition(&mut sql, "seq <", Bind::Int(before));
            }
            if let Some(after) = q.after {
                condition(&mut sql, "seq >", Bind::Int(after));
            }
            if let Some(thread) = q.thread_id {
                condition(&mut sql, "thread_id =", Bind::Text(thread.to_string()));
            }
            // Forward from `after`; otherwise backwards from the newest (or `before`).
            let forward = q.after.is_some() && q.before.is_none();
            sql.push_str(if forward {
                " ORDER BY seq ASC"
            } else {
                " ORDER BY seq DESC"
            });
            binds.push(Bind::Int(i64::from(q.limit) + 1));
            sql.push_str(&format!(" LIMIT ${}", binds.len()));
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&self.reader)
                .await?;
            let mut messages = rows
                .iter()
                .map(message_from)
                .collect::<Result<Vec<_>, _>>()?;
            let has_more = messages.len() > q.limit as usize;
            messages.truncate(q.limit as usize);
            let ids: Vec<String> = messages.iter().map(|m| m.id.clone()).collect();
            let mut reactions = reactions_of(&self.reader, &ids).await?;
            for message in &mut messages {
                message.reactions = reactions.remove(&message.id).unwrap_or_default();
            }
            if !forward {
                messages.reverse();
            }
            Ok((messages, has_more))
        }
        .instrument(self.span("sql SELECT messages"))
        .await
    }

    /// Replaces a live message's text and logs `message.updated`; `NotFound`
    /// when it is missing or deleted.
    pub(crate) async fn edit_message(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<(Message, RoomEvent), ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let now = common::ids::now_ms();
            let changed = sqlx::query(
                "UPDATE messages SET text = $1, edited_at = $2 \
                 WHERE room_id = $3 AND id = $4 AND deleted_at IS NULL",
            )
            .bind(text.to_string())
            .bind(now)
            .bind(room_id.to_string())
            .bind(message_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                tx.rollback().await?;
                return Err(ChatError::NotFound("message"));
            }
            let mut message = message_in(&mut tx, room_id, message_id).await?;
            message.reactions = reactions_of(&mut *tx, std::slice::from_ref(&message.id))
                .await?
                .remove(&message.id)
                .unwrap_or_default();
            let event = log_event(ServerFrame::MessageUpdated(MessageEvent {
                room: room_id.to_string(),
                seq,
                message: protocol::Message::from(&message),
            }));
            insert_event(&mut tx, &event, Some(message_id), now).await?;
            requote(&mut tx, room_id, message_id).await?;
            tx.commit().await?;
            Ok((message, event))
        }
        .instrument(self.span("sql UPDATE messages"))
        .await
    }

    /// Turns a message into a tombstone (text, metadata and reactions gone)
    /// and logs `message.deleted`; `None` when it was already deleted.
    pub(crate) async fn delete_message(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        message_id: &str,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let now = common::ids::now_ms();
            let changed = sqlx::query(
                "UPDATE messages SET text = '', metadata = '', attachments = '', deleted_at = $1 \
                 WHERE room_id = $2 AND id = $3 AND deleted_at IS NULL",
            )
            .bind(now)
            .bind(room_id.to_string())
            .bind(message_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if changed == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            sqlx::query("DELETE FROM reactions WHERE message_id = $1")
                .bind(message_id.to_string())
                .execute(&mut *tx)
                .await?;
            redact(&mut tx, room_id, message_id).await?;
            let event = log_event(ServerFrame::MessageDeleted(MessageDeleted {
                room: room_id.to_string(),
                seq,
                message_id: message_id.to_string(),
            }));
            insert_event(&mut tx, &event, Some(message_id), now).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql UPDATE messages"))
        .await
    }
}

/// Rows per multi-row insert (12 parameters each, well under every
/// database's parameter limit).
const BULK_ROWS: usize = 500;

/// Adds `k` to each room's `last_seq` in one statement; returns the new
/// `last_seq` of every room that exists.
async fn take_seqs(
    tx: &mut Transaction<'_, Any>,
    positional: bool,
    counts: &[(String, i64)],
) -> Result<HashMap<String, i64>, ChatError> {
    let mut params = Params::new(positional);
    let mut cases = String::new();
    for (room, k) in counts {
        let id = params.push(Bind::Text(room.clone()));
        let k = params.push(Bind::Int(*k));
        cases.push_str(&format!(" WHEN {id} THEN {k}"));
    }
    let ids: Vec<String> = counts
        .iter()
        .map(|(room, _)| params.push(Bind::Text(room.clone())))
        .collect();
    let sql = format!(
        "UPDATE rooms SET last_seq = last_seq + CASE id{cases} ELSE 0 END \
         WHERE id IN ({}) RETURNING id, last_seq",
        ids.join(", ")
    );
    let rows = params.query(&sql).fetch_all(&mut **tx).await?;
    rows.iter()
        .map(|row| Ok((row.try_get("id")?, row.try_get("last_seq")?)))
        .collect()
}

/// Inserts messages, skipping any whose `(room, sender, client_msg_id)` is
/// taken; returns how many were inserted.
async fn insert_message_rows(
    tx: &mut Transaction<'_, Any>,
    positional: bool,
    rows: &[(Message, RoomEvent)],
) -> Result<usize, ChatError> {
    let mut params = Params::new(positional);
    let mut values = Vec::with_capacity(rows.len());
    for (message, _) in rows {
        let sender = message.sender.clone().unwrap_or_default();
        let row = [
            params.push(Bind::Text(message.id.clone())),
            params.push(Bind::Text(message.room_id.clone())),
            params.push(Bind::Int(message.seq)),
            params.push(Bind::Text(sender.id)),
            params.push(Bind::Text(sender.name)),
            params.push(Bind::Text(message.text.clone())),
            params.push(Bind::OptText(message.thread_id.clone())),
            params.push(Bind::Text(message.metadata_json.clone())),
            params.push(Bind::Text(message.client_msg_id.clone())),
            params.push(Bind::Int(message.created_at)),
            {
                let (id, quote) = quote_columns(message);
                let id = params.push(Bind::OptText(id));
                let quote = params.push(Bind::Text(quote));
                format!("{id}, {quote}")
            },
        ];
        values.push(format!("({})", row.join(", ")));
    }
    let sql = format!(
        "INSERT INTO messages (id, room_id, seq, sender_id, sender_name, text, thread_id, \
         metadata, client_msg_id, created_at, reply_to_id, reply_to) VALUES {} \
         ON CONFLICT (room_id, sender_id, client_msg_id) DO NOTHING",
        values.join(", ")
    );
    Ok(params.query(&sql).execute(&mut **tx).await?.rows_affected() as usize)
}

async fn insert_event_rows(
    tx: &mut Transaction<'_, Any>,
    positional: bool,
    rows: &[(Message, RoomEvent)],
) -> Result<(), ChatError> {
    // The run's positions, in the order of its events: last-n+1..=last.
    let last = super::log::take_positions(tx, rows.len() as i64).await?;
    let mut position = last - rows.len() as i64;
    let mut params = Params::new(positional);
    let mut values = Vec::with_capacity(rows.len());
    for (message, event) in rows {
        position += 1;
        let row = [
            params.push(Bind::Text(event.room_id.clone())),
            params.push(Bind::Int(event.seq)),
            params.push(Bind::Text(event.kind.clone())),
            params.push(Bind::Text(event.json.clone())),
            params.push(Bind::Int(message.created_at)),
            params.push(Bind::Text(message.id.clone())),
            params.push(Bind::Int(position)),
        ];
        values.push(format!("({})", row.join(", ")));
    }
    let sql = format!(
        "INSERT INTO room_events (room_id, seq, kind, body, created_at, message_id, position) VALUES {}",
        values.join(", ")
    );
    params.query(&sql).execute(&mut **tx).await?;
    Ok(())
}

/// A message inside a transaction (without reactions).
async fn message_in(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    message_id: &str,
) -> Result<Message, ChatError> {
    let sql = format!("SELECT {MESSAGE_COLUMNS} FROM messages WHERE room_id = $1 AND id = $2");
    let row = sqlx::query(&sql)
        .bind(room_id.to_string())
        .bind(message_id.to_string())
        .fetch_one(&mut **tx)
        .await?;
    message_from(&row)
}

/// After a delete: the log events that carried the message's content
/// (`message.new`, `message.updated`) now carry the tombstone, and mention
/// notifications lose their excerpt. Seqs and types stay, so replay still
/// has no gap.
async fn redact(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    message_id: &str,
) -> Result<(), ChatError> {
    requote(tx, room_id, message_id).await?;
    let tombstone = protocol::Message::from(&message_in(tx, room_id, message_id).await?);
    let rows = sqlx::query(
        "SELECT seq, kind FROM room_events WHERE room_id = $1 AND message_id = $2 \
         AND kind IN ('message.new', 'message.updated')",
    )
    .bind(room_id.to_string())
    .bind(message_id.to_string())
    .fetch_all(&mut **tx)
    .await?;
    for row in &rows {
        let seq: i64 = row.try_get("seq")?;
        let kind: String = row.try_get("kind")?;
        let event = MessageEvent {
            room: room_id.to_string(),
            seq,
            message: tombstone.clone(),
        };
        let body = if kind == "message.updated" {
            ServerFrame::MessageUpdated(event)
        } else {
            ServerFrame::MessageNew(event)
        };
        sqlx::query("UPDATE room_events SET body = $1 WHERE room_id = $2 AND seq = $3")
            .bind(body.to_json())
            .bind(room_id.to_string())
            .bind(seq)
            .execute(&mut **tx)
            .await?;
    }
    let rows = sqlx::query("SELECT id, body FROM notifications WHERE message_id = $1")
        .bind(message_id.to_string())
        .fetch_all(&mut **tx)
        .await?;
    for row in &rows {
        let id: String = row.try_get("id")?;
        let body: String = row.try_get("body")?;
        let mut body: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        body["text"] = json!("");
        sqlx::query("UPDATE notifications SET body = $1 WHERE id = $2")
            .bind(body.to_string())
            .bind(id)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}

/// The `reply_to_id` and `reply_to` columns of a new message.
fn quote_columns(message: &Message) -> (Option<String>, String) {
    match &message.reply_to {
        Some(quote) => (
            Some(quote.id.clone()),
            serde_json::to_string(&protocol::Quote::from(quote.as_ref())).unwrap_or_default(),
        ),
        None => (None, String::new()),
    }
}

/// After an edit or delete of `message_id`: the replies quoting it quote it
/// as it now stands, in the messages table and in the log events that
/// carry them (`message.new`, `message.updated`), so replay shows the same.
async fn requote(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    message_id: &str,
) -> Result<(), ChatError> {
    let original = message_in(tx, room_id, message_id).await?;
    let quote = protocol::Quote::of(&original);
    let quote_json = serde_json::to_value(&quote).unwrap_or_default();
    let changed =
        sqlx::query("UPDATE messages SET reply_to = $1 WHERE room_id = $2 AND reply_to_id = $3")
            .bind(quote_json.to_string())
            .bind(room_id.to_string())
            .bind(message_id.to_string())
            .execute(&mut **tx)
            .await?
            .rows_affected();
    if changed == 0 {
        return Ok(());
    }
    let rows = sqlx::query(
        "SELECT e.seq, e.body FROM room_events e \
         JOIN messages m ON m.room_id = e.room_id AND m.id = e.message_id \
         WHERE m.room_id = $1 AND m.reply_to_id = $2 \
         AND e.kind IN ('message.new', 'message.updated')",
    )
    .bind(room_id.to_string())
    .bind(message_id.to_string())
    .fetch_all(&mut **tx)
    .await?;
    for row in &rows {
        let seq: i64 = row.try_get("seq")?;
        let body: String = row.try_get("body")?;
        let Ok(mut body) = serde_json::from_str::<serde_json::Value>(&body) else {
            continue;
        };
        // A deleted reply's tombstone quotes nothing.
        if body["message"]["deleted"] == json!(true) {
            continue;
        }
        body["message"]["reply_to"] = quote_json.clone();
        sqlx::query("UPDATE room_events SET body = $1 WHERE room_id = $2 AND seq = $3")
            .bind(body.to_string())
            .bind(room_id.to_string())
            .bind(seq)
            .execute(&mut **tx)
            .await?;
    }
    Ok(())
}
