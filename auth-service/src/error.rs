//! The auth service's errors and how each one reaches a gRPC caller.

use common::ErrorCode;
use tonic::Status;
use tonic::metadata::AsciiMetadataValue;

/// Response metadata key saying why a token was refused (`expired` or
/// `invalid`); the edge picks its close code (4003 or 4002) from it.
pub const REASON_METADATA: &str = "x-parley-reason";

/// Everything that can go wrong in the auth service.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The configuration cannot be used (e.g. a signing secret that is too short).
    #[error("invalid auth configuration: {0}")]
    Config(&'static str),
    /// The token was well formed and correctly signed but is past its `exp`.
    #[error("token expired")]
    Expired,
    /// The token cannot be accepted; `reason` is for the server log only,
    /// callers always see the same message.
    #[error("invalid token")]
    Invalid { reason: &'static str },
    /// Anonymous sign-in is switched off by the operator.
    #[error("anonymous sign-in is disabled")]
    AnonymousDisabled,
    /// A request field is out of range.
    #[error("{0}")]
    BadRequest(&'static str),
    /// Signing an issued token failed.
    #[error("cannot sign token: {0}")]
    Signing(#[source] jsonwebtoken::errors::Error),
}

impl AuthError {
    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::Expired | AuthError::Invalid { .. } => ErrorCode::Unauthorized,
            AuthError::AnonymousDisabled => ErrorCode::Disabled,
            AuthError::BadRequest(_) => ErrorCode::BadRequest,
            AuthError::Config(_) | AuthError::Signing(_) => ErrorCode::Internal,
        }
    }

    /// The value of [`REASON_METADATA`] for token failures.
    fn reason(&self) -> Option<&'static str> {
        match self {
            AuthError::Expired => Some("expired"),
            AuthError::Invalid { .. } => Some("invalid"),
            _ => None,
        }
    }
}

impl From<AuthError> for Status {
    fn from(error: AuthError) -> Self {
        let message = match &error {
            AuthError::Signing(_) | AuthError::Config(_) => "internal error".to_string(),
            other => other.to_string(),
        };
        let mut status = error.code().status(message);
        if let Some(reason) = error.reason() {
            status
                .metadata_mut()
                .insert(REASON_METADATA, AsciiMetadataValue::from_static(reason));
        }
        status
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_failures_are_unauthenticated_with_a_reason() {
        let expired = Status::from(AuthError::Expired);
        assert_eq!(expired.code(), tonic::Code::Unauthenticated);
        assert_eq!(expired.message(), "token expired");
        assert_eq!(
            expired
                .metadata()
                .get(REASON_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("expired")
        );
        let invalid = Status::from(AuthError::Invalid {
            reason: "bad signature",
        });
        assert_eq!(invalid.code(), tonic::Code::Unauthenticated);
        assert_eq!(invalid.message(), "invalid token");
        assert_eq!(
            invalid
                .metadata()
                .get(REASON_METADATA)
                .and_then(|v| v.to_str().ok()),
            Some("invalid")
        );
    }

    #[test]
    fn disabled_anonymous_sign_in_is_a_failed_precondition() {
        let status = Status::from(AuthError::AnonymousDisabled);
        assert_eq!(status.code(), tonic::Code::FailedPrecondition);
        assert!(status.metadata().get(REASON_METADATA).is_none());
    }
}
