//! One assistant reply after `Ask` returned: stream the provider's chunks to
//! the room as `ai.delta`, store the whole reply through chat-service as the
//! assistant, then announce it with `ai.done` — or `ai.error` on any failure,
//! so the room never waits in silence.

use std::sync::Arc;

use common::bus::{Bus, BusError, envelope, room_channel};
use common::grpc::{Actor, ServiceChannel};
use common::shutdown::ShutdownSignal;
use futures::StreamExt;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{Message, SendMessageRequest};
use serde_json::{Value, json};

use crate::error::AiError;
use crate::provider::{Prompt, Provider};

/// What a reply needs; cheap to clone into each reply task.
#[derive(Clone)]
pub(crate) struct Generator {
    pub(crate) provider: Arc<dyn Provider>,
    pub(crate) bus: Arc<dyn Bus>,
    pub(crate) chat: ChatServiceClient<ServiceChannel>,
}

/// One reply to produce.
#[derive(Debug, Clone)]
pub(crate) struct Job {
    pub(crate) stream_id: String,
    pub(crate) prompt: Prompt,
}

impl Generator {
    /// Produces the reply and publishes its outcome; never fails silently.
    pub(crate) async fn run(&self, job: Job, shutdown: ShutdownSignal) {
        match self.reply(&job, shutdown).await {
            Ok(message) => tracing::info!(message_id = %message.id, "assistant reply stored"),
            Err(error) => {
                let code = error.code();
                if code.temporary() {
                    tracing::warn!(%error, %code, "assistant reply failed");
                } else {
                    tracing::info!(%error, %code, "assistant reply refused");
                }
                let event = json!({
                    "type": "ai.error",
                    "room": job.prompt.room_id,
                    "stream_id": job.stream_id,
                    "error": {"code": code.as_str(), "message": error.client_message()},
                });
                if let Err(error) = self.publish(&job, "ai.error", &event).await {
                    tracing::error!(%error, "cannot publish ai.error");
                }
            }
        }
    }

