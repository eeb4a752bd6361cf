//! One assistant reply after it was accepted: build the conversation, stream
//! the provider's chunks to the room as `ai.delta` (and to a direct caller),
//! store the whole reply through chat-service as the assistant, then announce
//! it with `ai.done` — or `ai.error` on any failure, cancel or deadline, so
//! nobody waits in silence.

use std::sync::Arc;
use std::time::Duration;

use common::bus::{Bus, BusError, envelope, room_channel};
use common::grpc::{Actor, ServiceChannel};
use common::shutdown::ShutdownSignal;
use futures::StreamExt;
use proto::ai::v1::generate_event::Event;
use proto::ai::v1::{Delta, Done, GenerateEvent, StreamError};
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{Message, SendMessageRequest};
use protocol::{AiDelta, AiDone, ServerFrame};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::context::{ContextReader, HistoryScope};
use crate::error::AiError;
use crate::provider::{Prompt, Provider, ProviderError, Turn};
use crate::quota::Slot;
use crate::streams::{LiveStream, Streams};

/// The error code of a cancelled reply (not a failure: the user asked).
pub(crate) const CANCELLED: &str = "cancelled";

/// Bounds on one reply.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ReplyLimits {
    /// The whole reply, from acceptance to the last chunk.
    pub(crate) total_timeout: Duration,
    /// Longest stored reply; longer ones stop with `metadata.truncated`.
    pub(crate) max_reply_chars: usize,
}

/// What a reply needs; cheap to clone into each reply task.
#[derive(Clone)]
pub(crate) struct Generator {
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) bus: Arc<dyn Bus>,
    /// Stores replies as the assistant.
    pub(crate) chat: ChatServiceClient<ServiceChannel>,
    pub(crate) context: ContextReader,
    pub(crate) streams: Arc<Streams>,
    pub(crate) limits: ReplyLimits,
    pub(crate) metrics: common::metrics::AiMetrics,
}

/// One reply to produce.
pub(crate) struct Job {
    pub(crate) stream: Arc<LiveStream>,
    /// The history the conversation is built from (room replies).
    pub(crate) scope: Option<HistoryScope>,
    /// The question, last in the conversation.
    pub(crate) question: Option<Turn>,
    /// Replaces the configured system prompt.
    pub(crate) system_prompt: Option<String>,
    pub(crate) model: String,
    /// A direct caller's stream of events, if any.
    pub(crate) tap: Option<mpsc::Sender<Result<GenerateEvent, tonic::Status>>>,
    /// The asker's quota slot, released when the reply ends.
    pub(crate) slot: Option<Slot>,
}

/// How a reply ended without failing.
struct Finished {
    text: String,
    /// The stored reply (room replies).
    message: Option<Message>,
    cancelled: bool,
}

/// What stopped the wait for the provider.
enum Interrupt {
    Shutdown,
    Cancelled,
    Deadline,
}

