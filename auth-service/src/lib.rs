//! Parley's auth service: verifies HS256 access tokens and signs in anonymous
//! users, behind the service credential every internal gRPC call carries.
//!
//! `main.rs` and the tests build the same [`AuthApp`] and serve it on a
//! listener they bound themselves.

mod error;
mod service;
mod tokens;

use std::sync::Arc;

use common::Secret;
use common::config::AuthConfig;
use common::grpc::CredentialCheck;
use common::shutdown::ShutdownSignal;
use proto::auth::v1::auth_service_server::{AuthServiceServer, SERVICE_NAME};
use tokio::net::TcpListener;
use tonic::service::Routes;

pub use crate::error::{AuthError, REASON_METADATA};
use crate::service::AuthHandler;
use crate::tokens::Tokens;

/// The auth service, ready to serve.
pub struct AuthApp {
    handler: AuthHandler,
    /// Credential callers must present (`authorization: Bearer …`).
    credential: Secret,
}

impl std::fmt::Debug for AuthApp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthApp")
            .field("tokens", &self.handler.tokens)
            .field("anonymous", &self.handler.anonymous)
            .field("credential", &self.credential)
            .finish()
    }
}

impl AuthApp {
    /// Builds the service from its configuration. An empty
    /// `hs256_secret` is replaced by a random one (tokens then die with the
    /// process).
    pub fn new(config: &AuthConfig, credential: &Secret) -> Result<AuthApp, AuthError> {
        Ok(AuthApp {
            handler: AuthHandler {
                tokens: Arc::new(Tokens::new(config)?),
                anonymous: config.anonymous,
            },
            credential: credential.clone(),
        })
    }

    /// Serves auth calls (plus health and reflection) on `listener` until
    /// `shutdown` fires.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: ShutdownSignal,
    ) -> Result<(), tonic::transport::Error> {
        let server = AuthServiceServer::with_interceptor(
            self.handler,
            CredentialCheck::new(&self.credential),
        );
        common::grpc::serve(
            "auth",
            listener,
            Routes::new(server),
            &[SERVICE_NAME],
            shutdown,
        )
        .await
    }
}
