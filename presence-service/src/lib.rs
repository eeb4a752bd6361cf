//! Parley's presence service: connection leases that edges register, renew
//! in one batched call per interval, and release; who is online follows from
//! the unexpired leases, with a grace period before anyone is announced
//! offline. It also keeps each user's status, relays call signalling between
//! two users, and streams presence changes to backends (`Watch`). State
//! lives in memory (one process) or in Redis; announcements go on the bus.
//!
//! `main.rs` and the tests build the same [`PresenceApp`] and serve it on a
//! listener they bound themselves.

mod engine;
mod error;
mod guard;
mod service;
mod store;

use std::sync::Arc;

use common::Secret;
use common::bus::Bus;
use common::clients::{Clients, Link};
use common::config::{Backend, Config, PresenceConfig};
use common::grpc::{Callers, Health, ServiceChannel};
use common::metrics::Metrics;
use common::shutdown::ShutdownSignal;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::presence::v1::presence_service_server::{PresenceServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::engine::Engine;
pub use crate::engine::{
    MAX_CALL_PAYLOAD_BYTES, MAX_STATUS_TEXT_CHARS, STATUSES, Timings, presence_event,
    visible_status,
};
pub use crate::error::PresenceError;
pub use crate::guard::CallLimits;
use crate::service::PresenceHandler;
pub use crate::service::{
    MAX_CONNS_PER_CALL, MAX_ID_BYTES, MAX_LEASES_PER_CALL, MAX_USERS_PER_CALL,
};
pub use crate::store::{
    Call, CallAction, Clock, Counts, Ended, MemoryStore, Presence, PresenceStore, RedisStore,
    Sweep, SystemClock, WentOffline,
};

/// The presence service, ready to serve.
pub struct PresenceApp {
    engine: Arc<Engine>,
    /// Where the service's metrics go (the gRPC server's among them).
    metrics: Arc<Metrics>,
    /// SERVING while the store (Redis, with `backend = "redis"`) answers.
    health: Health,
    /// Credential callers must present (`authorization: Bearer …`).
    /// Who may call, and what (`[services]`).
    callers: Arc<Callers>,
}

impl std::fmt::Debug for PresenceApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceApp")
            .field("timings", &self.engine.timings)
            .field("callers", &self.callers)
            .finish_non_exhaustive()
    }
}

impl PresenceApp {
    /// Builds the service as both the `parley-presence` binary and the
    /// one-process suite run it: the `[presence]` section, the service
    /// credential, `bus` for announcements, and chat-service (missed-call
    /// notifications) through `clients`, and `metrics` to record into.
    pub async fn build(
        config: &Config,
        clients: &Clients,
        bus: Arc<dyn Bus>,
        metrics: &Arc<Metrics>,
    ) -> Result<PresenceApp, PresenceError> {
        let chat = ChatBackendServiceClient::new(clients.channel(Link::PresenceToChat));
        let mut app = Self::connect(
            &config.presence,
            bus,
            Some(chat),
            &config.services.credential,
            metrics,
        )
        .await?;
        app.callers = Arc::new(Callers::of_config(&config.services));
        Ok(app)
    }

    /// Builds the service on the store `config.backend` names (Redis keys
    /// under `config.redis_prefix`); fails when Redis is unreachable.
    /// Changes are announced on `bus`; missed-call notifications go to
    /// `chat` when given.
    pub async fn connect(
        config: &PresenceConfig,
        bus: Arc<dyn Bus>,
        chat: Option<ChatBackendServiceClient<ServiceChannel>>,
        credential: &Secret,
        metrics: &Arc<Metrics>,
    ) -> Result<PresenceApp, PresenceError> {
        let store: Arc<dyn PresenceStore> = match config.backend {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::Redis => Arc::new(
                RedisStore::connect(
                    &config.redis_url,
                    common::redis_client::ca_path(&config.redis_ca_file),
                    &config.redis_prefix,
                    Arc::new(SystemClock),
                )
                .await?,
            ),
        };
        Ok(Self::with_store(
            store,
            Timings::from_config(config),
            bus,
            chat,
            credential,
            metrics,
        ))
    }

    /// Builds the service on a given store; `timings.lease_ttl` applies to
    /// requests that ask for a lifetime of 0.
    pub fn with_store(
        store: Arc<dyn PresenceStore>,
        timings: Timings,
        bus: Arc<dyn Bus>,
        chat: Option<ChatBackendServiceClient<ServiceChannel>>,
        credential: &Secret,
        metrics: &Arc<Metrics>,
    ) -> PresenceApp {
        PresenceApp {
            engine: Arc::new(Engine::new(
                store,
                bus,
                chat,
                timings,
                metrics.presence.clone(),
            )),
            metrics: metrics.clone(),
            health: Health::new(&[SERVICE_NAME]),
            callers: Arc::new(Callers::shared(credential)),
        }
    }

    /// Serves presence calls (plus health and reflection) on `listener`
    /// and runs the sweep until `shutdown` fires.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        tokio::spawn(self.engine.clone().run_sweeps(shutdown.clone()));
        let store = self.engine.store.clone();
        let up = self.metrics.presence.store_up.clone();
        let ping = |store: Arc<dyn PresenceStore>| async move { store.ping().await };
        self.health
            .follow("store", store, ping, up, shutdown.clone());
        let handler = PresenceHandler {
            engine: self.engine,
            shutdown: shutdown.clone(),
        };
        let server = PresenceServiceServer::new(handler);
        common::grpc::serve(
            "presence",
            listener,
            Routes::new(server),
            self.health,
            self.metrics.grpc.clone(),
            self.callers,
            shutdown,
        )
        .await
    }
}
