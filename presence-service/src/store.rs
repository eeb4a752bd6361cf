//! Where presence state lives: the [`PresenceStore`] contract and its
//! backends, in memory (one process) or in Redis (shared by every replica).
//!
//! A lease ties one connection to one user until it expires; a user is
//! online while any of their leases is unexpired. Expiry needs nobody to call
//! release: an edge that dies just stops renewing and its leases run out.
//! `last_seen` is recorded when a user's last lease ends, by release (the
//! release time) or by expiry (the expiry time, whenever it is noticed).
//!
//! When a user's last lease ends they enter a grace period; a sweep reports
//! them offline once it passed with no new lease, and a registration within
//! it cancels it silently. Every ended lease and every offline user is
//! reported exactly once, by `release` or by one sweep, whichever replica
//! runs it. The store also keeps each user's status and the calls in
//! progress.

mod memory;
mod redis;
#[cfg(test)]
mod tests;

use std::time::Duration;

use async_trait::async_trait;

pub use self::memory::MemoryStore;
pub use self::redis::RedisStore;
use crate::error::PresenceError;

/// One user's presence as stored (the service decides what others see).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Presence {
    pub user_id: String,
    /// Whether any connection of the user holds an unexpired lease.
    pub online: bool,
    /// The last lease ended and the user is not announced offline yet (the
    /// grace period is running).
    pub in_grace: bool,
    /// Unix milliseconds when the user's last lease ended; 0 when they have
    /// never been seen going offline.
    pub last_seen_ms: i64,
    /// The status the user set (`online` unless they set another one).
    pub status: String,
    /// The status text the user set.
    pub text: String,
}

/// A lease that ended: released, or found expired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ended {
    pub conn_id: String,
    pub user_id: String,
    pub edge_id: String,
}

/// A user whose grace period passed with no lease: announce them offline.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WentOffline {
    pub user_id: String,
    pub last_seen_ms: i64,
    /// The status they had (forgotten now): `invisible` users already
    /// looked offline.
    pub status: String,
}

/// What one sweep found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sweep {
    /// Leases found expired since the last sweep (released ones are
    /// reported by `release` instead).
    pub ended: Vec<Ended>,
    /// Users whose last lease ended at least the grace period ago.
    pub offline: Vec<WentOffline>,
    /// Calls that rang past their deadline, removed.
    pub missed_calls: Vec<Call>,
}

/// A call between two users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Call {
    pub id: String,
    pub caller: String,
    /// The caller's display name, for the callee's `call.incoming` and the
    /// missed-call notification.
    pub caller_name: String,
    pub callee: String,
    /// Room the call belongs to; empty for none.
    pub room_id: String,
    /// Whether the callee answered.
    pub answered: bool,
}

impl Call {
    /// The party that is not `user_id`.
    pub fn other_party(&self, user_id: &str) -> &str {
        if self.caller == user_id {
            &self.callee
        } else {
            &self.caller
        }
    }
}

/// What a party does to a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallAction {
    /// The callee accepts a ringing call.
    Answer,
    /// The callee declines a ringing call (it ends).
    Reject,
    /// Either party ends the call.
    End,
    /// Either party sends connectivity candidates (nothing changes).
    Ice,
}

impl CallAction {
    pub fn parse(action: &str) -> Option<CallAction> {
        Some(match action {
            "answer" => CallAction::Answer,
            "reject" => CallAction::Reject,
            "end" => CallAction::End,
            "ice" => CallAction::Ice,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            CallAction::Answer => "answer",
            CallAction::Reject => "reject",
            CallAction::End => "end",
            CallAction::Ice => "ice",
        }
    }
}

/// How long an answered call is kept after its last action before it is
/// forgotten (a call nobody ends must not live forever).
pub const ACTIVE_CALL_KEEP: Duration = Duration::from_secs(12 * 3600);
/// How long `last_seen` is remembered after a user's last lease ended.
pub const LAST_SEEN_KEEP: Duration = Duration::from_secs(30 * 24 * 3600);
/// Most items of each kind one sweep handles; the next sweep takes the rest.
pub const SWEEP_LIMIT: usize = 1_000;

/// Lease, status and call bookkeeping behind the presence service.
#[async_trait]
pub trait PresenceStore: Send + Sync + 'static {
    /// Starts (or restarts) the lease of `conn_id`, held by `edge_id` for
    /// `user_id`, lasting `ttl`. Returns whether the user came online: they
    /// had no live lease and were not within a grace period.
    async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError>;

    /// Extends every listed lease of `edge_id` to `ttl` from now. Returns the
    /// connections it no longer knows (expired, released, or held by another
    /// edge); the edge registers those again.
    async fn renew(
        &self,
        edge_id: &str,
        conn_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, PresenceError>;

    /// Ends leases (connections closed); unknown ids are ignored. Returns
    /// the live leases it ended (expired ones are reported by a sweep).
    async fn release(&self, conn_ids: &[String]) -> Result<Vec<Ended>, PresenceError>;

    /// The presence of each user, in the order asked.
    async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError>;

    /// Sets a user's status and text; returns the previous ones. Kept until
    /// the user is announced offline.
    async fn set_status(
        &self,
        user_id: &str,
        status: &str,
        text: &str,
    ) -> Result<(String, String), PresenceError>;

    /// Finds expired leases, users whose last lease ended `grace` ago or
    /// more (forgetting their status), and calls unanswered past their
    /// deadline; at most [`SWEEP_LIMIT`] of each.
    async fn sweep(&self, grace: Duration) -> Result<Sweep, PresenceError>;

    /// Stores a new ringing call that is missed after `ring`.
    async fn create_call(&self, call: &Call, ring: Duration) -> Result<(), PresenceError>;

    /// `user_id` acts on a call; returns the call as it was before. Unknown
    /// calls, calls past their ring deadline and calls `user_id` is not
    /// part of are `NotFound`; answering or rejecting is the callee's
    /// (`Forbidden` for the caller), on a ringing call only (`Conflict`).
    async fn act_on_call(
        &self,
        call_id: &str,
        user_id: &str,
        action: CallAction,
    ) -> Result<Call, PresenceError>;

    /// Forgets a user's status, status text, last-seen time and pending
    /// grace period (erasure). Live leases stay until their connections end.
    async fn forget(&self, user_id: &str) -> Result<(), PresenceError>;

    /// Live leases and the users holding them, for the metrics.
    async fn counts(&self) -> Result<Counts, PresenceError>;

    /// Whether the store answers (the service's health follows it); a store
    /// in this process always does.
    async fn ping(&self) -> bool {
        true
    }
}

/// What [`PresenceStore::counts`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub leases: u64,
    pub online_users: u64,
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
