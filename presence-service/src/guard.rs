//! Limits on call signalling that protect the callee: invitations per
//! callee per minute, and the number and size of ICE candidates relayed
//! before the callee answers. Counted in this process (with several
//! presence replicas each counts on its own).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use crate::error::PresenceError;

/// The limits, from configuration.
#[derive(Debug, Clone, Copy)]
pub struct CallLimits {
    /// `call.invite`s one callee may receive per minute, from everyone.
    pub invites_per_callee_per_min: u32,
    /// `call.ice` relayed on one call before it is answered.
    pub ice_before_answer: u32,
    /// Largest `call.ice` payload, in bytes of JSON.
    pub ice_max_bytes: usize,
}

impl CallLimits {
    pub fn from_config(config: &common::config::PresenceConfig) -> Self {
        Self {
            invites_per_callee_per_min: config.call_invites_per_callee_per_min,
            ice_before_answer: config.call_ice_before_answer,
            ice_max_bytes: config.call_ice_max_bytes,
        }
    }
}

impl Default for CallLimits {
    fn default() -> Self {
        Self {
            invites_per_callee_per_min: 10,
            ice_before_answer: 50,
            ice_max_bytes: 2_048,
        }
    }
}

const MINUTE: Duration = Duration::from_secs(60);

/// The counters behind [`CallLimits`].
#[derive(Debug)]
pub(crate) struct CallGuard {
    limits: CallLimits,
    /// How long a call rings at most: counts of calls older than this go.
    ring: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    /// Callee → when their recent invitations came (within the last minute).
    invites: HashMap<String, VecDeque<Instant>>,
    /// Call → ICE candidates relayed before the answer, and when the first came.
    ice: HashMap<String, (u32, Instant)>,
}

impl CallGuard {
    pub(crate) fn new(limits: CallLimits, ring: Duration) -> Self {
        Self {
            limits,
            ring,
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Counts one invitation of `callee`; `RateLimited` past the limit
    /// (and then it is not counted).
    pub(crate) fn invite(&self, callee: &str) -> Result<(), PresenceError> {
        let max = self.limits.invites_per_callee_per_min as usize;
        if max == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let mut state = self.state();
        let times = state.invites.entry(callee.to_string()).or_default();
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= MINUTE)
        {
            times.pop_front();
        }
        if times.len() >= max {
            let oldest = times.front().copied().unwrap_or(now);
            return Err(PresenceError::RateLimited {
                message: format!("{callee} is being called too often; try again later"),
                retry_after: MINUTE.saturating_sub(now.duration_since(oldest)),
            });
        }
        times.push_back(now);
        Ok(())
    }

    /// Checks an ICE payload's size (`payload_bytes`), before it is relayed.
    pub(crate) fn ice_size(&self, payload_bytes: usize) -> Result<(), PresenceError> {
        let max = self.limits.ice_max_bytes;
        if payload_bytes > max {
            return Err(PresenceError::TooLarge(format!(
                "an ICE candidate is at most {max} bytes"
            )));
        }
        Ok(())
    }

    /// Counts one ICE candidate on a call not answered yet; `TooLarge`
    /// past the limit.
    pub(crate) fn ice_unanswered(&self, call_id: &str) -> Result<(), PresenceError> {
        let max = self.limits.ice_before_answer;
        let mut state = self.state();
        let (count, _) = state
            .ice
            .entry(call_id.to_string())
            .or_insert((0, Instant::now()));
        if *count >= max {
            return Err(PresenceError::TooLarge(format!(
                "at most {max} ICE candidates before the call is answered"
            )));
        }
        *count += 1;
        Ok(())
    }

    /// The call was answered or ended: its ICE count goes.
    pub(crate) fn forget_call(&self, call_id: &str) {
        self.state().ice.remove(call_id);
    }

    /// Drops what no longer counts: invitations older than a minute, ICE
    /// counts of calls that must have stopped ringing.
    pub(crate) fn prune(&self) {
        let now = Instant::now();
        let ring = self.ring;
        let mut state = self.state();
        state.invites.retain(|_, times| {
            times
                .back()
                .is_some_and(|t| now.duration_since(*t) < MINUTE)
        });
        state
            .ice
            .retain(|_, (_, first)| now.duration_since(*first) <= ring);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn guard() -> CallGuard {
        CallGuard::new(
            CallLimits {
                invites_per_callee_per_min: 2,
                ice_before_answer: 2,
                ice_max_bytes: 10,
            },
            Duration::from_secs(45),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn a_callee_gets_at_most_the_limit_of_invitations_a_minute() {
        let guard = guard();
        guard.invite("bob").expect("first");
        guard.invite("bob").expect("second");
        guard.invite("carol").expect("another callee");
        let Err(PresenceError::RateLimited { retry_after, .. }) = guard.invite("bob") else {
            panic!("third is refused");
        };
        assert_eq!(retry_after, MINUTE);
        tokio::time::advance(MINUTE).await;
        guard.invite("bob").expect("a minute later");
    }

    #[tokio::test(start_paused = true)]
    async fn ice_before_the_answer_is_limited_in_number_and_size() {
        let guard = guard();
        assert!(matches!(
            guard.ice_size(11),
            Err(PresenceError::TooLarge(_))
        ));
        guard.ice_size(10).expect("fits");
        guard.ice_unanswered("c1").expect("one");
        guard.ice_unanswered("c1").expect("two");
        assert!(matches!(
            guard.ice_unanswered("c1"),
            Err(PresenceError::TooLarge(_))
        ));
        guard.forget_call("c1");
        guard.ice_unanswered("c1").expect("counted again");
        tokio::time::advance(Duration::from_secs(46)).await;
        guard.prune();
        assert!(guard.state().ice.is_empty());
    }
}
