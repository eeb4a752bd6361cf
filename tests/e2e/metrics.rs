//! `/metrics`: the counters of the one-process suite move by exactly what a
//! workload did, and every split binary's metrics listener serves its
//! component's families.

use common::metrics::{Metrics, find_sample};
use serde_json::json;

use crate::helpers::{http_get, spawn_app_with};

/// A sample's value, 0 when it was never recorded.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    find_sample(text, name, labels).unwrap_or(0.0)
}

#[tokio::test]
async fn counters_move_by_exactly_what_the_workload_did() {
    // No room-wide presence: nothing but the workload is delivered.
    let app = spawn_app_with(|c| c.edge.room_presence_max_members = 0).await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = alice.public_room("metrics").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;
    alice.event("member.joined").await;

    let before = app.scrape().await;
    assert_eq!(value(&before, "parley_edge_connections", &[]), 2.0);
    assert_eq!(
        value(&before, "parley_edge_connections_accepted_total", &[]),
        2.0
    );
    assert_eq!(
        value(
            &before,
            "parley_edge_commands_total",
            &[("command", "auth"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(
        value(
            &before,
            "parley_edge_commands_total",
            &[("command", "room.join"), ("outcome", "ok")]
        ),
        2.0
    );
    assert_eq!(value(&before, "parley_edge_room_subscriptions", &[]), 1.0);

    const MESSAGES: usize = 5;
    for i in 0..MESSAGES {
        alice
            .ok(
                "message.send",
                json!({"room": room, "text": format!("m{i}"), "client_msg_id": format!("m{i}")}),
            )
            .await;
    }
    for _ in 0..MESSAGES {
        alice.event("message.new").await;
        bob.event("message.new").await;
    }
    alice
        .send_text(r#"{"type":"no.such.command","id":99}"#)
        .await;
    alice
        .err(
            "message.send",
            json!({"room": "r_missing", "text": "x", "client_msg_id": "x"}),
            "not_found",
        )
        .await;

    let after = app.scrape().await;
    let moved = |name: &str, labels: &[(&str, &str)]| {
        value(&after, name, labels) - value(&before, name, labels)
    };
    let n = MESSAGES as f64;
    assert_eq!(
        moved(
            "parley_edge_commands_total",
            &[("command", "message.send"), ("outcome", "ok")]
        ),
        n,
        "{after}"
    );
    assert_eq!(
        moved(
            "parley_edge_commands_total",
            &[("command", "message.send"), ("outcome", "not_found")]
        ),
        1.0
    );
    assert_eq!(
        moved(
            "parley_edge_commands_total",
            &[("command", "unknown"), ("outcome", "bad_request")]
        ),
        1.0,
        "an unknown type is counted under one bounded label"
    );
    assert!(!after.contains("no.such.command"), "labels stay bounded");
    assert_eq!(
        moved(
            "parley_edge_command_duration_seconds_count",
            &[("command", "message.send")]
        ),
        n + 1.0
    );
    assert_eq!(
        moved("parley_edge_frames_received_total", &[]),
        n + 2.0,
        "every frame alice sent"
    );
    assert_eq!(
        moved("parley_edge_deliveries_total", &[]),
        2.0 * n,
        "each message to both members"
    );
    assert_eq!(
        moved(
            "parley_chat_events_appended_total",
            &[("kind", "message.new")]
        ),
        n
    );
    assert!(moved("parley_edge_frames_sent_total", &[]) >= 3.0 * n);
    assert!(moved("parley_edge_bytes_sent_total", &[]) > 0.0);
    // gRPC calls are counted on both sides; sends travel on the edge's one
    // `SendMessages` stream and are counted per item by chat-service.
    for side in ["grpc_server_handled_total", "grpc_client_handled_total"] {
        let joins = value(
            &after,
            side,
            &[
                ("grpc_service", "parley.chat.v1.ChatService"),
                ("grpc_method", "JoinRoom"),
                ("grpc_code", "OK"),
            ],
        );
        assert!(joins >= 2.0, "{side}: {after}");
    }
    assert_eq!(
        moved("parley_chat_stream_sends_total", &[("code", "ok")]),
        n,
        "{after}"
    );
    assert_eq!(
        moved(
            "grpc_client_started_total",
            &[
                ("grpc_service", "parley.chat.v1.ChatService"),
                ("grpc_method", "SendMessage"),
            ]
        ),
        0.0,
        "no send takes a unary call of its own"
    );
    assert!(value(&after, "process_resident_memory_bytes", &[]) > 0.0);
    // HTTP routes are counted by their pattern: two upgrades, and the
    // scrape before this one.
    assert_eq!(
        value(
            &after,
            "parley_http_requests_total",
            &[("route", "/ws"), ("code", "101")]
        ),
        2.0,
        "{after}"
    );
    assert!(
        value(
            &after,
            "parley_http_requests_total",
            &[("route", "/metrics"), ("code", "200")]
        ) >= 1.0
    );

    bob.close_normally().await;
    let closed = app
        .scrape_until(|text| value(text, "parley_edge_connections", &[]) == 1.0)
        .await;
    assert_eq!(value(&closed, "parley_edge_connections", &[]), 1.0);
    assert_eq!(
        value(
            &closed,
            "parley_edge_disconnects_total",
            &[("code", "1000")]
        ),
        1.0,
        "{closed}"
    );
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn each_split_binary_serves_its_components_metrics() {
    for component in ["edge", "auth", "chat", "ai", "presence"] {
        let metrics = Metrics::new(&[component]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = common::shutdown::Shutdown::new();
        tokio::spawn(common::metrics::serve(metrics, listener, stop.signal()));
        let (status, text) = http_get(addr, "/metrics", &[]).await;
        assert_eq!(status, 200);
        assert!(
            text.contains(&format!("parley_{component}_")),
            "{component}: {text}"
        );
        assert!(text.contains("process_open_fds"), "{component}");
        for other in ["edge", "auth", "chat", "ai", "presence"] {
            if other != component {
                assert!(
                    !text.contains(&format!("parley_{other}_")),
                    "{component} exports {other}'s metrics"
                );
            }
        }
        stop.trigger();
    }
}
