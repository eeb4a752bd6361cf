//! Replies that quote a message, and clearing notifications (issue 21,
//! items 6 and 7).

use serde_json::{Value, json};

use crate::helpers::spawn_app;

/// The event of `kind` about message `id` among a join reply's replayed events.
fn replayed<'a>(reply: &'a Value, kind: &str, id: &str) -> &'a Value {
    reply["events"]
        .as_array()
        .expect("events")
        .iter()
        .find(|e| e["type"] == kind && e["message"]["id"] == id)
        .unwrap_or_else(|| panic!("no {kind} of {id} in {reply}"))
}

#[tokio::test]
async fn a_reply_quotes_its_original_and_replay_follows_edits_and_deletes() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = alice.public_room("quotes").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;
    let (original, _) = alice.send(&room, "the original text").await;
    let (root, _) = alice.send(&room, "a thread root").await;

    let reply = bob
        .ok(
            "message.send",
            json!({"room": room, "text": "an answer", "client_msg_id": "r1",
                   "reply_to": original, "thread": root}),
        )
        .await;
    let answer = reply["message"]["id"].as_str().expect("id").to_string();
    assert_eq!(
        reply["message"]["reply_to"],
        json!({"id": original, "sender": {"id": alice.user_id, "name": "alice"},
               "excerpt": "the original text", "deleted": false})
    );
    assert_eq!(
        reply["message"]["thread"], root,
        "a reply and a thread are independent"
    );
    let live = loop {
        let event = alice.event("message.new").await;
        if event["message"]["id"] == answer {
            break event;
        }
    };
    assert_eq!(live["message"]["reply_to"]["excerpt"], "the original text");

    alice
        .ok(
            "message.edit",
            json!({"room": room, "message_id": original, "text": "the edited text"}),
        )
        .await;
    let mut carol = app.anonymous("carol").await;
    let joined = carol
        .ok("room.join", json!({"room": room, "since": 0}))
        .await;
    let quote = &replayed(&joined, "message.new", &answer)["message"]["reply_to"];
    assert_eq!(quote["excerpt"], "the edited text");
    assert!(quote["edited_at"].is_i64(), "{quote}");
    let history = carol.ok("message.history", json!({"room": room})).await;
    let stored = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["id"] == answer)
        .expect("the answer");
    assert_eq!(stored["reply_to"]["excerpt"], "the edited text");

    alice
        .ok(
            "message.delete",
            json!({"room": room, "message_id": original}),
        )
        .await;
    let mut dave = app.anonymous("dave").await;
    let joined = dave
        .ok("room.join", json!({"room": room, "since": 0}))
        .await;
    let quote = &replayed(&joined, "message.new", &answer)["message"]["reply_to"];
    assert_eq!(quote["deleted"], true, "{quote}");
    assert_eq!(quote["excerpt"], "");
    assert_eq!(quote["id"], original);

    let error = bob
        .err(
            "message.send",
            json!({"room": room, "text": "late", "client_msg_id": "r2", "reply_to": original}),
            "not_found",
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("reply_to"),
        "{error}"
    );
    bob.err(
        "message.send",
        json!({"room": room, "text": "?", "client_msg_id": "r3", "reply_to": "m_nope"}),
        "not_found",
    )
    .await;
    bob.err(
        "message.send",
        json!({"room": room, "text": "?", "client_msg_id": "r4", "reply_to": "m".repeat(129)}),
        "too_large",
    )
    .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn clearing_notifications_deletes_them_and_tells_the_users_other_connections() {
    let app = spawn_app().await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let mut bob_phone = app.user("bob", "Bob").await;
    let room = alice.public_room("mentions").await;
    bob.ok("room.join", json!({"room": room})).await;
    for i in 0..3 {
        alice.send(&room, &format!("@bob look {i}")).await;
        bob_phone.event("notification.new").await;
    }
    let listed = bob.ok("notification.list", json!({})).await;
    let ids: Vec<String> = listed["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .map(|n| n["id"].as_str().expect("id").to_string())
        .collect();
    assert_eq!(ids.len(), 3);

    bob.ok("notification.clear", json!({"ids": [ids[0], "n_not_mine"]}))
        .await;
    let cleared = bob_phone.event("notification.cleared").await;
    assert_eq!(cleared["ids"], json!([ids[0]]), "{cleared}");
    assert_eq!(cleared["conn_id"], bob.hello["conn_id"]);
    let listed = bob_phone.ok("notification.list", json!({})).await;
    assert_eq!(listed["notifications"].as_array().expect("list").len(), 2);

    bob.ok("notification.read", json!({"all": true})).await;
    let unread = bob
        .ok("notification.list", json!({"unread_only": true}))
        .await;
    assert_eq!(unread["notifications"], json!([]));
    let all = bob.ok("notification.list", json!({})).await;
    assert!(
        all["notifications"]
            .as_array()
            .expect("list")
            .iter()
            .all(|n| n["read"] == true),
        "{all}"
    );

    bob_phone
        .ok("notification.clear", json!({"all": true}))
        .await;
    // Bob's own echo of his first clear comes first: it names his connection.
    let echo = bob.event("notification.cleared").await;
    assert_eq!(echo["conn_id"], bob.hello["conn_id"], "{echo}");
    let cleared = bob.event("notification.cleared").await;
    assert_eq!(cleared["all"], true, "{cleared}");
    assert_eq!(cleared["conn_id"], bob_phone.hello["conn_id"]);
    let listed = bob.ok("notification.list", json!({})).await;
    assert_eq!(listed["notifications"], json!([]));

    bob.err(
        "notification.clear",
        json!({"ids": ["n_1"], "all": true}),
        "bad_request",
    )
    .await;
    bob.err("notification.clear", json!({}), "bad_request")
        .await;
    let too_many: Vec<String> = (0..101).map(|i| format!("n_{i}")).collect();
    bob.err(
        "notification.clear",
        json!({"ids": too_many}),
        "bad_request",
    )
    .await;
    crate::helpers::assert_no_task_panicked();
}
