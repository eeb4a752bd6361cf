//! Parley's AI service: `Ask` stores the prompt through chat-service as the
//! asker's message, then streams the assistant's reply to the room over the
//! bus (`ai.delta`…, then `ai.done` or `ai.error`) and stores the finished
//! reply as the assistant's message.
//!
//! Replies come from a [`Provider`]; the built-in one is the
//! [`OfflineProvider`], a clearly labelled development stand-in that is not
//! a language model. Quotas and the replies in progress live in a store
//! (`ai.backend`): this process's memory, or Redis shared by every replica.

mod context;
mod control;
mod error;
mod generation;
mod provider;
mod quota;
mod service;
mod store;
mod streams;

use std::sync::Arc;
use std::time::Duration;

use common::Secret;
use common::bus::Bus;
use common::clients::{Clients, Link};
use common::config::{AiConfig, AiFallback, AiProvider, Backend, Config};
use common::grpc::{Callers, Health, ServiceChannel};
use common::metrics::Metrics;
use common::shutdown::ShutdownSignal;
use proto::ai::v1::ai_service_server::{AiServiceServer, SERVICE_NAME};
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::service::Routes;

use crate::context::ContextReader;
use crate::control::Keeper;
pub use crate::error::AiError;
use crate::generation::{Generator, ReplyLimits};
pub use crate::provider::{
    Breaker, ChunkStream, OfflineProvider, OpenAiProvider, Policy, Prompt, Provider, ProviderError,
    Resilient, Role, Turn,
};
use crate::quota::{Limit, Quotas};
use crate::service::{AiHandler, Rules};
pub use crate::store::StoreError;
use crate::store::{AiStore, MemoryStore, RedisStore};
use crate::streams::Streams;

/// Longest wait, after the server stopped, for replies in progress to
/// publish their outcome.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Connect timeout towards model providers.
const PROVIDER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The AI service, ready to serve.
pub struct AiApp {
    config: AiConfig,
    /// The configured provider(s) behind retries, deadlines and breakers.
    provider: Arc<dyn Provider>,
    bus: Arc<dyn Bus>,
    /// Quotas and replies in progress, shared with other replicas (Redis)
    /// or not (memory).
    store: Arc<dyn AiStore>,
    /// Where prompts and replies are stored and history is read.
    chat: ServiceChannel,
    /// Where the service's metrics go (the gRPC server's among them).
    metrics: Arc<Metrics>,
    /// Credential callers must present (`authorization: Bearer …`).
    /// Who may call, and what (`[services]`).
    callers: Arc<Callers>,
}

impl std::fmt::Debug for AiApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AiApp")
            .field("enabled", &self.config.enabled)
            .field("provider", &self.provider.name())
            .field("backend", &self.config.backend)
            .field("callers", &self.callers)
            .finish_non_exhaustive()
    }
}

impl AiApp {
    /// Builds the service as both the `parley-ai` binary and the
    /// one-process suite run it: the `[ai]` section, the service
    /// credential, `bus` for streamed replies, and chat-service through
    /// `clients`, and `metrics` to record into.
    pub async fn build(
        config: &Config,
        clients: &Clients,
        bus: Arc<dyn Bus>,
        metrics: &Arc<Metrics>,
    ) -> Result<AiApp, AiError> {
        let mut app = Self::connect(
            &config.ai,
            bus,
            clients.channel(Link::AiToChat),
            &config.services.credential,
            metrics,
        )
        .await?;
        app.callers = Arc::new(Callers::of_config(&config.services));
        Ok(app)
    }

