//! What people do with messages, through the edge: edits, deletes,
//! reactions, receipts, mentions and notifications, invites — each change a
//! room-log event every member sees in seq order.

use serde_json::{Value, json};

use crate::helpers::{Client, spawn_app};

/// Sends a message and returns `(id, seq)`.
async fn send(client: &mut Client, room: &str, text: &str) -> (String, i64) {
    let reply = client
        .ok(
            "message.send",
            json!({"room": room, "text": text, "client_msg_id": common::ids::new_id("c")}),
        )
        .await;
    let message = &reply["message"];
    (
        message["id"].as_str().expect("id").to_string(),
        message["seq"].as_i64().expect("seq"),
    )
}

/// The next room-log event of any of `kinds`, skipping others.
async fn next_log_event(client: &mut Client, kinds: &[&str]) -> Value {
    loop {
        let frame = client.next_frame().await.expect("connection open");
        let kind = frame["type"].as_str().unwrap_or_default();
        if kinds.contains(&kind) {
            return frame;
        }
    }
}

#[tokio::test]
async fn edits_deletes_and_reactions_reach_every_member_in_seq_order() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = alice.public_room("changes").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;
    let (message, _) = send(&mut alice, &room, "helo").await;

    let edited = alice
        .ok(
            "message.edit",
            json!({"room": room, "message_id": message, "text": "hello"}),
        )
        .await;
    assert_eq!(edited["message"]["text"], "hello");
    assert!(edited["message"]["edited_at"].is_i64());
    bob.ok(
        "reaction.add",
        json!({"room": room, "message_id": message, "emoji": "👍"}),
    )
    .await;
    bob.ok(
        "reaction.remove",
        json!({"room": room, "message_id": message, "emoji": "👍"}),
    )
    .await;
    bob.ok(
        "reaction.add",
        json!({"room": room, "message_id": message, "emoji": "🎉"}),
    )
    .await;
    let error = bob
        .err(
            "message.edit",
            json!({"room": room, "message_id": message, "text": "mine"}),
            "forbidden",
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("author")
    );

    let kinds = [
        "message.new",
        "message.updated",
        "reaction.added",
        "reaction.removed",
        "message.deleted",
    ];
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let event = next_log_event(&mut bob, &kinds).await;
        seen.push((
            event["type"].as_str().expect("type").to_string(),
            event["seq"].as_i64().expect("seq"),
        ));
    }
    let types: Vec<&str> = seen.iter().map(|(t, _)| t.as_str()).collect();
    assert_eq!(
        types,
        [
            "message.new",
            "message.updated",
            "reaction.added",
            "reaction.removed",
            "reaction.added"
        ]
    );
    for pair in seen.windows(2) {
        assert_eq!(pair[1].1, pair[0].1 + 1, "consecutive seqs: {seen:?}");
    }

    let history = bob.ok("message.history", json!({"room": room})).await;
    let stored = &history["messages"][0];
    assert_eq!(stored["text"], "hello");
    assert_eq!(stored["reactions"], json!({"🎉": [bob.user_id]}));

    alice
        .ok(
            "message.delete",
            json!({"room": room, "message_id": message}),
        )
        .await;
    let deleted = next_log_event(&mut bob, &["message.deleted"]).await;
    assert_eq!(deleted["message_id"], message.as_str());
    let history = bob.ok("message.history", json!({"room": room})).await;
    let tombstone = &history["messages"][0];
    assert_eq!(tombstone["deleted"], true);
    assert_eq!(tombstone["text"], "");
    assert_eq!(tombstone["reactions"], json!({}));
    bob.err(
        "reaction.add",
        json!({"room": room, "message_id": message, "emoji": "👍"}),
        "not_found",
    )
    .await;
}

#[tokio::test]
async fn a_read_mark_reaches_the_room_and_all_of_the_readers_devices_once() {
    let app = spawn_app().await;
    let mut phone = app.user("u-ada", "ada").await;
    let mut laptop = app.user("u-ada", "ada").await;
    let mut bob = app.user("u-bob", "bob").await;
    let room = bob.public_room("receipts").await;
    bob.ok("room.join", json!({"room": room})).await;
    phone.ok("room.join", json!({"room": room})).await;
    for text in ["one", "two", "three"] {
        send(&mut bob, &room, text).await;
    }
    let rooms = phone.ok("room.list", json!({})).await;
    assert_eq!(rooms["rooms"][0]["unread"], 3);

    let last_seq = phone.ok("room.join", json!({"room": room})).await["last_seq"]
        .as_i64()
        .expect("seq");
    let reply = phone
        .ok("receipt.read", json!({"room": room, "seq": last_seq - 1}))
        .await;
    assert_eq!(reply["seq"], last_seq - 1);
    // Monotonic: an older mark changes nothing.
    let reply = phone
        .ok("receipt.read", json!({"room": room, "seq": 1}))
        .await;
    assert_eq!(reply["seq"], last_seq - 1);

    let expected = json!({"type": "receipt", "room": room, "user": "u-ada", "kind": "read", "seq": last_seq - 1});
    assert_eq!(bob.event("receipt").await, expected, "room members see it");
    assert_eq!(
        laptop.event("receipt").await,
        expected,
        "the reader's other device sees it"
    );
    assert_eq!(phone.event("receipt").await, expected);
    // The device in the room got it once: the next receipt it sees is the next mark.
    phone
        .ok("receipt.read", json!({"room": room, "seq": last_seq}))
        .await;
    assert_eq!(phone.event("receipt").await["seq"], last_seq);
    let rooms = laptop.ok("room.list", json!({})).await;
    assert_eq!(rooms["rooms"][0]["unread"], 0);
}

