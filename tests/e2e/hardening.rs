//! What a hostile client can no longer do: hold unbounded state, flood the
//! edge with garbage, slip text past inspection through the assistant, set
//! the server's metadata, or send text frames that are not UTF-8.

use serde_json::json;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn a_connection_joins_at_most_max_rooms_per_conn() {
    let app = spawn_app_with(|c| c.edge.max_rooms_per_conn = 2).await;
    let mut alice = app.anonymous("alice").await;
    let rooms = [
        alice.public_room("one").await,
        alice.public_room("two").await,
        alice.public_room("three").await,
    ];
    alice.ok("room.join", json!({"room": rooms[0]})).await;
    alice.ok("room.join", json!({"room": rooms[1]})).await;
    // Joining again a room already joined is not one more.
    alice.ok("room.join", json!({"room": rooms[1]})).await;
    let error = alice
        .err("room.join", json!({"room": rooms[2]}), "too_large")
        .await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("2 rooms")),
        "{error}"
    );
    alice.ok("room.leave", json!({"room": rooms[0]})).await;
    alice.ok("room.join", json!({"room": rooms[2]})).await;
}

#[tokio::test]
async fn members_followed_through_room_presence_count_against_the_follow_cap() {
    let app = spawn_app_with(|c| c.edge.presence_subscribe_max = 2).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("small").await;
    for name in ["bob", "carol"] {
        let mut member = app.user(name, name).await;
        member.ok("room.join", json!({"room": room})).await;
    }
    // Alice follows bob and carol through the room: the cap is reached.
    alice.ok("room.join", json!({"room": room})).await;
    alice
        .err(
            "presence.subscribe",
            json!({"users": ["dave"]}),
            "too_large",
        )
        .await;
    // Users already followed through the room are no new follows.
    alice
        .ok("presence.subscribe", json!({"users": ["bob", "carol"]}))
        .await;
}

#[tokio::test]
async fn unreadable_frames_count_against_the_command_window_and_close_4029() {
    let app = spawn_app_with(|c| {
        c.edge.rate_conn_commands_per_min = 2;
        c.edge.rate_violations_close = 3;
    })
    .await;
    let mut client = app.connect().await;
    let mut codes = Vec::new();
    let close = loop {
        client.send_text("{not json").await;
        match client.next_frame_or_close().await {
            Ok(frame) => codes.push(frame["error"]["code"].as_str().unwrap_or("").to_string()),
            Err(code) => break code,
        }
        assert!(codes.len() < 20, "garbage is never limited: {codes:?}");
    };
    assert_eq!(&codes[..2], ["bad_request", "bad_request"]);
    assert!(codes[2..].iter().all(|c| c == "rate_limited"), "{codes:?}");
    assert_eq!(close, Some(4029));
}

