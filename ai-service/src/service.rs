//! The `parley.ai.v1.AiService` gRPC handler: `Ask` validates, counts the
//! question against the asker's quota, stores it as the asker's message and
//! starts the reply in the background; `Cancel` stops a reply; `ListStreams`
//! tells late joiners what is being written; `Generate` serves backends.

use std::pin::Pin;
use std::sync::Arc;

use common::grpc::{Actor, ServiceChannel};
use common::shutdown::ShutdownSignal;
use futures::Stream;
use proto::ai::v1::ai_service_server::AiService;
use proto::ai::v1::{
    AskRequest, AskResponse, CancelRequest, CancelResponse, GenerateEvent, GenerateRequest,
    ListStreamsRequest, ListStreamsResponse,
};
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::{GetRoomRequest, SendMessageRequest};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::context::HistoryScope;
use crate::error::AiError;
use crate::generation::{Generator, Job};
use crate::provider::{Role, Turn};
use crate::quota::Quotas;
use crate::streams::LiveStream;

/// Metadata of a stored prompt, so clients can render it as a question to the assistant.
const PROMPT_METADATA: &str = r#"{"ai_prompt":true}"#;
/// Longest id accepted in a request.
const MAX_ID_BYTES: usize = 128;
/// Events buffered for a direct caller before generation waits for it.
const TAP_BUFFER: usize = 64;

/// What requests are checked against.
#[derive(Debug, Clone)]
pub(crate) struct Rules {
    /// Whether the operator switched the assistant on.
    pub(crate) enabled: bool,
    /// Longest question, in characters.
    pub(crate) max_prompt_chars: usize,
    /// The default model first, then the others callers may name.
    pub(crate) models: Vec<String>,
}

/// Handles every call; cheap to clone.
#[derive(Clone)]
pub(crate) struct AiHandler {
    pub(crate) rules: Arc<Rules>,
    pub(crate) generator: Generator,
    pub(crate) quotas: Arc<Quotas>,
    /// Reads rooms (owners, for cancels) without an actor.
    pub(crate) backend: ChatBackendServiceClient<ServiceChannel>,
    /// Replies in progress stop streaming when this fires.
    pub(crate) shutdown: ShutdownSignal,
    /// Held by every reply task; the server waits until all are dropped.
    pub(crate) running: mpsc::Sender<()>,
}

type EventStream = Pin<Box<dyn Stream<Item = Result<GenerateEvent, Status>> + Send>>;

