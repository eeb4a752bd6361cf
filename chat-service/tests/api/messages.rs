//! Messages: seqs and retries, membership, validation, threads, history
//! paging, publishing in seq order, byte-exact storage, and no seq gaps
//! after refused writes.

use chat_service::MAX_METADATA_BYTES;
use common::bus::{Bus, BusEvent, Envelope, room_channel};
use proto::chat::v1::{
    DeleteMessageRequest, GetHistoryRequest, InviteMemberRequest, ReactionRequest,
    RemoveMemberRequest, SendMessageRequest, SendMessageResponse, Visibility,
};
use serde_json::Value;
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn sends_take_consecutive_seqs_and_retries_are_deduplicated() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    assert_eq!(room.last_seq, 2, "two member.joined events");

    let first = app.send(ALICE, &room.id, "one").await.expect("send");
    let request = message(&room.id, "two");
    let second = app.send_request(BOB, request.clone()).await.expect("send");
    let second_message = second.message.expect("message");
    assert_eq!(
        (first.seq, second_message.seq, second.duplicate),
        (3, 4, false)
    );
    assert_eq!(
        second_message.sender.as_ref().map(|s| s.id.as_str()),
        Some(BOB)
    );

    let retry = app.send_request(BOB, request).await.expect("retry");
    assert!(retry.duplicate);
    let retried = retry.message.expect("message");
    assert_eq!((retried.id, retried.seq), (second_message.id, 4));

    let third = app.send(ALICE, &room.id, "three").await.expect("send");
    assert_eq!(third.seq, 5, "a retry consumes no seq");
    let history = app
        .history(ALICE, history_of(&room.id, 0))
        .await
        .expect("history");
    assert_eq!(seqs(&history.messages), [3, 4, 5]);
}

#[tokio::test]
async fn sending_to_a_public_room_needs_membership() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let refused = app.send(CAROL, &room.id, "hi").await;
    assert_eq!(code(refused), Code::PermissionDenied);

    let joined = app.join(CAROL, &room.id, None).await.expect("join");
    assert_eq!(joined.last_seq, 2, "carol's member.joined");
    let sent = app.send(CAROL, &room.id, "hi").await.expect("member sends");
    assert_eq!(sent.seq, 3);
}

#[tokio::test]
async fn invalid_messages_are_refused() {
    let app = spawn_app_with(|config| config.max_text_chars = 50).await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let with = |change: Change| {
        let mut request = message(&room.id, "hello");
        change(&mut request);
        request
    };

    let cases: [(&str, Change, Code); 6] = [
        (
            "empty text",
            |r| r.text = String::new(),
            Code::InvalidArgument,
        ),
        (
            "blank text",
            |r| r.text = " \n ".into(),
            Code::InvalidArgument,
        ),
        (
            "text over the limit",
            |r| r.text = "é".repeat(51),
            Code::OutOfRange,
        ),
        (
            "no client_msg_id",
            |r| r.client_msg_id = String::new(),
            Code::InvalidArgument,
        ),
        (
            "metadata not an object",
            |r| r.metadata_json = "[1]".into(),
            Code::InvalidArgument,
        ),
        (
            "metadata over 4 KiB",
            |r| r.metadata_json = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES)),
            Code::OutOfRange,
        ),
    ];
    for (case, change, expected) in cases {
        let result = app.send_request(ALICE, with(change)).await;
        assert_eq!(code(result), expected, "{case}");
    }

    // The limits are inclusive and count characters, not bytes.
    let at_limit = app
        .send_request(ALICE, with(|r| r.text = "é".repeat(50)))
        .await
        .expect("text at the limit")
        .message
        .expect("message");
    assert_eq!(at_limit.seq, 2, "refused sends consume no seq");
    let with_metadata = app
        .send_request(
            ALICE,
            with(|r| r.metadata_json = r#"{ "k": [1, 2] }"#.into()),
        )
        .await
        .expect("object metadata")
        .message
        .expect("message");
    let metadata: Value = serde_json::from_str(&with_metadata.metadata_json).expect("json");
    assert_eq!(metadata, serde_json::json!({"k": [1, 2]}));
    // `{"a":"…"}` is 8 bytes around the padding: exactly the limit.
    app.send_request(
        ALICE,
        with(|r| r.metadata_json = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES - 8))),
    )
    .await
    .expect("metadata at the limit");
}

