//! Reactions: grouped by emoji in history, idempotent adds and removes,
//! the per-message emoji cap, emoji validation, and dead messages.

use proto::chat::v1::Reaction;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn reactions_are_grouped_by_emoji_and_logged_once() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let sent = app.send(CAROL, &room.id, "hi").await;
    assert_eq!(code(sent), Code::PermissionDenied, "carol is no member yet");
    let sent = app.send(BOB, &room.id, "react to me").await.expect("send");

    app.react(ALICE, &room.id, &sent.id, "👍")
        .await
        .expect("alice reacts");
    app.react(BOB, &room.id, &sent.id, "👍")
        .await
        .expect("bob reacts");
    let message = app.message_in_history(ALICE, &room.id, &sent.id).await;
    assert_eq!(
        message.reactions,
        [Reaction {
            emoji: "👍".into(),
            user_ids: vec![ALICE.into(), BOB.into()],
        }]
    );

    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        kinds(&log[log.len() - 2..]),
        ["reaction.added", "reaction.added"]
    );
    let added = json(&log[log.len() - 2]);
    assert_eq!(added["message_id"], sent.id.as_str());
    assert_eq!(added["emoji"], "👍");
    assert_eq!(added["user"]["id"], ALICE);
    assert_eq!(added["seq"], sent.seq + 1);

    app.react(ALICE, &room.id, &sent.id, "👍")
        .await
        .expect("adding again succeeds");
    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        log.len(),
        "adding again logs nothing"
    );

    app.unreact(ALICE, &room.id, &sent.id, "👍")
        .await
        .expect("alice takes hers back");
    let after_remove = app.log(ALICE, &room.id).await;
    assert_eq!(after_remove.len(), log.len() + 1);
    let removed = after_remove.last().expect("an event");
    assert_eq!(removed.kind, "reaction.removed");
    assert_eq!(json(removed)["emoji"], "👍");
    assert_eq!(json(removed)["user"]["id"], ALICE);
    assert_eq!(json(removed)["message_id"], sent.id.as_str());
    let message = app.message_in_history(ALICE, &room.id, &sent.id).await;
    assert_eq!(
        message.reactions,
        [Reaction {
            emoji: "👍".into(),
            user_ids: vec![BOB.into()],
        }]
    );

    app.unreact(ALICE, &room.id, &sent.id, "👍")
        .await
        .expect("removing a missing reaction succeeds");
    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        after_remove.len(),
        "and logs nothing"
    );
}

#[tokio::test]
async fn a_message_takes_at_most_twenty_distinct_emoji() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let sent = app.send(ALICE, &room.id, "popular").await.expect("send");
    let emoji = distinct_emoji(21);
    for e in &emoji[..20] {
        app.react(ALICE, &room.id, &sent.id, e)
            .await
            .expect("one of the first 20");
    }
    let log_len = app.log(ALICE, &room.id).await.len();

    let twenty_first = app.react(ALICE, &room.id, &sent.id, &emoji[20]).await;
    assert_eq!(code(twenty_first), Code::OutOfRange);
    let by_bob = app.react(BOB, &room.id, &sent.id, &emoji[20]).await;
    assert_eq!(code(by_bob), Code::OutOfRange, "whoever adds it");
    assert_eq!(app.log(ALICE, &room.id).await.len(), log_len);

    app.react(BOB, &room.id, &sent.id, &emoji[7])
        .await
        .expect("joining an existing emoji");
    let message = app.message_in_history(ALICE, &room.id, &sent.id).await;
    assert_eq!(
        message
            .reactions
            .iter()
            .map(|r| r.emoji.as_str())
            .collect::<Vec<_>>(),
        emoji[..20].iter().map(String::as_str).collect::<Vec<_>>(),
        "in the order each emoji first appeared"
    );
    assert_eq!(message.reactions[7].user_ids, [ALICE, BOB]);
    assert_eq!(app.log(ALICE, &room.id).await.len(), log_len + 1);
}

#[tokio::test]
async fn invalid_reactions_are_refused() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let sent = app.send(ALICE, &room.id, "target").await.expect("send");
    let doomed = app.send(ALICE, &room.id, "doomed").await.expect("send");
    app.delete(ALICE, &room.id, &doomed.id)
        .await
        .expect("delete");
    let elsewhere = app.public_room(BOB, "other", &[]).await;
    let foreign = app.send(BOB, &elsewhere.id, "other").await.expect("send");
    let log_len = app.log(ALICE, &room.id).await.len();

    let cases = [
        (
            "empty emoji",
            sent.id.as_str(),
            String::new(),
            Code::InvalidArgument,
        ),
        (
            "blank emoji",
            sent.id.as_str(),
            " ".into(),
            Code::InvalidArgument,
        ),
        (
            "17 bytes",
            sent.id.as_str(),
            "x".repeat(17),
            Code::OutOfRange,
        ),
        (
            "deleted message",
            doomed.id.as_str(),
            "👍".into(),
            Code::NotFound,
        ),
        (
            "unknown message",
            "m_no_such_message",
            "👍".into(),
            Code::NotFound,
        ),
        (
            "another room's message",
            foreign.id.as_str(),
            "👍".into(),
            Code::NotFound,
        ),
    ];
    for (case, message_id, emoji, expected) in cases {
        let added = app.react(BOB, &room.id, message_id, &emoji).await;
        assert_eq!(code(added), expected, "add: {case}");
    }
    for (case, message_id) in [
        ("deleted", doomed.id.as_str()),
        ("unknown", "m_no_such_message"),
    ] {
        let removed = app.unreact(BOB, &room.id, message_id, "👍").await;
        assert_eq!(code(removed), Code::NotFound, "remove: {case}");
    }
    let outsider = app.react(CAROL, &room.id, &sent.id, "👍").await;
    assert_eq!(code(outsider), Code::PermissionDenied, "not a member");
    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        log_len,
        "nothing logged"
    );

    // Sixteen bytes is the limit.
    app.react(BOB, &room.id, &sent.id, "👍👍👍👍")
        .await
        .expect("16 bytes");
    let message = app.message_in_history(ALICE, &room.id, &sent.id).await;
    assert_eq!(message.reactions.len(), 1);
    assert_eq!(message.reactions[0].emoji, "👍👍👍👍");
}
