//! Per-user quotas on questions: how many per minute and how many replies
//! streaming at once, with lower limits for anonymous users. Counted in the
//! [`AiStore`]: this process's memory, or Redis shared by every replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use common::grpc::Actor;
use tokio::sync::Notify;

use crate::error::AiError;
use crate::store::{AiStore, SlotRef, Take};

/// Retry hint when the concurrency limit is reached (no reply's end is known).
const BUSY_RETRY: Duration = Duration::from_secs(1);

/// Limits for one kind of user.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limit {
    pub(crate) per_minute: u32,
    pub(crate) concurrent: u32,
}

/// Every user's quota, in the store.
pub(crate) struct Quotas {
    signed_in: Limit,
    anonymous: Limit,
    store: Arc<dyn AiStore>,
    /// The slots this process holds, whose leases it renews.
    held: Mutex<HashMap<String, SlotRef>>,
    /// Signalled when a slot is taken, so the renewal starts.
    pub(crate) activity: Notify,
}

impl std::fmt::Debug for Quotas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Quotas")
            .field("signed_in", &self.signed_in)
            .field("anonymous", &self.anonymous)
            .finish_non_exhaustive()
    }
}

/// One of a user's concurrent replies; give it back with [`Slot::release`]
/// or [`Slot::refund`] (dropped, it is released in the background).
#[derive(Debug)]
pub(crate) struct Slot {
    quotas: Arc<Quotas>,
    slot: Option<SlotRef>,
}

impl Quotas {
    pub(crate) fn new(signed_in: Limit, anonymous: Limit, store: Arc<dyn AiStore>) -> Arc<Self> {
        Arc::new(Self {
            signed_in,
            anonymous,
            store,
            held: Mutex::default(),
            activity: Notify::new(),
        })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<String, SlotRef>> {
        self.held.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a question of `actor` and takes one of their reply slots, or
    /// says why not.
    pub(crate) async fn acquire(self: &Arc<Self>, actor: &Actor) -> Result<Slot, AiError> {
        let limit = if actor.anonymous {
            self.anonymous
        } else {
            self.signed_in
        };
        if limit.per_minute == 0 {
            return Err(AiError::Disabled);
        }
        let slot = SlotRef {
            user: actor.user_id.clone(),
            ticket: common::ids::new_id("q"),
        };
        match self.store.take(&slot, limit, common::ids::now_ms()).await? {
            Take::Granted => {}
            Take::Busy => {
                return Err(AiError::RateLimited {
                    message: "too many assistant replies in progress",
                    retry_after: BUSY_RETRY,
                });
            }
            Take::TooMany { retry_after_ms } => {
                return Err(AiError::RateLimited {
                    message: "too many questions to the assistant this minute",
                    retry_after: Duration::from_millis(retry_after_ms.max(0).unsigned_abs()),
                });
            }
        }
        self.held().insert(slot.ticket.clone(), slot.clone());
        self.activity.notify_one();
        Ok(Slot {
            quotas: self.clone(),
            slot: Some(slot),
        })
    }

    /// The slots this process holds (to renew their leases).
    pub(crate) fn holding(&self) -> Vec<SlotRef> {
        self.held().values().cloned().collect()
    }

    pub(crate) fn has_held(&self) -> bool {
        !self.held().is_empty()
    }

    async fn give_back(&self, slot: SlotRef, refund: bool) {
        self.held().remove(&slot.ticket);
        let given = if refund {
            self.store.refund(&slot).await
        } else {
            self.store.release(&slot).await
        };
        if let Err(error) = given {
            // The slot's lease ends it within `store::LEASE`.
            tracing::warn!(%error, user_id = %slot.user, "cannot give back a reply slot");
        }
    }
}

impl Slot {
    /// Frees the slot: the reply ended.
    pub(crate) async fn release(mut self) {
        if let Some(slot) = self.slot.take() {
            self.quotas.give_back(slot, false).await;
        }
    }

    /// Gives the question back too (it started no reply: a retry, or a
    /// failure before anything was asked).
    pub(crate) async fn refund(mut self) {
        if let Some(slot) = self.slot.take() {
            self.quotas.give_back(slot, true).await;
        }
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        // Dropped unused, e.g. when the caller went away mid-`Ask`: no longer
        // renewed from now on, and released in the store in the background
        // (without a runtime its lease ends it).
        if let Some(slot) = self.slot.take() {
            self.quotas.held().remove(&slot.ticket);
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let store = self.quotas.store.clone();
                runtime.spawn(async move {
                    if let Err(error) = store.release(&slot).await {
                        tracing::warn!(%error, user_id = %slot.user, "cannot give back a reply slot");
                    }
                });
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::MemoryStore;

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
                per_minute: 2,
                concurrent: 1,
            },
            Limit {
                per_minute: 1,
                concurrent: 1,
            },
            Arc::new(MemoryStore::new()),
        )
    }

    #[tokio::test]
    async fn slots_are_held_until_released_and_refunds_return_questions() {
        let quotas = quotas();
        let alice = user("alice", false);
        let slot = quotas.acquire(&alice).await.expect("one");
        assert_eq!(quotas.holding().len(), 1, "renewed while held");
        match quotas.acquire(&alice).await {
            Err(AiError::RateLimited { retry_after, .. }) => {
                assert_eq!(retry_after, BUSY_RETRY);
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
        slot.release().await;
        assert!(quotas.holding().is_empty());
        quotas.acquire(&alice).await.expect("two").refund().await;
        quotas
            .acquire(&alice)
            .await
            .expect("the refund gave it back")
            .release()
            .await;
        match quotas.acquire(&alice).await {
            Err(AiError::RateLimited { retry_after, .. }) => {
                assert!(retry_after > Duration::from_secs(59), "{retry_after:?}");
            }
            other => panic!("expected rate_limited, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_dropped_slot_is_released_and_anonymous_limits_apply() {
        let quotas = quotas();
        let guest = user("guest", true);
        drop(quotas.acquire(&guest).await.expect("one"));
        tokio::task::yield_now().await;
        assert!(quotas.holding().is_empty());
        assert!(matches!(
            quotas.acquire(&guest).await,
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
            Arc::new(MemoryStore::new()),
        );
        assert!(matches!(
            closed.acquire(&guest).await,
            Err(AiError::Disabled)
        ));
    }
}
