//! The test app: the AI service over real gRPC, in front of a real
//! chat-service (own database, memory bus) and a fake OpenAI-compatible
//! model server; the callers' identities; reading a reply off the bus.

use std::sync::Arc;
use std::time::Duration;

use ai_service::AiApp;
use chat_service::ChatApp;
use common::Secret;
use common::bus::{Bus, BusEvent, MemoryBus, Subscriber, room_channel};
use common::config::{AiConfig, AiProvider, ChatConfig};
use common::grpc::{Actor, ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use common::testing::{FakeOpenAi, Reply, TestDatabase, serve_grpc};
use proto::ai::v1::ai_service_client::AiServiceClient;
use proto::ai::v1::{AskRequest, AskResponse};
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{CreateRoomRequest, GetHistoryRequest, Message, Room, Visibility};
use serde_json::Value;
use tokio::sync::mpsc::UnboundedReceiver;
use tokio::task::JoinHandle;

/// Bound on waiting for a bus event, so a missing one fails instead of hanging.
pub const WAIT: Duration = Duration::from_secs(10);

pub fn settings(credential: &Secret) -> ClientSettings {
    ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(10),
    }
}

/// An address nothing listens on.
pub async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    url
}

pub fn user(id: &str, anonymous: bool) -> Actor {
    Actor {
        user_id: id.into(),
        name: format!("{}{}", id[..1].to_uppercase(), &id[1..]),
        anonymous,
    }
}

pub fn alice() -> Actor {
    user("alice", false)
}

pub fn bob() -> Actor {
    user("bob", false)
}

pub fn ask(room: &str, prompt: &str) -> AskRequest {
    AskRequest {
        room_id: room.into(),
        prompt: prompt.into(),
        model: None,
        client_msg_id: String::new(),
        thread_id: None,
    }
}

/// The AI service with a client holding the service credential. Fields drop
/// in order: the servers stop before the database is removed.
pub struct TestApp {
    pub url: String,
    pub client: AiServiceClient<ServiceChannel>,
    /// chat-service's user-facing API (rooms, messages as an actor).
    pub chat: ChatServiceClient<ServiceChannel>,
    pub bus: Arc<MemoryBus>,
    pub model: FakeOpenAi,
    /// What the service was started with (to start a replica of it).
    pub config: AiConfig,
    pub chat_url: String,
    pub credential: Secret,
    pub shutdown: Shutdown,
    pub server: JoinHandle<Result<(), tonic::transport::Error>>,
    _chat_shutdown: Shutdown,
    _db: Option<TestDatabase>,
}

/// Test defaults: the fake model server as an OpenAI-compatible provider,
/// quick retries.
pub fn config(model: &FakeOpenAi) -> AiConfig {
    AiConfig {
        provider: AiProvider::Openai,
        base_url: model.base_url.clone(),
        retry_backoff_ms: 5,
        ..AiConfig::default()
    }
}

/// The AI service, a chat-service and a model server that answers `reply`
/// unless told otherwise; `adjust` changes the AI config.
pub async fn spawn_app(reply: Reply, adjust: impl FnOnce(&mut AiConfig)) -> TestApp {
    let db = common::testing::test_database().await;
    let credential = Secret::new(common::ids::random_secret(32));
    let bus = Arc::new(MemoryBus::new());
    let chat_config = ChatConfig {
        database_url: db.url.clone(),
        ..ChatConfig::default()
    };
    let chat_app = ChatApp::connect(
        &chat_config,
        bus.clone(),
        None,
        &credential,
        &common::metrics::Metrics::new(&["chat"]),
    )
    .await
    .expect("chat app");
    let chat = serve_grpc(|listener, signal| chat_app.run_until_stopped(listener, signal)).await;

    let model = FakeOpenAi::start(reply).await;
    let mut config = config(&model);
    adjust(&mut config);
    let mut app = start_ai(config, &chat.url, bus.clone(), &credential, model).await;
    app._chat_shutdown = chat.shutdown;
    app._db = Some(db);
    app
}

/// The AI service alone (chat-service expected at `chat_url`).
pub async fn start_ai(
    config: AiConfig,
    chat_url: &str,
    bus: Arc<MemoryBus>,
    credential: &Secret,
    model: FakeOpenAi,
) -> TestApp {
    let chat_channel = channel(chat_url, &settings(credential)).expect("chat channel");
    let app = AiApp::connect(
        &config,
        bus.clone(),
        chat_channel.clone(),
        credential,
        &common::metrics::Metrics::new(&["ai"]),
    )
    .await
    .expect("ai app");
    let server = serve_grpc(|listener, signal| app.run_until_stopped(listener, signal)).await;
    let client = AiServiceClient::new(server.channel(&settings(credential)));
    TestApp {
        url: server.url,
        client,
        chat: ChatServiceClient::new(chat_channel),
        bus,
        model,
        config,
        chat_url: chat_url.to_string(),
        credential: credential.clone(),
        shutdown: server.shutdown,
        server: server.task,
        _chat_shutdown: Shutdown::new(),
        _db: None,
    }
}