#[tonic::async_trait]
impl AiService for AiHandler {
    async fn ask(&self, request: Request<AskRequest>) -> Result<Response<AskResponse>, Status> {
        let actor = Actor::of(&request)?;
        if !self.rules.enabled {
            return Err(AiError::Disabled.into());
        }
        let AskRequest {
            room_id,
            prompt,
            model,
            client_msg_id,
            thread_id,
        } = request.into_inner();
        check_id("room_id", &room_id)?;
        if let Some(thread) = &thread_id {
            check_id("thread_id", thread)?;
        }
        let text = self.prompt_text(&prompt)?;
        let model = self.model(model)?;
        let slot = self.quotas.acquire(&actor).await?;
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
                thread_id: thread_id.clone(),
                metadata_json: PROMPT_METADATA.to_string(),
                reply_to: None,
                ..SendMessageRequest::default()
            }))
            .await;
        let stored = match stored {
            Ok(response) => response.into_inner(),
            Err(status) => {
                slot.refund().await;
                return Err(AiError::Chat(status).into());
            }
        };
        let Some(message) = stored.message else {
            slot.refund().await;
            return Err(AiError::MissingMessage.into());
        };
        // Derived from the stored question, so a retried ask (same
        // client_msg_id, same stored message) names the same reply.
        let stream_id = format!("s_{}", message.id);
        let stream = Arc::new(LiveStream::new(
            stream_id.clone(),
            Some(room_id.clone()),
            Some(actor.user_id.clone()),
        ));
        if stored.duplicate || !self.generator.streams.start(stream.clone()).await {
            tracing::info!(room = %room_id, stream_id = %stream_id, "retried question; no second reply");
            slot.refund().await;
            return Ok(Response::new(AskResponse {
                stream_id,
                message: Some(message),
            }));
        }
        tracing::info!(room = %room_id, stream_id = %stream_id, user_id = %actor.user_id, "assistant reply started");
        let job = Job {
            stream,
            scope: Some(HistoryScope {
                room_id,
                thread_id,
                before: Some(message.seq),
            }),
            question: Some(Turn::new(Role::User, Some(actor.name), text)),
            system_prompt: None,
            model,
            tap: None,
            slot: Some(slot),
        };
        self.spawn(job);
        Ok(Response::new(AskResponse {
            stream_id,
            message: Some(message),
        }))
    }

    async fn cancel(
        &self,
        request: Request<CancelRequest>,
    ) -> Result<Response<CancelResponse>, Status> {
        let actor = Actor::of(&request)?;
        let stream_id = request.into_inner().stream_id;
        check_id("stream_id", &stream_id)?;
        let stream = self
            .generator
            .streams
            .find(&stream_id)
            .await?
            .ok_or(AiError::NotFound("stream"))?;
        if stream.asker.as_deref() != Some(actor.user_id.as_str()) {
            let room = self
                .backend
                .clone()
                .get_room(GetRoomRequest {
                    room_id: stream.room_id.clone(),
                })
                .await
                .map_err(AiError::Chat)?
                .into_inner()
                .room
                .ok_or(AiError::MissingRoom)?;
            if room.owner_id != actor.user_id {
                return Err(AiError::Forbidden(
                    "only the asker or the room's owner may cancel a reply",
                )
                .into());
            }
        }
        tracing::info!(stream_id = %stream_id, user_id = %actor.user_id, "assistant reply cancel requested");
        self.generator.streams.cancel(&stream_id).await?;
        Ok(Response::new(CancelResponse {}))
    }

    async fn list_streams(
        &self,
        request: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        let room_id = request.into_inner().room_id;
        check_id("room_id", &room_id)?;
        Ok(Response::new(ListStreamsResponse {
            streams: self.generator.streams.in_room(&room_id).await?,
        }))
    }

    type GenerateStream = EventStream;

    async fn generate(
        &self,
        request: Request<GenerateRequest>,
    ) -> Result<Response<Self::GenerateStream>, Status> {
        if !self.rules.enabled {
            return Err(AiError::Disabled.into());
        }
        let GenerateRequest {
            room_id,
            prompt,
            model,
            thread_id,
            system_prompt,
        } = request.into_inner();
        let model = self.model(model)?;
        let question = if room_id.is_empty() || !prompt.trim().is_empty() {
            Some(Turn::new(Role::User, None, self.prompt_text(&prompt)?))
        } else {
            None
        };
        let scope = if room_id.is_empty() {
            if thread_id.is_some() {
                return Err(AiError::BadRequest("thread_id needs a room_id".into()).into());
            }
            None
        } else {
            check_id("room_id", &room_id)?;
            if let Some(thread) = &thread_id {
                check_id("thread_id", thread)?;
            }
            self.backend
                .clone()
                .get_room(GetRoomRequest {
                    room_id: room_id.clone(),
                })
                .await
                .map_err(AiError::Chat)?;
            Some(HistoryScope {
                room_id: room_id.clone(),
                thread_id,
                before: None,
            })
        };
        let stream_id = common::ids::new_id("s");
        let stream = Arc::new(LiveStream::new(
            stream_id.clone(),
            scope.as_ref().map(|s| s.room_id.clone()),
            None,
        ));
        if scope.is_some() {
            self.generator.streams.start(stream.clone()).await;
        }
        let (tap, events) = mpsc::channel(TAP_BUFFER);
        tracing::info!(stream_id = %stream_id, room = %room_id, "generation for a backend started");
        self.spawn(Job {
            stream,
            scope,
            question,
            system_prompt,
            model,
            tap: Some(tap),
            slot: None,
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(events))))
    }
}

impl AiHandler {
    fn spawn(&self, job: Job) {
        let span = tracing::info_span!(
            "ai.reply",
            room = job.stream.room_id.as_deref().unwrap_or_default(),
            stream_id = %job.stream.id,
            provider = self.generator.provider.name(),
            model = %job.model,
        );
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
    }

    /// The question trimmed, or why it cannot be asked.
    fn prompt_text(&self, prompt: &str) -> Result<String, AiError> {
        prompt_text(prompt, self.rules.max_prompt_chars)
    }

    /// The model to use: the default, or an allowed one the caller named.
    fn model(&self, requested: Option<String>) -> Result<String, AiError> {
        match requested.filter(|m| !m.is_empty()) {
            None => Ok(self.rules.models.first().cloned().unwrap_or_default()),
            Some(model) if self.rules.models.contains(&model) => Ok(model),
            Some(model) => Err(AiError::BadRequest(format!(
                "unknown model `{}`; allowed: {}",
                model.chars().take(64).collect::<String>(),
                self.rules.models.join(", ")
            ))),
        }
    }
}

fn check_id(field: &'static str, value: &str) -> Result<(), AiError> {
    if value.is_empty() {
        return Err(AiError::BadRequest(format!("{field} is required")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(AiError::BadRequest(format!(
            "{field} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// The prompt trimmed, or why it cannot be asked.
fn prompt_text(prompt: &str, max: usize) -> Result<String, AiError> {
    let text = prompt.trim();
    if text.is_empty() {
        return Err(AiError::BadRequest("prompt is empty".into()));
    }
    if text.chars().count() > max {
        return Err(AiError::TooLarge { max });
    }
    if text.contains('\0') {
        return Err(AiError::BadRequest("prompt contains U+0000".into()));
    }
    Ok(text.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prompts_are_trimmed_and_bounded() {
        assert_eq!(prompt_text("  hi \n", 10).expect("valid"), "hi");
        assert!(matches!(
            prompt_text(" \t ", 10),
            Err(AiError::BadRequest(_))
        ));
        assert!(prompt_text(&"é".repeat(10), 10).is_ok());
        assert!(matches!(
            prompt_text(&"é".repeat(11), 10),
            Err(AiError::TooLarge { .. })
        ));
        assert!(matches!(
            prompt_text("a\0b", 10),
            Err(AiError::BadRequest(_))
        ));
    }
}
