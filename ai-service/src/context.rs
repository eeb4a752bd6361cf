//! The conversation sent to the model: the system prompt, then the room's
//! (or thread's) recent history read from chat-service, newest first until
//! the token budget is full, then the question.
//!
//! Tokens are approximated as one per four characters plus four per message
//! (role and framing), which is close for English text with common
//! tokenizers and errs on the generous side for code and other scripts.

use common::grpc::{Actor, ServiceChannel};
use proto::chat::v1::GetHistoryRequest;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;

use crate::error::AiError;
use crate::provider::{Role, Turn};

/// Messages read per history page.
const PAGE: u32 = 100;
/// Most history pages read for one prompt.
const MAX_PAGES: usize = 10;

/// Approximate tokens of one message with `text`.
pub(crate) fn tokens(text: &str) -> usize {
    text.chars().count().div_ceil(4) + 4
}

/// Where the history comes from and what it may cost.
#[derive(Clone)]
pub(crate) struct ContextReader {
    pub(crate) chat: ChatBackendServiceClient<ServiceChannel>,
    pub(crate) system_prompt: String,
    /// Budget of the whole prompt, in approximate tokens.
    pub(crate) budget: usize,
}

/// Which history a prompt is built from.
#[derive(Debug, Clone)]
pub(crate) struct HistoryScope {
    pub(crate) room_id: String,
    pub(crate) thread_id: Option<String>,
    /// Only messages before this seq (the stored question itself is last).
    pub(crate) before: Option<i64>,
}

impl ContextReader {
    /// The conversation: system prompt, then as much recent history as fits,
    /// then `question` (always included, whatever its size).
    pub(crate) async fn conversation(
        &self,
        scope: Option<&HistoryScope>,
        system_prompt: Option<&str>,
        question: Option<Turn>,
    ) -> Result<Vec<Turn>, AiError> {
        let system = system_prompt.unwrap_or(&self.system_prompt);
        let mut left = self.budget.saturating_sub(tokens(system));
        if let Some(question) = &question {
            left = left.saturating_sub(tokens(&question.content));
        }
        let mut history = Vec::new();
        if let Some(scope) = scope {
            self.read_history(scope, &mut left, &mut history).await?;
        }
        let mut turns = Vec::with_capacity(history.len() + 2);
        if !system.is_empty() {
            turns.push(Turn::new(Role::System, None, system));
        }
        turns.extend(history.into_iter().rev());
        turns.extend(question);
        Ok(turns)
    }

    /// Pushes history, newest first, while it fits in `left`.
    async fn read_history(
        &self,
        scope: &HistoryScope,
        left: &mut usize,
        newest_first: &mut Vec<Turn>,
    ) -> Result<(), AiError> {
        let mut before = scope.before;
        for _ in 0..MAX_PAGES {
            let page = self
                .chat
                .clone()
                .get_history(GetHistoryRequest {
                    room_id: scope.room_id.clone(),
                    before,
                    after: None,
                    limit: PAGE,
                    thread_id: scope.thread_id.clone(),
                })
                .await
                .map_err(AiError::Chat)?
                .into_inner();
            for message in page.messages.iter().rev() {
                before = Some(message.seq);
                if message.deleted || message.text.trim().is_empty() {
                    continue;
                }
                let cost = tokens(&message.text);
                if cost > *left {
                    return Ok(());
                }
                *left -= cost;
                let sender = message.sender.clone().unwrap_or_default();
                newest_first.push(if sender.id == Actor::assistant().user_id {
                    Turn::new(Role::Assistant, None, message.text.clone())
                } else {
                    Turn::new(Role::User, Some(sender.name), message.text.clone())
                });
            }
            if !page.has_more || page.messages.is_empty() {
                return Ok(());
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_a_quarter_of_the_characters_plus_framing() {
        assert_eq!(tokens(""), 4);
        assert_eq!(tokens("abcd"), 5);
        assert_eq!(tokens("abcde"), 6);
        assert_eq!(tokens(&"é".repeat(40)), 14, "characters, not bytes");
    }
}
