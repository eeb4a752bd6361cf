//! Reactions on messages: adding, removing, reading them grouped by emoji,
//! and their `reaction.added` / `reaction.removed` log events.

use std::collections::HashMap;

use proto::chat::v1::{Reaction, RoomEvent, User};
use protocol::{ReactionEvent, ServerFrame, UserRef};
use sqlx::{Any, AnyConnection, Connection, Row};
use tracing::Instrument;

use super::{Bind, Store, bind_all, insert_event, log_event, next_seq};
use crate::error::ChatError;

impl Store {
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
            let event = reaction_event(true, room_id, seq, message_id, emoji, user);
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
            let event = reaction_event(false, room_id, seq, message_id, emoji, user);
            insert_event(&mut tx, &event, Some(message_id), common::ids::now_ms()).await?;
            tx.commit().await?;
            Ok(Some(event))
        }
        .instrument(self.span("sql DELETE reactions"))
        .await
    }
}

/// Reactions of some messages, grouped by message and emoji (emoji in the
/// order they first appeared, users in the order they reacted).
pub(super) async fn reactions_of<'e, E>(
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

/// A `reaction.added` / `reaction.removed` log event.
fn reaction_event(
    added: bool,
    room_id: &str,
    seq: i64,
    message_id: &str,
    emoji: &str,
    user: &User,
) -> RoomEvent {
    let event = ReactionEvent {
        room: room_id.to_string(),
        seq,
        message_id: message_id.to_string(),
        emoji: emoji.to_string(),
        user: UserRef::new(&user.id, &user.name),
    };
    log_event(if added {
        ServerFrame::ReactionAdded(event)
    } else {
        ServerFrame::ReactionRemoved(event)
    })
}