#[tokio::test]
async fn replies_join_the_root_thread() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let other_room = app.public_room(ALICE, "other", &[]).await;
    let reply = |to: &str, text: &str| SendMessageRequest {
        thread_id: Some(to.into()),
        ..message(&room.id, text)
    };
    let sent = |response: SendMessageResponse| response.message.expect("message");

    let root = app.send(ALICE, &room.id, "root").await.expect("root");
    let first = sent(
        app.send_request(BOB, reply(&root.id, "r1"))
            .await
            .expect("reply"),
    );
    assert_eq!(first.thread_id.as_deref(), Some(root.id.as_str()));
    let nested = sent(
        app.send_request(ALICE, reply(&first.id, "r2"))
            .await
            .expect("reply to a reply"),
    );
    assert_eq!(nested.thread_id.as_deref(), Some(root.id.as_str()));

    let unknown = app
        .send_request(ALICE, reply("m_no_such_message", "x"))
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    let elsewhere = app
        .send(ALICE, &other_room.id, "elsewhere")
        .await
        .expect("send");
    let across_rooms = app.send_request(ALICE, reply(&elsewhere.id, "x")).await;
    assert_eq!(
        code(across_rooms),
        Code::NotFound,
        "a thread of another room"
    );

    // Noise: a top-level message and another thread.
    let other_root = app.send(BOB, &room.id, "other root").await.expect("send");
    sent(
        app.send_request(BOB, reply(&other_root.id, "o1"))
            .await
            .expect("reply"),
    );

    let thread = app
        .history(
            ALICE,
            GetHistoryRequest {
                thread_id: Some(root.id.clone()),
                ..history_of(&room.id, 0)
            },
        )
        .await
        .expect("thread history");
    assert_eq!(
        ids(&thread.messages),
        [first.id.as_str(), nested.id.as_str()]
    );
    assert!(!thread.has_more);
}

#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let sent = app.send_many(ALICE, &room.id, "m", 25).await;
    assert_eq!(seqs(&sent), (2..=26).collect::<Vec<_>>());
    let page = |before: Option<i64>, after: Option<i64>| {
        let request = GetHistoryRequest {
            before,
            after,
            ..history_of(&room.id, 10)
        };
        app.history(BOB, request)
    };

    let newest = page(None, None).await.expect("newest page");
    assert_eq!(seqs(&newest.messages), (17..=26).collect::<Vec<_>>());
    assert_eq!(ids(&newest.messages), ids(&sent[15..]));
    assert!(newest.has_more);

    let older = page(Some(17), None).await.expect("older page");
    assert_eq!(seqs(&older.messages), (7..=16).collect::<Vec<_>>());
    assert!(older.has_more);
    let oldest = page(Some(7), None).await.expect("oldest page");
    assert_eq!(seqs(&oldest.messages), (2..=6).collect::<Vec<_>>());
    assert!(!oldest.has_more);

    let forward = page(None, Some(6)).await.expect("forward page");
    assert_eq!(seqs(&forward.messages), (7..=16).collect::<Vec<_>>());
    assert!(forward.has_more);
    let last = page(None, Some(16)).await.expect("last forward page");
    assert_eq!(seqs(&last.messages), (17..=26).collect::<Vec<_>>());
    assert!(!last.has_more);
    assert_eq!(last.messages.last().map(|m| m.text.as_str()), Some("m24"));
}

