//! In-process bus for the one-process mode: channels are a map from name to
//! subscriber queues; publish never blocks.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusEvent, Envelope, Subscriber};

type Queues = HashMap<String, HashMap<u64, mpsc::UnboundedSender<BusEvent>>>;

/// A bus that lives in this process.
#[derive(Clone, Default)]
pub struct MemoryBus {
    channels: Arc<Mutex<Queues>>,
    next_id: Arc<AtomicU64>,
}

impl MemoryBus {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Bus for MemoryBus {
    async fn publish(&self, channel: &str, envelope: &Envelope) -> Result<(), BusError> {
        let channels = self
            .channels
            .lock()
            .map_err(|_| BusError::Unavailable("poisoned".into()))?;
        if let Some(queues) = channels.get(channel) {
            for queue in queues.values() {
                let _ = queue.send(BusEvent::Message {
                    channel: channel.to_string(),
                    envelope: envelope.clone(),
                });
            }
        }
        Ok(())
    }

    async fn subscriber(
        &self,
    ) -> Result<(Box<dyn Subscriber>, mpsc::UnboundedReceiver<BusEvent>), BusError> {
        let (tx, rx) = mpsc::unbounded_channel();
        let subscriber = MemorySubscriber {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            tx,
            channels: self.channels.clone(),
            held: Mutex::new(HashSet::new()),
        };
        Ok((Box::new(subscriber), rx))
    }
}

struct MemorySubscriber {
    id: u64,
    tx: mpsc::UnboundedSender<BusEvent>,
    channels: Arc<Mutex<Queues>>,
    /// Channels this subscriber holds, so dropping it cleans up.
    held: Mutex<HashSet<String>>,
}

#[async_trait]
impl Subscriber for MemorySubscriber {
    async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| BusError::Unavailable("poisoned".into()))?;
        channels
            .entry(channel.to_string())
            .or_default()
            .insert(self.id, self.tx.clone());
        if let Ok(mut held) = self.held.lock() {
            held.insert(channel.to_string());
        }
        Ok(())
    }

    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        let mut channels = self
            .channels
            .lock()
            .map_err(|_| BusError::Unavailable("poisoned".into()))?;
        if let Some(queues) = channels.get_mut(channel) {
            queues.remove(&self.id);
            if queues.is_empty() {
                channels.remove(channel);
            }
        }
        if let Ok(mut held) = self.held.lock() {
            held.remove(channel);
        }
        Ok(())
    }
}

impl Drop for MemorySubscriber {
    fn drop(&mut self) {
        let (Ok(mut channels), Ok(held)) = (self.channels.lock(), self.held.lock()) else {
            return;
        };
        for channel in held.iter() {
            if let Some(queues) = channels.get_mut(channel) {
                queues.remove(&self.id);
                if queues.is_empty() {
                    channels.remove(channel);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bus::{envelope, room_channel};

    #[tokio::test]
    async fn delivers_in_order_only_to_subscribers_of_the_channel() {
        let bus = MemoryBus::new();
        let (a, mut a_rx) = bus.subscriber().await.expect("subscriber");
        let (b, mut b_rx) = bus.subscriber().await.expect("subscriber");
        a.subscribe(&room_channel("r1")).await.expect("subscribe");
        b.subscribe(&room_channel("r2")).await.expect("subscribe");
        for seq in 1..=3 {
            bus.publish(
                &room_channel("r1"),
                &envelope("r1", seq, "message.new", "{}".into()),
            )
            .await
            .expect("publish");
        }
        for seq in 1..=3 {
            match a_rx.recv().await {
                Some(BusEvent::Message { envelope, .. }) => assert_eq!(envelope.seq, seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(b_rx.try_recv().is_err());
        a.unsubscribe(&room_channel("r1"))
            .await
            .expect("unsubscribe");
        bus.publish(
            &room_channel("r1"),
            &envelope("r1", 4, "message.new", "{}".into()),
        )
        .await
        .expect("publish");
        assert!(a_rx.try_recv().is_err());
        drop(b);
        assert!(bus.channels.lock().expect("lock").is_empty());
    }
}
