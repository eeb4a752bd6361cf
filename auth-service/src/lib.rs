//! Parley's auth service: verifies access tokens (first-party HS256,
//! configured keys, external JWKS), signs in anonymous and development users,
//! issues and rotates first-party token pairs, keeps revocations and
//! failed-attempt blocks, and announces both to the edges on the bus. Every
//! call requires the service credential.
//!
//! `main.rs` and the tests build the same [`AuthApp`] and serve it on a
//! listener they bound themselves.

mod error;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod keys;
mod service;
mod store;
mod tokens;

use std::sync::Arc;
use std::time::Duration;

use common::Secret;
use common::bus::Bus;
use common::config::{AuthConfig, Backend, Config};
use common::grpc::{Callers, Health};
use common::metrics::Metrics;
use common::shutdown::ShutdownSignal;
use proto::auth::v1::auth_service_server::{AuthServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use crate::error::AuthError;
use crate::service::{AuthHandler, FailurePolicy};
pub use crate::service::{BLOCKED_KIND, REVOKED_KIND};
use crate::store::{AuthStore, MemoryStore, RedisStore};
use crate::tokens::Tokens;

/// The auth service, ready to serve.
pub struct AuthApp {
    handler: AuthHandler,
    /// Where the service's metrics go (the gRPC server's among them).
    metrics: Arc<Metrics>,
    /// SERVING while the store (Redis, with `backend = "redis"`) answers.
    health: Health,
    /// Credential callers must present (`authorization: Bearer …`).
    /// Who may call, and what (`[services]`).
    callers: Arc<Callers>,
}

impl std::fmt::Debug for AuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthApp")
            .field("handler", &self.handler)
            .field("callers", &self.callers)
            .finish()
    }
}

impl AuthApp {
    /// Builds the service as both the `parley-auth` binary and the
    /// one-process suite run it: the `[auth]` section, the service
    /// credential, `bus` for revocations and blocks, and `metrics` to
    /// record into.
    pub async fn build(
        config: &Config,
        bus: Arc<dyn Bus>,
        metrics: &Arc<Metrics>,
    ) -> Result<AuthApp, AuthError> {
        let mut app =
            Self::connect(&config.auth, &config.services.credential, bus, metrics).await?;
        app.callers = Arc::new(Callers::of_config(&config.services));
        Ok(app)
    }

    /// Builds the service from its configuration: parses every key (an
    /// unusable one names its config key), connects the store, and
    /// announces revocations and blocks on `bus`. An empty `hs256_secret`
    /// is replaced by a random one (tokens then die with the process).
    pub async fn connect(
        config: &AuthConfig,
        credential: &Secret,
        bus: Arc<dyn Bus>,
        metrics: &Arc<Metrics>,
    ) -> Result<AuthApp, AuthError> {
        let tokens = Tokens::new(config)?;
        let store: Arc<dyn AuthStore> = match config.backend {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::Redis => {
                let ca_file = common::redis_client::ca_path(&config.redis_ca_file);
                Arc::new(
                    RedisStore::connect(&config.redis_url, ca_file, &config.redis_prefix).await?,
                )
            }
        };
        if config.dev_login {
            tracing::warn!(
                "DEVELOPMENT LOGIN IS ON: `auth{{dev_user}}` signs anyone in as any user; \
                 never run this way where others can connect"
            );
        }
        let longest_s = config
            .refresh_ttl_s
            .max(config.access_ttl_s)
            .max(config.anonymous_ttl_s)
            .saturating_add(config.leeway_s);
        Ok(AuthApp {
            handler: AuthHandler {
                tokens: Arc::new(tokens),
                store,
                bus,
                anonymous: config.anonymous,
                dev_login: config.dev_login,
                failures: FailurePolicy {
                    max: config.failed_attempts_max,
                    window: Duration::from_secs(config.failed_window_s),
                    block: Duration::from_secs(config.block_s),
                },
                keep_revocations: Duration::from_secs(longest_s),
                metrics: metrics.auth.clone(),
            },
            metrics: metrics.clone(),
            health: Health::new(&[SERVICE_NAME]),
            callers: Arc::new(Callers::shared(credential)),
        })
    }

    /// Serves auth calls (plus health and reflection) on `listener` until
    /// `shutdown` fires.
    pub async fn run_until_stopped(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        let store = self.handler.store.clone();
        let up = self.metrics.auth.store_up.clone();
        let ping = |store: Arc<dyn AuthStore>| async move { store.ping().await };
        self.health
            .follow("store", store, ping, up, shutdown.clone());
        let server = AuthServiceServer::new(self.handler);
        common::grpc::serve(
            "auth",
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
