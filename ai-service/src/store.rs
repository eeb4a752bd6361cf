//! What ai-service replicas share, behind one trait: each user's quota
//! counters and reply slots, and the replies in progress in rooms (where
//! they stream, who asked, the text so far, a cancel flag). [`MemoryStore`]
//! serves one process; [`RedisStore`] is shared by every replica.
//!
//! Whatever a replica holds carries a lease (reply slots, streams): it
//! renews them while the reply runs ([`AiStore::renew`]), so what a crashed
//! replica held disappears by itself within [`LEASE`].

mod memory;
mod redis;

use std::time::Duration;

use async_trait::async_trait;
use proto::ai::v1::StreamState;

pub(crate) use self::memory::MemoryStore;
pub(crate) use self::redis::RedisStore;
use crate::quota::Limit;

/// How long a reply slot or a stream outlives its replica's last renewal.
pub(crate) const LEASE: Duration = Duration::from_secs(30);
/// How often a replica renews its leases (and looks for cancel flags).
pub(crate) const RENEW_EVERY: Duration = Duration::from_secs(10);
/// The window questions are counted in.
pub(crate) const WINDOW: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
#[error("ai store unavailable: {0}")]
pub struct StoreError(pub String);

/// A reply streaming into a room, as every replica sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StreamInfo {
    pub id: String,
    pub room_id: String,
    /// The user whose question it answers; `None` when a backend asked.
    pub asker: Option<String>,
}

/// A question counted against a quota, or why it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take {
    /// Counted, and one of the user's reply slots is held under the ticket.
    Granted,
    /// Every reply slot of the user is taken.
    Busy,
    /// The user asked their questions of the window already; the oldest
    /// leaves it in `retry_after_ms`.
    TooMany { retry_after_ms: i64 },
}

/// One of a user's reply slots (`ticket` names it and its question).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct SlotRef {
    pub user: String,
    pub ticket: String,
}

#[async_trait]
pub(crate) trait AiStore: Send + Sync + 'static {
    /// Counts a question of `slot.user` at `now_ms` against `limit` and
    /// holds one of their reply slots until `now_ms + LEASE` — atomically,
    /// so two replicas cannot both take the last one.
    async fn take(&self, slot: &SlotRef, limit: Limit, now_ms: i64) -> Result<Take, StoreError>;

    /// Frees a reply slot (its question still counts).
    async fn release(&self, slot: &SlotRef) -> Result<(), StoreError>;

    /// Gives a question back (it started no reply) and frees its slot.
    async fn refund(&self, slot: &SlotRef) -> Result<(), StoreError>;

    /// Lists a room's new stream with no text yet; `false` when one with
    /// its id runs already (on any replica).
    async fn open(&self, stream: &StreamInfo) -> Result<bool, StoreError>;

    /// Appends the chunk of delta `index`; `false` (nothing changed) when
    /// the stream is unknown or not at that index, and needs [`AiStore::sync`].
    async fn record(&self, id: &str, index: u64, chunk: &str) -> Result<bool, StoreError>;

    /// Sets a stream's whole state (relisting it if it was lost).
    async fn sync(&self, stream: &StreamInfo, text: &str, next: u64) -> Result<(), StoreError>;

    /// Unlists a stream.
    async fn close(&self, stream: &StreamInfo) -> Result<(), StoreError>;

    /// A room's streams in progress with their text so far and next delta
    /// index, oldest id first.
    async fn in_room(&self, room_id: &str) -> Result<Vec<StreamState>, StoreError>;

    /// A stream in progress, wherever it runs.
    async fn find(&self, id: &str) -> Result<Option<StreamInfo>, StoreError>;

    /// Asks whoever runs the stream to cancel it (they see the flag at their
    /// next renewal); `false` when no such stream is listed.
    async fn flag_cancel(&self, id: &str) -> Result<bool, StoreError>;

    /// Extends the leases of this replica's `streams` and `slots` to
    /// `now_ms + LEASE`; returns the streams flagged for cancelling.
    async fn renew(
        &self,
        streams: &[StreamInfo],
        slots: &[SlotRef],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError>;
}

