//! Webhooks against a local receiver that fails, then recovers, on a clock
//! the tests move: signatures, backoff, dead letters and redrive, the
//! idempotency key, the concurrency bound, and the offline filter.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicUsize, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::bus::MemoryBus;
use common::config::WebhookConfig;
use common::metrics::ChatMetrics;
use common::shutdown::Shutdown;
use common::testing::TestDatabase;
use proto::chat::v1::{Message, Notification, User, Visibility};
use serde_json::Value;
use sqlx::Row;
use tokio::sync::{Semaphore, mpsc};

use common::grpc::{ClientSettings, ServiceChannel};
use presence_service::PresenceApp;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::{RegisterRequest, ReleaseRequest};

use super::sign::signature;
use super::{Clock, Connections, Webhooks};
use crate::store::{NewRoom, Store};
use crate::writer::{Op, Writer};

const SECRET: &str = "0123456789abcdef0123456789abcdef-hook";
const T0: i64 = 1_800_000_000_000;
const WAIT: Duration = Duration::from_secs(20);

/// A clock that moves only when told.
struct ManualClock(AtomicI64);

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.0.load(Ordering::SeqCst)
    }
}

/// Users with a live connection, as presence would answer.
struct Connected(HashSet<String>);

#[tonic::async_trait]
impl Connections for Connected {
    async fn connected(&self, users: &[String]) -> Result<HashSet<String>, String> {
        Ok(users
            .iter()
            .filter(|u| self.0.contains(*u))
            .cloned()
            .collect())
    }
}

/// One POST as the receiver got it.
#[derive(Debug)]
struct Received {
    key: String,
    event: String,
    timestamp: String,
    signature: String,
    body: String,
}

impl Received {
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).expect("JSON body")
    }

    /// What a receiver does: recompute the signature over the raw body.
    fn verifies(&self) -> bool {
        let timestamp: i64 = self.timestamp.parse().expect("numeric timestamp");
        signature(SECRET.as_bytes(), timestamp, &self.body) == self.signature
    }
}

struct ReceiverState {
    /// Requests answered 500 before the receiver recovers.
    failures_left: AtomicUsize,
    /// When set, each request waits for a permit before it is answered.
    gate: Option<Arc<Semaphore>>,
    in_flight: AtomicUsize,
    max_in_flight: AtomicUsize,
    requests: mpsc::UnboundedSender<Received>,
}

/// A small HTTP server standing in for a webhook endpoint.
struct Receiver {
    url: String,
    state: Arc<ReceiverState>,
    requests: mpsc::UnboundedReceiver<Received>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Receiver {
    async fn start(failures: usize, gate: Option<Arc<Semaphore>>) -> Receiver {
        let (tx, requests) = mpsc::unbounded_channel();
        let state = Arc::new(ReceiverState {
            failures_left: AtomicUsize::new(failures),
            gate,
            in_flight: AtomicUsize::new(0),
            max_in_flight: AtomicUsize::new(0),
            requests: tx,
        });
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(receive))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url,
            state,
            requests,
            server,
        }
    }

    async fn next(&mut self) -> Received {
        tokio::time::timeout(WAIT, self.requests.recv())
            .await
            .expect("a webhook POST in time")
            .expect("receiver open")
    }
}

async fn receive(
    State(state): State<Arc<ReceiverState>>,
    headers: HeaderMap,
    body: String,
) -> StatusCode {
    let now = state.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    state.max_in_flight.fetch_max(now, Ordering::SeqCst);
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string()
    };
    let _ = state.requests.send(Received {
        key: header("idempotency-key"),
        event: header("parley-event"),
        timestamp: header("parley-timestamp"),
        signature: header("parley-signature"),
        body,
    });
    if let Some(gate) = &state.gate {
        gate.acquire().await.expect("gate open").forget();
    }
    state.in_flight.fetch_sub(1, Ordering::SeqCst);
    let fail = state
        .failures_left
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok();
    if fail {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::OK
    }
}

/// The chat store and writer on a fresh database, and webhooks to one
/// endpoint on a manual clock.
struct Harness {
    store: Store,
    writer: Writer,
    webhooks: Webhooks,
    clock: Arc<ManualClock>,
    recorded: tokio::sync::watch::Receiver<u64>,
    _shutdown: Shutdown,
    _db: TestDatabase,
}

fn endpoint(url: &str, events: &[&str]) -> WebhookConfig {
    WebhookConfig {
        name: "hook".into(),
        url: url.into(),
        secret: common::Secret::new(SECRET),
        events: events.iter().map(|e| e.to_string()).collect(),
        max_in_flight: 4,
        max_attempts: 5,
        retry_base_ms: 1_000,
        retry_max_ms: 60_000,
        timeout_ms: 5_000,
    }
}

