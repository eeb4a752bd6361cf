//! Editing messages (the author only, logged as `message.updated` with the
//! whole message) and deleting them (the author or the room owner, leaving
//! a tombstone, logged as `message.deleted`).

use proto::chat::v1::SendMessageRequest;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn the_author_edits_a_message() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let original = app.send(ALICE, &room.id, "helo").await.expect("send");
    assert_eq!(original.edited_at, None);
    let before_edit = app.log(ALICE, &room.id).await.len();

    let edited = app
        .edit(ALICE, &room.id, &original.id, "hello")
        .await
        .expect("the author edits");
    assert_eq!(edited.id, original.id);
    assert_eq!(edited.text, "hello");
    assert_eq!(edited.seq, original.seq, "the message keeps its seq");
    assert_eq!(edited.client_msg_id, original.client_msg_id);
    assert_eq!(edited.created_at, original.created_at);
    let edited_at = edited.edited_at.expect("edited_at is set");
    assert!(edited_at >= original.created_at);

    let log = app.log(ALICE, &room.id).await;
    assert_eq!(log.len(), before_edit + 1, "one event for the edit");
    let updated = log.last().expect("an event");
    assert_eq!(updated.kind, "message.updated");
    assert_eq!(updated.seq, original.seq + 1, "at the next seq");
    let body = json(updated);
    assert_eq!(body["type"], "message.updated");
    assert_eq!(body["room"], room.id.as_str());
    assert_eq!(body["seq"], updated.seq);
    let message = &body["message"];
    assert_eq!(message["id"], original.id.as_str());
    assert_eq!(message["text"], "hello");
    assert_eq!(message["edited_at"], edited_at);
    assert_eq!(message["seq"], original.seq);
    assert_eq!(message["sender"]["id"], ALICE);
    assert_eq!(message["deleted"], false);

    let seen = app.message_in_history(BOB, &room.id, &original.id).await;
    assert_eq!(seen.text, "hello");
    assert_eq!(seen.edited_at, Some(edited_at));
    assert_eq!(seen.seq, original.seq);
    let next = app.send(BOB, &room.id, "ok").await.expect("send");
    assert_eq!(next.seq, updated.seq + 1);
}

#[tokio::test]
async fn invalid_edits_are_refused() {
    let app = spawn_app_with(|config| config.max_text_chars = 20).await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let sent = app.send(ALICE, &room.id, "original").await.expect("send");
    let doomed = app.send(ALICE, &room.id, "doomed").await.expect("send");
    app.delete(ALICE, &room.id, &doomed.id)
        .await
        .expect("delete");
    let log_len = app.log(ALICE, &room.id).await.len();

    let by_other = app.edit(BOB, &room.id, &sent.id, "mine now").await;
    assert_eq!(code(by_other), Code::PermissionDenied);
    let by_outsider = app.edit(CAROL, &room.id, &sent.id, "mine now").await;
    assert_eq!(code(by_outsider), Code::PermissionDenied, "not a member");
    let deleted = app.edit(ALICE, &room.id, &doomed.id, "back").await;
    assert_eq!(code(deleted), Code::NotFound);
    let unknown = app.edit(ALICE, &room.id, "m_no_such_message", "x").await;
    assert_eq!(code(unknown), Code::NotFound);
    for empty in ["", "  \n "] {
        let result = app.edit(ALICE, &room.id, &sent.id, empty).await;
        assert_eq!(code(result), Code::InvalidArgument, "{empty:?}");
    }
    let too_long = app.edit(ALICE, &room.id, &sent.id, &"é".repeat(21)).await;
    assert_eq!(code(too_long), Code::OutOfRange);

    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        log_len,
        "nothing logged"
    );
    let kept = app.message_in_history(ALICE, &room.id, &sent.id).await;
    assert_eq!((kept.text.as_str(), kept.edited_at), ("original", None));

    let at_limit = app
        .edit(ALICE, &room.id, &sent.id, &"é".repeat(20))
        .await
        .expect("text at the limit");
    assert_eq!(at_limit.text, "é".repeat(20));
}