    /// Builds the service: the provider `config` names (with its fallback,
    /// retries and breakers), the store of quotas and replies in progress
    /// (connected to Redis with `backend = "redis"`), the bus replies are
    /// streamed on, and a channel to chat-service for storing messages and
    /// reading history.
    pub async fn connect(
        config: &AiConfig,
        bus: Arc<dyn Bus>,
        chat: ServiceChannel,
        credential: &Secret,
        metrics: &Arc<Metrics>,
    ) -> Result<AiApp, AiError> {
        let store: Arc<dyn AiStore> = match config.backend {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::Redis => Arc::new(
                RedisStore::connect(
                    &config.redis_url,
                    common::redis_client::ca_path(&config.redis_ca_file),
                    &config.redis_prefix,
                )
                .await?,
            ),
        };
        let main: Arc<dyn Provider> = match config.provider {
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
            AiProvider::Openai => Arc::new(OpenAiProvider::new(
                "openai",
                &config.base_url,
                config.api_key.clone(),
                PROVIDER_CONNECT_TIMEOUT,
            )?),
        };
        let fallback: Option<(Arc<dyn Provider>, Option<String>)> = match config.fallback {
            AiFallback::None => None,
            AiFallback::Offline => Some((
                Arc::new(OfflineProvider::new(Duration::from_millis(
                    config.offline_chunk_delay_ms,
                ))),
                None,
            )),
            AiFallback::Openai => Some((
                Arc::new(OpenAiProvider::new(
                    "fallback",
                    &config.fallback_base_url,
                    config.fallback_api_key.clone(),
                    PROVIDER_CONNECT_TIMEOUT,
                )?),
                Some(config.fallback_model.clone()),
            )),
        };
        let breaker = || {
            Breaker::new(
                config.breaker_failures,
                Duration::from_millis(config.breaker_cooldown_ms),
            )
        };
        let mut provider =
            Resilient::new(main, breaker(), policy(config)).with_metrics(metrics.ai.clone());
        if let Some((fallback, model)) = fallback {
            provider = provider.with_fallback(fallback, breaker(), model);
        }
        Ok(AiApp {
            config: config.clone(),
            provider: Arc::new(provider),
            bus,
            store,
            chat,
            metrics: metrics.clone(),
            callers: Arc::new(Callers::shared(credential)),
        })
    }

    /// Replaces the configured providers (embedding applications, tests);
    /// `provider` is used as given, without the configured retries and breakers.
    pub fn with_provider(mut self, provider: Arc<dyn Provider>) -> AiApp {
        self.provider = provider;
        self
    }

    /// Serves the AI service (plus health and reflection) on `listener` until
    /// `shutdown` fires; replies in progress then end with `ai.error`.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        let (running, mut finished) = mpsc::channel::<()>(1);
        let config = &self.config;
        let backend = ChatBackendServiceClient::new(self.chat.clone());
        let streams = Arc::new(Streams::new(self.store.clone(), self.bus.clone()));
        let quotas = Quotas::new(
            Limit {
                per_minute: config.requests_per_minute,
                concurrent: config.concurrent_streams,
            },
            Limit {
                per_minute: config.anonymous_requests_per_minute,
                concurrent: config.anonymous_concurrent_streams,
            },
            self.store.clone(),
        );
        let keeper =
            Keeper::subscribe(&self.bus, streams.clone(), quotas.clone(), self.store).await;
        tokio::spawn(keeper.run(shutdown.clone()));
        let handler = AiHandler {
            rules: Arc::new(Rules {
                enabled: config.enabled,
                max_prompt_chars: config.max_prompt_chars,
                models: config.allowed_models(),
            }),
            generator: Generator {
                provider: self.provider,
                bus: self.bus,
                chat: ChatServiceClient::new(self.chat),
                context: ContextReader {
                    chat: backend.clone(),
                    system_prompt: config.system_prompt.clone(),
                    budget: config.context_tokens,
                },
                streams,
                limits: ReplyLimits {
                    total_timeout: Duration::from_millis(config.total_timeout_ms),
                    max_reply_chars: config.max_reply_chars,
                },
                metrics: self.metrics.ai.clone(),
            },
            quotas,
            backend,
            shutdown: shutdown.clone(),
            running,
        };
        let server = AiServiceServer::new(handler);
        common::grpc::serve(
            "ai",
            listener,
            Routes::new(server),
            Health::new(&[SERVICE_NAME]),
            self.metrics.grpc.clone(),
            self.callers,
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

/// The retry and deadline policy of `config`.
pub fn policy(config: &AiConfig) -> Policy {
    Policy {
        first_token_timeout: Duration::from_millis(config.first_token_timeout_ms),
        retries: config.retries,
        backoff: Duration::from_millis(config.retry_backoff_ms),
    }
}