async fn harness(config: WebhookConfig, connections: Arc<dyn Connections>) -> Harness {
    harness_with(config, connections, None).await
}

async fn harness_with(
    config: WebhookConfig,
    connections: Arc<dyn Connections>,
    presence: Option<PresenceServiceClient<ServiceChannel>>,
) -> Harness {
    let db = common::testing::test_database().await;
    let store = Store::connect(&db.url, 4).await.expect("store");
    let writer = Writer::start(
        store.clone(),
        Arc::new(MemoryBus::new()),
        ChatMetrics::default(),
    );
    let clock = Arc::new(ManualClock(AtomicI64::new(T0)));
    // Polls never fire within a test: only commits and wakes move things.
    let mut webhooks = Webhooks::new(
        store.clone(),
        &[config],
        clock.clone(),
        connections,
        Duration::from_secs(3_600),
    )
    .await
    .expect("webhooks");
    if let Some(presence) = presence {
        webhooks = webhooks.with_presence(presence);
    }
    let recorded = webhooks
        .shared
        .as_ref()
        .expect("endpoints")
        .recorded
        .subscribe();
    let shutdown = Shutdown::new();
    webhooks.start(shutdown.signal());
    Harness {
        store,
        writer,
        webhooks,
        clock,
        recorded,
        _shutdown: shutdown,
        _db: db,
    }
}

fn user(id: &str) -> User {
    User {
        id: id.into(),
        name: format!("{id} (name)"),
    }
}

impl Harness {
    async fn room(&self, id: &str, visibility: Visibility, members: &[&str]) {
        let direct_key = (visibility == Visibility::Direct).then(|| {
            let mut pair: Vec<&str> = members.to_vec();
            pair.sort_unstable();
            pair.join("\n")
        });
        self.writer
            .submit(Op::CreateRoom(NewRoom {
                id: id.into(),
                name: id.into(),
                visibility,
                owner: user(members[0]),
                direct_key,
                members: members[1..].iter().map(|m| user(m)).collect(),
                created_at: T0,
            }))
            .await
            .expect("room");
    }

