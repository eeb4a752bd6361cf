//! `SendMessages`: the edge's sends over one stream. Items of one lane are
//! stored in the order they came, each is answered once by id, a refused
//! item gets the status its unary call would get and holds nothing up, and
//! a stopping service answers what it read before it ends the stream.

use std::collections::HashMap;

use proto::chat::v1::send_messages_result::Outcome;
use proto::chat::v1::{SendMessagesItem, SendMessagesResult};
use tonic::Status;

use crate::helpers::*;

fn item(id: u64, lane: u64, user: &str, room_id: &str, text: &str) -> SendMessagesItem {
    let actor = actor(user);
    SendMessagesItem {
        id,
        lane,
        request: Some(message(room_id, text)),
        user_id: actor.user_id,
        user_name: actor.name,
        anonymous: actor.anonymous,
        trace_context: HashMap::new(),
    }
}

/// Each item's outcome by id: the stored message's seq, or the status.
fn outcomes(results: Vec<SendMessagesResult>) -> HashMap<u64, Result<i64, Status>> {
    let mut by_id = HashMap::new();
    for result in results {
        let outcome = match result.outcome.expect("an outcome") {
            Outcome::Sent(sent) => Ok(sent.message.expect("message").seq),
            Outcome::Failed(failed) => Err(common::grpc::status_from_headers(&failed.headers)),
        };
        assert!(
            by_id.insert(result.id, outcome).is_none(),
            "item {} answered twice",
            result.id
        );
    }
    by_id
}

#[tokio::test]
async fn each_lane_is_stored_in_the_order_its_items_came_and_a_refusal_holds_nothing_up() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "stream", &[BOB]).await;
    // Two lanes interleaved, every item on the stream before any answer
    // is read; item 50 comes from a non-member, item 51 has no text, item
    // 53 names no user.
    let n = 300;
    let items: Vec<SendMessagesItem> = (0..n)
        .map(|i| match i {
            50 => item(i, 1, CAROL, &room.id, "not a member"),
            51 => item(i, 2, BOB, &room.id, " "),
            53 => SendMessagesItem {
                user_id: String::new(),
                ..item(i, 1, ALICE, &room.id, "nobody")
            },
            _ if i % 2 == 1 => item(i, 1, ALICE, &room.id, &format!("a{i}")),
            _ => item(i, 2, BOB, &room.id, &format!("b{i}")),
        })
        .collect();
    let mut answers = app
        .client
        .clone()
        .send_messages(futures::stream::iter(items))
        .await
        .expect("stream")
        .into_inner();
    let mut results = Vec::new();
    while let Some(result) = answers.message().await.expect("answer") {
        results.push(result);
    }
    let by_id = outcomes(results);
    assert_eq!(by_id.len(), n as usize, "every item answered");
    let refused = by_id[&50].as_ref().expect_err("carol is no member");
    assert_eq!(refused.code(), tonic::Code::PermissionDenied, "{refused:?}");
    let empty = by_id[&51].as_ref().expect_err("no text");
    assert_eq!(empty.code(), tonic::Code::InvalidArgument, "{empty:?}");
    let nobody = by_id[&53].as_ref().expect_err("no user");
    assert_eq!(nobody.code(), tonic::Code::InvalidArgument, "{nobody:?}");
    for lane in [1, 2] {
        let seqs: Vec<i64> = (0..n)
            .filter(|i| ![50, 51, 53].contains(i) && (i % 2 == 1) == (lane == 1))
            .map(|i| *by_id[&i].as_ref().expect("stored"))
            .collect();
        assert!(
            seqs.windows(2).all(|w| w[0] < w[1]),
            "lane {lane} stored in the order it came: {seqs:?}"
        );
    }
    let mut stored: Vec<i64> = by_id
        .values()
        .filter_map(|o| o.as_ref().ok())
        .copied()
        .collect();
    stored.sort_unstable();
    stored.dedup();
    assert_eq!(
        stored.len(),
        n as usize - 3,
        "each stored once, with a seq of its own"
    );
}

#[tokio::test]
async fn a_stopping_service_answers_what_it_read_then_ends_the_stream() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "stopping", &[]).await;
    let (items, queued) = tokio::sync::mpsc::channel(16);
    let mut answers = app
        .client
        .clone()
        .send_messages(tokio_stream::wrappers::ReceiverStream::new(queued))
        .await
        .expect("stream")
        .into_inner();
    items
        .send(item(1, 1, ALICE, &room.id, "before the stop"))
        .await
        .expect("queued");
    let first = answers.message().await.expect("answer").expect("one");
    assert_eq!(first.id, 1);
    assert!(matches!(first.outcome, Some(Outcome::Sent(_))));
    // The caller keeps its side open; the service's stop ends the stream
    // cleanly (no broken connection) instead of holding the stop up.
    let restarted = app.restart().await;
    assert!(
        answers.message().await.expect("a clean end").is_none(),
        "the stream ended"
    );
    drop(items);
    drop(restarted);
}
