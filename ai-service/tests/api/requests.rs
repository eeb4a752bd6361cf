//! Request checks, the service credential, chat-service failures reaching
//! the caller, and shutdown.

use std::time::Duration;

use common::config::AiConfig;
use proto::ai::v1::ai_service_client::AiServiceClient;
use tonic::Code;

use crate::helpers::*;

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
        .ask_as(&alice(), ask("r_1", &"x".repeat(8001)))
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
