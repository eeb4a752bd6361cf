//! Two chat-service replicas — each with its own pools and writer, as two
//! processes would have — appending to the same rooms of one Postgres
//! database: seqs are never taken twice, never skipped, and a reader never
//! sees one before every lower one. Postgres only (`PARLEY_TEST_DATABASE_URL`):
//! SQLite has one writer per file, and one process per file.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{GetEventsRequest, Message};
use tonic::Status;

use common::grpc::ServiceChannel;

use crate::helpers::*;

/// Sends in flight per replica.
const IN_FLIGHT: usize = 64;

/// Sends `count` messages through `client` into `rooms` (round robin), at
/// most `IN_FLIGHT` at once; returns every send's outcome.
async fn send_all(
    client: ChatServiceClient<ServiceChannel>,
    tag: &str,
    rooms: &[String],
    count: usize,
) -> Vec<Result<Message, Status>> {
    let mut pending = FuturesUnordered::new();
    let mut outcomes = Vec::with_capacity(count);
    for n in 0..count {
        let room = &rooms[n % rooms.len()];
        let mut client = client.clone();
        let request = message(room, &format!("{tag}-{n}"));
        pending.push(async move {
            client
                .send_message(actor(ALICE).request(request))
                .await
                .map(|r| r.into_inner().message.expect("message"))
        });
        if pending.len() >= IN_FLIGHT
            && let Some(outcome) = pending.next().await
        {
            outcomes.push(outcome);
        }
    }
    while let Some(outcome) = pending.next().await {
        outcomes.push(outcome);
    }
    outcomes
}

/// Reads `room`'s log through `client` until `done` is set and the log is
/// read to its end, checking every page starts right after what was read:
/// a seq visible before a lower one would show up as a gap here.
async fn follow(
    client: ChatServiceClient<ServiceChannel>,
    room: String,
    done: Arc<AtomicBool>,
) -> Vec<i64> {
    let mut seqs = Vec::new();
    let mut after = 0;
    loop {
        let finished = done.load(Ordering::Acquire);
        let page = client
            .clone()
            .get_events(actor(ALICE).request(GetEventsRequest {
                room_id: room.clone(),
                after,
                limit: 0,
            }))
            .await
            .expect("events")
            .into_inner();
        for event in &page.events {
            assert_eq!(
                event.seq,
                after + 1,
                "a reader saw seq {} right after {after}",
                event.seq
            );
            after = event.seq;
            seqs.push(event.seq);
        }
        if finished && !page.has_more {
            return seqs;
        }
        if page.events.is_empty() {
            tokio::task::yield_now().await;
        }
    }
}