#[tokio::test]
async fn a_mention_notifies_every_device_of_the_mentioned_member() {
    let app = spawn_app().await;
    let mut bob = app.user("u-bob", "bob").await;
    let mut ada_phone = app.user("u-ada", "ada").await;
    let mut ada_laptop = app.user("u-ada", "ada").await;
    let room = bob.public_room("mentions").await;
    bob.ok("room.join", json!({"room": room})).await;
    ada_phone.ok("room.join", json!({"room": room})).await;

    let (message, _) = send(&mut bob, &room, "lunch, @ada?").await;
    for device in [&mut ada_phone, &mut ada_laptop] {
        let event = device.event("notification.new").await;
        let notification = &event["notification"];
        assert_eq!(notification["kind"], "mention");
        assert_eq!(notification["room"], room.as_str());
        assert_eq!(notification["message_id"], message.as_str());
        assert_eq!(notification["from"]["id"], "u-bob");
        assert_eq!(notification["read"], false);
    }
    let listed = ada_laptop
        .ok("notification.list", json!({"unread_only": true}))
        .await;
    let notifications = listed["notifications"].as_array().expect("list");
    assert_eq!(notifications.len(), 1);
    let id = notifications[0]["id"].clone();
    ada_laptop
        .ok("notification.read", json!({"ids": [id]}))
        .await;
    let listed = ada_phone
        .ok("notification.list", json!({"unread_only": true}))
        .await;
    assert_eq!(listed["notifications"], json!([]));
    let all = ada_phone.ok("notification.list", json!({})).await;
    assert_eq!(all["notifications"][0]["read"], true);
    assert_eq!(
        bob.ok("notification.list", json!({})).await["notifications"],
        json!([])
    );
}

#[tokio::test]
async fn an_invited_user_reads_a_private_room_and_a_removed_one_cannot() {
    let app = spawn_app().await;
    let mut owner = app.user("u-owner", "owner").await;
    let mut guest = app.user("u-guest", "guest").await;
    let reply = owner
        .ok(
            "room.create",
            json!({"name": "secret", "visibility": "private"}),
        )
        .await;
    let room = reply["room"]["id"].as_str().expect("room").to_string();
    guest
        .err("room.join", json!({"room": room}), "not_found")
        .await;

    owner
        .ok("room.invite", json!({"room": room, "user": "u-guest"}))
        .await;
    // Invited is not a member yet.
    guest
        .err("room.join", json!({"room": room}), "not_found")
        .await;
    guest.ok("invitation.accept", json!({"room": room})).await;
    guest.ok("room.join", json!({"room": room})).await;
    send(&mut guest, &room, "thanks for the invite").await;
    guest
        .err(
            "room.remove_member",
            json!({"room": room, "user": "u-owner"}),
            "forbidden",
        )
        .await;

    owner
        .ok(
            "room.remove_member",
            json!({"room": room, "user": "u-guest"}),
        )
        .await;
    guest
        .err("message.history", json!({"room": room}), "not_found")
        .await;
    let rooms = guest.ok("room.list", json!({})).await;
    assert_eq!(rooms["rooms"], json!([]));

    // The connection that had joined hears of the removal, then nothing more.
    let left = guest.event("member.left").await;
    assert_eq!(left["user"]["id"], "u-guest");
    owner.ok("room.join", json!({"room": room})).await;
    send(&mut owner, &room, "after you left").await;
    // The owner has its own copy: the edge has handed the event on to
    // every connection still in the room. A later reply to the guest then
    // proves nothing of it was queued for the guest.
    let after = next_log_event(&mut owner, &["message.new"]).await;
    assert_eq!(after["message"]["text"], "after you left");
    guest.ok("ping", json!({})).await;
    assert!(
        guest
            .take_pending()
            .iter()
            .all(|f| f["message"]["text"] != "after you left"),
        "a removed member's connection gets no more of the room"
    );
}