#[tokio::test]
async fn committed_messages_are_published_in_seq_order() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let (subscriber, mut received) = app.bus.subscriber().await.expect("subscriber");
    subscriber
        .subscribe(&room_channel(&room.id))
        .await
        .expect("subscribe");

    let senders = [ALICE, BOB].map(|user| {
        let app_client = app.client.clone();
        let room_id = room.id.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let request = message(&room_id, &format!("{user} {i}"));
                let response = app_client
                    .clone()
                    .send_message(actor(user).request(request))
                    .await
                    .expect("send");
                ids.push(response.into_inner().message.expect("message").id);
            }
            ids
        })
    });
    let mut sent_ids = Vec::new();
    for sender in senders {
        sent_ids.extend(sender.await.expect("sender task"));
    }

    let mut envelopes: Vec<Envelope> = Vec::new();
    while envelopes.len() < 20 {
        let event = tokio::time::timeout(RECEIVE_TIMEOUT, received.recv())
            .await
            .expect("an envelope in time")
            .expect("bus open");
        match event {
            BusEvent::Message { channel, envelope } => {
                assert_eq!(channel, room_channel(&room.id));
                envelopes.push(envelope);
            }
            BusEvent::Resubscribed => panic!("the memory bus never resubscribes"),
        }
    }
    assert!(received.try_recv().is_err(), "exactly 20 envelopes");

    let first = room.last_seq + 1;
    assert_eq!(
        envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (first..first + 20).collect::<Vec<_>>(),
        "consecutive, in order"
    );
    let mut published_ids = Vec::new();
    for envelope in &envelopes {
        assert_eq!(
            (envelope.kind.as_str(), &envelope.room_id),
            ("message.new", &room.id)
        );
        let body: Value = serde_json::from_str(&envelope.json).expect("json");
        assert_eq!(body["seq"], envelope.seq);
        published_ids.push(body["message"]["id"].as_str().expect("id").to_string());
    }
    published_ids.sort();
    sent_ids.sort();
    assert_eq!(published_ids, sent_ids);
}

/// Text and metadata are stored and returned exactly as sent: no escaping,
/// trimming or normalisation, whatever SQL, HTML or Unicode they contain.
#[tokio::test]
async fn text_and_metadata_round_trip_byte_for_byte() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let texts = [
        "'; DROP TABLE messages; --",
        "%_\\ LIKE '%' ESCAPE '\\' _%",
        "\"double\" 'single' `back` $1 ?1 :name @name",
        "<script>alert(1)</script>&amp;&lt;",
        "👍🏽 👨‍👩‍👧 🇳🇴",
        "e\u{301} vs \u{e9}, a\u{308}\u{332}, \u{200b}zero\u{200d}width\u{feff}",
        "  leading and trailing spaces, tabs\t\tand\r\nnew lines\n  ",
        "\u{1F600}\u{10FFFF}\u{7f} RTL \u{202e}txet\u{202c}",
    ];
    let mut sent = Vec::new();
    for (i, text) in texts.iter().enumerate() {
        // Built by serde_json, so its encoding is the canonical one the
        // service stores (it re-encodes metadata).
        let metadata = serde_json::json!({
            "text": text,
            "nested": {"list": [text, i], "sql": "' OR 1=1 --"},
        })
        .to_string();
        let request = SendMessageRequest {
            metadata_json: metadata.clone(),
            ..message(&room.id, text)
        };
        let response = app.send_request(ALICE, request).await.expect("send");
        let stored = response.message.expect("message");
        assert_eq!(stored.text, *text, "as answered");
        assert_eq!(stored.metadata_json, metadata, "as answered");
        sent.push((stored, metadata));
    }

    let history = app
        .history(BOB, history_of(&room.id, 0))
        .await
        .expect("history");
    assert_eq!(history.messages.len(), texts.len());
    for ((message, metadata), (read, text)) in sent.iter().zip(history.messages.iter().zip(texts)) {
        assert_eq!(read.id, message.id);
        assert_eq!(read.text.as_bytes(), text.as_bytes(), "text of {}", read.id);
        assert_eq!(
            read.metadata_json.as_bytes(),
            metadata.as_bytes(),
            "metadata of {}",
            read.id
        );
    }
    let log = app.log(BOB, &room.id).await;
    for (event, text) in log[1..].iter().zip(texts) {
        let body = json(event);
        assert_eq!(body["message"]["text"], text, "logged");
        assert_eq!(body["message"]["metadata"]["text"], text, "logged");
    }
    let rooms = app.list_rooms(ALICE).await;
    assert_eq!(
        room_ids(&rooms),
        [room.id.as_str()],
        "the tables are intact"
    );
}

