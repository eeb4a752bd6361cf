//! `ChatBackendService.Watch`: every room's log in position order, resumed
//! from a position the consumer holds — across a chat-service restart too —
//! with no event lost and none twice; positions outside the log are
//! `OUT_OF_RANGE` naming the oldest one.

use std::collections::HashSet;

use proto::chat::v1::{DeleteRoomRequest, WatchEvent, WatchRequest};
use serde_json::Value;
use tonic::{Code, Streaming};

use crate::helpers::*;

/// A Watch stream from `since_position`, optionally of some rooms only.
async fn watch(app: &TestApp, since_position: i64, rooms: &[&str]) -> Streaming<WatchEvent> {
    open(
        app,
        WatchRequest {
            room_ids: rooms.iter().map(|r| r.to_string()).collect(),
            since_position,
            from_now: false,
        },
    )
    .await
    .expect("watch")
}

async fn open(
    app: &TestApp,
    request: WatchRequest,
) -> Result<Streaming<WatchEvent>, tonic::Status> {
    Ok(app.backend.clone().watch(request).await?.into_inner())
}

async fn next(stream: &mut Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(RECEIVE_TIMEOUT, stream.message())
        .await
        .expect("an event in time")
        .expect("stream healthy")
        .expect("stream open")
}

/// Events up to and including the `message.new` of `message_id`.
async fn until_message(stream: &mut Streaming<WatchEvent>, message_id: &str) -> Vec<WatchEvent> {
    let mut events = Vec::new();
    loop {
        let event = next(stream).await;
        let done = message_of(&event).as_deref() == Some(message_id);
        events.push(event);
        if done {
            return events;
        }
    }
}

/// The id of the message a `message.new` event carries.
fn message_of(event: &WatchEvent) -> Option<String> {
    if event.kind != "message.new" {
        return None;
    }
    let json: Value = serde_json::from_str(&event.json).ok()?;
    json["message"]["id"].as_str().map(str::to_string)
}

fn positions(events: &[WatchEvent]) -> Vec<i64> {
    events.iter().map(|e| e.position).collect()
}

#[tokio::test]
async fn watch_resumes_across_a_restart_with_no_loss_and_no_duplicate() {
    let app = spawn_app().await;
    let a = app.public_room(ALICE, "watch-a", &[BOB]).await;
    let b = app.public_room(BOB, "watch-b", &[ALICE]).await;
    let mut sent = Vec::new();
    for i in 0..5 {
        let room = if i % 2 == 0 { &a.id } else { &b.id };
        sent.push(
            app.send(ALICE, room, &format!("before {i}"))
                .await
                .expect("send"),
        );
    }

    // A consumer reads everything, but has processed only part of it when
    // it goes away: it resumes from the last position it processed.
    let mut stream = watch(&app, 0, &[]).await;
    let first = until_message(&mut stream, &sent[4].id).await;
    let processed = first.len() - 3;
    let resume_at = first[processed - 1].position;
    drop(stream);

    // More is written while nobody watches, then chat-service restarts,
    // then more is written.
    for i in 0..5 {
        sent.push(
            app.send(BOB, &a.id, &format!("away {i}"))
                .await
                .expect("send"),
        );
    }
    let app = app.restart().await;
    for i in 0..5 {
        sent.push(
            app.send(ALICE, &b.id, &format!("after {i}"))
                .await
                .expect("send"),
        );
    }

    let mut resumed = watch(&app, resume_at, &[]).await;
    let last = sent.last().expect("sent").id.clone();
    let second = until_message(&mut resumed, &last).await;
    let mut seen: Vec<WatchEvent> = first[..processed].to_vec();
    seen.extend(second);

    // Strictly increasing positions: nothing twice.
    let order = positions(&seen);
    assert!(order.windows(2).all(|w| w[0] < w[1]), "{order:?}");
    // Nothing lost: exactly what a full read of the log holds.
    let mut full = watch(&app, 0, &[]).await;
    let everything = until_message(&mut full, &last).await;
    assert_eq!(order, positions(&everything));
    let messages: Vec<String> = seen.iter().filter_map(message_of).collect();
    let ids: Vec<String> = sent.iter().map(|m| m.id.clone()).collect();
    assert_eq!(messages, ids, "every message once, in commit order");
    // Each room's events keep their seq order.
    for room in [&a.id, &b.id] {
        let seqs: Vec<i64> = seen
            .iter()
            .filter(|e| e.room_id == *room)
            .map(|e| e.seq)
            .collect();
        assert_eq!(
            seqs,
            (1..=seqs.len() as i64).collect::<Vec<_>>(),
            "room {room}"
        );
    }

    // The resumed stream is live: what is written next arrives.
    let live = app.send(BOB, &a.id, "live").await.expect("send");
    let event = next(&mut resumed).await;
    assert_eq!(message_of(&event), Some(live.id));
    assert!(event.position > *order.last().expect("positions"));
}

