//! The contract every [`PresenceStore`] meets, run against the memory store
//! (paused tokio time) and the Redis store (a manual clock). The Redis runs
//! need `PARLEY_TEST_REDIS_URL` and are skipped with a note without it; with
//! it set, an unreachable Redis fails them.

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use super::{Call, CallAction, Clock, Ended, MemoryStore, PresenceStore, RedisStore, WentOffline};
use crate::error::PresenceError;

const TTL: Duration = Duration::from_secs(30);
const GRACE: Duration = Duration::from_secs(5);
const RING: Duration = Duration::from_secs(45);
const MS: Duration = Duration::from_millis(1);

/// A clock that moves only when told to.
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

enum Backend {
    Memory(Arc<MemoryStore>),
    Redis {
        clock: Arc<ManualClock>,
        url: String,
        prefix: String,
    },
}

/// A store under test and the way to move its time.
struct Harness {
    store: Arc<dyn PresenceStore>,
    backend: Backend,
}

impl Harness {
    fn memory() -> Harness {
        let store = Arc::new(MemoryStore::new());
        Harness {
            store: store.clone(),
            backend: Backend::Memory(store),
        }
    }

    /// A Redis store under a fresh key prefix, or `None` (after a note) when
    /// no test Redis is configured.
    async fn redis() -> Option<Harness> {
        let Ok(url) = std::env::var("PARLEY_TEST_REDIS_URL") else {
            eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping the Redis presence store");
            return None;
        };
        let prefix = format!("{}:", common::ids::new_id("presencetest"));
        let clock = Arc::new(ManualClock(AtomicI64::new(common::ids::now_ms())));
        let store = RedisStore::connect(&url, None, &prefix, clock.clone())
            .await
            .unwrap_or_else(|e| panic!("PARLEY_TEST_REDIS_URL is set but Redis is unusable: {e}"));
        Some(Harness {
            store: Arc::new(store),
            backend: Backend::Redis { clock, url, prefix },
        })
    }

    async fn advance(&self, by: Duration) {
        match &self.backend {
            Backend::Memory(_) => tokio::time::advance(by).await,
            Backend::Redis { clock, .. } => {
                clock.0.fetch_add(by.as_millis() as i64, Ordering::SeqCst);
            }
        }
    }

    /// The store's current time in Unix ms.
    fn now_ms(&self) -> i64 {
        match &self.backend {
            Backend::Memory(store) => store.now_ms(),
            Backend::Redis { clock, .. } => clock.now_ms(),
        }
    }

    /// Deletes the test's keys.
    async fn cleanup(self) {
        let Backend::Redis { url, prefix, .. } = self.backend else {
            return;
        };
        let mut connection = redis::Client::open(url.as_str())
            .expect("redis url")
            .get_multiplexed_async_connection()
            .await
            .expect("cleanup connection");
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}*"))
            .query_async(&mut connection)
            .await
            .expect("list test keys");
        if !keys.is_empty() {
            redis::cmd("DEL")
                .arg(keys)
                .exec_async(&mut connection)
                .await
                .expect("delete test keys");
        }
    }

    async fn register(&self, conn: &str, user: &str) {
        self.store
            .register("edge-1", conn, user, TTL)
            .await
            .expect("register");
    }

    async fn renew(&self, edge: &str, conns: &[&str]) -> Vec<String> {
        let conns: Vec<String> = conns.iter().map(|c| c.to_string()).collect();
        self.store.renew(edge, &conns, TTL).await.expect("renew")
    }

    async fn release(&self, conns: &[&str]) {
        let conns: Vec<String> = conns.iter().map(|c| c.to_string()).collect();
        self.store.release(&conns).await.expect("release");
    }

    async fn presence(&self, user: &str) -> super::Presence {
        let mut all = self
            .store
            .presence(&[user.to_string()])
            .await
            .expect("presence");
        assert_eq!(all.len(), 1);
        all.remove(0)
    }

    async fn online(&self, user: &str) -> bool {
        self.presence(user).await.online
    }
}

async fn lease_expires_after_the_ttl_without_renewal(h: &Harness) {
    h.register("c1", "alice").await;
    let expires_at = h.now_ms() + TTL.as_millis() as i64;
    assert!(h.online("alice").await);
    h.advance(TTL - MS).await;
    assert!(
        h.online("alice").await,
        "still online just before the expiry"
    );
    h.advance(MS).await;
    let presence = h.presence("alice").await;
    assert!(!presence.online, "offline at the expiry");
    assert_eq!(
        presence.last_seen_ms, expires_at,
        "last seen when the lease ran out"
    );
    // Releasing the dead lease later does not move last_seen.
    h.advance(TTL).await;
    h.release(&["c1"]).await;
    assert_eq!(h.presence("alice").await.last_seen_ms, expires_at);
}

