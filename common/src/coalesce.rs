//! Requests for the same key that arrive together share one computation,
//! and every answer is still as fresh as the request: a request that
//! arrives while the key's computation is running waits for the next one,
//! which starts after it arrived. A storm of joins of one room then reads
//! its members and asks presence who is online a few times, not once per
//! join (chat-service), and an edge asks about each user once at a time
//! (`edge/src/presence.rs`).
//!
//! Hand-written: the single-flight crates share a computation already in
//! flight, whose answer may predate the request (a join would miss its own
//! membership or presence).

use std::collections::HashMap;
use std::future::Future;
use std::hash::Hash;
use std::sync::Mutex;

use tokio::sync::oneshot;

/// What a waiting request is told when a computation ends.
enum Turn<V> {
    /// The answer of a computation that started after the request arrived.
    Ready(V),
    /// Run the next computation, for yourself and those queued behind you.
    Yours,
}

/// A key's computation in flight and the requests queued for the next.
struct Key<V> {
    queued: Vec<oneshot::Sender<Turn<V>>>,
}

/// See the module docs.
pub struct Coalesce<K, V> {
    keys: Mutex<HashMap<K, Key<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Default for Coalesce<K, V> {
    fn default() -> Self {
        Self::new()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Coalesce<K, V> {
    pub fn new() -> Self {
        Self {
            keys: Mutex::new(HashMap::new()),
        }
    }

    fn keys(&self) -> std::sync::MutexGuard<'_, HashMap<K, Key<V>>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `compute()`'s answer for `key`, from a computation that started after
    /// this call did, shared with the calls for `key` queued with it.
    pub async fn get<F, Fut>(&self, key: K, compute: F) -> V
    where
        F: Fn() -> Fut,
        Fut: Future<Output = V>,
    {
        let waiting = {
            let mut keys = self.keys();
            match keys.get_mut(&key) {
                Some(running) => {
                    let (tx, rx) = oneshot::channel();
                    running.queued.push(tx);
                    Some(rx)
                }
                None => {
                    keys.insert(key.clone(), Key { queued: Vec::new() });
                    None
                }
            }
        };
        if let Some(turn) = waiting {
            match turn.await {
                Ok(Turn::Ready(value)) => return value,
                Ok(Turn::Yours) => {}
                // The computation was dropped (its caller went away) and
                // handed nothing on: compute alone, leaving the key be.
                Err(_) => return compute().await,
            }
        }
        // This call runs the key's computation; whoever queues from here on
        // arrived after it started and waits for the next one.
        let riders = self
            .keys()
            .get_mut(&key)
            .map(|k| std::mem::take(&mut k.queued))
            .unwrap_or_default();
        let mut run = Run {
            coalesce: self,
            key: Some(key),
            riders,
        };
        let value = compute().await;
        run.finish(&value);
        value
    }
}

/// One computation in flight: answers its riders and hands the key on when
/// it ends, also when it is dropped before the end.
struct Run<'a, K: Eq + Hash + Clone, V: Clone> {
    coalesce: &'a Coalesce<K, V>,
    key: Option<K>,
    /// Queued before this computation started: its answer is theirs.
    riders: Vec<oneshot::Sender<Turn<V>>>,
}

impl<K: Eq + Hash + Clone, V: Clone> Run<'_, K, V> {
    fn finish(&mut self, value: &V) {
        for rider in self.riders.drain(..) {
            let _ = rider.send(Turn::Ready(value.clone()));
        }
        self.hand_on();
    }

    /// The first request queued meanwhile runs the next computation (the
    /// others queued stay queued for it); none: the key is free.
    fn hand_on(&mut self) {
        let Some(key) = self.key.take() else { return };
        let mut keys = self.coalesce.keys();
        loop {
            let Some(entry) = keys.get_mut(&key) else {
                return;
            };
            if entry.queued.is_empty() {
                keys.remove(&key);
                return;
            }
            let next = entry.queued.remove(0);
            // One that went away meanwhile cannot run it: try the next.
            if next.send(Turn::Yours).is_ok() {
                return;
            }
        }
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Run<'_, K, V> {
    fn drop(&mut self) {
        // Dropped before `finish`: the riders' senders drop with it (they
        // compute alone), and the key passes on.
        self.hand_on();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use super::*;

    /// A computation that takes 10 ms (paused time) and answers how many
    /// computations had started when it started.
    async fn counted(started: &AtomicUsize) -> usize {
        let n = started.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
        n
    }

    #[tokio::test(start_paused = true)]
    async fn requests_that_arrive_together_share_the_next_computation() {
        let coalesce = Arc::new(Coalesce::<&str, usize>::new());
        let started = Arc::new(AtomicUsize::new(0));
        let ask = |delay_ms: u64| {
            let (coalesce, started) = (coalesce.clone(), started.clone());
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(delay_ms)).await;
                coalesce.get("room", || counted(&started)).await
            })
        };
        // One at 0 ms runs alone; five arriving during it share the second
        // (started at 10 ms, after all of them); one at 15 ms, during the
        // second, gets the third.
        let first = ask(0);
        let during_first: Vec<_> = (1..=5).map(ask).collect();
        let during_second = ask(15);
        assert_eq!(first.await.expect("task"), 1);
        for waiting in during_first {
            assert_eq!(waiting.await.expect("task"), 2);
        }
        assert_eq!(during_second.await.expect("task"), 3);
        assert_eq!(started.load(Ordering::SeqCst), 3);
        assert!(coalesce.keys().is_empty(), "the key is free again");
    }

    #[tokio::test(start_paused = true)]
    async fn other_keys_do_not_wait() {
        let coalesce = Arc::new(Coalesce::<&str, usize>::new());
        let started = Arc::new(AtomicUsize::new(0));
        let (a, b) = tokio::join!(
            coalesce.get("a", || counted(&started)),
            coalesce.get("b", || counted(&started)),
        );
        assert_eq!((a.min(b), a.max(b)), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_computation_dropped_midway_holds_no_one_up() {
        let coalesce = Arc::new(Coalesce::<&str, usize>::new());
        let started = Arc::new(AtomicUsize::new(0));
        let runner = {
            let (coalesce, started) = (coalesce.clone(), started.clone());
            tokio::spawn(async move { coalesce.get("room", || counted(&started)).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let waiter = {
            let (coalesce, started) = (coalesce.clone(), started.clone());
            tokio::spawn(async move { coalesce.get("room", || counted(&started)).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        runner.abort();
        // The queued request runs the next computation itself.
        assert_eq!(waiter.await.expect("task"), 2);
        assert!(coalesce.keys().is_empty());
        // And later ones are not stuck behind the dropped one.
        assert_eq!(coalesce.get("room", || counted(&started)).await, 3);
    }
}
