//! The `[services]` section: how components reach each other when they run
//! as separate processes, and the credential every internal call carries.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// How components reach each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    pub auth_url: String,
    pub chat_url: String,
    pub ai_url: String,
    pub presence_url: String,
    /// Credential every internal gRPC call carries (`authorization: Bearer …`).
    /// Empty: generated at start in one-process mode; required (32+ bytes)
    /// when services run as separate processes.
    pub credential: Secret,
    /// Timeout for establishing a gRPC connection.
    pub connect_timeout_ms: u64,
    /// Every Postgres and Redis URL a component uses must be TLS (managed
    /// backends reached over networks you do not control).
    pub require_backend_tls: bool,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            auth_url: "http://127.0.0.1:50051".into(),
            chat_url: "http://127.0.0.1:50052".into(),
            ai_url: "http://127.0.0.1:50053".into(),
            presence_url: "http://127.0.0.1:50054".into(),
            credential: Secret::default(),
            connect_timeout_ms: 2_000,
            require_backend_tls: false,
        }
    }
}

impl ServicesConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !self.credential.is_empty() && self.credential.expose().len() < 32 {
            return Err(ConfigError(
                "key `services.credential`: must be at least 32 bytes".into(),
            ));
        }
        for (key, url) in [
            ("services.auth_url", &self.auth_url),
            ("services.chat_url", &self.chat_url),
            ("services.ai_url", &self.ai_url),
            ("services.presence_url", &self.presence_url),
        ] {
            if url
                .parse::<http::Uri>()
                .map(|u| u.scheme().is_none())
                .unwrap_or(true)
            {
                return Err(ConfigError(format!(
                    "key `{key}`: `{url}` is not an http(s) URL"
                )));
            }
        }
        Ok(())
    }
}
