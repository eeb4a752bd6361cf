//! Publishes committed events on the bus, off the commit path. The writer
//! hands each committed event (and each notification) to a bounded queue
//! and answers its caller at once; one task publishes the queue in commit
//! order. A slow or frozen bus therefore delays delivery, never a commit.
//!
//! When the queue is full the oldest publication is dropped and counted
//! (`parley_chat_publish_dropped_total`): the room log is the source of
//! truth, and an edge that sees a gap in a room's seqs backfills it from the
//! log. Commits never wait for room in the queue.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::bus::{Bus, Envelope};
use common::metrics::ChatMetrics;
use tokio::sync::Notify;
use tracing::Instrument;

/// Publications waiting for the bus before the oldest is dropped: about
/// 20 s of a busy service's events (3,000 messages/s), a few tens of MB.
pub(crate) const QUEUE: usize = 65_536;

/// Most publications the task takes from the queue at a time.
const TAKE: usize = 256;

/// One envelope for one channel.
pub(crate) struct Publication {
    pub channel: String,
    pub envelope: Envelope,
    /// The committing caller's span: the publish span is its child.
    pub span: tracing::Span,
}

/// Handle to the publisher task; the task ends once the handle is dropped
/// and the queue is empty.
pub(crate) struct Publisher {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Wakes the task when something was queued or the handle dropped.
    ready: Notify,
    capacity: usize,
    metrics: ChatMetrics,
}

struct State {
    queue: VecDeque<Publication>,
    /// Set when the handle is dropped: the task drains what is left and ends.
    closed: bool,
}

impl Publisher {
    /// Starts the task publishing on `bus`, holding at most `capacity`
    /// publications.
    pub(crate) fn start(bus: Arc<dyn Bus>, capacity: usize, metrics: ChatMetrics) -> Publisher {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                queue: VecDeque::new(),
                closed: false,
            }),
            ready: Notify::new(),
            capacity: capacity.max(1),
            metrics,
        });
        tokio::spawn(run(bus, shared.clone()));
        Publisher { shared }
    }

    /// Queues publications in order; never waits. When the queue is full
    /// the oldest are dropped and counted.
    pub(crate) fn push(&self, publications: impl IntoIterator<Item = Publication>) {
        let shared = &self.shared;
        let mut dropped = 0u64;
        let depth = {
            let mut state = shared.lock();
            for publication in publications {
                if state.queue.len() >= shared.capacity {
                    state.queue.pop_front();
                    dropped += 1;
                }
                state.queue.push_back(publication);
            }
            state.queue.len()
        };
        if dropped > 0 {
            shared.metrics.publish_dropped.inc_by(dropped);
            tracing::debug!(dropped, "publish queue full; oldest events dropped");
        }
        shared.metrics.publish_queue_depth.set(depth as i64);
        shared.ready.notify_one();
    }
}

