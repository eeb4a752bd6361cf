//! Rooms and messages through the edge: ordering, idempotency, history,
//! privacy.

use serde_json::{Value, json};

use crate::helpers::{Client, spawn_app};

/// Reads `count` message.new events and returns their seqs.
async fn message_seqs(client: &mut Client, count: usize) -> Vec<(i64, String)> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        let event = client.event("message.new").await;
        seen.push((
            event["seq"].as_i64().expect("seq"),
            event["message"]["id"].as_str().expect("id").to_string(),
        ));
    }
    seen
}

#[tokio::test]
async fn two_clients_exchange_100_messages_in_order() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = alice.public_room("general").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;

    for i in 0..50 {
        alice.send_text(json!({"type": "message.send", "room": room, "text": format!("a{i}"), "client_msg_id": format!("a{i}")}).to_string()).await;
        bob.send_text(json!({"type": "message.send", "room": room, "text": format!("b{i}"), "client_msg_id": format!("b{i}")}).to_string()).await;
    }
    let at_alice = message_seqs(&mut alice, 100).await;
    let at_bob = message_seqs(&mut bob, 100).await;
    assert_eq!(
        at_alice, at_bob,
        "both clients see the same messages in the same order"
    );
    for pair in at_alice.windows(2) {
        assert_eq!(pair[1].0, pair[0].0 + 1, "seqs are consecutive: {:?}", pair);
    }
    let history = alice
        .ok("message.history", json!({"room": room, "limit": 100}))
        .await;
    let stored: Vec<(i64, String)> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| {
            (
                m["seq"].as_i64().expect("seq"),
                m["id"].as_str().expect("id").to_string(),
            )
        })
        .collect();
    assert_eq!(
        stored, at_alice,
        "delivered sequence equals the stored sequence"
    );
}

#[tokio::test]
async fn a_retried_send_stores_one_message() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let room = alice.public_room("retries").await;
    alice.ok("room.join", json!({"room": room})).await;
    let send = json!({"room": room, "text": "hello once", "client_msg_id": "retry-1"});
    let first = alice.ok("message.send", send.clone()).await;
    let second = alice.ok("message.send", send).await;
    assert_eq!(first["message"]["id"], second["message"]["id"]);
    assert_eq!(first["message"]["seq"], second["message"]["seq"]);
    let history = alice.ok("message.history", json!({"room": room})).await;
    assert_eq!(history["messages"].as_array().expect("messages").len(), 1);
    // Exactly one message.new went out: the next event after it is the marker.
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "marker", "client_msg_id": "marker"}),
        )
        .await;
    let a = alice.event("message.new").await;
    let b = alice.event("message.new").await;
    assert_eq!(a["message"]["text"], "hello once");
    assert_eq!(b["message"]["text"], "marker");
}

#[tokio::test]
async fn history_pages_by_seq() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let room = alice.public_room("pages").await;
    for i in 0..25 {
        alice
            .ok(
                "message.send",
                json!({"room": room, "text": format!("m{i}"), "client_msg_id": format!("m{i}")}),
            )
            .await;
    }
    let texts = |reply: &Value| -> Vec<String> {
        reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["text"].as_str().expect("text").to_string())
            .collect()
    };
    let seqs = |reply: &Value| -> Vec<i64> {
        reply["messages"]
            .as_array()
            .expect("messages")
            .iter()
            .map(|m| m["seq"].as_i64().expect("seq"))
            .collect()
    };

    // Forward from the start.
    let mut after = 0;
    let mut forward = Vec::new();
    loop {
        let page = alice
            .ok(
                "message.history",
                json!({"room": room, "after": after, "limit": 10}),
            )
            .await;
        let s = seqs(&page);
        assert!(s.windows(2).all(|w| w[0] < w[1]), "ascending: {s:?}");
        forward.extend(texts(&page));
        if page["has_more"] == false {
            break;
        }
        after = *s.last().expect("non-empty page");
    }
    let expected: Vec<String> = (0..25).map(|i| format!("m{i}")).collect();
    assert_eq!(forward, expected);

    // Backward from the newest.
    let newest = alice
        .ok("message.history", json!({"room": room, "limit": 10}))
        .await;
    assert_eq!(texts(&newest), expected[15..].to_vec());
    assert_eq!(newest["has_more"], true);
    let before = seqs(&newest)[0];
    let older = alice
        .ok(
            "message.history",
            json!({"room": room, "before": before, "limit": 10}),
        )
        .await;
    assert_eq!(texts(&older), expected[5..15].to_vec());
    alice
        .err(
            "message.history",
            json!({"room": room, "limit": 101}),
            "bad_request",
        )
        .await;
}

