//! The cache of each room's latest events: a storm of `room.join{since}`
//! is answered from memory, and always exactly as the log would answer it
//! (after edits and deletes rewrote earlier events, after another replica
//! appended, with the cache off).

use proto::chat::v1::{Message, RoomEvent, SendMessageRequest};

use crate::helpers::*;

/// What a rejoin with `since` replays, as (seq, JSON) pairs.
async fn replay(app: &TestApp, user: &str, room_id: &str, since: i64) -> Vec<(i64, String)> {
    let joined = app.join(user, room_id, Some(since)).await.expect("rejoin");
    assert!(joined.recovered && !joined.has_more, "since {since}");
    pairs(&joined.events)
}

fn pairs(events: &[RoomEvent]) -> Vec<(i64, String)> {
    events.iter().map(|e| (e.seq, e.json.clone())).collect()
}

/// The log itself after `since`, read with `GetEvents`.
async fn log_after(app: &TestApp, room_id: &str, since: i64) -> Vec<(i64, String)> {
    let page = app.events(ALICE, room_id, since).await.expect("events");
    pairs(&page.events)
}

async fn reply(app: &TestApp, room_id: &str, to: &Message, text: &str) -> Message {
    let request = SendMessageRequest {
        reply_to: Some(to.id.clone()),
        ..message(room_id, text)
    };
    let sent = app.send_request(BOB, request).await.expect("reply");
    sent.message.expect("message")
}

#[tokio::test]
async fn a_storm_of_rejoins_reads_the_latest_events_from_memory() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "storm", &[]).await;
    app.join(BOB, &room.id, None).await.expect("bob joins");
    app.send_many(ALICE, &room.id, "m", 20).await;
    let last_seq = app.join(BOB, &room.id, None).await.expect("join").last_seq;

    let misses = app.recent_reads("miss");
    for since in (0..last_seq).rev().chain(0..last_seq) {
        assert_eq!(
            replay(&app, BOB, &room.id, since).await,
            log_after(&app, &room.id, since).await,
            "since {since}"
        );
    }
    assert_eq!(
        app.recent_reads("hit"),
        2 * last_seq as u64,
        "every rejoin was answered from memory"
    );
    assert_eq!(app.recent_reads("miss"), misses);
}

#[tokio::test]
async fn edits_and_deletes_are_replayed_as_they_now_stand() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "quotes", &[]).await;
    app.join(BOB, &room.id, None).await.expect("bob joins");
    let original = app.send(ALICE, &room.id, "helo").await.expect("send");
    let quoting = reply(&app, &room.id, &original, "what?").await;
    let doomed = app.send(ALICE, &room.id, "oops").await.expect("send");
    let since = original.seq - 1;
    // The rejoin before the changes is answered from memory.
    let before = replay(&app, BOB, &room.id, since).await;
    assert!(before.iter().any(|(_, json)| json.contains("\"helo\"")));

    app.edit(ALICE, &room.id, &original.id, "hello")
        .await
        .expect("edit");
    app.delete(ALICE, &room.id, &doomed.id)
        .await
        .expect("delete");
    // The edit rewrote the quote in the reply's `message.new`, and the
    // delete made the deleted message's `message.new` a tombstone.
    let after = replay(&app, BOB, &room.id, since).await;
    assert_eq!(after, log_after(&app, &room.id, since).await);
    let reply_event = &after
        .iter()
        .find(|(seq, _)| *seq == quoting.seq)
        .expect("reply")
        .1;
    assert!(
        reply_event.contains("hello") && !reply_event.contains("helo\""),
        "{reply_event}"
    );
    let tombstone = &after
        .iter()
        .find(|(seq, _)| *seq == doomed.seq)
        .expect("deleted")
        .1;
    assert!(!tombstone.contains("oops"), "{tombstone}");

    // Later rejoins fill the cache again and are answered from it.
    let hits = app.recent_reads("hit");
    let again = replay(&app, BOB, &room.id, since).await;
    assert_eq!(again, after);
    let sent = app.send(ALICE, &room.id, "more").await.expect("send");
    let last = replay(&app, BOB, &room.id, sent.seq - 1).await;
    assert_eq!(last, log_after(&app, &room.id, sent.seq - 1).await);
    assert!(app.recent_reads("hit") > hits, "the cache answers again");
}

#[tokio::test]
async fn rejoins_answer_the_same_with_the_cache_off() {
    let on = spawn_app().await;
    let off = spawn_app_with(|c| c.recent_events_per_room = 0).await;
    let mut answers = Vec::new();
    for app in [&on, &off] {
        let room = app.public_room(ALICE, "same", &[]).await;
        app.join(BOB, &room.id, None).await.expect("bob joins");
        let sent = app.send_many(ALICE, &room.id, "m", 5).await;
        app.edit(ALICE, &room.id, &sent[1].id, "edited")
            .await
            .expect("edit");
        app.send_many(BOB, &room.id, "b", 3).await;
        let mut seen = Vec::new();
        for since in 0..10 {
            let events = replay(app, BOB, &room.id, since).await;
            // Ids differ between the two apps; kinds and order must not.
            seen.push(
                events
                    .iter()
                    .map(|(seq, json)| (*seq, kind(json)))
                    .collect::<Vec<_>>(),
            );
        }
        answers.push(seen);
    }
    assert_eq!(answers[0], answers[1]);
    assert_eq!(off.recent_reads("hit"), 0, "the cache is off");
    assert!(on.recent_reads("hit") > 0);
}

/// With a small cache, rooms that are not read fall out of it and their
/// rejoins are read from the log, still right.
#[tokio::test]
async fn rooms_beyond_the_cache_are_read_from_the_log() {
    let app = spawn_app_with(|c| {
        c.recent_events_per_room = 4;
        c.recent_events_max_bytes = 4_000;
    })
    .await;
    let mut rooms = Vec::new();
    for n in 0..4 {
        let room = app.public_room(ALICE, &format!("room {n}"), &[]).await;
        app.send_many(ALICE, &room.id, "m", 6).await;
        rooms.push(room);
    }
    for room in &rooms {
        for since in [0, 3, 5] {
            let joined = app
                .join(ALICE, &room.id, Some(since))
                .await
                .expect("rejoin");
            assert_eq!(
                pairs(&joined.events),
                log_after(&app, &room.id, since).await
            );
        }
    }
    assert!(app.recent_reads("miss") > 0, "not everything fits");
}

fn kind(json: &str) -> String {
    let value: serde_json::Value = serde_json::from_str(json).expect("event JSON");
    value["type"].as_str().unwrap_or_default().to_string()
}
