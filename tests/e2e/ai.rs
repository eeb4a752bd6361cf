//! The assistant over WebSocket: `ai.ask` streams a reply to the room and
//! stores it, from the offline provider or an OpenAI-compatible model
//! server; late joiners, `ai.cancel`, quotas, the off switch, bad input.

use common::config::AiProvider;
use common::testing::{FakeOpenAi, Reply};
use serde_json::{Value, json};

use crate::helpers::{Client, TestApp, spawn_app, spawn_app_with};

#[tokio::test]
async fn ai_ask_streams_deltas_and_persists_the_reply() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let created = alice
        .ok(
            "room.create",
            json!({"name": "ask", "visibility": "public"}),
        )
        .await;
    let room = created["room"]["id"].as_str().expect("room").to_string();
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;

    let asked = alice
        .ok("ai.ask", json!({"room": room, "prompt": "what is parley?"}))
        .await;
    let stream_id = asked["stream_id"].as_str().expect("stream id").to_string();
    assert_eq!(asked["message"]["text"], "what is parley?");
    assert_eq!(asked["message"]["sender"]["id"], json!(alice.user_id));

    for client in [&mut alice, &mut bob] {
        let mut text = String::new();
        let mut index = 0;
        let done = loop {
            let frame = client.next_frame().await.expect("frame");
            match frame["type"].as_str() {
                Some("ai.delta") => {
                    assert_eq!(frame["stream_id"], json!(stream_id));
                    assert_eq!(
                        frame["index"], index,
                        "deltas are indexed from 0 without gaps"
                    );
                    index += 1;
                    text.push_str(frame["text"].as_str().expect("text"));
                }
                Some("ai.done") => break frame,
                Some("ai.error") => panic!("ai failed: {frame}"),
                _ => {}
            }
        };
        assert!(index > 0, "at least one delta");
        assert_eq!(done["message"]["sender"]["id"], "assistant");
        assert_eq!(done["message"]["metadata"]["stream_id"], json!(stream_id));
        assert_eq!(
            done["message"]["text"],
            json!(text),
            "the stored reply is what was streamed"
        );
        assert!(
            text.contains("not a language model"),
            "the offline provider says what it is: {text}"
        );
    }

    let history = alice.ok("message.history", json!({"room": room})).await;
    let messages = history["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 2, "prompt and reply are stored: {history}");
    assert_eq!(messages[0]["text"], "what is parley?");
    assert_eq!(messages[1]["sender"]["id"], "assistant");
}

#[tokio::test]
async fn ai_ask_in_a_room_you_cannot_see_is_not_found() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let created = alice
        .ok(
            "room.create",
            json!({"name": "private-ai", "visibility": "private"}),
        )
        .await;
    let room = created["room"]["id"].as_str().expect("room").to_string();
    bob.err("ai.ask", json!({"room": room, "prompt": "hi"}), "not_found")
        .await;
}

/// The suite with an OpenAI-compatible model server behind ai-service.
async fn spawn_with_model(reply: Reply) -> (TestApp, FakeOpenAi) {
    let model = FakeOpenAi::start(reply).await;
    let app = spawn_app_with(|c| {
        c.ai.provider = AiProvider::Openai;
        c.ai.base_url = model.base_url.clone();
        c.ai.model = "test-model".into();
    })
    .await;
    (app, model)
}

/// Reads `client`'s frames up to the end of `stream_id`; returns the deltas'
/// text (checking their indexes run on from `from`) and the final event.
async fn read_reply(client: &mut Client, stream_id: &str, from: u64) -> (String, Value) {
    let mut text = String::new();
    let mut index = from;
    // Frames that arrived while a command waited for its reply come first.
    let mut early = client.take_pending().into_iter();
    loop {
        let frame = match early.next() {
            Some(frame) => frame,
            None => client.next_frame().await.expect("frame"),
        };
        if frame["stream_id"] != json!(stream_id) {
            continue;
        }
        match frame["type"].as_str() {
            Some("ai.delta") => {
                let got = frame["index"].as_u64().expect("index");
                if got < index {
                    continue; // already in text_so_far
                }
                assert_eq!(got, index, "no gap: {frame}");
                index += 1;
                text.push_str(frame["text"].as_str().expect("text"));
            }
            Some("ai.done") | Some("ai.error") => return (text, frame),
            _ => {}
        }
    }
}