async fn expiry_is_noticed_however_late(h: &Harness) {
    h.register("c1", "alice").await;
    let expires_at = h.now_ms() + TTL.as_millis() as i64;
    h.advance(TTL * 10).await;
    let presence = h.presence("alice").await;
    assert!(!presence.online);
    assert_eq!(presence.last_seen_ms, expires_at);
}

async fn registering_again_after_expiry_keeps_the_gap(h: &Harness) {
    h.register("c1", "alice").await;
    let expires_at = h.now_ms() + TTL.as_millis() as i64;
    h.advance(TTL + Duration::from_secs(5)).await;
    h.register("c1", "alice").await;
    let presence = h.presence("alice").await;
    assert!(presence.online);
    assert_eq!(
        presence.last_seen_ms, expires_at,
        "offline from the expiry until now"
    );
}

async fn renew_keeps_a_lease_alive(h: &Harness) {
    h.register("c1", "alice").await;
    for _ in 0..5 {
        h.advance(TTL - Duration::from_secs(5)).await;
        assert_eq!(h.renew("edge-1", &["c1"]).await, Vec::<String>::new());
    }
    assert!(h.online("alice").await, "online long after the first TTL");
    h.advance(TTL).await;
    assert!(!h.online("alice").await, "offline once renewals stop");
}

async fn renew_reports_unknown_conns(h: &Harness) {
    h.register("c1", "alice").await;
    h.register("c2", "bob").await;
    assert_eq!(h.renew("edge-1", &["c1", "never"]).await, ["never"]);
    assert_eq!(
        h.renew("edge-2", &["c2"]).await,
        ["c2"],
        "another edge's lease is unknown to this edge"
    );
    h.advance(TTL).await;
    assert_eq!(h.renew("edge-1", &["c1", "c2"]).await, ["c1", "c2"]);
    assert!(!h.online("alice").await);
    // The edge registers the unknown lease again and the user is back.
    h.register("c1", "alice").await;
    assert!(h.online("alice").await);
    assert_eq!(h.renew("edge-1", &["c1"]).await, Vec::<String>::new());
}

async fn a_user_is_online_until_every_connection_ends(h: &Harness) {
    h.register("c1", "alice").await;
    h.register("c2", "alice").await;
    h.release(&["c1"]).await;
    let presence = h.presence("alice").await;
    assert!(
        presence.online,
        "the second connection keeps the user online"
    );
    assert_eq!(presence.last_seen_ms, 0);
    h.advance(Duration::from_secs(10)).await;
    h.release(&["c2"]).await;
    let presence = h.presence("alice").await;
    assert!(!presence.online);
    assert_eq!(presence.last_seen_ms, h.now_ms());

    // One connection expiring while the other is renewed changes nothing.
    h.register("c3", "alice").await;
    h.register("c4", "alice").await;
    h.advance(TTL / 2).await;
    h.renew("edge-1", &["c4"]).await;
    h.advance(TTL / 2).await;
    assert!(h.online("alice").await);
    h.advance(TTL / 2).await;
    assert!(!h.online("alice").await);
}

async fn release_sets_last_seen(h: &Harness) {
    let never = h.presence("nobody").await;
    assert_eq!(
        never,
        super::Presence {
            user_id: "nobody".into(),
            online: false,
            in_grace: false,
            last_seen_ms: 0,
            status: "online".into(),
            text: String::new(),
        }
    );
    h.register("c1", "alice").await;
    h.advance(Duration::from_secs(7)).await;
    h.release(&["c1", "unknown-conn"]).await;
    let presence = h.presence("alice").await;
    assert!(!presence.online);
    assert_eq!(presence.last_seen_ms, h.now_ms());
    assert_eq!(
        h.renew("edge-1", &["c1"]).await,
        ["c1"],
        "a released lease is gone"
    );
}

async fn presence_answers_in_the_order_asked(h: &Harness) {
    h.register("c1", "bob").await;
    let users = ["carol".to_string(), "bob".to_string(), "alice".to_string()];
    let presence = h.store.presence(&users).await.expect("presence");
    let answered: Vec<(&str, bool)> = presence
        .iter()
        .map(|p| (p.user_id.as_str(), p.online))
        .collect();
    assert_eq!(
        answered,
        [("carol", false), ("bob", true), ("alice", false)]
    );
}

async fn a_connection_registered_for_another_user_moves(h: &Harness) {
    h.register("c1", "alice").await;
    h.register("c1", "bob").await;
    assert!(!h.online("alice").await);
    assert!(h.online("bob").await);
    assert_eq!(h.presence("alice").await.last_seen_ms, h.now_ms());
}

fn ended(conn: &str, user: &str) -> Ended {
    Ended {
        conn_id: conn.into(),
        user_id: user.into(),
        edge_id: "edge-1".into(),
    }
}

