//! The presence service over real gRPC: the lease lifecycle as an edge drives
//! it, status, the watch stream, call signalling, request validation, and
//! the service credential.

use std::time::Duration;

use std::sync::Arc;

use common::Secret;
use common::bus::MemoryBus;
use common::config::PresenceConfig;
use common::grpc::{Actor, ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use common::testing::serve_grpc;
use presence_service::{MAX_CONNS_PER_CALL, MAX_USERS_PER_CALL, PresenceApp};
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::watch_event::Kind;
use proto::presence::v1::{
    ActOnCallRequest, GetPresenceRequest, InviteCallRequest, Lease, MAX_LEASES_PER_CALL,
    RegisterRequest, ReleaseRequest, RenewRequest, SetStatusRequest, UserPresence, WatchEvent,
    WatchRequest,
};
use tonic::Code;

/// A running presence service (memory store) and a client holding the
/// service credential.
struct TestApp {
    url: String,
    client: PresenceServiceClient<ServiceChannel>,
    /// Stops the server when the test ends.
    _shutdown: Shutdown,
}

fn settings(credential: &Secret) -> ClientSettings {
    ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    }
}

async fn spawn_app() -> TestApp {
    spawn_app_with(PresenceConfig::default()).await
}

async fn spawn_app_with(config: PresenceConfig) -> TestApp {
    let credential = Secret::new(common::ids::random_secret(32));
    let app = PresenceApp::connect(
        &config,
        Arc::new(MemoryBus::new()),
        None,
        &credential,
        &common::metrics::Metrics::new(&["presence"]),
    )
    .await
    .expect("presence app");
    let server = serve_grpc(|listener, signal| app.run_until_stopped(listener, signal)).await;
    let client = PresenceServiceClient::new(server.channel(&settings(&credential)));
    TestApp {
        url: server.url,
        client,
        _shutdown: server.shutdown,
    }
}

impl TestApp {
    async fn register(&self, conn_id: &str, user_id: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .register(RegisterRequest {
                edge_id: "edge-1".into(),
                conn_id: conn_id.into(),
                user_id: user_id.into(),
                ttl_ms: 0,
                leases: Vec::new(),
            })
            .await
            .map(drop)
    }

    async fn presence(&self, user_ids: &[&str]) -> Result<Vec<UserPresence>, tonic::Status> {
        let request = GetPresenceRequest {
            user_ids: user_ids.iter().map(|u| u.to_string()).collect(),
        };
        Ok(self
            .client
            .clone()
            .get_presence(request)
            .await?
            .into_inner()
            .presence)
    }
}

fn ids(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i}")).collect()
}

#[tokio::test]
async fn leases_drive_presence_over_grpc() {
    let app = spawn_app().await;
    app.register("c1", "alice").await.expect("register");

    let presence = app.presence(&["alice", "bob"]).await.expect("presence");
    assert_eq!(
        presence,
        [
            UserPresence {
                user_id: "alice".into(),
                online: true,
                status: "online".into(),
                last_seen: 0,
                text: String::new(),
                connected: true,
            },
            UserPresence {
                user_id: "bob".into(),
                online: false,
                status: "offline".into(),
                last_seen: 0,
                text: String::new(),
                connected: false,
            },
        ]
    );

    let renewed = app
        .client
        .clone()
        .renew(RenewRequest {
            edge_id: "edge-1".into(),
            conn_ids: vec!["c1".into(), "gone".into()],
            ttl_ms: 0,
        })
        .await
        .expect("renew")
        .into_inner();
    assert_eq!(renewed.unknown_conn_ids, ["gone"]);

    app.client
        .clone()
        .release(ReleaseRequest {
            conn_ids: vec!["c1".into()],
        })
        .await
        .expect("release");
    let alice = &app.presence(&["alice"]).await.expect("presence")[0];
    assert!(alice.online, "still online within the grace period");
    let app = spawn_app_with(PresenceConfig {
        grace_ms: 0,
        ..PresenceConfig::default()
    })
    .await;
    app.register("c1", "alice").await.expect("register");
    let before_release = common::ids::now_ms();
    app.client
        .clone()
        .release(ReleaseRequest {
            conn_ids: vec!["c1".into()],
        })
        .await
        .expect("release");
    let alice = &app.presence(&["alice"]).await.expect("presence")[0];
    assert!(!alice.online);
    assert_eq!(alice.status, "offline");
    // The memory store's clock is monotonic time mapped onto the wall clock
    // at start, so allow it a little drift from the wall clock.
    let window = before_release - 50..=common::ids::now_ms() + 50;
    assert!(
        window.contains(&alice.last_seen),
        "{alice:?} outside {window:?}"
    );
}

