//! Pipelining: a connection sends many commands without waiting; replies
//! come back by `id`, and its commands on one room are applied in the order
//! it sent them.

use serde_json::json;

use crate::helpers::{assert_no_task_panicked, spawn_app, spawn_app_with};

const SENDS: u64 = 1_000;
/// Command ids of the pipelined sends: clear of the helper's own.
const FIRST_ID: u64 = 1_000_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_pipelined_sends_are_stored_in_order_and_acknowledged_once() {
    let app = spawn_app().await;
    let mut alice = app.user("alice", "alice").await;
    let room = alice.public_room("pipelined").await;

    // Every send goes out before any reply is read.
    for i in 0..SENDS {
        let frame = json!({
            "type": "message.send",
            "id": FIRST_ID + i,
            "room": room,
            "text": format!("m{i}"),
            "client_msg_id": format!("c{i}"),
        });
        alice.send_text(frame.to_string()).await;
    }
    let mut seqs: Vec<Option<i64>> = vec![None; SENDS as usize];
    let mut answered = 0;
    while answered < SENDS {
        let frame = alice.next_frame().await.expect("connection open");
        if frame["type"] != "reply" {
            continue;
        }
        let i = frame["id"].as_u64().expect("id") - FIRST_ID;
        assert_eq!(frame["ok"], true, "send {i}: {frame}");
        let seq = frame["message"]["seq"].as_i64().expect("seq");
        let slot = &mut seqs[i as usize];
        assert!(slot.is_none(), "send {i} acknowledged twice");
        *slot = Some(seq);
        answered += 1;
    }
    // No reply comes twice: the next command's reply is the next reply.
    let pong = alice.request("ping", json!({})).await;
    assert_eq!(pong["ok"], true);
    assert!(
        alice.take_pending().iter().all(|f| f["type"] != "reply"),
        "a send was acknowledged again"
    );

    // Stored in the order sent: seqs follow the sends, one apart (only
    // this connection writes to the room meanwhile).
    let seqs: Vec<i64> = seqs.into_iter().map(|s| s.expect("answered")).collect();
    let first = seqs[0];
    assert_eq!(seqs, (first..first + SENDS as i64).collect::<Vec<_>>());
    // And the log holds them in that order.
    let mut texts = Vec::new();
    let mut after = first - 1;
    loop {
        let page = alice
            .ok(
                "message.history",
                json!({"room": room, "after": after, "limit": 100}),
            )
            .await;
        for message in page["messages"].as_array().expect("messages") {
            texts.push(message["text"].as_str().expect("text").to_string());
            after = message["seq"].as_i64().expect("seq");
        }
        if page["has_more"] != true {
            break;
        }
    }
    let sent: Vec<String> = (0..SENDS).map(|i| format!("m{i}")).collect();
    assert_eq!(texts, sent, "every message stored once, in the order sent");
    assert_no_task_panicked();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_edge_answers_the_commands_in_flight_before_it_closes() {
    const IN_FLIGHT: u64 = 20;
    // Closes as soon as the drain starts: sooner than the sends can finish.
    let mut app = spawn_app_with(|c| c.edge.drain_ms = 0).await;
    let mut alice = app.user("alice", "alice").await;
    let room = alice.public_room("drained").await;
    let other = alice.public_room("marker").await;
    for i in 0..IN_FLIGHT {
        let frame = json!({
            "type": "message.send",
            "id": FIRST_ID + i,
            "room": room,
            "text": format!("m{i}"),
            "client_msg_id": format!("c{i}"),
        });
        alice.send_text(frame.to_string()).await;
    }
    // A send to another room runs in its own lane: once it is answered, the
    // edge has read every frame before it, and most of the first room's
    // lane is still waiting its turn when the edge starts draining.
    let marker = FIRST_ID + 1_000;
    let frame = json!({
        "type": "message.send",
        "id": marker,
        "room": other,
        "text": "marker",
        "client_msg_id": "marker",
    });
    alice.send_text(frame.to_string()).await;
    let mut answered = std::collections::BTreeSet::new();
    loop {
        let frame = alice.next_frame().await.expect("connection open");
        if frame["type"] != "reply" {
            continue;
        }
        let id = frame["id"].as_u64().expect("id");
        if id == marker {
            break;
        }
        answered.insert(id - FIRST_ID);
    }
    let read = async {
        let code = loop {
            match alice.next_frame_or_close().await {
                Ok(frame) if frame["type"] == "reply" => {
                    // Stored, or refused as temporary by a stopping chat-service.
                    assert!(
                        frame["ok"] == true || frame["error"]["temporary"] == true,
                        "{frame}"
                    );
                    answered.insert(frame["id"].as_u64().expect("id") - FIRST_ID);
                }
                Ok(_) => {}
                Err(code) => break code,
            }
        };
        (answered, code)
    };
    let ((answered, code), ()) = tokio::join!(read, app.shutdown());
    assert_eq!(code, Some(1001));
    assert_eq!(
        answered,
        (0..IN_FLIGHT).collect(),
        "every command in flight answered before the close"
    );
}
