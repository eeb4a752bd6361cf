//! The Redis bus against a real Redis: ordering, channel filtering,
//! unsubscribe, fan-out, resubscription after the connection is killed,
//! and signed payloads: a raw `PUBLISH` or one signed with another key is
//! dropped and counted.
//!
//! Runs when `PARLEY_TEST_REDIS_URL` is set (skipped with a note otherwise);
//! when it is set, an unreachable Redis fails the tests. Every test uses its
//! own random channel prefix.

use std::time::Duration;

use common::Secret;
use common::bus::{
    Bus, BusError, BusEvent, BusKeys, Envelope, RedisBus, Subscriber, envelope, room_channel,
};
use tokio::sync::mpsc::UnboundedReceiver;

/// Upper bound on waiting for one event; generous for slow CI machines.
const WAIT: Duration = Duration::from_secs(10);

/// A bus on the test Redis with a fresh prefix, or `None` (after a note)
/// when no test Redis is configured.
async fn test_bus() -> Option<TestBus> {
    let Ok(url) = std::env::var("PARLEY_TEST_REDIS_URL") else {
        eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping the Redis bus test");
        return None;
    };
    let prefix = common::ids::new_id("bustest");
    let bus = RedisBus::connect(&url, None, &prefix, keys("k", ""))
        .await
        .unwrap_or_else(|e| panic!("PARLEY_TEST_REDIS_URL is set but Redis is unusable: {e}"));
    Some(TestBus { url, prefix, bus })
}

/// Bus keys made of repeated characters (32+ bytes each).
fn keys(current: &str, previous: &str) -> BusKeys {
    BusKeys::new(
        Secret::new(current.repeat(32)),
        Secret::new(previous.repeat(32)),
    )
}

struct TestBus {
    url: String,
    prefix: String,
    bus: RedisBus,
}

impl TestBus {
    async fn publish(&self, room: &str, seq: i64) {
        self.bus
            .publish(&room_channel(room), &message(room, seq))
            .await
            .expect("publish");
    }

    async fn subscriber(&self) -> (Box<dyn Subscriber>, UnboundedReceiver<BusEvent>) {
        self.bus.subscriber().await.expect("subscriber")
    }

    /// A plain connection for inspecting and disturbing Redis.
    async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("admin connection")
    }

    /// Ids of this bus's subscriber connections, from `CLIENT LIST`.
    async fn subscriber_connection_ids(&self) -> Vec<String> {
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut self.admin().await)
            .await
            .expect("client list");
        let wanted = format!("name=parley-sub-{}-", self.prefix);
        list.lines()
            .filter(|line| line.split(' ').any(|field| field.starts_with(&wanted)))
            .filter_map(|line| {
                line.split(' ')
                    .find_map(|field| field.strip_prefix("id="))
                    .map(str::to_string)
            })
            .collect()
    }
}

fn message(room: &str, seq: i64) -> Envelope {
    envelope(room, seq, "message.new", format!("{{\"seq\":{seq}}}"))
}

async fn next_event(rx: &mut UnboundedReceiver<BusEvent>) -> BusEvent {
    tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("no bus event in time")
        .expect("subscriber ended")
}

/// The next message, as (channel, room, seq).
async fn next_message(rx: &mut UnboundedReceiver<BusEvent>) -> (String, String, i64) {
    match next_event(rx).await {
        BusEvent::Message { channel, envelope } => (channel, envelope.room_id, envelope.seq),
        BusEvent::Resubscribed => panic!("unexpected resubscription"),
    }
}

#[tokio::test]
async fn delivers_a_thousand_envelopes_in_order() {
    let Some(t) = test_bus().await else { return };
    let (sub, mut rx) = t.subscriber().await;
    sub.subscribe(&room_channel("r1")).await.expect("subscribe");
    for seq in 1..=1_000 {
        t.publish("r1", seq).await;
    }
    for seq in 1..=1_000 {
        assert_eq!(
            next_message(&mut rx).await,
            (room_channel("r1"), "r1".to_string(), seq)
        );
    }
}

#[tokio::test]
async fn delivers_only_subscribed_channels() {
    let Some(t) = test_bus().await else { return };
    let (sub, mut rx) = t.subscriber().await;
    sub.subscribe(&room_channel("mine"))
        .await
        .expect("subscribe");
    // Redis delivers in publish order: had "other" been delivered, it
    // would arrive before "mine".
    t.publish("other", 1).await;
    t.publish("mine", 2).await;
    assert_eq!(next_message(&mut rx).await.1, "mine");
}

#[tokio::test]
async fn unsubscribe_stops_delivery() {
    let Some(t) = test_bus().await else { return };
    let (sub, mut rx) = t.subscriber().await;
    sub.subscribe(&room_channel("a")).await.expect("subscribe");
    sub.subscribe(&room_channel("b")).await.expect("subscribe");
    t.publish("a", 1).await;
    assert_eq!(
        next_message(&mut rx).await,
        (room_channel("a"), "a".into(), 1)
    );
    sub.unsubscribe(&room_channel("a"))
        .await
        .expect("unsubscribe");
    t.publish("a", 2).await;
    t.publish("b", 3).await;
    assert_eq!(
        next_message(&mut rx).await,
        (room_channel("b"), "b".into(), 3)
    );
}

