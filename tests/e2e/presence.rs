//! Presence, typing and call signalling through real edges: status and
//! subscriptions, room-wide presence, the grace period across a rolling
//! restart, an edge process killed outright, typing, calls, the Watch API
//! for backends, and bad input.

use std::time::{Duration, Instant};

use proto::presence::v1::watch_event::Kind;
use proto::presence::v1::{WatchEvent, WatchRequest};
use serde_json::{Value, json};

use crate::helpers::{Client, TestApp, spawn_app_with};

/// Short timings so tests do not wait long for grace periods.
const GRACE_MS: u64 = 300;

async fn spawn_presence_app(adjust: impl FnOnce(&mut common::config::Config)) -> TestApp {
    spawn_app_with(|c| {
        c.presence.grace_ms = GRACE_MS;
        c.presence.sweep_ms = 50;
        adjust(c);
    })
    .await
}

/// The next `presence` event about `user`.
async fn presence_of(client: &mut Client, user: &str) -> Value {
    loop {
        let event = client.event("presence").await;
        if event["user"] == user {
            return event;
        }
    }
}

/// Frames before the next `kind` frame (which is consumed).
async fn frames_until(client: &mut Client, kind: &str) -> Vec<Value> {
    let mut before = Vec::new();
    loop {
        let frame = client.next_frame().await.expect("connection open");
        if frame["type"] == kind {
            return before;
        }
        before.push(frame);
    }
}

fn types(frames: &[Value]) -> Vec<&str> {
    frames.iter().filter_map(|f| f["type"].as_str()).collect()
}

