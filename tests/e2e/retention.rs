//! Retention: the clean-up job, run at an injected time, deletes what is
//! older than `chat.retention_days` (or a room's own days), and a client
//! recovering from before what is left gets `history_truncated` instead of
//! a silent gap; deleted rooms are purged by the same job.

use proto::chat::v1::SetRetentionRequest;
use serde_json::json;

use crate::helpers::spawn_app_with;

const DAY_MS: i64 = 24 * 3600 * 1000;

#[tokio::test]
async fn recovery_from_before_the_retained_log_is_history_truncated() {
    let app = spawn_app_with(|c| c.chat.retention_days = 30).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.share_room(&[]).await;
    let kept = alice.share_room(&[]).await;
    for i in 0..5 {
        alice.send(&room, &format!("old {i}")).await;
        alice.send(&kept, &format!("kept {i}")).await;
    }
    // A room of its own keeps everything (0: forever).
    app.chat_backend_client()
        .set_retention(SetRetentionRequest {
            room_id: kept.clone(),
            days: Some(0),
        })
        .await
        .expect("set retention");

    let now = common::ids::now_ms();
    let report = app.clean_up_at(now + 29 * DAY_MS).await;
    assert_eq!(report.events, 0, "nothing is 30 days old yet");
    let report = app.clean_up_at(now + 31 * DAY_MS).await;
    assert!(report.events >= 5, "{report:?}");

    // Recovering from a seq retention deleted: no events, a clear marker.
    let mut bob_device = app.user("alice", "Alice").await;
    let reply = bob_device
        .ok("room.join", json!({"room": room, "since": 1}))
        .await;
    assert_eq!(reply["history_truncated"], true, "{reply}");
    assert_eq!(reply["recovered"], false);
    assert_eq!(reply["events"], json!([]));
    let history = bob_device
        .ok("message.history", json!({"room": room}))
        .await;
    assert_eq!(history["messages"], json!([]), "the messages went too");

    // What follows is recovered as usual.
    let (_, seq) = alice.send(&room, "new").await;
    let reply = bob_device
        .ok("room.join", json!({"room": room, "since": seq - 1}))
        .await;
    assert!(reply.get("history_truncated").is_none(), "{reply}");
    assert_eq!(reply["recovered"], true);
    assert_eq!(reply["events"][0]["message"]["text"], "new");

    // The room that keeps everything lost nothing.
    let reply = bob_device
        .ok("room.join", json!({"room": kept, "since": 0}))
        .await;
    assert!(reply.get("history_truncated").is_none(), "{reply}");
    let history = bob_device
        .ok("message.history", json!({"room": kept}))
        .await;
    assert_eq!(history["messages"].as_array().map(Vec::len), Some(5));
}

#[tokio::test]
async fn retention_is_off_by_default_and_a_room_may_turn_it_on() {
    let app = spawn_app_with(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let forever = alice.share_room(&[]).await;
    let week = alice.share_room(&[]).await;
    alice.send(&forever, "stays").await;
    alice.send(&week, "goes").await;
    app.chat_backend_client()
        .set_retention(SetRetentionRequest {
            room_id: week.clone(),
            days: Some(7),
        })
        .await
        .expect("set retention");
    app.clean_up_at(common::ids::now_ms() + 3650 * DAY_MS).await;
    let history = alice.ok("message.history", json!({"room": forever})).await;
    assert_eq!(history["messages"][0]["text"], "stays");
    let history = alice.ok("message.history", json!({"room": week})).await;
    assert_eq!(history["messages"], json!([]));
}

#[tokio::test]
async fn deleted_rooms_are_purged_by_the_clean_up() {
    let app = spawn_app_with(|c| c.chat.deleted_room_purge_s = 3600).await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.share_room(&[]).await;
    alice.send(&room, "bye").await;
    alice.ok("room.delete", json!({"room": room})).await;
    // Until purged, a recovering join still learns the room was deleted.
    let reply = alice
        .ok("room.join", json!({"room": room, "since": 0}))
        .await;
    assert_eq!(reply["events"][0]["type"], "room.deleted");
    let now = common::ids::now_ms();
    assert_eq!(app.clean_up_at(now).await.rooms, 0, "not an hour yet");
    assert_eq!(app.clean_up_at(now + 3_601_000).await.rooms, 1);
    alice
        .err("room.join", json!({"room": room, "since": 0}), "not_found")
        .await;
}
