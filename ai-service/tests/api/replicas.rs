//! Two ai-service replicas sharing Redis (`ai.backend = "redis"`), one
//! chat-service and one bus behave as one: a reply running on one is listed
//! and cancelled through the other, and quotas count across both. Run with
//! `PARLEY_TEST_REDIS_URL`; skipped without it.

use std::time::{Duration, Instant};

use common::ErrorCode;
use common::config::Backend;
use common::testing::Reply;
use proto::ai::v1::{CancelRequest, ListStreamsRequest, StreamState};
use proto::chat::v1::Visibility;
use tonic::Code;

use crate::helpers::*;

/// Longest a cancel through another replica may take: well under the lease
/// renewal (10 s), so it travelled over the bus.
const PROMPT: Duration = Duration::from_secs(3);

/// Replica A (answering `a`) and replica B (answering `b`) on one Redis
/// prefix of their own; `None` without `PARLEY_TEST_REDIS_URL`.
async fn replicas(
    a: Reply,
    b: Reply,
    adjust: impl FnOnce(&mut common::config::AiConfig),
) -> Option<(TestApp, TestApp)> {
    let Some(url) = common::testing::test_redis_url() else {
        eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping");
        return None;
    };
    let prefix = format!("{}:", common::ids::new_id("ai-test"));
    let first = spawn_app(a, |c| {
        c.backend = Backend::Redis;
        c.redis_url = url;
        c.redis_prefix = prefix;
        adjust(c);
    })
    .await;
    let second = first.replica(b).await;
    Some((first, second))
}

async fn list(app: &TestApp, room: &str) -> Vec<StreamState> {
    app.client
        .clone()
        .list_streams(ListStreamsRequest {
            room_id: room.into(),
        })
        .await
        .expect("list")
        .into_inner()
        .streams
}

async fn cancel(
    app: &TestApp,
    actor: &common::grpc::Actor,
    stream_id: &str,
) -> Result<(), tonic::Status> {
    app.client
        .clone()
        .cancel(actor.request(CancelRequest {
            stream_id: stream_id.into(),
        }))
        .await
        .map(|_| ())
}

#[tokio::test]
async fn a_reply_running_on_one_replica_is_listed_and_cancelled_through_another() {
    let Some((a, b)) = replicas(
        Reply::stall(&["partial ", "text"]),
        Reply::stall(&["unused"]),
        |_| {},
    )
    .await
    else {
        return;
    };
    let room = a.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = a.tap(&room.id).await;
    let asked = a.ask_as(&alice(), ask(&room.id, "q")).await.expect("ask");
    tap.next_of(&["ai.delta"]).await;
    tap.next_of(&["ai.delta"]).await;

    // A late joiner whose room.join lands on B sees A's reply so far.
    let listed = list(&b, &room.id).await;
    assert_eq!(listed.len(), 1, "{listed:?}");
    assert_eq!(listed[0].stream_id, asked.stream_id);
    assert_eq!(listed[0].room_id, room.id);
    assert_eq!(listed[0].text_so_far, "partial text");
    assert_eq!(listed[0].index, 2);

    // The permission rules hold on B too.
    let status = cancel(&b, &bob(), &asked.stream_id)
        .await
        .expect_err("bob neither asked nor owns the room");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = cancel(&b, &alice(), "s_nope").await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    // Alice's cancel through B stops the model request on A at once.
    let started = Instant::now();
    cancel(&b, &alice(), &asked.stream_id)
        .await
        .expect("cancel through B");
    a.model.wait_abandoned(1).await;
    assert!(
        started.elapsed() < PROMPT,
        "A stopped after {:?}",
        started.elapsed()
    );
    let (_, end) = tap.reply(&asked.stream_id).await;
    assert_eq!(end["type"], "ai.error");
    assert_eq!(end["error"]["code"], "cancelled");
    assert_eq!(end["message"]["text"], "partial text");
    assert!(b.model.requests().is_empty(), "B never generated");
    assert!(list(&a, &room.id).await.is_empty());
    assert!(list(&b, &room.id).await.is_empty(), "unlisted everywhere");
}

#[tokio::test]
async fn quotas_count_across_replicas() {
    let Some((a, b)) = replicas(Reply::stall(&["on a"]), Reply::stall(&["on b"]), |c| {
        c.concurrent_streams = 1;
        c.requests_per_minute = 2;
    })
    .await
    else {
        return;
    };
    let room = a.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = a.tap(&room.id).await;

    // One reply at a time, wherever it runs.
    let first = a.ask_as(&alice(), ask(&room.id, "one")).await.expect("ask");
    tap.next_of(&["ai.delta"]).await;
    let status = b
        .ask_as(&alice(), ask(&room.id, "two"))
        .await
        .expect_err("alice's only slot is taken on A");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(
        ErrorCode::retry_after(&status),
        Some(Duration::from_secs(1)),
        "busy, not over the minute's questions"
    );
    cancel(&b, &alice(), &first.stream_id)
        .await
        .expect("cancel");
    tap.reply(&first.stream_id).await;

    // A's reply ended and gave its slot back: B may answer.
    let second = b
        .ask_as(&alice(), ask(&room.id, "two"))
        .await
        .expect("the slot is free again");
    tap.next_of(&["ai.delta"]).await;
    cancel(&a, &alice(), &second.stream_id)
        .await
        .expect("cancel");
    b.model.wait_abandoned(1).await;
    tap.reply(&second.stream_id).await;

    // Two questions a minute in all: both replicas refuse the third.
    for replica in [&a, &b] {
        let status = replica
            .ask_as(&alice(), ask(&room.id, "three"))
            .await
            .expect_err("two questions a minute across replicas");
        assert_eq!(status.code(), Code::ResourceExhausted);
        let retry_after = ErrorCode::retry_after(&status).expect("hint");
        assert!(
            retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60),
            "{retry_after:?}"
        );
    }
    assert!(
        b.ask_as(&bob_of(&a, &room.id).await, ask(&room.id, "hi"))
            .await
            .is_ok(),
        "per user"
    );
}

/// Bob, after joining the public room.
async fn bob_of(app: &TestApp, room: &str) -> common::grpc::Actor {
    app.chat
        .clone()
        .join_room(bob().request(proto::chat::v1::JoinRoomRequest {
            room_id: room.into(),
            since: None,
            limit: 0,
            ..Default::default()
        }))
        .await
        .expect("join");
    bob()
}
