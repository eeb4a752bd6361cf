//! The chat service over real gRPC, on SQLite (or Postgres with
//! `PARLEY_TEST_DATABASE_URL`): creating rooms (direct pairs, public names),
//! the service credential and actor, private-room visibility, sending (seqs,
//! retries, limits, threads), history and log paging, leaving, publishing on
//! the bus, and unread counts.

use std::sync::Arc;
use std::time::Duration;

use chat_service::{ChatApp, MAX_METADATA_BYTES};
use common::Secret;
use common::bus::{Bus, BusEvent, Envelope, MemoryBus, room_channel};
use common::config::ChatConfig;
use common::grpc::{Actor, ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use common::testing::TestDatabase;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{
    CreateRoomRequest, GetEventsRequest, GetEventsResponse, GetHistoryRequest, GetHistoryResponse,
    JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest, ListRoomsRequest, Message, Room,
    RoomEvent, SendMessageRequest, SendMessageResponse, Visibility,
};
use serde_json::Value;
use tonic::{Code, Status};

const ALICE: &str = "alice";
const BOB: &str = "bob";
const CAROL: &str = "carol";

/// Bound on waiting for a bus event, so a missing one fails instead of hanging.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running chat service on its own database and memory bus, and a client
/// holding the service credential. Fields drop in order: the server stops
/// before its database is removed.
struct TestApp {
    url: String,
    client: ChatServiceClient<ServiceChannel>,
    bus: Arc<MemoryBus>,
    _shutdown: Shutdown,
    _db: TestDatabase,
}

fn settings(credential: &Secret) -> ClientSettings {
    ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the service with the default configuration changed by `configure`.
async fn spawn_app_with(configure: impl FnOnce(&mut ChatConfig)) -> TestApp {
    let db = common::testing::test_database().await;
    let mut config = ChatConfig {
        database_url: db.url.clone(),
        ..Default::default()
    };
    configure(&mut config);
    let bus = Arc::new(MemoryBus::new());
    let credential = Secret::new(common::ids::random_secret(32));
    let app = ChatApp::connect(&config, bus.clone(), None, &credential)
        .await
        .expect("chat app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(listener, shutdown.signal()));
    let client = ChatServiceClient::new(channel(&url, &settings(&credential)).expect("channel"));
    TestApp {
        url,
        client,
        bus,
        _shutdown: shutdown,
        _db: db,
    }
}

fn actor(user_id: &str) -> Actor {
    Actor {
        user_id: user_id.into(),
        name: format!("{user_id} (name)"),
        anonymous: false,
    }
}

/// An edit to a send request, to make it invalid in one way.
type Change = fn(&mut SendMessageRequest);

/// A request to send `text` under a fresh `client_msg_id`.
fn message(room_id: &str, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        room_id: room_id.into(),
        text: text.into(),
        client_msg_id: common::ids::new_id("c"),
        thread_id: None,
        metadata_json: String::new(),
    }
}

impl TestApp {
    async fn create_room(
        &self,
        user: &str,
        name: &str,
        visibility: Visibility,
        members: &[&str],
    ) -> Result<Room, Status> {
        let request = CreateRoomRequest {
            name: name.into(),
            visibility: visibility as i32,
            members: members.iter().map(|m| m.to_string()).collect(),
        };
        let response = self
            .client
            .clone()
            .create_room(actor(user).request(request))
            .await?;
        Ok(response.into_inner().room.expect("a created room"))
    }

    async fn public_room(&self, user: &str, name: &str, members: &[&str]) -> Room {
        self.create_room(user, name, Visibility::Public, members)
            .await
            .expect("create public room")
    }

    async fn send_request(
        &self,
        user: &str,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse, Status> {
        let response = self
            .client
            .clone()
            .send_message(actor(user).request(request))
            .await?;
        Ok(response.into_inner())
    }

    async fn send(&self, user: &str, room_id: &str, text: &str) -> Result<Message, Status> {
        let response = self.send_request(user, message(room_id, text)).await?;
        assert!(!response.duplicate, "a fresh client_msg_id is no retry");
        Ok(response.message.expect("a sent message"))
    }

    /// Sends `n` messages `"{prefix}{i}"` and returns them.
    async fn send_many(&self, user: &str, room_id: &str, prefix: &str, n: usize) -> Vec<Message> {
        let mut sent = Vec::with_capacity(n);
        for i in 0..n {
            let text = format!("{prefix}{i}");
            sent.push(self.send(user, room_id, &text).await.expect("send"));
        }
        sent
    }

    async fn join(
        &self,
        user: &str,
        room_id: &str,
        since: Option<i64>,
    ) -> Result<JoinRoomResponse, Status> {
        let request = JoinRoomRequest {
            room_id: room_id.into(),
            since,
            limit: 0,
        };
        let response = self
            .client
            .clone()
            .join_room(actor(user).request(request))
            .await?;
        Ok(response.into_inner())
    }

    async fn leave(&self, user: &str, room_id: &str) -> Result<(), Status> {
        let request = LeaveRoomRequest {
            room_id: room_id.into(),
        };
        self.client
            .clone()
            .leave_room(actor(user).request(request))
            .await
            .map(drop)
    }

    async fn list_rooms(&self, user: &str) -> Vec<Room> {
        self.client
            .clone()
            .list_rooms(actor(user).request(ListRoomsRequest {}))
            .await
            .expect("list rooms")
            .into_inner()
            .rooms
    }

    async fn history(
        &self,
        user: &str,
        request: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, Status> {
        let response = self
            .client
            .clone()
            .get_history(actor(user).request(request))
            .await?;
        Ok(response.into_inner())
    }

    async fn events(
        &self,
        user: &str,
        room_id: &str,
        after: i64,
    ) -> Result<GetEventsResponse, Status> {
        let request = GetEventsRequest {
            room_id: room_id.into(),
            after,
            limit: 0,
        };
        let response = self
            .client
            .clone()
            .get_events(actor(user).request(request))
            .await?;
        Ok(response.into_inner())
    }
}

/// A history request for the newest page of `room_id`.
fn history_of(room_id: &str, limit: u32) -> GetHistoryRequest {
    GetHistoryRequest {
        room_id: room_id.into(),
        before: None,
        after: None,
        limit,
        thread_id: None,
    }
}

fn seqs(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

fn ids(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.id.as_str()).collect()
}

fn room_ids(rooms: &[Room]) -> Vec<&str> {
    rooms.iter().map(|r| r.id.as_str()).collect()
}

fn kinds(events: &[RoomEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

fn json(event: &RoomEvent) -> Value {
    serde_json::from_str(&event.json).expect("event json")
}

/// The code of a call that must fail.
fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    result.expect_err("the call must fail").code()
}

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
    let list = || actor(ALICE).request(ListRoomsRequest {});

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
    let anonymous = client.list_rooms(ListRoomsRequest {}).await;
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

    let joined = app.join(BOB, &room.id, None).await.expect("member joins");
    assert_eq!(joined.last_seq, 2, "owner and member joined at creation");
    let sent = app.send(BOB, &room.id, "hi").await.expect("member sends");
    assert_eq!(sent.seq, 3);
    let history = app
        .history(ALICE, history_of(&room.id, 0))
        .await
        .expect("owner reads");
    assert_eq!(ids(&history.messages), [sent.id.as_str()]);
}

#[tokio::test]
async fn sends_take_consecutive_seqs_and_retries_are_deduplicated() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    assert_eq!(room.last_seq, 2, "two member.joined events");

    let first = app.send(ALICE, &room.id, "one").await.expect("send");
    let request = message(&room.id, "two");
    let second = app.send_request(BOB, request.clone()).await.expect("send");
    let second_message = second.message.expect("message");
    assert_eq!(
        (first.seq, second_message.seq, second.duplicate),
        (3, 4, false)
    );
    assert_eq!(
        second_message.sender.as_ref().map(|s| s.id.as_str()),
        Some(BOB)
    );

    let retry = app.send_request(BOB, request).await.expect("retry");
    assert!(retry.duplicate);
    let retried = retry.message.expect("message");
    assert_eq!((retried.id, retried.seq), (second_message.id, 4));

    let third = app.send(ALICE, &room.id, "three").await.expect("send");
    assert_eq!(third.seq, 5, "a retry consumes no seq");
    let history = app
        .history(ALICE, history_of(&room.id, 0))
        .await
        .expect("history");
    assert_eq!(seqs(&history.messages), [3, 4, 5]);
}

#[tokio::test]
async fn sending_to_a_public_room_needs_membership() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let refused = app.send(CAROL, &room.id, "hi").await;
    assert_eq!(code(refused), Code::PermissionDenied);

    let joined = app.join(CAROL, &room.id, None).await.expect("join");
    assert_eq!(joined.last_seq, 2, "carol's member.joined");
    let sent = app.send(CAROL, &room.id, "hi").await.expect("member sends");
    assert_eq!(sent.seq, 3);
}

#[tokio::test]
async fn invalid_messages_are_refused() {
    let app = spawn_app_with(|config| config.max_text_chars = 50).await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let with = |change: Change| {
        let mut request = message(&room.id, "hello");
        change(&mut request);
        request
    };

    let cases: [(&str, Change, Code); 6] = [
        (
            "empty text",
            |r| r.text = String::new(),
            Code::InvalidArgument,
        ),
        (
            "blank text",
            |r| r.text = " \n ".into(),
            Code::InvalidArgument,
        ),
        (
            "text over the limit",
            |r| r.text = "é".repeat(51),
            Code::OutOfRange,
        ),
        (
            "no client_msg_id",
            |r| r.client_msg_id = String::new(),
            Code::InvalidArgument,
        ),
        (
            "metadata not an object",
            |r| r.metadata_json = "[1]".into(),
            Code::InvalidArgument,
        ),
        (
            "metadata over 4 KiB",
            |r| r.metadata_json = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES)),
            Code::OutOfRange,
        ),
    ];
    for (case, change, expected) in cases {
        let result = app.send_request(ALICE, with(change)).await;
        assert_eq!(code(result), expected, "{case}");
    }

    // The limits are inclusive and count characters, not bytes.
    let at_limit = app
        .send_request(ALICE, with(|r| r.text = "é".repeat(50)))
        .await
        .expect("text at the limit")
        .message
        .expect("message");
    assert_eq!(at_limit.seq, 2, "refused sends consume no seq");
    let with_metadata = app
        .send_request(
            ALICE,
            with(|r| r.metadata_json = r#"{ "k": [1, 2] }"#.into()),
        )
        .await
        .expect("object metadata")
        .message
        .expect("message");
    let metadata: Value = serde_json::from_str(&with_metadata.metadata_json).expect("json");
    assert_eq!(metadata, serde_json::json!({"k": [1, 2]}));
    // `{"a":"…"}` is 8 bytes around the padding: exactly the limit.
    app.send_request(
        ALICE,
        with(|r| r.metadata_json = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES - 8))),
    )
    .await
    .expect("metadata at the limit");
}

