//! Delivery across edges and past slow clients: two edges on one bus show
//! every client the same sequence, and a client that stops reading is cut
//! off without holding anyone else up.

use serde_json::json;

use crate::helpers::{Client, assert_no_task_panicked, spawn_app, spawn_app_with};

/// The seqs of the next `count` message.new events.
async fn seqs(client: &mut Client, count: usize) -> Vec<i64> {
    let mut seen = Vec::with_capacity(count);
    while seen.len() < count {
        seen.push(
            client.event("message.new").await["seq"]
                .as_i64()
                .expect("seq"),
        );
    }
    seen
}

fn send(room: &str, id: &str, text: &str) -> String {
    json!({"type": "message.send", "room": room, "text": text, "client_msg_id": id}).to_string()
}

#[tokio::test]
async fn clients_on_two_edges_see_the_same_messages_in_the_same_order() {
    let app = spawn_app().await;
    let second = app.second_edge().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous_at(&second, "bob").await;
    let room = alice.public_room("across").await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;

    for i in 0..50 {
        alice
            .send_text(send(&room, &format!("a{i}"), "from alice"))
            .await;
        bob.send_text(send(&room, &format!("b{i}"), "from bob"))
            .await;
    }
    let at_alice = seqs(&mut alice, 100).await;
    let at_bob = seqs(&mut bob, 100).await;
    assert_eq!(at_alice, at_bob, "one order on both edges");
    let first = at_alice[0];
    assert_eq!(
        at_alice,
        (first..first + 100).collect::<Vec<_>>(),
        "no gap, no duplicate"
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_is_cut_off_without_slowing_the_room() {
    let app = spawn_app_with(|c| c.edge.outbound_queue_bytes = 512 * 1024).await;
    let mut reader = app.user("u-sender", "sender").await;
    let room = reader.public_room("firehose").await;
    reader.ok("room.join", json!({"room": room})).await;
    let mut stalled = Client::connect_with_small_buffer(app.addrs.edge)
        .await
        .expect("connect");
    stalled
        .ok("auth", json!({"anonymous": true, "name": "stalled"}))
        .await;
    stalled.ok("room.join", json!({"room": room})).await;

    // Several devices of one sender send ~16 KB messages (3,900 four-byte
    // characters) side by side, each waiting for its last send's answer,
    // so group commit keeps this quick while at most 8 are in flight (a
    // feed that keeps up stays well inside its 512 KiB); one device reads
    // the room's feed. 7.5 MB in all: more than the 512 KiB bound plus what
    // the kernel's socket buffers (at most 4 MiB here) can hold.
    let (devices, per_device) = (8, 60);
    let messages = devices * per_device;
    let body = "😀".repeat(3900);
    let mut senders = tokio::task::JoinSet::new();
    for device in 0..devices {
        let mut client = app.user("u-sender", "sender").await;
        let (room, body) = (room.clone(), body.clone());
        senders.spawn(async move {
            for i in 0..per_device {
                let id = format!("d{device}-{i}");
                client
                    .ok(
                        "message.send",
                        json!({"room": room, "text": body, "client_msg_id": id}),
                    )
                    .await;
            }
            client
        });
    }
    let delivered = seqs(&mut reader, messages).await;
    // Every send answered (none failed): a final round trip each. After
    // the feed, as a pipelining edge reads the sends (and the ping) at once
    // and the ping's reply waits for all of them.
    while let Some(done) = senders.join_next().await {
        let mut client = done.expect("sender");
        client.ok("ping", json!({})).await;
        assert!(
            client.take_pending().iter().all(|f| f["type"] != "error"),
            "a send failed"
        );
    }
    let first = delivered[0];
    assert_eq!(
        delivered,
        (first..first + messages as i64).collect::<Vec<_>>(),
        "the room's feed is complete and in order for a reader that keeps up"
    );

    // Now read what the stalled client was sent: a prefix, then the end.
    let mut received = 0;
    let ended = loop {
        match stalled.next_frame_or_close().await {
            Ok(frame) if frame["type"] == "message.new" => received += 1,
            Ok(_) => {}
            Err(code) => break code,
        }
    };
    assert!(
        received < messages,
        "cut off before the end ({received} of {messages})"
    );
    assert!(
        matches!(ended, None | Some(4008)),
        "closed as a slow consumer (4008), or dropped when even the close frame could not be written: {ended:?}"
    );
    // The cut-off connection's task ended cleanly, without a panic (it ends
    // within milliseconds of its close frame; this waits well past that).
    drop(stalled);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_no_task_panicked();
}
