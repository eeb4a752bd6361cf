//! Presence state in this process (one-process mode). Expiry runs on
//! `tokio::time::Instant`, so tests drive it with paused time.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use tokio::time::Instant;

use super::{
    ACTIVE_CALL_KEEP, Call, CallAction, Counts, Ended, LAST_SEEN_KEEP, Presence, PresenceStore,
    SWEEP_LIMIT, Sweep, WentOffline,
};
use crate::error::PresenceError;

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

struct StoredCall {
    call: Call,
    /// While ringing: when it counts as missed.
    ring_until: Option<Instant>,
    /// When it is forgotten if nobody acts on it.
    expires: Instant,
}

#[derive(Default)]
struct State {
    /// conn id → lease.
    leases: HashMap<String, Lease>,
    /// user id → conn ids of their leases (live, or expired and not yet
    /// noticed).
    users: HashMap<String, HashSet<String>>,
    /// user id → Unix milliseconds their last lease ended.
    last_seen: HashMap<String, i64>,
    /// user id → when their last lease ended, while not announced offline.
    pending: HashMap<String, Instant>,
    /// Expired leases not reported by a sweep yet.
    ended: Vec<Ended>,
    /// user id → (status, text) they set.
    statuses: HashMap<String, (String, String)>,
    /// call id → call.
    calls: HashMap<String, StoredCall>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self {
            state: Mutex::new(State::default()),
            origin: (Instant::now(), common::ids::now_ms()),
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
    /// Drops the user's expired leases (queued for the next sweep to
    /// report), recording their last expiry as `last_seen` and starting the
    /// grace period when none is left; whether a live lease remains.
    fn prune(&mut self, user_id: &str, now: Instant, unix_ms: impl Fn(Instant) -> i64) -> bool {
        let Some(conns) = self.users.get_mut(user_id) else {
            return false;
        };
        let mut latest_expiry = None;
        conns.retain(|conn_id| {
            let lease = match self.leases.get(conn_id) {
                Some(lease) if lease.user_id == user_id => lease,
                _ => return false,
            };
            if lease.expires > now {
                return true;
            }
            latest_expiry = latest_expiry.max(Some(lease.expires));
            self.ended.push(Ended {
                conn_id: conn_id.clone(),
                user_id: user_id.to_string(),
                edge_id: lease.edge_id.clone(),
            });
            self.leases.remove(conn_id);
            false
        });
        if !conns.is_empty() {
            return true;
        }
        self.users.remove(user_id);
        if let Some(expiry) = latest_expiry {
            self.mark_seen(user_id, unix_ms(expiry));
            self.pending.insert(user_id.to_string(), expiry);
        }
        false
    }

    fn mark_seen(&mut self, user_id: &str, at_ms: i64) {
        let seen = self.last_seen.entry(user_id.to_string()).or_default();
        *seen = (*seen).max(at_ms);
    }

    /// Ends one lease now; the ended lease if it was live.
    fn release(
        &mut self,
        conn_id: &str,
        now: Instant,
        unix_ms: impl Fn(Instant) -> i64 + Copy,
    ) -> Option<Ended> {
        let user_id = self
            .leases
            .get(conn_id)
            .map(|lease| lease.user_id.clone())?;
        // An already expired lease ended at its expiry, not now.
        self.prune(&user_id, now, unix_ms);
        let lease = self.leases.remove(conn_id)?;
        if let Some(conns) = self.users.get_mut(&user_id) {
            conns.remove(conn_id);
        }
        if !self.prune(&user_id, now, unix_ms) {
            self.mark_seen(&user_id, unix_ms(now));
            self.pending.insert(user_id.clone(), now);
        }
        Some(Ended {
            conn_id: conn_id.to_string(),
            user_id,
            edge_id: lease.edge_id,
        })
    }
}

#[async_trait]
impl PresenceStore for MemoryStore {
    async fn counts(&self) -> Result<Counts, PresenceError> {
        let now = Instant::now();
        let state = self.lock();
        let live: Vec<&Lease> = state
            .leases
            .values()
            .filter(|lease| lease.expires > now)
            .collect();
        let users: HashSet<&str> = live.iter().map(|lease| lease.user_id.as_str()).collect();
        Ok(Counts {
            leases: live.len() as u64,
            online_users: users.len() as u64,
        })
    }

    async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        let moved = state
            .leases
            .get(conn_id)
            .is_some_and(|lease| lease.user_id != user_id);
        if moved {
            state.release(conn_id, now, unix_ms);
        }
        // A lease that ran out before this registration still ended the session.
        let was_online = state.prune(user_id, now, unix_ms);
        let was_pending = state.pending.remove(user_id).is_some();
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
        Ok(!was_online && !was_pending)
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

    async fn release(&self, conn_ids: &[String]) -> Result<Vec<Ended>, PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        Ok(conn_ids
            .iter()
            .filter_map(|conn_id| state.release(conn_id, now, unix_ms))
            .collect())
    }