#[tokio::test]
async fn replies_join_the_root_thread() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let other_room = app.public_room(ALICE, "other", &[]).await;
    let reply = |to: &str, text: &str| SendMessageRequest {
        thread_id: Some(to.into()),
        ..message(&room.id, text)
    };
    let sent = |response: SendMessageResponse| response.message.expect("message");

    let root = app.send(ALICE, &room.id, "root").await.expect("root");
    let first = sent(
        app.send_request(BOB, reply(&root.id, "r1"))
            .await
            .expect("reply"),
    );
    assert_eq!(first.thread_id.as_deref(), Some(root.id.as_str()));
    let nested = sent(
        app.send_request(ALICE, reply(&first.id, "r2"))
            .await
            .expect("reply to a reply"),
    );
    assert_eq!(nested.thread_id.as_deref(), Some(root.id.as_str()));

    let unknown = app
        .send_request(ALICE, reply("m_no_such_message", "x"))
        .await;
    assert_eq!(code(unknown), Code::NotFound);
    let elsewhere = app
        .send(ALICE, &other_room.id, "elsewhere")
        .await
        .expect("send");
    let across_rooms = app.send_request(ALICE, reply(&elsewhere.id, "x")).await;
    assert_eq!(
        code(across_rooms),
        Code::NotFound,
        "a thread of another room"
    );

    // Noise: a top-level message and another thread.
    let other_root = app.send(BOB, &room.id, "other root").await.expect("send");
    sent(
        app.send_request(BOB, reply(&other_root.id, "o1"))
            .await
            .expect("reply"),
    );

    let thread = app
        .history(
            ALICE,
            GetHistoryRequest {
                thread_id: Some(root.id.clone()),
                ..history_of(&room.id, 0)
            },
        )
        .await
        .expect("thread history");
    assert_eq!(
        ids(&thread.messages),
        [first.id.as_str(), nested.id.as_str()]
    );
    assert!(!thread.has_more);
}