impl Generator {
    /// Produces the reply and announces its outcome; never fails silently.
    pub(crate) async fn run(&self, mut job: Job, shutdown: ShutdownSignal) {
        self.metrics.streams_active.inc();
        let outcome = self.reply(&job, shutdown).await;
        self.metrics.streams_active.dec();
        // The asker may ask again as soon as they learn this one ended.
        if let Some(slot) = job.slot.take() {
            slot.release().await;
        }
        // Unlisted before the last event goes out: a late joiner either sees
        // the stream listed and then its end live, or sees neither and finds
        // the stored reply in the log.
        self.streams.finish(&job.stream).await;
        let (event, tap_event) = match outcome {
            Ok(finished) if !finished.cancelled => {
                tracing::info!(
                    chars = finished.text.chars().count(),
                    "assistant reply complete"
                );
                let message = finished.message.as_ref().map(protocol::Message::from);
                let stream_id = job.stream.id.clone();
                let event: Frame = Box::new(move |room| {
                    ServerFrame::AiDone(AiDone {
                        room,
                        stream_id,
                        message,
                    })
                });
                let done = Event::Done(Done {
                    text: finished.text,
                    message: finished.message,
                });
                (event, done)
            }
            Ok(finished) => {
                tracing::info!(
                    chars = finished.text.chars().count(),
                    "assistant reply cancelled"
                );
                let message = "the reply was cancelled";
                let event = ai_error(
                    &job,
                    protocol::StreamError {
                        code: CANCELLED.into(),
                        message: message.into(),
                        temporary: false,
                    },
                    finished.message.as_ref().map(protocol::Message::from),
                );
                let error = Event::Error(StreamError {
                    code: CANCELLED.into(),
                    message: message.into(),
                    stored: finished.message,
                });
                (event, error)
            }
            Err(error) => {
                let code = error.code();
                if code.temporary() {
                    tracing::warn!(%error, %code, "assistant reply failed");
                } else {
                    tracing::info!(%error, %code, "assistant reply refused");
                }
                let message = error.client_message();
                let event = ai_error(
                    &job,
                    protocol::StreamError {
                        code: code.as_str().into(),
                        message: message.clone(),
                        temporary: code.temporary(),
                    },
                    None,
                );
                let error = Event::Error(StreamError {
                    code: code.as_str().into(),
                    message,
                    stored: None,
                });
                (event, error)
            }
        };
        if let Err(error) = self.publish(&job, event).await {
            tracing::error!(%error, "cannot publish the end of a reply");
        }
        if let Some(tap) = &job.tap {
            let _ = tap.send(Ok(job_event(&job, tap_event))).await;
        }
    }

    async fn reply(&self, job: &Job, shutdown: ShutdownSignal) -> Result<Finished, AiError> {
        let stream = &job.stream;
        let asked = Instant::now();
        let stopped = shutdown.wait();
        let cancelled = stream.cancel.cancelled();
        let deadline = tokio::time::sleep_until(Instant::now() + self.limits.total_timeout);
        tokio::pin!(stopped, cancelled, deadline);
        macro_rules! guarded {
            ($future:expr) => {
                tokio::select! {
                    biased;
                    () = &mut stopped => Err(Interrupt::Shutdown),
                    () = &mut cancelled => Err(Interrupt::Cancelled),
                    () = &mut deadline => Err(Interrupt::Deadline),
                    value = $future => Ok(value),
                }
            };
        }

        let start = async {
            let messages = self
                .context
                .conversation(
                    job.scope.as_ref(),
                    job.system_prompt.as_deref(),
                    job.question.clone(),
                )
                .await?;
            let prompt = Prompt {
                messages,
                model: job.model.clone(),
            };
            Ok::<_, AiError>(self.provider.generate(&prompt).await?)
        };
        let mut chunks = match guarded!(start) {
            Ok(started) => started?,
            Err(interrupt) => return self.interrupted(job, interrupt).await,
        };

        let mut truncated = false;
        loop {
            let next = match guarded!(chunks.next()) {
                Ok(next) => next,
                Err(interrupt) => return self.interrupted(job, interrupt).await,
            };
            let Some(chunk) = next else { break };
            let mut chunk = chunk?;
            let room = self.limits.max_reply_chars.saturating_sub(stream.chars());
            if chunk.chars().count() > room {
                chunk = chunk.chars().take(room).collect();
                truncated = true;
            }
            if !chunk.is_empty() {
                let index = self.streams.push(stream, &chunk).await;
                if index == 0 {
                    self.metrics
                        .time_to_first_delta
                        .observe(asked.elapsed().as_secs_f64());
                }
                self.metrics.deltas.inc();
                self.delta(job, index, chunk).await;
            }
            if truncated {
                break;
            }
        }
        drop(chunks);

        let text = stream.text();
        if text.trim().is_empty() {
            return Err(AiError::EmptyReply);
        }
        let extra = if truncated {
            json!({"truncated": true})
        } else {
            json!({})
        };
        let message = self.store(job, &text, extra).await?;
        Ok(Finished {
            text,
            message,
            cancelled: false,
        })
    }

