//! What a hostile client can no longer do: hold unbounded state, flood the
//! edge with garbage, slip text past inspection through the assistant, set
//! the server's metadata, or send text frames that are not UTF-8.

use serde_json::{Value, json};

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

#[tokio::test]
async fn memberships_per_user_are_capped_however_they_are_made() {
    let app = spawn_app_with(|c| c.chat.max_memberships_per_user = 2).await;
    let mut victim = app.user("victim", "Victim").await;
    // Accepted invitations count: two fill the victim's places (made by
    // two attackers, each at their own cap's first place).
    for n in 0..2 {
        let room = app
            .anonymous("attacker")
            .await
            .ok(
                "room.create",
                json!({"name": format!("trap {n}"), "visibility": "private", "members": ["victim"]}),
            )
            .await["room"]["id"]
            .as_str()
            .expect("room")
            .to_string();
        victim.ok("invitation.accept", json!({"room": room})).await;
    }
    // A pending invitation does not count; accepting it would.
    let third = app
        .anonymous("attacker")
        .await
        .share_room(&["victim"])
        .await;
    let error = victim
        .err("invitation.accept", json!({"room": third}), "too_large")
        .await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("victim")),
        "{error}"
    );
    // Joining, creating and opening a direct room count too.
    let mut other = app.user("other", "Other").await;
    let public = other.public_room("open").await;
    victim
        .err("room.join", json!({"room": public}), "too_large")
        .await;
    victim
        .err(
            "room.create",
            json!({"name": "mine", "visibility": "public"}),
            "too_large",
        )
        .await;
    other
        .err(
            "room.create",
            json!({"visibility": "direct", "members": ["victim"]}),
            "too_large",
        )
        .await;
    // Leaving for good gives a place back; the invitation is still there.
    let rooms = victim.ok("room.list", json!({})).await;
    let first = rooms["rooms"][0]["id"].as_str().expect("room").to_string();
    victim
        .ok("room.leave", json!({"room": first, "forget": true}))
        .await;
    victim.ok("invitation.accept", json!({"room": third})).await;
}

#[tokio::test]
async fn room_create_names_at_most_max_initial_members() {
    let app = spawn_app_with(|c| c.chat.max_initial_members = 2).await;
    let mut alice = app.user("alice", "Alice").await;
    let error = alice
        .err(
            "room.create",
            json!({"name": "big", "visibility": "private", "members": ["a", "b", "c"]}),
            "too_large",
        )
        .await;
    assert!(
        error["message"].as_str().is_some_and(|m| m.contains('2')),
        "{error}"
    );
    alice.share_room(&["a", "b"]).await;
}