#[tokio::test]
async fn every_subscriber_of_a_channel_receives() {
    let Some(t) = test_bus().await else { return };
    let (first, mut first_rx) = t.subscriber().await;
    let (second, mut second_rx) = t.subscriber().await;
    first
        .subscribe(&room_channel("r"))
        .await
        .expect("subscribe");
    second
        .subscribe(&room_channel("r"))
        .await
        .expect("subscribe");
    t.publish("r", 7).await;
    assert_eq!(next_message(&mut first_rx).await.2, 7);
    assert_eq!(next_message(&mut second_rx).await.2, 7);
}

#[tokio::test]
async fn undecodable_payloads_are_skipped() {
    let Some(t) = test_bus().await else { return };
    let (sub, mut rx) = t.subscriber().await;
    sub.subscribe(&room_channel("r")).await.expect("subscribe");
    redis::cmd("PUBLISH")
        .arg(format!("{}:{}", t.prefix, room_channel("r")))
        .arg(&[0xff_u8, 0xff, 0xff][..])
        .exec_async(&mut t.admin().await)
        .await
        .expect("publish garbage");
    t.publish("r", 1).await;
    assert_eq!(next_message(&mut rx).await.2, 1);
}

#[tokio::test]
async fn resubscribes_after_the_connection_is_killed() {
    let Some(t) = test_bus().await else { return };
    let (sub, mut rx) = t.subscriber().await;
    sub.subscribe(&room_channel("r")).await.expect("subscribe");
    let ids = t.subscriber_connection_ids().await;
    assert_eq!(ids.len(), 1, "one named subscriber connection: {ids:?}");
    redis::cmd("CLIENT")
        .arg("KILL")
        .arg("ID")
        .arg(&ids[0])
        .exec_async(&mut t.admin().await)
        .await
        .expect("client kill");

    assert!(matches!(next_event(&mut rx).await, BusEvent::Resubscribed));
    let after = t.subscriber_connection_ids().await;
    assert_eq!(after.len(), 1, "the new connection is named too: {after:?}");
    assert_ne!(after, ids);
    t.publish("r", 2).await;
    assert_eq!(
        next_message(&mut rx).await,
        (room_channel("r"), "r".into(), 2)
    );
}

#[tokio::test]
async fn dropping_the_subscriber_ends_it() {
    let Some(t) = test_bus().await else { return };
    let (sub, mut rx) = t.subscriber().await;
    sub.subscribe(&room_channel("r")).await.expect("subscribe");
    drop(sub);
    let end = tokio::time::timeout(WAIT, rx.recv())
        .await
        .expect("subscriber did not stop");
    assert!(end.is_none(), "no event after the subscriber is dropped");
}

#[tokio::test]
async fn connect_reports_an_unreachable_redis_as_unavailable() {
    // Port 1 (tcpmux) is closed on any test machine: the connection is refused.
    let result = RedisBus::connect("redis://127.0.0.1:1", None, "unreachable", keys("k", "")).await;
    assert!(matches!(result, Err(BusError::Unavailable(_))));
}

#[tokio::test]
async fn forged_payloads_are_dropped_and_counted_and_a_rotated_key_still_verifies() {
    let Some(test) = test_bus().await else {
        return;
    };
    let (subscriber, mut events) = test.subscriber().await;
    subscriber
        .subscribe(&room_channel("r"))
        .await
        .expect("subscribe");
    let redis_channel = format!("{}:{}", test.prefix, room_channel("r"));
    let mut admin = test.admin().await;
    // Someone on the Redis network publishes a raw envelope, then one
    // signed with a key of their own.
    let raw = prost::Message::encode_to_vec(&message("r", 1));
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&redis_channel)
        .arg(raw)
        .query_async(&mut admin)
        .await
        .expect("publish");
    let forger = RedisBus::connect(&test.url, None, &test.prefix, keys("x", ""))
        .await
        .expect("forger");
    forger
        .publish(&room_channel("r"), &message("r", 2))
        .await
        .expect("publish");
    // A component already on the next key, with ours as the previous one.
    let rotated = RedisBus::connect(&test.url, None, &test.prefix, keys("n", "k"))
        .await
        .expect("rotated");
    let old_keys_seen_by_rotated = rotated.subscriber().await.expect("subscriber");
    old_keys_seen_by_rotated
        .0
        .subscribe(&room_channel("r"))
        .await
        .expect("subscribe");
    test.publish("r", 3).await;
    assert_eq!(next_message(&mut events).await.2, 3, "only the genuine one");
    let mut rotated_events = old_keys_seen_by_rotated.1;
    assert_eq!(
        next_message(&mut rotated_events).await.2,
        3,
        "the previous key verifies"
    );
    assert_eq!(test.bus.refused_payloads(), 2, "the raw and the forged one");
}