    /// The end of a reply that was stopped: a cancel stores what was
    /// written so far; shutdown and the deadline are failures.
    async fn interrupted(&self, job: &Job, interrupt: Interrupt) -> Result<Finished, AiError> {
        match interrupt {
            Interrupt::Shutdown => Err(AiError::ShuttingDown),
            Interrupt::Deadline => Err(AiError::Provider(ProviderError::Timeout)),
            Interrupt::Cancelled => {
                let text = job.stream.text();
                let message = if text.trim().is_empty() {
                    None
                } else {
                    match self.store(job, &text, json!({"cancelled": true})).await {
                        Ok(message) => message,
                        Err(error) => {
                            tracing::warn!(%error, "cannot store the cancelled reply");
                            None
                        }
                    }
                };
                Ok(Finished {
                    text,
                    message,
                    cancelled: true,
                })
            }
        }
    }

    /// Hands one chunk to the room and the direct caller.
    async fn delta(&self, job: &Job, index: u64, text: String) {
        let stream_id = job.stream.id.clone();
        let delta = text.clone();
        let event: Frame = Box::new(move |room| {
            ServerFrame::AiDelta(AiDelta {
                room,
                stream_id,
                index,
                text: delta,
            })
        });
        // Deltas are at-most-once: a lost one costs a client the live
        // preview, not the reply, which ai.done carries in full.
        if let Err(error) = self.publish(job, event).await {
            tracing::warn!(%error, index, "cannot publish ai.delta");
        }
        if let Some(tap) = &job.tap {
            let event = job_event(job, Event::Delta(Delta { index, text }));
            if tap.send(Ok(event)).await.is_err() && job.stream.room_id.is_none() {
                // Nobody else is reading a direct stream.
                job.stream.cancel.cancel();
            }
        }
    }

    /// Stores the reply in the room as the assistant (idempotent by stream id).
    async fn store(&self, job: &Job, text: &str, extra: Value) -> Result<Option<Message>, AiError> {
        let Some(room_id) = &job.stream.room_id else {
            return Ok(None);
        };
        let mut metadata = json!({"stream_id": job.stream.id});
        if let (Value::Object(metadata), Value::Object(extra)) = (&mut metadata, extra) {
            metadata.extend(extra);
        }
        let request = SendMessageRequest {
            room_id: room_id.clone(),
            text: text.to_string(),
            client_msg_id: job.stream.id.clone(),
            thread_id: job.scope.as_ref().and_then(|s| s.thread_id.clone()),
            metadata_json: metadata.to_string(),
            reply_to: None,
            ..SendMessageRequest::default()
        };
        let stored = self
            .chat
            .clone()
            .send_message(Actor::assistant().request(request))
            .await
            .map_err(AiError::Chat)?
            .into_inner()
            .message
            .ok_or(AiError::MissingMessage)?;
        Ok(Some(stored))
    }

    /// Publishes a stream event to the room (if the reply has one).
    async fn publish(&self, job: &Job, event: Frame) -> Result<(), BusError> {
        let Some(room) = &job.stream.room_id else {
            return Ok(());
        };
        let event = event(room.clone());
        self.bus
            .publish(
                &room_channel(room),
                &envelope(room, 0, event.kind(), event.to_json()),
            )
            .await
    }
}

/// A stream event for the room it goes to.
type Frame = Box<dyn FnOnce(String) -> ServerFrame + Send>;

/// The `ai.error` of a reply that ended without `ai.done`.
fn ai_error(job: &Job, error: protocol::StreamError, message: Option<protocol::Message>) -> Frame {
    let stream_id = job.stream.id.clone();
    Box::new(move |room| {
        ServerFrame::AiError(protocol::AiError {
            room,
            stream_id,
            error,
            message,
        })
    })
}

fn job_event(job: &Job, event: Event) -> GenerateEvent {
    GenerateEvent {
        stream_id: job.stream.id.clone(),
        event: Some(event),
    }
}
