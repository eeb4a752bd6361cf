//! The AI service's errors, as gRPC statuses for `Ask` and as `ai.error`
//! events for a reply that fails after `Ask` returned.

use std::time::Duration;

use common::ErrorCode;
use common::bus::BusError;
use tonic::Status;

use crate::provider::ProviderError;
use crate::store::StoreError;

/// Everything that can go wrong in the AI service.
#[derive(Debug, thiserror::Error)]
pub enum AiError {
    /// `ai.ask` is switched off by the operator.
    #[error("the assistant is disabled")]
    Disabled,
    /// A request field is missing or malformed.
    #[error("{0}")]
    BadRequest(String),
    /// Over a per-user quota.
    #[error("{message}")]
    RateLimited {
        message: &'static str,
        retry_after: Duration,
    },
    /// No such stream in progress (or it is not visible to the caller).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may not do this (e.g. cancel someone else's reply).
    #[error("{0}")]
    Forbidden(&'static str),
    /// The prompt is longer than allowed.
    #[error("prompt is longer than {max} characters")]
    TooLarge { max: usize },
    /// chat-service refused or failed a call; its code reaches the caller unchanged.
    #[error("chat service: {}", .0.message())]
    Chat(Status),
    /// chat-service answered without the message it stored.
    #[error("chat service returned no message")]
    MissingMessage,
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// chat-service answered without the room.
    #[error("chat service returned no room")]
    MissingRoom,
    /// The provider finished without producing any text.
    #[error("the model returned an empty reply")]
    EmptyReply,
    #[error("event bus: {0}")]
    Bus(#[from] BusError),
    /// The store of quotas and replies in progress (Redis) did not answer.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The service stopped while the reply was being generated.
    #[error("the assistant is shutting down")]
    ShuttingDown,
}

impl AiError {
    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            AiError::Disabled => ErrorCode::Disabled,
            AiError::BadRequest(_) => ErrorCode::BadRequest,
            AiError::RateLimited { .. } => ErrorCode::RateLimited,
            AiError::NotFound(_) => ErrorCode::NotFound,
            AiError::Forbidden(_) => ErrorCode::Forbidden,
            AiError::TooLarge { .. } => ErrorCode::TooLarge,
            AiError::Chat(status) => ErrorCode::from_grpc(status.code()),
            AiError::Provider(e) => e.code(),
            AiError::Bus(_) | AiError::Store(_) | AiError::ShuttingDown => ErrorCode::Unavailable,
            AiError::MissingMessage | AiError::MissingRoom | AiError::EmptyReply => {
                ErrorCode::Internal
            }
        }
    }

    /// What a client may be told: the cause for its own mistakes and for
    /// chat's answers, a generic message for failures of ours.
    pub fn client_message(&self) -> String {
        match self {
            AiError::Chat(status) => status.message().to_string(),
            AiError::Provider(e) => e.client_message(),
            AiError::MissingMessage | AiError::MissingRoom | AiError::Bus(_) => {
                "internal error".to_string()
            }
            AiError::Store(_) => "the assistant is unavailable".to_string(),
            other => other.to_string(),
        }
    }
}

impl From<AiError> for Status {
    fn from(error: AiError) -> Self {
        match &error {
            AiError::Chat(status) => Status::new(status.code(), status.message()),
            AiError::RateLimited {
                message,
                retry_after,
            } => ErrorCode::RateLimited.status_retry_after(*message, *retry_after),
            _ => error.code().status(error.client_message()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_errors_keep_their_code_and_message() {
        let status = Status::from(AiError::Chat(Status::not_found("room not found")));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "room not found");
        assert_eq!(
            AiError::Chat(Status::not_found("x")).code(),
            ErrorCode::NotFound
        );
    }

    #[test]
    fn own_errors_map_through_the_code_table() {
        assert_eq!(
            Status::from(AiError::Disabled).code(),
            tonic::Code::FailedPrecondition
        );
        assert_eq!(
            Status::from(AiError::TooLarge { max: 4000 }).code(),
            tonic::Code::OutOfRange
        );
        assert_eq!(
            Status::from(AiError::BadRequest("prompt is empty".into())).code(),
            tonic::Code::InvalidArgument
        );
        assert_eq!(AiError::ShuttingDown.code(), ErrorCode::Unavailable);
        let store = Status::from(AiError::Store(StoreError("redis://secret@host".into())));
        assert_eq!(store.code(), tonic::Code::Unavailable);
        assert!(!store.message().contains("secret"), "{}", store.message());
        let limited = Status::from(AiError::RateLimited {
            message: "too many questions",
            retry_after: Duration::from_millis(700),
        });
        assert_eq!(limited.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            ErrorCode::retry_after(&limited),
            Some(Duration::from_millis(700))
        );
    }
}
