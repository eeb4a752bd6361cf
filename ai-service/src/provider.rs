//! Model providers: where reply text comes from. The service streams what a
//! [`Provider`] yields; [`OpenAiProvider`] speaks to any OpenAI-compatible
//! endpoint, [`OfflineProvider`] is the development stand-in, and
//! [`Resilient`] wraps them with retries, deadlines, circuit breakers and a
//! fallback.

mod offline;
mod openai;
mod resilient;

use std::pin::Pin;

use async_trait::async_trait;
use common::ErrorCode;
use futures::Stream;

pub use self::offline::OfflineProvider;
pub use self::openai::OpenAiProvider;
pub use self::resilient::{Breaker, Policy, Resilient};

/// Reply text as it is generated, chunk by chunk; the stream ends when the
/// reply is complete.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<String, ProviderError>> + Send>>;

/// Who said a message of the conversation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    /// The role's name in OpenAI's chat format.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One message of the conversation sent to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Turn {
    pub role: Role,
    /// Display name of a human (or bot) author; `None` for system and assistant.
    pub name: Option<String>,
    pub content: String,
}

impl Turn {
    pub fn new(role: Role, name: Option<String>, content: impl Into<String>) -> Self {
        Self {
            role,
            name,
            content: content.into(),
        }
    }
}

/// What a provider is asked to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The conversation, oldest first: the system prompt, the context, and
    /// the question last.
    pub messages: Vec<Turn>,
    /// The model to use (already checked against the allowed ones).
    pub model: String,
}

impl Prompt {
    /// The question: the content of the last user message.
    pub fn question(&self) -> &str {
        self.messages
            .iter()
            .rev()
            .find(|turn| turn.role == Role::User)
            .map(|turn| turn.content.as_str())
            .unwrap_or_default()
    }
}

/// A source of assistant replies.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short name for logs and traces, e.g. `offline`.
    fn name(&self) -> &'static str;

    /// Starts a reply to `prompt`. Errors before the response starts are
    /// returned directly; errors mid-reply arrive on the stream.
    async fn generate(&self, prompt: &Prompt) -> Result<ChunkStream, ProviderError>;
}

/// Why a provider could not produce a reply.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ProviderError {
    /// The provider could not be reached (connection refused, reset, TLS).
    #[error("model provider unreachable: {0}")]
    Connect(String),
    /// The provider answered with an HTTP error status.
    #[error("model provider answered {status}: {message}")]
    Status { status: u16, message: String },
    /// The provider's response is not the expected event stream.
    #[error("model provider sent a malformed stream: {0}")]
    Protocol(String),
    /// The provider reported an error inside the stream.
    #[error("model provider failed: {0}")]
    Failed(String),
    /// The first text or the whole reply did not arrive in time.
    #[error("model provider timed out")]
    Timeout,
    /// The provider failed too often recently; calls wait for its circuit to close.
    #[error("model provider unavailable (circuit open)")]
    CircuitOpen,
}

impl ProviderError {
    /// The error's class, a metric label.
    pub fn kind(&self) -> &'static str {
        match self {
            ProviderError::Connect(_) => "connect",
            ProviderError::Status { .. } => "status",
            ProviderError::Protocol(_) => "protocol",
            ProviderError::Failed(_) => "failed",
            ProviderError::Timeout => "timeout",
            ProviderError::CircuitOpen => "circuit_open",
        }
    }
}

impl ProviderError {
    /// The protocol error code clients see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProviderError::Status { status: 429, .. } => ErrorCode::RateLimited,
            ProviderError::Status {
                status: 400 | 404 | 422,
                ..
            } => ErrorCode::BadRequest,
            ProviderError::Timeout => ErrorCode::Timeout,
            ProviderError::Connect(_)
            | ProviderError::Status { .. }
            | ProviderError::Protocol(_)
            | ProviderError::Failed(_)
            | ProviderError::CircuitOpen => ErrorCode::Unavailable,
        }
    }

    /// Whether another attempt may succeed: connection errors, 429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            ProviderError::Connect(_) => true,
            ProviderError::Status { status, .. } => *status == 429 || *status >= 500,
            _ => false,
        }
    }

    /// Whether the failure says the provider is unhealthy (counts towards
    /// opening its circuit); a refused request does not.
    pub fn is_outage(&self) -> bool {
        self.retryable() || matches!(self, ProviderError::Timeout | ProviderError::Protocol(_))
    }

    /// What a client may be told (provider bodies stay in the log).
    pub fn client_message(&self) -> String {
        match self {
            ProviderError::Status { status, .. } => {
                format!("the model provider answered HTTP {status}")
            }
            ProviderError::Connect(_) => "the model provider is unreachable".into(),
            ProviderError::Protocol(_) | ProviderError::Failed(_) => {
                "the model provider failed".into()
            }
            other => other.to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_connection_errors_429_and_5xx_are_retried() {
        let status = |status| ProviderError::Status {
            status,
            message: String::new(),
        };
        assert!(ProviderError::Connect("refused".into()).retryable());
        assert!(status(429).retryable());
        assert!(status(503).retryable());
        assert!(!status(400).retryable());
        assert!(!status(401).retryable());
        assert!(!ProviderError::Timeout.retryable());
        assert_eq!(status(429).code(), ErrorCode::RateLimited);
        assert_eq!(status(404).code(), ErrorCode::BadRequest);
        assert_eq!(status(500).code(), ErrorCode::Unavailable);
        assert!(ProviderError::Timeout.is_outage());
        assert!(!status(400).is_outage());
    }
}