/// A refused or no-op write rolls its seq back: the log stays gapless.
#[tokio::test]
async fn refused_writes_leave_no_seq_gap() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let direct = app
        .create_room(ALICE, "", Visibility::Direct, &[BOB])
        .await
        .expect("direct room");
    let sent = app.send(ALICE, &room.id, "target").await.expect("send");
    let doomed = app.send(ALICE, &room.id, "doomed").await.expect("send");
    app.delete(ALICE, &room.id, &doomed.id)
        .await
        .expect("delete");
    let popular = app.send(ALICE, &room.id, "popular").await.expect("send");
    let emoji = distinct_emoji(21);
    for e in &emoji[..20] {
        app.react(ALICE, &room.id, &popular.id, e)
            .await
            .expect("react");
    }
    let last_seq = app.log(ALICE, &room.id).await.len() as i64;

    let refused = [
        code(app.edit(BOB, &room.id, &sent.id, "not mine").await),
        code(app.edit(ALICE, &room.id, &sent.id, "").await),
        code(app.edit(ALICE, &room.id, &doomed.id, "back").await),
        code(app.edit(ALICE, &room.id, "m_no_such_message", "x").await),
        code(app.react(BOB, &room.id, &sent.id, "").await),
        code(app.react(BOB, &room.id, "m_no_such_message", "👍").await),
        code(app.react(BOB, &room.id, &doomed.id, "👍").await),
        code(app.react(BOB, &room.id, &popular.id, &emoji[20]).await),
        code(app.unreact(BOB, &room.id, &doomed.id, "👍").await),
        code(app.invite(ALICE, &direct.id, CAROL).await),
        code(app.invite(CAROL, &room.id, DAVE).await),
        code(app.remove_member(ALICE, &room.id, DAVE).await),
        code(app.remove_member(BOB, &room.id, ALICE).await),
        code(app.delete(BOB, &room.id, &sent.id).await),
        code(app.send(CAROL, &room.id, "not a member").await),
    ];
    assert!(refused.iter().all(|c| *c != Code::Ok), "{refused:?}");
    // Writes that change nothing also log nothing.
    app.invite(ALICE, &room.id, BOB).await.expect("a member");
    app.unreact(BOB, &room.id, &sent.id, "👍")
        .await
        .expect("no such reaction");
    app.delete(ALICE, &room.id, &doomed.id)
        .await
        .expect("deleted already");
    app.leave(CAROL, &room.id).await.expect("not a member");

    let next = app.send(BOB, &room.id, "next").await.expect("send");
    assert_eq!(next.seq, last_seq + 1);
    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=last_seq + 1).collect::<Vec<_>>(),
        "gapless"
    );
    let direct_log = app.log(ALICE, &direct.id).await;
    assert_eq!(direct_log.len(), 2);
    let after_direct = app.send(BOB, &direct.id, "hi").await.expect("send");
    assert_eq!(after_direct.seq, 3);
}

/// Refused and no-op writes racing with sends (so they may share a commit
/// with them) leave no gap either, and every send gets a seq of its own.
#[tokio::test]
async fn concurrent_refused_writes_leave_no_seq_gap() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let doomed = app.send(ALICE, &room.id, "doomed").await.expect("send");
    app.delete(ALICE, &room.id, &doomed.id)
        .await
        .expect("delete");
    let popular = app.send(ALICE, &room.id, "popular").await.expect("send");
    let emoji = distinct_emoji(21);
    for e in &emoji[..20] {
        app.react(ALICE, &room.id, &popular.id, e)
            .await
            .expect("react");
    }
    let before = app.log(ALICE, &room.id).await.len() as i64;

    type Outcome = Result<Option<i64>, Code>;
    let mut calls = tokio::task::JoinSet::new();
    let reaction = |message_id: &str, emoji: &str| ReactionRequest {
        room_id: room.id.clone(),
        message_id: message_id.into(),
        emoji: emoji.into(),
    };
    for i in 0..10 {
        for user in [ALICE, BOB] {
            let mut client = app.client.clone();
            let request = actor(user).request(message(&room.id, &format!("{user} {i}")));
            calls.spawn(async move {
                let sent = client.send_message(request).await.map_err(|s| s.code())?;
                Ok::<_, Code>(sent.into_inner().message.map(|m| m.seq))
            });
        }
        let refusals: [(tonic::Request<ReactionRequest>, Code); 2] = [
            (
                actor(BOB).request(reaction("m_no_such_message", "👍")),
                Code::NotFound,
            ),
            (
                actor(BOB).request(reaction(&popular.id, &emoji[20])),
                Code::OutOfRange,
            ),
        ];
        for (request, expected) in refusals {
            let mut client = app.client.clone();
            calls.spawn(async move {
                let refused = client.add_reaction(request).await.map(drop);
                assert_eq!(code(refused), expected);
                Ok(None)
            });
        }
        let mut client = app.client.clone();
        let request = actor(ALICE).request(RemoveMemberRequest {
            room_id: room.id.clone(),
            user_id: CAROL.into(),
        });
        calls.spawn(async move {
            let refused = client.remove_member(request).await.map(drop);
            assert_eq!(code(refused), Code::NotFound);
            Ok(None)
        });
        let mut client = app.client.clone();
        let request = actor(ALICE).request(InviteMemberRequest {
            room_id: room.id.clone(),
            user_id: BOB.into(),
        });
        calls.spawn(async move {
            client.invite_member(request).await.map_err(|s| s.code())?;
            Ok(None)
        });
        let mut client = app.client.clone();
        let request = actor(ALICE).request(DeleteMessageRequest {
            room_id: room.id.clone(),
            message_id: doomed.id.clone(),
        });
        calls.spawn(async move {
            client.delete_message(request).await.map_err(|s| s.code())?;
            Ok(None)
        });
    }
    let mut sent_seqs = Vec::new();
    while let Some(outcome) = calls.join_next().await {
        let outcome: Outcome = outcome.expect("the call's task");
        if let Some(seq) = outcome.expect("sends and no-ops succeed") {
            sent_seqs.push(seq);
        }
    }
    sent_seqs.sort_unstable();
    assert_eq!(
        sent_seqs,
        (before + 1..=before + 20).collect::<Vec<_>>(),
        "the sends took the next 20 seqs"
    );

    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        log.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (1..=before + 20).collect::<Vec<_>>(),
        "gapless, and only the sends were logged"
    );
    let next = app.send(BOB, &room.id, "next").await.expect("send");
    assert_eq!(next.seq, before + 21);
}

