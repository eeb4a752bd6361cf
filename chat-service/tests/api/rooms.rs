//! Rooms: direct pairs, public names, the service credential and actor,
//! private-room visibility, joining with log replay, leaving, unread counts.

use common::Secret;
use common::grpc::channel;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{CreateRoomRequest, ListRoomsRequest, Room, Visibility};
use tonic::Code;

use crate::helpers::*;

#[tokio::test]
async fn a_direct_room_is_unique_per_pair() {
    let app = spawn_app().await;
    let room = app
        .create_room(ALICE, "", Visibility::Direct, &[BOB])
        .await
        .expect("direct room");
    assert_eq!(room.visibility, Visibility::Direct as i32);
    assert_eq!(room.owner_id, ALICE);

    let again = app
        .create_room(BOB, "", Visibility::Direct, &[ALICE])
        .await
        .expect("the same pair from the other side");
    assert_eq!(again.id, room.id);
    let with_repeats = app
        .create_room(ALICE, "", Visibility::Direct, &[BOB, BOB, ALICE])
        .await
        .expect("repeated names count once");
    assert_eq!(with_repeats.id, room.id);

    let other_pair = app
        .create_room(ALICE, "", Visibility::Direct, &[CAROL])
        .await
        .expect("another pair");
    assert_ne!(other_pair.id, room.id);

    for members in [&[][..], &[ALICE][..], &[BOB, CAROL][..]] {
        let result = app
            .create_room(ALICE, "", Visibility::Direct, members)
            .await;
        assert_eq!(code(result), Code::InvalidArgument, "members {members:?}");
    }
    assert_eq!(room_ids(&app.list_rooms(BOB).await), [room.id.as_str()]);
}

#[tokio::test]
async fn one_of_a_direct_pair_who_left_gets_back_in_by_creating_it_again() {
    let app = spawn_app().await;
    let room = app
        .create_room(ALICE, "", Visibility::Direct, &[BOB])
        .await
        .expect("direct room");
    app.leave(ALICE, &room.id).await.expect("leave");
    assert_eq!(code(app.join(ALICE, &room.id, None).await), Code::NotFound);

    let again = app
        .create_room(ALICE, "", Visibility::Direct, &[BOB])
        .await
        .expect("again");
    assert_eq!(again.id, room.id);
    app.join(ALICE, &room.id, None)
        .await
        .expect("a member again");
    let events = app.events(BOB, &room.id, 0).await.expect("events");
    assert_eq!(
        kinds(&events.events),
        [
            "member.joined",
            "member.joined",
            "member.left",
            "member.joined"
        ]
    );
}

#[tokio::test]
async fn public_room_names_are_unique_but_private_ones_are_not() {
    let app = spawn_app().await;
    app.public_room(ALICE, "general", &[]).await;
    let taken = app
        .create_room(BOB, "general", Visibility::Public, &[])
        .await;
    assert_eq!(code(taken), Code::AlreadyExists);
    let padded = app
        .create_room(BOB, "  general ", Visibility::Public, &[])
        .await;
    assert_eq!(code(padded), Code::AlreadyExists, "names are trimmed");

    let first = app
        .create_room(ALICE, "general", Visibility::Private, &[])
        .await
        .expect("a private room may share a public room's name");
    let second = app
        .create_room(BOB, "general", Visibility::Private, &[])
        .await
        .expect("private rooms may share a name");
    assert_ne!(first.id, second.id);
    app.public_room(BOB, "random", &[]).await;
}

#[tokio::test]
async fn calls_need_the_service_credential_and_an_actor() {
    let app = spawn_app().await;
    let list = || actor(ALICE).request(ListRoomsRequest::default());

    let stranger = Secret::new(common::ids::random_secret(32));
    let mut wrong =
        ChatServiceClient::new(channel(&app.url, &settings(&stranger)).expect("channel"));
    assert_eq!(code(wrong.list_rooms(list()).await), Code::Unauthenticated);

    let bare = tonic::transport::Endpoint::from_shared(app.url.clone())
        .expect("endpoint")
        .connect_lazy();
    let mut bare = ChatServiceClient::new(bare);
    assert_eq!(code(bare.list_rooms(list()).await), Code::Unauthenticated);

    let mut client = app.client.clone();
    let anonymous = client.list_rooms(ListRoomsRequest::default()).await;
    assert_eq!(code(anonymous), Code::Unauthenticated, "no actor metadata");
    let create = client
        .create_room(CreateRoomRequest {
            name: "general".into(),
            visibility: Visibility::Public as i32,
            members: Vec::new(),
        })
        .await;
    assert_eq!(code(create), Code::Unauthenticated, "no actor metadata");

    client
        .list_rooms(list())
        .await
        .expect("credential and actor are enough");
}

