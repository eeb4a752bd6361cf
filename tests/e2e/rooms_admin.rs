//! Room settings and deletion, member lists and roles, moderation and
//! reports (issue 21, items 1–3 and 8): each change is a room-log event,
//! checked in chat-service, and replayed with `since`.

use serde_json::{Value, json};

use crate::helpers::{Client, spawn_app, spawn_app_with};

/// The next frame of any of `kinds`, skipping others.
async fn next_of(client: &mut Client, kinds: &[&str]) -> Value {
    loop {
        let frame = client.next_frame().await.expect("connection open");
        if kinds.contains(&frame["type"].as_str().unwrap_or_default()) {
            return frame;
        }
    }
}

/// A public room of `owner` that `others` joined.
async fn room_with(owner: &mut Client, name: &str, others: &mut [&mut Client]) -> String {
    let room = owner.public_room(name).await;
    owner.ok("room.join", json!({"room": room})).await;
    for other in others.iter_mut() {
        other.ok("room.join", json!({"room": room})).await;
    }
    room
}

#[tokio::test]
async fn owners_and_admins_change_a_room_and_members_cannot() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.anonymous("carol").await;
    let room = room_with(&mut alice, "settings", &mut [&mut bob, &mut carol]).await;

    carol
        .err(
            "room.update",
            json!({"room": room, "topic": "mine"}),
            "forbidden",
        )
        .await;
    alice
        .ok(
            "room.set_role",
            json!({"room": room, "user": bob.user_id, "role": "admin"}),
        )
        .await;
    let reply = bob
        .ok(
            "room.update",
            json!({"room": room, "name": "renamed", "topic": "plans", "metadata": {"color": "red"}}),
        )
        .await;
    assert_eq!(reply["room"]["name"], "renamed");
    assert_eq!(reply["room"]["topic"], "plans");
    assert_eq!(reply["room"]["metadata"], json!({"color": "red"}));
    let event = next_of(&mut carol, &["room.updated"]).await;
    assert_eq!(event["name"], "renamed");
    assert_eq!(event["topic"], "plans");
    assert_eq!(event["by"]["id"], bob.user_id);
    assert!(event["seq"].is_i64());
    let rooms = carol.ok("room.list", json!({})).await;
    assert_eq!(rooms["rooms"][0]["name"], "renamed");

    bob.err(
        "room.update",
        json!({"room": room, "name": "n".repeat(101)}),
        "too_large",
    )
    .await;
    bob.err(
        "room.update",
        json!({"room": room, "topic": "t".repeat(1001)}),
        "too_large",
    )
    .await;
    bob.err(
        "room.update",
        json!({"room": room, "name": "x".repeat(401)}),
        "too_large",
    )
    .await;
    let taken = alice.public_room("taken").await;
    assert!(!taken.is_empty());
    bob.err(
        "room.update",
        json!({"room": room, "name": "taken"}),
        "conflict",
    )
    .await;
    bob.err("room.delete", json!({"room": room}), "forbidden")
        .await;
    carol
        .err(
            "room.update",
            json!({"room": "r_nope", "topic": "x"}),
            "not_found",
        )
        .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn deleting_a_room_removes_it_and_its_history_at_once() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.user("carol", "Carol").await;
    let room = room_with(&mut alice, "doomed", &mut [&mut bob, &mut carol]).await;
    // Carol's other device never joined the room on its connection.
    let mut carol_phone = app.user("carol", "Carol").await;
    let (message, seq) = alice.send(&room, "soon gone").await;

    alice.ok("room.delete", json!({"room": room})).await;
    let deleted = next_of(&mut bob, &["room.deleted"]).await;
    assert_eq!(deleted["room"], room);
    assert_eq!(deleted["seq"], seq + 1);
    assert_eq!(deleted["by"]["id"], alice.user_id);
    let told = next_of(&mut carol_phone, &["room.deleted"]).await;
    assert_eq!(told["room"], room, "every member hears of it");
    let once = next_of(&mut carol, &["room.deleted"]).await;
    assert_eq!(once["room"], room);
    carol.ok("ping", json!({})).await;
    assert!(
        carol
            .take_pending()
            .iter()
            .all(|f| f["type"] != "room.deleted"),
        "a connection that joined the room gets it once"
    );

    for client in [&mut alice, &mut bob] {
        let rooms = client.ok("room.list", json!({})).await;
        assert_eq!(rooms["rooms"], json!([]), "gone from every list");
    }
    bob.err("message.history", json!({"room": room}), "not_found")
        .await;
    bob.err(
        "message.send",
        json!({"room": room, "text": "hello?", "client_msg_id": "c"}),
        "not_found",
    )
    .await;
    bob.err(
        "reaction.add",
        json!({"room": room, "message_id": message, "emoji": "👍"}),
        "not_found",
    )
    .await;
    bob.err("room.join", json!({"room": room}), "not_found")
        .await;
    // A member who was away learns of it with `since`, and of nothing else.
    let mut away = app.anonymous("away").await;
    let recovered = away
        .ok("room.join", json!({"room": room, "since": 0}))
        .await;
    assert_eq!(recovered["room"]["deleted"], true);
    assert_eq!(recovered["recovered"], true);
    let events = recovered["events"].as_array().expect("events");
    assert_eq!(events.len(), 1, "{recovered}");
    assert_eq!(events[0]["type"], "room.deleted");
    // Its name is free again.
    alice.public_room("doomed").await;
    // The backends' view: no history left.
    let mut backend = app.chat_backend_client();
    let history = backend
        .get_history(proto::chat::v1::GetHistoryRequest {
            room_id: room.clone(),
            limit: 10,
            ..Default::default()
        })
        .await;
    assert_eq!(
        history.expect_err("gone").code(),
        tonic::Code::NotFound,
        "its history is no longer readable"
    );
    // Edges repairing a gap read what is left of the log: the deletion.
    let log = backend
        .get_events(proto::chat::v1::GetEventsRequest {
            room_id: room.clone(),
            after: 0,
            limit: 10,
        })
        .await
        .expect("the log of a deleted room")
        .into_inner();
    let kinds: Vec<&str> = log.events.iter().map(|e| e.kind.as_str()).collect();
    assert_eq!(kinds, ["room.deleted"]);
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn members_are_listed_in_pages_with_role_join_time_and_presence() {
    let app = spawn_app().await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let mut carol = app.user("carol", "Carol").await;
    let room = room_with(&mut alice, "roster", &mut [&mut bob, &mut carol]).await;
    alice
        .ok(
            "room.set_role",
            json!({"room": room, "user": "bob", "role": "admin"}),
        )
        .await;
    carol.close_normally().await;

    let first = alice
        .ok("room.members", json!({"room": room, "limit": 2}))
        .await;
    let members = first["members"].as_array().expect("members");
    assert_eq!(members.len(), 2);
    assert_eq!(members[0]["user"], json!({"id": "alice", "name": "Alice"}));
    assert_eq!(members[0]["role"], "owner");
    assert_eq!(members[0]["status"], "online");
    assert!(members[0]["joined_at"].is_i64());
    assert_eq!(members[1]["user"]["id"], "bob");
    assert_eq!(members[1]["role"], "admin");
    let cursor = first["next_cursor"].as_str().expect("a next page");
    let second = alice
        .ok(
            "room.members",
            json!({"room": room, "limit": 2, "cursor": cursor}),
        )
        .await;
    let members = second["members"].as_array().expect("members");
    assert_eq!(members.len(), 1);
    assert_eq!(members[0]["user"]["id"], "carol");
    assert_eq!(members[0]["role"], "member");
    assert!(second.get("next_cursor").is_none(), "{second}");

    alice
        .err(
            "room.members",
            json!({"room": room, "cursor": "garbage"}),
            "bad_request",
        )
        .await;
    let private = alice
        .ok(
            "room.create",
            json!({"name": "hidden", "visibility": "private"}),
        )
        .await;
    let private = private["room"]["id"].as_str().expect("id");
    bob.err("room.members", json!({"room": private}), "not_found")
        .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn ownership_transfers_and_roles_follow_the_permission_table() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.anonymous("carol").await;
    let room = room_with(&mut alice, "roles", &mut [&mut bob, &mut carol]).await;
    let set = |user: &str, role: &str| json!({"room": room, "user": user, "role": role});

    bob.err("room.set_role", set(&carol.user_id, "admin"), "forbidden")
        .await;
    alice.ok("room.set_role", set(&bob.user_id, "admin")).await;
    // Admins may not give roles unless `chat.admins_set_roles`.
    bob.err("room.set_role", set(&carol.user_id, "admin"), "forbidden")
        .await;
    bob.err("room.set_role", set(&alice.user_id, "member"), "forbidden")
        .await;
    alice
        .err("room.set_role", set("stranger", "admin"), "not_found")
        .await;
    alice.ok("room.set_role", set(&bob.user_id, "owner")).await;
    let mut changes = Vec::new();
    for _ in 0..3 {
        let event = next_of(&mut carol, &["member.role"]).await;
        changes.push((
            event["user"]["id"].as_str().expect("id").to_string(),
            event["role"].as_str().expect("role").to_string(),
            event["seq"].as_i64().expect("seq"),
        ));
    }
    assert_eq!(
        changes
            .iter()
            .map(|(u, r, _)| (u.as_str(), r.as_str()))
            .collect::<Vec<_>>(),
        [
            (bob.user_id.as_str(), "admin"),
            (bob.user_id.as_str(), "owner"),
            (alice.user_id.as_str(), "admin"),
        ]
    );
    assert_eq!(changes[2].2, changes[1].2 + 1);
    let joined = carol.ok("room.join", json!({"room": room})).await;
    assert_eq!(joined["room"]["owner"], bob.user_id);
    alice
        .err("room.delete", json!({"room": room}), "forbidden")
        .await;
    bob.ok("room.set_role", set(&alice.user_id, "member")).await;
    alice
        .err(
            "room.update",
            json!({"room": room, "topic": "x"}),
            "forbidden",
        )
        .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn admins_give_roles_when_configured() {
    let app = spawn_app_with(|c| c.chat.admins_set_roles = true).await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.anonymous("carol").await;
    let room = room_with(&mut alice, "delegated", &mut [&mut bob, &mut carol]).await;
    let set = |user: &str, role: &str| json!({"room": room, "user": user, "role": role});
    alice.ok("room.set_role", set(&bob.user_id, "admin")).await;
    bob.ok("room.set_role", set(&carol.user_id, "admin")).await;
    // Not on their equals, and never ownership.
    bob.err("room.set_role", set(&carol.user_id, "member"), "forbidden")
        .await;
    bob.err("room.set_role", set(&carol.user_id, "owner"), "forbidden")
        .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn a_muted_member_cannot_send_or_react_until_unmuted() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.anonymous("carol").await;
    let room = room_with(&mut alice, "quiet", &mut [&mut bob, &mut carol]).await;
    let (message, _) = alice.send(&room, "hello").await;
    let target = |user: &str| json!({"room": room, "user": user});

    carol
        .err("room.mute", target(&bob.user_id), "forbidden")
        .await;
    bob.err("room.mute", target(&alice.user_id), "forbidden")
        .await;
    alice
        .err("room.mute", target("stranger"), "not_found")
        .await;
    alice
        .err(
            "room.mute",
            json!({"room": room, "user": bob.user_id, "until": 1}),
            "bad_request",
        )
        .await;
    alice.ok("room.mute", target(&bob.user_id)).await;
    let muted = next_of(&mut carol, &["member.muted"]).await;
    assert_eq!(muted["user"]["id"], bob.user_id);
    assert_eq!(muted["by"]["id"], alice.user_id);

    let error = bob
        .err(
            "message.send",
            json!({"room": room, "text": "let me speak", "client_msg_id": "c1"}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "muted");
    let error = bob
        .err(
            "reaction.add",
            json!({"room": room, "message_id": message, "emoji": "👍"}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "muted");
    let error = bob
        .err("typing.start", json!({"room": room}), "forbidden")
        .await;
    assert_eq!(error["reason"], "muted");
    let members = alice.ok("room.members", json!({"room": room})).await;
    let listed = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["user"]["id"] == bob.user_id)
        .expect("bob")
        .clone();
    assert_eq!(listed["muted"], true, "{listed}");

    alice.ok("room.unmute", target(&bob.user_id)).await;
    next_of(&mut carol, &["member.unmuted"]).await;
    bob.send(&room, "thanks").await;
    bob.ok("typing.start", json!({"room": room})).await;
    let typing = next_of(&mut carol, &["typing"]).await;
    assert_eq!(typing["user"], bob.user_id);
    alice
        .err("room.unmute", target(&bob.user_id), "not_found")
        .await;

    // A mute with an end says when.
    let until = common::ids::now_ms() + 3_600_000;
    alice
        .ok(
            "room.mute",
            json!({"room": room, "user": carol.user_id, "until": until}),
        )
        .await;
    let muted = loop {
        let event = next_of(&mut bob, &["member.muted"]).await;
        if event["user"]["id"] == carol.user_id {
            break event;
        }
    };
    assert_eq!(muted["until"], until);
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn a_banned_user_is_removed_and_cannot_rejoin_or_be_invited() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.anonymous("carol").await;
    let room = room_with(&mut alice, "strict", &mut [&mut bob, &mut carol]).await;
    let target = |user: &str| json!({"room": room, "user": user});

    carol
        .err("room.ban", target(&bob.user_id), "forbidden")
        .await;
    alice.ok("room.ban", target(&bob.user_id)).await;
    let left = next_of(&mut carol, &["member.left", "member.banned"]).await;
    assert_eq!(left["type"], "member.left");
    let banned = next_of(&mut carol, &["member.banned"]).await;
    assert_eq!(banned["user"]["id"], bob.user_id);
    assert_eq!(banned["seq"], left["seq"].as_i64().expect("seq") + 1);

    let error = bob
        .err("room.join", json!({"room": room}), "forbidden")
        .await;
    assert_eq!(error["reason"], "banned");
    let error = carol
        .err("room.invite", target(&bob.user_id), "forbidden")
        .await;
    assert_eq!(error["reason"], "banned");
    bob.err(
        "message.send",
        json!({"room": room, "text": "still here?", "client_msg_id": "c"}),
        "forbidden",
    )
    .await;
    alice
        .err("room.ban", target(&bob.user_id), "not_found")
        .await;

    alice.ok("room.unban", target(&bob.user_id)).await;
    next_of(&mut carol, &["member.unbanned"]).await;
    bob.ok("room.join", json!({"room": room})).await;
    alice
        .err("room.unban", target(&bob.user_id), "not_found")
        .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn reported_messages_are_stored_and_listed_for_backends() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = room_with(&mut alice, "reports", &mut [&mut bob]).await;
    let (message, _) = alice.send(&room, "something rude").await;

    let reply = bob
        .ok(
            "message.report",
            json!({"room": room, "message": message, "reason": "rude"}),
        )
        .await;
    let report_id = reply["report_id"].as_str().expect("report id").to_string();
    bob.err(
        "message.report",
        json!({"room": room, "message": "m_nope", "reason": "rude"}),
        "not_found",
    )
    .await;
    bob.err(
        "message.report",
        json!({"room": room, "message": message, "reason": ""}),
        "bad_request",
    )
    .await;
    let mut stranger = app.anonymous("stranger").await;
    stranger
        .err(
            "message.report",
            json!({"room": room, "message": message, "reason": "rude"}),
            "forbidden",
        )
        .await;

    let reports = app
        .chat_backend_client()
        .list_reports(proto::chat::v1::ListReportsRequest {
            room_id: Some(room.clone()),
            limit: 10,
            before: None,
        })
        .await
        .expect("list reports")
        .into_inner()
        .reports;
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(report.id, report_id);
    assert_eq!(report.message_id, message);
    assert_eq!(report.reporter_id, bob.user_id);
    assert_eq!(report.sender_id, alice.user_id);
    assert_eq!(report.reason, "rude");
    assert_eq!(report.text, "something rude");
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn backends_update_moderate_and_delete_rooms_as_system() {
    use proto::chat::v1::{ModerateRequest, Sanction, UpdateRoomRequest};

    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let room = room_with(&mut alice, "managed", &mut [&mut bob]).await;
    let mut backend = app.chat_backend_client();
    let updated = backend
        .update_room(UpdateRoomRequest {
            room_id: room.clone(),
            topic: Some("from the backend".into()),
            ..Default::default()
        })
        .await
        .expect("update")
        .into_inner();
    assert_eq!(updated.room.expect("room").topic, "from the backend");
    let event = next_of(&mut bob, &["room.updated"]).await;
    assert_eq!(event["by"]["id"], "system");
    // Even the owner can be muted by a backend.
    backend
        .moderate(ModerateRequest {
            room_id: room.clone(),
            user_id: alice.user_id.clone(),
            sanction: Sanction::Mute as i32,
            until: None,
        })
        .await
        .expect("mute");
    let error = alice
        .err(
            "message.send",
            json!({"room": room, "text": "hm", "client_msg_id": "c"}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "muted");
    backend
        .delete_room(proto::chat::v1::DeleteRoomRequest {
            room_id: room.clone(),
        })
        .await
        .expect("delete");
    next_of(&mut bob, &["room.deleted"]).await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn a_member_away_during_changes_gets_each_replayed_in_order_with_since() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut carol = app.anonymous("carol").await;
    let room = room_with(&mut alice, "replayed", &mut [&mut bob, &mut carol]).await;
    let (_, seen) = alice.send(&room, "before").await;
    let carol_token = carol.user_id.clone();
    carol.close_normally().await;
    assert!(!carol_token.is_empty());

    alice
        .ok("room.update", json!({"room": room, "topic": "new topic"}))
        .await;
    alice
        .ok(
            "room.set_role",
            json!({"room": room, "user": bob.user_id, "role": "admin"}),
        )
        .await;
    alice
        .ok("room.mute", json!({"room": room, "user": bob.user_id}))
        .await;

    let mut carol = app.anonymous("carol again").await;
    let joined = carol
        .ok("room.join", json!({"room": room, "since": seen}))
        .await;
    assert_eq!(joined["recovered"], true);
    let events: Vec<(String, i64)> = joined["events"]
        .as_array()
        .expect("events")
        .iter()
        .filter(|e| e["type"] != "member.joined")
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_string(),
                e["seq"].as_i64().expect("seq"),
            )
        })
        .collect();
    assert_eq!(
        events.iter().map(|(t, _)| t.as_str()).collect::<Vec<_>>(),
        ["room.updated", "member.role", "member.muted"]
    );
    assert_eq!(events[0].1, seen + 1, "no gap: {events:?}");
    assert_eq!(events[1].1, seen + 2);
    assert_eq!(events[2].1, seen + 3);
    let last = joined["last_seq"].as_i64().expect("last seq");

    carol.close_normally().await;
    alice.ok("room.delete", json!({"room": room})).await;
    let mut carol = app.anonymous("carol once more").await;
    let joined = carol
        .ok("room.join", json!({"room": room, "since": last}))
        .await;
    let events = joined["events"].as_array().expect("events");
    assert_eq!(events.len(), 1);
    assert_eq!(events[0]["type"], "room.deleted");
    assert_eq!(events[0]["seq"], last + 1);
    crate::helpers::assert_no_task_panicked();
}
