//! Parley's presence service: connection leases that edges register, renew
//! in one batched call per interval, and release; who is online follows from
//! the unexpired leases. Leases live in memory (one process) or in Redis.
//!
//! `main.rs` and the tests build the same [`PresenceApp`] and serve it on a
//! listener they bound themselves.

mod error;
mod service;
mod store;

use std::sync::Arc;
use std::time::Duration;

use common::Secret;
use common::config::{Backend, PresenceConfig};
use common::grpc::CredentialCheck;
use common::shutdown::ShutdownSignal;
use proto::presence::v1::presence_service_server::{PresenceServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use crate::error::PresenceError;
use crate::service::PresenceHandler;
pub use crate::service::{MAX_CONNS_PER_CALL, MAX_ID_BYTES, MAX_USERS_PER_CALL};
pub use crate::store::{Clock, MemoryStore, Presence, PresenceStore, RedisStore, SystemClock};

/// The presence service, ready to serve.
pub struct PresenceApp {
    handler: PresenceHandler,
    /// Credential callers must present (`authorization: Bearer …`).
    credential: Secret,
}

impl std::fmt::Debug for PresenceApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PresenceApp")
            .field("default_ttl", &self.handler.default_ttl)
            .field("credential", &self.credential)
            .finish_non_exhaustive()
    }
}

impl PresenceApp {
    /// Builds the service on the store `config.backend` names (Redis keys
    /// under [`RedisStore::DEFAULT_PREFIX`]); fails when Redis is unreachable.
    pub async fn connect(
        config: &PresenceConfig,
        credential: &Secret,
    ) -> Result<PresenceApp, PresenceError> {
        let store: Arc<dyn PresenceStore> = match config.backend {
            Backend::Memory => Arc::new(MemoryStore::new()),
            Backend::Redis => Arc::new(
                RedisStore::connect(
                    &config.redis_url,
                    RedisStore::DEFAULT_PREFIX,
                    Arc::new(SystemClock),
                )
                .await?,
            ),
        };
        Ok(Self::with_store(
            store,
            Duration::from_millis(config.lease_ttl_ms),
            credential,
        ))
    }

    /// Builds the service on a given store; `lease_ttl` applies to requests
    /// that ask for a lifetime of 0.
    pub fn with_store(
        store: Arc<dyn PresenceStore>,
        lease_ttl: Duration,
        credential: &Secret,
    ) -> PresenceApp {
        PresenceApp {
            handler: PresenceHandler {
                store,
                default_ttl: lease_ttl,
            },
            credential: credential.clone(),
        }
    }

    /// Serves presence calls (plus health and reflection) on `listener`
    /// until `shutdown` fires.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        let server = PresenceServiceServer::with_interceptor(
            self.handler,
            CredentialCheck::new(&self.credential),
        );
        common::grpc::serve(
            "presence",
            listener,
            Routes::new(server),
            &[SERVICE_NAME],
            shutdown,
        )
        .await
    }
}