async fn release_reports_the_live_leases_it_ended(h: &Harness) {
    h.register("c1", "alice").await;
    h.register("c2", "bob").await;
    let conns = ["c1".to_string(), "unknown".to_string()];
    let released = h.store.release(&conns).await.expect("release");
    assert_eq!(released, [ended("c1", "alice")]);
    // Already ended: reported once only.
    assert_eq!(h.store.release(&conns).await.expect("release"), []);
    // An expired lease released later is the sweep's to report.
    h.advance(TTL).await;
    let released = h.store.release(&["c2".to_string()]).await.expect("release");
    assert_eq!(released, []);
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    assert_eq!(sweep.ended, [ended("c2", "bob")]);
}

async fn registering_says_whether_the_user_came_online(h: &Harness) {
    let came = |conn: &'static str| async move {
        h.store
            .register("edge-1", conn, "alice", TTL)
            .await
            .expect("register")
    };
    assert!(came("c1").await, "first connection");
    assert!(!came("c2").await, "already online");
    h.release(&["c1", "c2"]).await;
    h.advance(GRACE - MS).await;
    assert!(!came("c3").await, "back within the grace period");
    h.release(&["c3"]).await;
    h.advance(GRACE).await;
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    assert_eq!(sweep.offline.len(), 1);
    assert!(came("c4").await, "back after being announced offline");
}

async fn offline_is_reported_once_after_the_grace_period(h: &Harness) {
    h.register("c1", "alice").await;
    h.advance(Duration::from_secs(3)).await;
    h.release(&["c1"]).await;
    let released_at = h.now_ms();
    let presence = h.presence("alice").await;
    assert!(!presence.online);
    assert!(presence.in_grace, "the grace period runs");
    h.advance(GRACE - MS).await;
    assert_eq!(h.store.sweep(GRACE).await.expect("sweep").offline, []);
    h.advance(MS).await;
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    assert_eq!(
        sweep.offline,
        [WentOffline {
            user_id: "alice".into(),
            last_seen_ms: released_at,
            status: "online".into(),
        }]
    );
    assert!(!h.presence("alice").await.in_grace);
    assert_eq!(h.store.sweep(GRACE).await.expect("sweep").offline, []);
}

async fn a_reconnect_within_the_grace_period_reports_nothing(h: &Harness) {
    h.register("c1", "alice").await;
    h.release(&["c1"]).await;
    h.advance(GRACE / 2).await;
    h.register("c2", "alice").await;
    h.advance(GRACE * 2).await;
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    assert_eq!(sweep.offline, [], "no offline for a user who came back");
    assert!(h.online("alice").await);
}

async fn expired_leases_are_found_by_the_sweep_and_go_offline_after_grace(h: &Harness) {
    h.register("c1", "alice").await;
    h.register("c2", "alice").await;
    let expires_at = h.now_ms() + TTL.as_millis() as i64;
    h.advance(TTL).await;
    // Nobody asks about alice: only the sweep notices.
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    let mut conns: Vec<String> = sweep.ended.iter().map(|e| e.conn_id.clone()).collect();
    conns.sort();
    assert_eq!(conns, ["c1", "c2"]);
    assert_eq!(sweep.offline, [], "the grace period runs from the expiry");
    h.advance(GRACE).await;
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    assert_eq!(sweep.ended, []);
    assert_eq!(
        sweep.offline,
        [WentOffline {
            user_id: "alice".into(),
            last_seen_ms: expires_at,
            status: "online".into(),
        }]
    );
}

async fn status_is_kept_until_the_user_goes_offline(h: &Harness) {
    h.register("c1", "alice").await;
    let previous = h
        .store
        .set_status("alice", "busy", "in a meeting")
        .await
        .expect("set");
    assert_eq!(previous, ("online".to_string(), String::new()));
    let presence = h.presence("alice").await;
    assert_eq!(
        (presence.status.as_str(), presence.text.as_str()),
        ("busy", "in a meeting")
    );
    let previous = h
        .store
        .set_status("alice", "invisible", "")
        .await
        .expect("set");
    assert_eq!(previous, ("busy".to_string(), "in a meeting".to_string()));
    h.release(&["c1"]).await;
    h.advance(GRACE).await;
    let sweep = h.store.sweep(GRACE).await.expect("sweep");
    assert_eq!(sweep.offline[0].status, "invisible");
    assert_eq!(h.presence("alice").await.status, "online", "forgotten");
}

async fn forgetting_a_user_drops_status_and_last_seen(h: &Harness) {
    h.register("c1", "alice").await;
    h.store
        .set_status("alice", "busy", "at the dentist")
        .await
        .expect("set");
    h.register("c2", "bob").await;
    h.advance(Duration::from_secs(3)).await;
    h.release(&["c2"]).await;
    assert!(h.presence("bob").await.last_seen_ms > 0);
    h.store.forget("alice").await.expect("forget");
    h.store.forget("bob").await.expect("forget");
    let alice = h.presence("alice").await;
    assert_eq!((alice.status.as_str(), alice.text.as_str()), ("online", ""));
    let bob = h.presence("bob").await;
    assert_eq!((bob.last_seen_ms, bob.in_grace), (0, false));
}