    async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut state = self.lock();
        Ok(user_ids
            .iter()
            .map(|user_id| {
                let online = state.prune(user_id, now, unix_ms);
                let (status, text) = state
                    .statuses
                    .get(user_id)
                    .cloned()
                    .unwrap_or_else(|| ("online".into(), String::new()));
                Presence {
                    user_id: user_id.clone(),
                    online,
                    in_grace: state.pending.contains_key(user_id),
                    last_seen_ms: state.last_seen.get(user_id).copied().unwrap_or_default(),
                    status,
                    text,
                }
            })
            .collect())
    }

    async fn forget(&self, user_id: &str) -> Result<(), PresenceError> {
        let mut state = self.lock();
        state.statuses.remove(user_id);
        state.last_seen.remove(user_id);
        state.pending.remove(user_id);
        Ok(())
    }

    async fn set_status(
        &self,
        user_id: &str,
        status: &str,
        text: &str,
    ) -> Result<(String, String), PresenceError> {
        Ok(self
            .lock()
            .statuses
            .insert(user_id.to_string(), (status.to_string(), text.to_string()))
            .unwrap_or_else(|| ("online".into(), String::new())))
    }

    async fn sweep(&self, grace: Duration) -> Result<Sweep, PresenceError> {
        let now = Instant::now();
        let unix_ms = |instant| self.unix_ms(instant);
        let mut guard = self.lock();
        let state = &mut *guard;
        let expired_users: Vec<String> = state
            .leases
            .values()
            .filter(|lease| lease.expires <= now)
            .map(|lease| lease.user_id.clone())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        for user_id in expired_users {
            state.prune(&user_id, now, unix_ms);
        }
        let ended: Vec<Ended> = state
            .ended
            .drain(..state.ended.len().min(SWEEP_LIMIT))
            .collect();

        let gone: Vec<String> = state
            .pending
            .iter()
            .filter(|(_, ended_at)| **ended_at + grace <= now)
            .map(|(user_id, _)| user_id.clone())
            .take(SWEEP_LIMIT)
            .collect();
        let mut offline = Vec::new();
        for user_id in gone {
            state.pending.remove(&user_id);
            // Live again, or a later expiry restarted the grace period.
            if state.prune(&user_id, now, unix_ms) || state.pending.contains_key(&user_id) {
                continue;
            }
            let (status, _) = state
                .statuses
                .remove(&user_id)
                .unwrap_or_else(|| ("online".into(), String::new()));
            offline.push(WentOffline {
                last_seen_ms: state.last_seen.get(&user_id).copied().unwrap_or_default(),
                user_id,
                status,
            });
        }
        let forget_before = unix_ms(now) - LAST_SEEN_KEEP.as_millis() as i64;
        state.last_seen.retain(|_, seen| *seen > forget_before);

        let missed: Vec<String> = state
            .calls
            .iter()
            .filter(|(_, c)| c.ring_until.is_some_and(|until| until <= now))
            .map(|(id, _)| id.clone())
            .take(SWEEP_LIMIT)
            .collect();
        let missed_calls = missed
            .iter()
            .filter_map(|id| state.calls.remove(id))
            .map(|c| c.call)
            .collect();
        state.calls.retain(|_, c| c.expires > now);
        Ok(Sweep {
            ended,
            offline,
            missed_calls,
        })
    }

    async fn create_call(&self, call: &Call, ring: Duration) -> Result<(), PresenceError> {
        let now = Instant::now();
        self.lock().calls.insert(
            call.id.clone(),
            StoredCall {
                call: call.clone(),
                ring_until: Some(now + ring),
                expires: now + ring + ACTIVE_CALL_KEEP,
            },
        );
        Ok(())
    }

    async fn act_on_call(
        &self,
        call_id: &str,
        user_id: &str,
        action: CallAction,
    ) -> Result<Call, PresenceError> {
        let now = Instant::now();
        let mut state = self.lock();
        let Some(stored) = state.calls.get_mut(call_id) else {
            return Err(PresenceError::NotFound("call"));
        };
        let is_caller = stored.call.caller == user_id;
        let is_callee = stored.call.callee == user_id;
        let rang_out = stored.ring_until.is_some_and(|until| until <= now);
        if !(is_caller || is_callee) || rang_out || stored.expires <= now {
            return Err(PresenceError::NotFound("call"));
        }
        let before = stored.call.clone();
        match action {
            CallAction::Answer | CallAction::Reject => {
                if !is_callee {
                    return Err(PresenceError::Forbidden(format!(
                        "only the callee can {} a call",
                        action.as_str()
                    )));
                }
                if stored.call.answered {
                    return Err(PresenceError::Conflict("the call was answered".into()));
                }
                if action == CallAction::Answer {
                    stored.call.answered = true;
                    stored.ring_until = None;
                    stored.expires = now + ACTIVE_CALL_KEEP;
                } else {
                    state.calls.remove(call_id);
                }
            }
            CallAction::End => {
                state.calls.remove(call_id);
            }
            CallAction::Ice => {
                if stored.call.answered {
                    stored.expires = now + ACTIVE_CALL_KEEP;
                }
            }
        }
        Ok(before)
    }
}
