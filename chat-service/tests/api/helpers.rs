//! The test app (a chat service on its own database and memory bus, with
//! clients of both gRPC services holding the service credential), the
//! callers' identities, and small helpers shared by every test module.

use std::sync::Arc;
use std::time::Duration;

use chat_service::ChatApp;
use common::Secret;
use common::bus::{Bus, BusEvent, Envelope, MemoryBus, Subscriber};
use common::config::ChatConfig;
use common::grpc::{Actor, ClientSettings, ServiceChannel};
use common::shutdown::Shutdown;
use common::testing::{TestDatabase, serve_grpc};
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{
    BackendListRoomsRequest, CreateRoomRequest, DeleteMessageRequest, EditMessageRequest,
    GetEventsRequest, GetEventsResponse, GetHistoryRequest, GetHistoryResponse, InvitationRequest,
    InviteMemberRequest, JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest,
    ListNotificationsRequest, ListRoomsRequest, MarkReceiptRequest, Message, Notification,
    PostMessageRequest, PublishEventRequest, ReactionRequest, ReadNotificationsRequest,
    ReceiptKind, RemoveMemberRequest, Room, RoomEvent, SendMessageRequest, SendMessageResponse,
    Visibility,
};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use tonic::{Code, Status};

pub const ALICE: &str = "alice";
pub const BOB: &str = "bob";
pub const CAROL: &str = "carol";
pub const DAVE: &str = "dave";

/// Bound on waiting for a bus event, so a missing one fails instead of hanging.
pub const RECEIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// A running chat service on its own database and memory bus, and clients
/// of its two services holding the service credential. Fields drop in
/// order: the server stops before its database is removed.
pub struct TestApp {
    pub url: String,
    /// The database the service uses.
    pub database_url: String,
    pub client: ChatServiceClient<ServiceChannel>,
    pub backend: ChatBackendServiceClient<ServiceChannel>,
    pub bus: Arc<MemoryBus>,
    /// The service credential its clients hold.
    pub credential: Secret,
    /// The service's clean-up job, to run at a chosen time.
    pub cleanup: chat_service::Cleanup,
    /// What the service records.
    pub metrics: Arc<common::metrics::Metrics>,
    /// What it was started with (a restart starts it again so).
    config: ChatConfig,
    /// The serving task, which ends once it has stopped.
    task: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    _shutdown: Shutdown,
    _db: TestDatabase,
}

/// A second chat service on a test app's database (its own pools and
/// writer, as another replica would have), and a client of it.
pub struct Replica {
    pub client: ChatServiceClient<ServiceChannel>,
    _shutdown: Shutdown,
}

pub fn settings(credential: &Secret) -> ClientSettings {
    ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    }
}

pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// Spawns the service with the default configuration changed by `configure`.
pub async fn spawn_app_with(configure: impl FnOnce(&mut ChatConfig)) -> TestApp {
    let db = common::testing::test_database().await;
    let mut config = ChatConfig {
        database_url: db.url.clone(),
        ..Default::default()
    };
    configure(&mut config);
    start(config, db, Secret::new(common::ids::random_secret(32))).await
}

async fn start(config: ChatConfig, db: TestDatabase, credential: Secret) -> TestApp {
    let bus = Arc::new(MemoryBus::new());
    let metrics = common::metrics::Metrics::new(&["chat"]);
    let app = ChatApp::connect(&config, bus.clone(), None, &credential, &metrics)
        .await
        .expect("chat app");
    let cleanup = app.cleanup();
    let server = serve_grpc(|listener, signal| app.run_until_stopped(listener, signal)).await;
    let channel = server.channel(&settings(&credential));
    let client = ChatServiceClient::new(channel.clone());
    let backend = ChatBackendServiceClient::new(channel);
    TestApp {
        url: server.url,
        database_url: config.database_url.clone(),
        client,
        backend,
        bus,
        credential,
        cleanup,
        metrics,
        config,
        task: server.task,
        _shutdown: server.shutdown,
        _db: db,
    }
}

pub fn actor(user_id: &str) -> Actor {
    Actor {
        user_id: user_id.into(),
        name: format!("{user_id} (name)"),
        anonymous: false,
    }
}

/// An actor with a display name of its own choosing.
pub fn actor_named(user_id: &str, name: &str) -> Actor {
    Actor {
        user_id: user_id.into(),
        name: name.into(),
        anonymous: false,
    }
}

/// An edit to a send request, to make it invalid in one way.
pub type Change = fn(&mut SendMessageRequest);

