//! The AI service over real gRPC: request checks, the service credential,
//! chat-service failures reaching the caller, and shutdown.

use std::sync::Arc;
use std::time::Duration;

use ai_service::AiApp;
use common::Secret;
use common::bus::{Bus, MemoryBus};
use common::config::AiConfig;
use common::grpc::{Actor, ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use proto::ai::v1::AskRequest;
use proto::ai::v1::ai_service_client::AiServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use tokio::task::JoinHandle;
use tonic::Code;

/// A running AI service and a client holding the service credential.
struct TestApp {
    url: String,
    client: AiServiceClient<ServiceChannel>,
    shutdown: Shutdown,
    server: JoinHandle<Result<(), tonic::transport::Error>>,
}

fn settings(credential: &Secret) -> ClientSettings {
    ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_secs(1),
        timeout: Duration::from_secs(5),
    }
}

/// An address nothing listens on.
async fn closed_url() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    drop(listener);
    url
}

/// Starts the AI service with chat-service expected at `chat_url`.
async fn spawn_app(
    config: AiConfig,
    chat_url: &str,
    bus: Arc<dyn Bus>,
    credential: &Secret,
) -> TestApp {
    let chat =
        ChatServiceClient::new(channel(chat_url, &settings(credential)).expect("chat channel"));
    let app = AiApp::new(&config, bus, chat, credential).expect("ai app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let server = tokio::spawn(app.serve(listener, shutdown.signal()));
    let client = AiServiceClient::new(channel(&url, &settings(credential)).expect("channel"));
    TestApp {
        url,
        client,
        shutdown,
        server,
    }
}

/// The AI service with no chat-service behind it.
async fn spawn_without_chat(config: AiConfig) -> TestApp {
    let credential = Secret::new(common::ids::random_secret(32));
    spawn_app(
        config,
        &closed_url().await,
        Arc::new(MemoryBus::new()),
        &credential,
    )
    .await
}

fn alice() -> Actor {
    Actor {
        user_id: "u_alice".into(),
        name: "Alice".into(),
        anonymous: false,
    }
}

fn ask(room: &str, prompt: &str) -> AskRequest {
    AskRequest {
        room_id: room.into(),
        prompt: prompt.into(),
        model: None,
        client_msg_id: String::new(),
    }
}

impl TestApp {
    async fn ask_as(
        &self,
        actor: &Actor,
        request: AskRequest,
    ) -> Result<proto::ai::v1::AskResponse, tonic::Status> {
        Ok(self
            .client
            .clone()
            .ask(actor.request(request))
            .await?
            .into_inner())
    }
}

#[tokio::test]
async fn asking_while_disabled_is_a_failed_precondition() {
    let app = spawn_without_chat(AiConfig {
        enabled: false,
        ..AiConfig::default()
    })
    .await;
    let status = app
        .ask_as(&alice(), ask("r_1", "hello"))
        .await
        .expect_err("disabled");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn prompts_must_be_non_empty_and_bounded() {
    let app = spawn_without_chat(AiConfig::default()).await;
    let status = app
        .ask_as(&alice(), ask("r_1", "  \n "))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .ask_as(&alice(), ask("r_1", &"x".repeat(4001)))
        .await
        .expect_err("too long");
    assert_eq!(status.code(), Code::OutOfRange);
    let status = app
        .ask_as(&alice(), ask("", "hello"))
        .await
        .expect_err("no room");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn calls_need_the_service_credential_and_an_actor() {
    let app = spawn_without_chat(AiConfig::default()).await;
    let status = app
        .client
        .clone()
        .ask(ask("r_1", "hello"))
        .await
        .expect_err("no actor");
    assert_eq!(status.code(), Code::Unauthenticated);

    let mut bare = AiServiceClient::connect(app.url.clone())
        .await
        .expect("connect");
    let status = bare
        .ask(alice().request(ask("r_1", "hello")))
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn a_chat_service_that_is_down_is_reported_as_unavailable() {
    let app = spawn_without_chat(AiConfig::default()).await;
    let status = app
        .ask_as(&alice(), ask("r_1", "hello"))
        .await
        .expect_err("chat is down");
    assert_eq!(status.code(), Code::Unavailable);
}

#[tokio::test]
async fn the_server_stops_promptly_on_shutdown() {
    let app = spawn_without_chat(AiConfig::default()).await;
    let status = app
        .ask_as(&alice(), ask("r_1", ""))
        .await
        .expect_err("empty");
    assert_eq!(status.code(), Code::InvalidArgument, "the server is up");
    let TestApp {
        client,
        shutdown,
        server,
        ..
    } = app;
    drop(client);
    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(3), server)
        .await
        .expect("stops within the grace period")
        .expect("joins")
        .expect("serves without error");
}
