//! Edge protection seen from a client: rate limits, connection limits,
//! heartbeat and idle closes, feature flags, content inspection, `/status`
//! and the security event log.

use std::time::Duration;

use serde_json::{Value, json};
use tokio_tungstenite::tungstenite;

use crate::helpers::{Client, capture_logs, http_get, spawn_app_with, token};

/// The HTTP status an upgrade was refused with.
async fn refused_status(url: &str) -> u16 {
    match Client::connect(url, &[]).await {
        Err(tungstenite::Error::Http(response)) => response.status().as_u16(),
        Err(e) => panic!("expected an HTTP refusal, got {e}"),
        Ok(_) => panic!("expected an HTTP refusal, the upgrade succeeded"),
    }
}

/// Connects, retrying while the slot of a connection that just closed has
/// not been given back yet.
async fn connect_eventually(url: &str) -> Client {
    for _ in 0..50 {
        if let Ok(client) = Client::connect(url, &[]).await {
            return client;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the slot was never given back");
}

fn send(room: &str, n: usize) -> Value {
    json!({"room": room, "text": format!("message {n}"), "client_msg_id": format!("m{n}")})
}

#[tokio::test]
async fn a_user_over_the_message_rate_gets_rate_limited_with_retry_after() {
    let app = spawn_app_with(|c| c.edge.rate_user_per_min = 3).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("limits").await;
    for n in 0..3 {
        alice.ok("message.send", send(&room, n)).await;
    }
    let error = alice
        .err("message.send", send(&room, 3), "rate_limited")
        .await;
    let retry = error["retry_after_ms"].as_u64().expect("retry_after_ms");
    assert!(
        (1..=20_000).contains(&retry),
        "one interval is 20 s: {retry}"
    );
    assert_eq!(error["temporary"], true);
    // Other commands and other users are not held back.
    alice.ok("room.list", json!({})).await;
    let mut bob = app.user("bob", "Bob").await;
    bob.ok("room.join", json!({"room": room})).await;
    bob.ok("message.send", send(&room, 4)).await;
}

#[tokio::test]
async fn anonymous_users_have_their_own_lower_rate() {
    let app = spawn_app_with(|c| c.edge.rate_anonymous_per_min = 1).await;
    let mut guest = app.anonymous("guest").await;
    let room = guest.public_room("anon").await;
    guest.ok("message.send", send(&room, 0)).await;
    guest
        .err("message.send", send(&room, 1), "rate_limited")
        .await;
    let mut alice = app.user("alice", "Alice").await;
    alice.ok("room.join", json!({"room": room})).await;
    alice.ok("message.send", send(&room, 2)).await;
}

#[tokio::test]
async fn per_event_type_limits_hold_typing_back() {
    let app = spawn_app_with(|c| c.edge.rate_typing_per_10s = 2).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("typing").await;
    alice.ok("room.join", json!({"room": room})).await;
    alice.ok("typing.start", json!({"room": room})).await;
    alice.ok("typing.stop", json!({"room": room})).await;
    let error = alice
        .err("typing.start", json!({"room": room}), "rate_limited")
        .await;
    assert!(error["retry_after_ms"].as_u64().is_some(), "{error}");
    alice.ok("message.send", send(&room, 0)).await;
}

#[tokio::test]
async fn repeated_violations_close_the_connection_with_4029() {
    let app = spawn_app_with(|c| {
        c.edge.rate_conn_commands_per_min = 2;
        c.edge.rate_violations_close = 3;
    })
    .await;
    let mut client = app.connect().await;
    client.ok("ping", json!({})).await;
    client.ok("ping", json!({})).await;
    client.err("ping", json!({}), "rate_limited").await;
    client.err("ping", json!({}), "rate_limited").await;
    // The third violation within a minute: answered, then closed.
    let reply = client.try_request("ping", json!({})).await;
    if let Some(reply) = reply {
        assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
    }
    assert_eq!(client.close_code().await, Some(4029));
}

/// With Redis, two edges count one user's messages in one window.
#[tokio::test]
async fn rate_limits_are_shared_by_edges_through_redis() {
    if common::testing::test_redis_url().is_none() {
        return;
    }
    let app = spawn_app_with(|c| c.edge.rate_user_per_min = 3).await;
    let second = app.second_edge().await;
    let mut here = app.user("alice", "Alice").await;
    let mut there = app.user_at(&second, "alice").await.expect("second edge");
    let room = here.public_room("shared").await;
    there.ok("room.join", json!({"room": room})).await;
    here.ok("message.send", send(&room, 0)).await;
    there.ok("message.send", send(&room, 1)).await;
    here.ok("message.send", send(&room, 2)).await;
    there
        .err("message.send", send(&room, 3), "rate_limited")
        .await;
}

#[tokio::test]
async fn concurrent_connections_per_address_get_429_and_slots_come_back() {
    let app = spawn_app_with(|c| c.edge.max_conns_per_ip = 2).await;
    let first = app.connect().await;
    let _second = app.connect().await;
    assert_eq!(refused_status(&app.ws_url()).await, 429);
    drop(first);
    let _third = connect_eventually(&app.ws_url()).await;
}

#[tokio::test]
async fn behind_a_trusted_proxy_limits_count_the_forwarded_client() {
    let app = spawn_app_with(|c| {
        c.edge.max_conns_per_ip = 1;
        c.edge.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let from = |client: &'static str| [("x-forwarded-for", client)];
    let _first = Client::connect(&app.ws_url(), &from("203.0.113.9"))
        .await
        .expect("first client");
    // The same client again is over its limit; another client is not.
    match Client::connect(&app.ws_url(), &from("203.0.113.9")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| "an upgrade")),
    }
    let _other = Client::connect(&app.ws_url(), &from("203.0.113.10"))
        .await
        .expect("another client behind the same proxy");

    // Without trusting the proxy, its header is ignored: one address, one slot.
    let untrusted = spawn_app_with(|c| c.edge.max_conns_per_ip = 1).await;
    let _only = Client::connect(&untrusted.ws_url(), &from("203.0.113.9"))
        .await
        .expect("first");
    match Client::connect(&untrusted.ws_url(), &from("203.0.113.10")).await {
        Err(tungstenite::Error::Http(response)) => assert_eq!(response.status().as_u16(), 429),
        other => panic!("expected 429, got {:?}", other.map(|_| "an upgrade")),
    }
}

#[tokio::test]
async fn the_global_connection_cap_gets_429() {
    let app = spawn_app_with(|c| c.edge.max_conns = 1).await;
    let _only = app.connect().await;
    assert_eq!(refused_status(&app.ws_url()).await, 429);
}

#[tokio::test]
async fn new_connections_per_address_are_rate_limited() {
    let app = spawn_app_with(|c| c.edge.rate_ip_connects_per_min = 2).await;
    drop(app.connect().await);
    drop(app.connect().await);
    assert_eq!(refused_status(&app.ws_url()).await, 429);
}

#[tokio::test]
async fn a_user_over_the_connection_limit_is_closed_with_4009() {
    let app = spawn_app_with(|c| c.edge.max_conns_per_user = 2).await;
    let first = app.user("alice", "Alice").await;
    let _second = app.user("alice", "Alice").await;
    let mut third = app.connect().await;
    let reply = third
        .request("auth", json!({"token": token("alice", "Alice", 3600)}))
        .await;
    assert_eq!(reply["ok"], false, "{reply}");
    assert_eq!(reply["error"]["reason"], "too_many_connections", "{reply}");
    assert_eq!(third.close_code().await, Some(4009));
    // Other users are not affected; a closed connection gives its slot back.
    let _bob = app.user("bob", "Bob").await;
    drop(first);
    let mut again = None;
    for _ in 0..50 {
        let mut client = app.connect().await;
        let reply = client
            .request("auth", json!({"token": token("alice", "Alice", 3600)}))
            .await;
        if reply["ok"] == true {
            again = Some(client);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(again.is_some(), "the closed connection's slot came back");
}

#[tokio::test]
async fn an_upgrade_time_token_over_the_user_limit_is_closed_after_hello() {
    let app = spawn_app_with(|c| c.edge.max_conns_per_user = 1).await;
    let header = format!("Bearer {}", token("dave", "Dave", 3600));
    let _first = Client::connect(&app.ws_url(), &[("authorization", &header)])
        .await
        .expect("first");
    let mut second = Client::connect(&app.ws_url(), &[("authorization", &header)])
        .await
        .expect("upgraded, then refused");
    let error = second.next_frame().await.expect("error frame");
    assert_eq!(error["error"]["reason"], "too_many_connections", "{error}");
    assert_eq!(second.close_code().await, Some(4009));
}

#[tokio::test]
async fn a_connection_without_commands_closes_as_idle() {
    let app = spawn_app_with(|c| {
        c.edge.idle_timeout_ms = 400;
        c.edge.heartbeat_ms = 100;
        c.edge.pong_timeout_ms = 10_000;
    })
    .await;
    let mut client = app.anonymous("sleepy").await;
    // Reading answers the pings: only the missing commands count.
    let (code, reason) = client.close_frame().await.expect("close frame");
    assert_eq!((code, reason.as_str()), (1000, "idle"));
}

#[tokio::test]
async fn a_client_that_answers_no_pings_is_closed_with_4012() {
    let app = spawn_app_with(|c| {
        c.edge.heartbeat_ms = 100;
        c.edge.pong_timeout_ms = 300;
    })
    .await;
    // A WebSocket client library answers pings by itself: this one is raw
    // and never writes after the handshake.
    assert_eq!(silent_client_close_code(app.addrs.edge).await, 4012);
}

/// Opens a WebSocket by hand, never answers anything, and returns the
/// close code the server sends.
async fn silent_client_close_code(addr: std::net::SocketAddr) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    let read = async {
        loop {
            let n = stream.read(&mut buf).await.expect("read");
            assert!(n > 0, "closed without a close frame");
            bytes.extend_from_slice(&buf[..n]);
            let Some(end) = bytes.windows(4).position(|w| w == b"\r\n\r\n") else {
                continue;
            };
            let mut frames = &bytes[end + 4..];
            // Server frames are unmasked; ours are short (7-bit or 16-bit length).
            while frames.len() >= 2 {
                let opcode = frames[0] & 0x0f;
                let (len, header) = match frames[1] & 0x7f {
                    126 if frames.len() >= 4 => {
                        (usize::from(u16::from_be_bytes([frames[2], frames[3]])), 4)
                    }
                    126 => break,
                    n => (usize::from(n), 2),
                };
                if frames.len() < header + len {
                    break;
                }
                let payload = &frames[header..header + len];
                if opcode == 0x8 {
                    return u16::from_be_bytes([payload[0], payload[1]]);
                }
                frames = &frames[header + len..];
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("closed in time")
}

#[tokio::test]
async fn with_the_assistant_off_every_ai_command_is_disabled() {
    let app = spawn_app_with(|c| c.ai.enabled = false).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("no-ai").await;
    alice
        .err("ai.ask", json!({"room": room, "prompt": "hi"}), "disabled")
        .await;
    alice
        .err("ai.cancel", json!({"stream_id": "s_1"}), "disabled")
        .await;
}

#[tokio::test]
async fn maintenance_mode_refuses_upgrades_with_503() {
    let app = spawn_app_with(|c| c.edge.maintenance = true).await;
    assert_eq!(refused_status(&app.ws_url()).await, 503);
    assert_eq!(http_get(app.addrs.edge, "/healthz", &[]).await.0, 200);
}

#[tokio::test]
async fn flagged_content_is_stored_unchanged_with_its_flags() {
    let app = spawn_app_with(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("flags").await;
    let text = "look <img src=x onerror=alert(1)> and ' OR '1'='1";
    let reply = alice
        .ok(
            "message.send",
            json!({"room": room, "text": text, "client_msg_id": "f1", "metadata": {"color": "blue"}}),
        )
        .await;
    let message = &reply["message"];
    assert_eq!(message["text"], text, "never rewritten");
    assert_eq!(message["metadata"]["flags"], json!(["html", "sql"]));
    assert_eq!(message["metadata"]["color"], "blue", "client fields kept");
    let clean = alice
        .ok(
            "message.send",
            json!({"room": room, "text": "I'll select a table from the menu", "client_msg_id": "f2"}),
        )
        .await;
    assert!(clean["message"]["metadata"]["flags"].is_null(), "{clean}");
    let history = alice.ok("message.history", json!({"room": room})).await;
    let stored = history["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .find(|m| m["client_msg_id"] == "f1")
        .cloned()
        .expect("stored");
    assert_eq!(stored["text"], text);
    assert_eq!(stored["metadata"]["flags"], json!(["html", "sql"]));
}

#[tokio::test]
async fn blocked_content_is_refused_as_forbidden() {
    let app = spawn_app_with(|c| {
        c.edge.content_inspection = common::config::InspectionMode::Block;
    })
    .await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("block").await;
    let error = alice
        .err(
            "message.send",
            json!({"room": room, "text": "x; rm -rf /", "client_msg_id": "b1"}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "content_blocked");
    alice.ok("message.send", send(&room, 1)).await;
    let history = alice.ok("message.history", json!({"room": room})).await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(1));
}

#[tokio::test]
async fn status_needs_the_admin_token() {
    let disabled = spawn_app_with(|_| {}).await;
    assert_eq!(http_get(disabled.addrs.edge, "/status", &[]).await.0, 404);

    let admin = "status-token-0123456789";
    let app = spawn_app_with(|c| c.edge.admin_token = common::Secret::new(admin)).await;
    let edge = app.addrs.edge;
    assert_eq!(http_get(edge, "/status", &[]).await.0, 401);
    let wrong = [("authorization", "Bearer status-token-wrong-0000")];
    assert_eq!(http_get(edge, "/status", &wrong).await.0, 401);

    let mut alice = app.user("alice", "Alice").await;
    let _alice_phone = app.user("alice", "Alice").await;
    let _guest = app.anonymous("guest").await;
    let _pending = app.connect().await;
    let room = alice.public_room("status").await;
    alice.ok("room.join", json!({"room": room})).await;

    let bearer = format!("Bearer {admin}");
    let (code, body) = http_get(edge, "/status", &[("authorization", &bearer)]).await;
    assert_eq!(code, 200, "{body}");
    let status: Value = serde_json::from_str(&body).expect("json");
    let c = &status["connections"];
    assert_eq!(
        (&c["total"], &c["authenticated"], &c["anonymous"]),
        (&json!(4), &json!(2), &json!(1)),
        "{status}"
    );
    assert!(c["peak"].as_u64().expect("peak") >= 4);
    assert_eq!(status["top_users"][0]["user"], alice.user_id);
    assert_eq!(status["top_users"][0]["connections"], 2);
    assert_eq!(status["rooms"], json!([{"room": room, "subscribers": 1}]));
    assert!(status["uptime_s"].is_u64());
}

/// Every security event of the edge reaches the `security` target with a
/// masked address, and no token appears in the log.
#[tokio::test]
async fn security_events_are_logged_masked_and_without_tokens() {
    // Everything the suite logs on this test's thread, at TRACE.
    let captured = capture_logs();
    let app = spawn_app_with(|c| {
        c.edge.allowed_origins = vec!["https://app.example.com".into()];
        c.edge.rate_user_per_min = 1;
        c.edge.max_conns_per_user = 1;
        c.edge.query_token = true;
    })
    .await;

    // origin_rejected
    let _ = Client::connect(&app.ws_url(), &[("origin", "https://evil.example.net")]).await;
    // auth_failed, on the upgrade and in an `auth` frame
    let bad = "eyJhbGciOiJIUzI1NiJ9.bm90LWEtdG9rZW4.SECRET-MARKER-signature";
    let header = format!("Bearer {bad}");
    let _ = Client::connect(&app.ws_url(), &[("authorization", &header)]).await;
    let mut client = app.connect().await;
    client.request("auth", json!({"token": bad})).await;
    // … and in the query string, when that is enabled.
    let in_url = format!("{}?token=QUERY-MARKER-{bad}", app.ws_url());
    assert!(Client::connect(&in_url, &[]).await.is_err());
    // rate_limited
    let good = token("alice", "Alice", 3600);
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("log").await;
    alice.ok("message.send", send(&room, 0)).await;
    alice
        .err("message.send", send(&room, 1), "rate_limited")
        .await;
    // conn_limited
    let mut second = app.connect().await;
    second.request("auth", json!({"token": good})).await;
    // content_flagged
    let mut bob = app.user("bob", "Bob").await;
    bob.ok("room.join", json!({"room": room})).await;
    bob.ok(
        "message.send",
        json!({"room": room, "text": "<script>x</script>", "client_msg_id": "s"}),
    )
    .await;

    let log = captured.text();
    for event in [
        "origin_rejected",
        "auth_failed",
        "rate_limited",
        "conn_limited",
        "content_flagged",
    ] {
        let line = log
            .lines()
            .find(|l| l.contains(&format!("event=\"{event}\"")))
            .unwrap_or_else(|| panic!("no {event} event in:\n{log}"));
        assert!(line.contains("security"), "{line}");
        assert!(line.contains("addr=127.0.0.xxx"), "masked: {line}");
    }
    for line in log.lines().filter(|l| l.contains(" security:")) {
        assert!(!line.contains("127.0.0.1"), "an unmasked address: {line}");
    }
    assert!(!log.contains("SECRET-MARKER"), "a token leaked:\n{log}");
    assert!(!log.contains("QUERY-MARKER"), "a URL token leaked:\n{log}");
    let auth_failures = log.matches("event=\"auth_failed\"").count();
    assert_eq!(auth_failures, 3, "upgrade header, auth frame, query string");
    assert!(!log.contains(&good), "a token leaked:\n{log}");
}

/// A signed envelope of `command` under `secret`.
fn signed(secret: &str, command: Value, timestamp: i64, nonce: &str) -> String {
    use hmac::Mac;
    let payload = command.to_string();
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("key");
    mac.update(format!("{timestamp}.{nonce}.{payload}").as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    json!({"payload": payload, "signature": signature, "timestamp": timestamp, "nonce": nonce})
        .to_string()
}

/// The next reply or error frame.
async fn answer(client: &mut Client) -> Value {
    loop {
        let frame = client.next_frame().await.expect("a frame");
        if frame["type"] == "reply" || frame["type"] == "error" {
            return frame;
        }
    }
}

#[tokio::test]
async fn with_signed_frames_every_command_after_auth_must_be_signed() {
    let app = spawn_app_with(|c| c.edge.signed_frames = true).await;
    let mut client = app.connect().await;
    let reply = client
        .ok("auth", json!({"token": token("alice", "Alice", 3600)}))
        .await;
    let secret = reply["frame_secret"]
        .as_str()
        .expect("frame_secret")
        .to_string();
    let now = common::ids::now_ms();

    // Valid: the payload runs and its reply carries the payload's id.
    let frame = signed(&secret, json!({"type": "ping", "id": 41}), now, "n1");
    client.send_text(frame.clone()).await;
    let reply = answer(&mut client).await;
    assert_eq!(
        (&reply["id"], &reply["ok"]),
        (&json!(41), &json!(true)),
        "{reply}"
    );

    // Replayed nonce.
    client.send_text(frame).await;
    let reply = answer(&mut client).await;
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");

    // Bad signature.
    let forged = signed(
        "not-the-secret",
        json!({"type": "ping", "id": 42}),
        now,
        "n2",
    );
    client.send_text(forged).await;
    let reply = answer(&mut client).await;
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");

    // Stale timestamp.
    let stale = signed(&secret, json!({"type": "ping"}), now - 6 * 60 * 1000, "n3");
    client.send_text(stale).await;
    let reply = answer(&mut client).await;
    assert_eq!(reply["error"]["code"], "unauthorized", "{reply}");

    // Unsigned.
    client.err("room.list", json!({}), "unauthorized").await;

    // And a signed command still works afterwards.
    let list = signed(&secret, json!({"type": "room.list", "id": 43}), now, "n4");
    client.send_text(list).await;
    let reply = answer(&mut client).await;
    assert_eq!(
        (&reply["id"], &reply["ok"]),
        (&json!(43), &json!(true)),
        "{reply}"
    );
}

#[tokio::test]
async fn an_upgrade_time_token_gets_its_frame_secret_in_hello() {
    let app = spawn_app_with(|c| c.edge.signed_frames = true).await;
    let header = format!("Bearer {}", token("bob", "Bob", 3600));
    let mut client = Client::connect(&app.ws_url(), &[("authorization", &header)])
        .await
        .expect("connect");
    let secret = client.hello["frame_secret"]
        .as_str()
        .expect("secret")
        .to_string();
    let frame = signed(
        &secret,
        json!({"type": "ping", "id": 1}),
        common::ids::now_ms(),
        "x",
    );
    client.send_text(frame).await;
    assert_eq!(answer(&mut client).await["ok"], true);
    // Without signed frames, no secret is handed out.
    let plain = spawn_app_with(|_| {}).await;
    let mut client = plain.connect().await;
    let reply = client
        .ok("auth", json!({"token": token("carol", "Carol", 3600)}))
        .await;
    assert!(reply["frame_secret"].is_null(), "{reply}");
    client.ok("ping", json!({})).await;
}
