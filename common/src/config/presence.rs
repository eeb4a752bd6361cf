//! The `[presence]` section: where leases live, their lifetime, the grace
//! period before anyone is announced offline, and call ringing.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Backend, ConfigError, at_least, redis_ca_file, redis_url};

/// The presence service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    pub listen: SocketAddr,
    /// HTTP address of `/metrics` when the service runs as its own process
    /// (the one-process suite serves every metric on the edge's `/metrics`).
    pub metrics_listen: SocketAddr,
    pub backend: Backend,
    pub redis_url: String,
    /// PEM CA certificates a `rediss://` `redis_url` must chain to; empty:
    /// the system's roots.
    pub redis_ca_file: String,
    /// Prefix of every Redis key, so several deployments can share a Redis.
    pub redis_prefix: String,
    /// Lease lifetime; an edge that stops renewing loses its users after this.
    pub lease_ttl_ms: u64,
    /// A user whose last lease ended is announced offline only after this
    /// long without a new one (no offline/online pair on a reconnect).
    pub grace_ms: u64,
    /// How often expired leases, passed grace periods and unanswered calls
    /// are looked for.
    pub sweep_ms: u64,
    /// An unanswered call ends after this long and leaves a missed-call
    /// notification.
    pub call_ring_ms: u64,
    /// `call.invite`s one callee may receive per minute, from all callers
    /// together (0: no limit).
    pub call_invites_per_callee_per_min: u32,
    /// `call.ice` relayed on one call before the callee answers.
    pub call_ice_before_answer: u32,
    /// Largest `call.ice` payload, in bytes of JSON.
    pub call_ice_max_bytes: usize,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9454)),
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: String::new(),
            redis_prefix: "presence:".into(),
            lease_ttl_ms: 30_000,
            grace_ms: 5_000,
            sweep_ms: 1_000,
            call_ring_ms: 45_000,
            call_invites_per_callee_per_min: 10,
            call_ice_before_answer: 50,
            call_ice_max_bytes: 2_048,
        }
    }
}

impl PresenceConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::metrics_listen("presence", self.listen, self.metrics_listen)?;
        at_least("presence.lease_ttl_ms", self.lease_ttl_ms, 1_000)?;
        at_least("presence.sweep_ms", self.sweep_ms, 10)?;
        if self.redis_prefix.is_empty() {
            return Err(ConfigError::new(
                "key `presence.redis_prefix`: must not be empty",
            ));
        }
        at_least("presence.call_ring_ms", self.call_ring_ms, 100)?;
        at_least(
            "presence.call_ice_before_answer",
            u64::from(self.call_ice_before_answer),
            1,
        )?;
        at_least(
            "presence.call_ice_max_bytes",
            self.call_ice_max_bytes as u64,
            256,
        )?;
        redis_url("presence.redis_url", &self.redis_url)?;
        redis_ca_file("presence.redis_ca_file", &self.redis_ca_file)
    }
}

#[cfg(test)]
mod tests {
    use crate::config::tests::load;

    #[test]
    fn invalid_presence_values_name_the_key() {
        let e = load(&[("PARLEY_PRESENCE_GRACE_MS", "soon")]).expect_err("not a number");
        assert!(e.to_string().contains("presence.grace_ms"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_REDIS_PREFIX", "")]).expect_err("empty prefix");
        assert!(e.to_string().contains("presence.redis_prefix"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_SWEEP_MS", "0")]).expect_err("zero");
        assert!(e.to_string().contains("presence.sweep_ms"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_CALL_RING_MS", "1")]).expect_err("too short");
        assert!(e.to_string().contains("presence.call_ring_ms"), "{e}");
    }
}
