//! Erasure (`EraseUser`): afterwards no query, replay or attachment URL
//! returns anything the user wrote, their tokens no longer work, their
//! presence status is forgotten, and an audit record says when, who asked
//! and with which credential.

use proto::chat::v1::{EraseUserRequest, GetEventsRequest, GetHistoryRequest, ListErasuresRequest};
use proto::presence::v1::GetPresenceRequest;
use serde_json::json;

use crate::attachments::{download, upload_png};
use crate::helpers::spawn_app;

/// Whether `text` holds any of the erased user's words.
fn leaks(text: &str) -> bool {
    text.contains("secret")
}

#[tokio::test]
async fn after_erasure_nothing_the_user_wrote_can_be_read() {
    let app = spawn_app().await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let room = alice.share_room_with(&mut [&mut bob]).await;
    bob.ok("room.join", json!({"room": room})).await;
    alice.ok("room.join", json!({"room": room})).await;

    let (first, _) = alice.send(&room, "secret-1 for @bob").await;
    let picture = upload_png(&app, "alice").await;
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "secret-2", "client_msg_id": "pic",
                   "kind": "image", "attachments": [picture]}),
        )
        .await;
    let reply = bob
        .ok(
            "message.send",
            json!({"room": room, "text": "answering", "client_msg_id": "b1", "reply_to": first}),
        )
        .await;
    assert!(leaks(&reply.to_string()), "the quote carries the excerpt");
    let bobs = reply["message"]["id"].as_str().expect("id").to_string();
    alice
        .ok(
            "reaction.add",
            json!({"room": room, "message_id": bobs, "emoji": "👍"}),
        )
        .await;
    alice
        .ok(
            "presence.set",
            json!({"status": "busy", "text": "secret-status"}),
        )
        .await;
    let signed = bob
        .ok(
            "attachment.url",
            json!({"room": room, "attachment": picture}),
        )
        .await;
    let url = signed["url"].as_str().expect("url").to_string();
    assert_eq!(download(&app, &url).await.0, 200);
    let notes = bob.ok("notification.list", json!({})).await;
    assert!(leaks(&notes.to_string()), "the mention carries an excerpt");

    let erased = app
        .chat_backend_client()
        .erase_user(EraseUserRequest {
            user_id: "alice".into(),
            requested_by: "ticket-7".into(),
        })
        .await
        .expect("erase")
        .into_inner()
        .erasure
        .expect("audit record");
    assert_eq!((erased.messages, erased.attachments), (2, 1));
    assert!(
        erased.credential.starts_with("sha256:"),
        "{}",
        erased.credential
    );

    // Live connections of the erased user end (their tokens are revoked).
    assert_eq!(alice.close_code().await, Some(4003));

    // Queries: history, replay, notifications, the backend API.
    let history = bob.ok("message.history", json!({"room": room})).await;
    assert!(!leaks(&history.to_string()), "{history}");
    let messages = history["messages"].as_array().expect("messages");
    let tombstones: Vec<_> = messages
        .iter()
        .filter(|m| m["sender"]["id"] == "alice")
        .collect();
    assert_eq!(tombstones.len(), 2);
    assert!(
        tombstones
            .iter()
            .all(|m| m["deleted"] == true && m["text"] == "" && m.get("attachments").is_none())
    );
    let quote = &messages
        .iter()
        .find(|m| m["id"] == bobs.as_str())
        .expect("bob's reply")["reply_to"];
    assert_eq!(quote["deleted"], true);
    assert_eq!(quote["excerpt"], "");
    let reactions = &messages
        .iter()
        .find(|m| m["id"] == bobs.as_str())
        .expect("bob's reply")["reactions"];
    assert_eq!(
        reactions,
        &json!({}),
        "the erased user's reactions are gone"
    );
    let mut bob_again = app.user("bob", "Bob").await;
    let replay = bob_again
        .ok("room.join", json!({"room": room, "since": 0}))
        .await;
    assert!(!leaks(&replay.to_string()), "{replay}");
    let notes = bob_again.ok("notification.list", json!({})).await;
    assert!(!leaks(&notes.to_string()), "{notes}");
    let mut backend = app.chat_backend_client();
    let history = backend
        .get_history(GetHistoryRequest {
            room_id: room.clone(),
            ..GetHistoryRequest::default()
        })
        .await
        .expect("history")
        .into_inner();
    assert!(!leaks(&format!("{history:?}")));
    let events = backend
        .get_events(GetEventsRequest {
            room_id: room.clone(),
            after: 0,
            limit: 0,
        })
        .await
        .expect("events")
        .into_inner();
    assert!(!leaks(&format!("{events:?}")));

    // The attachment URL signed before the erasure serves nothing.
    assert_eq!(download(&app, &url).await.0, 404);

    // Membership (and its receipts) is gone; presence status forgotten.
    let members = bob_again.ok("room.members", json!({"room": room})).await;
    assert!(
        members["members"]
            .as_array()
            .expect("members")
            .iter()
            .all(|m| m["user"]["id"] != "alice"),
        "{members}"
    );
    let presence = app
        .presence_client()
        .get_presence(GetPresenceRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .expect("presence")
        .into_inner();
    assert!(!leaks(&format!("{presence:?}")), "{presence:?}");

    // The audit record.
    let records = backend
        .list_erasures(ListErasuresRequest {
            user_id: "alice".into(),
        })
        .await
        .expect("list")
        .into_inner()
        .erasures;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].requested_by, "ticket-7");
    assert_eq!(records[0].credential, erased.credential);
    assert!(records[0].at > 0);
}
