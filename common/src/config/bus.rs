//! The `[bus]` section: the event bus between services and edges.

use serde::{Deserialize, Serialize};

use super::{Backend, ConfigError, redis_ca_file, redis_url};
use crate::secret::Secret;

/// Shortest bus signing key, in bytes.
const MIN_SIGNING_KEY_BYTES: usize = 32;

/// The event bus between services and edges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `memory` (one process only) or `redis` (pub/sub).
    pub backend: Backend,
    pub redis_url: String,
    /// PEM CA certificates a `rediss://` `redis_url` must chain to; empty:
    /// the system's roots.
    pub redis_ca_file: String,
    /// Prefix of every channel name, so several deployments can share a Redis.
    pub channel_prefix: String,
    /// Key every payload on a Redis bus is signed with (32+ bytes, the same
    /// on every component); required with `backend = "redis"`.
    pub signing_key: Secret,
    /// The key before `signing_key`, still accepted during a rotation.
    pub previous_signing_key: Secret,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: String::new(),
            channel_prefix: "parley".into(),
            signing_key: Secret::default(),
            previous_signing_key: Secret::default(),
        }
    }
}

impl BusConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        redis_url("bus.redis_url", &self.redis_url)?;
        redis_ca_file("bus.redis_ca_file", &self.redis_ca_file)?;
        if self.backend == Backend::Redis && self.signing_key.expose().len() < MIN_SIGNING_KEY_BYTES
        {
            return Err(ConfigError(format!(
                "key `bus.signing_key`: a Redis bus needs a signing key of at least \
                 {MIN_SIGNING_KEY_BYTES} bytes, the same on every component"
            )));
        }
        let previous = self.previous_signing_key.expose().len();
        if previous != 0 && previous < MIN_SIGNING_KEY_BYTES {
            return Err(ConfigError(format!(
                "key `bus.previous_signing_key`: must be empty or at least {MIN_SIGNING_KEY_BYTES} bytes"
            )));
        }
        Ok(())
    }
}