#[tokio::test]
async fn watch_filters_rooms_and_a_consumer_far_behind_gets_everything_in_order() {
    let app = spawn_app().await;
    let a = app.public_room(ALICE, "filter-a", &[]).await;
    let b = app.public_room(ALICE, "filter-b", &[]).await;
    // More than one page and the stream's buffer, written before reading.
    let mut in_a = Vec::new();
    for i in 0..300 {
        let room = if i % 3 == 0 { &b.id } else { &a.id };
        let message = app.send(ALICE, room, &format!("m{i}")).await.expect("send");
        if *room == a.id {
            in_a.push(message.id);
        }
    }
    let mut stream = watch(&app, 0, &[&a.id]).await;
    let events = until_message(&mut stream, in_a.last().expect("sent")).await;
    assert!(events.iter().all(|e| e.room_id == a.id));
    let messages: Vec<String> = events.iter().filter_map(message_of).collect();
    assert_eq!(messages, in_a);
    let order = positions(&events);
    assert!(order.windows(2).all(|w| w[0] < w[1]));

    // `from_now` skips the past.
    let mut fresh = open(
        &app,
        WatchRequest {
            room_ids: Vec::new(),
            since_position: 0,
            from_now: true,
        },
    )
    .await
    .expect("watch");
    let new = app.send(ALICE, &b.id, "new").await.expect("send");
    assert_eq!(message_of(&next(&mut fresh).await), Some(new.id));
}

#[tokio::test]
async fn watch_refuses_positions_outside_the_log_naming_the_oldest() {
    let app = spawn_app().await;
    let gone = app.public_room(ALICE, "to-delete", &[]).await;
    app.send_many(ALICE, &gone.id, "old", 3).await;
    let kept = app.public_room(BOB, "kept", &[]).await;
    let kept_message = app.send(BOB, &kept.id, "kept").await.expect("send");

    let mut stream = watch(&app, 0, &[]).await;
    let events = until_message(&mut stream, &kept_message.id).await;
    let head = events.last().expect("events").position;
    let first_kept = events
        .iter()
        .find(|e| e.room_id == kept.id)
        .expect("kept room's events")
        .position;
    let consumer = events[0].position;

    // Unknown: past the newest position.
    let status = open(
        &app,
        WatchRequest {
            since_position: head + 10,
            ..WatchRequest::default()
        },
    )
    .await
    .expect_err("past the head");
    assert_eq!(status.code(), Code::OutOfRange);
    assert_eq!(
        status
            .metadata()
            .get("x-parley-oldest-position")
            .map(|v| v.to_str().ok()),
        Some(Some(events[0].position.to_string().as_str()))
    );

    // Too old: the events after the consumer's position were removed with
    // their room.
    app.backend
        .clone()
        .delete_room(DeleteRoomRequest {
            room_id: gone.id.clone(),
        })
        .await
        .expect("delete room");
    let status = open(
        &app,
        WatchRequest {
            since_position: consumer,
            ..WatchRequest::default()
        },
    )
    .await
    .expect_err("events after it are gone");
    assert_eq!(status.code(), Code::OutOfRange);
    let oldest = first_kept.to_string();
    assert!(
        status
            .message()
            .contains(&format!("oldest available is {oldest}")),
        "{status:?}"
    );
    assert_eq!(
        status
            .metadata()
            .get("x-parley-oldest-position")
            .map(|v| v.to_str().ok()),
        Some(Some(oldest.as_str()))
    );
    // Resuming from just before the oldest works, and 0 always does.
    let mut resumed = watch(&app, first_kept - 1, &[]).await;
    assert_eq!(next(&mut resumed).await.position, first_kept);
    let mut from_start = watch(&app, 0, &[]).await;
    assert_eq!(next(&mut from_start).await.position, first_kept);

    let status = open(
        &app,
        WatchRequest {
            since_position: -1,
            ..WatchRequest::default()
        },
    )
    .await
    .expect_err("negative");
    assert_eq!(status.code(), Code::InvalidArgument);
    let too_many: HashSet<String> = (0..1001).map(|i| format!("r{i}")).collect();
    let status = open(
        &app,
        WatchRequest {
            room_ids: too_many.into_iter().collect(),
            ..WatchRequest::default()
        },
    )
    .await
    .expect_err("too many rooms");
    assert_eq!(status.code(), Code::OutOfRange);
}