#[tokio::test]
async fn a_reply_from_an_openai_compatible_model_reaches_every_member_and_history() {
    let (app, model) =
        spawn_with_model(Reply::chunks(&["Parley ", "is ", "a chat backend."])).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let room = alice.public_room("model").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "hi all", "client_msg_id": "m1"}),
        )
        .await;

    let asked = alice
        .ok("ai.ask", json!({"room": room, "prompt": "what is parley?"}))
        .await;
    let stream_id = asked["stream_id"].as_str().expect("stream id").to_string();
    for client in [&mut alice, &mut bob] {
        let (text, done) = read_reply(client, &stream_id, 0).await;
        assert_eq!(text, "Parley is a chat backend.");
        assert_eq!(done["type"], "ai.done", "{done}");
        assert_eq!(done["message"]["text"], json!(text));
        assert_eq!(done["message"]["sender"]["id"], "assistant");
        assert_eq!(done["message"]["metadata"]["stream_id"], json!(stream_id));
    }
    let history = bob.ok("message.history", json!({"room": room})).await;
    let texts: Vec<&str> = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["text"].as_str())
        .collect();
    assert_eq!(
        texts,
        ["hi all", "what is parley?", "Parley is a chat backend."]
    );
    let sent = &model.requests()[0];
    assert_eq!(sent["model"], "test-model");
    let messages = sent["messages"].as_array().expect("messages");
    assert_eq!(
        messages[1],
        json!({"role": "user", "content": "hi all", "name": "Alice"}),
        "the room's history is the context"
    );
}

#[tokio::test]
async fn a_late_joiner_renders_the_reply_so_far_and_the_asker_cancels_it() {
    let (app, model) = spawn_with_model(Reply::stall(&["one ", "two "])).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let room = alice.public_room("late").await;
    alice.ok("room.join", json!({"room": room})).await;
    let asked = alice
        .ok("ai.ask", json!({"room": room, "prompt": "count"}))
        .await;
    let stream_id = asked["stream_id"].as_str().expect("stream id").to_string();
    for _ in 0..2 {
        alice.event("ai.delta").await;
    }

    let joined = bob.ok("room.join", json!({"room": room})).await;
    assert_eq!(
        joined["streams"],
        json!([{"stream_id": stream_id, "text_so_far": "one two ", "index": 2}])
    );
    bob.err("ai.cancel", json!({"stream_id": stream_id}), "forbidden")
        .await;
    alice
        .err("ai.cancel", json!({"stream_id": "s_unknown"}), "not_found")
        .await;
    alice.ok("ai.cancel", json!({"stream_id": stream_id})).await;
    model.wait_abandoned(1).await;
    for client in [&mut alice, &mut bob] {
        let (_, end) = read_reply(client, &stream_id, 2).await;
        assert_eq!(end["type"], "ai.error");
        assert_eq!(end["error"]["code"], "cancelled");
        assert_eq!(end["message"]["text"], "one two ");
        assert_eq!(end["message"]["metadata"]["cancelled"], true);
    }
    let joined = bob.ok("room.join", json!({"room": room})).await;
    assert_eq!(joined["streams"], json!([]));
}

#[tokio::test]
async fn over_quota_questions_are_rate_limited_with_a_retry_hint() {
    let (app, _model) = spawn_with_model(Reply::stall(&["working"])).await;
    // Anonymous users may have one reply streaming at a time (by default).
    let mut guest = app.anonymous("guest").await;
    let room = guest.public_room("quota").await;
    guest
        .ok("ai.ask", json!({"room": room, "prompt": "first"}))
        .await;
    let error = guest
        .err(
            "ai.ask",
            json!({"room": room, "prompt": "second"}),
            "rate_limited",
        )
        .await;
    assert!(error["retry_after_ms"].as_u64().is_some(), "{error}");
    assert_eq!(error["temporary"], true);
}

#[tokio::test]
async fn an_operator_can_switch_the_assistant_off() {
    let app = spawn_app_with(|c| c.ai.enabled = false).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("off").await;
    alice
        .err(
            "ai.ask",
            json!({"room": room, "prompt": "hello?"}),
            "disabled",
        )
        .await;
}

#[tokio::test]
async fn bad_questions_are_refused_before_reaching_the_model() {
    let (app, model) = spawn_with_model(Reply::chunks(&["unused"])).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("bad").await;
    alice
        .err(
            "ai.ask",
            json!({"room": room, "prompt": "   "}),
            "bad_request",
        )
        .await;
    alice
        .err(
            "ai.ask",
            json!({"room": room, "prompt": "x".repeat(8001)}),
            "too_large",
        )
        .await;
    let error = alice
        .err(
            "ai.ask",
            json!({"room": room, "prompt": "hi", "model": "gpt-9"}),
            "bad_request",
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("test-model"),
        "{error}"
    );
    alice.err("ai.cancel", json!({}), "bad_request").await;
    assert!(model.requests().is_empty());
}
