//! Read and delivered receipts: marks only move forward, are clamped to the
//! log, drive `unread`, and are published once to the room and the user.

use common::bus::{room_channel, user_channel};
use proto::chat::v1::ReceiptKind;
use serde_json::json;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn read_marks_move_forward_only_and_stop_at_the_end_of_the_log() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    app.send_many(BOB, &room.id, "b", 6).await;
    let last_seq = 8;

    let read = |seq| app.mark(ALICE, &room.id, ReceiptKind::Read, seq);
    assert_eq!(read(5).await.expect("mark"), 5);
    assert_eq!(read(3).await.expect("an older mark"), 5, "never back");
    assert_eq!(read(5).await.expect("the same mark"), 5);
    assert_eq!(read(1_000).await.expect("past the end"), last_seq);
    assert_eq!(app.unread(ALICE, &room.id).await, 0);

    let newer = app.send(BOB, &room.id, "new").await.expect("send");
    assert_eq!(app.unread(ALICE, &room.id).await, 1);
    assert_eq!(read(newer.seq).await.expect("mark"), newer.seq);
    assert_eq!(app.unread(ALICE, &room.id).await, 0);
}

#[tokio::test]
async fn a_join_carries_the_members_read_marks() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    app.send_many(BOB, &room.id, "b", 3).await;
    app.mark(ALICE, &room.id, ReceiptKind::Read, 4)
        .await
        .expect("mark");
    let joined = app.join(CAROL, &room.id, None).await.expect("join");
    let marks: Vec<(&str, i64)> = joined
        .read_marks
        .iter()
        .map(|m| (m.user_id.as_str(), m.seq))
        .collect();
    assert_eq!(marks, [(ALICE, 4)], "bob and carol read nothing yet");
}

#[tokio::test]
async fn invalid_receipts_are_refused() {
    let app = spawn_app().await;
    let public = app.public_room(ALICE, "general", &[]).await;
    let private = app.private_room(ALICE, "secret", &[]).await;

    let unspecified = app
        .mark(ALICE, &public.id, ReceiptKind::Unspecified, 1)
        .await;
    assert_eq!(code(unspecified), Code::InvalidArgument);
    let negative = app.mark(ALICE, &public.id, ReceiptKind::Read, -1).await;
    assert_eq!(code(negative), Code::InvalidArgument);
    let outsider = app.mark(CAROL, &public.id, ReceiptKind::Read, 1).await;
    assert_eq!(code(outsider), Code::PermissionDenied, "not a member");
    let hidden = app.mark(CAROL, &private.id, ReceiptKind::Read, 1).await;
    assert_eq!(code(hidden), Code::NotFound);
    assert!(app.list_rooms(CAROL).await.is_empty());
}

#[tokio::test]
async fn unread_counts_messages_from_others_after_the_read_mark() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let from_bob = app.send_many(BOB, &room.id, "b", 4).await;
    app.send_many(ALICE, &room.id, "a", 2).await;
    assert_eq!(app.unread(ALICE, &room.id).await, 4);

    let mark = app
        .mark(ALICE, &room.id, ReceiptKind::Read, from_bob[1].seq)
        .await
        .expect("mark");
    assert_eq!(mark, from_bob[1].seq);
    assert_eq!(app.unread(ALICE, &room.id).await, 2);
    assert_eq!(app.unread(BOB, &room.id).await, 2, "bob's mark is his own");

    app.delete(BOB, &room.id, &from_bob[3].id)
        .await
        .expect("delete");
    assert_eq!(
        app.unread(ALICE, &room.id).await,
        1,
        "deleted messages are not unread"
    );
}

/// Alice's moved mark arrives once on the room's channel and once on hers.
async fn expect_receipt(tap: &mut Tap, room_id: &str, kind: &str, seq: i64) {
    let mut channels = Vec::new();
    for _ in 0..2 {
        let (channel, envelope) = tap.next().await;
        assert_eq!(envelope.kind, "receipt");
        assert_eq!(envelope.room_id, room_id);
        assert_eq!(
            body(&envelope),
            json!({
                "type": "receipt",
                "room": room_id,
                "user": ALICE,
                "kind": kind,
                "seq": seq,
            })
        );
        channels.push(channel);
    }
    channels.sort();
    let mut expected = vec![room_channel(room_id), user_channel(ALICE)];
    expected.sort();
    assert_eq!(channels, expected, "one envelope per channel");
}

#[tokio::test]
async fn a_moved_mark_is_published_once_to_the_room_and_the_user() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    app.send_many(BOB, &room.id, "b", 6).await;
    let mut tap = app
        .tap(&[room_channel(&room.id), user_channel(ALICE)])
        .await;

    let mark = app.mark(ALICE, &room.id, ReceiptKind::Read, 5);
    assert_eq!(mark.await.expect("mark"), 5);
    expect_receipt(&mut tap, &room.id, "read", 5).await;
    tap.assert_idle();

    let older = app.mark(ALICE, &room.id, ReceiptKind::Read, 3);
    assert_eq!(older.await.expect("an older mark"), 5);
    let same = app.mark(ALICE, &room.id, ReceiptKind::Read, 5);
    assert_eq!(same.await.expect("the same mark"), 5);
    // Had the older marks published anything, it would arrive before this.
    let newer = app.mark(ALICE, &room.id, ReceiptKind::Read, 6);
    assert_eq!(newer.await.expect("a newer mark"), 6);
    expect_receipt(&mut tap, &room.id, "read", 6).await;

    let delivered = app.mark(ALICE, &room.id, ReceiptKind::Delivered, 8);
    assert_eq!(delivered.await.expect("delivered"), 8);
    expect_receipt(&mut tap, &room.id, "delivered", 8).await;
    tap.assert_idle();
}

#[tokio::test]
async fn delivered_marks_do_not_move_read_but_read_marks_move_delivered() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let from_alice = app.send_many(ALICE, &room.id, "a", 6).await;
    assert_eq!(from_alice.last().map(|m| m.seq), Some(8));

    let delivered = app.mark(BOB, &room.id, ReceiptKind::Delivered, 6);
    assert_eq!(delivered.await.expect("delivered"), 6);
    assert_eq!(app.unread(BOB, &room.id).await, 6, "delivered is not read");
    let read = app.mark(BOB, &room.id, ReceiptKind::Read, 4);
    assert_eq!(read.await.expect("read"), 4, "read was not moved to 6");
    assert_eq!(app.unread(BOB, &room.id).await, 4);
    let delivered = app.mark(BOB, &room.id, ReceiptKind::Delivered, 5);
    assert_eq!(
        delivered.await.expect("delivered"),
        6,
        "read 4 left delivered at 6"
    );

    // Read 7 moves delivered too: a later delivered mark at 6 cannot go back.
    let read = app.mark(BOB, &room.id, ReceiptKind::Read, 7);
    assert_eq!(read.await.expect("read"), 7);
    let delivered = app.mark(BOB, &room.id, ReceiptKind::Delivered, 6);
    assert_eq!(delivered.await.expect("delivered"), 7);
    assert_eq!(app.unread(BOB, &room.id).await, 1);
}
