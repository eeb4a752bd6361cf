//! Starting the suite for a test and talking to it as a client would.

use std::collections::VecDeque;
use std::time::Duration;

use common::config::{Backend, Config};
use common::testing::TestDatabase;
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The HS256 secret the test suite's auth-service verifies with.
pub const SECRET: &str = "e2e-test-secret-that-is-long-enough-0123456789";

/// How long a test waits for an expected frame before failing.
const WAIT: Duration = Duration::from_secs(15);

/// A running suite plus what the test needs to reach it.
pub struct TestApp {
    suite: Option<parley::Suite>,
    pub addrs: parley::Addrs,
    pub config: Config,
    /// The suite's service credential and bus, for extra edges.
    credential: common::Secret,
    bus: std::sync::Arc<dyn common::bus::Bus>,
    /// Stops the extra edges when the test ends.
    extra_edges: common::shutdown::Shutdown,
    _db: TestDatabase,
    /// The attachment store's directory, removed when the test ends.
    _attachments: TempDir,
}

/// A directory of the test's own, removed on drop.
pub struct TempDir(pub std::path::PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> Self {
        let dir = std::env::temp_dir().join(common::ids::new_id(prefix));
        std::fs::create_dir_all(&dir).expect("create temporary directory");
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Names of the threads panics happened on. Tests run the suite on their own
/// thread (current-thread runtime), where a panicking task is otherwise just
/// a log line.
static PANICS: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());

/// Fails if a task of this test's suite panicked so far (call it at the end:
/// the test's own assertions have passed, so any panic recorded for this
/// thread was a task's).
pub fn assert_no_task_panicked() {
    let me = std::thread::current().name().map(str::to_string);
    let panics = PANICS
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .filter(|name| Some(*name) == me.as_ref())
        .count();
    assert_eq!(
        panics, 0,
        "a task of this test's suite panicked (see the output)"
    );
}

fn init_logs() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if let Some(name) = std::thread::current().name() {
                PANICS
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(name.to_string());
            }
            previous(info);
        }));
        use tracing_subscriber::Layer;
        use tracing_subscriber::layer::SubscriberExt;
        use tracing_subscriber::util::SubscriberInitExt;
        let test_log = std::env::var_os("TEST_LOG").is_some().then(|| {
            tracing_subscriber::fmt::layer().with_filter(tracing_subscriber::EnvFilter::new("info"))
        });
        let _ = tracing_subscriber::registry()
            .with(test_log)
            .with(common::testing::logs::capture_layer())
            .try_init();
    });
}

/// Captures everything logged on this thread from now on, all targets at
/// TRACE: the suite a test starts runs on the test's (current-thread)
/// runtime, so this is the whole suite's output.
pub fn capture_logs() -> common::testing::logs::LogCapture {
    init_logs();
    common::testing::logs::start()
}

/// The suite on fresh storage with test defaults.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(|_| {}).await
}

/// The suite on fresh storage, after `adjust` changed the config.
pub async fn spawn_app_with(adjust: impl FnOnce(&mut Config)) -> TestApp {
    spawn_app_traced(adjust, false).await
}