    async fn reply(&self, job: &Job, shutdown: ShutdownSignal) -> Result<Message, AiError> {
        let mut chunks = self.provider.generate(&job.prompt).await?;
        let stopped = shutdown.wait();
        tokio::pin!(stopped);
        let mut text = String::new();
        let mut index: u64 = 0;
        loop {
            let next = tokio::select! {
                biased;
                () = &mut stopped => return Err(AiError::ShuttingDown),
                next = chunks.next() => next,
            };
            let Some(chunk) = next else { break };
            let chunk = chunk?;
            if chunk.is_empty() {
                continue;
            }
            text.push_str(&chunk);
            let delta = json!({
                "type": "ai.delta",
                "room": job.prompt.room_id,
                "stream_id": job.stream_id,
                "index": index,
                "text": chunk,
            });
            // Deltas are at-most-once: a lost one costs a client the live
            // preview, not the reply, which ai.done carries in full.
            if let Err(error) = self.publish(job, "ai.delta", &delta).await {
                tracing::warn!(%error, index, "cannot publish ai.delta");
            }
            index += 1;
        }
        if text.trim().is_empty() {
            return Err(AiError::EmptyReply);
        }

        let request = SendMessageRequest {
            room_id: job.prompt.room_id.clone(),
            text,
            client_msg_id: job.stream_id.clone(),
            thread_id: None,
            metadata_json: json!({"stream_id": job.stream_id}).to_string(),
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

        let done = json!({
            "type": "ai.done",
            "room": job.prompt.room_id,
            "stream_id": job.stream_id,
            "message": proto::json::message(&stored),
        });
        // The reply is stored (and announced by chat as message.new), so a
        // lost ai.done is not a failure of the reply.
        if let Err(error) = self.publish(job, "ai.done", &done).await {
            tracing::error!(%error, "cannot publish ai.done");
        }
        Ok(stored)
    }

    async fn publish(&self, job: &Job, kind: &str, event: &Value) -> Result<(), BusError> {
        let room = &job.prompt.room_id;
        self.bus
            .publish(
                &room_channel(room),
                &envelope(room, 0, kind, event.to_string()),
            )
            .await
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use common::Secret;
    use common::bus::{BusEvent, MemoryBus};
    use common::grpc::{ClientSettings, channel};
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::provider::{ChunkStream, OfflineProvider, ProviderError};

    /// A provider that yields two chunks, then fails.
    struct Failing;

    #[async_trait]
    impl Provider for Failing {
        fn name(&self) -> &'static str {
            "failing"
        }

        async fn generate(&self, _prompt: &Prompt) -> Result<ChunkStream, ProviderError> {
            let items = vec![
                Ok("half ".to_string()),
                Ok("a ".to_string()),
                Err(ProviderError::Timeout),
            ];
            Ok(Box::pin(futures::stream::iter(items)))
        }
    }

    /// A chat client whose server does not exist: every call is `unavailable`.
    async fn unreachable_chat() -> ChatServiceClient<ServiceChannel> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        drop(listener);
        let settings = ClientSettings {
            credential: Secret::new("c".repeat(32)),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        ChatServiceClient::new(channel(&url, &settings).expect("channel"))
    }

    async fn run(provider: Arc<dyn Provider>) -> Vec<Value> {
        let bus = MemoryBus::new();
        let (subscriber, events) = bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(&room_channel("r_1"))
            .await
            .expect("subscribe");
        let generator = Generator {
            provider,
            bus: Arc::new(bus),
            chat: unreachable_chat().await,
        };
        let job = Job {
            stream_id: "s_1".into(),
            prompt: Prompt {
                room_id: "r_1".into(),
                text: "hello there".into(),
                model: None,
            },
        };
        generator.run(job, ShutdownSignal::never()).await;
        drain(events)
    }

    fn drain(mut events: UnboundedReceiver<BusEvent>) -> Vec<Value> {
        let mut out = Vec::new();
        while let Ok(BusEvent::Message { envelope, .. }) = events.try_recv() {
            assert_eq!(envelope.room_id, "r_1");
            let event: Value = serde_json::from_str(&envelope.json).expect("json");
            assert_eq!(event["type"], envelope.kind);
            out.push(event);
        }
        out
    }

    #[tokio::test]
    async fn a_provider_failure_ends_the_stream_with_ai_error() {
        let events = run(Arc::new(Failing)).await;
        let kinds: Vec<&str> = events.iter().filter_map(|e| e["type"].as_str()).collect();
        assert_eq!(kinds, ["ai.delta", "ai.delta", "ai.error"]);
        assert_eq!(events[0]["index"], 0);
        assert_eq!(events[1]["index"], 1);
        assert_eq!(events[2]["stream_id"], "s_1");
        assert_eq!(events[2]["error"]["code"], "timeout");
    }

    #[tokio::test]
    async fn a_reply_that_cannot_be_stored_ends_with_ai_error() {
        let events = run(Arc::new(OfflineProvider::new(Duration::ZERO))).await;
        let (last, deltas) = events.split_last().expect("events");
        assert_eq!(deltas.len(), OfflineProvider::chunks("hello there").len());
        for (i, delta) in deltas.iter().enumerate() {
            assert_eq!(delta["type"], "ai.delta");
            assert_eq!(delta["index"], i);
        }
        assert_eq!(last["type"], "ai.error");
        assert_eq!(last["error"]["code"], "unavailable", "{last}");
    }

    #[tokio::test]
    async fn shutdown_interrupts_the_stream_with_ai_error() {
        let bus = MemoryBus::new();
        let (subscriber, events) = bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(&room_channel("r_1"))
            .await
            .expect("subscribe");
        let generator = Generator {
            provider: Arc::new(OfflineProvider::new(Duration::from_secs(3600))),
            bus: Arc::new(bus),
            chat: unreachable_chat().await,
        };
        let job = Job {
            stream_id: "s_1".into(),
            prompt: Prompt {
                room_id: "r_1".into(),
                text: "hello".into(),
                model: None,
            },
        };
        let shutdown = common::shutdown::Shutdown::new();
        let task = tokio::spawn({
            let signal = shutdown.signal();
            async move { generator.run(job, signal).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("stops")
            .expect("joins");
        let events = drain(events);
        assert_eq!(
            events.first().map(|e| e["type"].clone()),
            Some(json!("ai.delta"))
        );
        let last = events.last().expect("events");
        assert_eq!(last["type"], "ai.error");
        assert_eq!(last["error"]["code"], "unavailable");
    }
}
