//! Replies end to end inside ai-service: asked over gRPC, context read from
//! a real chat-service, streamed from the model server to the room's bus
//! channel, stored through chat-service; retries, cancel, the late-join
//! list, quotas, models and the backend `Generate` stream.

use std::time::Duration;

use common::ErrorCode;
use common::grpc::Actor;
use common::testing::Reply;
use futures::StreamExt;
use proto::ai::v1::generate_event::Event;
use proto::ai::v1::{CancelRequest, GenerateRequest, ListStreamsRequest};
use proto::chat::v1::{SendMessageRequest, Visibility};
use serde_json::{Value, json};
use tonic::Code;

use crate::helpers::*;

fn metadata(message: &Value) -> Value {
    message["metadata"].clone()
}

#[tokio::test]
async fn a_reply_streams_from_the_model_to_the_room_and_is_stored_as_the_assistant() {
    let app = spawn_app(Reply::chunks(&["Hel", "lo ", "world"]), |_| {}).await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;

    let asked = app
        .ask_as(&alice(), ask(&room.id, "  say hello "))
        .await
        .expect("ask");
    let question = asked.message.expect("stored question");
    assert_eq!(question.text, "say hello");
    assert_eq!(asked.stream_id, format!("s_{}", question.id));

    let (deltas, done) = tap.reply(&asked.stream_id).await;
    assert_eq!(joined(&deltas), "Hello world");
    assert_eq!(deltas[0]["room"], json!(room.id));
    assert_eq!(done["type"], "ai.done", "{done}");
    let message = &done["message"];
    assert_eq!(message["sender"]["id"], "assistant");
    assert_eq!(message["text"], "Hello world");
    assert_eq!(metadata(message), json!({"stream_id": asked.stream_id}));

    let history = app.history(&alice(), &room.id).await;
    let texts: Vec<&str> = history.iter().map(|m| m.text.as_str()).collect();
    assert_eq!(texts, ["say hello", "Hello world"]);

    let request = &app.model.requests()[0];
    assert_eq!(request["model"], "llama3.2", "the default model");
    assert_eq!(request["stream"], true);
    let messages = request["messages"].as_array().expect("messages");
    assert_eq!(messages.first().expect("system")["role"], "system");
    assert_eq!(
        messages.last().expect("question"),
        &json!({"role": "user", "content": "say hello", "name": "Alice"})
    );
}

#[tokio::test]
async fn the_prompt_is_recent_history_newest_first_within_the_token_budget() {
    // Budget: system (10 chars → 7) + question (8 chars → 6) + two history
    // messages of 40 chars (14 each) = 41; a third would not fit.
    let app = spawn_app(Reply::chunks(&["ok"]), |c| {
        c.system_prompt = "Be brief!!".into();
        c.context_tokens = 45;
    })
    .await;
    let room = app.room(&alice(), Visibility::Public, &[&bob()]).await;
    let send = |actor: Actor, text: String| {
        let chat = app.chat.clone();
        let room_id = room.id.clone();
        async move {
            chat.clone()
                .send_message(actor.request(SendMessageRequest {
                    room_id,
                    text,
                    client_msg_id: common::ids::new_id("c"),
                    thread_id: None,
                    metadata_json: String::new(),
                    reply_to: None,
                    ..SendMessageRequest::default()
                }))
                .await
                .expect("send");
        }
    };
    send(alice(), format!("oldest {}", "o".repeat(33))).await;
    send(bob(), format!("from bob {}", "b".repeat(31))).await;
    send(Actor::assistant(), format!("an answer {}", "a".repeat(30))).await;
    let mut tap = app.tap(&room.id).await;
    let asked = app
        .ask_as(&alice(), ask(&room.id, "and now?"))
        .await
        .expect("ask");
    let (_, done) = tap.reply(&asked.stream_id).await;
    assert_eq!(done["type"], "ai.done");

    let request = &app.model.requests()[0];
    let messages: Vec<Value> = request["messages"].as_array().expect("messages").clone();
    assert_eq!(
        messages,
        [
            json!({"role": "system", "content": "Be brief!!"}),
            json!({"role": "user", "content": format!("from bob {}", "b".repeat(31)), "name": "Bob"}),
            json!({"role": "assistant", "content": format!("an answer {}", "a".repeat(30))}),
            json!({"role": "user", "content": "and now?", "name": "Alice"}),
        ]
    );
}