/// Like [`spawn_app_with`]; `tracing` says whether spans are exported.
pub async fn spawn_app_traced(adjust: impl FnOnce(&mut Config), tracing: bool) -> TestApp {
    init_logs();
    let db = common::testing::test_database().await;
    let mut config = Config::default();
    config.chat.database_url = db.url.clone();
    config.auth.hs256_secret = common::Secret::new(SECRET);
    config.ai.offline_chunk_delay_ms = 1;
    let attachments = TempDir::new("e2e-attachments");
    config.attachments.dir = attachments.0.display().to_string();
    config.edge.shutdown_grace_ms = 2_000;
    config.edge.drain_ms = 200;
    // Every test client comes from 127.0.0.1 and some tests send hundreds
    // of frames: the rate limits are off unless a test sets them.
    let edge = &mut config.edge;
    for rate in [
        &mut edge.rate_user_per_min,
        &mut edge.rate_user_per_hour,
        &mut edge.rate_anonymous_per_min,
        &mut edge.rate_anonymous_per_hour,
        &mut edge.rate_ip_messages_per_min,
        &mut edge.rate_ip_connects_per_min,
        &mut edge.rate_conn_commands_per_min,
        &mut edge.rate_typing_per_10s,
        &mut edge.rate_receipts_per_min,
        &mut edge.rate_presence_set_per_min,
        &mut edge.rate_call_invite_per_min,
        &mut edge.rate_reactions_per_min,
        &mut edge.rate_room_create_per_hour,
        &mut edge.rate_room_create_anonymous_per_hour,
    ] {
        *rate = 0;
    }
    if let Some(redis) = common::testing::test_redis_url() {
        config.bus.backend = Backend::Redis;
        config.bus.redis_url = redis.clone();
        config.bus.channel_prefix = common::ids::new_id("e2e");
        config.bus.signing_key = common::Secret::new(common::ids::random_secret(32));
        config.presence.backend = Backend::Redis;
        config.presence.redis_url = redis;
        config.presence.redis_prefix = format!("{}:", common::ids::new_id("e2e-presence"));
        config.auth.backend = Backend::Redis;
        config.auth.redis_url = config.bus.redis_url.clone();
        config.auth.redis_prefix = format!("{}:", common::ids::new_id("e2e-auth"));
    }
    adjust(&mut config);
    let listeners = parley::Listeners::ephemeral()
        .await
        .expect("bind listeners");
    let suite = parley::start(config.clone(), listeners, tracing)
        .await
        .expect("start suite");
    TestApp {
        addrs: suite.addrs,
        credential: suite.credential.clone(),
        bus: suite.bus.clone(),
        suite: Some(suite),
        config,
        extra_edges: common::shutdown::Shutdown::new(),
        _db: db,
        _attachments: attachments,
    }
}

