//! The `parley.auth.v1.AuthService` gRPC handlers.

use std::sync::Arc;

use proto::auth::v1::auth_service_server::AuthService;
use proto::auth::v1::{
    SignInAnonymousRequest, SignInResponse, VerifyTokenRequest, VerifyTokenResponse,
};
use tonic::{Request, Response, Status};

use crate::error::AuthError;
use crate::tokens::Tokens;

/// Handles auth calls; cheap to clone.
#[derive(Debug, Clone)]
pub(crate) struct AuthHandler {
    pub(crate) tokens: Arc<Tokens>,
    /// Whether `SignInAnonymous` is allowed.
    pub(crate) anonymous: bool,
}

#[tonic::async_trait]
impl AuthService for AuthHandler {
    async fn verify_token(
        &self,
        request: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenResponse>, Status> {
        let request = request.into_inner();
        match self.tokens.verify(&request.token) {
            Ok(identity) => {
                tracing::debug!(user_id = %identity.user_id, "token verified");
                Ok(Response::new(VerifyTokenResponse {
                    identity: Some(identity),
                }))
            }
            Err(error) => {
                let reason = match &error {
                    AuthError::Invalid { reason } => reason,
                    _ => "expired",
                };
                tracing::info!(reason, client_ip = %request.client_ip, "token rejected");
                Err(error.into())
            }
        }
    }

    async fn sign_in_anonymous(
        &self,
        request: Request<SignInAnonymousRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        if !self.anonymous {
            return Err(AuthError::AnonymousDisabled.into());
        }
        let request = request.into_inner();
        let (identity, access_token) =
            self.tokens
                .issue_anonymous(&request.name)
                .inspect_err(|error| {
                    if matches!(error, AuthError::Signing(_)) {
                        tracing::error!(%error, "cannot issue anonymous token");
                    }
                })?;
        tracing::info!(
            user_id = %identity.user_id,
            client_ip = %request.client_ip,
            "anonymous user signed in"
        );
        Ok(Response::new(SignInResponse {
            identity: Some(identity),
            access_token,
        }))
    }
}