#[tokio::test]
async fn a_question_in_a_thread_reads_the_thread_and_is_answered_there() {
    let app = spawn_app(Reply::chunks(&["threaded"]), |_| {}).await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let root = app
        .chat
        .clone()
        .send_message(alice().request(SendMessageRequest {
            room_id: room.id.clone(),
            text: "thread root".into(),
            client_msg_id: "root".into(),
            thread_id: None,
            metadata_json: String::new(),
            reply_to: None,
            ..SendMessageRequest::default()
        }))
        .await
        .expect("root")
        .into_inner()
        .message
        .expect("message");
    let mut tap = app.tap(&room.id).await;
    let mut request = ask(&room.id, "in the thread");
    request.thread_id = Some(root.id.clone());
    let asked = app.ask_as(&alice(), request).await.expect("ask");
    assert_eq!(
        asked.message.expect("question").thread_id,
        Some(root.id.clone())
    );
    let (_, done) = tap.reply(&asked.stream_id).await;
    assert_eq!(done["message"]["thread"], json!(root.id), "{done}");
    let sent = &app.model.requests()[0]["messages"];
    assert!(
        !sent.to_string().contains("thread root"),
        "only the thread's messages are context: {sent}"
    );
}

#[tokio::test]
async fn a_retried_ask_answers_the_same_stream_and_starts_no_second_reply() {
    let app = spawn_app(Reply::chunks(&["once"]), |_| {}).await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let mut request = ask(&room.id, "only once please");
    request.client_msg_id = "q-1".into();
    let first = app.ask_as(&alice(), request.clone()).await.expect("ask");
    let (_, done) = tap.reply(&first.stream_id).await;
    assert_eq!(done["type"], "ai.done");
    let retry = app.ask_as(&alice(), request).await.expect("retry");
    assert_eq!(retry.stream_id, first.stream_id);
    assert_eq!(retry.message, first.message);

    // A later question proves the model server saw only one request before it.
    let next = app
        .ask_as(&alice(), ask(&room.id, "next"))
        .await
        .expect("next");
    tap.reply(&next.stream_id).await;
    assert_eq!(app.model.requests().len(), 2);
    assert_eq!(app.history(&alice(), &room.id).await.len(), 4);
}

#[tokio::test]
async fn a_provider_error_mid_stream_ends_the_reply_with_ai_error() {
    let app = spawn_app(
        Reply::Sse {
            pieces: vec![
                Reply::event("half ").into(),
                "data: {\"error\":{\"message\":\"overloaded\"}}\n\n".into(),
            ],
            pause: Duration::ZERO,
        },
        |_| {},
    )
    .await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let asked = app.ask_as(&alice(), ask(&room.id, "q")).await.expect("ask");
    let (deltas, end) = tap.reply(&asked.stream_id).await;
    assert_eq!(joined(&deltas), "half ");
    assert_eq!(end["type"], "ai.error");
    assert_eq!(end["error"]["code"], "unavailable");
    assert_eq!(
        app.model.requests().len(),
        1,
        "no retry after the first token"
    );
}

#[tokio::test]
async fn a_429_then_success_is_retried_before_the_first_token() {
    let app = spawn_app(Reply::chunks(&["second ", "time"]), |_| {}).await;
    app.model.push(Reply::status(429));
    app.model.push(Reply::status(503));
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let asked = app.ask_as(&alice(), ask(&room.id, "q")).await.expect("ask");
    let (deltas, done) = tap.reply(&asked.stream_id).await;
    assert_eq!(done["type"], "ai.done", "{done}");
    assert_eq!(joined(&deltas), "second time");
    assert_eq!(app.model.requests().len(), 3);
}

#[tokio::test]
async fn failures_that_persist_reach_the_room_with_their_code() {
    let app = spawn_app(Reply::status(503), |c| c.retries = 1).await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let asked = app.ask_as(&alice(), ask(&room.id, "q")).await.expect("ask");
    let (deltas, end) = tap.reply(&asked.stream_id).await;
    assert!(deltas.is_empty());
    assert_eq!(end["error"]["code"], "unavailable");
    assert_eq!(app.model.requests().len(), 2, "one retry");

    // A refused request is not retried.
    app.model.push(Reply::status(400));
    let asked = app
        .ask_as(&bob_in(&app, &room.id).await, ask(&room.id, "q"))
        .await
        .expect("ask");
    let (_, end) = tap.reply(&asked.stream_id).await;
    assert_eq!(end["error"]["code"], "bad_request");
    assert_eq!(app.model.requests().len(), 3);
}