impl TestApp {
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.addrs.edge)
    }

    /// Starts another edge on the same services and bus — the same Redis, or
    /// the same in-process bus — and returns its WebSocket URL.
    pub async fn second_edge(&self) -> String {
        use proto::ai::v1::ai_service_client::AiServiceClient;
        use proto::auth::v1::auth_service_client::AuthServiceClient;
        use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
        use proto::chat::v1::chat_service_client::ChatServiceClient;
        use proto::presence::v1::presence_service_client::PresenceServiceClient;

        let settings = common::grpc::ClientSettings {
            credential: self.credential.clone(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        let channel = |addr: std::net::SocketAddr| {
            common::grpc::channel(&format!("http://{addr}"), &settings).expect("channel")
        };
        let a = self.addrs;
        let backends = edge::Backends {
            auth: AuthServiceClient::new(channel(a.auth)),
            chat: ChatServiceClient::new(channel(a.chat)),
            chat_backend: ChatBackendServiceClient::new(channel(a.chat)),
            ai: AiServiceClient::new(channel(a.ai)),
            presence: PresenceServiceClient::new(channel(a.presence)),
        };
        let metrics = common::metrics::Metrics::new(&["edge"]);
        // A Redis bus gets a connection of its own, as another process would.
        let bus = match self.config.bus.backend {
            Backend::Redis => common::bus::connect(&self.config.bus, &metrics)
                .await
                .expect("redis bus"),
            Backend::Memory => self.bus.clone(),
        };
        let edge = edge::EdgeApp::new(
            &self.config.edge,
            backends,
            bus,
            false,
            self.extra_edges.signal(),
            &metrics,
        )
        .await
        .expect("second edge")
        .with_suite_config(&self.running_config());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("ws://{}/ws", listener.local_addr().expect("addr"));
        tokio::spawn(edge.run_until_stopped(listener));
        url
    }

    /// The suite's configuration as it runs: services where they were bound,
    /// with the suite's credential.
    pub fn running_config(&self) -> Config {
        let mut config = self.config.clone();
        let a = self.addrs;
        config.services.auth_url = format!("http://{}", a.auth);
        config.services.chat_url = format!("http://{}", a.chat);
        config.services.ai_url = format!("http://{}", a.ai);
        config.services.presence_url = format!("http://{}", a.presence);
        config.services.credential = self.credential.clone();
        config
    }

    /// An auth-service client holding the service credential, as a trusted
    /// backend would use it (issuing, revoking).
    pub fn auth_client(
        &self,
    ) -> proto::auth::v1::auth_service_client::AuthServiceClient<common::grpc::ServiceChannel> {
        let settings = common::grpc::ClientSettings {
            credential: self.credential.clone(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        let url = format!("http://{}", self.addrs.auth);
        proto::auth::v1::auth_service_client::AuthServiceClient::new(
            common::grpc::channel(&url, &settings).expect("channel"),
        )
    }

    /// A presence-service client holding the service credential, as another
    /// backend would use it.
    pub fn presence_client(
        &self,
    ) -> proto::presence::v1::presence_service_client::PresenceServiceClient<
        common::grpc::ServiceChannel,
    > {
        let settings = common::grpc::ClientSettings {
            credential: self.credential.clone(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        let url = format!("http://{}", self.addrs.presence);
        proto::presence::v1::presence_service_client::PresenceServiceClient::new(
            common::grpc::channel(&url, &settings).expect("channel"),
        )
    }

    /// A chat backend client holding the service credential, as a trusted
    /// backend would use it.
    pub fn chat_backend_client(
        &self,
    ) -> proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient<
        common::grpc::ServiceChannel,
    > {
        let settings = common::grpc::ClientSettings {
            credential: self.credential.clone(),
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(10),
        };
        let url = format!("http://{}", self.addrs.chat);
        proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient::new(
            common::grpc::channel(&url, &settings).expect("channel"),
        )
    }

    /// The `PARLEY_*` variables that make another process's edge join this
    /// suite: its services, credential and bus.
    pub fn edge_process_env(&self) -> Vec<(String, String)> {
        let a = self.addrs;
        let c = &self.config;
        vec![
            ("PARLEY_EDGE_LISTEN".into(), "127.0.0.1:0".into()),
            (
                "PARLEY_SERVICES_AUTH_URL".into(),
                format!("http://{}", a.auth),
            ),
            (
                "PARLEY_SERVICES_CHAT_URL".into(),
                format!("http://{}", a.chat),
            ),
            ("PARLEY_SERVICES_AI_URL".into(), format!("http://{}", a.ai)),
            (
                "PARLEY_SERVICES_PRESENCE_URL".into(),
                format!("http://{}", a.presence),
            ),
            (
                "PARLEY_SERVICES_CREDENTIAL".into(),
                self.credential.expose().to_string(),
            ),
            ("PARLEY_BUS_BACKEND".into(), "redis".into()),
            ("PARLEY_BUS_REDIS_URL".into(), c.bus.redis_url.clone()),
            (
                "PARLEY_BUS_CHANNEL_PREFIX".into(),
                c.bus.channel_prefix.clone(),
            ),
            (
                "PARLEY_BUS_SIGNING_KEY".into(),
                c.bus.signing_key.expose().to_string(),
            ),
            (
                "PARLEY_PRESENCE_REDIS_PREFIX".into(),
                c.presence.redis_prefix.clone(),
            ),
            (
                "PARLEY_EDGE_PRESENCE_RENEW_MS".into(),
                c.edge.presence_renew_ms.to_string(),
            ),
            (
                "PARLEY_PRESENCE_LEASE_TTL_MS".into(),
                c.presence.lease_ttl_ms.to_string(),
            ),
        ]
    }

    /// Restarts chat-service in place (in-flight calls finish first).
    pub async fn restart_chat(&self) {
        self.suite
            .as_ref()
            .expect("suite running")
            .restart_chat()
            .await;
    }

    /// Stops the edges started with [`TestApp::second_edge`] (they drain).
    pub fn stop_second_edges(&self) {
        self.extra_edges.trigger();
    }

    /// Cuts every bus subscriber connection of this suite's edges (Redis
    /// only); they reconnect and resubscribe by themselves.
    pub async fn cut_bus_subscribers(&self) -> usize {
        let client = redis::Client::open(self.config.bus.redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let list: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("client list");
        let name = format!("name=parley-sub-{}-", self.config.bus.channel_prefix);
        let ids: Vec<String> = list
            .lines()
            .filter(|line| line.contains(&name))
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix("id="))
                    .map(str::to_string)
            })
            .collect();
        for id in &ids {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(id)
                .query_async(&mut conn)
                .await
                .expect("kill");
        }
        ids.len()
    }

    /// A client of the edge at `url` signed in with a token for `sub`, or
    /// `None` when that edge refuses (stopped or draining).
    pub async fn user_at(&self, url: &str, sub: &str) -> Option<Client> {
        let mut client = Client::connect(url, &[]).await.ok()?;
        let reply = client
            .try_request("auth", json!({"token": token(sub, sub, 3600)}))
            .await?;
        client.user_id = reply["user"]["id"].as_str()?.to_string();
        Some(client)
    }

    /// A client of the edge at `url`, signed in anonymously under `name`.
    pub async fn anonymous_at(&self, url: &str, name: &str) -> Client {
        let mut client = Client::connect(url, &[]).await.expect("connect");
        let reply = client
            .ok("auth", json!({"anonymous": true, "name": name}))
            .await;
        client.user_id = reply["user"]["id"].as_str().expect("user id").to_string();
        client
    }

    /// A connected client that has read `hello`.
    pub async fn connect(&self) -> Client {
        Client::connect(&self.ws_url(), &[]).await.expect("connect")
    }

    /// A client signed in anonymously under `name`.
    pub async fn anonymous(&self, name: &str) -> Client {
        self.anonymous_at(&self.ws_url(), name).await
    }

    /// A client signed in with a token for `sub` (several clients may share
    /// one user: they are that user's devices).
    pub async fn user(&self, sub: &str, name: &str) -> Client {
        let mut client = self.connect().await;
        let reply = client
            .ok("auth", json!({"token": token(sub, name, 3600)}))
            .await;
        client.user_id = reply["user"]["id"].as_str().expect("user id").to_string();
        client
    }

    /// The edge's `/metrics`, as a scraper reads it.
    pub async fn scrape(&self) -> String {
        let (status, body) = http_get(self.addrs.edge, "/metrics", &[]).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Scrapes until `done` holds for the text (the edge records a closed
    /// connection once its task has ended), failing after the usual wait.
    pub async fn scrape_until(&self, done: impl Fn(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let text = self.scrape().await;
            if done(&text) || tokio::time::Instant::now() > deadline {
                return text;
            }
            tokio::task::yield_now().await;
        }
    }

    /// Runs chat-service's clean-up job as if it were `now_ms`.
    pub async fn clean_up_at(&self, now_ms: i64) -> chat_service::CleanupReport {
        self.suite
            .as_ref()
            .expect("suite running")
            .chat_cleanup
            .run_at(now_ms)
            .await
            .expect("clean-up")
    }

    /// Stops the suite (edge drains, clients get 1001).
    pub async fn shutdown(&mut self) {
        if let Some(suite) = self.suite.take() {
            suite.shutdown().await;
        }
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(suite) = self.suite.take() {
            // Best effort: stop serving; the runtime ends with the test anyway.
            drop(suite);
        }
    }
}

/// An HS256 token for `sub`, signed with the suite's secret.
pub fn token(sub: &str, name: &str, exp_offset_s: i64) -> String {
    let now = common::ids::now_ms() / 1000;
    let claims =
        json!({"sub": sub, "name": name, "iss": "parley", "iat": now, "exp": now + exp_offset_s});
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign token")
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// A WebSocket client speaking protocol v1.
pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Frames read while waiting for something else.
    pending: VecDeque<Value>,
    pub hello: Value,
    pub user_id: String,
}

impl Client {
    /// Connects with extra upgrade headers and reads `hello`.
    pub async fn connect(
        url: &str,
        headers: &[(&str, &str)],
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut request = url.into_client_request()?;
        for (name, value) in headers {
            request.headers_mut().insert(
                http::HeaderName::from_bytes(name.as_bytes()).expect("header name"),
                value.parse().expect("header value"),
            );
        }
        let (ws, _) = tokio_tungstenite::connect_async(request).await?;
        Self::start(ws).await
    }

    /// Connects with a small socket receive buffer: once this client stops
    /// reading, the server's writes back up after a few kilobytes.
    pub async fn connect_with_small_buffer(
        addr: std::net::SocketAddr,
    ) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let socket = tokio::net::TcpSocket::new_v4()?;
        socket.set_recv_buffer_size(4096)?;
        let stream = socket.connect(addr).await?;
        let request = format!("ws://{addr}/ws").into_client_request()?;
        let (ws, _) =
            tokio_tungstenite::client_async(request, MaybeTlsStream::Plain(stream)).await?;
        Self::start(ws).await
    }

    /// Reads `hello` on a fresh connection.
    async fn start(ws: Ws) -> Result<Self, tokio_tungstenite::tungstenite::Error> {
        let mut client = Client {
            ws,
            next_id: 1,
            pending: VecDeque::new(),
            hello: Value::Null,
            user_id: String::new(),
        };
        let hello = client.next_frame().await.expect("hello frame");
        assert_eq!(hello["type"], "hello", "first frame must be hello: {hello}");
        client.hello = hello;
        Ok(client)
    }

    pub async fn send_text(&mut self, text: impl Into<String>) {
        self.ws
            .send(Message::text(text.into()))
            .await
            .expect("send");
    }

    /// Sends a text frame whose payload is `bytes` as they are, valid
    /// UTF-8 or not.
    pub async fn send_raw_text(&mut self, bytes: Vec<u8>) {
        use tokio_tungstenite::tungstenite::protocol::frame::Frame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
        let frame = Frame::message(bytes, OpCode::Data(Data::Text), true);
        self.ws.send(Message::Frame(frame)).await.expect("send");
    }

    pub async fn send_binary(&mut self, bytes: Vec<u8>) {
        self.ws.send(Message::binary(bytes)).await.expect("send");
    }

    /// Sends a command with a fresh id and returns its reply.
    pub async fn request(&mut self, kind: &str, fields: Value) -> Value {
        self.try_request(kind, fields)
            .await
            .unwrap_or_else(|| panic!("connection ended while waiting for reply to {kind}"))
    }

    /// Like [`Client::request`], but `None` when the connection ends first.
    /// Frames read meanwhile are kept (see [`Client::take_pending`]).
    pub async fn try_request(&mut self, kind: &str, fields: Value) -> Option<Value> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = fields;
        frame["type"] = json!(kind);
        frame["id"] = json!(id);
        self.ws.send(Message::text(frame.to_string())).await.ok()?;
        loop {
            let frame = self.read().await?;
            if frame["type"] == "reply" && frame["id"] == json!(id) {
                return Some(frame);
            }
            self.pending.push_back(frame);
        }
    }

    /// The frames read while waiting for replies, oldest first.
    pub fn take_pending(&mut self) -> Vec<Value> {
        self.pending.drain(..).collect()
    }

    /// Sends a message and returns `(id, seq)`.
    pub async fn send(&mut self, room: &str, text: &str) -> (String, i64) {
        let reply = self
            .ok(
                "message.send",
                json!({"room": room, "text": text, "client_msg_id": common::ids::new_id("c")}),
            )
            .await;
        let message = &reply["message"];
        (
            message["id"].as_str().expect("id").to_string(),
            message["seq"].as_i64().expect("seq"),
        )
    }

    /// Creates a public room and returns its id.
    pub async fn public_room(&mut self, name: &str) -> String {
        let reply = self
            .ok("room.create", json!({"name": name, "visibility": "public"}))
            .await;
        reply["room"]["id"].as_str().expect("room id").to_string()
    }

    /// Creates a private room inviting `members` (who are not members
    /// until they accept) and returns its id.
    pub async fn share_room(&mut self, members: &[&str]) -> String {
        let reply = self
            .ok(
                "room.create",
                json!({"name": "shared", "visibility": "private", "members": members}),
            )
            .await;
        reply["room"]["id"].as_str().expect("room id").to_string()
    }

    /// Creates a private room inviting `others`, who each accept (calls,
    /// presence follows and mentions need them to be members), and returns
    /// its id.
    pub async fn share_room_with(&mut self, others: &mut [&mut Client]) -> String {
        let ids: Vec<&str> = others.iter().map(|c| c.user_id.as_str()).collect();
        let room = self.share_room(&ids).await;
        for other in others.iter_mut() {
            other.ok("invitation.accept", json!({"room": room})).await;
        }
        room
    }

    /// Opens the direct room with `other` (a direct room needs no
    /// acceptance) and returns its id.
    pub async fn direct_room(&mut self, other: &str) -> String {
        let reply = self
            .ok(
                "room.create",
                json!({"visibility": "direct", "members": [other]}),
            )
            .await;
        reply["room"]["id"].as_str().expect("room id").to_string()
    }

    /// A command that must succeed; returns the reply.
    pub async fn ok(&mut self, kind: &str, fields: Value) -> Value {
        let reply = self.request(kind, fields).await;
        assert_eq!(reply["ok"], true, "{kind} failed: {reply}");
        reply
    }

    /// A command that must fail with `code`; returns the error object.
    pub async fn err(&mut self, kind: &str, fields: Value, code: &str) -> Value {
        let reply = self.request(kind, fields).await;
        assert_eq!(reply["ok"], false, "{kind} should fail: {reply}");
        assert_eq!(reply["error"]["code"], code, "{kind}: {reply}");
        reply["error"].clone()
    }

    /// The next frame of `kind` (earlier frames of other kinds are kept).
    pub async fn event(&mut self, kind: &str) -> Value {
        if let Some(pos) = self.pending.iter().position(|f| f["type"] == kind) {
            return self.pending.remove(pos).expect("present");
        }
        loop {
            let frame = self
                .read()
                .await
                .unwrap_or_else(|| panic!("connection ended while waiting for {kind}"));
            if frame["type"] == kind {
                return frame;
            }
            self.pending.push_back(frame);
        }
    }

    /// The next frame, whatever it is.
    pub async fn next_frame(&mut self) -> Option<Value> {
        if let Some(frame) = self.pending.pop_front() {
            return Some(frame);
        }
        self.read().await
    }

    async fn read(&mut self) -> Option<Value> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame")?;
            match message {
                Ok(Message::Text(text)) => {
                    return Some(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Ok(Message::Close(_)) | Err(_) => return None,
                Ok(_) => continue,
            }
        }
    }

    /// The next frame, or how the connection ended (`Err(close code)`).
    pub async fn next_frame_or_close(&mut self) -> Result<Value, Option<u16>> {
        if let Some(frame) = self.pending.pop_front() {
            return Ok(frame);
        }
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for a frame or close");
            match message {
                Some(Ok(Message::Text(text))) => {
                    return Ok(serde_json::from_str(&text).expect("server frames are JSON"));
                }
                Some(Ok(Message::Close(frame))) => return Err(frame.map(|f| u16::from(f.code))),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return Err(None),
            }
        }
    }

    /// Reads until the server closes; returns the close code and reason.
    pub async fn close_frame(&mut self) -> Option<(u16, String)> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match message {
                Some(Ok(Message::Close(frame))) => {
                    return frame.map(|f| (u16::from(f.code), f.reason.to_string()));
                }
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }

    /// Reads until the server closes; returns the close code.
    /// Closes the connection with 1000 and waits for the server's answer.
    pub async fn close_normally(mut self) {
        use tokio_tungstenite::tungstenite::protocol::CloseFrame;
        use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
        let frame = CloseFrame {
            code: CloseCode::Normal,
            reason: "bye".into(),
        };
        let _ = self.ws.close(Some(frame)).await;
        while let Ok(Some(Ok(_))) = tokio::time::timeout(WAIT, self.ws.next()).await {}
    }

    pub async fn close_code(&mut self) -> Option<u16> {
        loop {
            let message = tokio::time::timeout(WAIT, self.ws.next())
                .await
                .expect("timed out waiting for close");
            match message {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => return None,
            }
        }
    }
}

/// A raw HTTP/1.1 GET with extra headers, so the tests need no HTTP client
/// dependency: the status and the body.
pub async fn http_get(
    addr: std::net::SocketAddr,
    path: &str,
    headers: &[(&str, &str)],
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    let mut request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await.expect("write");
    let mut response = String::new();
    stream.read_to_string(&mut response).await.expect("read");
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, body)| body.to_string())
        .unwrap_or_default();
    (status, body)
}

