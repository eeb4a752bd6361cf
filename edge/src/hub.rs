//! Fan-out: one bus subscription per channel per edge (not per connection),
//! each event encoded once and handed to every local member's outbox, in
//! order, with a per-member gate that holds live events while a join's reply
//! is being prepared (subscribe first, then read, then release the buffer).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use common::bus::{Bus, BusError, BusEvent, Subscriber};
use tokio::sync::mpsc;

use crate::outbox::Outbox;

/// Per (connection, channel) delivery state.
#[derive(Default)]
pub struct Gate {
    /// Events held back while the join reply is in flight; `None` once live.
    pending: Option<Vec<(i64, Utf8Bytes)>>,
    /// Highest room seq handed to this connection; older or equal ones are dropped.
    delivered: i64,
}

struct Member {
    outbox: Outbox,
    gate: Arc<Mutex<Gate>>,
}

type Channels = HashMap<String, HashMap<u64, Member>>;

/// The edge's subscriptions and their local members.
pub struct Hub {
    subscriber: Box<dyn Subscriber>,
    channels: Arc<Mutex<Channels>>,
    /// Serialises subscribe/unsubscribe so a second joiner never proceeds
    /// before the first one's subscription is confirmed.
    changes: tokio::sync::Mutex<()>,
}

impl Hub {
    /// Opens the edge's bus subscriber and starts the fan-out task.
    pub async fn start(bus: &dyn Bus) -> Result<Self, BusError> {
        let (subscriber, events) = bus.subscriber().await?;
        let channels: Arc<Mutex<Channels>> = Arc::default();
        tokio::spawn(fan_out(events, channels.clone()));
        Ok(Self {
            subscriber,
            channels,
            changes: tokio::sync::Mutex::new(()),
        })
    }

    /// Adds a member to `channel` with its gate closed (events are buffered
    /// until [`open_gate`]); subscribes the edge if it is the first member.
    pub async fn join(
        &self,
        channel: &str,
        conn: u64,
        outbox: Outbox,
        gated: bool,
    ) -> Result<Arc<Mutex<Gate>>, BusError> {
        let _changes = self.changes.lock().await;
        let gate = Arc::new(Mutex::new(Gate {
            pending: gated.then(Vec::new),
            delivered: 0,
        }));
        let first = {
            let mut channels = lock(&self.channels);
            let members = channels.entry(channel.to_string()).or_default();
            let first = members.is_empty();
            members.insert(
                conn,
                Member {
                    outbox,
                    gate: gate.clone(),
                },
            );
            first
        };
        if first && let Err(e) = self.subscriber.subscribe(channel).await {
            let mut channels = lock(&self.channels);
            if let Some(members) = channels.get_mut(channel) {
                members.remove(&conn);
                if members.is_empty() {
                    channels.remove(channel);
                }
            }
            return Err(e);
        }
        Ok(gate)
    }

    /// Removes a member; unsubscribes the edge when it was the last one.
    pub async fn leave(&self, channel: &str, conn: u64) {
        let _changes = self.changes.lock().await;
        let last = {
            let mut channels = lock(&self.channels);
            match channels.get_mut(channel) {
                Some(members) => {
                    members.remove(&conn);
                    if members.is_empty() {
                        channels.remove(channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last && let Err(e) = self.subscriber.unsubscribe(channel).await {
            tracing::warn!(channel, error = %e, "unsubscribe failed");
        }
    }

    /// Number of local members of a channel.
    #[cfg(test)]
    pub fn members(&self, channel: &str) -> usize {
        lock(&self.channels)
            .get(channel)
            .map(HashMap::len)
            .unwrap_or(0)
    }
}

/// Sends `reply` to the member, then what was buffered meanwhile that is
/// newer than `delivered`, and switches the member to live delivery.
pub fn open_gate(gate: &Mutex<Gate>, outbox: &Outbox, reply: Option<Utf8Bytes>, delivered: i64) {
    let mut gate = lock(gate);
    if let Some(reply) = reply {
        outbox.push(reply);
    }
    gate.delivered = gate.delivered.max(delivered);
    for (seq, text) in gate.pending.take().unwrap_or_default() {
        if seq == 0 {
            outbox.push(text);
        } else if seq > gate.delivered {
            gate.delivered = seq;
            outbox.push(text);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

async fn fan_out(mut events: mpsc::UnboundedReceiver<BusEvent>, channels: Arc<Mutex<Channels>>) {
    while let Some(event) = events.recv().await {
        match event {
            BusEvent::Message { channel, envelope } => {
                // Encoded once per edge; every recipient shares the bytes.
                let text = Utf8Bytes::from(envelope.json);
                let seq = envelope.seq;
                let channels = lock(&channels);
                let Some(members) = channels.get(&channel) else {
                    continue;
                };
                // A room event sent to a user's own channel (e.g. their read
                // receipt) reaches the devices that joined the room through
                // the room channel already: skip those here.
                let via_room = (channel.starts_with("user:") && !envelope.room_id.is_empty())
                    .then(|| channels.get(&common::bus::room_channel(&envelope.room_id)))
                    .flatten();
                for (key, member) in members {
                    if via_room.is_some_and(|room| room.contains_key(key)) {
                        continue;
                    }
                    let mut gate = lock(&member.gate);
                    if let Some(pending) = gate.pending.as_mut() {
                        pending.push((seq, text.clone()));
                    } else if seq == 0 {
                        member.outbox.push(text.clone());
                    } else if seq > gate.delivered {
                        gate.delivered = seq;
                        member.outbox.push(text.clone());
                    }
                }
            }
            BusEvent::Resubscribed => {
                tracing::warn!("bus resubscribed; events published meanwhile may be missing");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::outbox::{Outbound, outbox};
    use common::bus::{MemoryBus, envelope};

    async fn next_text(rx: &mut crate::outbox::OutboxReceiver) -> String {
        match rx.rx.recv().await {
            Some(Outbound::Text(t)) => t.as_str().to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[tokio::test]
    async fn gate_holds_events_until_the_reply_then_skips_what_it_covered() {
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus).await.expect("hub");
        let (out, mut rx) = outbox(1 << 20);
        let gate = hub
            .join("room:r", 1, out.clone(), true)
            .await
            .expect("join");
        for seq in 1..=3 {
            bus.publish(
                "room:r",
                &envelope("r", seq, "message.new", format!("{{\"seq\":{seq}}}")),
            )
            .await
            .expect("publish");
        }
        // Let the fan-out task buffer them: publish an ephemeral marker and wait for the gate.
        while lock(&gate).pending.as_ref().map(Vec::len) != Some(3) {
            tokio::task::yield_now().await;
        }
        open_gate(&gate, &out, Some(Utf8Bytes::from_static("reply")), 2);
        assert_eq!(next_text(&mut rx).await, "reply");
        assert_eq!(next_text(&mut rx).await, "{\"seq\":3}");
        bus.publish("room:r", &envelope("r", 3, "message.new", "dup".into()))
            .await
            .expect("publish");
        bus.publish(
            "room:r",
            &envelope("r", 4, "message.new", "{\"seq\":4}".into()),
        )
        .await
        .expect("publish");
        assert_eq!(next_text(&mut rx).await, "{\"seq\":4}");
        hub.leave("room:r", 1).await;
        assert_eq!(hub.members("room:r"), 0);
    }
}