/// Bob, after joining the public room (a second asker keeps quotas apart).
async fn bob_in(app: &TestApp, room: &str) -> Actor {
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

#[tokio::test]
async fn cancel_stops_the_model_request_and_stores_the_partial_reply() {
    let app = spawn_app(Reply::stall(&["partial ", "text"]), |_| {}).await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let asked = app.ask_as(&alice(), ask(&room.id, "q")).await.expect("ask");
    tap.next_of(&["ai.delta"]).await;
    tap.next_of(&["ai.delta"]).await;

    // Late joiners see the text so far and the next index.
    let listed = app
        .client
        .clone()
        .list_streams(ListStreamsRequest {
            room_id: room.id.clone(),
        })
        .await
        .expect("list")
        .into_inner()
        .streams;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].stream_id, asked.stream_id);
    assert_eq!(listed[0].text_so_far, "partial text");
    assert_eq!(listed[0].index, 2);

    app.client
        .clone()
        .cancel(alice().request(CancelRequest {
            stream_id: asked.stream_id.clone(),
        }))
        .await
        .expect("cancel");
    app.model.wait_abandoned(1).await;
    let (_, end) = tap.reply(&asked.stream_id).await;
    assert_eq!(end["type"], "ai.error");
    assert_eq!(end["error"]["code"], "cancelled");
    assert_eq!(end["message"]["text"], "partial text");
    assert_eq!(
        metadata(&end["message"]),
        json!({"stream_id": asked.stream_id, "cancelled": true})
    );
    let history = app.history(&alice(), &room.id).await;
    assert_eq!(history.last().expect("reply").text, "partial text");
    let listed = app
        .client
        .clone()
        .list_streams(ListStreamsRequest {
            room_id: room.id.clone(),
        })
        .await
        .expect("list")
        .into_inner()
        .streams;
    assert!(listed.is_empty(), "a finished stream is no longer listed");
}

#[tokio::test]
async fn only_the_asker_or_the_room_owner_may_cancel() {
    let app = spawn_app(Reply::stall(&["thinking"]), |_| {}).await;
    let carol = user("carol", false);
    let room = app
        .room(&carol, Visibility::Private, &[&alice(), &bob()])
        .await;
    let mut tap = app.tap(&room.id).await;
    let asked = app.ask_as(&alice(), ask(&room.id, "q")).await.expect("ask");
    tap.next_of(&["ai.delta"]).await;
    let cancel = |actor: Actor, stream_id: String| {
        let client = app.client.clone();
        async move {
            client
                .clone()
                .cancel(actor.request(CancelRequest { stream_id }))
                .await
        }
    };
    let status = cancel(bob(), asked.stream_id.clone())
        .await
        .expect_err("bob neither asked nor owns the room");
    assert_eq!(status.code(), Code::PermissionDenied);
    let status = cancel(bob(), "s_nope".into()).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);
    cancel(carol, asked.stream_id.clone())
        .await
        .expect("the owner may");
    let (_, end) = tap.reply(&asked.stream_id).await;
    assert_eq!(end["error"]["code"], "cancelled");
}

#[tokio::test]
async fn quotas_limit_replies_in_flight_and_questions_per_minute() {
    let app = spawn_app(Reply::stall(&["busy"]), |c| {
        c.concurrent_streams = 1;
        c.requests_per_minute = 2;
        c.anonymous_requests_per_minute = 0;
    })
    .await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let first = app
        .ask_as(&alice(), ask(&room.id, "one"))
        .await
        .expect("ask");
    let status = app
        .ask_as(&alice(), ask(&room.id, "two"))
        .await
        .expect_err("one reply at a time");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert!(ErrorCode::retry_after(&status).is_some());

    tap.next_of(&["ai.delta"]).await;
    app.client
        .clone()
        .cancel(alice().request(CancelRequest {
            stream_id: first.stream_id.clone(),
        }))
        .await
        .expect("cancel");
    tap.reply(&first.stream_id).await;
    let second = app
        .ask_as(&alice(), ask(&room.id, "two"))
        .await
        .expect("a slot is free again");
    tap.next_of(&["ai.delta"]).await;
    app.client
        .clone()
        .cancel(alice().request(CancelRequest {
            stream_id: second.stream_id.clone(),
        }))
        .await
        .expect("cancel");
    tap.reply(&second.stream_id).await;
    let status = app
        .ask_as(&alice(), ask(&room.id, "three"))
        .await
        .expect_err("two questions a minute");
    assert_eq!(status.code(), Code::ResourceExhausted);
    let retry_after = ErrorCode::retry_after(&status).expect("hint");
    assert!(retry_after > Duration::from_secs(50) && retry_after <= Duration::from_secs(60));
    assert_eq!(
        app.history(&alice(), &room.id).await.len(),
        4,
        "refused questions are not stored"
    );

    let status = app
        .ask_as(&user("guest", true), ask(&room.id, "hi"))
        .await
        .expect_err("anonymous users may not ask here");
    assert_eq!(status.code(), Code::FailedPrecondition, "disabled");
}

