//! Where leases live: the [`PresenceStore`] contract and its backends, in
//! memory (one process) or in Redis (shared by every replica).
//!
//! A lease ties one connection to one user until it expires; a user is
//! online while any of their leases is unexpired. Expiry needs nobody to call
//! release: an edge that dies just stops renewing and its leases run out.
//! `last_seen` is recorded when a user's last lease ends, by release (the
//! release time) or by expiry (the expiry time, whenever it is noticed).

mod memory;
mod redis;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use crate::error::PresenceError;

/// One user's presence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user_id: String,
    /// Whether any connection of the user holds an unexpired lease.
    pub online: bool,
    /// Unix milliseconds when the user's last lease ended; 0 when they have
    /// never been seen going offline.
    pub last_seen_ms: i64,
}

/// Lease bookkeeping behind the presence service.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Starts (or restarts) the lease of `conn_id`, held by `edge_id` for
    /// `user_id`, lasting `ttl`.
    async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError>;

    /// Extends every listed lease of `edge_id` to `ttl` from now. Returns the
    /// connections it no longer knows (expired, released, or held by another
    /// edge); the edge registers those again.
    async fn renew(
        &self,
        edge_id: &str,
        conn_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, PresenceError>;

    /// Ends leases (connections closed); unknown ids are ignored.
    async fn release(&self, conn_ids: &[String]) -> Result<(), PresenceError>;

    /// The presence of each user, in the order asked.
    async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError>;
}

/// Wall-clock time for stores that keep Unix timestamps; injectable so tests
/// move time without sleeping.
pub trait Clock: Send + Sync + 'static {
    /// Unix time in milliseconds.
    fn now_ms(&self) -> i64;
}

/// The system clock.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        common::ids::now_ms()
    }
}