#[tokio::test]
async fn assistant_prompts_go_through_content_inspection() {
    let app = spawn_app_with(|c| {
        c.edge.content_inspection = common::config::InspectionMode::Block;
    })
    .await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("ask").await;
    alice.ok("room.join", json!({"room": room})).await;
    let error = alice
        .err(
            "ai.ask",
            json!({"room": room, "prompt": "<script>alert(1)</script>"}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "content_blocked");
}

#[tokio::test]
async fn clients_cannot_set_the_servers_metadata_keys() {
    let app = spawn_app_with(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("meta").await;
    for key in ["flags", "stream_id", "ai_prompt"] {
        let error = alice
            .err(
                "message.send",
                json!({"room": room, "text": "hi", "client_msg_id": key, "metadata": {key: true}}),
                "bad_request",
            )
            .await;
        assert!(
            error["message"].as_str().is_some_and(|m| m.contains(key)),
            "{error}"
        );
    }
    alice
        .ok(
            "message.send",
            json!({"room": room, "text": "hi", "client_msg_id": "ok", "metadata": {"color": "red"}}),
        )
        .await;
}

#[tokio::test]
async fn a_text_frame_that_is_not_utf8_closes_with_1007() {
    let app = spawn_app_with(|_| {}).await;
    let mut client = app.anonymous("alice").await;
    client.send_raw_text(vec![b'{', 0xff, 0xfe, b'}']).await;
    assert_eq!(client.close_code().await, Some(1007));
}

#[tokio::test]
async fn nobody_signs_in_as_the_servers_own_identities() {
    let app = spawn_app_with(|c| c.auth.dev_login = true).await;
    for reserved in ["system", "assistant", "bot:weather"] {
        let mut client = app.connect().await;
        client
            .err("auth", json!({"dev_user": reserved}), "bad_request")
            .await;
        assert!(
            app.user_at(&app.ws_url(), reserved).await.is_none(),
            "a token for {reserved} is refused"
        );
    }
}

#[tokio::test]
async fn a_non_ascii_user_id_works_end_to_end() {
    let app = spawn_app_with(|_| {}).await;
    let mut zoe = app.user("zoë", "Zoë").await;
    let room = zoe.public_room("café").await;
    zoe.ok("room.join", json!({"room": room})).await;
    let sent = zoe
        .ok(
            "message.send",
            json!({"room": room, "text": "bonjour", "client_msg_id": "z1"}),
        )
        .await;
    assert_eq!(sent["message"]["sender"]["id"], "zoë");
    let history = zoe.ok("message.history", json!({"room": room})).await;
    assert_eq!(history["messages"][0]["sender"]["id"], "zoë");
}

/// Whether the server closed `stream` (EOF or reset) within 10 s.
async fn closed_by_server(stream: &mut tokio::net::TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    loop {
        match tokio::time::timeout(std::time::Duration::from_secs(10), stream.read(&mut buf)).await
        {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test]
async fn idle_http_connections_from_one_address_are_capped_at_accept() {
    let app = spawn_app_with(|c| {
        c.edge.max_http_conns_per_ip = 3;
        c.edge.http_header_timeout_ms = 60_000;
    })
    .await;
    let mut idle = Vec::new();
    for _ in 0..3 {
        idle.push(
            tokio::net::TcpStream::connect(app.addrs.edge)
                .await
                .expect("connect"),
        );
    }
    let mut fourth = tokio::net::TcpStream::connect(app.addrs.edge)
        .await
        .expect("the kernel accepts");
    assert!(
        closed_by_server(&mut fourth).await,
        "the fourth is closed at accept"
    );
    drop(idle);
    // Their places come back: a WebSocket client gets in.
    let mut client = None;
    for _ in 0..100 {
        if let Ok(c) = crate::helpers::Client::connect(&app.ws_url(), &[]).await {
            client = Some(c);
            break;
        }
        tokio::task::yield_now().await;
    }
    assert!(client.is_some(), "places are given back");
}

#[tokio::test]
async fn a_connection_that_never_finishes_its_headers_is_closed() {
    use tokio::io::AsyncWriteExt;
    let app = spawn_app_with(|c| c.edge.http_header_timeout_ms = 200).await;
    let mut slow = tokio::net::TcpStream::connect(app.addrs.edge)
        .await
        .expect("connect");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .expect("write");
    assert!(
        closed_by_server(&mut slow).await,
        "closed after the header timeout"
    );
}

#[tokio::test]
async fn room_creation_is_rate_limited_lower_for_anonymous_users() {
    let app = spawn_app_with(|c| {
        c.edge.rate_room_create_per_hour = 3;
        c.edge.rate_room_create_anonymous_per_hour = 1;
    })
    .await;
    let create = |n: usize| json!({"name": format!("room {n}"), "visibility": "public"});
    let mut guest = app.anonymous("guest").await;
    guest.ok("room.create", create(1)).await;
    let error = guest.err("room.create", create(2), "rate_limited").await;
    assert!(
        error["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{error}"
    );
    let mut member = app.user("member", "Member").await;
    for n in 10..13 {
        member.ok("room.create", create(n)).await;
    }
    member.err("room.create", create(13), "rate_limited").await;
}
