//! Several rooms in one `room.join`, and the directory of public rooms
//! (issue 21, items 4 and 5).

use serde_json::{Value, json};

use crate::helpers::{spawn_app, spawn_app_with};

/// Each result's room and `ok`, in order.
fn outcomes(reply: &Value) -> Vec<(String, bool)> {
    reply["results"]
        .as_array()
        .expect("results")
        .iter()
        .map(|r| {
            (
                r["room"].as_str().expect("room").to_string(),
                r["ok"].as_bool().expect("ok"),
            )
        })
        .collect()
}

#[tokio::test]
async fn one_join_names_several_rooms_and_answers_each_then_streams_all() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let first = alice.public_room("first").await;
    let second = alice.public_room("second").await;
    let hidden = alice
        .ok(
            "room.create",
            json!({"name": "hidden", "visibility": "private"}),
        )
        .await["room"]["id"]
        .as_str()
        .expect("id")
        .to_string();
    let barred = alice.public_room("barred").await;
    bob.ok("room.join", json!({"room": barred})).await;
    alice
        .ok("room.ban", json!({"room": barred, "user": bob.user_id}))
        .await;
    let (_, before) = alice.send(&second, "missed").await;

    let reply = bob
        .ok(
            "room.join",
            json!({"rooms": [
                {"room": first},
                {"room": second, "since": 0},
                {"room": hidden},
                {"room": barred},
            ]}),
        )
        .await;
    assert_eq!(
        outcomes(&reply),
        [
            (first.clone(), true),
            (second.clone(), true),
            (hidden.clone(), false),
            (barred.clone(), false)
        ]
    );
    let results = reply["results"].as_array().expect("results");
    assert_eq!(results[0]["joined"]["room"]["id"], first);
    assert_eq!(results[1]["joined"]["recovered"], true);
    assert!(
        results[1]["joined"]["events"]
            .as_array()
            .expect("events")
            .iter()
            .any(|e| e["type"] == "message.new" && e["seq"] == before),
        "{reply}"
    );
    assert_eq!(results[2]["error"]["code"], "not_found");
    assert_eq!(results[3]["error"]["code"], "forbidden");
    assert_eq!(results[3]["error"]["reason"], "banned");

    // Live events of every joined room follow the reply.
    let (_, in_first) = alice.send(&first, "one").await;
    let (_, in_second) = alice.send(&second, "two").await;
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let event = bob.event("message.new").await;
        seen.push((
            event["room"].as_str().expect("room").to_string(),
            event["seq"].as_i64().expect("seq"),
        ));
    }
    assert!(seen.contains(&(first.clone(), in_first)), "{seen:?}");
    assert!(seen.contains(&(second.clone(), in_second)), "{seen:?}");
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn a_join_of_too_many_rooms_is_too_large_and_joins_none() {
    let app = spawn_app_with(|c| c.edge.max_rooms_per_join = 2).await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    let mut rooms = Vec::new();
    for name in ["a", "b", "c"] {
        rooms.push(alice.public_room(name).await);
    }
    let targets: Vec<Value> = rooms.iter().map(|r| json!({"room": r})).collect();
    bob.err("room.join", json!({"rooms": targets}), "too_large")
        .await;
    let listed = bob.ok("room.list", json!({})).await;
    assert_eq!(listed["rooms"], json!([]), "no membership was made");
    alice.send(&rooms[0], "nobody hears this").await;
    let two: Vec<Value> = rooms[1..].iter().map(|r| json!({"room": r})).collect();
    let reply = bob.ok("room.join", json!({"rooms": two})).await;
    assert_eq!(
        outcomes(&reply),
        [(rooms[1].clone(), true), (rooms[2].clone(), true)]
    );
    assert!(
        bob.take_pending().iter().all(|f| f["room"] != rooms[0]),
        "events of a room not joined"
    );
    bob.err(
        "room.join",
        json!({"rooms": [{"room": rooms[0]}, {"room": rooms[0]}]}),
        "bad_request",
    )
    .await;
    crate::helpers::assert_no_task_panicked();
}

#[tokio::test]
async fn the_directory_lists_public_rooms_by_name_prefix_with_member_counts() {
    let app = spawn_app().await;
    let mut alice = app.anonymous("alice").await;
    let mut bob = app.anonymous("bob").await;
    // Names whose order is the same in every collation.
    let alpha_1 = alice.public_room("alphaone").await;
    alice.public_room("alphatwo").await;
    alice.public_room("alphabet").await;
    alice.public_room("beta").await;
    alice
        .ok(
            "room.create",
            json!({"name": "alpha-secret", "visibility": "private"}),
        )
        .await;
    let gone = alice.public_room("alphagone").await;
    alice.ok("room.delete", json!({"room": gone})).await;
    bob.ok("room.join", json!({"room": alpha_1})).await;

    let first = bob
        .ok("room.directory", json!({"query": "ALPHA", "limit": 2}))
        .await;
    let names = |reply: &Value| -> Vec<String> {
        reply["rooms"]
            .as_array()
            .expect("rooms")
            .iter()
            .map(|r| r["name"].as_str().expect("name").to_string())
            .collect()
    };
    assert_eq!(names(&first), ["alphabet", "alphaone"]);
    assert_eq!(first["rooms"][0]["member_count"], 1);
    assert_eq!(first["rooms"][1]["member_count"], 2);
    assert_eq!(first["rooms"][1]["id"], alpha_1);
    let cursor = first["next_cursor"].as_str().expect("next page");
    let second = bob
        .ok(
            "room.directory",
            json!({"query": "alpha", "limit": 2, "cursor": cursor}),
        )
        .await;
    assert_eq!(names(&second), ["alphatwo"]);
    assert!(second.get("next_cursor").is_none(), "{second}");

    let everything = bob.ok("room.directory", json!({})).await;
    assert_eq!(
        names(&everything),
        ["alphabet", "alphaone", "alphatwo", "beta"]
    );
    let literal = bob.ok("room.directory", json!({"query": "alpha_"})).await;
    assert_eq!(names(&literal), Vec::<String>::new(), "`_` is no wildcard");
    bob.err("room.directory", json!({"limit": 101}), "bad_request")
        .await;
    crate::helpers::assert_no_task_panicked();
}