#[tokio::test]
async fn a_non_member_cannot_read_a_private_room() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut mallory = app.anonymous("mallory").await;
    let reply = alice
        .ok(
            "room.create",
            json!({"name": "secret", "visibility": "private"}),
        )
        .await;
    let room = reply["room"]["id"].as_str().expect("room id").to_string();
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "for members", "client_msg_id": "s1"}),
        )
        .await;

    let missing = mallory
        .err(
            "room.join",
            json!({"room": "r_does_not_exist"}),
            "not_found",
        )
        .await;
    let hidden = mallory
        .err("room.join", json!({"room": room}), "not_found")
        .await;
    assert_eq!(
        missing["message"], hidden["message"],
        "a private room looks like a missing one"
    );
    mallory
        .err("message.history", json!({"room": room}), "not_found")
        .await;
    mallory
        .err(
            "message.send",
            json!({"room": room, "text": "hi", "client_msg_id": "x"}),
            "not_found",
        )
        .await;
    let rooms = mallory.ok("room.list", json!({})).await;
    assert!(
        rooms["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .all(|r| r["id"] != json!(room))
    );
}

#[tokio::test]
async fn join_lists_online_members_and_room_list_counts_unread() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = alice.public_room("lobby").await;
    bob.ok("room.join", json!({"room": room})).await;
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "hi bob", "client_msg_id": "u1"}),
        )
        .await;
    let joined = alice.ok("room.join", json!({"room": room})).await;
    let online: Vec<&str> = joined["online"]
        .as_array()
        .expect("online")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        online.contains(&alice.user_id.as_str()) && online.contains(&bob.user_id.as_str()),
        "{joined}"
    );

    let rooms = bob.ok("room.list", json!({})).await;
    let lobby = rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .find(|r| r["id"] == json!(room))
        .expect("listed");
    assert_eq!(lobby["unread"], 1);
    assert_eq!(lobby["visibility"], "public");

    drop(bob);
    // Bob's lease is released when his connection closes.
    let released = tokio::time::timeout(std::time::Duration::from_secs(15), async {
        loop {
            let again = alice.ok("room.join", json!({"room": room})).await;
            if again["online"] == json!([alice.user_id]) {
                break;
            }
        }
    })
    .await;
    assert!(
        released.is_ok(),
        "bob went offline when his connection closed"
    );
}

#[tokio::test]
async fn join_with_since_replays_the_log() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let room = alice.public_room("replay").await;
    let joined = alice.ok("room.join", json!({"room": room})).await;
    let start = joined["last_seq"].as_i64().expect("last_seq");
    for i in 0..5 {
        alice
            .ok(
                "message.send",
                json!({"room": room, "text": format!("r{i}"), "client_msg_id": format!("r{i}")}),
            )
            .await;
    }
    let mut late = app.anonymous("late").await;
    late.ok("room.join", json!({"room": room})).await;
    let replay = alice
        .ok("room.join", json!({"room": room, "since": start}))
        .await;
    let events = replay["events"].as_array().expect("events");
    let seqs: Vec<i64> = events
        .iter()
        .map(|e| e["seq"].as_i64().expect("seq"))
        .collect();
    assert_eq!(
        seqs,
        ((start + 1)..=(start + 6)).collect::<Vec<_>>(),
        "{replay}"
    );
    assert_eq!(events[0]["type"], "message.new");
    assert_eq!(events[5]["type"], "member.joined");
    assert_eq!(replay["recovered"], true);
    assert_eq!(replay["has_more"], false);
}
