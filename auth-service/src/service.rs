//! The `parley.auth.v1.AuthService` gRPC handlers: verification with
//! revocation and failed-attempt policy, sign-in, issuing, refresh rotation
//! and revocation (announced to every edge on the bus).

use std::net::IpAddr;
use std::sync::Arc;
use std::time::Duration;

use common::auth_reason::AuthReason;
use common::bus::{Bus, EDGE_CONTROL_CHANNEL};
use common::security::{self, SecurityEvent};
use proto::auth::v1::auth_service_server::AuthService;
use proto::auth::v1::{
    CheckRevokedRequest, CheckRevokedResponse, DevLoginRequest, IssueTokensRequest,
    RefreshTokensRequest, RevokeRequest, RevokeResponse, SignInAnonymousRequest, SignInResponse,
    TokenPair, VerifyTokenRequest, VerifyTokenResponse,
};
use tonic::{Request, Response, Status};

use crate::error::AuthError;
use crate::store::{AuthStore, Family, Rotation, Target, TokenRef};
use crate::tokens::{self, ANONYMOUS_ROLE, Grant, Tokens, Verified};

/// Kind of the bus envelope announcing a revocation to the edges.
pub const REVOKED_KIND: &str = "auth.revoked";
/// Kind of the bus envelope announcing a blocked address to the edges.
pub const BLOCKED_KIND: &str = "auth.blocked";
/// Most tokens one `CheckRevoked` call may ask about.
const MAX_CHECKED_TOKENS: usize = 10_000;

/// When failed attempts block an address.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FailurePolicy {
    pub max: u32,
    pub window: Duration,
    pub block: Duration,
}

/// Handles auth calls; cheap to clone.
#[derive(Clone)]
pub(crate) struct AuthHandler {
    pub(crate) tokens: Arc<Tokens>,
    pub(crate) store: Arc<dyn AuthStore>,
    pub(crate) bus: Arc<dyn Bus>,
    /// Whether `SignInAnonymous` is allowed.
    pub(crate) anonymous: bool,
    /// Whether `DevLogin` is allowed.
    pub(crate) dev_login: bool,
    pub(crate) failures: FailurePolicy,
    /// How long a revocation is kept: the longest any token it could
    /// cover lives, plus the leeway.
    pub(crate) keep_revocations: Duration,
    pub(crate) metrics: common::metrics::AuthMetrics,
}

impl std::fmt::Debug for AuthHandler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthHandler")
            .field("tokens", &self.tokens)
            .field("anonymous", &self.anonymous)
            .field("dev_login", &self.dev_login)
            .field("failures", &self.failures)
            .finish_non_exhaustive()
    }
}

fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl AuthHandler {
    /// Verifies an access token and checks it is not revoked.
    pub(crate) async fn check(&self, token: &str) -> Result<Verified, AuthError> {
        let verified = self.tokens.verify(token).await?;
        let identity = &verified.identity;
        let revoked = self
            .store
            .is_revoked(TokenRef {
                jti: &identity.token_id,
                session: &identity.session_id,
                user: &identity.user_id,
                issued_at_s: verified.issued_at_s,
            })
            .await?;
        if revoked {
            return Err(AuthError::Revoked);
        }
        Ok(verified)
    }

    /// Refuses a blocked address.
    async fn check_address(&self, ip: &str) -> Result<(), AuthError> {
        if ip.is_empty() {
            return Ok(());
        }
        let now = common::ids::now_ms();
        if let Some(until) = self.store.blocked_until(ip, now).await? {
            let retry_after = Duration::from_millis(u64::try_from(until - now).unwrap_or(0));
            return Err(AuthError::Blocked { retry_after });
        }
        Ok(())
    }

    /// Logs a refused token and counts it against the address (expired
    /// tokens are routine and do not count); blocks the address past the limit.
    async fn failed(&self, ip: &str, error: &AuthError) {
        let Some(reason) = error.reason() else {
            return;
        };
        let addr = ip.parse::<IpAddr>().ok();
        security::log(SecurityEvent::AuthFailed, addr, None, reason.as_str());
        if ip.is_empty() || matches!(error, AuthError::Expired) {
            return;
        }
        let now = common::ids::now_ms();
        let policy = self.failures;
        let blocked = self
            .store
            .record_failure(
                ip,
                now,
                millis(policy.window),
                policy.max,
                millis(policy.block),
            )
            .await;
        match blocked {
            Ok(Some(until)) => {
                security::log(SecurityEvent::IpBlocked, addr, None, "failed_attempts");
                self.announce(BLOCKED_KIND, serde_json::json!({"ip": ip, "until": until}))
                    .await;
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "cannot count a failed attempt"),
        }
    }

    /// Issues an access token, counting it.
    fn issue_access(
        &self,
        grant: &Grant,
    ) -> Result<(String, proto::auth::v1::Identity), AuthError> {
        let issued = self.tokens.issue_access(grant)?;
        self.metrics.tokens_issued.inc();
        Ok(issued)
    }

    /// Stores a revocation and tells every edge.
    async fn revoke(&self, target: Target, why: &str) -> Result<(), AuthError> {
        let now = common::ids::now_ms();
        self.store
            .revoke(&target, now, now + millis(self.keep_revocations))
            .await?;
        self.metrics.revocations.inc();
        let (field, id) = match &target {
            Target::Token(id) => ("token_id", id),
            Target::Session(id) => ("session_id", id),
            Target::User(id) => ("user_id", id),
        };
        let user = match &target {
            Target::User(user) => Some(user.as_str()),
            _ => None,
        };
        security::log(SecurityEvent::TokenRevoked, None, user, why);
        self.announce(REVOKED_KIND, serde_json::json!({field: id, "at": now}))
            .await;
        Ok(())
    }

    async fn announce(&self, kind: &str, body: serde_json::Value) {
        let envelope = common::bus::envelope("", 0, kind, body.to_string());
        if let Err(error) = self.bus.publish(EDGE_CONTROL_CHANNEL, &envelope).await {
            tracing::warn!(%error, kind, "cannot announce to the edges");
        }
    }

    /// Issues a new session: an access token and the first refresh token of
    /// a new family.
    async fn issue_pair(&self, grant: Grant) -> Result<TokenPair, AuthError> {
        let (access_token, identity) = self.issue_access(&grant)?;
        let refresh_jti = common::ids::new_id("rt");
        let refresh_expires_at = common::ids::now_ms()
            + i64::try_from(self.tokens.refresh_ttl_s)
                .unwrap_or(i64::MAX / 2_000)
                .saturating_mul(1000);
        self.store
            .create_family(&Family {
                session: grant.session.clone(),
                user: grant.subject.clone(),
                name: grant.name.clone(),
                roles: grant.roles.clone(),
                current: refresh_jti.clone(),
                expires_at: refresh_expires_at,
            })
            .await?;
        let refresh_token = self.tokens.issue_refresh(
            &grant.subject,
            &grant.session,
            &refresh_jti,
            refresh_expires_at,
        )?;
        Ok(TokenPair {
            access_token,
            access_expires_at: identity.expires_at,
            refresh_token,
            refresh_expires_at,
            identity: Some(identity),
        })
    }

    async fn refresh(&self, token: &str) -> Result<TokenPair, AuthError> {
        let claims = self.tokens.verify_refresh(token)?;
        let revoked = self
            .store
            .is_revoked(TokenRef {
                jti: &claims.jti,
                session: &claims.session,
                user: &claims.subject,
                issued_at_s: claims.issued_at_s,
            })
            .await?;
        if revoked {
            return Err(AuthError::Revoked);
        }
        let next = common::ids::new_id("rt");
        let now = common::ids::now_ms();
        match self
            .store
            .rotate(&claims.session, &claims.jti, &next, now)
            .await?
        {
            Rotation::Rotated(family) => {
                let grant = Grant {
                    subject: family.user.clone(),
                    name: family.name.clone(),
                    roles: family.roles.clone(),
                    session: family.session.clone(),
                    ttl_s: self.tokens.access_ttl_s,
                };
                let (access_token, identity) = self.issue_access(&grant)?;
                let refresh_token = self.tokens.issue_refresh(
                    &family.user,
                    &family.session,
                    &next,
                    family.expires_at,
                )?;
                Ok(TokenPair {
                    access_token,
                    access_expires_at: identity.expires_at,
                    refresh_token,
                    refresh_expires_at: family.expires_at,
                    identity: Some(identity),
                })
            }
            Rotation::Reused(family) => {
                // Two holders of one refresh token: end the session for both.
                self.revoke(Target::Session(family.session), "refresh_reused")
                    .await?;
                Err(AuthError::Revoked)
            }
            Rotation::Unknown => Err(AuthError::Revoked),
        }
    }
}

/// Logs unexpected failures (token refusals are logged as security events).
fn to_status(error: AuthError) -> Status {
    if matches!(
        error,
        AuthError::Signing(_) | AuthError::Store(_) | AuthError::Config(_)
    ) {
        tracing::error!(%error, "auth call failed");
    }
    error.into()
}

#[tonic::async_trait]
impl AuthService for AuthHandler {
    async fn verify_token(
        &self,
        request: Request<VerifyTokenRequest>,
    ) -> Result<Response<VerifyTokenResponse>, Status> {
        let request = request.into_inner();
        self.check_address(&request.client_ip)
            .await
            .map_err(to_status)?;
        let checked = self.check(&request.token).await;
        let result = match &checked {
            Ok(_) => "ok",
            Err(error) => error.reason().map_or("error", AuthReason::as_str),
        };
        self.metrics
            .verifications
            .get_or_create(&[("result", result)])
            .inc();
        match checked {
            Ok(verified) => {
                tracing::debug!(user_id = %verified.identity.user_id, "token verified");
                Ok(Response::new(VerifyTokenResponse {
                    identity: Some(verified.identity),
                }))
            }
            Err(error) => {
                self.failed(&request.client_ip, &error).await;
                Err(to_status(error))
            }
        }
    }