/// `d` in milliseconds, as the stores count.
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every store must have; run against each implementation.

    use super::*;

    fn slot(user: &str, n: usize) -> SlotRef {
        SlotRef {
            user: user.into(),
            ticket: format!("t{n}-{}", common::ids::new_id("q")),
        }
    }

    const LIMIT: Limit = Limit {
        per_minute: 3,
        concurrent: 2,
    };

    pub(crate) async fn run(store: &dyn AiStore) {
        quotas(store).await;
        streams(store).await;
    }

    async fn quotas(store: &dyn AiStore) {
        let now = common::ids::now_ms();
        let window = millis(WINDOW);
        let alice = format!("alice-{}", common::ids::new_id("u"));
        let bob = format!("bob-{}", common::ids::new_id("u"));

        // Two slots at once; a released one is free again.
        let first = slot(&alice, 1);
        assert_eq!(
            store.take(&first, LIMIT, now).await.expect("take"),
            Take::Granted
        );
        let second = slot(&alice, 2);
        assert_eq!(
            store.take(&second, LIMIT, now + 1).await.expect("take"),
            Take::Granted
        );
        assert_eq!(
            store
                .take(&slot(&alice, 3), LIMIT, now + 2)
                .await
                .expect("take"),
            Take::Busy,
            "both slots are held"
        );
        assert_eq!(
            store
                .take(&slot(&bob, 1), LIMIT, now + 2)
                .await
                .expect("take"),
            Take::Granted,
            "per user"
        );
        store.release(&first).await.expect("release");
        let third = slot(&alice, 4);
        assert_eq!(
            store.take(&third, LIMIT, now + 10_000).await.expect("take"),
            Take::Granted
        );
        store.release(&second).await.expect("release");
        store.release(&third).await.expect("release");

        // Three questions a minute, sliding: the busy one did not count.
        assert_eq!(
            store
                .take(&slot(&alice, 5), LIMIT, now + 20_000)
                .await
                .expect("take"),
            Take::TooMany {
                retry_after_ms: window - 20_000
            },
            "until the oldest question leaves the window"
        );
        let refunded = slot(&alice, 6);
        store.refund(&second).await.expect("refund");
        assert_eq!(
            store
                .take(&refunded, LIMIT, now + 20_000)
                .await
                .expect("take"),
            Take::Granted,
            "a refunded question does not count"
        );
        store.release(&refunded).await.expect("release");
        assert_eq!(
            store
                .take(&slot(&alice, 7), LIMIT, now + window)
                .await
                .expect("take"),
            Take::Granted,
            "the first question left the window"
        );

        // A slot its replica stopped renewing ends with its lease.
        let lease = millis(LEASE);
        let carol = format!("carol-{}", common::ids::new_id("u"));
        let kept = slot(&carol, 1);
        let lost = slot(&carol, 2);
        store.take(&kept, LIMIT, now).await.expect("take");
        store.take(&lost, LIMIT, now).await.expect("take");
        store
            .renew(&[], std::slice::from_ref(&kept), now + lease - 1)
            .await
            .expect("renew");
        let third = slot(&carol, 3);
        assert_eq!(
            store.take(&third, LIMIT, now + lease).await.expect("take"),
            Take::Granted,
            "the unrenewed slot is free"
        );
        store.release(&third).await.expect("release");
        assert_eq!(
            store
                .take(&slot(&carol, 4), LIMIT, now + lease)
                .await
                .expect("take"),
            Take::TooMany {
                retry_after_ms: window - lease
            },
            "its question still counts"
        );
    }

    async fn streams(store: &dyn AiStore) {
        let id = common::ids::new_id("s");
        let room = common::ids::new_id("r");
        let stream = StreamInfo {
            id: format!("s_a{id}"),
            room_id: room.clone(),
            asker: Some("alice".into()),
        };
        let other = StreamInfo {
            id: format!("s_b{id}"),
            room_id: room.clone(),
            asker: None,
        };
        assert!(store.open(&stream).await.expect("open"));
        assert!(
            !store.open(&stream).await.expect("open"),
            "one stream per id"
        );
        assert!(store.open(&other).await.expect("open"));
        assert!(store.record(&stream.id, 0, "Hel").await.expect("record"));
        assert!(store.record(&stream.id, 1, "lo").await.expect("record"));
        assert!(
            !store.record(&stream.id, 3, "!").await.expect("record"),
            "a delta was missed"
        );
        assert!(!store.record("s_nope", 0, "x").await.expect("record"));

        let listed = store.in_room(&room).await.expect("list");
        assert_eq!(listed.len(), 2);
        assert_eq!(listed[0].stream_id, stream.id);
        assert_eq!(listed[0].room_id, room);
        assert_eq!(listed[0].text_so_far, "Hello");
        assert_eq!(listed[0].index, 2);
        assert_eq!(listed[1].stream_id, other.id);
        assert_eq!(listed[1].text_so_far, "");
        assert!(store.in_room("r_elsewhere").await.expect("list").is_empty());

        store.sync(&stream, "Hello, world", 4).await.expect("sync");
        assert!(
            store
                .record(&stream.id, 4, "!")
                .await
                .expect("in step again")
        );
        let listed = store.in_room(&room).await.expect("list");
        assert_eq!(
            (listed[0].text_so_far.as_str(), listed[0].index),
            ("Hello, world!", 5)
        );

        assert_eq!(
            store.find(&stream.id).await.expect("find"),
            Some(stream.clone())
        );
        assert_eq!(
            store.find(&other.id).await.expect("find"),
            Some(other.clone())
        );
        assert_eq!(store.find("s_nope").await.expect("find"), None);

        let now = common::ids::now_ms();
        let both = [stream.clone(), other.clone()];
        assert!(
            store
                .renew(&both, &[], now)
                .await
                .expect("renew")
                .is_empty()
        );
        assert!(store.flag_cancel(&other.id).await.expect("flag"));
        assert!(!store.flag_cancel("s_nope").await.expect("flag"));
        assert_eq!(
            store.renew(&both, &[], now).await.expect("renew"),
            std::slice::from_ref(&other.id),
            "the replica running it learns of the cancel"
        );

        store.close(&stream).await.expect("close");
        store.close(&other).await.expect("close");
        assert!(store.in_room(&room).await.expect("list").is_empty());
        assert_eq!(store.find(&stream.id).await.expect("find"), None);
        assert!(!store.record(&stream.id, 5, "late").await.expect("record"));
        store.sync(&stream, "relisted", 1).await.expect("sync");
        assert_eq!(
            store.in_room(&room).await.expect("list").len(),
            1,
            "sync relists"
        );
        store.close(&stream).await.expect("close");
    }
}
