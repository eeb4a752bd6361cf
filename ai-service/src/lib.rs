//! Parley's AI service: `Ask` stores the prompt through chat-service as the
//! asker's message, then streams the assistant's reply to the room over the
//! bus (`ai.delta`…, then `ai.done` or `ai.error`) and stores the finished
//! reply as the assistant's message.
//!
//! Replies come from a [`Provider`]; the built-in one is the
//! [`OfflineProvider`], a clearly labelled development stand-in that is not
//! a language model.

mod error;
mod generation;
mod provider;
mod service;

use std::sync::Arc;
use std::time::Duration;

use common::Secret;
use common::bus::Bus;
use common::config::{AiConfig, AiProvider};
use common::grpc::{CredentialCheck, ServiceChannel};
use common::shutdown::ShutdownSignal;
use proto::ai::v1::ai_service_server::{AiServiceServer, SERVICE_NAME};
use proto::chat::v1::chat_service_client::ChatServiceClient;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::service::Routes;

pub use crate::error::AiError;
use crate::generation::Generator;
pub use crate::provider::{ChunkStream, OfflineProvider, Prompt, Provider, ProviderError};
use crate::service::AskHandler;

/// Longest wait, after the server stopped, for replies in progress to
/// publish their outcome.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// The AI service, ready to serve.
pub struct AiApp {
    /// Whether `Ask` is switched on.
    enabled: bool,
    provider: Arc<dyn Provider>,
    bus: Arc<dyn Bus>,
    /// Where prompts and replies are stored.
    chat: ChatServiceClient<ServiceChannel>,
    /// Credential callers must present (`authorization: Bearer …`).
    credential: Secret,
}

impl std::fmt::Debug for AiApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiApp")
            .field("enabled", &self.enabled)
            .field("provider", &self.provider.name())
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl AiApp {
    /// Builds the service: the provider `config` names, the bus replies are
    /// streamed on, and a chat-service client for storing messages.
    pub fn new(
        config: &AiConfig,
        bus: Arc<dyn Bus>,
        chat: ChatServiceClient<ServiceChannel>,
        credential: &Secret,
    ) -> Result<AiApp, AiError> {
        let provider: Arc<dyn Provider> = match config.provider {
            AiProvider::Offline => {
                if config.enabled {
                    tracing::warn!(
                        "assistant replies come from the offline development provider, which is not a language model"
                    );
                }
                Arc::new(OfflineProvider::new(Duration::from_millis(
                    config.offline_chunk_delay_ms,
                )))
            }
        };
        Ok(AiApp {
            enabled: config.enabled,
            provider,
            bus,
            chat,
            credential: credential.clone(),
        })
    }

    /// Replaces the configured provider (embedding applications, tests).
    pub fn with_provider(mut self, provider: Arc<dyn Provider>) -> AiApp {
        self.provider = provider;
        self
    }

    /// Serves `Ask` (plus health and reflection) on `listener` until
    /// `shutdown` fires; replies in progress then end with `ai.error`.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        let (running, mut finished) = mpsc::channel::<()>(1);
        let handler = AskHandler {
            enabled: self.enabled,
            generator: Generator {
                provider: self.provider,
                bus: self.bus,
                chat: self.chat,
            },
            shutdown: shutdown.clone(),
            running,
        };
        let server =
            AiServiceServer::with_interceptor(handler, CredentialCheck::new(&self.credential));
        common::grpc::serve(
            "ai",
            listener,
            Routes::new(server),
            &[SERVICE_NAME],
            shutdown,
        )
        .await?;
        // Every reply task holds a sender; `recv` returns `None` once all are gone.
        if tokio::time::timeout(DRAIN_GRACE, finished.recv())
            .await
            .is_err()
        {
            tracing::warn!("assistant replies still running after the shutdown grace period");
        }
        Ok(())
    }
}