#[tokio::test]
async fn a_private_room_looks_missing_to_outsiders() {
    let app = spawn_app().await;
    let room = app
        .create_room(ALICE, "secret", Visibility::Private, &[BOB])
        .await
        .expect("private room");

    for room_id in [room.id.as_str(), "r_no_such_room"] {
        let statuses = [
            app.join(CAROL, room_id, None).await.expect_err("join"),
            app.history(CAROL, history_of(room_id, 0))
                .await
                .expect_err("history"),
            app.events(CAROL, room_id, 0).await.expect_err("events"),
            app.send(CAROL, room_id, "hi").await.expect_err("send"),
        ];
        for status in statuses {
            assert_eq!(status.code(), Code::NotFound, "{room_id}: {status:?}");
            assert_eq!(status.message(), "room not found", "{room_id}");
        }
    }
    assert!(app.list_rooms(CAROL).await.is_empty());

    // Bob is only invited until he accepts.
    assert_eq!(code(app.join(BOB, &room.id, None).await), Code::NotFound);
    app.accept(BOB, &room.id).await.expect("bob accepts");
    let joined = app.join(BOB, &room.id, None).await.expect("member joins");
    assert_eq!(
        joined.last_seq, 3,
        "owner joined, member invited, member joined"
    );
    let sent = app.send(BOB, &room.id, "hi").await.expect("member sends");
    assert_eq!(sent.seq, 4);
    let history = app
        .history(ALICE, history_of(&room.id, 0))
        .await
        .expect("owner reads");
    assert_eq!(ids(&history.messages), [sent.id.as_str()]);
}

#[tokio::test]
async fn join_replays_the_log_after_since() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    app.join(BOB, &room.id, None).await.expect("bob joins");
    let sent = app.send_many(ALICE, &room.id, "m", 3).await;

    let joined = app.join(ALICE, &room.id, Some(1)).await.expect("rejoin");
    assert_eq!(joined.last_seq, 5);
    assert_eq!(
        kinds(&joined.events),
        ["member.joined", "message.new", "message.new", "message.new"]
    );
    for (event, seq) in joined.events.iter().zip(2..) {
        let body = json(event);
        assert_eq!((event.seq, &event.room_id), (seq, &room.id));
        assert_eq!(body["seq"], seq);
        assert_eq!(body["type"], event.kind.as_str());
        assert_eq!(body["room"], room.id.as_str());
    }
    assert_eq!(json(&joined.events[0])["user"]["id"], BOB);
    assert_eq!(
        json(&joined.events[3])["message"]["id"],
        sent[2].id.as_str()
    );
    assert!(joined.recovered);
    assert!(!joined.has_more);

    let up_to_date = app.join(ALICE, &room.id, Some(5)).await.expect("join");
    assert!(up_to_date.events.is_empty());
    assert!(up_to_date.recovered);

    let fresh = app.join(ALICE, &room.id, None).await.expect("join");
    assert!(fresh.events.is_empty());
    assert!(!fresh.recovered, "nothing was asked to recover");
    assert_eq!(fresh.last_seq, 5);
    assert_eq!(fresh.room.expect("room").last_seq, 5);

    // A newcomer's own member.joined is part of the replay.
    let carol = app.join(CAROL, &room.id, Some(5)).await.expect("join");
    assert_eq!(kinds(&carol.events), ["member.joined"]);
    assert_eq!(json(&carol.events[0])["user"]["id"], CAROL);
    assert_eq!(carol.last_seq, 6);
}

/// A join refused for a bad field adds no membership and logs nothing.
#[tokio::test]
async fn a_refused_join_changes_nothing() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let refused = app.join(CAROL, &room.id, Some(-1)).await;
    assert_eq!(code(refused), Code::InvalidArgument);
    assert!(app.list_rooms(CAROL).await.is_empty(), "carol is no member");
    let events = app.events(ALICE, &room.id, 0).await.expect("events");
    assert_eq!(
        kinds(&events.events),
        ["member.joined"],
        "only alice's join"
    );
}

#[tokio::test]
async fn join_replays_one_page_when_the_log_is_longer() {
    let app = spawn_app_with(|config| config.page_limit = 5).await;
    let room = app.public_room(ALICE, "general", &[]).await;
    app.send_many(ALICE, &room.id, "m", 8).await;

    let joined = app.join(ALICE, &room.id, Some(0)).await.expect("join");
    assert_eq!(joined.last_seq, 9);
    assert_eq!(
        joined.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [1, 2, 3, 4, 5]
    );
    assert!(joined.has_more);
    assert!(!joined.recovered);

    let rest = app.join(ALICE, &room.id, Some(5)).await.expect("join");
    assert_eq!(
        rest.events.iter().map(|e| e.seq).collect::<Vec<_>>(),
        [6, 7, 8, 9]
    );
    assert!(!rest.has_more);
    assert!(rest.recovered);
}