fn call(id: &str) -> Call {
    Call {
        id: id.into(),
        caller: "alice".into(),
        caller_name: "Alice".into(),
        callee: "bob".into(),
        room_id: String::new(),
        answered: false,
    }
}

async fn only_the_parties_act_on_a_call(h: &Harness) {
    h.store
        .create_call(&call("k1"), RING)
        .await
        .expect("create");
    let act =
        |user: &'static str, action| async move { h.store.act_on_call("k1", user, action).await };
    assert!(matches!(
        act("mallory", CallAction::End).await,
        Err(PresenceError::NotFound(_))
    ));
    assert!(matches!(
        h.store.act_on_call("nope", "alice", CallAction::End).await,
        Err(PresenceError::NotFound(_))
    ));
    assert!(
        matches!(
            act("alice", CallAction::Answer).await,
            Err(PresenceError::Forbidden(_)),
        ),
        "the caller does not answer"
    );
    assert_eq!(
        act("alice", CallAction::Ice).await.expect("ice"),
        call("k1")
    );
    assert_eq!(
        act("bob", CallAction::Answer).await.expect("answer"),
        call("k1")
    );
    assert!(
        matches!(
            act("bob", CallAction::Answer).await,
            Err(PresenceError::Conflict(_))
        ),
        "answered once"
    );
    let answered = act("bob", CallAction::Ice).await.expect("ice");
    assert!(answered.answered);
    // Answered calls do not ring out.
    h.advance(RING * 2).await;
    assert_eq!(h.store.sweep(GRACE).await.expect("sweep").missed_calls, []);
    act("alice", CallAction::End).await.expect("end");
    assert!(
        matches!(
            act("bob", CallAction::End).await,
            Err(PresenceError::NotFound(_))
        ),
        "ended"
    );

    h.store
        .create_call(&call("k2"), RING)
        .await
        .expect("create");
    h.store
        .act_on_call("k2", "bob", CallAction::Reject)
        .await
        .expect("reject");
    assert!(matches!(
        h.store.act_on_call("k2", "alice", CallAction::Ice).await,
        Err(PresenceError::NotFound(_))
    ));
}

async fn an_unanswered_call_is_missed_once_after_the_ring_time(h: &Harness) {
    h.store
        .create_call(&call("k1"), RING)
        .await
        .expect("create");
    h.advance(RING - MS).await;
    assert_eq!(h.store.sweep(GRACE).await.expect("sweep").missed_calls, []);
    h.advance(MS).await;
    assert!(
        matches!(
            h.store.act_on_call("k1", "bob", CallAction::Answer).await,
            Err(PresenceError::NotFound(_))
        ),
        "too late to answer"
    );
    assert_eq!(
        h.store.sweep(GRACE).await.expect("sweep").missed_calls,
        [call("k1")]
    );
    assert_eq!(h.store.sweep(GRACE).await.expect("sweep").missed_calls, []);
}

/// One test per contract and backend: memory on paused time, Redis on a
/// manual clock (paused time would also pause Redis I/O timeouts).
macro_rules! contract {
    ($($name:ident),* $(,)?) => {
        mod on_memory {
            $(
                #[tokio::test(start_paused = true)]
                async fn $name() {
                    super::$name(&super::Harness::memory()).await;
                }
            )*
        }

        mod on_redis {
            $(
                #[tokio::test]
                async fn $name() {
                    if let Some(harness) = super::Harness::redis().await {
                        super::$name(&harness).await;
                        harness.cleanup().await;
                    }
                }
            )*
        }
    };
}

contract!(
    lease_expires_after_the_ttl_without_renewal,
    expiry_is_noticed_however_late,
    registering_again_after_expiry_keeps_the_gap,
    renew_keeps_a_lease_alive,
    renew_reports_unknown_conns,
    a_user_is_online_until_every_connection_ends,
    release_sets_last_seen,
    presence_answers_in_the_order_asked,
    a_connection_registered_for_another_user_moves,
    release_reports_the_live_leases_it_ended,
    registering_says_whether_the_user_came_online,
    offline_is_reported_once_after_the_grace_period,
    a_reconnect_within_the_grace_period_reports_nothing,
    expired_leases_are_found_by_the_sweep_and_go_offline_after_grace,
    status_is_kept_until_the_user_goes_offline,
    forgetting_a_user_drops_status_and_last_seen,
    only_the_parties_act_on_a_call,
    an_unanswered_call_is_missed_once_after_the_ring_time,
);