    async fn sign_in_anonymous(
        &self,
        request: Request<SignInAnonymousRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        if !self.anonymous {
            return Err(AuthError::Disabled("anonymous sign-in").into());
        }
        let request = request.into_inner();
        let name = tokens::anonymous_name(&request.name)?;
        let grant = Grant {
            subject: common::ids::new_id("anon"),
            name,
            roles: vec![ANONYMOUS_ROLE.to_string()],
            session: common::ids::new_id("sess"),
            ttl_s: self.tokens.anonymous_ttl_s,
        };
        let (access_token, identity) = self.issue_access(&grant).map_err(to_status)?;
        tracing::info!(user_id = %identity.user_id, "anonymous user signed in");
        Ok(Response::new(SignInResponse {
            identity: Some(identity),
            access_token,
        }))
    }

    async fn dev_login(
        &self,
        request: Request<DevLoginRequest>,
    ) -> Result<Response<SignInResponse>, Status> {
        if !self.dev_login {
            return Err(AuthError::Disabled("dev login").into());
        }
        let request = request.into_inner();
        let user = request.user.trim().to_string();
        if tokens::check_subject(&user).is_err() || user.chars().count() > 64 {
            return Err(AuthError::BadRequest("dev_user must be 1 to 64 characters").into());
        }
        let grant = Grant {
            name: tokens::display_name(&user, || user.clone())?,
            subject: user,
            roles: Vec::new(),
            session: common::ids::new_id("sess"),
            ttl_s: self.tokens.anonymous_ttl_s,
        };
        let (access_token, identity) = self.issue_access(&grant).map_err(to_status)?;
        tracing::info!(user_id = %identity.user_id, "development login");
        Ok(Response::new(SignInResponse {
            identity: Some(identity),
            access_token,
        }))
    }

    async fn issue_tokens(
        &self,
        request: Request<IssueTokensRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let request = request.into_inner();
        tokens::check_subject(&request.subject).map_err(|_| {
            AuthError::BadRequest("subject must be 1 to 128 characters, not `assistant`")
        })?;
        tokens::check_roles(&request.roles)?;
        let subject = request.subject;
        let grant = Grant {
            name: tokens::display_name(&request.name, || subject.clone())?,
            subject,
            roles: request.roles,
            session: common::ids::new_id("sess"),
            ttl_s: self.tokens.access_ttl_s,
        };
        let pair = self.issue_pair(grant).await.map_err(to_status)?;
        Ok(Response::new(pair))
    }

    async fn refresh_tokens(
        &self,
        request: Request<RefreshTokensRequest>,
    ) -> Result<Response<TokenPair>, Status> {
        let request = request.into_inner();
        match self.refresh(&request.refresh_token).await {
            Ok(pair) => Ok(Response::new(pair)),
            Err(error) => {
                if let Some(reason) = error.reason() {
                    security::log(SecurityEvent::AuthFailed, None, None, reason.as_str());
                }
                Err(to_status(error))
            }
        }
    }

    async fn revoke(
        &self,
        request: Request<RevokeRequest>,
    ) -> Result<Response<RevokeResponse>, Status> {
        let request = request.into_inner();
        let targets = [
            (!request.token_id.is_empty()).then(|| Target::Token(request.token_id.clone())),
            (!request.session_id.is_empty()).then(|| Target::Session(request.session_id.clone())),
            (!request.user_id.is_empty()).then(|| Target::User(request.user_id.clone())),
        ];
        let mut set = targets.into_iter().flatten();
        let (Some(target), None) = (set.next(), set.next()) else {
            return Err(AuthError::BadRequest(
                "set exactly one of token_id, session_id and user_id",
            )
            .into());
        };
        self.revoke(target, "revoke_call")
            .await
            .map_err(to_status)?;
        Ok(Response::new(RevokeResponse {}))
    }

    async fn check_revoked(
        &self,
        request: Request<CheckRevokedRequest>,
    ) -> Result<Response<CheckRevokedResponse>, Status> {
        let tokens = request.into_inner().tokens;
        if tokens.len() > MAX_CHECKED_TOKENS {
            return Err(to_status(AuthError::BadRequest(
                "at most 10,000 tokens per call",
            )));
        }
        let mut revoked = Vec::new();
        for (index, token) in (0u32..).zip(&tokens) {
            let covered = self
                .store
                .is_revoked(TokenRef {
                    jti: &token.token_id,
                    session: &token.session_id,
                    user: &token.user_id,
                    issued_at_s: token.issued_at,
                })
                .await
                .map_err(|e| to_status(e.into()))?;
            if covered {
                revoked.push(index);
            }
        }
        Ok(Response::new(CheckRevokedResponse { revoked }))
    }
}