#[tokio::test]
async fn stored_notifications_per_user_keep_the_newest() {
    let app = spawn_app_with(|c| c.chat.max_notifications_per_user = 3).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let room = bob.share_room_with(&mut [&mut alice]).await;
    for n in 1..=5 {
        bob.send(&room, &format!("@alice ping {n}")).await;
    }
    let listed = alice.ok("notification.list", json!({})).await;
    let texts: Vec<&str> = listed["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["text"].as_str())
        .collect();
    assert_eq!(texts, ["@alice ping 5", "@alice ping 4", "@alice ping 3"]);
}

#[tokio::test]
async fn a_member_removed_banned_or_gone_can_no_longer_type_there() {
    let app = spawn_app_with(|_| {}).await;
    let mut owner = app.user("owner", "Owner").await;
    let room = owner.public_room("typing").await;
    owner.ok("room.join", json!({"room": room})).await;
    let mut clients = Vec::new();
    for name in ["removed", "banned", "gone"] {
        let mut client = app.user(name, name).await;
        client.ok("room.join", json!({"room": room})).await;
        client.ok("typing.start", json!({"room": room})).await;
        assert_eq!(owner.event("typing").await["user"], name);
        clients.push(client);
    }
    owner
        .ok(
            "room.remove_member",
            json!({"room": room, "user": "removed"}),
        )
        .await;
    owner
        .ok("room.ban", json!({"room": room, "user": "banned"}))
        .await;
    // `gone` left for good from another connection; this one stays joined.
    let mut gone_elsewhere = app.user("gone", "gone").await;
    gone_elsewhere
        .ok("room.leave", json!({"room": room, "forget": true}))
        .await;
    for client in &mut clients {
        client
            .err("typing.start", json!({"room": room}), "forbidden")
            .await;
    }
    // Nor do their connections hear the room any more.
    owner.send(&room, "after").await;
    let mut witness = app.user("witness", "Witness").await;
    witness.ok("room.join", json!({"room": room})).await;
    owner.send(&room, "marker").await;
    assert_eq!(
        witness.event("message.new").await["message"]["text"],
        "marker"
    );
    for client in &mut clients {
        client.ok("ping", json!({})).await;
        let heard: Vec<Value> = client
            .take_pending()
            .into_iter()
            .filter(|f| f["type"] == "message.new")
            .collect();
        assert!(heard.is_empty(), "{heard:?}");
    }
    owner.ok("ping", json!({})).await;
    let typing: Vec<Value> = owner
        .take_pending()
        .into_iter()
        .filter(|f| f["type"] == "typing" && f["typing"] == true)
        .collect();
    assert!(typing.is_empty(), "{typing:?}");
}

#[tokio::test]
async fn a_call_needs_a_shared_room_and_leaves_no_trace_when_refused() {
    let app = spawn_app_with(|c| c.presence.call_ring_ms = 200).await;
    let mut stranger = app.anonymous("stranger").await;
    let mut victim = app.user("victim", "Victim").await;
    let error = stranger
        .err(
            "call.invite",
            json!({"to": "victim", "payload": {}}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "no_shared_room");
    // A room the caller names must be one both are in.
    let mut friend = app.user("friend", "Friend").await;
    let theirs = friend.share_room_with(&mut [&mut victim]).await;
    let error = stranger
        .err(
            "call.invite",
            json!({"to": "victim", "room": theirs, "payload": {}}),
            "not_found",
        )
        .await;
    assert!(error["reason"].is_null(), "{error}");
    let own = stranger.share_room(&[]).await;
    let error = stranger
        .err(
            "call.invite",
            json!({"to": "victim", "room": own, "payload": {}}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "no_shared_room");
    // Past the ring time, the refused invitations left nothing behind.
    tokio::time::sleep(std::time::Duration::from_millis(600)).await;
    let listed = victim.ok("notification.list", json!({})).await;
    assert_eq!(listed["notifications"], json!([]));
    victim.ok("ping", json!({})).await;
    assert!(
        !victim
            .take_pending()
            .iter()
            .any(|f| f["type"].as_str().is_some_and(|t| t.starts_with("call."))),
        "never rang"
    );
    // With a shared room, the call goes through.
    friend
        .ok(
            "call.invite",
            json!({"to": "victim", "room": theirs, "payload": {}}),
        )
        .await;
    victim.event("call.incoming").await;
}

#[tokio::test]
async fn ice_before_the_answer_and_invitations_per_callee_are_limited() {
    let app = spawn_app_with(|c| {
        c.presence.call_ice_before_answer = 3;
        c.presence.call_ice_max_bytes = 256;
        c.presence.call_invites_per_callee_per_min = 2;
    })
    .await;
    let mut caller = app.user("caller", "Caller").await;
    let mut callee = app.user("callee", "Callee").await;
    caller.share_room_with(&mut [&mut callee]).await;
    let call = caller
        .ok("call.invite", json!({"to": "callee", "payload": {}}))
        .await["call_id"]
        .as_str()
        .expect("call_id")
        .to_string();
    let candidate = json!({"candidate": "candidate:1 1 udp 2122260223 10.0.0.1 5000 typ host"});
    caller
        .err(
            "call.ice",
            json!({"call_id": call, "payload": {"candidate": "x".repeat(300)}}),
            "too_large",
        )
        .await;
    for _ in 0..3 {
        caller
            .ok("call.ice", json!({"call_id": call, "payload": candidate}))
            .await;
    }
    caller
        .err(
            "call.ice",
            json!({"call_id": call, "payload": candidate}),
            "too_large",
        )
        .await;
    // Once answered, candidates flow.
    callee.event("call.incoming").await;
    callee.ok("call.answer", json!({"call_id": call})).await;
    for _ in 0..5 {
        caller
            .ok("call.ice", json!({"call_id": call, "payload": candidate}))
            .await;
    }
    // Invitations per callee count every caller.
    let mut second = app.user("second", "Second").await;
    second.share_room_with(&mut [&mut callee]).await;
    second
        .ok("call.invite", json!({"to": "callee", "payload": {}}))
        .await;
    let error = caller
        .err(
            "call.invite",
            json!({"to": "callee", "payload": {}}),
            "rate_limited",
        )
        .await;
    assert!(
        error["retry_after_ms"].as_u64().is_some_and(|ms| ms > 0),
        "{error}"
    );
}

#[tokio::test]
async fn presence_follows_need_a_shared_room() {
    let app = spawn_app_with(|_| {}).await;
    let mut stalker = app.anonymous("stalker").await;
    let mut victim = app.user("victim", "Victim").await;
    let error = stalker
        .err(
            "presence.subscribe",
            json!({"users": ["victim"]}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "no_shared_room");
    let mut friend = app.user("friend", "Friend").await;
    friend.share_room_with(&mut [&mut victim]).await;
    let reply = friend
        .ok("presence.subscribe", json!({"users": ["victim"]}))
        .await;
    assert_eq!(reply["presence"][0]["status"], "online");
}

#[tokio::test]
async fn a_blocked_user_cannot_message_call_or_mention_the_blocker() {
    let app = spawn_app_with(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut mallory = app.user("mallory", "Mallory").await;
    // An existing direct room and a group they share.
    let direct = mallory
        .ok(
            "room.create",
            json!({"visibility": "direct", "members": ["alice"]}),
        )
        .await["room"]["id"]
        .as_str()
        .expect("room")
        .to_string();
    let group = mallory.share_room_with(&mut [&mut alice]).await;
    mallory.send(&direct, "hello").await;

    alice.ok("user.block", json!({"user": "mallory"})).await;
    let listed = alice.ok("user.blocks", json!({})).await;
    assert_eq!(listed["blocks"][0]["user"], "mallory");
    assert!(listed["blocks"][0]["blocked_at"].is_i64());

    let refused = |error: Value| assert_eq!(error["reason"], "blocked", "{error}");
    refused(
        mallory
            .err(
                "message.send",
                json!({"room": direct, "text": "hi", "client_msg_id": "m1"}),
                "forbidden",
            )
            .await,
    );
    refused(
        mallory
            .err(
                "room.create",
                json!({"visibility": "direct", "members": ["alice"]}),
                "forbidden",
            )
            .await,
    );
    refused(
        mallory
            .err(
                "call.invite",
                json!({"to": "alice", "payload": {}}),
                "forbidden",
            )
            .await,
    );
    refused(
        mallory
            .err(
                "presence.subscribe",
                json!({"users": ["alice"]}),
                "forbidden",
            )
            .await,
    );
    // In a group the message is posted, but the mention notifies no one.
    mallory.send(&group, "@alice look").await;
    let mut carol = app.user("carol", "Carol").await;
    carol.share_room_with(&mut [&mut alice]).await;
    let shared = carol.share_room_with(&mut [&mut alice]).await;
    carol.send(&shared, "@alice hi from carol").await;
    let notifications = alice.ok("notification.list", json!({})).await;
    let from: Vec<&str> = notifications["notifications"]
        .as_array()
        .expect("notifications")
        .iter()
        .filter_map(|n| n["from"]["id"].as_str())
        .collect();
    assert_eq!(from, ["carol"]);

    // The blocker may still write; unblocking lifts it all.
    alice.send(&direct, "why").await;
    alice.ok("user.unblock", json!({"user": "mallory"})).await;
    mallory.send(&direct, "sorry").await;
    assert_eq!(
        alice.ok("user.blocks", json!({})).await["blocks"],
        json!([])
    );
    alice
        .err("user.block", json!({"user": "alice"}), "bad_request")
        .await;
}

#[tokio::test]
async fn refused_bus_payloads_are_counted_in_metrics() {
    use common::metrics::find_sample;
    const REFUSED: &str = "parley_bus_refused_payloads_total";
    let app = spawn_app_with(|_| {}).await;
    let scrape = app.scrape().await;
    assert_eq!(
        find_sample(&scrape, REFUSED, &[]),
        Some(0.0),
        "exported at 0"
    );
    let Some(redis_url) = common::testing::test_redis_url() else {
        return;
    };
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("bus").await;
    alice.ok("room.join", json!({"room": room})).await;
    // A raw PUBLISH, as someone on the Redis network would send it.
    let channel = format!(
        "{}:{}",
        app.config.bus.channel_prefix,
        common::bus::room_channel(&room)
    );
    let client = redis::Client::open(redis_url).expect("redis url");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    let forged = json!({"room_id": room, "seq": 99, "kind": "message.new", "json": "{}"});
    let _: i64 = redis::cmd("PUBLISH")
        .arg(&channel)
        .arg(forged.to_string())
        .query_async(&mut conn)
        .await
        .expect("publish");
    let scrape = app
        .scrape_until(|text| find_sample(text, REFUSED, &[]).is_some_and(|n| n >= 1.0))
        .await;
    assert!(
        find_sample(&scrape, REFUSED, &[]).is_some_and(|n| n >= 1.0),
        "the forged payload is counted"
    );
}

#[tokio::test]
async fn room_list_is_newest_first_and_paged() {
    let app = spawn_app_with(|_| {}).await;
    let mut victim = app.user("victim", "Victim").await;
    let own = victim.public_room("my own").await;
    // Rooms others put the victim in later come first, but the victim's
    // own room is never pushed out of reach: every page can be read.
    let mut spammer = app.user("spammer", "Spammer").await;
    for _ in 0..5 {
        let room = spammer.share_room(&["victim"]).await;
        victim.ok("invitation.accept", json!({"room": room})).await;
    }
    let mut seen = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut args = json!({"limit": 2});
        if let Some(cursor) = &cursor {
            args["cursor"] = json!(cursor);
        }
        let page = victim.ok("room.list", args).await;
        let rooms = page["rooms"].as_array().expect("rooms");
        assert!(rooms.len() <= 2, "{page}");
        seen.extend(
            rooms
                .iter()
                .map(|r| r["id"].as_str().expect("id").to_string()),
        );
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(seen.len(), 6, "{seen:?}");
    assert_eq!(seen.last(), Some(&own), "the oldest membership comes last");
    let all = victim.ok("room.list", json!({})).await;
    assert_eq!(
        all["rooms"][0]["id"].as_str(),
        seen.first().map(String::as_str)
    );
    assert!(all["next_cursor"].is_null());
    victim
        .err("room.list", json!({"cursor": "nonsense"}), "bad_request")
        .await;
    victim
        .err("room.list", json!({"limit": 0}), "bad_request")
        .await;
}