#[tokio::test]
async fn leaving_logs_member_left_and_drops_the_room_from_the_list() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    app.join(BOB, &room.id, None).await.expect("join");
    assert_eq!(room_ids(&app.list_rooms(BOB).await), [room.id.as_str()]);

    app.leave(BOB, &room.id).await.expect("leave");
    let events = app.events(ALICE, &room.id, 2).await.expect("events");
    assert_eq!(kinds(&events.events), ["member.left"]);
    let left = &events.events[0];
    assert_eq!(left.seq, 3);
    assert_eq!(json(left)["user"]["id"], BOB);
    assert_eq!(json(left)["seq"], 3);

    assert!(app.list_rooms(BOB).await.is_empty());
    assert_eq!(room_ids(&app.list_rooms(ALICE).await), [room.id.as_str()]);
    let refused = app.send(BOB, &room.id, "still here?").await;
    assert_eq!(code(refused), Code::PermissionDenied);

    app.leave(BOB, &room.id)
        .await
        .expect("leaving again is a no-op");
    let events = app.events(ALICE, &room.id, 2).await.expect("events");
    assert_eq!(events.events.len(), 1, "no second member.left");
}

#[tokio::test]
async fn list_rooms_counts_unread_messages_from_others() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let quiet = app
        .create_room(ALICE, "quiet", Visibility::Private, &[])
        .await
        .expect("room");
    app.send_many(BOB, &room.id, "b", 3).await;
    app.send_many(ALICE, &room.id, "a", 2).await;

    let unread = |rooms: Vec<Room>| {
        let mut unread: Vec<_> = rooms.into_iter().map(|r| (r.id, r.unread)).collect();
        unread.sort();
        unread
    };
    let mut expected = vec![(room.id.clone(), 3), (quiet.id.clone(), 0)];
    expected.sort();
    assert_eq!(unread(app.list_rooms(ALICE).await), expected);
    assert_eq!(unread(app.list_rooms(BOB).await), [(room.id.clone(), 2)]);
    assert!(app.list_rooms(CAROL).await.is_empty());
}

#[tokio::test]
async fn room_names_cannot_hide_text_direction_or_control_characters() {
    let app = spawn_app().await;
    for name in ["evil\u{202e}moor", "a\u{2067}b", "tab\there"] {
        let status = app
            .create_room(ALICE, name, Visibility::Public, &[])
            .await
            .expect_err("disguised name");
        assert_eq!(status.code(), Code::InvalidArgument, "{name:?}");
    }
    app.create_room(ALICE, "Zoë's 東京 room 🎉", Visibility::Public, &[])
        .await
        .expect("any other script is fine");
}

#[tokio::test]
async fn a_join_that_omits_presence_leaves_out_the_member_list() {
    let app = spawn_app().await;
    let room = app
        .create_room(ALICE, "lobby", Visibility::Public, &[])
        .await
        .expect("room");
    let full = app.join(BOB, &room.id, None).await.expect("join");
    let mut members = full.members.clone();
    members.sort();
    assert_eq!(members, [ALICE, BOB]);

    let request = proto::chat::v1::JoinRoomRequest {
        room_id: room.id.clone(),
        omit_presence: true,
        ..Default::default()
    };
    let lean = app.join_request(&actor(BOB), request).await.expect("join");
    assert!(lean.members.is_empty() && lean.online.is_empty());
    assert_eq!(
        lean.last_seq, full.last_seq,
        "the rest is answered as before"
    );
}

#[tokio::test]
async fn a_join_that_omits_members_leaves_out_only_the_member_list() {
    let app = spawn_app().await;
    let room = app
        .create_room(ALICE, "hall", Visibility::Public, &[])
        .await
        .expect("room");
    let full = app.join(BOB, &room.id, Some(0)).await.expect("join");
    assert_eq!(full.members.len(), 2);

    let request = proto::chat::v1::JoinRoomRequest {
        room_id: room.id.clone(),
        since: Some(0),
        omit_members: true,
        ..Default::default()
    };
    let lean = app.join_request(&actor(BOB), request).await.expect("join");
    assert!(lean.members.is_empty());
    assert_eq!(
        (lean.last_seq, lean.events, lean.recovered),
        (full.last_seq, full.events, full.recovered),
        "the rest is answered as before"
    );
}
