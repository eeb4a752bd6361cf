//! The chat store: rooms, members, messages and each room's event log in
//! SQLite or Postgres, through one sqlx `Any` pool and one set of portable
//! migrations.
//!
//! Every persistent change to a room takes the room's next `seq` (an
//! `UPDATE rooms … RETURNING last_seq`, which also serialises appends to one
//! room) and stores its log event in the same transaction, so the log never
//! has a gap or a change without its event. Every operation runs in a `sql`
//! span, a child of the gRPC call that caused it.

use std::time::Duration;

use std::collections::HashMap;

use proto::chat::v1::{
    Message, Notification, Reaction, ReceiptKind, Room, RoomEvent, User, Visibility,
};
use serde_json::json;
use sqlx::any::{AnyArguments, AnyPoolOptions, AnyRow};
use sqlx::query::Query;
use sqlx::{Any, AnyConnection, AnyPool, Connection, Row, Transaction};
use tracing::Instrument;

use crate::error::ChatError;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a call waits for a pooled connection before `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

const ROOM_COLUMNS: &str = "id, name, visibility, owner_id, last_seq, created_at";
const MESSAGE_COLUMNS: &str = "id, room_id, seq, sender_id, sender_name, text, thread_id, \
                               metadata, client_msg_id, created_at, edited_at, deleted_at";

/// The database behind chat-service.
#[derive(Clone)]
pub(crate) struct Store {
    /// Pool for reads and for the small writes outside the room logs
    /// (receipts, notification read marks).
    reader: AnyPool,
    /// One connection of its own for the writer task (`writer.rs`), which
    /// makes every room-log append: never queued behind reads.
    pub(crate) appender: AnyPool,
    /// Whether parameters are written `?` (SQLite, where binding `$N` by
    /// name costs time linear in the statement's parameter count) or `$N`.
    positional: bool,
    /// `sqlite` or `postgresql`, for span attributes.
    system: &'static str,
}

/// A room to create.
pub(crate) struct NewRoom {
    pub id: String,
    pub name: String,
    pub visibility: Visibility,
    pub owner: User,
    /// Sorted pair of a direct room.
    pub direct_key: Option<String>,
    /// Members besides the owner.
    pub members: Vec<User>,
    pub created_at: i64,
}

/// A page of history.
pub(crate) struct HistoryQuery<'a> {
    pub room_id: &'a str,
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub thread_id: Option<&'a str>,
    pub limit: u32,
}

/// A value bound to a dynamically built query.
enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
}

impl Store {
    /// Connects to `url` (`sqlite:` or `postgres://`), creating the SQLite
    /// file's directory on demand, and runs the migrations.
    pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<Store, ChatError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        if sqlite {
            create_sqlite_dir(url)?;
        }
        let setup = |e: sqlx::Error| ChatError::Setup(e.to_string());
        let pool = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(ACQUIRE_TIMEOUT)
        };
        let appender = pool(1).connect(url).await.map_err(setup)?;
        if sqlite {
            // Readers then never block the writer, nor it them.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&appender)
                .await
                .map_err(setup)?;
        }
        MIGRATOR
            .run(&appender)
            .await
            .map_err(|e| ChatError::Setup(format!("migrations: {e}")))?;
        let reader = pool(max_connections).connect(url).await.map_err(setup)?;
        Ok(Store {
            reader,
            appender,
            positional: sqlite,
            system: if sqlite { "sqlite" } else { "postgresql" },
        })
    }

    pub(crate) fn span(&self, name: &'static str) -> tracing::Span {
        tracing::info_span!(
            "sql",
            otel.name = name,
            otel.kind = "client",
            db.system = self.system,
        )
    }

    /// A room by id.
    pub(crate) async fn room(&self, room_id: &str) -> Result<Option<Room>, ChatError> {
        async {
            let sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE id = $1");
            let row = sqlx::query(&sql)
                .bind(room_id.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(room_from).transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// A room and the role `user_id` has in it (if a member), in one query.
    pub(crate) async fn room_and_role(
        &self,
        room_id: &str,
        user_id: &str,
    ) -> Result<Option<(Room, Option<String>)>, ChatError> {
        async {
            let row = sqlx::query(
                "SELECT r.id, r.name, r.visibility, r.owner_id, r.last_seq, r.created_at, m.role \
                 FROM rooms r LEFT JOIN members m ON m.room_id = r.id AND m.user_id = $2 \
                 WHERE r.id = $1",
            )
            .bind(room_id.to_string())
            .bind(user_id.to_string())
            .fetch_optional(&self.reader)
            .await?;
            row.map(|row| Ok((room_from(&row)?, row.try_get::<Option<String>, _>("role")?)))
                .transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// The direct room of a sorted user pair.
    pub(crate) async fn direct_room(&self, key: &str) -> Result<Option<Room>, ChatError> {
        async {
            let sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE direct_key = $1");
            let row = sqlx::query(&sql)
                .bind(key.to_string())
                .fetch_optional(&self.reader)
                .await?;
            row.as_ref().map(room_from).transpose()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

    /// Creates a room with its owner and members, logging `member.joined`
    /// for each. A taken public name or direct pair is a `Conflict`.
    pub(crate) async fn create_room(
        &self,
        conn: &mut AnyConnection,
        new: NewRoom,
    ) -> Result<(Room, Vec<RoomEvent>), ChatError> {
        async {
            let mut members = vec![new.owner.clone()];
            members.extend(new.members.iter().cloned());
            let mut tx = conn.begin().await?;
            let room = Room {
                id: new.id.clone(),
                name: new.name.clone(),
                visibility: new.visibility as i32,
                owner_id: new.owner.id.clone(),
                last_seq: members.len() as i64,
                created_at: new.created_at,
                unread: 0,
            };
            sqlx::query(
                "INSERT INTO rooms (id, name, visibility, owner_id, last_seq, direct_key, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(room.id.clone())
            .bind(room.name.clone())
            .bind(proto::json::visibility_name(room.visibility).to_string())
            .bind(room.owner_id.clone())
            .bind(room.last_seq)
            .bind(new.direct_key.clone())
            .bind(room.created_at)
            .execute(&mut *tx)
            .await?;
            let mut events = Vec::with_capacity(members.len());
            for (index, user) in members.iter().enumerate() {
                let role = if index == 0 { "owner" } else { "member" };
                insert_member(&mut tx, &room.id, user, role, new.created_at).await?;
                let event = member_event("member.joined", &room.id, index as i64 + 1, user);
                insert_event(&mut tx, &event, None, new.created_at).await?;
                events.push(event);
            }
            tx.commit().await?;
            Ok((room, events))
        }
        .instrument(self.span("sql INSERT rooms"))
        .await
    }

    /// Adds `user` to the room and logs `member.joined`; `None` when already a member.
    pub(crate) async fn add_member(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            if member_exists(&mut tx, room_id, &user.id).await? {
                tx.rollback().await?;
                return Ok(None);
            }
            let now = common::ids::now_ms();
            insert_member(&mut tx, room_id, user, "member", now).await?;
            let event = member_event("member.joined", room_id, seq, user);
            insert_event(&mut tx, &event, None, now).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql INSERT members"))
        .await
    }

    /// Removes `user` from the room and logs `member.left`; `None` when not a member.
    pub(crate) async fn remove_member(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        user: &User,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let removed = sqlx::query(
                "DELETE FROM members WHERE room_id = $1 AND user_id = $2 RETURNING user_name",
            )
            .bind(room_id.to_string())
            .bind(user.id.clone())
            .fetch_optional(&mut *tx)
            .await?;
            let Some(removed) = removed else {
                tx.rollback().await?;
                return Ok(None);
            };
            // Named as they joined, whoever removes them.
            let user = User {
                id: user.id.clone(),
                name: removed.try_get("user_name")?,
            };
            let event = member_event("member.left", room_id, seq, &user);
            insert_event(&mut tx, &event, None, common::ids::now_ms()).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql DELETE members"))
        .await
    }

    /// The rooms `user_id` is a member of, with the messages from others
    /// after their read mark as `unread`.
    pub(crate) async fn rooms_of(&self, user_id: &str, limit: u32) -> Result<Vec<Room>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT r.id, r.name, r.visibility, r.owner_id, r.last_seq, r.created_at, \
                   (SELECT COUNT(*) FROM messages m \
                     WHERE m.room_id = r.id AND m.seq > mem.read_seq \
                       AND m.sender_id <> mem.user_id AND m.deleted_at IS NULL) AS unread \
                 FROM members mem JOIN rooms r ON r.id = mem.room_id \
                 WHERE mem.user_id = $1 ORDER BY r.created_at, r.id LIMIT $2",
            )
            .bind(user_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|row| {
                    let mut room = room_from(row)?;
                    room.unread = row.try_get::<i64, _>("unread")?;
                    Ok(room)
                })
                .collect()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }

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
            sqlx::query(
                "INSERT INTO messages (id, room_id, seq, sender_id, sender_name, text, thread_id, \
                   metadata, client_msg_id, created_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10)",
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
            .execute(&mut *tx)
            .await?;
            let event = RoomEvent {
                room_id: message.room_id.clone(),
                seq: message.seq,
                kind: "message.new".into(),
                json: proto::json::message_new_event(&message).to_string(),
            };
            insert_event(&mut tx, &event, Some(&message.id), message.created_at).await?;
            for notification in notifications {
                insert_notification(&mut tx, notification).await?;
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
                let event = RoomEvent {
                    room_id: message.room_id.clone(),
                    seq: message.seq,
                    kind: "message.new".into(),
                    json: proto::json::message_new_event(&message).to_string(),
                };
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
                    insert_notification(&mut tx, notification).await?;
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

    /// Log events with `after < seq <= upto`, in order, at most `limit`, and
    /// whether more follow within that range.
    pub(crate) async fn events(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<(Vec<RoomEvent>, bool), ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT room_id, seq, kind, body FROM room_events \
                 WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            )
            .bind(room_id.to_string())
            .bind(after)
            .bind(upto)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reader)
            .await?;
            let mut events = rows
                .iter()
                .map(|row| {
                    Ok(RoomEvent {
                        room_id: row.try_get("room_id")?,
                        seq: row.try_get("seq")?,
                        kind: row.try_get("kind")?,
                        json: row.try_get("body")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let has_more = events.len() > limit as usize;
            events.truncate(limit as usize);
            Ok((events, has_more))
        }
        .instrument(self.span("sql SELECT room_events"))
        .await
    }

    /// Up to `limit` members of a room, with the names they joined under.
    pub(crate) async fn members(&self, room_id: &str, limit: u32) -> Result<Vec<User>, ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT user_id, user_name FROM members WHERE room_id = $1 \
                 ORDER BY joined_at, user_id LIMIT $2",
            )
            .bind(room_id.to_string())
            .bind(i64::from(limit))
            .fetch_all(&self.reader)
            .await?;
            rows.iter()
                .map(|r| {
                    Ok(User {
                        id: r.try_get("user_id")?,
                        name: r.try_get("user_name")?,
                    })
                })
                .collect()
        }
        .instrument(self.span("sql SELECT members"))
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
            let event = RoomEvent {
                room_id: room_id.to_string(),
                seq,
                kind: "message.updated".into(),
                json: json!({
                    "type": "message.updated",
                    "room": room_id,
                    "seq": seq,
                    "message": proto::json::message(&message),
                })
                .to_string(),
            };
            insert_event(&mut tx, &event, Some(message_id), now).await?;
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
                "UPDATE messages SET text = '', metadata = '', deleted_at = $1 \
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
            let event = RoomEvent {
                room_id: room_id.to_string(),
                seq,
                kind: "message.deleted".into(),
                json: json!({
                    "type": "message.deleted",
                    "room": room_id,
                    "seq": seq,
                    "message_id": message_id,
                })
                .to_string(),
            };
            insert_event(&mut tx, &event, Some(message_id), now).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql UPDATE messages"))
        .await
    }

    /// Adds `user`'s reaction and logs `reaction.added`; `None` when it was
    /// already there. `NotFound` for a missing or deleted message; `TooLarge`
    /// past `max_emoji` distinct emoji on the message.
    pub(crate) async fn add_reaction(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        message_id: &str,
        user: &User,
        emoji: &str,
        max_emoji: i64,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let live = sqlx::query(
                "SELECT id FROM messages WHERE room_id = $1 AND id = $2 AND deleted_at IS NULL",
            )
            .bind(room_id.to_string())
            .bind(message_id.to_string())
            .fetch_optional(&mut *tx)
            .await?;
            if live.is_none() {
                tx.rollback().await?;
                return Err(ChatError::NotFound("message"));
            }
            let rows = sqlx::query("SELECT DISTINCT emoji FROM reactions WHERE message_id = $1")
                .bind(message_id.to_string())
                .fetch_all(&mut *tx)
                .await?;
            let emoji_present = rows
                .iter()
                .any(|r| r.try_get::<String, _>("emoji").is_ok_and(|e| e == emoji));
            if !emoji_present && rows.len() as i64 >= max_emoji {
                tx.rollback().await?;
                return Err(ChatError::TooLarge(format!(
                    "a message has at most {max_emoji} distinct emoji"
                )));
            }
            let now = common::ids::now_ms();
            let inserted = sqlx::query(
                "INSERT INTO reactions (message_id, user_id, emoji, created_at) \
                 VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
            )
            .bind(message_id.to_string())
            .bind(user.id.clone())
            .bind(emoji.to_string())
            .bind(now)
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if inserted == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let event = reaction_event("reaction.added", room_id, seq, message_id, emoji, user);
            insert_event(&mut tx, &event, Some(message_id), now).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql INSERT reactions"))
        .await
    }

    /// Removes `user`'s reaction and logs `reaction.removed`; `None` when
    /// there was none.
    pub(crate) async fn remove_reaction(
        &self,
        conn: &mut AnyConnection,
        room_id: &str,
        message_id: &str,
        user: &User,
        emoji: &str,
    ) -> Result<Option<RoomEvent>, ChatError> {
        async {
            let mut tx = conn.begin().await?;
            let seq = next_seq(&mut tx, room_id).await?;
            let removed = sqlx::query(
                "DELETE FROM reactions WHERE message_id = $1 AND user_id = $2 AND emoji = $3 \
                 AND message_id IN (SELECT id FROM messages WHERE room_id = $4)",
            )
            .bind(message_id.to_string())
            .bind(user.id.clone())
            .bind(emoji.to_string())
            .bind(room_id.to_string())
            .execute(&mut *tx)
            .await?
            .rows_affected();
            if removed == 0 {
                tx.rollback().await?;
                return Ok(None);
            }
            let event = reaction_event("reaction.removed", room_id, seq, message_id, emoji, user);
            insert_event(&mut tx, &event, Some(message_id), common::ids::now_ms()).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql DELETE reactions"))
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
            insert_notification(&mut tx, notification).await?;
            tx.commit().await?;
            Ok(())
        }
        .instrument(self.span("sql INSERT notifications"))
        .await
    }

    /// Marks some of a user's notifications read (others' ids are ignored).
    pub(crate) async fn read_notifications(
        &self,
        user_id: &str,
        ids: &[String],
    ) -> Result<(), ChatError> {
        async {
            let mut tx = self.reader.begin().await?;
            let now = common::ids::now_ms();
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

    /// Rooms newest first, optionally only `user_id`'s, before the room id
    /// `before` (ids are time-ordered).
    pub(crate) async fn all_rooms(
        &self,
        user_id: Option<&str>,
        before: Option<&str>,
        limit: u32,
    ) -> Result<Vec<Room>, ChatError> {
        async {
            let mut sql = format!("SELECT {ROOM_COLUMNS} FROM rooms WHERE 1 = 1");
            let mut binds = Vec::new();
            if let Some(user) = user_id {
                binds.push(Bind::Text(user.to_string()));
                sql.push_str(&format!(
                    " AND id IN (SELECT room_id FROM members WHERE user_id = ${})",
                    binds.len()
                ));
            }
            if let Some(before) = before {
                binds.push(Bind::Text(before.to_string()));
                sql.push_str(&format!(" AND id < ${}", binds.len()));
            }
            binds.push(Bind::Int(i64::from(limit)));
            sql.push_str(&format!(" ORDER BY id DESC LIMIT ${}", binds.len()));
            let rows = bind_all(sqlx::query(&sql), binds)
                .fetch_all(&self.reader)
                .await?;
            rows.iter().map(room_from).collect()
        }
        .instrument(self.span("sql SELECT rooms"))
        .await
    }
}

/// Rows per multi-row insert (10 parameters each, well under every
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
        ];
        values.push(format!("({})", row.join(", ")));
    }
    let sql = format!(
        "INSERT INTO messages (id, room_id, seq, sender_id, sender_name, text, thread_id, \
         metadata, client_msg_id, created_at) VALUES {} \
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
    let mut params = Params::new(positional);
    let mut values = Vec::with_capacity(rows.len());
    for (message, event) in rows {
        let row = [
            params.push(Bind::Text(event.room_id.clone())),
            params.push(Bind::Int(event.seq)),
            params.push(Bind::Text(event.kind.clone())),
            params.push(Bind::Text(event.json.clone())),
            params.push(Bind::Int(message.created_at)),
            params.push(Bind::Text(message.id.clone())),
        ];
        values.push(format!("({})", row.join(", ")));
    }
    let sql = format!(
        "INSERT INTO room_events (room_id, seq, kind, body, created_at, message_id) VALUES {}",
        values.join(", ")
    );
    params.query(&sql).execute(&mut **tx).await?;
    Ok(())
}

/// The parameters of a statement built at run time, with the placeholder
/// style the database binds fastest.
struct Params {
    positional: bool,
    binds: Vec<Bind>,
}

impl Params {
    fn new(positional: bool) -> Self {
        Self {
            positional,
            binds: Vec::new(),
        }
    }

    /// Adds a value; returns its placeholder (`?` or `$N`).
    fn push(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        if self.positional {
            "?".to_string()
        } else {
            format!("${}", self.binds.len())
        }
    }

    fn query(self, sql: &str) -> Query<'_, Any, AnyArguments<'_>> {
        bind_all(sqlx::query(sql), self.binds)
    }
}

/// Takes the room's next seq; `NotFound` when the room does not exist.
async fn next_seq(tx: &mut Transaction<'_, Any>, room_id: &str) -> Result<i64, ChatError> {
    let row =
        sqlx::query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
            .bind(room_id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    match row {
        Some(row) => Ok(row.try_get("last_seq")?),
        None => Err(ChatError::NotFound("room")),
    }
}

async fn member_exists(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user_id: &str,
) -> Result<bool, ChatError> {
    let row = sqlx::query("SELECT user_id FROM members WHERE room_id = $1 AND user_id = $2")
        .bind(room_id.to_string())
        .bind(user_id.to_string())
        .fetch_optional(&mut **tx)
        .await?;
    Ok(row.is_some())
}

async fn insert_member(
    tx: &mut Transaction<'_, Any>,
    room_id: &str,
    user: &User,
    role: &str,
    now: i64,
) -> Result<(), ChatError> {
    sqlx::query(
        "INSERT INTO members (room_id, user_id, user_name, role, joined_at) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(room_id.to_string())
    .bind(user.id.clone())
    .bind(user.name.clone())
    .bind(role.to_string())
    .bind(now)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

async fn insert_event(
    tx: &mut Transaction<'_, Any>,
    event: &RoomEvent,
    message_id: Option<&str>,
    now: i64,
) -> Result<(), ChatError> {
    sqlx::query(
        "INSERT INTO room_events (room_id, seq, kind, body, created_at, message_id) \
         VALUES ($1, $2, $3, $4, $5, $6)",
    )
    .bind(event.room_id.clone())
    .bind(event.seq)
    .bind(event.kind.clone())
    .bind(event.json.clone())
    .bind(now)
    .bind(message_id.map(str::to_string))
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A `member.joined` / `member.left` log event.
fn member_event(kind: &str, room_id: &str, seq: i64, user: &User) -> RoomEvent {
    RoomEvent {
        room_id: room_id.to_string(),
        seq,
        kind: kind.to_string(),
        json: json!({
            "type": kind,
            "room": room_id,
            "seq": seq,
            "user": {"id": user.id, "name": user.name},
        })
        .to_string(),
    }
}

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for bind in binds {
        query = match bind {
            Bind::Text(s) => query.bind(s),
            Bind::OptText(s) => query.bind(s),
            Bind::Int(n) => query.bind(n),
        };
    }
    query
}

fn room_from(row: &AnyRow) -> Result<Room, ChatError> {
    let visibility: String = row.try_get("visibility")?;
    Ok(Room {
        id: row.try_get("id")?,
        name: row.try_get("name")?,
        visibility: proto::json::parse_visibility(&visibility).unwrap_or(Visibility::Unspecified)
            as i32,
        owner_id: row.try_get("owner_id")?,
        last_seq: row.try_get("last_seq")?,
        created_at: row.try_get("created_at")?,
        unread: 0,
    })
}

fn message_from(row: &AnyRow) -> Result<Message, ChatError> {
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
    })
}

/// Creates the directory of a `sqlite:` URL's file.
fn create_sqlite_dir(url: &str) -> Result<(), ChatError> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    if path.is_empty() || path == ":memory:" {
        return Ok(());
    }
    if let Some(dir) = std::path::Path::new(path).parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| ChatError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}

/// Reactions of some messages, grouped by message and emoji (emoji in the
/// order they first appeared, users in the order they reacted).
async fn reactions_of<'e, E>(
    executor: E,
    message_ids: &[String],
) -> Result<HashMap<String, Vec<Reaction>>, ChatError>
where
    E: sqlx::Executor<'e, Database = Any>,
{
    let mut grouped: HashMap<String, Vec<Reaction>> = HashMap::new();
    if message_ids.is_empty() {
        return Ok(grouped);
    }
    let placeholders: Vec<String> = (1..=message_ids.len()).map(|i| format!("${i}")).collect();
    let sql = format!(
        "SELECT message_id, emoji, user_id FROM reactions WHERE message_id IN ({}) \
         ORDER BY created_at, user_id",
        placeholders.join(", ")
    );
    let binds = message_ids
        .iter()
        .map(|id| Bind::Text(id.clone()))
        .collect();
    let rows = bind_all(sqlx::query(&sql), binds)
        .fetch_all(executor)
        .await?;
    for row in &rows {
        let message_id: String = row.try_get("message_id")?;
        let emoji: String = row.try_get("emoji")?;
        let user_id: String = row.try_get("user_id")?;
        let reactions = grouped.entry(message_id).or_default();
        match reactions.iter_mut().find(|r| r.emoji == emoji) {
            Some(reaction) => reaction.user_ids.push(user_id),
            None => reactions.push(Reaction {
                emoji,
                user_ids: vec![user_id],
            }),
        }
    }
    Ok(grouped)
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

async fn insert_notification(
    tx: &mut Transaction<'_, Any>,
    n: &Notification,
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
    Ok(())
}

/// A `reaction.added` / `reaction.removed` log event.
fn reaction_event(
    kind: &str,
    room_id: &str,
    seq: i64,
    message_id: &str,
    emoji: &str,
    user: &User,
) -> RoomEvent {
    RoomEvent {
        room_id: room_id.to_string(),
        seq,
        kind: kind.to_string(),
        json: json!({
            "type": kind,
            "room": room_id,
            "seq": seq,
            "message_id": message_id,
            "emoji": emoji,
            "user": {"id": user.id, "name": user.name},
        })
        .to_string(),
    }
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
    let tombstone = proto::json::message(&message_in(tx, room_id, message_id).await?);
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
        let body = json!({"type": kind, "room": room_id, "seq": seq, "message": tombstone});
        sqlx::query("UPDATE room_events SET body = $1 WHERE room_id = $2 AND seq = $3")
            .bind(body.to_string())
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
