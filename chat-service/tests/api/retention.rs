//! Retention: the clean-up job, run at an injected time, deletes a room's
//! old log in batches of `chat.cleanup_batch` while sends carry on, and a
//! join from before what is left is `history_truncated`.

use proto::chat::v1::{GetHistoryRequest, JoinRoomRequest};

use crate::helpers::{actor, spawn_app_with};

const DAY_MS: i64 = 24 * 3600 * 1000;

#[tokio::test]
async fn old_events_go_in_small_batches_while_sends_go_on() {
    let app = spawn_app_with(|c| {
        c.retention_days = 1;
        c.cleanup_batch = 3;
    })
    .await;
    let room = app.public_room("alice", "old", &[]).await;
    app.send_many("alice", &room.id, "old ", 20).await;
    let last_old = app
        .client
        .clone()
        .get_history(actor("alice").request(GetHistoryRequest {
            room_id: room.id.clone(),
            limit: 1,
            ..GetHistoryRequest::default()
        }))
        .await
        .expect("history")
        .into_inner()
        .messages[0]
        .seq;

    // Sends while the job deletes, batch after batch: none waits for it.
    let cleanup = app.cleanup.clone();
    let job = tokio::spawn(async move { cleanup.run_at(common::ids::now_ms() + 2 * DAY_MS).await });
    let fresh = app.send_many("alice", &room.id, "new ", 10).await;
    let report = job.await.expect("job").expect("clean-up");
    assert!(report.events >= 21, "{report:?}");

    let history = app
        .client
        .clone()
        .get_history(actor("alice").request(GetHistoryRequest {
            room_id: room.id.clone(),
            limit: 100,
            ..GetHistoryRequest::default()
        }))
        .await
        .expect("history")
        .into_inner();
    assert!(history.messages.iter().all(|m| m.seq > last_old));
    let texts: Vec<_> = history.messages.iter().map(|m| m.text.clone()).collect();
    let expected: Vec<_> = fresh.iter().map(|m| m.text.clone()).collect();
    // Sends made while the job ran may be old enough for it too (it runs
    // two days ahead); those that are left are the newest, in order.
    assert!(expected.ends_with(&texts), "{texts:?}");

    let join = |since: i64| {
        let mut client = app.client.clone();
        let room_id = room.id.clone();
        async move {
            client
                .join_room(actor("alice").request(JoinRoomRequest {
                    room_id,
                    since: Some(since),
                    limit: 0,
                    ..Default::default()
                }))
                .await
                .expect("join")
                .into_inner()
        }
    };
    let truncated = join(1).await;
    assert!(truncated.history_truncated);
    assert!(!truncated.recovered && truncated.events.is_empty());
    let current = join(truncated.last_seq).await;
    assert!(!current.history_truncated && current.recovered);
}
