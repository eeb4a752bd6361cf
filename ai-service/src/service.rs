//! The `parley.ai.v1.AiService` gRPC handler: validate, store the prompt as
//! the asker's message, start the reply in the background, answer at once.

use common::grpc::Actor;
use common::shutdown::ShutdownSignal;
use proto::ai::v1::ai_service_server::AiService;
use proto::ai::v1::{AskRequest, AskResponse};
use proto::chat::v1::SendMessageRequest;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::error::AiError;
use crate::generation::{Generator, Job};
use crate::provider::Prompt;

/// Longest prompt, in characters (after trimming).
pub(crate) const MAX_PROMPT_CHARS: usize = 4000;

/// Metadata of a stored prompt, so clients can render it as a question to the assistant.
const PROMPT_METADATA: &str = r#"{"ai_prompt":true}"#;

/// Handles `Ask`; cheap to clone.
#[derive(Clone)]
pub(crate) struct AskHandler {
    /// Whether the operator switched `ai.ask` on.
    pub(crate) enabled: bool,
    pub(crate) generator: Generator,
    /// Replies in progress stop streaming when this fires.
    pub(crate) shutdown: ShutdownSignal,
    /// Held by every reply task; the server waits until all are dropped.
    pub(crate) running: mpsc::Sender<()>,
}

#[tonic::async_trait]
impl AiService for AskHandler {
    async fn ask(&self, request: Request<AskRequest>) -> Result<Response<AskResponse>, Status> {
        let actor = Actor::of(&request)?;
        if !self.enabled {
            return Err(AiError::Disabled.into());
        }
        let AskRequest {
            room_id,
            prompt,
            model,
            client_msg_id,
        } = request.into_inner();
        if room_id.is_empty() {
            return Err(AiError::BadRequest("room_id is required").into());
        }
        let text = prompt_text(&prompt)?;
        let client_msg_id = if client_msg_id.is_empty() {
            common::ids::new_id("ask")
        } else {
            client_msg_id
        };

        let stored = self
            .generator
            .chat
            .clone()
            .send_message(actor.request(SendMessageRequest {
                room_id: room_id.clone(),
                text: text.clone(),
                client_msg_id,
                thread_id: None,
                metadata_json: PROMPT_METADATA.to_string(),
            }))
            .await
            .map_err(AiError::Chat)?
            .into_inner()
            .message
            .ok_or(AiError::MissingMessage)?;

        let stream_id = common::ids::new_id("s");
        let span = tracing::info_span!(
            "ai.reply",
            room = %room_id,
            stream_id = %stream_id,
            provider = self.generator.provider.name(),
        );
        tracing::info!(room = %room_id, stream_id = %stream_id, user_id = %actor.user_id, "assistant reply started");
        let job = Job {
            stream_id: stream_id.clone(),
            prompt: Prompt {
                room_id,
                text,
                model,
            },
        };
        let generator = self.generator.clone();
        let shutdown = self.shutdown.clone();
        let running = self.running.clone();
        tokio::spawn(
            async move {
                generator.run(job, shutdown).await;
                drop(running);
            }
            .instrument(span),
        );
        Ok(Response::new(AskResponse {
            stream_id,
            message: Some(stored),
        }))
    }
}

/// The prompt trimmed, or why it cannot be asked.
fn prompt_text(prompt: &str) -> Result<String, AiError> {
    let text = prompt.trim();
    if text.is_empty() {
        return Err(AiError::BadRequest("prompt is empty"));
    }
    if text.chars().count() > MAX_PROMPT_CHARS {
        return Err(AiError::TooLarge {
            max: MAX_PROMPT_CHARS,
        });
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_trimmed_and_bounded() {
        assert_eq!(prompt_text("  hi \n").expect("valid"), "hi");
        assert!(matches!(prompt_text(" \t "), Err(AiError::BadRequest(_))));
        assert!(prompt_text(&"é".repeat(MAX_PROMPT_CHARS)).is_ok());
        assert!(matches!(
            prompt_text(&"é".repeat(MAX_PROMPT_CHARS + 1)),
            Err(AiError::TooLarge { .. })
        ));
    }
}
