//! Service credentials with scopes (issue 18, point 8): the suite runs on
//! per-caller credentials only (no shared one), WebSocket users get
//! everything done through them, and each credential reaches only its
//! methods and acts only for whom it may.

use std::time::Duration;

use common::Secret;
use common::config::BackendCaller;
use common::grpc::{Actor, ClientSettings, ServiceChannel, channel};
use proto::auth::v1::IssueTokensRequest;
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{GetRoomRequest, JoinRoomRequest, PostMessageRequest, User};
use serde_json::json;
use tonic::Code;

use crate::helpers::{TestApp, spawn_app_with};

const EDGE: &str = "edge-0123456789abcdef0123456789abcdef";
const AI: &str = "ai-0123456789abcdef0123456789abcdef01";
const PRESENCE: &str = "presence-0123456789abcdef0123456789ab";
const CHAT: &str = "chat-0123456789abcdef0123456789abcdef";
const BOT: &str = "bot-0123456789abcdef0123456789abcdef0";
const ISSUER: &str = "issuer-0123456789abcdef0123456789abcd";

async fn spawn_scoped_app() -> TestApp {
    spawn_app_with(|c| {
        c.presence.call_ring_ms = 200;
        let s = &mut c.services;
        s.edge_credential = Secret::new(EDGE);
        s.ai_credential = Secret::new(AI);
        s.presence_credential = Secret::new(PRESENCE);
        s.chat_credential = Secret::new(CHAT);
        s.backends = vec![
            BackendCaller {
                name: "deploy-bot".into(),
                credential: Secret::new(BOT),
                methods: vec!["parley.chat.v1.ChatBackendService/*".into(), "*".into()],
            },
            BackendCaller {
                name: "login".into(),
                credential: Secret::new(ISSUER),
                methods: vec!["parley.auth.v1.AuthService/IssueTokens".into()],
            },
        ];
    })
    .await
}

fn with(credential: &str, addr: std::net::SocketAddr) -> ServiceChannel {
    let settings = ClientSettings {
        credential: Secret::new(credential),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(10),
    };
    channel(&format!("http://{addr}"), &settings).expect("channel")
}

fn issue(subject: &str) -> IssueTokensRequest {
    IssueTokensRequest {
        subject: subject.into(),
        name: "Ada".into(),
        roles: Vec::new(),
    }
}

#[tokio::test]
async fn the_suite_runs_on_per_caller_credentials_alone() {
    let app = spawn_scoped_app().await;
    // edge → auth, chat, presence; chat → presence; ai → chat; presence → chat.
    let mut alice = app.user("alice", "Alice").await;
    let mut bob = app.user("bob", "Bob").await;
    let room = alice.share_room_with(&mut [&mut bob]).await;
    alice.ok("room.join", json!({"room": room})).await;
    bob.ok("room.join", json!({"room": room})).await;
    bob.send(&room, "hi").await;
    alice
        .ok("presence.subscribe", json!({"users": ["bob"]}))
        .await;
    let asked = alice
        .ok("ai.ask", json!({"room": room, "prompt": "hello"}))
        .await;
    assert_eq!(asked["message"]["sender"]["id"], "alice");
    let done = alice.event("ai.done").await;
    assert_eq!(done["message"]["sender"]["id"], "assistant");
    alice
        .ok("call.invite", json!({"to": "bob", "payload": {}}))
        .await;
    let missed = bob.event("notification.new").await;
    assert_eq!(missed["notification"]["kind"], "missed_call");
}

