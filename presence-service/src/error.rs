//! The presence service's errors and how each one reaches a gRPC caller.

use common::ErrorCode;
use tonic::Status;

/// Everything that can go wrong in the presence service.
#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    /// A request field is missing or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// A field is over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The thing does not exist, or the caller is not part of it.
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may not do this to it.
    #[error("{0}")]
    Forbidden(String),
    /// Over a limit; retrying after `retry_after` may succeed.
    #[error("{message}")]
    RateLimited {
        message: String,
        retry_after: std::time::Duration,
    },
    /// It is not in a state that allows this.
    #[error("{0}")]
    Conflict(String),
    /// The store cannot be reached (connection refused, dropped, timed out).
    #[error("presence store unavailable: {0}")]
    Unavailable(redis::RedisError),
    /// The store answered with an error.
    #[error("presence store failed: {0}")]
    Store(redis::RedisError),
}

impl PresenceError {
    /// Whether the caller is at fault (not worth an error log).
    pub fn is_caller_error(&self) -> bool {
        !matches!(
            self,
            PresenceError::Unavailable(_) | PresenceError::Store(_)
        )
    }

    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            PresenceError::BadRequest(_) => ErrorCode::BadRequest,
            PresenceError::TooLarge(_) => ErrorCode::TooLarge,
            PresenceError::NotFound(_) => ErrorCode::NotFound,
            PresenceError::Forbidden(_) => ErrorCode::Forbidden,
            PresenceError::Conflict(_) => ErrorCode::Conflict,
            PresenceError::RateLimited { .. } => ErrorCode::RateLimited,
            PresenceError::Unavailable(_) => ErrorCode::Unavailable,
            PresenceError::Store(_) => ErrorCode::Internal,
        }
    }
}

impl From<redis::RedisError> for PresenceError {
    fn from(error: redis::RedisError) -> Self {
        if error.is_io_error()
            || error.is_timeout()
            || error.is_connection_refusal()
            || error.is_connection_dropped()
            || error.is_unrecoverable_error()
        {
            PresenceError::Unavailable(error)
        } else {
            PresenceError::Store(error)
        }
    }
}

impl From<PresenceError> for Status {
    fn from(error: PresenceError) -> Self {
        if let PresenceError::RateLimited {
            message,
            retry_after,
        } = &error
        {
            return ErrorCode::RateLimited.status_retry_after(message.clone(), *retry_after);
        }
        let message = match &error {
            PresenceError::BadRequest(message)
            | PresenceError::TooLarge(message)
            | PresenceError::Forbidden(message)
            | PresenceError::Conflict(message) => message.clone(),
            PresenceError::NotFound(_) | PresenceError::RateLimited { .. } => error.to_string(),
            PresenceError::Unavailable(_) => "presence store unavailable".to_string(),
            PresenceError::Store(_) => "internal error".to_string(),
        };
        error.code().status(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn store_details_stay_out_of_statuses() {
        let refused =
            redis::RedisError::from(std::io::Error::from(std::io::ErrorKind::ConnectionRefused));
        let status = Status::from(PresenceError::from(refused));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "presence store unavailable");

        let script = redis::RedisError::from((redis::ErrorKind::ResponseError, "script failed"));
        let status = Status::from(PresenceError::from(script));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");

        let status = Status::from(PresenceError::BadRequest(
            "user_id must not be empty".into(),
        ));
        assert_eq!(status.code(), tonic::Code::InvalidArgument);
        assert_eq!(status.message(), "user_id must not be empty");
    }
}
