//! `ChatBackendService`, for trusted backends: posting as a bot, custom
//! events to a room or a user, listing rooms and reading history without
//! membership, all behind the service credential.

use common::Secret;
use common::bus::{room_channel, user_channel};
use common::grpc::channel;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::publish_event_request::Target;
use proto::chat::v1::{
    BackendListRoomsRequest, GetRoomRequest, PostMessageRequest, PublishEventRequest, User,
    Visibility,
};
use serde_json::json;
use tonic::{Code, Request};

use crate::helpers::*;

const WEATHER: &str = "bot:weather";

fn post(room_id: &str, sender_id: &str, text: &str) -> PostMessageRequest {
    PostMessageRequest {
        room_id: room_id.into(),
        sender: Some(User {
            id: sender_id.into(),
            name: "Weather".into(),
        }),
        text: text.into(),
        client_msg_id: common::ids::new_id("c"),
        thread_id: None,
        metadata_json: String::new(),
        reply_to: None,
    }
}

fn publish(target: Target, event: &str, data_json: &str) -> PublishEventRequest {
    PublishEventRequest {
        target: Some(target),
        event: event.into(),
        data_json: data_json.into(),
    }
}

fn list(user_id: Option<&str>, limit: u32, before: Option<&str>) -> BackendListRoomsRequest {
    BackendListRoomsRequest {
        user_id: user_id.map(Into::into),
        limit,
        before: before.map(Into::into),
    }
}

#[tokio::test]
async fn a_bot_posts_into_a_private_room_once_per_client_msg_id() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[BOB]).await;
    let request = post(&room.id, WEATHER, "Sunny, 21 °C");

    let first = app.post(request.clone()).await.expect("the bot posts");
    assert!(!first.duplicate);
    let posted = first.message.expect("message");
    assert_eq!(posted.seq, 4);
    assert_eq!(posted.room_id, room.id);
    assert_eq!(posted.text, "Sunny, 21 °C");
    assert_eq!(
        posted.sender,
        Some(User {
            id: WEATHER.into(),
            name: "Weather".into()
        })
    );

    let retry = app.post(request).await.expect("a retried post");
    assert!(retry.duplicate);
    let retried = retry.message.expect("message");
    assert_eq!((retried.id.as_str(), retried.seq), (posted.id.as_str(), 4));

    let log = app.log(ALICE, &room.id).await;
    assert_eq!(
        kinds(&log),
        [
            "member.joined",
            "member.invited",
            "member.joined",
            "message.new"
        ],
        "one message.new"
    );
    assert_eq!(json(&log[3])["message"]["sender"]["id"], WEATHER);
    let seen = app.message_in_history(BOB, &room.id, &posted.id).await;
    assert_eq!(seen.text, "Sunny, 21 °C");
    assert!(
        app.backend_rooms(list(Some(WEATHER), 0, None))
            .await
            .is_empty(),
        "posting makes no member"
    );
    let system = post(&room.id, "system", "maintenance at noon");
    let by_system = app.post(system).await.expect("the system posts");
    assert_eq!(by_system.message.expect("message").seq, 5);
}

#[tokio::test]
async fn only_bots_and_the_system_post_and_only_into_existing_rooms() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;

    for sender in [ALICE, "bot:", "assistant", ""] {
        let refused = app.post(post(&room.id, sender, "hi")).await;
        assert_eq!(code(refused), Code::InvalidArgument, "sender {sender:?}");
    }
    let no_sender = PostMessageRequest {
        sender: None,
        ..post(&room.id, WEATHER, "hi")
    };
    assert_eq!(code(app.post(no_sender).await), Code::InvalidArgument);
    let nameless = PostMessageRequest {
        sender: Some(User {
            id: WEATHER.into(),
            name: " ".into(),
        }),
        ..post(&room.id, WEATHER, "hi")
    };
    assert_eq!(code(app.post(nameless).await), Code::InvalidArgument);
    let empty = app.post(post(&room.id, WEATHER, " ")).await;
    assert_eq!(code(empty), Code::InvalidArgument);
    let unknown = app.post(post("r_no_such_room", WEATHER, "hi")).await;
    assert_eq!(code(unknown), Code::NotFound);

    assert_eq!(kinds(&app.log(ALICE, &room.id).await), ["member.joined"]);
}