/// A request to send `text` under a fresh `client_msg_id`.
pub fn message(room_id: &str, text: &str) -> SendMessageRequest {
    SendMessageRequest {
        room_id: room_id.into(),
        text: text.into(),
        client_msg_id: common::ids::new_id("c"),
        thread_id: None,
        metadata_json: String::new(),
        reply_to: None,
        ..SendMessageRequest::default()
    }
}

impl TestApp {
    /// Stops the service, waits until it has stopped (open streams end),
    /// and starts a new one on the same database and configuration, on
    /// another port: a chat-service restart.
    pub async fn restart(self) -> TestApp {
        self._shutdown.trigger();
        self.task
            .await
            .expect("server task")
            .expect("server stopped cleanly");
        start(self.config, self._db, self.credential).await
    }

    /// Another chat-service on the same database and bus.
    pub async fn replica(&self) -> Replica {
        let config = ChatConfig {
            database_url: self.database_url.clone(),
            ..Default::default()
        };
        let app = ChatApp::connect(
            &config,
            self.bus.clone(),
            None,
            &self.credential,
            &common::metrics::Metrics::new(&["chat"]),
        )
        .await
        .expect("replica");
        let server = serve_grpc(|listener, signal| app.run_until_stopped(listener, signal)).await;
        Replica {
            client: ChatServiceClient::new(server.channel(&settings(&self.credential))),
            _shutdown: server.shutdown,
        }
    }

