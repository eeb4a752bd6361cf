//! The auth service's errors and how each one reaches a gRPC caller.

use std::time::Duration;

use common::ErrorCode;
use common::auth_reason::AuthReason;
use tonic::Status;

impl AuthError {
    /// How a binary ends on this error: a key only this service can parse
    /// is a configuration error (exit 64), like a bad config file.
    pub fn into_failure(self) -> common::cli::Failure {
        match self {
            AuthError::Config(message) => common::cli::Failure::Config(message),
            other => other.into(),
        }
    }
}

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The configuration cannot be used; the message names the key.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The token was well formed and correctly signed but is past its `exp`.
    #[error("token expired")]
    Expired,
    /// The token, its session or its user was revoked.
    #[error("token revoked")]
    Revoked,
    /// The token cannot be accepted; `reason` is a short word callers see
    /// (`bad_signature`, `unknown_key`, …), never part of the token.
    #[error("invalid token ({reason})")]
    Invalid { reason: AuthReason },
    /// Too many failed attempts from the caller's address.
    #[error("too many failed attempts; try again later")]
    Blocked { retry_after: Duration },
    /// A switched-off feature (anonymous sign-in, dev login).
    #[error("{0} is disabled")]
    Disabled(&'static str),
    /// A request field is out of range.
    #[error("{0}")]
    BadRequest(&'static str),
    /// Signing an issued token failed.
    #[error("cannot sign token: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
    /// Revocations or counters could not be read or written.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
}

impl AuthError {
    pub(crate) fn invalid(reason: AuthReason) -> Self {
        AuthError::Invalid { reason }
    }

    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired | AuthError::Revoked | AuthError::Invalid { .. } => {
                ErrorCode::Unauthorized
            }
            AuthError::Blocked { .. } => ErrorCode::RateLimited,
            AuthError::Disabled(_) => ErrorCode::Disabled,
            AuthError::BadRequest(_) => ErrorCode::BadRequest,
            AuthError::Store(_) => ErrorCode::Unavailable,
            AuthError::Config(_) | AuthError::Signing(_) => ErrorCode::Internal,
        }
    }

    /// Why a token was refused (sent to callers with the status).
    pub fn reason(&self) -> Option<AuthReason> {
        match self {
            AuthError::Expired => Some(AuthReason::Expired),
            AuthError::Revoked => Some(AuthReason::Revoked),
            AuthError::Invalid { reason } => Some(*reason),
            AuthError::Blocked { .. } => Some(AuthReason::Blocked),
            _ => None,
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        let message = match &error {
            AuthError::Signing(_) | AuthError::Config(_) => "internal error".to_string(),
            AuthError::Store(_) => "auth store unavailable".to_string(),
            other => other.to_string(),
        };
        let mut status = match &error {
            AuthError::Blocked { retry_after } => {
                error.code().status_retry_after(message, *retry_after)
            }
            _ => error.code().status(message),
        };
        if let Some(reason) = error.reason() {
            reason.encode(&mut status);
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reason(status: &Status) -> Option<&str> {
        AuthReason::decode(status).map(AuthReason::as_str)
    }

    #[test]
    fn token_failures_are_unauthenticated_with_a_reason() {
        let expired = Status::from(AuthError::Expired);
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert_eq!(expired.message(), "token expired");
        assert_eq!(reason(&expired), Some("expired"));
        let invalid = Status::from(AuthError::invalid(AuthReason::BadSignature));
        assert_eq!(invalid.code(), tonic::Code::Unauthenticated);
        assert_eq!(invalid.message(), "invalid token (bad_signature)");
        assert_eq!(reason(&invalid), Some("bad_signature"));
        let revoked = Status::from(AuthError::Revoked);
        assert_eq!(revoked.code(), tonic::Code::Unauthenticated);
        assert_eq!(reason(&revoked), Some("revoked"));
    }

    #[test]
    fn a_blocked_address_is_rate_limited_with_a_retry_hint() {
        let status = Status::from(AuthError::Blocked {
            retry_after: Duration::from_secs(90),
        });
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(reason(&status), Some("blocked"));
        assert_eq!(
            ErrorCode::retry_after(&status),
            Some(Duration::from_secs(90))
        );
    }

    #[test]
    fn disabled_features_are_a_failed_precondition() {
        let status = Status::from(AuthError::Disabled("anonymous sign-in"));
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(reason(&status).is_none());
    }
}
