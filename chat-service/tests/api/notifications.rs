//! Mention notifications: who is notified (members named by id or by the
//! name they joined under, once each, never the sender), how they are
//! published, listed and marked read.

use common::bus::user_channel;
use proto::chat::v1::Notification;
use serde_json::json;

use crate::helpers::*;

/// A member who joined under a display name unlike their id.
const DAVE_ID: &str = "u_4711";
const ERIN: &str = "erin";

#[tokio::test]
async fn mentions_notify_the_named_members_once() {
    let app = spawn_app().await;
    // Members named at creation join under their ids as names.
    let room = app.public_room(BOB, "general", &[ALICE, CAROL]).await;
    app.join_as(&actor_named(DAVE_ID, "Dave"), &room.id, None)
        .await
        .expect("dave joins under his name");
    let everyone = [ALICE, BOB, CAROL, DAVE_ID, ERIN];
    let channels: Vec<String> = everyone.iter().map(|u| user_channel(u)).collect();
    let mut tap = app.tap(&channels).await;

    let text = "hi @alice and @Carol, @ALICE again; cc @bob @erin";
    let sent = app.send(BOB, &room.id, text).await.expect("send");
    let mut published = Vec::new();
    for _ in 0..2 {
        let (channel, envelope) = tap.next().await;
        assert_eq!(envelope.kind, "notification.new");
        let event = body(&envelope);
        assert_eq!(event["type"], "notification.new");
        let notification = &event["notification"];
        assert_eq!(notification["kind"], "mention");
        assert_eq!(notification["room"], room.id.as_str());
        assert_eq!(notification["message_id"], sent.id.as_str());
        assert_eq!(notification["from"]["id"], BOB);
        assert_eq!(notification["from"]["name"], "bob (name)");
        assert_eq!(notification["text"], text);
        assert_eq!(notification["read"], false);
        published.push((channel, notification["id"].clone()));
    }
    tap.assert_idle();
    published.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        published.iter().map(|p| p.0.as_str()).collect::<Vec<_>>(),
        [user_channel(ALICE), user_channel(CAROL)]
    );

    for (user, channel_index) in [(ALICE, 0), (CAROL, 1)] {
        let listed = app.notifications(user, false).await;
        assert_eq!(listed.len(), 1, "{user} is notified once");
        let n = &listed[0];
        assert_eq!(n.user_id, user);
        assert_eq!(n.kind, "mention");
        assert_eq!(n.room_id, room.id);
        assert_eq!(n.message_id.as_deref(), Some(sent.id.as_str()));
        assert!(!n.read);
        assert_eq!(
            n.id, published[channel_index].1,
            "{user}: the published one"
        );
        let stored: serde_json::Value = serde_json::from_str(&n.json).expect("json");
        assert_eq!(stored["from"], json!({"id": BOB, "name": "bob (name)"}));
    }
    for user in [BOB, DAVE_ID, ERIN] {
        assert!(
            app.notifications(user, false).await.is_empty(),
            "{user}: the sender, a member not named, a non-member"
        );
    }

    // An address is no mention.
    app.send(CAROL, &room.id, "mail a@alice or dave@example.com")
        .await
        .expect("send");
    tap.assert_idle();
    assert_eq!(app.notifications(ALICE, false).await.len(), 1);
    assert!(app.notifications(DAVE_ID, false).await.is_empty());

    // The name a member joined under counts like their id.
    let to_dave = app
        .send(ALICE, &room.id, "@Dave, look")
        .await
        .expect("send");
    let (channel, envelope) = tap.next().await;
    assert_eq!(channel, user_channel(DAVE_ID));
    assert_eq!(
        body(&envelope)["notification"]["message_id"],
        to_dave.id.as_str()
    );
    tap.assert_idle();
    let listed = app.notifications(DAVE_ID, false).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].message_id.as_deref(), Some(to_dave.id.as_str()));
}

#[tokio::test]
async fn one_message_notifies_at_most_max_mentions_per_message() {
    let app = spawn_app_with(|c| c.max_mentions_per_message = 1).await;
    let room = app.public_room(BOB, "crowd", &[ALICE, CAROL]).await;
    app.send(BOB, &room.id, "@alice @carol")
        .await
        .expect("send");
    let mut notified = 0;
    for user in [ALICE, CAROL] {
        notified += app.notifications(user, false).await.len();
    }
    assert_eq!(notified, 1, "one mention notifies, the second none");
}

fn notification_ids(list: &[Notification]) -> Vec<&str> {
    list.iter().map(|n| n.id.as_str()).collect()
}

#[tokio::test]
async fn notifications_are_marked_read_by_their_owner_only() {
    let app = spawn_app().await;
    let room = app.public_room(BOB, "general", &[ALICE, CAROL]).await;
    app.send(BOB, &room.id, "@alice @carol first")
        .await
        .expect("send");
    app.send(BOB, &room.id, "@alice second")
        .await
        .expect("send");
    let alices = app.notifications(ALICE, false).await;
    assert_eq!(alices.len(), 2);
    let (second, first) = (alices[0].id.clone(), alices[1].id.clone());
    assert!(alices[0].json.contains("second"), "newest first");
    let carols = app.notifications(CAROL, false).await;
    assert_eq!(carols.len(), 1);

    app.read_notifications(CAROL, &[&first, &carols[0].id])
        .await
        .expect("ids of others are ignored");
    assert_eq!(
        notification_ids(&app.notifications(ALICE, true).await),
        [second.as_str(), first.as_str()],
        "alice's stay unread"
    );
    assert!(app.notifications(CAROL, true).await.is_empty());

    app.read_notifications(ALICE, &[&first])
        .await
        .expect("alice reads hers");
    assert_eq!(
        notification_ids(&app.notifications(ALICE, true).await),
        [second.as_str()]
    );
    let all = app.notifications(ALICE, false).await;
    assert_eq!(notification_ids(&all), [second.as_str(), first.as_str()]);
    assert_eq!(
        all.iter().map(|n| n.read).collect::<Vec<_>>(),
        [false, true]
    );
}

#[tokio::test]
async fn a_mention_finds_a_member_by_a_name_beyond_ascii_in_any_case() {
    let app = spawn_app().await;
    let room = app.public_room(BOB, "names", &[]).await;
    app.join_as(&actor_named("u_zoe", "Zoë"), &room.id, None)
        .await
        .expect("zoë joins");
    app.join_as(&actor_named("u_ann", "ANN"), &room.id, None)
        .await
        .expect("ann joins");
    app.send(BOB, &room.id, "@ZOË and @ann: lunch?")
        .await
        .expect("send");
    assert_eq!(app.notifications("u_zoe", false).await.len(), 1);
    assert_eq!(app.notifications("u_ann", false).await.len(), 1);
    app.send(BOB, &room.id, "@Ann again").await.expect("send");
    assert_eq!(app.notifications("u_ann", false).await.len(), 2);
}