#[tokio::test]
async fn a_credential_reaches_only_its_methods_and_acts_only_for_whom_it_may() {
    let app = spawn_scoped_app().await;
    let a = app.addrs;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("news").await;

    // Only a scope that names IssueTokens issues tokens: not the edge's,
    // not a backend's `*`.
    for credential in [EDGE, BOT, AI] {
        let refused = AuthServiceClient::new(with(credential, a.auth))
            .issue_tokens(issue("u_1"))
            .await
            .expect_err("no IssueTokens in scope");
        assert_eq!(refused.code(), Code::PermissionDenied, "{credential}");
    }
    AuthServiceClient::new(with(ISSUER, a.auth))
        .issue_tokens(issue("u_1"))
        .await
        .expect("named in scope");
    // The issuer reaches nothing else.
    let refused = ChatBackendServiceClient::new(with(ISSUER, a.chat))
        .get_room(GetRoomRequest {
            room_id: room.clone(),
        })
        .await
        .expect_err("not in scope");
    assert_eq!(refused.code(), Code::PermissionDenied);

    // A backend acts for no user, even on methods in its scope.
    let as_alice = Actor {
        user_id: "alice".into(),
        name: "Alice".into(),
        anonymous: false,
    };
    let refused = ChatServiceClient::new(with(BOT, a.chat))
        .join_room(as_alice.request(JoinRoomRequest {
            room_id: room.clone(),
            ..JoinRoomRequest::default()
        }))
        .await
        .expect_err("a backend acting for alice");
    assert_eq!(refused.code(), Code::PermissionDenied);
    assert!(refused.message().contains("act for users"), "{refused:?}");
    // Its backend calls work.
    alice.ok("room.join", json!({"room": room})).await;
    ChatBackendServiceClient::new(with(BOT, a.chat))
        .post_message(PostMessageRequest {
            room_id: room.clone(),
            sender: Some(User {
                id: "bot:deploy".into(),
                name: "Deploy".into(),
            }),
            text: "v1.2 is live".into(),
            client_msg_id: "deploy-1".into(),
            ..PostMessageRequest::default()
        })
        .await
        .expect("in scope");
    assert_eq!(
        alice.event("message.new").await["message"]["text"],
        "v1.2 is live"
    );

    // The AI service's credential may not do what the edge does.
    let refused = ChatServiceClient::new(with(AI, a.chat))
        .join_room(as_alice.request(JoinRoomRequest {
            room_id: room.clone(),
            ..JoinRoomRequest::default()
        }))
        .await
        .expect_err("ai joining for alice");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // Presence's credential names no user either.
    let refused = ChatServiceClient::new(with(PRESENCE, a.chat))
        .join_room(as_alice.request(JoinRoomRequest {
            room_id: room.clone(),
            ..JoinRoomRequest::default()
        }))
        .await
        .expect_err("presence");
    assert_eq!(refused.code(), Code::PermissionDenied);
    // An unknown credential is unauthenticated.
    let refused = ChatBackendServiceClient::new(with(&"x".repeat(40), a.chat))
        .get_room(GetRoomRequest { room_id: room })
        .await
        .expect_err("unknown");
    assert_eq!(refused.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_suite_runs_over_mutual_tls_and_refuses_a_caller_without_a_certificate() {
    let certs = common::testing::tls::TestCerts::new("e2e-mtls");
    let path = |p: std::path::PathBuf| p.display().to_string();
    // One certificate for 127.0.0.1 serves as every component's server and
    // client certificate.
    let (cert, key, ca) = (
        path(certs.server_cert()),
        path(certs.server_key()),
        path(certs.ca()),
    );
    let app = spawn_app_with(|c| {
        c.services.tls_cert_file = cert;
        c.services.tls_key_file = key;
        c.services.tls_ca_file = ca;
    })
    .await;
    let mut alice = app.user("alice", "Alice").await;
    let room = alice.public_room("over tls").await;
    alice.ok("room.join", json!({"room": room})).await;
    alice.send(&room, "hello").await;
    // The edge's readiness reaches every service over TLS too.
    let (status, body) = crate::helpers::http_get(app.addrs.edge, "/readyz", &[]).await;
    assert_eq!(status, 200, "{body}");
    // A caller with the suite's own credential but without TLS and a
    // client certificate is refused.
    app.chat_backend_client()
        .get_room(GetRoomRequest { room_id: room })
        .await
        .expect_err("no TLS, no certificate");
}
