//! Parley's chat service: rooms, membership and each room's append-only,
//! sequenced event log, on SQLite (embedded default) or Postgres, chosen by
//! the database URL. Every committed log event is published on the room's
//! bus channel; the database stays the source of truth for recovery.
//!
//! `main.rs` and the tests build the same [`ChatApp`] and serve it on a
//! listener they bound themselves.

mod backend;
mod cleanup;
mod erasure;
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
use common::attachments::Blobs;
use common::bus::Bus;
use common::clients::{Clients, Link};
use common::config::{AttachmentsConfig, ChatConfig, Config};
use common::grpc::{Callers, Health, ServiceChannel};
use common::metrics::Metrics;
use common::shutdown::ShutdownSignal;
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::chat::v1::chat_backend_service_server::{
    ChatBackendServiceServer, SERVICE_NAME as BACKEND_SERVICE_NAME,
};
use proto::chat::v1::chat_service_server::{ChatServiceServer, SERVICE_NAME};
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use tokio::net::TcpListener;
use tonic::service::Routes;

use crate::backend::BackendHandler;
pub use crate::backend::{BOT_PREFIX, SYSTEM_SENDER};
pub use crate::cleanup::{Cleanup, CleanupReport};
pub use crate::error::ChatError;
use crate::service::{ChatHandler, Limits};
pub use crate::service::{MAX_ID_BYTES, MAX_METADATA_BYTES, MAX_ROOM_NAME_CHARS};
use crate::store::recent::RecentEvents;
use crate::store::{Caps, Store};
use crate::webhooks::{Connections, NoPresence, SystemClock, Webhooks};

/// Seconds as milliseconds, saturating.
fn millis(secs: u64) -> i64 {
    i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX)
}

/// The chat service, ready to serve.
pub struct ChatApp {
    handler: ChatHandler,
    /// Where the service's metrics go (the gRPC server's among them).
    metrics: Arc<Metrics>,
    /// SERVING while the database answers.
    health: Health,
    /// Who may call, and what (`[services]`).
    callers: Arc<Callers>,
    /// Retention, deleted rooms and unwanted attachments.
    cleanup: Cleanup,
    /// `chat.cleanup_interval_s`.
    cleanup_interval: Duration,
    /// Outgoing webhooks; started with the server.
    webhooks: Webhooks,
    /// `chat.watch_poll_ms`.
    watch_poll: Duration,
}

impl std::fmt::Debug for ChatApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChatApp")
            .field("limits", &self.handler.limits)
            .field("callers", &self.callers)
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
        let blobs = common::attachments::open(&config.attachments)
            .map_err(|e| ChatError::Setup(e.to_string()))?;
        let mut app = Self::connect(
            &config.chat,
            bus,
            Some(presence),
            &config.services.credential,
            metrics,
        )
        .await?
        .with_attachments(&config.attachments, blobs)
        .with_auth(AuthServiceClient::new(clients.channel(Link::ChatToAuth)));
        app.callers = Arc::new(Callers::of_config(&config.services));
        Ok(app)
    }

    /// Deletes attachment bytes from `blobs` (retention, erasure, uploads
    /// never sent) and applies the `[attachments]` limits; without it,
    /// only metadata is deleted and the defaults apply.
    pub fn with_attachments(mut self, config: &AttachmentsConfig, blobs: Blobs) -> Self {
        self.handler.limits.max_attachments = config.max_per_message;
        self.handler.limits.attachment_quota =
            i64::try_from(config.quota_bytes_per_user).unwrap_or(i64::MAX);
        self.handler.blobs = Some(blobs.clone());
        self.cleanup.blobs = Some(blobs);
        self.cleanup.unreferenced_ttl_ms = millis(config.unreferenced_ttl_s);
        self
    }

    /// Revokes an erased user's tokens through `auth`.
    pub fn with_auth(mut self, auth: AuthServiceClient<ServiceChannel>) -> Self {
        self.handler.auth = Some(auth);
        self
    }

    /// The clean-up job, to run at a chosen time (tests); the service also
    /// runs it every `chat.cleanup_interval_s` while it serves.
    pub fn cleanup(&self) -> Cleanup {
        self.cleanup.clone()
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
            invitations: config.max_pending_invitations_per_user,
        };
        store.recent = Arc::new(RecentEvents::new(
            config.recent_events_per_room as usize,
            usize::try_from(config.recent_events_max_bytes).unwrap_or(usize::MAX),
        ));
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
            max_attachments: AttachmentsConfig::default().max_per_message,
            attachment_quota: i64::try_from(AttachmentsConfig::default().quota_bytes_per_user)
                .unwrap_or(i64::MAX),
        };
        let cleanup = Cleanup {
            store: store.clone(),
            blobs: None,
            retention_days: config.retention_days,
            batch: config.cleanup_batch,
            deleted_room_purge_ms: millis(config.deleted_room_purge_s),
            unreferenced_ttl_ms: millis(AttachmentsConfig::default().unreferenced_ttl_s),
        };
        Ok(ChatApp {
            cleanup,
            cleanup_interval: Duration::from_secs(config.cleanup_interval_s),
            handler: ChatHandler::new(store, bus, presence, limits, metrics.chat.clone()),
            metrics: metrics.clone(),
            health: Health::new(&[SERVICE_NAME, BACKEND_SERVICE_NAME]),
            callers: Arc::new(Callers::shared(credential)),
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
        self.cleanup.spawn(self.cleanup_interval, shutdown.clone());
        self.webhooks.start(shutdown.clone());
        let backend = BackendHandler {
            chat: self.handler.clone(),
            webhooks: self.webhooks,
            watch_poll: self.watch_poll,
            shutdown: shutdown.clone(),
        };
        let mut handler = self.handler;
        handler.shutdown = shutdown.clone();
        let routes = Routes::new(ChatServiceServer::new(handler))
            .add_service(ChatBackendServiceServer::new(backend));
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
            self.callers,
            shutdown,
        )
        .await
    }
}
