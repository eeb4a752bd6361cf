//! The suite as a whole: health, reflection, backends down, shutdown.

use std::time::Duration;

use serde_json::json;
use tokio_stream::StreamExt;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::v1::ServerReflectionRequest;
use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;

use crate::helpers::spawn_app;

#[tokio::test]
async fn every_grpc_port_answers_health_and_reflection() {
    let app = spawn_app().await;
    let a = app.addrs;
    for (addr, service) in [
        (a.auth, "parley.auth.v1.AuthService"),
        (a.chat, "parley.chat.v1.ChatService"),
        (a.ai, "parley.ai.v1.AiService"),
        (a.presence, "parley.presence.v1.PresenceService"),
    ] {
        let url = format!("http://{addr}");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut health = HealthClient::new(channel.clone());
        let status = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health check")
            .into_inner()
            .status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");

        let mut reflection = ServerReflectionClient::new(channel);
        let request = ServerReflectionRequest {
            host: String::new(),
            message_request: Some(MessageRequest::ListServices(String::new())),
        };
        let mut responses = reflection
            .server_reflection_info(tokio_stream::iter([request]))
            .await
            .expect("reflection")
            .into_inner();
        let response = responses.next().await.expect("a response").expect("ok");
        let Some(MessageResponse::ListServicesResponse(list)) = response.message_response else {
            panic!("unexpected reflection response");
        };
        let names: Vec<String> = list.service.into_iter().map(|s| s.name).collect();
        assert!(
            names.iter().any(|n| n == service),
            "{service} listed in {names:?}"
        );
        assert!(
            names.iter().any(|n| n == "grpc.health.v1.Health"),
            "{names:?}"
        );
    }
}

#[tokio::test]
async fn http_health_and_readiness() {
    let app = spawn_app().await;
    for path in ["/healthz", "/readyz"] {
        assert_eq!(raw_get(app.addrs.edge, path).await, 200, "{path}");
    }
    // Another edge, set up as a separate process would be, is ready too.
    let second = app.second_edge().await;
    let addr = second
        .trim_start_matches("ws://")
        .trim_end_matches("/ws")
        .parse()
        .expect("address");
    assert_eq!(raw_get(addr, "/readyz").await, 200);
}

async fn raw_get(addr: std::net::SocketAddr, path: &str) -> u16 {
    crate::helpers::http_get(addr, path, &[]).await.0
}

#[tokio::test]
async fn shutdown_closes_connections_with_1001() {
    let mut app = spawn_app().await;
    let mut client = app.anonymous("alice").await;
    client.ok("ping", json!({})).await;
    let started = tokio::time::Instant::now();
    let (code, ()) = tokio::join!(client.close_code(), app.shutdown());
    assert_eq!(code, Some(1001));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "shutdown is bounded"
    );
}

#[tokio::test]
async fn a_backend_that_is_down_is_unavailable_not_a_hang() {
    // Services that were bound and then closed: nothing listens there.
    let dead = {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        l.local_addr().expect("addr")
    };
    let app = spawn_app().await;
    let url = format!("http://{dead}");
    let settings = common::grpc::ClientSettings {
        credential: common::Secret::new("x".repeat(32)),
        connect_timeout: Duration::from_millis(500),
        timeout: Duration::from_secs(2),
    };
    let channel = || common::grpc::channel(&url, &settings).expect("channel");
    let backends = edge::Backends {
        auth: proto::auth::v1::auth_service_client::AuthServiceClient::new(channel()),
        chat: proto::chat::v1::chat_service_client::ChatServiceClient::new(channel()),
        chat_backend: proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient::new(
            channel(),
        ),
        ai: proto::ai::v1::ai_service_client::AiServiceClient::new(channel()),
        presence: proto::presence::v1::presence_service_client::PresenceServiceClient::new(
            channel(),
        ),
    };
    let shutdown = common::shutdown::Shutdown::new();
    let bus = std::sync::Arc::new(common::bus::MemoryBus::new());
    let mut config = app.config.clone();
    for service in [
        &mut config.services.auth_url,
        &mut config.services.chat_url,
        &mut config.services.ai_url,
        &mut config.services.presence_url,
    ] {
        *service = url.clone();
    }
    config.services.connect_timeout_ms = 500;
    let edge = edge::EdgeApp::new(
        &app.config.edge,
        backends,
        bus,
        false,
        shutdown.signal(),
        &common::metrics::Metrics::new(&["edge"]),
    )
    .await
    .expect("edge")
    .with_suite_config(&config);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(edge.run_until_stopped(listener));

    let mut client = crate::helpers::Client::connect(&format!("ws://{addr}/ws"), &[])
        .await
        .expect("connect");
    let started = tokio::time::Instant::now();
    let error = client
        .err("auth", json!({"anonymous": true}), "unavailable")
        .await;
    assert_eq!(error["temporary"], true);
    assert!(started.elapsed() < Duration::from_secs(5), "fails fast");
    let (status, reason) = crate::helpers::http_get(addr, "/readyz", &[]).await;
    assert_eq!(status, 503, "services unreachable: not ready");
    assert!(reason.contains("unreachable"), "{reason}");
    assert_eq!(raw_get(addr, "/healthz").await, 200, "alive all the same");
    shutdown.trigger();
}