#[tokio::test]
async fn status_reaches_subscribers_and_invisible_looks_offline() {
    let app = spawn_presence_app(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    bob.share_room_with(&mut [&mut alice]).await;
    bob.direct_room("nobody").await;
    let reply = bob
        .ok("presence.subscribe", json!({"users": ["alice", "nobody"]}))
        .await;
    assert_eq!(
        reply["presence"],
        json!([
            {"user": "alice", "status": "online", "text": "", "last_seen": 0},
            {"user": "nobody", "status": "offline", "text": "", "last_seen": 0},
        ])
    );

    alice
        .ok("presence.set", json!({"status": "away", "text": "lunch"}))
        .await;
    let event = presence_of(&mut bob, "alice").await;
    assert_eq!(
        (event["status"].as_str(), event["text"].as_str()),
        (Some("away"), Some("lunch"))
    );

    alice
        .ok(
            "presence.set",
            json!({"status": "invisible", "text": "hidden"}),
        )
        .await;
    let event = presence_of(&mut bob, "alice").await;
    assert_eq!(
        (event["status"].as_str(), event["text"].as_str()),
        (Some("offline"), Some(""))
    );
    let reply = bob
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    assert_eq!(
        reply["presence"][0]["status"], "offline",
        "invisible looks offline"
    );

    // Unsubscribed: alice's next change does not reach bob.
    bob.ok(
        "presence.unsubscribe",
        json!({"users": ["alice", "nobody"]}),
    )
    .await;
    alice.ok("presence.set", json!({"status": "busy"})).await;
    let ping = bob.ok("ping", json!({})).await;
    assert!(ping["server_time"].is_i64());
    assert!(
        !types(&bob.take_pending()).contains(&"presence"),
        "no events after unsubscribe"
    );
}

#[tokio::test]
async fn room_join_lists_who_is_online_and_members_presence_follows() {
    let mut app = spawn_presence_app(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("lobby").await;
    alice.ok("room.join", json!({"room": room})).await;
    let mut bob = app.user("bob", "Bob").await;
    let reply = bob.ok("room.join", json!({"room": room})).await;
    let mut online: Vec<&str> = reply["online"]
        .as_array()
        .expect("online")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    online.sort();
    assert_eq!(online, ["alice", "bob"]);

    // Without subscribing, bob hears about alice: they share a small room.
    alice.ok("presence.set", json!({"status": "busy"})).await;
    assert_eq!(presence_of(&mut bob, "alice").await["status"], "busy");

    // Alice leaves for good: offline, but only after the grace period.
    let closed = Instant::now();
    drop(alice);
    let event = presence_of(&mut bob, "alice").await;
    assert_eq!(event["status"], "offline");
    assert!(event["last_seen"].as_i64().unwrap_or_default() > 0);
    assert!(
        closed.elapsed() >= Duration::from_millis(GRACE_MS),
        "not announced within the grace period"
    );
    app.shutdown().await;
}

/// presence-service's `GetPresence` calls so far (one process: the edge's
/// `/metrics` holds every component's).
async fn lookups(app: &TestApp) -> f64 {
    common::metrics::find_sample(
        &app.scrape().await,
        "grpc_server_started_total",
        &[("grpc_method", "GetPresence")],
    )
    .unwrap_or(0.0)
}

/// `online[]` of a join, sorted.
async fn online_on_join(client: &mut Client, room: &str) -> Vec<String> {
    let reply = client.ok("room.join", json!({"room": room})).await;
    let mut online: Vec<String> = reply["online"]
        .as_array()
        .expect("online")
        .iter()
        .filter_map(|u| u.as_str().map(String::from))
        .collect();
    online.sort();
    online
}

#[tokio::test]
async fn joins_of_a_room_the_edge_follows_answer_online_without_a_lookup() {
    let app = spawn_presence_app(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("lobby").await;
    alice.ok("room.join", json!({"room": room})).await;
    let mut bob = app.user("bob", "Bob").await;
    assert_eq!(online_on_join(&mut bob, &room).await, ["alice", "bob"]);

    // The edge asks about members it has not heard of yet (bob, once the
    // log made him a member); after that, joins ask no one.
    let mut settled = false;
    for _ in 0..20 {
        let before = lookups(&app).await;
        assert_eq!(online_on_join(&mut alice, &room).await, ["alice", "bob"]);
        if lookups(&app).await == before {
            settled = true;
            break;
        }
    }
    assert!(settled, "every join looked presence up");
    let before = lookups(&app).await;
    for _ in 0..5 {
        assert_eq!(online_on_join(&mut alice, &room).await, ["alice", "bob"]);
    }
    assert_eq!(lookups(&app).await, before, "no lookup per join");

    // What the edge knows follows presence events.
    bob.ok("presence.set", json!({"status": "invisible"})).await;
    assert_eq!(presence_of(&mut alice, "bob").await["status"], "offline");
    assert_eq!(online_on_join(&mut alice, &room).await, ["alice"]);
    bob.ok("presence.set", json!({"status": "busy"})).await;
    assert_eq!(presence_of(&mut alice, "bob").await["status"], "busy");
    assert_eq!(online_on_join(&mut alice, &room).await, ["alice", "bob"]);
    assert_eq!(lookups(&app).await, before, "still none");
}

/// A room too big for room-wide presence: chat-service reads its members
/// and asks presence for each join, but joins arriving together share one
/// read and lookup — and each still lists everyone online, itself too.
#[tokio::test]
async fn joins_of_a_big_room_arriving_together_share_one_lookup() {
    const USERS: usize = 30;
    let mut app = spawn_presence_app(|c| c.edge.room_presence_max_members = 1).await;
    let mut owner = app.user("owner", "Owner").await;
    let room = owner.public_room("big").await;
    let mut clients = Vec::new();
    let mut everyone = vec!["owner".to_string()];
    for n in 0..USERS {
        let user = format!("user{n:02}");
        let mut client = app.user(&user, &user).await;
        client.ok("room.join", json!({"room": room})).await;
        everyone.push(user);
        clients.push(client);
    }
    everyone.sort();

    let before = lookups(&app).await;
    let joins = clients
        .iter_mut()
        .map(|client| online_on_join(client, &room));
    let answers = futures::future::join_all(joins).await;
    let made = lookups(&app).await - before;
    for online in answers {
        assert_eq!(online, everyone);
    }
    assert!(
        made < USERS as f64,
        "{made} lookups for {USERS} joins arriving together"
    );
    app.shutdown().await;
}

#[tokio::test]
async fn room_wide_presence_stops_above_the_configured_room_size() {
    let app = spawn_presence_app(|c| c.edge.room_presence_max_members = 1).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("big").await;
    alice.ok("room.join", json!({"room": room})).await;
    let mut bob = app.user("bob", "Bob").await;
    bob.ok("room.join", json!({"room": room})).await;
    alice.ok("presence.set", json!({"status": "away"})).await;
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "marker", "client_msg_id": "m1"}),
        )
        .await;
    let before = frames_until(&mut bob, "message.new").await;
    assert!(
        !types(&before).contains(&"presence"),
        "two members is over the cap of one: {before:?}"
    );
}