/// Retries racing each other (and so possibly sharing a commit) still store
/// one message: every caller gets it, and only one as new.
#[tokio::test]
async fn concurrent_retries_store_one_message() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let request = message(&room.id, "once");
    let mut calls = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let mut client = app.client.clone();
        let request = actor(ALICE).request(request.clone());
        calls.spawn(async move { client.send_message(request).await });
    }
    let mut answers = Vec::new();
    while let Some(answer) = calls.join_next().await {
        let answer = answer.expect("the call's task").expect("send").into_inner();
        let message = answer.message.expect("message");
        answers.push((message.id, message.seq, answer.duplicate));
    }
    let (id, seq, _) = answers[0].clone();
    assert!(
        answers.iter().all(|a| (&a.0, a.1) == (&id, seq)),
        "{answers:?}"
    );
    assert_eq!(answers.iter().filter(|a| !a.2).count(), 1, "one was new");
    assert_eq!(seq, 2);
    assert_eq!(
        kinds(&app.log(ALICE, &room.id).await),
        ["member.joined", "message.new"]
    );
    let history = app
        .history(ALICE, history_of(&room.id, 0))
        .await
        .expect("history");
    assert_eq!(ids(&history.messages), [id.as_str()]);
}

/// Postgres cannot store U+0000 in TEXT, SQLite can: the service must refuse
/// it up front (or store it on both), never fail with `internal`.
#[tokio::test]
async fn a_nul_character_is_stored_or_refused_but_never_internal() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let sent = app.send(ALICE, &room.id, "plain").await.expect("send");
    let nul = "a\u{0}b";
    let stored_or_refused = |what: &str, result: Result<String, tonic::Status>| match result {
        Ok(stored) => assert_eq!(stored, nul, "{what}: stored exactly"),
        Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}"),
    };

    stored_or_refused("send", app.send(ALICE, &room.id, nul).await.map(|m| m.text));
    stored_or_refused(
        "edit",
        app.edit(ALICE, &room.id, &sent.id, nul)
            .await
            .map(|m| m.text),
    );
    stored_or_refused(
        "room name",
        app.create_room(ALICE, nul, Visibility::Private, &[])
            .await
            .map(|r| r.name),
    );
    let joined = app
        .join_as(&actor_named(BOB, nul), &room.id, Some(0))
        .await
        .map(|joined| {
            let last = joined.events.last().expect("bob's member.joined");
            json(last)["user"]["name"]
                .as_str()
                .unwrap_or_default()
                .to_string()
        });
    stored_or_refused("actor name", joined);
}
