//! Leases in this process (one-process mode). Expiry runs on
//! `tokio::time::Instant`, so tests drive it with paused time.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{Presence, PresenceStore};
use crate::error::PresenceError;

/// How often expired leases of users nobody asks about are dropped.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// A presence store in this process's memory.
pub struct MemoryStore {
    state: Mutex<State>,
    /// An instant and the Unix milliseconds it corresponds to, to turn
    /// lease instants into `last_seen` timestamps.
    origin: (Instant, i64),
}

struct Lease {
    user_id: String,
    edge_id: String,
    expires: Instant,
}

struct State {
    /// conn id → lease.
    leases: HashMap<String, Lease>,
    /// user id → conn ids of their leases (live, or expired and not yet
    /// noticed).
    users: HashMap<String, HashSet<String>>,
    /// user id → Unix milliseconds their last lease ended.
    last_seen: HashMap<String, i64>,
    /// When the next full sweep of expired leases is due.
    next_sweep: Instant,
}

impl MemoryStore {
    pub fn new() -> Self {
        let now = Instant::now();
        Self {
            state: Mutex::new(State {
                leases: HashMap::new(),
                users: HashMap::new(),
                last_seen: HashMap::new(),
                next_sweep: now + SWEEP_EVERY,
            }),
            origin: (now, common::ids::now_ms()),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Unix milliseconds of an instant.
    fn unix_ms(&self, instant: Instant) -> i64 {
        let (origin, origin_ms) = self.origin;
        origin_ms + instant.saturating_duration_since(origin).as_millis() as i64
    }

    /// Unix milliseconds now, on the same (possibly paused) clock as leases.
    #[cfg(test)]
    pub(crate) fn now_ms(&self) -> i64 {
        self.unix_ms(Instant::now())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl State {
    /// Drops the user's expired leases, recording their last expiry as
    /// `last_seen` when none is left; whether a live lease remains.
    fn prune(&mut self, user_id: &str, now: Instant, unix_ms: impl Fn(Instant) -> i64) -> bool {
        let Some(conns) = self.users.get_mut(user_id) else {
            return false;
        };
        let mut latest_expiry = None;
        conns.retain(|conn_id| {
            let expires = match self.leases.get(conn_id) {
                Some(lease) if lease.user_id == user_id => lease.expires,
                _ => return false,
            };
            if expires > now {
                return true;
            }
            latest_expiry = latest_expiry.max(Some(expires));
            self.leases.remove(conn_id);
            false
        });
        if !conns.is_empty() {
            return true;
        }
        self.users.remove(user_id);
        if let Some(expiry) = latest_expiry {
            self.mark_seen(user_id, unix_ms(expiry));
        }
        false
    }

    fn mark_seen(&mut self, user_id: &str, at_ms: i64) {
        let seen = self.last_seen.entry(user_id.to_string()).or_default();
        *seen = (*seen).max(at_ms);
    }

    /// Ends one lease now.
    fn release(&mut self, conn_id: &str, now: Instant, unix_ms: impl Fn(Instant) -> i64 + Copy) {
        let Some(user_id) = self.leases.get(conn_id).map(|lease| lease.user_id.clone()) else {
            return;
        };
        // An already expired lease ended at its expiry, not now.
        self.prune(&user_id, now, unix_ms);
        if self.leases.remove(conn_id).is_none() {
            return;
        }
        if let Some(conns) = self.users.get_mut(&user_id) {
            conns.remove(conn_id);
        }
        if !self.prune(&user_id, now, unix_ms) {
            self.mark_seen(&user_id, unix_ms(now));
        }
    }

    /// Drops every expired lease, at most once per [`SWEEP_EVERY`], so users
    /// nobody asks about do not accumulate.
    fn sweep_if_due(&mut self, now: Instant, unix_ms: impl Fn(Instant) -> i64 + Copy) {
        if now < self.next_sweep {
            return;
        }
        self.next_sweep = now + SWEEP_EVERY;
        let users: Vec<String> = self.users.keys().cloned().collect();
        for user_id in users {
            self.prune(&user_id, now, unix_ms);
        }
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
    async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        state.sweep_if_due(now, unix_ms);
        let moved = state
            .leases
            .get(conn_id)
            .is_some_and(|lease| lease.user_id != user_id);
        if moved {
            state.release(conn_id, now, unix_ms);
        }
        // A lease that ran out before this registration still ended the session.
        state.prune(user_id, now, unix_ms);
        state.leases.insert(
            conn_id.to_string(),
            Lease {
                user_id: user_id.to_string(),
                edge_id: edge_id.to_string(),
                expires: now + ttl,
            },
        );
        state
            .users
            .entry(user_id.to_string())
            .or_default()
            .insert(conn_id.to_string());
        Ok(())
    }

    async fn renew(
        &self,
        edge_id: &str,
        conn_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        state.sweep_if_due(now, unix_ms);
        let mut unknown = Vec::new();
        for conn_id in conn_ids {
            let expired_user = match state.leases.get_mut(conn_id) {
                Some(lease) if lease.expires > now && lease.edge_id == edge_id => {
                    lease.expires = now + ttl;
                    continue;
                }
                Some(lease) if lease.expires <= now => Some(lease.user_id.clone()),
                _ => None,
            };
            if let Some(user_id) = expired_user {
                state.prune(&user_id, now, unix_ms);
            }
            unknown.push(conn_id.clone());
        }
        Ok(unknown)
    }

    async fn release(&self, conn_ids: &[String]) -> Result<(), PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        for conn_id in conn_ids {
            state.release(conn_id, now, unix_ms);
        }
        Ok(())
    }

    async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        Ok(user_ids
            .iter()
            .map(|user_id| Presence {
                user_id: user_id.clone(),
                online: state.prune(user_id, now, unix_ms),
                last_seen_ms: state.last_seen.get(user_id).copied().unwrap_or_default(),
            })
            .collect())
    }
}