#[tokio::test]
async fn one_register_call_carries_many_leases_up_to_the_limit() {
    let app = spawn_app().await;
    let register = |leases: Vec<Lease>| {
        let mut client = app.client.clone();
        async move {
            client
                .register(RegisterRequest {
                    edge_id: "edge-1".into(),
                    leases,
                    ..RegisterRequest::default()
                })
                .await
        }
    };
    let leases = |n: usize| -> Vec<Lease> {
        (0..n)
            .map(|i| Lease {
                conn_id: format!("c{i}"),
                user_id: format!("u{i}"),
            })
            .collect()
    };
    register(leases(MAX_LEASES_PER_CALL))
        .await
        .expect("the largest allowed register");
    let users: Vec<String> = ids("u", MAX_LEASES_PER_CALL);
    let users: Vec<&str> = users.iter().map(String::as_str).collect();
    let seen = app.presence(&users[..100]).await.expect("presence");
    assert!(
        seen.iter().all(|p| p.online),
        "every lease of the call is live"
    );

    let status = register(leases(MAX_LEASES_PER_CALL + 1))
        .await
        .expect_err("too many leases");
    assert_eq!(status.code(), Code::InvalidArgument);
    let mut bad = leases(2);
    bad[1].user_id.clear();
    let status = register(bad).await.expect_err("an empty user id");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn invalid_requests_are_bad_requests() {
    let app = spawn_app().await;
    let status = app.register("", "alice").await.expect_err("empty conn id");
    assert_eq!(status.code(), Code::InvalidArgument);
    assert!(status.message().contains("conn_id"), "{status:?}");
    let status = app.register("c1", "").await.expect_err("empty user id");
    assert_eq!(status.code(), Code::InvalidArgument);

    let status = app
        .client
        .clone()
        .renew(RenewRequest {
            edge_id: "edge-1".into(),
            conn_ids: ids("c", MAX_CONNS_PER_CALL + 1),
            ttl_ms: 0,
        })
        .await
        .expect_err("too many conns");
    assert_eq!(status.code(), Code::InvalidArgument);
    let renewed = app
        .client
        .clone()
        .renew(RenewRequest {
            edge_id: "edge-1".into(),
            conn_ids: ids("c", MAX_CONNS_PER_CALL),
            ttl_ms: 0,
        })
        .await
        .expect("the largest allowed renew")
        .into_inner();
    assert_eq!(renewed.unknown_conn_ids.len(), MAX_CONNS_PER_CALL);
    let status = app
        .client
        .clone()
        .renew(RenewRequest {
            edge_id: String::new(),
            conn_ids: vec!["c1".into()],
            ttl_ms: 0,
        })
        .await
        .expect_err("empty edge id");
    assert_eq!(status.code(), Code::InvalidArgument);

    let too_many = ids("u", MAX_USERS_PER_CALL + 1);
    let too_many: Vec<&str> = too_many.iter().map(String::as_str).collect();
    let status = app.presence(&too_many).await.expect_err("too many users");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .presence(&["alice", ""])
        .await
        .expect_err("empty user id");
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn calls_without_the_service_credential_are_refused() {
    let app = spawn_app().await;
    let stranger = Secret::new(common::ids::random_secret(32));
    let mut client =
        PresenceServiceClient::new(channel(&app.url, &settings(&stranger)).expect("channel"));
    let status = client
        .get_presence(GetPresenceRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .expect_err("wrong credential");
    assert_eq!(status.code(), Code::Unauthenticated);

    let bare = tonic::transport::Endpoint::from_shared(app.url.clone())
        .expect("endpoint")
        .connect_lazy();
    let status = PresenceServiceClient::new(bare)
        .get_presence(GetPresenceRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated);
}

fn actor(user: &str) -> Actor {
    Actor {
        user_id: user.into(),
        name: user.to_uppercase(),
        anonymous: false,
    }
}

impl TestApp {
    async fn set_status(&self, user: &str, status: &str, text: &str) -> Result<(), tonic::Status> {
        self.client
            .clone()
            .set_status(actor(user).request(SetStatusRequest {
                status: status.into(),
                text: text.into(),
            }))
            .await
            .map(drop)
    }

    async fn release(&self, conn_id: &str) {
        self.client
            .clone()
            .release(ReleaseRequest {
                conn_ids: vec![conn_id.into()],
            })
            .await
            .expect("release");
    }
}

async fn next_watch_event(stream: &mut tonic::Streaming<WatchEvent>) -> WatchEvent {
    tokio::time::timeout(Duration::from_secs(10), stream.message())
        .await
        .expect("a watch event within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn status_is_seen_by_others_and_invisible_looks_offline() {
    let app = spawn_app().await;
    app.register("c1", "alice").await.expect("register");
    app.set_status("alice", "busy", "on a call")
        .await
        .expect("set");
    let alice = &app.presence(&["alice"]).await.expect("presence")[0];
    assert_eq!(
        (alice.status.as_str(), alice.text.as_str(), alice.online),
        ("busy", "on a call", true)
    );
    app.set_status("alice", "invisible", "hidden")
        .await
        .expect("set");
    let alice = &app.presence(&["alice"]).await.expect("presence")[0];
    assert_eq!(
        (alice.status.as_str(), alice.text.as_str(), alice.online),
        ("offline", "", false)
    );
    assert!(alice.connected, "invisible still holds a live connection");

    let status = app
        .set_status("alice", "sleeping", "")
        .await
        .expect_err("unknown status");
    assert_eq!(status.code(), Code::InvalidArgument);
    let status = app
        .set_status("alice", "away", &"x".repeat(101))
        .await
        .expect_err("text too long");
    assert_eq!(status.code(), Code::OutOfRange);
    app.set_status("alice", "away", &"é".repeat(100))
        .await
        .expect("100 characters are fine");
    let status = app
        .client
        .clone()
        .set_status(SetStatusRequest {
            status: "away".into(),
            text: String::new(),
        })
        .await
        .expect_err("no acting user");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn watch_streams_connects_status_and_offline_after_the_grace_period() {
    let app = spawn_app_with(PresenceConfig {
        grace_ms: 300,
        sweep_ms: 20,
        ..PresenceConfig::default()
    })
    .await;
    let mut all = app
        .client
        .clone()
        .watch(WatchRequest { user_ids: vec![] })
        .await
        .expect("watch")
        .into_inner();
    let mut only_alice = app
        .client
        .clone()
        .watch(WatchRequest {
            user_ids: vec!["alice".into()],
        })
        .await
        .expect("watch")
        .into_inner();

    app.register("c0", "bob").await.expect("register");
    let started = common::ids::now_ms();
    app.register("c1", "alice").await.expect("register");
    app.set_status("alice", "away", "back soon")
        .await
        .expect("set");
    app.release("c1").await;

    let bob = next_watch_event(&mut all).await;
    assert_eq!((bob.kind(), bob.user_id.as_str()), (Kind::Connected, "bob"));
    let mut seen = Vec::new();
    loop {
        let event = next_watch_event(&mut only_alice).await;
        assert_eq!(event.user_id, "alice", "filtered: {event:?}");
        seen.push(event.kind());
        match event.kind() {
            Kind::Connected | Kind::Disconnected => {
                assert_eq!(event.conn_id, "c1");
                assert_eq!(event.edge_id, "edge-1");
            }
            Kind::StatusChanged => {
                assert_eq!(
                    (event.status.as_str(), event.text.as_str()),
                    ("away", "back soon")
                );
            }
            Kind::WentOffline => {
                assert!(
                    common::ids::now_ms() - started >= 300,
                    "not before the grace period"
                );
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        seen,
        [
            Kind::Connected,
            Kind::CameOnline,
            Kind::StatusChanged,
            Kind::Disconnected,
            Kind::WentOffline
        ]
    );
}

#[tokio::test]
async fn only_the_two_parties_act_on_a_call() {
    let app = spawn_app().await;
    let call_id = app
        .client
        .clone()
        .invite_call(actor("alice").request(InviteCallRequest {
            to: "bob".into(),
            room_id: String::new(),
            payload_json: r#"{"sdp":"offer"}"#.into(),
        }))
        .await
        .expect("invite")
        .into_inner()
        .call_id;
    let act = |user: &str, action: &str, call_id: &str, payload: String| {
        let request = actor(user).request(ActOnCallRequest {
            action: action.into(),
            call_id: call_id.into(),
            payload_json: payload,
        });
        let mut client = app.client.clone();
        async move { client.act_on_call(request).await.map(drop) }
    };
    let status = act("mallory", "end", &call_id, String::new())
        .await
        .expect_err("not a party");
    assert_eq!(status.code(), Code::NotFound);
    let status = act("bob", "answer", "call_nope", String::new())
        .await
        .expect_err("no such call");
    assert_eq!(status.code(), Code::NotFound);
    let status = act("bob", "hang", &call_id, String::new())
        .await
        .expect_err("unknown action");
    assert_eq!(status.code(), Code::InvalidArgument);
    let big = format!("\"{}\"", "x".repeat(16 * 1024));
    let status = act("bob", "ice", &call_id, big)
        .await
        .expect_err("payload too large");
    assert_eq!(status.code(), Code::OutOfRange);
    let status = act("bob", "ice", &call_id, "{not json".into())
        .await
        .expect_err("payload not JSON");
    assert_eq!(status.code(), Code::InvalidArgument);
    act("bob", "answer", &call_id, r#"{"sdp":"answer"}"#.into())
        .await
        .expect("answer");
    act("alice", "end", &call_id, String::new())
        .await
        .expect("end");
    let status = act("bob", "end", &call_id, String::new())
        .await
        .expect_err("already ended");
    assert_eq!(status.code(), Code::NotFound);

    let status = app
        .client
        .clone()
        .invite_call(actor("alice").request(InviteCallRequest {
            to: "alice".into(),
            room_id: String::new(),
            payload_json: String::new(),
        }))
        .await
        .expect_err("calling yourself");
    assert_eq!(status.code(), Code::InvalidArgument);
}

/// With Redis as the store, health is NOT_SERVING while Redis is
/// unreachable and SERVING again once it is back.
#[tokio::test]
async fn health_follows_redis() {
    use common::testing::{TcpProxy, health_follows};
    let Some(redis) = common::testing::test_redis_url() else {
        return;
    };
    let (proxy, redis_url) = TcpProxy::in_front_of(&redis).await;
    let app = spawn_app_with(PresenceConfig {
        backend: common::config::Backend::Redis,
        redis_url,
        redis_prefix: format!("{}:", common::ids::new_id("health")),
        ..PresenceConfig::default()
    })
    .await;
    health_follows(
        &app.url,
        proto::presence::v1::presence_service_server::SERVICE_NAME,
        &proxy,
    )
    .await;
}