/// Checks the rooms' logs and histories after both replicas' sends.
async fn check(app: &TestApp, rooms: &[String], sent: &[Result<Message, Status>]) {
    let failures: Vec<&Status> = sent.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(failures.is_empty(), "refused sends: {failures:?}");
    let acknowledged: Vec<&Message> = sent.iter().filter_map(|r| r.as_ref().ok()).collect();
    for room in rooms {
        let mut events = Vec::new();
        let mut after = 0;
        loop {
            let page = app.events(ALICE, room, after).await.expect("events");
            after = page.events.last().map_or(after, |e| e.seq);
            events.extend(page.events);
            if !page.has_more {
                break;
            }
        }
        let seqs: Vec<i64> = events.iter().map(|e| e.seq).collect();
        let n = seqs.len() as i64;
        assert_eq!(
            seqs,
            (1..=n).collect::<Vec<_>>(),
            "room {room}: seqs 1..={n}"
        );

        let mine: Vec<&&Message> = acknowledged.iter().filter(|m| m.room_id == *room).collect();
        let stored: HashMap<i64, String> = events
            .iter()
            .filter(|e| e.kind == "message.new")
            .map(|e| {
                (
                    e.seq,
                    json(e)["message"]["id"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string(),
                )
            })
            .collect();
        assert_eq!(stored.len(), mine.len(), "room {room}: one event per send");
        let mut ids = HashSet::new();
        for message in mine {
            assert_eq!(
                stored.get(&message.seq),
                Some(&message.id),
                "the acknowledged seq {} holds its message",
                message.seq
            );
            assert!(ids.insert(message.id.clone()), "stored once");
        }
    }
}

#[tokio::test]
async fn replicas_writing_to_one_room_take_every_seq_once_in_order() {
    if !common::testing::uses_postgres() {
        eprintln!("note: PARLEY_TEST_DATABASE_URL is not set; skipping");
        return;
    }
    let app = spawn_app().await;
    let replica = app.replica().await;
    let room = app.public_room(ALICE, "busy", &[]).await.id;
    let rooms = [room.clone()];

    let done = Arc::new(AtomicBool::new(false));
    let reader = tokio::spawn(follow(replica.client.clone(), room.clone(), done.clone()));
    let (a, b) = tokio::join!(
        send_all(app.client.clone(), "a", &rooms, 500),
        send_all(replica.client.clone(), "b", &rooms, 500),
    );
    done.store(true, Ordering::Release);
    let seen = reader.await.expect("reader");

    let sent: Vec<_> = a.into_iter().chain(b).collect();
    check(&app, &rooms, &sent).await;
    let last = *seen.last().expect("the reader read the log");
    assert_eq!(seen, (1..=last).collect::<Vec<_>>());
    assert!(last >= 1000, "the reader read every send");
}

#[tokio::test]
async fn replicas_writing_to_the_same_rooms_in_any_order_never_deadlock() {
    if !common::testing::uses_postgres() {
        eprintln!("note: PARLEY_TEST_DATABASE_URL is not set; skipping");
        return;
    }
    let app = spawn_app().await;
    let replica = app.replica().await;
    let mut rooms = Vec::new();
    for name in ["one", "two", "three"] {
        rooms.push(app.public_room(ALICE, name, &[]).await.id);
    }
    let reversed: Vec<String> = rooms.iter().rev().cloned().collect();
    // Each group commit of A takes the rooms' seqs in one order, B's in the other.
    let (a, b) = tokio::join!(
        send_all(app.client.clone(), "a", &rooms, 600),
        send_all(replica.client.clone(), "b", &reversed, 600),
    );
    let sent: Vec<_> = a.into_iter().chain(b).collect();
    check(&app, &rooms, &sent).await;
}

/// Each replica keeps its own cache of recent events: events the other one
/// appended, edits it made to earlier events, are still in every rejoin.
#[tokio::test]
async fn rejoins_on_either_replica_hold_what_the_other_appended() {
    if !common::testing::uses_postgres() {
        eprintln!("note: PARLEY_TEST_DATABASE_URL is not set; skipping");
        return;
    }
    let app = spawn_app().await;
    let replica = app.replica().await;
    let room = app.public_room(ALICE, "shared", &[]).await.id;
    let rooms = [room.clone()];
    let replay = |client: ChatServiceClient<ServiceChannel>, since: i64| {
        let room = room.clone();
        async move {
            let request = proto::chat::v1::JoinRoomRequest {
                room_id: room,
                since: Some(since),
                ..Default::default()
            };
            let mut client = client;
            let joined = client
                .join_room(actor(ALICE).request(request))
                .await
                .expect("rejoin")
                .into_inner();
            assert!(joined.recovered);
            let events: Vec<_> = joined.events.into_iter().map(|e| (e.seq, e.json)).collect();
            (joined.last_seq, events)
        }
    };
    let mut edited = false;
    for round in 0..6 {
        // Appends alternate between the replicas, and each rejoins on both.
        let writer = if round % 2 == 0 {
            &app.client
        } else {
            &replica.client
        };
        let sent = send_all(writer.clone(), &format!("r{round}"), &rooms, 3).await;
        if round == 3 {
            let first = sent[0].as_ref().expect("sent");
            let request = proto::chat::v1::EditMessageRequest {
                room_id: room.clone(),
                message_id: first.id.clone(),
                text: "edited on the other replica".into(),
            };
            replica
                .client
                .clone()
                .edit_message(actor(ALICE).request(request))
                .await
                .expect("edit");
            edited = true;
        }
        for since in [0, 2, 5] {
            let (last_a, on_app) = replay(app.client.clone(), since).await;
            let (last_b, on_replica) = replay(replica.client.clone(), since).await;
            assert_eq!(last_a, last_b);
            assert_eq!(on_app, on_replica, "round {round}, since {since}");
            let log = app.events(ALICE, &room, since).await.expect("events");
            let log: Vec<_> = log.events.into_iter().map(|e| (e.seq, e.json)).collect();
            assert_eq!(on_app, log, "round {round}, since {since}");
        }
    }
    assert!(edited);
    assert!(app.recent_reads("hit") > 0, "the cache answered some");
}
