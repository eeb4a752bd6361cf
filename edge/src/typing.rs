//! Typing indicators of one connection: a task that publishes `typing:true`
//! once per start, `typing:false` on stop, after the timeout without a
//! renewal, and for every room still typing when the connection goes.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::bus::{Bus, envelope, room_channel};
use protocol::{ServerFrame, TypingEvent};
use tokio::sync::mpsc;
use tokio::time::Instant;

/// What the typing task is told.
pub(crate) enum Typing {
    Start(String),
    Stop(String),
}

/// Publishes `typing` for one user's connection: `typing:true` once per
/// start, `typing:false` on stop, after `timeout` without a renewal, and for
/// every room still typing when the connection (the sender) goes away.
pub(crate) fn start_typing(
    bus: Arc<dyn Bus>,
    user: String,
    timeout: Duration,
) -> mpsc::UnboundedSender<Typing> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_typing(bus, user, timeout, rx));
    tx
}

async fn run_typing(
    bus: Arc<dyn Bus>,
    user: String,
    timeout: Duration,
    mut orders: mpsc::UnboundedReceiver<Typing>,
) {
    let publish = |room: String, typing: bool| {
        let (bus, user) = (bus.clone(), user.clone());
        async move {
            let event = ServerFrame::Typing(TypingEvent {
                room: room.clone(),
                user: user.clone(),
                typing,
            });
            let mut envelope = envelope(&room, 0, event.kind(), event.to_json());
            envelope.except_user = user;
            if let Err(error) = bus.publish(&room_channel(&room), &envelope).await {
                tracing::debug!(room, %error, "cannot publish typing");
            }
        }
    };
    // room → when its indicator stops unless renewed.
    let mut active: HashMap<String, Instant> = HashMap::new();
    loop {
        let next = active.values().min().copied();
        tokio::select! {
            order = orders.recv() => match order {
                Some(Typing::Start(room)) => {
                    if active.insert(room.clone(), Instant::now() + timeout).is_none() {
                        publish(room, true).await;
                    }
                }
                Some(Typing::Stop(room)) => {
                    if active.remove(&room).is_some() {
                        publish(room, false).await;
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> = active
                    .iter()
                    .filter(|(_, until)| **until <= now)
                    .map(|(room, _)| room.clone())
                    .collect();
                for room in expired {
                    active.remove(&room);
                    publish(room, false).await;
                }
            }
        }
    }
    for room in active.into_keys() {
        publish(room, false).await;
    }
}

#[cfg(test)]
mod tests {
    //! The typing task on paused time.

    use common::bus::{BusEvent, MemoryBus};
    use serde_json::Value;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(6);

    /// `typing` values published on `room`'s channel so far.
    fn published(events: &mut mpsc::UnboundedReceiver<BusEvent>) -> Vec<bool> {
        let mut out = Vec::new();
        while let Ok(BusEvent::Message { envelope, .. }) = events.try_recv() {
            assert_eq!(envelope.except_user, "alice", "not to the typist");
            let event: Value = serde_json::from_str(&envelope.json).expect("json");
            assert_eq!(
                (event["room"].as_str(), event["user"].as_str()),
                (Some("r1"), Some("alice"))
            );
            out.push(event["typing"].as_bool().expect("typing"));
        }
        out
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn setup() -> (
        mpsc::UnboundedSender<Typing>,
        mpsc::UnboundedReceiver<BusEvent>,
        Box<dyn common::bus::Subscriber>,
    ) {
        let bus = Arc::new(MemoryBus::new());
        let (subscriber, events) = bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(&room_channel("r1"))
            .await
            .expect("subscribe");
        (
            start_typing(bus, "alice".into(), TIMEOUT),
            events,
            subscriber,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn typing_stops_by_itself_after_the_timeout_unless_renewed() {
        let (typing, mut events, _subscriber) = setup().await;
        typing.send(Typing::Start("r1".into())).expect("send");
        settle().await;
        assert_eq!(published(&mut events), [true]);
        tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        typing.send(Typing::Start("r1".into())).expect("renew");
        settle().await;
        assert_eq!(
            published(&mut events),
            Vec::<bool>::new(),
            "a renewal publishes nothing"
        );
        tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            published(&mut events),
            Vec::<bool>::new(),
            "renewed: still typing"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(published(&mut events), [false], "stopped by itself");
    }

    #[tokio::test(start_paused = true)]
    async fn typing_stops_on_stop_and_when_the_connection_goes() {
        let (typing, mut events, _subscriber) = setup().await;
        typing.send(Typing::Start("r1".into())).expect("send");
        typing.send(Typing::Stop("r1".into())).expect("send");
        typing.send(Typing::Stop("r1".into())).expect("send");
        settle().await;
        assert_eq!(published(&mut events), [true, false], "one stop");
        typing.send(Typing::Start("r1".into())).expect("send");
        settle().await;
        drop(typing);
        settle().await;
        assert_eq!(published(&mut events), [true, false], "closing stops it");
    }
}