#[tokio::test]
async fn custom_events_reach_a_room_or_one_user() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[]).await;
    let mut tap = app.tap(&[room_channel(&room.id), user_channel(BOB)]).await;

    app.publish(publish(
        Target::RoomId(room.id.clone()),
        "sync",
        r#"{"v": 1}"#,
    ))
    .await
    .expect("publish to the room");
    let (channel, envelope) = tap.next().await;
    assert_eq!(channel, room_channel(&room.id));
    assert_eq!(envelope.kind, "custom");
    assert_eq!(envelope.room_id, room.id);
    assert_eq!(
        body(&envelope),
        json!({"type": "custom", "room": room.id, "event": "sync", "data": {"v": 1}})
    );

    app.publish(publish(
        Target::UserId(BOB.into()),
        "app.refresh:all",
        "[1, \"two\"]",
    ))
    .await
    .expect("publish to a user");
    let (channel, envelope) = tap.next().await;
    assert_eq!(channel, user_channel(BOB));
    assert_eq!(envelope.kind, "custom");
    assert_eq!(
        body(&envelope),
        json!({"type": "custom", "event": "app.refresh:all", "data": [1, "two"]}),
        "no room for a user's event"
    );
    app.publish(publish(Target::UserId(BOB.into()), "ping", ""))
        .await
        .expect("no data");
    let (_, envelope) = tap.next().await;
    assert_eq!(body(&envelope)["data"], json!(null));
    tap.assert_idle();

    let long_name = "e".repeat(65);
    let invalid = [
        ("empty name", "", "{}"),
        ("a space", "bad name", "{}"),
        ("a slash", "a/b", "{}"),
        ("65 bytes", long_name.as_str(), "{}"),
        ("not JSON", "sync", "{"),
        ("trailing junk", "sync", "{} x"),
    ];
    for (case, event, data) in invalid {
        for target in [Target::RoomId(room.id.clone()), Target::UserId(BOB.into())] {
            let refused = app.publish(publish(target, event, data)).await;
            assert_eq!(code(refused), Code::InvalidArgument, "{case}");
        }
    }
    let no_target = PublishEventRequest {
        target: None,
        ..publish(Target::UserId(BOB.into()), "sync", "{}")
    };
    assert_eq!(code(app.publish(no_target).await), Code::InvalidArgument);
    let unknown = publish(Target::RoomId("r_no_such_room".into()), "sync", "{}");
    assert_eq!(code(app.publish(unknown).await), Code::NotFound);
    tap.assert_idle();
    assert_eq!(
        app.log(ALICE, &room.id).await.len(),
        1,
        "custom events are not logged"
    );
}

#[tokio::test]
async fn backends_list_rooms_newest_first_and_page_with_before() {
    let app = spawn_app().await;
    let first = app.private_room(ALICE, "one", &[]).await;
    let others = app.private_room(BOB, "bob's", &[]).await;
    let second = app.public_room(BOB, "two", &[ALICE]).await;
    let third = app
        .create_room(ALICE, "", Visibility::Direct, &[CAROL])
        .await
        .expect("direct room");

    let all = app.backend_rooms(list(None, 0, None)).await;
    assert_eq!(
        room_ids(&all),
        [
            third.id.as_str(),
            second.id.as_str(),
            others.id.as_str(),
            first.id.as_str()
        ]
    );
    let alices = app.backend_rooms(list(Some(ALICE), 0, None)).await;
    assert_eq!(
        room_ids(&alices),
        [third.id.as_str(), second.id.as_str(), first.id.as_str()]
    );

    let page = app.backend_rooms(list(Some(ALICE), 2, None)).await;
    assert_eq!(room_ids(&page), [third.id.as_str(), second.id.as_str()]);
    let rest = app
        .backend_rooms(list(Some(ALICE), 2, Some(&second.id)))
        .await;
    assert_eq!(room_ids(&rest), [first.id.as_str()]);
    let past_the_end = app
        .backend_rooms(list(Some(ALICE), 2, Some(&first.id)))
        .await;
    assert!(past_the_end.is_empty());
    assert!(
        app.backend_rooms(list(Some(DAVE), 0, None))
            .await
            .is_empty()
    );
}

#[tokio::test]
async fn backends_read_a_private_rooms_history_without_an_actor() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[BOB]).await;
    let sent = app.send_many(BOB, &room.id, "m", 3).await;

    let history = app
        .backend
        .clone()
        .get_history(history_of(&room.id, 2))
        .await
        .expect("backend history")
        .into_inner();
    assert_eq!(ids(&history.messages), ids(&sent[1..]));
    assert!(history.has_more);
    let unknown = app
        .backend
        .clone()
        .get_history(history_of("r_no_such_room", 0))
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    // The same call on the user-facing service needs an actor who may see it.
    let anonymous = app
        .client
        .clone()
        .get_history(history_of(&room.id, 0))
        .await;
    assert_eq!(code(anonymous), Code::Unauthenticated);
}

