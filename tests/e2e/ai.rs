//! `ai.ask`: the reply streams to the room and is stored as a message.

use serde_json::json;

use crate::helpers::spawn_app;

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