/// The AI service with no chat-service behind it.
pub async fn spawn_without_chat(config: AiConfig) -> TestApp {
    let credential = Secret::new(common::ids::random_secret(32));
    let model = FakeOpenAi::start(Reply::chunks(&["unused"])).await;
    start_ai(
        config,
        &closed_url().await,
        Arc::new(MemoryBus::new()),
        &credential,
        model,
    )
    .await
}

/// What the room's bus channel carries, as protocol events.
pub struct RoomTap {
    _subscriber: Box<dyn Subscriber>,
    events: UnboundedReceiver<BusEvent>,
}

impl RoomTap {
    /// The next event of `kind` (others are skipped).
    pub async fn next_of(&mut self, kinds: &[&str]) -> Value {
        loop {
            let event = tokio::time::timeout(WAIT, self.events.recv())
                .await
                .expect("a bus event in time")
                .expect("bus open");
            if let BusEvent::Message { envelope, .. } = event
                && kinds.contains(&envelope.kind.as_str())
            {
                return serde_json::from_str(&envelope.json).expect("json");
            }
        }
    }

    /// Every `ai.delta` of `stream_id` up to its `ai.done` or `ai.error`,
    /// which is returned last.
    pub async fn reply(&mut self, stream_id: &str) -> (Vec<Value>, Value) {
        let mut deltas = Vec::new();
        loop {
            let event = self.next_of(&["ai.delta", "ai.done", "ai.error"]).await;
            if event["stream_id"] != stream_id {
                continue;
            }
            if event["type"] == "ai.delta" {
                deltas.push(event);
            } else {
                return (deltas, event);
            }
        }
    }
}

/// The concatenated texts of deltas, checking they are numbered from 0 without gaps.
pub fn joined(deltas: &[Value]) -> String {
    for (i, delta) in deltas.iter().enumerate() {
        assert_eq!(delta["index"], i, "deltas are indexed from 0 without gaps");
    }
    deltas
        .iter()
        .map(|d| d["text"].as_str().expect("text"))
        .collect()
}

impl TestApp {
    /// A second AI service with the same configuration, chat-service and
    /// bus, in front of a model server of its own answering `reply`: a
    /// replica (with `backend = "redis"`, sharing the store).
    pub async fn replica(&self, reply: Reply) -> TestApp {
        let model = FakeOpenAi::start(reply).await;
        let config = AiConfig {
            base_url: model.base_url.clone(),
            ..self.config.clone()
        };
        start_ai(
            config,
            &self.chat_url,
            self.bus.clone(),
            &self.credential,
            model,
        )
        .await
    }

    /// A room `members` were invited to and, unless it is direct, accepted.
    pub async fn room(&self, owner: &Actor, visibility: Visibility, members: &[&Actor]) -> Room {
        let mut room = self
            .chat
            .clone()
            .create_room(owner.request(CreateRoomRequest {
                name: common::ids::new_id("room"),
                visibility: visibility as i32,
                members: members.iter().map(|m| m.user_id.clone()).collect(),
            }))
            .await
            .expect("create room")
            .into_inner()
            .room
            .expect("room");
        if visibility != Visibility::Direct {
            for member in members {
                room = self
                    .chat
                    .clone()
                    .accept_invitation(member.request(proto::chat::v1::InvitationRequest {
                        room_id: room.id.clone(),
                    }))
                    .await
                    .expect("accept")
                    .into_inner()
                    .room
                    .expect("room");
            }
        }
        room
    }

    pub async fn tap(&self, room: &str) -> RoomTap {
        let (subscriber, events) = self.bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(&room_channel(room))
            .await
            .expect("subscribe");
        RoomTap {
            _subscriber: subscriber,
            events,
        }
    }

    pub async fn ask_as(
        &self,
        actor: &Actor,
        request: AskRequest,
    ) -> Result<AskResponse, tonic::Status> {
        Ok(self
            .client
            .clone()
            .ask(actor.request(request))
            .await?
            .into_inner())
    }

    /// The room's messages, oldest first.
    pub async fn history(&self, reader: &Actor, room: &str) -> Vec<Message> {
        self.chat
            .clone()
            .get_history(reader.request(GetHistoryRequest {
                room_id: room.into(),
                before: None,
                after: None,
                limit: 100,
                thread_id: None,
            }))
            .await
            .expect("history")
            .into_inner()
            .messages
    }
}