/// A raw HTTP/1.1 request, so the tests need no HTTP client dependency:
/// the body is sent with `Content-Length`, or in `chunked` encoding one
/// chunk per element (the server may answer before it has read them all).
/// Returns the status, the headers (names lowercase) and the body.
pub async fn http_request(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Body<'_>,
) -> (u16, Vec<(String, String)>, Vec<u8>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let stream = TcpStream::connect(addr).await.expect("connect");
    let (mut read, mut write) = stream.into_split();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    let mut payload = Vec::new();
    match body {
        Body::Empty => head.push_str("Content-Length: 0\r\n"),
        Body::Bytes(bytes) => {
            head.push_str(&format!("Content-Length: {}\r\n", bytes.len()));
            payload.extend_from_slice(bytes);
        }
        Body::Chunked(chunks) => {
            head.push_str("Transfer-Encoding: chunked\r\n");
            for chunk in chunks {
                payload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
                payload.extend_from_slice(&chunk);
                payload.extend_from_slice(b"\r\n");
            }
            payload.extend_from_slice(b"0\r\n\r\n");
        }
    }
    head.push_str("\r\n");
    let writer = tokio::spawn(async move {
        // The server may refuse early and close: later writes then fail.
        if write.write_all(head.as_bytes()).await.is_ok() {
            for piece in payload.chunks(16 * 1024) {
                if write.write_all(piece).await.is_err() {
                    break;
                }
            }
        }
        write
    });
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        match read.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => response.extend_from_slice(&buf[..n]),
        }
    }
    let _ = writer.await;
    let split = response
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a response head");
    let head = String::from_utf8_lossy(&response[..split]).to_string();
    let mut body = response[split + 4..].to_vec();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let headers: Vec<(String, String)> = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    if headers
        .iter()
        .any(|(n, v)| n == "transfer-encoding" && v.contains("chunked"))
    {
        body = dechunk(&body);
    }
    (status, headers, body)
}