    pub async fn create_room(
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

    /// A public room `members` joined (its log: the owner joined, then
    /// each member).
    pub async fn public_room(&self, user: &str, name: &str, members: &[&str]) -> Room {
        let mut room = self
            .create_room(user, name, Visibility::Public, &[])
            .await
            .expect("create public room");
        for member in members {
            let joined = self.join(member, &room.id, None).await.expect("join");
            room.last_seq = joined.last_seq;
        }
        room
    }

    /// A private room `members` were invited to and accepted (its log: the
    /// owner joined, each member invited, then each member joined).
    pub async fn private_room(&self, user: &str, name: &str, members: &[&str]) -> Room {
        let room = self
            .create_room(user, name, Visibility::Private, members)
            .await
            .expect("create private room");
        self.accept_all(room, members).await
    }

    /// Each of `members` accepts their invitation to `room`; the room as
    /// the last one left it.
    async fn accept_all(&self, mut room: Room, members: &[&str]) -> Room {
        for member in members {
            room = self.accept(member, &room.id).await.expect("accept");
        }
        room
    }

    pub async fn accept(&self, user: &str, room_id: &str) -> Result<Room, Status> {
        let request = InvitationRequest {
            room_id: room_id.into(),
        };
        let response = self
            .client
            .clone()
            .accept_invitation(actor(user).request(request))
            .await?;
        Ok(response.into_inner().room.expect("the room"))
    }

    pub async fn decline(&self, user: &str, room_id: &str) -> Result<(), Status> {
        let request = InvitationRequest {
            room_id: room_id.into(),
        };
        self.client
            .clone()
            .decline_invitation(actor(user).request(request))
            .await
            .map(drop)
    }

    pub async fn invitations(&self, user: &str) -> Vec<proto::chat::v1::Invitation> {
        self.client
            .clone()
            .list_invitations(actor(user).request(proto::chat::v1::ListInvitationsRequest {}))
            .await
            .expect("invitations")
            .into_inner()
            .invitations
    }

    pub async fn send_request(
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

    pub async fn send(&self, user: &str, room_id: &str, text: &str) -> Result<Message, Status> {
        let response = self.send_request(user, message(room_id, text)).await?;
        assert!(!response.duplicate, "a fresh client_msg_id is no retry");
        Ok(response.message.expect("a sent message"))
    }

    /// Sends `n` messages `"{prefix}{i}"` and returns them.
    pub async fn send_many(
        &self,
        user: &str,
        room_id: &str,
        prefix: &str,
        n: usize,
    ) -> Vec<Message> {
        let mut sent = Vec::with_capacity(n);
        for i in 0..n {
            let text = format!("{prefix}{i}");
            sent.push(self.send(user, room_id, &text).await.expect("send"));
        }
        sent
    }

    pub async fn join(
        &self,
        user: &str,
        room_id: &str,
        since: Option<i64>,
    ) -> Result<JoinRoomResponse, Status> {
        self.join_as(&actor(user), room_id, since).await
    }

    /// Joins as `actor`, e.g. one with a display name of its own.
    pub async fn join_as(
        &self,
        actor: &Actor,
        room_id: &str,
        since: Option<i64>,
    ) -> Result<JoinRoomResponse, Status> {
        let request = JoinRoomRequest {
            room_id: room_id.into(),
            since,
            limit: 0,
            ..Default::default()
        };
        self.join_request(actor, request).await
    }

    /// Joins as `actor` with a request of the test's own.
    pub async fn join_request(
        &self,
        actor: &Actor,
        request: JoinRoomRequest,
    ) -> Result<JoinRoomResponse, Status> {
        let response = self
            .client
            .clone()
            .join_room(actor.request(request))
            .await?;
        Ok(response.into_inner())
    }

    pub async fn leave(&self, user: &str, room_id: &str) -> Result<(), Status> {
        let request = LeaveRoomRequest {
            room_id: room_id.into(),
        };
        self.client
            .clone()
            .leave_room(actor(user).request(request))
            .await
            .map(drop)
    }

    pub async fn list_rooms(&self, user: &str) -> Vec<Room> {
        self.client
            .clone()
            .list_rooms(actor(user).request(ListRoomsRequest::default()))
            .await
            .expect("list rooms")
            .into_inner()
            .rooms
    }

    /// `user`'s unread count of one of their rooms, from `ListRooms`.
    pub async fn unread(&self, user: &str, room_id: &str) -> i64 {
        self.list_rooms(user)
            .await
            .into_iter()
            .find(|r| r.id == room_id)
            .expect("the room is listed")
            .unread
    }

    pub async fn history(
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

    /// One message as `user` sees it in the room's history.
    pub async fn message_in_history(&self, user: &str, room_id: &str, message_id: &str) -> Message {
        self.history(user, history_of(room_id, 0))
            .await
            .expect("history")
            .messages
            .into_iter()
            .find(|m| m.id == message_id)
            .expect("the message is in the history")
    }

    pub async fn events(
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

    /// Rejoins with `since` the cache of recent events answered (`hit`)
    /// or the log did (`miss`).
    pub fn recent_reads(&self, result: &'static str) -> u64 {
        self.metrics
            .chat
            .recent_events_reads
            .get_or_create(&[("result", result)])
            .get()
    }

    /// The room's whole log (short logs: one page), as `user` sees it.
    pub async fn log(&self, user: &str, room_id: &str) -> Vec<RoomEvent> {
        let page = self.events(user, room_id, 0).await.expect("events");
        assert!(!page.has_more, "the test's log fits one page");
        page.events
    }

    pub async fn invite(&self, user: &str, room_id: &str, invitee: &str) -> Result<(), Status> {
        let request = InviteMemberRequest {
            room_id: room_id.into(),
            user_id: invitee.into(),
        };
        self.client
            .clone()
            .invite_member(actor(user).request(request))
            .await
            .map(drop)
    }

    pub async fn remove_member(
        &self,
        user: &str,
        room_id: &str,
        member: &str,
    ) -> Result<(), Status> {
        let request = RemoveMemberRequest {
            room_id: room_id.into(),
            user_id: member.into(),
        };
        self.client
            .clone()
            .remove_member(actor(user).request(request))
            .await
            .map(drop)
    }

    pub async fn edit(
        &self,
        user: &str,
        room_id: &str,
        message_id: &str,
        text: &str,
    ) -> Result<Message, Status> {
        let request = EditMessageRequest {
            room_id: room_id.into(),
            message_id: message_id.into(),
            text: text.into(),
        };
        let response = self
            .client
            .clone()
            .edit_message(actor(user).request(request))
            .await?;
        Ok(response.into_inner().message.expect("the edited message"))
    }

    pub async fn delete(&self, user: &str, room_id: &str, message_id: &str) -> Result<(), Status> {
        let request = DeleteMessageRequest {
            room_id: room_id.into(),
            message_id: message_id.into(),
        };
        self.client
            .clone()
            .delete_message(actor(user).request(request))
            .await
            .map(drop)
    }

    pub async fn react(
        &self,
        user: &str,
        room_id: &str,
        message_id: &str,
        emoji: &str,
    ) -> Result<(), Status> {
        let request = reaction(room_id, message_id, emoji);
        self.client
            .clone()
            .add_reaction(actor(user).request(request))
            .await
            .map(drop)
    }

    pub async fn unreact(
        &self,
        user: &str,
        room_id: &str,
        message_id: &str,
        emoji: &str,
    ) -> Result<(), Status> {
        let request = reaction(room_id, message_id, emoji);
        self.client
            .clone()
            .remove_reaction(actor(user).request(request))
            .await
            .map(drop)
    }

    /// Marks `user`'s receipt; the mark after the call.
    pub async fn mark(
        &self,
        user: &str,
        room_id: &str,
        kind: ReceiptKind,
        seq: i64,
    ) -> Result<i64, Status> {
        let request = MarkReceiptRequest {
            room_id: room_id.into(),
            kind: kind as i32,
            seq,
        };
        let response = self
            .client
            .clone()
            .mark_receipt(actor(user).request(request))
            .await?;
        Ok(response.into_inner().seq)
    }

    pub async fn notifications(&self, user: &str, unread_only: bool) -> Vec<Notification> {
        let request = ListNotificationsRequest {
            unread_only,
            limit: 0,
        };
        self.client
            .clone()
            .list_notifications(actor(user).request(request))
            .await
            .expect("list notifications")
            .into_inner()
            .notifications
    }

    pub async fn read_notifications(&self, user: &str, ids: &[&str]) -> Result<(), Status> {
        let request = ReadNotificationsRequest {
            ids: ids.iter().map(|id| id.to_string()).collect(),
            all: false,
        };
        self.client
            .clone()
            .read_notifications(actor(user).request(request))
            .await
            .map(drop)
    }

    /// Posts through the backend API.
    pub async fn post(&self, request: PostMessageRequest) -> Result<SendMessageResponse, Status> {
        let response = self.backend.clone().post_message(request).await?;
        Ok(response.into_inner())
    }

    pub async fn publish(&self, request: PublishEventRequest) -> Result<(), Status> {
        self.backend.clone().publish_event(request).await.map(drop)
    }

    /// Rooms as the backend API lists them.
    pub async fn backend_rooms(&self, request: BackendListRoomsRequest) -> Vec<Room> {
        self.backend
            .clone()
            .list_rooms(request)
            .await
            .expect("backend list rooms")
            .into_inner()
            .rooms
    }

    /// A subscription to `channels` on the app's bus, made before the calls
    /// whose events it should see.
    pub async fn tap(&self, channels: &[String]) -> Tap {
        let (subscriber, received) = self.bus.subscriber().await.expect("subscriber");
        for channel in channels {
            subscriber.subscribe(channel).await.expect("subscribe");
        }
        Tap {
            _subscriber: subscriber,
            received,
        }
    }
}

/// A reaction request.
fn reaction(room_id: &str, message_id: &str, emoji: &str) -> ReactionRequest {
    ReactionRequest {
        room_id: room_id.into(),
        message_id: message_id.into(),
        emoji: emoji.into(),
    }
}

/// What a test receives from the bus.
pub struct Tap {
    _subscriber: Box<dyn Subscriber>,
    received: UnboundedReceiver<BusEvent>,
}

impl Tap {
    /// The next envelope and the channel it came on, within [`RECEIVE_TIMEOUT`].
    pub async fn next(&mut self) -> (String, Envelope) {
        let event = tokio::time::timeout(RECEIVE_TIMEOUT, self.received.recv())
            .await
            .expect("an envelope in time")
            .expect("bus open");
        match event {
            BusEvent::Message { channel, envelope } => (channel, envelope),
            BusEvent::Resubscribed => panic!("the memory bus never resubscribes"),
        }
    }

    /// Asserts that nothing else has been published. The memory bus queues
    /// an envelope while the service publishes it, and the service publishes
    /// before it answers, so this holds for every call that has returned.
    pub fn assert_idle(&mut self) {
        if let Ok(event) = self.received.try_recv() {
            panic!("nothing more was expected on the bus, got {event:?}");
        }
    }
}

/// `n` distinct emoji (😀, 😁, …), four bytes each.
pub fn distinct_emoji(n: u32) -> Vec<String> {
    (0..n)
        .map(|i| {
            char::from_u32(0x1F600 + i)
                .expect("an emoticon")
                .to_string()
        })
        .collect()
}

/// An envelope's protocol event.
pub fn body(envelope: &Envelope) -> Value {
    serde_json::from_str(&envelope.json).expect("envelope json")
}

/// A history request for the newest page of `room_id`.
pub fn history_of(room_id: &str, limit: u32) -> GetHistoryRequest {
    GetHistoryRequest {
        room_id: room_id.into(),
        before: None,
        after: None,
        limit,
        thread_id: None,
    }
}

pub fn seqs(messages: &[Message]) -> Vec<i64> {
    messages.iter().map(|m| m.seq).collect()
}

pub fn ids(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(|m| m.id.as_str()).collect()
}

pub fn room_ids(rooms: &[Room]) -> Vec<&str> {
    rooms.iter().map(|r| r.id.as_str()).collect()
}

pub fn kinds(events: &[RoomEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}

pub fn json(event: &RoomEvent) -> Value {
    serde_json::from_str(&event.json).expect("event json")
}

/// The code of a call that must fail.
pub fn code<T: std::fmt::Debug>(result: Result<T, Status>) -> Code {
    result.expect_err("the call must fail").code()
}
