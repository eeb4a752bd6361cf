//! Membership needs consent (issue 18, point 2): naming someone in
//! `room.create{members}` or `room.invite` makes an invitation, and only
//! the invitee turns it into a membership.

use serde_json::{Value, json};

use crate::helpers::spawn_app_with;

fn ids(rooms: &Value) -> Vec<String> {
    rooms
        .as_array()
        .expect("array")
        .iter()
        .map(|r| r["id"].as_str().expect("id").to_string())
        .collect()
}

#[tokio::test]
async fn an_attacker_adding_a_victim_to_many_private_rooms_makes_only_pending_invitations() {
    let app = spawn_app_with(|c| {
        c.chat.max_pending_invitations_per_user = 5;
        c.chat.max_memberships_per_user = 2;
    })
    .await;
    let mut victim = app.user("victim", "Victim").await;
    let own = victim.public_room("my own").await;
    // Several attacker accounts (each may be in 2 rooms too).
    let mut traps = Vec::new();
    for n in 0..5 {
        let mut attacker = app.user(&format!("attacker{n}"), "Attacker").await;
        let reply = attacker
            .ok(
                "room.create",
                json!({"name": format!("trap {n}"), "visibility": "private", "members": ["victim"]}),
            )
            .await;
        let room = reply["room"]["id"].as_str().expect("room").to_string();
        attacker.ok("room.join", json!({"room": room})).await;
        // The attacker talks to the victim in each trap.
        attacker.send(&room, "@victim you are mine now").await;
        traps.push(room);
    }
    // Past the cap of pending invitations, naming the victim is refused,
    // whichever way, and the refused create makes no room.
    let mut attacker = app.user("attacker", "Attacker").await;
    let error = attacker
        .err(
            "room.create",
            json!({"name": "trap 5", "visibility": "private", "members": ["victim"]}),
            "too_large",
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .is_some_and(|m| m.contains("victim")),
        "{error}"
    );
    let empty = attacker.share_room(&[]).await;
    attacker
        .err(
            "room.invite",
            json!({"room": empty, "user": "victim"}),
            "too_large",
        )
        .await;

    // The victim is in none of the traps: the room list is their own room,
    // the rooms stay invisible, and the mentions notified no one.
    let listed = victim.ok("room.list", json!({})).await;
    assert_eq!(ids(&listed["rooms"]), vec![own.clone()], "{listed}");
    for trap in &traps {
        victim
            .err("room.join", json!({"room": trap}), "not_found")
            .await;
        victim
            .err("message.history", json!({"room": trap}), "not_found")
            .await;
    }
    let notifications = victim.ok("notification.list", json!({})).await;
    assert_eq!(notifications["notifications"], json!([]), "{notifications}");
    // Nor did adding the victim make a relationship: no calls, no presence.
    let mut first = app.user("attacker0", "Attacker").await;
    let error = first
        .err(
            "call.invite",
            json!({"to": "victim", "payload": {}}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "no_shared_room");
    first
        .err(
            "presence.subscribe",
            json!({"users": ["victim"]}),
            "forbidden",
        )
        .await;
    // Nothing reached the victim's connection meanwhile.
    victim.ok("ping", json!({})).await;
    assert_eq!(victim.take_pending(), Vec::<Value>::new());

    // The pending invitations do not take the victim's places (2 at most):
    // they can still create and join.
    victim
        .ok(
            "room.create",
            json!({"name": "second own", "visibility": "private"}),
        )
        .await;
    // They are listed, newest first, naming who invited.
    let invitations = victim.ok("invitation.list", json!({})).await;
    let listed = invitations["invitations"].as_array().expect("invitations");
    let rooms: Vec<&str> = listed
        .iter()
        .map(|i| i["room"]["id"].as_str().expect("room"))
        .collect();
    let newest_first: Vec<&str> = traps.iter().rev().map(String::as_str).collect();
    assert_eq!(rooms, newest_first, "{invitations}");
    assert_eq!(
        listed[0]["by"],
        json!({"id": "attacker4", "name": "Attacker"})
    );
    assert_eq!(listed[0]["room"]["name"], "trap 4");
    assert!(listed[0]["invited_at"].is_i64(), "{invitations}");
    // Declining frees a place for another invitation.
    victim
        .ok("invitation.decline", json!({"room": traps[0]}))
        .await;
    attacker
        .ok("room.invite", json!({"room": empty, "user": "victim"}))
        .await;
}

#[tokio::test]
async fn an_invitation_is_accepted_or_declined_and_the_room_log_says_so() {
    let app = spawn_app_with(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let mut carol = app.user("carol", "Carol").await;
    let reply = alice
        .ok(
            "room.create",
            json!({"name": "plans", "visibility": "private", "members": ["bob", "carol"]}),
        )
        .await;
    let room = reply["room"]["id"].as_str().expect("room").to_string();
    // The log: alice joined, bob and carol were invited.
    let joined = alice
        .ok("room.join", json!({"room": room, "since": 0}))
        .await;
    let log: Vec<(String, String)> = joined["events"]
        .as_array()
        .expect("events")
        .iter()
        .map(|e| {
            (
                e["type"].as_str().expect("type").to_string(),
                e["user"]["id"].as_str().expect("user").to_string(),
            )
        })
        .collect();
    let expected = [
        ("member.joined", "alice"),
        ("member.invited", "bob"),
        ("member.invited", "carol"),
    ]
    .map(|(k, u)| (k.to_string(), u.to_string()));
    assert_eq!(log, expected);
    assert_eq!(joined["events"][1]["by"]["id"], "alice");
    let members = alice.ok("room.members", json!({"room": room})).await;
    assert_eq!(
        members["members"].as_array().expect("members").len(),
        1,
        "invitees are not members: {members}"
    );

    // Bob accepts: he is a member, the room is his, alice sees him join.
    let invitations = bob.ok("invitation.list", json!({})).await;
    assert_eq!(invitations["invitations"][0]["room"]["id"], json!(room));
    let accepted = bob.ok("invitation.accept", json!({"room": room})).await;
    assert_eq!(accepted["room"]["id"], json!(room));
    let event = alice.event("member.joined").await;
    assert_eq!(event["user"]["id"], "bob");
    bob.ok("room.join", json!({"room": room})).await;
    bob.send(&room, "count me in").await;
    assert_eq!(
        alice.event("message.new").await["message"]["text"],
        "count me in"
    );
    let bobs = bob.ok("room.list", json!({})).await;
    assert_eq!(ids(&bobs["rooms"]), vec![room.clone()]);
    assert_eq!(
        bob.ok("invitation.list", json!({})).await["invitations"],
        json!([])
    );
    bob.err("invitation.accept", json!({"room": room}), "not_found")
        .await;

    // Carol declines: alice sees it in the log, carol stays outside.
    carol.ok("invitation.decline", json!({"room": room})).await;
    let declined = alice.event("member.declined").await;
    assert_eq!(declined["user"]["id"], "carol");
    assert_eq!(declined["by"]["id"], "alice");
    carol
        .err("invitation.accept", json!({"room": room}), "not_found")
        .await;
    carol
        .err("room.join", json!({"room": room}), "not_found")
        .await;
    assert_eq!(carol.ok("room.list", json!({})).await["rooms"], json!([]));
    // No one else can answer an invitation that is not theirs.
    let mut mallory = app.user("mallory", "Mallory").await;
    mallory
        .err("invitation.accept", json!({"room": room}), "not_found")
        .await;
}

#[tokio::test]
async fn invitations_respect_blocks_and_joining_a_public_room_settles_one() {
    let app = spawn_app_with(|_| {}).await;
    let mut alice = app.user("alice", "Alice").await;
    let mut dave = app.user("dave", "Dave").await;
    dave.ok("user.block", json!({"user": "alice"})).await;
    let private = alice.share_room(&[]).await;
    let error = alice
        .err(
            "room.invite",
            json!({"room": private, "user": "dave"}),
            "forbidden",
        )
        .await;
    assert_eq!(error["reason"], "blocked");
    assert_eq!(
        dave.ok("invitation.list", json!({})).await["invitations"],
        json!([])
    );
    // A public room: the invitee may simply join, which settles it.
    let mut erin = app.user("erin", "Erin").await;
    let public = alice.public_room("town square").await;
    alice
        .ok("room.invite", json!({"room": public, "user": "erin"}))
        .await;
    erin.ok("room.join", json!({"room": public})).await;
    assert_eq!(
        erin.ok("invitation.list", json!({})).await["invitations"],
        json!([])
    );
    // Direct rooms need no acceptance (but respect blocks).
    let direct = dave.direct_room("erin").await;
    erin.ok("room.join", json!({"room": direct})).await;
}
