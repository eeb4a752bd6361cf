//! The presence service over real gRPC: the lease lifecycle as an edge drives
//! it, request validation, and the service credential.

use std::time::Duration;

use common::Secret;
use common::config::PresenceConfig;
use common::grpc::{ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use presence_service::{MAX_CONNS_PER_CALL, MAX_USERS_PER_CALL, PresenceApp};
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::{
    GetPresenceRequest, RegisterRequest, ReleaseRequest, RenewRequest, UserPresence,
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
    let credential = Secret::new(common::ids::random_secret(32));
    let app = PresenceApp::connect(&PresenceConfig::default(), &credential)
        .await
        .expect("presence app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(listener, shutdown.signal()));
    let client =
        PresenceServiceClient::new(channel(&url, &settings(&credential)).expect("channel"));
    TestApp {
        url,
        client,
        _shutdown: shutdown,
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
            },
            UserPresence {
                user_id: "bob".into(),
                online: false,
                status: "offline".into(),
                last_seen: 0,
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