impl Drop for Publisher {
    fn drop(&mut self) {
        self.shared.lock().closed = true;
        self.shared.ready.notify_one();
    }
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // The queue holds no invariant a panic could break halfway.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

async fn run(bus: Arc<dyn Bus>, shared: Arc<Shared>) {
    let mut batch = Vec::with_capacity(TAKE);
    loop {
        let closed = {
            let mut state = shared.lock();
            let n = state.queue.len().min(TAKE);
            batch.extend(state.queue.drain(..n));
            shared
                .metrics
                .publish_queue_depth
                .set(state.queue.len() as i64);
            state.closed
        };
        if batch.is_empty() {
            if closed {
                return;
            }
            shared.ready.notified().await;
            continue;
        }
        for Publication {
            channel,
            envelope,
            span,
        } in batch.drain(..)
        {
            let published = bus.publish(&channel, &envelope).instrument(span).await;
            if let Err(error) = published {
                tracing::warn!(
                    %channel,
                    room_id = %envelope.room_id,
                    seq = envelope.seq,
                    %error,
                    "cannot publish committed event"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex as StdMutex;

    use async_trait::async_trait;
    use common::bus::{BusError, BusEvent, Subscriber};
    use tokio::sync::{Semaphore, mpsc};

    use super::*;

    /// A bus that records what is published and lets a publish complete
    /// only when the test grants a permit (so it can stall like a frozen
    /// Redis).
    struct GatedBus {
        published: Arc<StdMutex<Vec<i64>>>,
        gate: Arc<Semaphore>,
        /// Told each time a publish starts waiting for its permit.
        started: mpsc::UnboundedSender<i64>,
    }

    #[async_trait]
    impl Bus for GatedBus {
        async fn publish(&self, _channel: &str, envelope: &Envelope) -> Result<(), BusError> {
            let _ = self.started.send(envelope.seq);
            self.gate
                .acquire()
                .await
                .map_err(|e| BusError::Unavailable(e.to_string()))?
                .forget();
            self.published.lock().expect("lock").push(envelope.seq);
            Ok(())
        }

        async fn subscriber(
            &self,
        ) -> Result<(Box<dyn Subscriber>, mpsc::UnboundedReceiver<BusEvent>), BusError> {
            Err(BusError::Unavailable("publish only".into()))
        }
    }

    fn publication(seq: i64) -> Publication {
        Publication {
            channel: "room:r".into(),
            envelope: Envelope {
                room_id: "r".into(),
                seq,
                ..Envelope::default()
            },
            span: tracing::Span::none(),
        }
    }

    /// What the test keeps of a [`GatedBus`] it gave to a publisher.
    struct Gate {
        published: Arc<StdMutex<Vec<i64>>>,
        permits: Arc<Semaphore>,
        /// Ends once the publisher task (holding the bus) has ended.
        starts: mpsc::UnboundedReceiver<i64>,
    }

    fn gated_bus() -> (Arc<dyn Bus>, Gate) {
        let (started, starts) = mpsc::unbounded_channel();
        let published = Arc::new(StdMutex::default());
        let permits = Arc::new(Semaphore::new(0));
        let bus = Arc::new(GatedBus {
            published: published.clone(),
            gate: permits.clone(),
            started,
        });
        let gate = Gate {
            published,
            permits,
            starts,
        };
        (bus, gate)
    }

    #[tokio::test]
    async fn publishes_in_order_and_drops_the_oldest_when_full() {
        let (bus, mut gate) = gated_bus();
        let metrics = ChatMetrics::default();
        let publisher = Publisher::start(bus, 3, metrics.clone());
        publisher.push([publication(1)]);
        // The task holds 1 (stalled on the bus); 2..=6 queue behind it,
        // and the queue keeps the newest 3.
        assert_eq!(gate.starts.recv().await, Some(1));
        publisher.push((2..=6).map(publication));
        assert_eq!(metrics.publish_dropped.get(), 2);
        assert_eq!(metrics.publish_queue_depth.get(), 3);
        gate.permits.add_permits(4);
        for seq in [4, 5, 6] {
            assert_eq!(gate.starts.recv().await, Some(seq));
        }
        drop(publisher);
        // The task ends once the queue is drained, dropping its sender.
        assert_eq!(gate.starts.recv().await, None);
        assert_eq!(*gate.published.lock().expect("lock"), vec![1, 4, 5, 6]);
        assert_eq!(metrics.publish_queue_depth.get(), 0);
    }

    #[tokio::test]
    async fn pushing_never_waits_for_a_stalled_bus() {
        let (bus, mut gate) = gated_bus();
        let metrics = ChatMetrics::default();
        let publisher = Publisher::start(bus, QUEUE, metrics.clone());
        publisher.push([publication(1)]);
        assert_eq!(gate.starts.recv().await, Some(1));
        // The bus is stalled: pushing still returns at once, every time.
        for seq in 2..=1_000 {
            publisher.push([publication(seq)]);
        }
        assert_eq!(metrics.publish_queue_depth.get(), 999);
        assert_eq!(metrics.publish_dropped.get(), 0);
        gate.permits.add_permits(1_000);
        drop(publisher);
        while gate.starts.recv().await.is_some() {}
        assert_eq!(
            *gate.published.lock().expect("lock"),
            (1..=1_000).collect::<Vec<_>>()
        );
    }
}