#[tokio::test]
async fn a_reconnect_to_another_edge_within_grace_does_not_flap() {
    let app = spawn_presence_app(|c| {
        c.presence.grace_ms = 1_000;
    })
    .await;
    let second = app.second_edge().await;
    let mut carol = app.user("carol", "Carol").await;
    let mut alice = app.user_at(&second, "alice").await.expect("second edge");
    carol.share_room_with(&mut [&mut alice]).await;
    carol
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    let mut watch = app
        .presence_client()
        .watch(WatchRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .expect("watch")
        .into_inner();

    // Rolling restart: the second edge drains, alice reconnects to the first.
    app.stop_second_edges();
    assert_eq!(alice.close_code().await, Some(1001));
    let mut alice = app.user("alice", "Alice").await;
    let kinds = [
        next_watch(&mut watch).await.kind(),
        next_watch(&mut watch).await.kind(),
    ];
    assert_eq!(kinds, [Kind::Disconnected, Kind::Connected]);

    // Past the grace period (a real wait: proving that nothing happens).
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    alice.ok("presence.set", json!({"status": "away"})).await;
    let event = presence_of(&mut carol, "alice").await;
    assert_eq!(event["status"], "away", "no offline/online pair came first");
    assert_eq!(
        next_watch(&mut watch).await.kind(),
        Kind::StatusChanged,
        "no went-offline in the watch stream either"
    );
}

async fn next_watch(stream: &mut tonic::Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(15), stream.message())
        .await
        .expect("a watch event in time")
        .expect("watch stream ok")
        .expect("watch stream open")
}

