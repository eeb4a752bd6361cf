//! Per-user quotas on questions: how many per minute and how many replies
//! streaming at once, with lower limits for anonymous users. Counted in
//! this process (one ai-service replica's share).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::grpc::Actor;
use tokio::time::Instant;

use crate::error::AiError;

/// The window requests are counted in.
const WINDOW: Duration = Duration::from_secs(60);
/// Retry hint when the concurrency limit is reached (no reply's end is known).
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Limits for one kind of user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) per_minute: u32,
    pub(crate) concurrent: u32,
}

#[derive(Debug, Default)]
struct Usage {
    /// When the questions of the last minute were accepted, oldest first.
    recent: VecDeque<Instant>,
    /// Replies streaming now.
    running: u32,
}

/// Every user's usage.
#[derive(Debug)]
pub(crate) struct Quotas {
    signed_in: Limit,
    anonymous: Limit,
    users: Mutex<HashMap<String, Usage>>,
}

/// One of a user's concurrent replies; released when dropped.
#[derive(Debug)]
pub(crate) struct Slot {
    quotas: Arc<Quotas>,
    user: String,
    /// When the question was counted, so a retried question can be refunded.
    at: Instant,
}

impl Quotas {
    pub(crate) fn new(signed_in: Limit, anonymous: Limit) -> Arc<Self> {
        Arc::new(Self {
            signed_in,
            anonymous,
            users: Mutex::default(),
        })
    }

    fn users(&self) -> MutexGuard<'_, HashMap<String, Usage>> {
        self.users.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a question of `actor` and takes one of their reply slots, or
    /// says why not.
    pub(crate) fn acquire(self: &Arc<Self>, actor: &Actor) -> Result<Slot, AiError> {
        let limit = if actor.anonymous {
            self.anonymous
        } else {
            self.signed_in
        };
        if limit.per_minute == 0 {
            return Err(AiError::Disabled);
        }
        let now = Instant::now();
        let mut users = self.users();
        let usage = users.entry(actor.user_id.clone()).or_default();
        while usage
            .recent
            .front()
            .is_some_and(|at| now.duration_since(*at) >= WINDOW)
        {
            usage.recent.pop_front();
        }
        if usage.running >= limit.concurrent {
            return Err(AiError::RateLimited {
                message: "too many assistant replies in progress",
                retry_after: BUSY_RETRY,
            });
        }
        if usage.recent.len() >= limit.per_minute as usize {
            let oldest = usage.recent.front().copied().unwrap_or(now);
            return Err(AiError::RateLimited {
                message: "too many questions to the assistant this minute",
                retry_after: WINDOW.saturating_sub(now.duration_since(oldest)),
            });
        }
        usage.recent.push_back(now);
        usage.running += 1;
        Ok(Slot {
            quotas: self.clone(),
            user: actor.user_id.clone(),
            at: now,
        })
    }

    /// Replies streaming now for `user`.
    #[cfg(test)]
    fn running(&self, user: &str) -> u32 {
        self.users().get(user).map_or(0, |u| u.running)
    }
}

impl Slot {
    /// Gives the question back (it started no reply: a retry, or a failure
    /// before anything was asked).
    pub(crate) fn refund(self) {
        let mut users = self.quotas.users();
        if let Some(usage) = users.get_mut(&self.user)
            && let Some(position) = usage.recent.iter().rposition(|at| *at == self.at)
        {
            usage.recent.remove(position);
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut users = self.quotas.users();
        if let Some(usage) = users.get_mut(&self.user) {
            usage.running = usage.running.saturating_sub(1);
            if usage.running == 0 && usage.recent.is_empty() {
                users.remove(&self.user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(id: &str, anonymous: bool) -> Actor {
        Actor {
            user_id: id.into(),
            name: id.into(),
            anonymous,
        }
    }

    fn quotas() -> Arc<Quotas> {
        Quotas::new(
            Limit {
                per_minute: 3,
                concurrent: 2,
            },
            Limit {
                per_minute: 1,
                concurrent: 1,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn questions_per_minute_are_counted_in_a_sliding_window() {
        let quotas = quotas();
        let alice = user("alice", false);
        for _ in 0..3 {
            drop(quotas.acquire(&alice).expect("within the limit"));
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        match quotas.acquire(&alice) {
            Err(AiError::RateLimited { retry_after, .. }) => {
                assert_eq!(
                    retry_after,
                    Duration::from_secs(30),
                    "until the oldest leaves the window"
                );
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(quotas.acquire(&alice).is_ok());
        assert!(quotas.acquire(&user("bob", false)).is_ok(), "per user");
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_replies_are_limited_until_a_slot_is_released() {
        let quotas = quotas();
        let alice = user("alice", false);
        let first = quotas.acquire(&alice).expect("one");
        let _second = quotas.acquire(&alice).expect("two");
        assert!(matches!(
            quotas.acquire(&alice),
            Err(AiError::RateLimited { .. })
        ));
        drop(first);
        assert_eq!(quotas.running("alice"), 1);
        assert!(quotas.acquire(&alice).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn anonymous_users_get_the_lower_limits_and_refunds_return_questions() {
        let quotas = quotas();
        let guest = user("guest", true);
        quotas.acquire(&guest).expect("one").refund();
        let _slot = quotas.acquire(&guest).expect("the refund gave it back");
        drop(_slot);
        assert!(matches!(
            quotas.acquire(&guest),
            Err(AiError::RateLimited { .. })
        ));
        let closed = Quotas::new(
            Limit {
                per_minute: 1,
                concurrent: 1,
            },
            Limit {
                per_minute: 0,
                concurrent: 0,
            },
        );
        assert!(matches!(closed.acquire(&guest), Err(AiError::Disabled)));
    }
}