    /// Sends `text` as `sender`, notifying `mentioned` as the service would.
    async fn send(&self, room: &str, sender: &str, text: &str, mentioned: &[&str]) -> Message {
        let id = common::ids::new_id("m");
        let notifications = mentioned
            .iter()
            .map(|u| Notification {
                id: common::ids::new_id("n"),
                kind: "mention".into(),
                room_id: room.into(),
                message_id: Some(id.clone()),
                json: format!(r#"{{"kind":"mention","room":"{room}"}}"#),
                created_at: T0,
                read: false,
                user_id: u.to_string(),
            })
            .collect();
        self.writer
            .submit(Op::InsertMessage {
                message: Message {
                    id,
                    room_id: room.into(),
                    sender: Some(user(sender)),
                    text: text.into(),
                    created_at: T0,
                    client_msg_id: common::ids::new_id("c"),
                    ..Message::default()
                },
                notifications,
            })
            .await
            .expect("stored")
            .message
            .expect("message")
    }

    /// Waits until `n` attempts have their outcome stored.
    async fn recorded(&mut self, n: u64) {
        tokio::time::timeout(WAIT, self.recorded.wait_for(|done| *done >= n))
            .await
            .expect("attempts recorded in time")
            .expect("dispatcher running");
    }

    fn advance(&self, ms: i64) {
        self.clock.0.fetch_add(ms, Ordering::SeqCst);
        self.webhooks.wake();
    }

    /// `(attempts, next_at, last_error, dead)` of every stored delivery.
    async fn queue(&self) -> Vec<(i64, i64, String, bool)> {
        sqlx::query(
            "SELECT attempts, next_at, last_error, dead_at FROM webhook_deliveries ORDER BY id",
        )
        .fetch_all(&self.store.appender)
        .await
        .expect("queue")
        .iter()
        .map(|row| {
            let dead: Option<i64> = row.get("dead_at");
            (
                row.get("attempts"),
                row.get("next_at"),
                row.get("last_error"),
                dead.is_some(),
            )
        })
        .collect()
    }
}

#[tokio::test]
async fn a_failing_endpoint_is_retried_with_backoff_under_one_key_until_it_recovers() {
    let mut receiver = Receiver::start(2, None).await;
    let mut h = harness(
        endpoint(&receiver.url, &["message.*"]),
        Arc::new(Connected(HashSet::new())),
    )
    .await;
    h.room("r1", Visibility::Public, &["alice"]).await;
    let message = h.send("r1", "alice", "hello hooks", &[]).await;

    let first = receiver.next().await;
    h.recorded(1).await;
    assert_eq!(h.queue().await, [(1, T0 + 1_000, "HTTP 500".into(), false)]);

    h.advance(1_000);
    let second = receiver.next().await;
    h.recorded(2).await;
    // The pause doubles: 1 s after the first failure, 2 s after the second.
    assert_eq!(h.queue().await, [(2, T0 + 3_000, "HTTP 500".into(), false)]);

    h.advance(2_000);
    let third = receiver.next().await;
    h.recorded(3).await;
    assert_eq!(h.queue().await, [], "delivered, so no longer queued");

    for (attempt, at) in [(&first, T0), (&second, T0 + 1_000), (&third, T0 + 3_000)] {
        assert!(attempt.verifies(), "signature of {attempt:?}");
        assert_eq!(attempt.timestamp, (at / 1000).to_string());
        assert_eq!(
            attempt.key, first.key,
            "one idempotency key for every attempt"
        );
        assert_eq!(attempt.event, "room.event");
        assert_eq!(attempt.body, first.body);
    }
    let body = first.json();
    assert_eq!(body["type"], "room.event");
    assert_eq!(body["id"], first.key.as_str());
    assert_eq!(body["kind"], "message.new");
    assert_eq!(body["room"], "r1");
    assert_eq!(body["event"]["message"]["id"], message.id.as_str());
    assert!(body["position"].as_i64().is_some_and(|p| p > 0));

    // A signature over another body, or with another timestamp, fails.
    let tampered = Received {
        body: first.body.replace("hello hooks", "hello hacks"),
        ..first
    };
    assert!(!tampered.verifies());
}

#[tokio::test]
async fn attempts_used_up_make_a_dead_letter_that_a_redrive_delivers() {
    let mut receiver = Receiver::start(2, None).await;
    let mut config = endpoint(&receiver.url, &["message.new"]);
    config.max_attempts = 2;
    let mut h = harness(config, Arc::new(Connected(HashSet::new()))).await;
    h.room("r1", Visibility::Public, &["alice"]).await;
    h.send("r1", "alice", "to the dead letters", &[]).await;

    let first = receiver.next().await;
    h.recorded(1).await;
    h.advance(1_000);
    let second = receiver.next().await;
    h.recorded(2).await;
    let queue = h.queue().await;
    let dead_rows: Vec<_> = queue
        .iter()
        .map(|(n, _, e, dead)| (*n, e.as_str(), *dead))
        .collect();
    assert_eq!(dead_rows, [(2, "HTTP 500", true)]);
    let dead = h.store.dead_webhooks(None, None, 10).await.expect("list");
    assert_eq!(dead.len(), 1);
    assert_eq!(
        (
            dead[0].id.as_str(),
            dead[0].endpoint.as_str(),
            dead[0].attempts
        ),
        (first.key.as_str(), "hook", 2)
    );
    assert_eq!(dead[0].body, second.body);
    // Dead letters are not retried, however much time passes: the one
    // redriven below is still dead then.
    h.advance(3_600_000);

    let redriven = h
        .store
        .redrive_webhooks(&[], Some("hook"), h.clock.now_ms())
        .await
        .expect("redrive");
    assert_eq!(redriven, 1);
    h.webhooks.wake();
    let third = receiver.next().await;
    h.recorded(3).await;
    assert_eq!(third.key, first.key);
    assert!(third.verifies());
    assert_eq!(h.queue().await, []);
    assert!(
        h.store
            .dead_webhooks(None, None, 10)
            .await
            .expect("list")
            .is_empty()
    );
}

#[tokio::test]
async fn a_stuck_endpoint_holds_its_concurrency_bound_and_never_delays_commits() {
    let gate = Arc::new(Semaphore::new(0));
    let mut receiver = Receiver::start(0, Some(gate.clone())).await;
    let mut config = endpoint(&receiver.url, &["message.new"]);
    config.max_in_flight = 2;
    let mut h = harness(config, Arc::new(Connected(HashSet::new()))).await;
    h.room("r1", Visibility::Public, &["alice"]).await;
    // Every send commits while the endpoint answers nothing.
    for n in 0..6 {
        tokio::time::timeout(WAIT, h.send("r1", "alice", &format!("m{n}"), &[]))
            .await
            .expect("a commit does not wait for the endpoint");
    }
    let mut keys = HashSet::new();
    for _ in 0..2 {
        keys.insert(receiver.next().await.key);
    }
    // Release one at a time: each release lets exactly one more through.
    for done in 1..=6u64 {
        gate.add_permits(1);
        h.recorded(done).await;
        if done <= 4 {
            keys.insert(receiver.next().await.key);
        }
    }
    assert_eq!(keys.len(), 6, "every message delivered once");
    assert_eq!(receiver.state.max_in_flight.load(Ordering::SeqCst), 2);
    assert_eq!(h.queue().await, []);
}

#[tokio::test]
async fn offline_notifications_go_only_to_users_without_a_live_connection() {
    let mut receiver = Receiver::start(0, None).await;
    let connected = Connected(["bob".to_string()].into());
    let mut h = harness(
        endpoint(&receiver.url, &["notification.offline"]),
        Arc::new(connected),
    )
    .await;
    h.room("pub", Visibility::Public, &["alice", "bob", "carol"])
        .await;
    h.room("dm-bob", Visibility::Direct, &["alice", "bob"])
        .await;
    h.room("dm-dave", Visibility::Direct, &["alice", "dave"])
        .await;
    h.send("pub", "alice", "@bob @carol look", &["bob", "carol"])
        .await;
    h.send("pub", "alice", "nobody mentioned", &[]).await;
    h.send("dm-bob", "alice", "hi bob", &[]).await;
    h.send("dm-dave", "alice", "hi dave", &[]).await;
    for user in ["carol", "bob"] {
        h.webhooks
            .notification(&Notification {
                id: format!("n-call-{user}"),
                kind: "missed_call".into(),
                room_id: String::new(),
                message_id: None,
                json: r#"{"kind":"missed_call"}"#.into(),
                created_at: T0,
                read: false,
                user_id: user.into(),
            })
            .await;
    }
    // Six candidates (two mentions, two direct messages, two calls); the
    // three for bob, who is connected, are dropped.
    h.recorded(6).await;
    let mut sent = Vec::new();
    while let Ok(request) = receiver.requests.try_recv() {
        assert!(request.verifies());
        assert_eq!(request.event, "notification.offline");
        let body = request.json();
        sent.push((
            body["user"].as_str().unwrap_or_default().to_string(),
            body["reason"].as_str().unwrap_or_default().to_string(),
        ));
    }
    sent.sort();
    assert_eq!(
        sent,
        [
            ("carol".to_string(), "mention".to_string()),
            ("carol".to_string(), "missed_call".to_string()),
            ("dave".to_string(), "direct_message".to_string()),
        ]
    );
    assert_eq!(h.queue().await, []);
}

#[tokio::test]
async fn connects_and_disconnects_reach_endpoints_that_ask_for_them() {
    // A real presence-service, driven as an edge drives it.
    let credential = common::Secret::new(common::ids::random_secret(32));
    let presence_app = PresenceApp::connect(
        &common::config::PresenceConfig::default(),
        Arc::new(MemoryBus::new()),
        None,
        &credential,
        &common::metrics::Metrics::new(&["presence"]),
    )
    .await
    .expect("presence app");
    let server = common::testing::serve_grpc(|listener, signal| {
        presence_app.run_until_stopped(listener, signal)
    })
    .await;
    let presence = PresenceServiceClient::new(server.channel(&ClientSettings {
        credential,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    }));
    let mut receiver = Receiver::start(0, None).await;
    let _h = harness_with(
        endpoint(&receiver.url, &["connection.*"]),
        Arc::new(Connected(HashSet::new())),
        Some(presence.clone()),
    )
    .await;
    let register = |conn: String| {
        let mut presence = presence.clone();
        async move {
            presence
                .register(RegisterRequest {
                    edge_id: "edge-7".into(),
                    conn_id: conn,
                    user_id: "alice".into(),
                    ttl_ms: 0,
                    leases: Vec::new(),
                })
                .await
                .expect("register");
        }
    };
    // Presence's stream is at most once: connect until the follower, which
    // subscribes in the background, has seen one.
    let mut connected = None;
    for attempt in 0..100 {
        register(format!("c{attempt}")).await;
        if let Ok(Some(request)) =
            tokio::time::timeout(Duration::from_millis(100), receiver.requests.recv()).await
        {
            connected = Some(request);
            break;
        }
    }
    let connected = connected.expect("a connection.connected webhook");
    assert!(connected.verifies());
    assert_eq!(connected.event, "connection.connected");
    let body = connected.json();
    assert_eq!(
        (body["user"].as_str(), body["edge"].as_str()),
        (Some("alice"), Some("edge-7"))
    );
    let conn = body["conn_id"].as_str().expect("conn_id").to_string();

    presence
        .clone()
        .release(ReleaseRequest {
            conn_ids: vec![conn.clone()],
        })
        .await
        .expect("release");
    let disconnected = loop {
        let request = receiver.next().await;
        if request.event == "connection.disconnected" {
            break request;
        }
    };
    assert!(disconnected.verifies());
    let body = disconnected.json();
    assert_eq!(
        (
            body["user"].as_str(),
            body["edge"].as_str(),
            body["conn_id"].as_str()
        ),
        (Some("alice"), Some("edge-7"), Some(conn.as_str()))
    );
    assert_ne!(disconnected.key, connected.key);

    drop(server);
}