#[tokio::test]
async fn the_author_deletes_a_message_leaving_a_tombstone() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let request = SendMessageRequest {
        metadata_json: r#"{"link":"https://example.com"}"#.into(),
        ..message(&room.id, "secret")
    };
    let sent = app
        .send_request(BOB, request)
        .await
        .expect("send")
        .message
        .expect("message");
    app.react(ALICE, &room.id, &sent.id, "👍")
        .await
        .expect("react");
    let before = app.log(ALICE, &room.id).await.len();

    app.delete(BOB, &room.id, &sent.id)
        .await
        .expect("the author deletes");
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(log.len(), before + 1);
    let deleted = log.last().expect("an event");
    assert_eq!(deleted.kind, "message.deleted");
    assert_eq!(deleted.seq, before as i64 + 1);
    assert_eq!(
        json(deleted),
        serde_json::json!({
            "type": "message.deleted",
            "room": room.id,
            "seq": deleted.seq,
            "message_id": sent.id,
        })
    );

    let tombstone = app.message_in_history(ALICE, &room.id, &sent.id).await;
    assert!(tombstone.deleted);
    assert_eq!(tombstone.text, "");
    assert_eq!(tombstone.metadata_json, "");
    assert!(tombstone.reactions.is_empty());
    assert_eq!(tombstone.seq, sent.seq, "the tombstone keeps its place");
    assert_eq!(tombstone.sender.as_ref().map(|s| s.id.as_str()), Some(BOB));

    app.delete(BOB, &room.id, &sent.id)
        .await
        .expect("deleting again succeeds");
    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        before + 1,
        "and logs nothing more"
    );
}

#[tokio::test]
async fn the_owner_deletes_anyones_message_but_a_member_only_their_own() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB, CAROL]).await;
    let by_bob = app.send(BOB, &room.id, "bob's").await.expect("send");
    let by_carol = app.send(CAROL, &room.id, "carol's").await.expect("send");
    let before = app.log(ALICE, &room.id).await.len();

    let refused = app.delete(BOB, &room.id, &by_carol.id).await;
    assert_eq!(code(refused), Code::PermissionDenied);
    let outsider = app.delete(DAVE, &room.id, &by_carol.id).await;
    assert_eq!(code(outsider), Code::PermissionDenied, "not a member");
    let unknown = app.delete(ALICE, &room.id, "m_no_such_message").await;
    assert_eq!(code(unknown), Code::NotFound);
    assert_eq!(app.log(ALICE, &room.id).await.len(), before);
    let kept = app.message_in_history(ALICE, &room.id, &by_carol.id).await;
    assert!(!kept.deleted);
    assert_eq!(kept.text, "carol's");

    app.delete(ALICE, &room.id, &by_bob.id)
        .await
        .expect("the owner deletes bob's message");
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(kinds(&log).last(), Some(&"message.deleted"));
    assert_eq!(json(&log[log.len() - 1])["message_id"], by_bob.id.as_str());
    assert!(
        app.message_in_history(CAROL, &room.id, &by_bob.id)
            .await
            .deleted
    );
}

/// A tombstone keeps nothing of the message, yet the room log, which members
/// (and anyone who joins a public room later) read with `GetEvents` or
/// `JoinRoom { since }`, still serves the original `message.new` and every
/// `message.updated` with the deleted text and metadata.
#[tokio::test]
async fn a_deleted_messages_content_is_gone_from_the_log_too() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let request = SendMessageRequest {
        metadata_json: r#"{"card":"4111-1111"}"#.into(),
        ..message(&room.id, "my pin is 0000")
    };
    let sent = app
        .send_request(BOB, request)
        .await
        .expect("send")
        .message
        .expect("message");
    app.edit(BOB, &room.id, &sent.id, "my pin is 1234")
        .await
        .expect("edit");
    app.delete(BOB, &room.id, &sent.id).await.expect("delete");
    assert!(
        app.message_in_history(ALICE, &room.id, &sent.id)
            .await
            .deleted
    );

    let newcomer = app.join(CAROL, &room.id, Some(0)).await.expect("join");
    let logs = [
        ("GetEvents", app.log(ALICE, &room.id).await),
        ("JoinRoom since 0", newcomer.events),
    ];
    for (source, log) in logs {
        for event in log {
            for secret in ["my pin", "4111-1111"] {
                assert!(
                    !event.json.contains(secret),
                    "{source}: seq {} ({}) still holds {secret:?}",
                    event.seq,
                    event.kind
                );
            }
        }
    }
}