#[tokio::test]
async fn backends_watch_connects_disconnects_and_going_offline() {
    let app = spawn_presence_app(|_| {}).await;
    let mut watch = app
        .presence_client()
        .watch(WatchRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .expect("watch")
        .into_inner();
    let mut everyone = app
        .presence_client()
        .watch(WatchRequest { user_ids: vec![] })
        .await
        .expect("watch")
        .into_inner();
    let _bob = app.user("bob", "Bob").await;
    let mut alice = app.user("alice", "Alice").await;
    alice
        .ok("presence.set", json!({"status": "busy", "text": "focus"}))
        .await;
    drop(alice);
    let mut kinds = Vec::new();
    loop {
        let event = next_watch(&mut watch).await;
        assert_eq!(event.user_id, "alice");
        kinds.push(event.kind());
        if event.kind() == Kind::StatusChanged {
            assert_eq!(
                (event.status.as_str(), event.text.as_str()),
                ("busy", "focus")
            );
        }
        if event.kind() == Kind::WentOffline {
            break;
        }
    }
    assert_eq!(
        kinds,
        [
            Kind::Connected,
            Kind::CameOnline,
            Kind::StatusChanged,
            Kind::Disconnected,
            Kind::WentOffline
        ]
    );
    let first = next_watch(&mut everyone).await;
    assert_eq!(
        (first.kind(), first.user_id.as_str()),
        (Kind::Connected, "bob")
    );
}

#[tokio::test]
async fn typing_reaches_the_other_members_and_stops_when_the_typist_leaves() {
    let app = spawn_presence_app(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("typing").await;
    alice.ok("room.join", json!({"room": room})).await;
    let mut alice_phone = app.user("alice", "Alice").await;
    alice_phone.ok("room.join", json!({"room": room})).await;
    let mut bob = app.user("bob", "Bob").await;
    bob.ok("room.join", json!({"room": room})).await;

    let error = bob
        .err("typing.start", json!({"room": "r_elsewhere"}), "forbidden")
        .await;
    assert!(error["message"].as_str().is_some());

    alice.ok("typing.start", json!({"room": room})).await;
    let event = bob.event("typing").await;
    assert_eq!(
        event,
        json!({"type": "typing", "room": room, "user": "alice", "typing": true})
    );
    alice.ok("typing.stop", json!({"room": room})).await;
    assert_eq!(bob.event("typing").await["typing"], false);

    alice.ok("typing.start", json!({"room": room})).await;
    assert_eq!(bob.event("typing").await["typing"], true);
    drop(alice);
    assert_eq!(
        bob.event("typing").await["typing"],
        false,
        "closing the connection stops it"
    );

    bob.ok(
        "message.send",
        json!({"room": room, "text": "marker", "client_msg_id": "m1"}),
    )
    .await;
    let before = frames_until(&mut alice_phone, "message.new").await;
    assert!(
        !types(&before).contains(&"typing"),
        "the typist's own devices do not get it: {before:?}"
    );
}

#[tokio::test]
async fn typing_stops_by_itself_without_renewal() {
    let app = spawn_presence_app(|c| c.edge.typing_timeout_ms = 300).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("typing").await;
    alice.ok("room.join", json!({"room": room})).await;
    let mut bob = app.user("bob", "Bob").await;
    bob.ok("room.join", json!({"room": room})).await;
    let started = Instant::now();
    alice.ok("typing.start", json!({"room": room})).await;
    assert_eq!(bob.event("typing").await["typing"], true);
    assert_eq!(bob.event("typing").await["typing"], false);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn a_call_is_relayed_between_its_two_parties_on_any_edge() {
    let app = spawn_presence_app(|_| {}).await;
    let second = app.second_edge().await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user_at(&second, "bob").await.expect("second edge");
    let mut mallory = app.user("mallory", "Mallory").await;

    let room = alice.share_room_with(&mut [&mut bob]).await;
    let offer = json!({"sdp": "v=0 offer", "nested": [1, 2, {"x": null}]});
    let reply = alice
        .ok(
            "call.invite",
            json!({"to": "bob", "room": room, "payload": offer}),
        )
        .await;
    let call_id = reply["call_id"].as_str().expect("call_id").to_string();
    let incoming = bob.event("call.incoming").await;
    assert_eq!(incoming["call_id"], call_id.as_str());
    assert_eq!(incoming["from"], json!({"id": "alice", "name": "Alice"}));
    assert_eq!(incoming["room"], room.as_str());
    assert_eq!(incoming["payload"], offer, "opaque payload relayed as is");

    mallory
        .err("call.answer", json!({"call_id": call_id}), "not_found")
        .await;
    mallory
        .err("call.end", json!({"call_id": call_id}), "not_found")
        .await;
    bob.err("call.answer", json!({"call_id": "call_nope"}), "not_found")
        .await;

    bob.ok(
        "call.answer",
        json!({"call_id": call_id, "payload": {"sdp": "answer"}}),
    )
    .await;
    let answer = alice.event("call.answer").await;
    assert_eq!(answer["payload"]["sdp"], "answer");
    assert_eq!(answer["from"]["id"], "bob");
    alice
        .ok(
            "call.ice",
            json!({"call_id": call_id, "payload": {"candidate": "c1"}}),
        )
        .await;
    assert_eq!(bob.event("call.ice").await["payload"]["candidate"], "c1");
    bob.ok("call.end", json!({"call_id": call_id})).await;
    assert_eq!(alice.event("call.end").await["call_id"], call_id.as_str());
    alice
        .err("call.ice", json!({"call_id": call_id}), "not_found")
        .await;

    // Nothing reached the bystander, nor the sender's own connection.
    mallory.ok("ping", json!({})).await;
    assert!(
        !types(&mallory.take_pending())
            .iter()
            .any(|t| t.starts_with("call.")),
        "relayed to the other party only"
    );
    let big = "x".repeat(16 * 1024);
    alice
        .err(
            "call.invite",
            json!({"to": "bob", "payload": big}),
            "too_large",
        )
        .await;
    alice
        .err(
            "call.invite",
            json!({"to": "alice", "payload": {}}),
            "bad_request",
        )
        .await;
    alice.ok("ping", json!({})).await;
    assert!(
        !types(&alice.take_pending()).contains(&"call.ice"),
        "own actions are not echoed"
    );
}

#[tokio::test]
async fn an_unanswered_call_ends_and_leaves_a_missed_call_notification() {
    let app = spawn_presence_app(|c| c.presence.call_ring_ms = 300).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    alice.share_room_with(&mut [&mut bob]).await;
    let reply = alice
        .ok(
            "call.invite",
            json!({"to": "bob", "payload": {"sdp": "offer"}}),
        )
        .await;
    let call_id = reply["call_id"].as_str().expect("call_id").to_string();
    bob.event("call.incoming").await;

    let ended = bob.event("call.end").await;
    assert_eq!(
        (ended["call_id"].as_str(), ended["reason"].as_str()),
        (Some(call_id.as_str()), Some("missed"))
    );
    let ended = alice.event("call.end").await;
    assert_eq!(ended["reason"], "missed");
    let notification = bob.event("notification.new").await["notification"].clone();
    assert_eq!(notification["kind"], "missed_call");
    assert_eq!(notification["call_id"], call_id.as_str());
    assert_eq!(notification["from"]["id"], "alice");
    bob.err("call.answer", json!({"call_id": call_id}), "not_found")
        .await;

    let listed = bob.ok("notification.list", json!({})).await;
    let kinds: Vec<&str> = listed["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["kind"].as_str())
        .collect();
    assert_eq!(kinds, ["missed_call"]);
}

#[tokio::test]
async fn bad_presence_input_is_refused_without_closing_the_connection() {
    let app = spawn_presence_app(|c| c.edge.presence_subscribe_max = 3).await;
    let mut alice = app.user("alice", "Alice").await;
    alice
        .err("presence.set", json!({"status": "sleeping"}), "bad_request")
        .await;
    alice.err("presence.set", json!({}), "bad_request").await;
    alice
        .err(
            "presence.set",
            json!({"status": "away", "text": "x".repeat(101)}),
            "too_large",
        )
        .await;
    alice
        .ok(
            "presence.set",
            json!({"status": "away", "text": "é".repeat(100)}),
        )
        .await;
    alice
        .err("presence.subscribe", json!({"users": "bob"}), "bad_request")
        .await;
    alice
        .err(
            "presence.subscribe",
            json!({"users": ["a", "b", "c", "d"]}),
            "too_large",
        )
        .await;
    for other in ["a", "b", "c"] {
        alice.direct_room(other).await;
    }
    alice
        .ok("presence.subscribe", json!({"users": ["a", "b"]}))
        .await;
    alice
        .err(
            "presence.subscribe",
            json!({"users": ["c", "d"]}),
            "too_large",
        )
        .await;
    alice
        .ok("presence.subscribe", json!({"users": ["a", "b", "c"]}))
        .await;
    alice.err("call.answer", json!({}), "bad_request").await;
    alice
        .err("call.invite", json!({"payload": {}}), "bad_request")
        .await;
    alice.ok("ping", json!({})).await;

    let mut anonymous = app.connect().await;
    anonymous
        .err("presence.set", json!({"status": "away"}), "unauthorized")
        .await;
}

/// Not a test on its own: the edge process the kill test starts (this test
/// binary run again with `PARLEY_TEST_EDGE_PROCESS` set). It prints its
/// WebSocket address and serves until it is killed.
#[tokio::test]
async fn edge_process_for_the_kill_test() {
    if std::env::var_os("PARLEY_TEST_EDGE_PROCESS").is_none() {
        return;
    }
    let config = common::config::Config::load(None, std::env::vars()).expect("child config");
    let settings = common::grpc::ClientSettings {
        credential: config.services.credential.clone(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    };
    let channel = |url: &str| common::grpc::channel(url, &settings).expect("channel");
    let s = &config.services;
    let backends = edge::Backends {
        auth: proto::auth::v1::auth_service_client::AuthServiceClient::new(channel(&s.auth_url)),
        chat: proto::chat::v1::chat_service_client::ChatServiceClient::new(channel(&s.chat_url)),
        chat_backend: proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient::new(
            channel(&s.chat_url),
        ),
        ai: proto::ai::v1::ai_service_client::AiServiceClient::new(channel(&s.ai_url)),
        presence: proto::presence::v1::presence_service_client::PresenceServiceClient::new(
            channel(&s.presence_url),
        ),
    };
    let bus = common::bus::connect(&config.bus, &common::metrics::Metrics::new(&["edge"]))
        .await
        .expect("bus");
    let edge = edge::EdgeApp::new(
        &config.edge,
        backends,
        bus,
        false,
        common::shutdown::ShutdownSignal::never(),
        &common::metrics::Metrics::new(&["edge"]),
    )
    .await
    .expect("edge");
    let listener = tokio::net::TcpListener::bind(config.edge.listen)
        .await
        .expect("bind");
    println!("EDGE_URL=ws://{}/ws", listener.local_addr().expect("addr"));
    edge.run_until_stopped(listener).await.expect("serve");
}

#[tokio::test]
async fn users_of_a_killed_edge_process_go_offline_within_the_ttl() {
    use std::io::{BufRead, BufReader};
    use std::process::{Command, Stdio};

    if common::testing::test_redis_url().is_none() {
        eprintln!("note: PARLEY_TEST_REDIS_URL is not set; the kill test needs a shared Redis");
        return;
    }
    const TTL_MS: u64 = 1_500;
    let app = spawn_presence_app(|c| {
        c.presence.lease_ttl_ms = TTL_MS;
        c.edge.presence_renew_ms = 500;
    })
    .await;
    /// Kills the edge process however the test ends.
    struct Killed(std::process::Child);
    impl Drop for Killed {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            "presence::edge_process_for_the_kill_test",
            "--exact",
            "--nocapture",
            "--test-threads=1",
        ])
        .env("PARLEY_TEST_EDGE_PROCESS", "1")
        .envs(app.edge_process_env())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start the edge process");
    let stdout = child.stdout.take().expect("stdout");
    let mut child = Killed(child);
    let url = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            // libtest may have written `test … ... ` on the same line.
            .find_map(|line| {
                line.split_once("EDGE_URL=")
                    .map(|(_, url)| url.trim().to_string())
            })
    })
    .await
    .expect("reader")
    .expect("the edge process prints its address");

    let mut carol = app.user("carol", "Carol").await;
    carol.direct_room("alice").await;
    carol
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    let alice = app.user_at(&url, "alice").await.expect("edge process");
    assert_eq!(presence_of(&mut carol, "alice").await["status"], "online");
    // Renewals keep alice online past the TTL while the process lives.
    tokio::time::sleep(Duration::from_millis(TTL_MS + 500)).await;
    let reply = carol
        .ok("presence.subscribe", json!({"users": ["alice"]}))
        .await;
    assert_eq!(reply["presence"][0]["status"], "online", "renewed");

    child.0.kill().expect("kill -9 the edge");
    let killed = Instant::now();
    let _ = child.0.wait();
    let event = presence_of(&mut carol, "alice").await;
    assert_eq!(event["status"], "offline");
    let took = killed.elapsed();
    assert!(
        took <= Duration::from_millis(TTL_MS + GRACE_MS + 1_000),
        "offline within the TTL plus grace, took {took:?}"
    );
    drop(alice);
}

#[tokio::test]
async fn room_wide_presence_follows_members_who_join_or_leave_later() {
    let app = spawn_presence_app(|c| c.edge.room_presence_max_members = 3).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("growing").await;
    alice.ok("room.join", json!({"room": room})).await;

    // Bob joins after alice: alice follows him from his member.joined on.
    let mut bob = app.user("bob", "Bob").await;
    bob.ok("room.join", json!({"room": room})).await;
    assert_eq!(alice.event("member.joined").await["user"]["id"], "bob");
    alice.ok("ping", json!({})).await;
    bob.ok("presence.set", json!({"status": "busy"})).await;
    assert_eq!(presence_of(&mut alice, "bob").await["status"], "busy");

    // Bob leaves the room for good: alice stops following him.
    bob.ok("room.leave", json!({"room": room, "forget": true}))
        .await;
    assert_eq!(alice.event("member.left").await["user"]["id"], "bob");
    alice.ok("ping", json!({})).await;
    bob.ok("presence.set", json!({"status": "away"})).await;
    let carol_joins = {
        let mut carol = app.user("carol", "Carol").await;
        carol.ok("room.join", json!({"room": room})).await;
        carol
    };
    let before = frames_until(&mut alice, "member.joined").await;
    assert!(
        !types(&before).contains(&"presence"),
        "bob left the room, his presence no longer reaches alice: {before:?}"
    );

    // Carol is followed; when dave's arrival takes the room past three
    // members, room-wide presence ends for it.
    let mut carol = carol_joins;
    alice.ok("ping", json!({})).await;
    carol.ok("presence.set", json!({"status": "busy"})).await;
    assert_eq!(presence_of(&mut alice, "carol").await["status"], "busy");
    let mut dave = app.user("dave", "Dave").await;
    dave.ok("room.join", json!({"room": room})).await;
    let mut eve = app.user("eve", "Eve").await;
    eve.ok("room.join", json!({"room": room})).await;
    assert_eq!(alice.event("member.joined").await["user"]["id"], "dave");
    assert_eq!(alice.event("member.joined").await["user"]["id"], "eve");
    alice.ok("ping", json!({})).await;
    carol.ok("presence.set", json!({"status": "away"})).await;
    dave.ok(
        "message.send",
        json!({"room": room, "text": "marker", "client_msg_id": "m1"}),
    )
    .await;
    let before = frames_until(&mut alice, "message.new").await;
    assert!(
        !types(&before).contains(&"presence"),
        "the room outgrew the cap: {before:?}"
    );
}
