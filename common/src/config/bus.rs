//! The `[bus]` section: the event bus between services and edges.

use serde::{Deserialize, Serialize};

use super::{Backend, ConfigError, redis_url};

/// The event bus between services and edges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `memory` (one process only) or `redis` (pub/sub).
    pub backend: Backend,
    pub redis_url: String,
    /// Prefix of every channel name, so several deployments can share a Redis.
    pub channel_prefix: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            channel_prefix: "parley".into(),
        }
    }
}

impl BusConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        redis_url("bus.redis_url", &self.redis_url)
    }
}
