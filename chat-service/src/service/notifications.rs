//! Notifications: the mention notifications a new message makes.

use std::collections::HashSet;

use proto::chat::v1::{Message, Notification};
use protocol::{NotificationKind, UserRef};

use super::ChatHandler;
use crate::error::ChatError;

impl ChatHandler {
    /// A `mention` notification for every member named as `@id` or `@name`
    /// in the text (not the sender, each once, not those who block the
    /// sender), at most
    /// `chat.max_mentions_per_message` of them.
    pub(super) async fn mentions(&self, message: &Message) -> Result<Vec<Notification>, ChatError> {
        let handles = mention_handles(&message.text);
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let sender = message.sender.clone().unwrap_or_default();
        // SQL lower-cases ASCII only: a handle beyond it reads the member
        // list and compares here, as Rust folds case.
        let members = if handles.iter().all(|h| h.is_ascii()) {
            self.store.members_named(&message.room_id, &handles).await?
        } else {
            self.store
                .members(&message.room_id, MAX_MENTION_LOOKUP)
                .await?
        };
        let mut notified = HashSet::new();
        let named: Vec<_> = members
            .into_iter()
            .filter(|member| {
                handles
                    .iter()
                    .any(|h| h == &member.id.to_lowercase() || h == &member.name.to_lowercase())
            })
            .filter(|member| member.id != sender.id && notified.insert(member.id.clone()))
            .collect();
        // Whoever blocks the sender hears nothing of their mentions.
        let ids: Vec<String> = named.iter().map(|m| m.id.clone()).collect();
        let blockers = self.store.blockers_of(&sender.id, &ids).await?;
        let mut notifications = Vec::new();
        for member in named {
            if blockers.contains(&member.id) {
                continue;
            }
            if notifications.len() >= self.limits.max_mentions {
                break;
            }
            let id = common::ids::new_id("n");
            let excerpt: String = message.text.chars().take(MENTION_EXCERPT_CHARS).collect();
            let mut details = serde_json::Map::new();
            details.insert("message_id".into(), message.id.clone().into());
            let from =
                serde_json::to_value(UserRef::new(&sender.id, &sender.name)).unwrap_or_default();
            details.insert("from".into(), from);
            details.insert("text".into(), excerpt.into());
            let json = protocol::Notification::new(
                id.clone(),
                NotificationKind::Mention,
                Some(message.room_id.clone()),
                message.created_at,
                details,
            )
            .to_json();
            notifications.push(Notification {
                id,
                kind: "mention".into(),
                room_id: message.room_id.clone(),
                message_id: Some(message.id.clone()),
                json,
                created_at: message.created_at,
                read: false,
                user_id: member.id,
            });
        }
        Ok(notifications)
    }
}

/// Most members a mention with a handle beyond ASCII is matched against.
const MAX_MENTION_LOOKUP: u32 = 1_000;

/// Characters of the message kept in a mention notification.
const MENTION_EXCERPT_CHARS: usize = 200;

/// The lower-cased handles named as `@handle` in a text.
fn mention_handles(text: &str) -> Vec<String> {
    let mut handles: Vec<String> = Vec::new();
    for (at, _) in text.match_indices('@') {
        // A mention starts a word: `a@b.c` is an address, not a mention.
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric())
        {
            continue;
        }
        let handle: String = text[at + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            .collect();
        let handle = handle.trim_end_matches(['.', ':']).to_lowercase();
        if !handle.is_empty() && !handles.contains(&handle) {
            handles.push(handle);
        }
    }
    handles
}
