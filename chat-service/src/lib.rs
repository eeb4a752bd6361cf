//! Parley's chat service: rooms, membership and each room's append-only,
//! sequenced event log, on SQLite (embedded default) or Postgres, chosen by
//! the database URL. Every committed log event is published on the room's
//! bus channel; the database stays the source of truth for recovery.
//!
//! `main.rs` and the tests build the same [`ChatApp`] and serve it on a
//! listener they bound themselves.

mod backend;
mod error;
pub mod permissions;
mod publisher;
mod service;
mod store;
mod watch;
mod webhooks;
mod writer;

use std::sync::Arc;
use std::time::Duration;

use common::Secret;
use common::bus::Bus;
use common::clients::{Clients, Link};
use common::config::{ChatConfig, Config};
use common::grpc::{CredentialCheck, Health, ServiceChannel};
use common::metrics::Metrics;
use common::shutdown::ShutdownSignal;
use proto::chat::v1::chat_backend_service_server::{
    ChatBackendServiceServer, SERVICE_NAME as BACKEND_SERVICE_NAME,
};
use proto::chat::v1::chat_service_server::{ChatServiceServer, SERVICE_NAME};
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::backend::BackendHandler;
pub use crate::backend::{BOT_PREFIX, SYSTEM_SENDER};
pub use crate::error::ChatError;
use crate::service::{ChatHandler, Limits};
pub use crate::service::{MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_ROOM_NAME_CHARS};
use crate::store::{Caps, Store};
use crate::webhooks::{Connections, NoPresence, SystemClock, Webhooks};

/// The chat service, ready to serve.
pub struct ChatApp {
    handler: ChatHandler,
    /// Where the service's metrics go (the gRPC server's among them).
    metrics: Arc<Metrics>,
    /// SERVING while the database answers.
    health: Health,
    /// Credential callers must present (`authorization: Bearer …`).
    credential: Secret,
    /// Outgoing webhooks; started with the server.
    webhooks: Webhooks,
    /// `chat.watch_poll_ms`.
    watch_poll: Duration,
}

impl std::fmt::Debug for ChatApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatApp")
            .field("limits", &self.handler.limits)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl ChatApp {
    /// Builds the service as both the `parley-chat` binary and the
    /// one-process suite run it: the `[chat]` section, the service
    /// credential, `bus` for room events, presence through `clients`, and
    /// `metrics` to record into.
    pub async fn build(
        config: &Config,
        clients: &Clients,
        bus: Arc<dyn Bus>,
        metrics: &Arc<Metrics>,
    ) -> Result<ChatApp, ChatError> {
        let presence = PresenceServiceClient::new(clients.channel(Link::ChatToPresence));
        Self::connect(
            &config.chat,
            bus,
            Some(presence),
            &config.services.credential,
            metrics,
        )
        .await
    }

    /// Connects to the database (running the migrations), and keeps the bus
    /// events are published on and, if given, the presence client that
    /// answers `online` on join.
    pub async fn connect(
        config: &ChatConfig,
        bus: Arc<dyn Bus>,
        presence: Option<PresenceServiceClient<ServiceChannel>>,
        credential: &Secret,
        metrics: &Arc<Metrics>,
    ) -> Result<ChatApp, ChatError> {
        let mut store = Store::connect(&config.database_url, config.max_connections).await?;
        store.caps = Caps {
            memberships: config.max_memberships_per_user,
            notifications: config.max_notifications_per_user,
            blocks: config.max_blocks_per_user,
        };
        let connections: Arc<dyn Connections> = match &presence {
            Some(client) => Arc::new(client.clone()),
            None => Arc::new(NoPresence),
        };
        let watch_poll = Duration::from_millis(config.watch_poll_ms);
        let mut webhooks = Webhooks::new(
            store.clone(),
            &config.webhooks,
            Arc::new(SystemClock),
            connections,
            watch_poll,
        )
        .await?;
        if let Some(presence) = &presence {
            webhooks = webhooks.with_presence(presence.clone());
        }
        let limits = Limits {
            max_text_chars: config.max_text_chars,
            page_limit: config.page_limit,
            invite_policy: config.invite_policy,
            max_mentions: config.max_mentions_per_message,
            admins_set_roles: config.admins_set_roles,
            max_initial_members: config.max_initial_members,
        };
        Ok(ChatApp {
            handler: ChatHandler::new(store, bus, presence, limits, metrics.chat.clone()),
            metrics: metrics.clone(),
            health: Health::new(&[SERVICE_NAME, BACKEND_SERVICE_NAME]),
            credential: credential.clone(),
            webhooks,
            watch_poll,
        })
    }

    /// Serves chat calls (plus health and reflection) on `listener` until
    /// `shutdown` fires; health follows the database (probed every
    /// [`common::grpc::HEALTH_PROBE_INTERVAL`]).
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        let store = self.handler.store.clone();
        let check = CredentialCheck::new(&self.credential);
        self.webhooks.start(shutdown.clone());
        let backend = BackendHandler {
            chat: self.handler.clone(),
            webhooks: self.webhooks,
            watch_poll: self.watch_poll,
            shutdown: shutdown.clone(),
        };
        let routes = Routes::new(ChatServiceServer::with_interceptor(
            self.handler,
            check.clone(),
        ))
        .add_service(ChatBackendServiceServer::with_interceptor(backend, check));
        let up = self.metrics.chat.database_up.clone();
        let ping = |store: Store| async move { store.ping().await };
        self.health
            .follow("database", store, ping, up, shutdown.clone());
        common::grpc::serve(
            "chat",
            listener,
            routes,
            self.health,
            self.metrics.grpc.clone(),
            shutdown,
        )
        .await
    }
}