#[tokio::test]
async fn backends_read_a_private_room_and_its_owner_without_an_actor() {
    let app = spawn_app().await;
    let room = app.private_room(ALICE, "secret", &[BOB]).await;
    let read = app
        .backend
        .clone()
        .get_room(GetRoomRequest {
            room_id: room.id.clone(),
        })
        .await
        .expect("backend room")
        .into_inner()
        .room
        .expect("room");
    assert_eq!(read.id, room.id);
    assert_eq!(read.owner_id, ALICE);
    let unknown = app
        .backend
        .clone()
        .get_room(GetRoomRequest {
            room_id: "r_no_such_room".into(),
        })
        .await;
    assert_eq!(code(unknown), Code::NotFound);
}

#[tokio::test]
async fn backend_calls_need_the_service_credential() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let stranger = Secret::new(common::ids::random_secret(32));
    let wrong =
        ChatBackendServiceClient::new(channel(&app.url, &settings(&stranger)).expect("channel"));
    let bare = ChatBackendServiceClient::new(
        tonic::transport::Endpoint::from_shared(app.url.clone())
            .expect("endpoint")
            .connect_lazy(),
    );
    let mut tap = app.tap(&[room_channel(&room.id)]).await;

    let post_message = || Request::new(post(&room.id, WEATHER, "hi"));
    let publish_event = || Request::new(publish(Target::RoomId(room.id.clone()), "sync", "{}"));
    let statuses = [
        wrong.clone().post_message(post_message()).await.map(drop),
        bare.clone().post_message(post_message()).await.map(drop),
        wrong.clone().publish_event(publish_event()).await.map(drop),
        bare.clone().publish_event(publish_event()).await.map(drop),
        wrong
            .clone()
            .list_rooms(list(None, 0, None))
            .await
            .map(drop),
        bare.clone().list_rooms(list(None, 0, None)).await.map(drop),
        wrong
            .clone()
            .get_history(history_of(&room.id, 0))
            .await
            .map(drop),
        bare.clone()
            .get_history(history_of(&room.id, 0))
            .await
            .map(drop),
    ];
    for (i, status) in statuses.into_iter().enumerate() {
        assert_eq!(code(status), Code::Unauthenticated, "call {i}");
    }
    tap.assert_idle();
    assert_eq!(app.log(ALICE, &room.id).await.len(), 1, "nothing posted");

    app.publish(publish(Target::RoomId(room.id.clone()), "sync", "{}"))
        .await
        .expect("with the credential");
    assert_eq!(tap.next().await.1.kind, "custom");
}

#[tokio::test]
async fn a_backend_notification_is_stored_and_pushed_to_the_user() {
    let app = spawn_app().await;
    let mut tap = app.tap(&[user_channel(BOB)]).await;
    let request = proto::chat::v1::CreateNotificationRequest {
        user_id: BOB.into(),
        kind: "missed_call".into(),
        room_id: String::new(),
        data_json: r#"{"call_id":"call_1","from":{"id":"alice","name":"Alice"}}"#.into(),
    };
    let created = app
        .backend
        .clone()
        .create_notification(request.clone())
        .await
        .expect("create")
        .into_inner()
        .notification
        .expect("notification");
    assert_eq!(created.kind, "missed_call");

    let (_, envelope) = tap.next().await;
    let event = body(&envelope);
    assert_eq!(event["type"], "notification.new");
    assert_eq!(event["notification"]["id"], created.id.as_str());
    assert_eq!(event["notification"]["kind"], "missed_call");
    assert_eq!(event["notification"]["call_id"], "call_1");
    assert_eq!(event["notification"]["from"]["name"], "Alice");

    let listed = app.notifications(BOB, true).await;
    assert_eq!(listed.len(), 1);
    assert_eq!(listed[0].id, created.id);

    for (kind, data, code) in [
        ("mention", "{}", Code::InvalidArgument),
        ("Missed Call", "{}", Code::InvalidArgument),
        ("missed_call", "[1]", Code::InvalidArgument),
        (
            "missed_call",
            &format!("{{\"x\":\"{}\"}}", "y".repeat(17 * 1024)),
            Code::OutOfRange,
        ),
    ] {
        let status = app
            .backend
            .clone()
            .create_notification(proto::chat::v1::CreateNotificationRequest {
                kind: kind.into(),
                data_json: data.to_string(),
                ..request.clone()
            })
            .await
            .expect_err("refused");
        assert_eq!(
            status.code(),
            code,
            "{kind} {}",
            &data[..data.len().min(20)]
        );
    }
}
