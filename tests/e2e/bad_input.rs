//! Bad input gets a clear error with the protocol's code and loses nothing.

use serde_json::json;

use crate::helpers::{Client, spawn_app, spawn_app_with, token};

#[tokio::test]
async fn a_malformed_frame_gets_bad_request_and_the_connection_keeps_working() {
    let app = spawn_app().await;
    let mut client = app.anonymous("alice").await;
    client.send_text("{not json").await;
    let error = client.event("error").await;
    assert_eq!(error["error"]["code"], "bad_request");
    client.send_text(r#"{"no_type":1}"#).await;
    assert_eq!(client.event("error").await["error"]["code"], "bad_request");
    client
        .err("no.such.command", json!({}), "bad_request")
        .await;
    client
        .err("message.send", json!({"room": "r"}), "bad_request")
        .await;
    let pong = client.ok("ping", json!({})).await;
    assert!(pong["server_time"].as_i64().expect("server_time") > 0);
}

#[tokio::test]
async fn a_failing_command_without_id_gets_an_error_frame() {
    let app = spawn_app().await;
    let mut client = app.anonymous("alice").await;
    client
        .send_text(json!({"type": "room.join", "room": "r_missing"}).to_string())
        .await;
    let error = client.event("error").await;
    assert_eq!(error["re"], "room.join");
    assert_eq!(error["error"]["code"], "not_found");
    assert_eq!(error["error"]["temporary"], false);
}

#[tokio::test]
async fn binary_frames_are_refused_then_closed_with_1003() {
    let app = spawn_app().await;
    let mut client = app.anonymous("alice").await;
    client.send_binary(vec![1, 2, 3]).await;
    assert_eq!(client.event("error").await["error"]["code"], "bad_request");
    client.ok("ping", json!({})).await;
    client.send_binary(vec![4]).await;
    assert_eq!(client.close_code().await, Some(1003));
}

#[tokio::test]
async fn a_frame_over_the_size_limit_closes_with_1009() {
    let app = spawn_app_with(|c| c.edge.max_message_bytes = 4096).await;
    let mut client = app.anonymous("alice").await;
    assert_eq!(client.hello["limits"]["max_message_bytes"], 4096);
    let huge = json!({"type": "ping", "pad": "x".repeat(64 * 1024)}).to_string();
    client.send_text(huge).await;
    assert_eq!(client.close_code().await, Some(1009));
}

#[tokio::test]
async fn commands_before_auth_are_unauthorized() {
    let app = spawn_app().await;
    let mut client = app.connect().await;
    assert_eq!(client.hello["user"], serde_json::Value::Null);
    client.err("room.list", json!({}), "unauthorized").await;
    client
        .err(
            "message.send",
            json!({"room": "r", "text": "x", "client_msg_id": "1"}),
            "unauthorized",
        )
        .await;
    client.ok("ping", json!({})).await;
    client.ok("auth", json!({"anonymous": true})).await;
    client.ok("room.list", json!({})).await;
}

#[tokio::test]
async fn an_invalid_token_closes_with_4002() {
    let app = spawn_app().await;
    let mut client = app.connect().await;
    client
        .err("auth", json!({"token": "not-a-jwt"}), "unauthorized")
        .await;
    assert_eq!(client.close_code().await, Some(4002));

    let mut forged = app.connect().await;
    let bad_signature = format!("{}x", token("mallory", "Mallory", 600));
    forged
        .err("auth", json!({"token": bad_signature}), "unauthorized")
        .await;
    assert_eq!(forged.close_code().await, Some(4002));

    let mut expired = app.connect().await;
    expired
        .err(
            "auth",
            json!({"token": token("old", "Old", -3600)}),
            "unauthorized",
        )
        .await;
    assert_eq!(expired.close_code().await, Some(4003));
}

#[tokio::test]
async fn a_valid_token_authenticates_by_frame_or_header() {
    let app = spawn_app().await;
    let mut by_frame = app.connect().await;
    let reply = by_frame
        .ok("auth", json!({"token": token("u_alice", "Alice", 600)}))
        .await;
    assert_eq!(
        reply["user"],
        json!({"id": "u_alice", "name": "Alice", "anonymous": false})
    );

    let bearer = format!("Bearer {}", token("u_bob", "Bob", 600));
    let mut by_header = Client::connect(&app.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("connect");
    assert_eq!(by_header.hello["user"]["id"], "u_bob");
    by_header.ok("room.list", json!({})).await;

    let refused = Client::connect(&app.ws_url(), &[("authorization", "Bearer nope")]).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 401)
        }
        other => panic!("expected HTTP 401, got {:?}", other.map(|c| c.hello)),
    }
}

#[tokio::test]
async fn no_auth_within_the_timeout_closes_with_4001() {
    let app = spawn_app_with(|c| c.edge.auth_timeout_ms = 300).await;
    let mut client = app.connect().await;
    assert_eq!(client.hello["auth_timeout_ms"], 300);
    assert_eq!(client.close_code().await, Some(4001));
}

#[tokio::test]
async fn a_cross_site_origin_is_refused_before_the_upgrade() {
    let app =
        spawn_app_with(|c| c.edge.allowed_origins = vec!["https://app.example.com".into()]).await;
    for origin in [
        "https://evil.example.net",
        "https://app.example.com.evil.net",
        "null",
    ] {
        match Client::connect(&app.ws_url(), &[("origin", origin)]).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{origin}")
            }
            other => panic!(
                "origin {origin} must be refused, got {:?}",
                other.map(|c| c.hello)
            ),
        }
    }
    let allowed = Client::connect(&app.ws_url(), &[("origin", "https://app.example.com")]).await;
    assert!(allowed.is_ok());
}