#[tokio::test]
async fn models_are_chosen_per_request_from_the_allowed_ones() {
    let app = spawn_app(Reply::chunks(&["ok"]), |c| {
        c.models = vec!["big-model".into()];
    })
    .await;
    let room = app.room(&alice(), Visibility::Public, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let mut request = ask(&room.id, "q");
    request.model = Some("nope".into());
    let status = app
        .ask_as(&alice(), request.clone())
        .await
        .expect_err("unknown");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(
        status.message().contains("llama3.2") && status.message().contains("big-model"),
        "names the allowed models: {}",
        status.message()
    );
    request.model = Some("big-model".into());
    let asked = app.ask_as(&alice(), request).await.expect("ask");
    tap.reply(&asked.stream_id).await;
    assert_eq!(app.model.requests()[0]["model"], "big-model");
}

#[tokio::test]
async fn asking_in_a_room_you_cannot_see_is_not_found() {
    let app = spawn_app(Reply::chunks(&["ok"]), |_| {}).await;
    let room = app.room(&alice(), Visibility::Private, &[]).await;
    let status = app
        .ask_as(&bob(), ask(&room.id, "let me in"))
        .await
        .expect_err("not a member");
    assert_eq!(status.code(), Code::NotFound);
    assert!(app.model.requests().is_empty());
}

#[tokio::test]
async fn backends_generate_a_stream_for_themselves_without_storing_anything() {
    let app = spawn_app(Reply::chunks(&["just ", "for you"]), |_| {}).await;
    let mut events = app
        .client
        .clone()
        .generate(GenerateRequest {
            room_id: String::new(),
            prompt: "summarise".into(),
            model: None,
            thread_id: None,
            system_prompt: Some("You summarise.".into()),
        })
        .await
        .expect("generate")
        .into_inner();
    let mut texts = Vec::new();
    let done = loop {
        let event = events.next().await.expect("event").expect("ok");
        match event.event.expect("event") {
            Event::Delta(delta) => {
                assert_eq!(delta.index as usize, texts.len());
                texts.push(delta.text);
            }
            Event::Done(done) => break done,
            Event::Error(error) => panic!("failed: {error:?}"),
        }
    };
    assert_eq!(texts.concat(), "just for you");
    assert_eq!(done.text, "just for you");
    assert!(done.message.is_none());
    assert!(events.next().await.is_none(), "the stream ends after done");
    let sent = &app.model.requests()[0]["messages"];
    assert_eq!(
        sent,
        &json!([
            {"role": "system", "content": "You summarise."},
            {"role": "user", "content": "summarise"},
        ])
    );
}

#[tokio::test]
async fn backends_generate_into_a_room_which_sees_and_keeps_the_reply() {
    let app = spawn_app(Reply::chunks(&["hello ", "room"]), |_| {}).await;
    let room = app.room(&alice(), Visibility::Private, &[]).await;
    let mut tap = app.tap(&room.id).await;
    let mut events = app
        .client
        .clone()
        .generate(GenerateRequest {
            room_id: room.id.clone(),
            prompt: String::new(),
            model: None,
            thread_id: None,
            system_prompt: None,
        })
        .await
        .expect("generate")
        .into_inner();
    let mut last = None;
    while let Some(event) = events.next().await {
        last = event.expect("ok").event;
    }
    let Some(Event::Done(done)) = last else {
        panic!("expected done, got {last:?}");
    };
    let stored = done.message.expect("stored");
    assert_eq!(stored.text, "hello room");
    let (deltas, end) = tap.reply(&end_stream_id(&stored)).await;
    assert_eq!(joined(&deltas), "hello room");
    assert_eq!(end["type"], "ai.done");

    let status = app
        .client
        .clone()
        .generate(GenerateRequest {
            room_id: "r_missing".into(),
            prompt: "x".into(),
            model: None,
            thread_id: None,
            system_prompt: None,
        })
        .await
        .expect_err("no such room");
    assert_eq!(status.code(), Code::NotFound);
}

/// The stream id a stored reply carries in its metadata.
fn end_stream_id(message: &proto::chat::v1::Message) -> String {
    let metadata: Value = serde_json::from_str(&message.metadata_json).expect("metadata");
    metadata["stream_id"]
        .as_str()
        .expect("stream id")
        .to_string()
}