/// The body of a request.
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    Chunked(Vec<Vec<u8>>),
}

/// The data of a chunked body.
fn dechunk(mut raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(end) = raw.windows(2).position(|w| w == b"\r\n") {
        let size = std::str::from_utf8(&raw[..end])
            .ok()
            .and_then(|s| usize::from_str_radix(s.split(';').next().unwrap_or("").trim(), 16).ok())
            .unwrap_or(0);
        if size == 0 || raw.len() < end + 2 + size {
            break;
        }
        out.extend_from_slice(&raw[end + 2..end + 2 + size]);
        raw = &raw[(end + 4 + size).min(raw.len())..];
    }
    out
}

/// A `redis-server` of the test's own, on a Unix socket in a temporary
/// directory, that the test can freeze (`SIGSTOP`) and resume; killed on
/// drop. Fails loudly when `redis-server` cannot be started.
pub struct PrivateRedis {
    child: std::process::Child,
    dir: std::path::PathBuf,
    /// What `bus.redis_url` should be set to.
    pub url: String,
}

impl PrivateRedis {
    /// Starts the server and returns once it accepts connections.
    pub async fn start() -> PrivateRedis {
        Self::start_with(&[]).await
    }

    /// Like [`PrivateRedis::start`], with more `redis-server` arguments
    /// (TLS, ACL users).
    pub async fn start_with(args: &[String]) -> PrivateRedis {
        use std::io::BufRead;
        let dir = std::env::temp_dir().join(common::ids::new_id("redis"));
        std::fs::create_dir_all(&dir).expect("redis directory");
        let socket = dir.join("redis.sock");
        let mut child = std::process::Command::new("redis-server")
            .args(["--port", "0", "--save", "", "--appendonly", "no"])
            .arg("--unixsocket")
            .arg(&socket)
            .arg("--dir")
            .arg(&dir)
            .args(args)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("redis-server on PATH");
        let stdout = child.stdout.take().expect("stdout");
        let url = format!("redis+unix://{}", socket.display());
        // Killed on drop, also when it never gets ready.
        let redis = PrivateRedis { child, dir, url };
        // Ready once it says so (its log goes to stdout).
        let ready = tokio::task::spawn_blocking(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .any(|line| {
                    line.to_ascii_lowercase()
                        .contains("ready to accept connections")
                })
        });
        assert!(
            tokio::time::timeout(WAIT, ready)
                .await
                .expect("redis-server starts in time")
                .expect("reading redis-server's log"),
            "redis-server exited before it was ready"
        );
        redis
    }

    /// Stops the server's process where it is: connections stay open and
    /// nothing is answered.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server run again.
    pub fn resume(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        let status = std::process::Command::new("kill")
            .arg(signal)
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill {signal} redis-server");
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