#[tokio::test]
async fn history_pages_backwards_and_forwards() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[]).await;
    let sent = app.send_many(ALICE, &room.id, "m", 25).await;
    assert_eq!(seqs(&sent), (2..=26).collect::<Vec<_>>());
    let page = |before: Option<i64>, after: Option<i64>| {
        let request = GetHistoryRequest {
            before,
            after,
            ..history_of(&room.id, 10)
        };
        app.history(BOB, request)
    };

    let newest = page(None, None).await.expect("newest page");
    assert_eq!(seqs(&newest.messages), (17..=26).collect::<Vec<_>>());
    assert_eq!(ids(&newest.messages), ids(&sent[15..]));
    assert!(newest.has_more);

    let older = page(Some(17), None).await.expect("older page");
    assert_eq!(seqs(&older.messages), (7..=16).collect::<Vec<_>>());
    assert!(older.has_more);
    let oldest = page(Some(7), None).await.expect("oldest page");
    assert_eq!(seqs(&oldest.messages), (2..=6).collect::<Vec<_>>());
    assert!(!oldest.has_more);

    let forward = page(None, Some(6)).await.expect("forward page");
    assert_eq!(seqs(&forward.messages), (7..=16).collect::<Vec<_>>());
    assert!(forward.has_more);
    let last = page(None, Some(16)).await.expect("last forward page");
    assert_eq!(seqs(&last.messages), (17..=26).collect::<Vec<_>>());
    assert!(!last.has_more);
    assert_eq!(last.messages.last().map(|m| m.text.as_str()), Some("m24"));
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
async fn committed_messages_are_published_in_seq_order() {
    let app = spawn_app().await;
    let room = app.public_room(ALICE, "general", &[BOB]).await;
    let (subscriber, mut received) = app.bus.subscriber().await.expect("subscriber");
    subscriber
        .subscribe(&room_channel(&room.id))
        .await
        .expect("subscribe");

    let senders = [ALICE, BOB].map(|user| {
        let app_client = app.client.clone();
        let room_id = room.id.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..10 {
                let request = message(&room_id, &format!("{user} {i}"));
                let response = app_client
                    .clone()
                    .send_message(actor(user).request(request))
                    .await
                    .expect("send");
                ids.push(response.into_inner().message.expect("message").id);
            }
            ids
        })
    });
    let mut sent_ids = Vec::new();
    for sender in senders {
        sent_ids.extend(sender.await.expect("sender task"));
    }

    let mut envelopes: Vec<Envelope> = Vec::new();
    while envelopes.len() < 20 {
        let event = tokio::time::timeout(RECEIVE_TIMEOUT, received.recv())
            .await
            .expect("an envelope in time")
            .expect("bus open");
        match event {
            BusEvent::Message { channel, envelope } => {
                assert_eq!(channel, room_channel(&room.id));
                envelopes.push(envelope);
            }
            BusEvent::Resubscribed => panic!("the memory bus never resubscribes"),
        }
    }
    assert!(received.try_recv().is_err(), "exactly 20 envelopes");

    let first = room.last_seq + 1;
    assert_eq!(
        envelopes.iter().map(|e| e.seq).collect::<Vec<_>>(),
        (first..first + 20).collect::<Vec<_>>(),
        "consecutive, in order"
    );
    let mut published_ids = Vec::new();
    for envelope in &envelopes {
        assert_eq!(
            (envelope.kind.as_str(), &envelope.room_id),
            ("message.new", &room.id)
        );
        let body: Value = serde_json::from_str(&envelope.json).expect("json");
        assert_eq!(body["seq"], envelope.seq);
        published_ids.push(body["message"]["id"].as_str().expect("id").to_string());
    }
    published_ids.sort();
    sent_ids.sort();
    assert_eq!(published_ids, sent_ids);
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
