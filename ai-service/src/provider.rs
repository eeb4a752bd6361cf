//! Model providers: where reply text comes from. The service streams what a
//! [`Provider`] yields, so an OpenAI-compatible backend is one more
//! implementation of the trait.

mod offline;

use std::pin::Pin;

use async_trait::async_trait;
use common::ErrorCode;
use futures::Stream;

pub use self::offline::OfflineProvider;

/// Reply text as it is generated, chunk by chunk; the stream ends when the
/// reply is complete.
pub type ChunkStream = Pin<Box<dyn Stream<Item = Result<String, ProviderError>> + Send>>;

/// What a provider is asked to answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// Room the reply is for (for providers that keep per-room context).
    pub room_id: String,
    /// The user's prompt, trimmed and non-empty.
    pub text: String,
    /// Model requested by the caller, if any; providers may ignore it.
    pub model: Option<String>,
}

/// A source of assistant replies.
#[async_trait]
pub trait Provider: Send + Sync + 'static {
    /// Short name for logs and traces, e.g. `offline`.
    fn name(&self) -> &'static str;

    /// Starts a reply to `prompt`. Errors before the first chunk are returned
    /// directly; errors mid-reply arrive on the stream.
    async fn generate(&self, prompt: &Prompt) -> Result<ChunkStream, ProviderError>;
}

/// Why a provider could not produce a reply.
#[derive(Debug, thiserror::Error)]
pub enum ProviderError {
    /// The provider cannot be reached or failed; a retry may work.
    #[error("model provider unavailable: {0}")]
    Unavailable(String),
    /// The provider did not answer in time.
    #[error("model provider timed out")]
    Timeout,
    /// The provider refused the prompt (e.g. a content policy).
    #[error("model provider refused the prompt: {0}")]
    Refused(String),
}

impl ProviderError {
    /// The protocol error code clients see for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            ProviderError::Unavailable(_) => ErrorCode::Unavailable,
            ProviderError::Timeout => ErrorCode::Timeout,
            ProviderError::Refused(_) => ErrorCode::Forbidden,
        }
    }
}
