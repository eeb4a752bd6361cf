//! The auth service over real gRPC: token verification edge cases,
//! anonymous sign-in, and the service credential.

use std::sync::Arc;
use std::time::Duration;

use auth_service::AuthApp;
use common::Secret;
use common::auth_reason::METADATA as REASON_METADATA;
use common::bus::MemoryBus;
use common::config::AuthConfig;
use common::grpc::{ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use common::testing::serve_grpc;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::auth::v1::{
    DevLoginRequest, Identity, IssueTokensRequest, RefreshTokensRequest, RevokeRequest,
    SignInAnonymousRequest, TokenPair, VerifyTokenRequest,
};
use serde_json::{Value, json};
use tonic::Code;

const SECRET: &str = "test-signing-secret-0123456789abcdef";

/// A running auth service and a client holding the service credential.
struct TestApp {
    url: String,
    client: AuthServiceClient<ServiceChannel>,
    /// The bus revocations and blocks are announced on.
    bus: Arc<MemoryBus>,
    /// Stops the server when the test ends.
    _shutdown: Shutdown,
}

fn config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Secret::new(SECRET),
        issuer: "parley".into(),
        ..AuthConfig::default()
    }
}

fn settings(credential: &Secret) -> ClientSettings {
    ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(5),
    }
}

async fn spawn_app(config: AuthConfig) -> TestApp {
    let credential = Secret::new(common::ids::random_secret(32));
    let bus = Arc::new(MemoryBus::new());
    let app = AuthApp::connect(
        &config,
        &credential,
        bus.clone(),
        &common::metrics::Metrics::new(&["auth"]),
    )
    .await
    .expect("auth app");
    let server = serve_grpc(|listener, signal| app.run_until_stopped(listener, signal)).await;
    let client = AuthServiceClient::new(server.channel(&settings(&credential)));
    TestApp {
        url: server.url,
        client,
        bus,
        _shutdown: server.shutdown,
    }
}

impl TestApp {
    async fn verify(&self, token: &str) -> Result<Identity, tonic::Status> {
        let request = VerifyTokenRequest {
            token: token.into(),
            client_ip: "192.0.2.1".into(),
        };
        let response = self.client.clone().verify_token(request).await?;
        Ok(response.into_inner().identity.expect("identity"))
    }

    async fn rejected(&self, token: &str, reason: &str) {
        let status = self.verify(token).await.expect_err("token must be refused");
        assert_rejected(&status, reason);
    }

    async fn sign_in(&self, name: &str) -> Result<(Identity, String), tonic::Status> {
        let request = SignInAnonymousRequest {
            name: name.into(),
            client_ip: "192.0.2.1".into(),
        };
        let response = self
            .client
            .clone()
            .sign_in_anonymous(request)
            .await?
            .into_inner();
        Ok((response.identity.expect("identity"), response.access_token))
    }
}

fn assert_rejected(status: &tonic::Status, reason: &str) {
    assert_eq!(status.code(), Code::Unauthenticated, "{status:?}");
    let message = match reason {
        "expired" => "token expired".to_string(),
        "revoked" => "token revoked".to_string(),
        other => format!("invalid token ({other})"),
    };
    assert_eq!(status.message(), message);
    assert_eq!(
        status
            .metadata()
            .get(REASON_METADATA)
            .and_then(|v| v.to_str().ok()),
        Some(reason)
    );
}

fn now() -> u64 {
    jsonwebtoken::get_current_timestamp()
}

fn sign_with(alg: Algorithm, secret: &str, claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(alg),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("sign")
}

fn sign(claims: &Value) -> String {
    sign_with(Algorithm::HS256, SECRET, claims)
}

/// Valid claims for `sub`, to be modified by each test.
fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "parley", "exp": now() + 600, "iat": now()})
}

fn without(mut claims: Value, key: &str) -> Value {
    claims.as_object_mut().expect("object").remove(key);
    claims
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims
        .as_object_mut()
        .expect("object")
        .insert(key.into(), value);
    claims
}

#[tokio::test]
async fn a_valid_token_yields_its_identity() {
    let app = spawn_app(config()).await;
    let exp = now() + 600;
    let token = sign(&json!({
        "sub": "u_alice", "iss": "parley", "exp": exp, "name": "Alice",
        "roles": ["member", "admin"], "sid": "sess_1", "jti": "jti_1", "iat": exp - 600,
    }));
    let identity = app.verify(&token).await.expect("valid");
    assert_eq!(
        identity,
        Identity {
            user_id: "u_alice".into(),
            name: "Alice".into(),
            anonymous: false,
            roles: vec!["member".into(), "admin".into()],
            session_id: "sess_1".into(),
            expires_at: exp as i64 * 1000,
            token_id: "jti_1".into(),
            scopes: vec![],
            issued_at: exp as i64 - 600,
        }
    );

    let identity = app
        .verify(&sign(&with(claims("u_bob"), "jti", json!("jti_2"))))
        .await
        .expect("valid");
    assert_eq!(identity.name, "u_bob", "name falls back to sub");
    assert_eq!(identity.session_id, "jti_2", "session falls back to jti");
    assert!(identity.roles.is_empty());
    assert!(!identity.anonymous);

    let anonymous_by_role = with(claims("u_carol"), "roles", json!(["anonymous"]));
    assert!(
        app.verify(&sign(&anonymous_by_role))
            .await
            .expect("valid")
            .anonymous
    );
    let anonymous_by_claim = with(claims("u_dave"), "anon", json!(true));
    assert!(
        app.verify(&sign(&anonymous_by_claim))
            .await
            .expect("valid")
            .anonymous
    );
}

#[tokio::test]
async fn an_expired_token_is_refused_as_expired() {
    let app = spawn_app(config()).await;
    app.rejected(
        &sign(&with(claims("u_1"), "exp", json!(now() - 3600))),
        "expired",
    )
    .await;
    // Within the leeway it is still accepted.
    app.verify(&sign(&with(claims("u_1"), "exp", json!(now() - 5))))
        .await
        .expect("within leeway");
}

#[tokio::test]
async fn an_unsigned_alg_none_token_is_refused() {
    let app = spawn_app(config()).await;
    let signed = sign(&claims("u_1"));
    let payload = signed.split('.').nth(1).expect("payload");
    // {"alg":"none","typ":"JWT"}
    let header = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0";
    app.rejected(&format!("{header}.{payload}."), "alg_not_allowed")
        .await;
    app.rejected(&format!("{header}.{payload}"), "malformed")
        .await;
}

#[tokio::test]
async fn tokens_signed_with_other_algorithms_are_refused() {
    let app = spawn_app(config()).await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        app.rejected(&sign_with(alg, SECRET, &claims("u_1")), "alg_not_allowed")
            .await;
    }
}

#[tokio::test]
async fn a_token_signed_with_another_secret_is_refused() {
    let app = spawn_app(config()).await;
    let forged = sign_with(
        Algorithm::HS256,
        "another-secret-0123456789abcdefgh",
        &claims("u_1"),
    );
    app.rejected(&forged, "bad_signature").await;
    app.rejected("not.a.token", "malformed").await;
    app.rejected("", "malformed").await;
}

#[tokio::test]
async fn an_oversize_token_is_refused_even_when_correctly_signed() {
    let app = spawn_app(AuthConfig {
        max_token_bytes: 512,
        ..config()
    })
    .await;
    let small = sign(&claims("u_1"));
    assert!(small.len() <= 512);
    app.verify(&small).await.expect("small token");
    let big = sign(&with(claims("u_1"), "padding", json!("x".repeat(600))));
    app.rejected(&big, "too_large").await;
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let app = spawn_app(config()).await;
    app.rejected(&sign(&without(claims("u_1"), "exp")), "missing_claim")
        .await;
}

#[tokio::test]
async fn a_token_valid_for_longer_than_the_maximum_lifetime_is_refused() {
    let app = spawn_app(config()).await;
    let week = 7 * 24 * 3600;
    app.rejected(
        &sign(&with(
            claims("u_1"),
            "exp",
            json!(now() + 10 * 365 * 24 * 3600),
        )),
        "lifetime_too_long",
    )
    .await;
    app.verify(&sign(&with(claims("u_1"), "exp", json!(now() + week - 60))))
        .await
        .expect("within the maximum lifetime");
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let app = spawn_app(config()).await;
    app.rejected(
        &sign(&with(claims("u_1"), "nbf", json!(now() + 3600))),
        "not_yet_valid",
    )
    .await;
    app.verify(&sign(&with(claims("u_1"), "nbf", json!(now() + 5))))
        .await
        .expect("within leeway");
}

#[tokio::test]
async fn the_issuer_is_required_and_checked() {
    let app = spawn_app(config()).await;
    app.rejected(
        &sign(&with(claims("u_1"), "iss", json!("someone-else"))),
        "wrong_issuer",
    )
    .await;
    app.rejected(&sign(&without(claims("u_1"), "iss")), "missing_claim")
        .await;

    let lenient = spawn_app(AuthConfig {
        issuer: String::new(),
        ..config()
    })
    .await;
    lenient
        .verify(&sign(&without(claims("u_1"), "iss")))
        .await
        .expect("no issuer configured");
}

#[tokio::test]
async fn the_audience_is_required_and_checked_when_configured() {
    let app = spawn_app(AuthConfig {
        audience: "parley-clients".into(),
        ..config()
    })
    .await;
    app.rejected(&sign(&claims("u_1")), "missing_claim").await;
    app.rejected(
        &sign(&with(claims("u_1"), "aud", json!("elsewhere"))),
        "wrong_audience",
    )
    .await;
    app.verify(&sign(&with(claims("u_1"), "aud", json!("parley-clients"))))
        .await
        .expect("right audience");

    let lenient = spawn_app(config()).await;
    lenient
        .verify(&sign(&with(claims("u_1"), "aud", json!("anything"))))
        .await
        .expect("no audience configured");
}

#[tokio::test]
async fn the_subject_is_required_bounded_and_not_the_assistant() {
    let app = spawn_app(config()).await;
    for reserved in ["assistant", "system", "bot:weather"] {
        app.rejected(&sign(&claims(reserved)), "reserved_subject")
            .await;
    }
    app.rejected(&sign(&claims("evil\u{202e}gpj")), "bad_subject")
        .await;
    app.rejected(&sign(&without(claims("u_1"), "sub")), "missing_claim")
        .await;
    app.rejected(&sign(&claims("")), "bad_subject").await;
    app.rejected(&sign(&claims(&"u".repeat(129))), "bad_subject")
        .await;
    app.verify(&sign(&claims(&"u".repeat(128))))
        .await
        .expect("128 chars");
}

#[tokio::test]
async fn anonymous_sign_in_issues_a_token_that_verifies() {
    let app = spawn_app(config()).await;
    let before = now() as i64 * 1000;
    let (identity, token) = app.sign_in("  Ada  ").await.expect("sign in");
    assert!(
        identity.user_id.starts_with("anon_"),
        "{}",
        identity.user_id
    );
    assert_eq!(identity.name, "Ada");
    assert!(identity.anonymous);
    assert_eq!(identity.roles, ["anonymous"]);
    assert!(!identity.session_id.is_empty());
    let ttl_ms = AuthConfig::default().anonymous_ttl_s as i64 * 1000;
    assert!(
        identity.expires_at >= before + ttl_ms && identity.expires_at <= before + ttl_ms + 5_000
    );
    assert_eq!(
        app.verify(&token).await.expect("issued token verifies"),
        identity
    );

    let (guest, _) = app.sign_in("").await.expect("sign in without a name");
    assert!(guest.name.starts_with("guest-"), "{}", guest.name);
    assert_ne!(guest.user_id, identity.user_id);

    let status = app
        .sign_in(&"n".repeat(65))
        .await
        .expect_err("name too long");
    assert_eq!(status.code(), Code::InvalidArgument);
    for disguised in ["admin\u{202e}nimda", "a\u{2066}b", "line\nbreak"] {
        let status = app.sign_in(disguised).await.expect_err("disguised name");
        assert_eq!(status.code(), Code::InvalidArgument, "{disguised:?}");
    }
}

#[tokio::test]
async fn anonymous_sign_in_can_be_disabled() {
    let app = spawn_app(AuthConfig {
        anonymous: false,
        ..config()
    })
    .await;
    let status = app.sign_in("ada").await.expect_err("disabled");
    assert_eq!(status.code(), Code::FailedPrecondition);
}

#[tokio::test]
async fn calls_without_the_service_credential_are_refused() {
    let app = spawn_app(config()).await;
    let request = || VerifyTokenRequest {
        token: sign(&claims("u_1")),
        client_ip: String::new(),
    };

    let mut bare = AuthServiceClient::connect(app.url.clone())
        .await
        .expect("connect");
    let status = bare
        .verify_token(request())
        .await
        .expect_err("no credential");
    assert_eq!(status.code(), Code::Unauthenticated);

    let wrong = Secret::new(common::ids::random_secret(32));
    let mut impostor =
        AuthServiceClient::new(channel(&app.url, &settings(&wrong)).expect("channel"));
    let status = impostor
        .verify_token(request())
        .await
        .expect_err("wrong credential");
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn the_secrets_never_appear_in_debug_output() {
    let credential = Secret::new("service-credential-0123456789abcdef");
    let key_secret = "partner-key-secret-0123456789abcdefgh";
    let config = AuthConfig {
        keys: vec![common::config::KeyConfig {
            kid: "partner".into(),
            algorithms: vec!["HS256".into()],
            secret: Secret::new(key_secret),
            ..Default::default()
        }],
        ..config()
    };
    let app = AuthApp::connect(
        &config,
        &credential,
        Arc::new(MemoryBus::new()),
        &common::metrics::Metrics::new(&["auth"]),
    )
    .await
    .expect("auth app");
    for debug in [
        format!("{app:?}"),
        format!("{app:#?}"),
        format!("{config:?}"),
    ] {
        assert!(!debug.contains(SECRET), "signing secret leaked: {debug}");
        assert!(!debug.contains(key_secret), "key secret leaked: {debug}");
        assert!(
            !debug.contains(credential.expose()),
            "credential leaked: {debug}"
        );
    }
}

fn pair_request(subject: &str) -> IssueTokensRequest {
    IssueTokensRequest {
        subject: subject.into(),
        name: format!("{subject} name"),
        roles: vec!["member".into()],
    }
}

impl TestApp {
    async fn issue(&self, subject: &str) -> TokenPair {
        self.client
            .clone()
            .issue_tokens(pair_request(subject))
            .await
            .expect("issue")
            .into_inner()
    }

    async fn refresh(&self, refresh_token: &str) -> Result<TokenPair, tonic::Status> {
        Ok(self
            .client
            .clone()
            .refresh_tokens(RefreshTokensRequest {
                refresh_token: refresh_token.into(),
            })
            .await?
            .into_inner())
    }

    async fn revoke(&self, request: RevokeRequest) -> Result<(), tonic::Status> {
        self.client.clone().revoke(request).await.map(|_| ())
    }

    async fn verify_from(&self, token: &str, ip: &str) -> Result<Identity, tonic::Status> {
        let request = VerifyTokenRequest {
            token: token.into(),
            client_ip: ip.into(),
        };
        let response = self.client.clone().verify_token(request).await?;
        Ok(response.into_inner().identity.expect("identity"))
    }

    /// A subscriber of the edges' control channel.
    async fn control(&self) -> tokio::sync::mpsc::UnboundedReceiver<common::bus::BusEvent> {
        use common::bus::Bus;
        let (subscriber, events) = self.bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(common::bus::EDGE_CONTROL_CHANNEL)
            .await
            .expect("subscribe");
        // The subscriber must outlive the test's reads.
        std::mem::forget(subscriber);
        events
    }
}

async fn announcement(
    events: &mut tokio::sync::mpsc::UnboundedReceiver<common::bus::BusEvent>,
) -> (String, Value) {
    let event = tokio::time::timeout(Duration::from_secs(5), events.recv())
        .await
        .expect("an announcement")
        .expect("bus open");
    match event {
        common::bus::BusEvent::Message { envelope, .. } => (
            envelope.kind,
            serde_json::from_str(&envelope.json).expect("json"),
        ),
        other => panic!("unexpected {other:?}"),
    }
}

fn reason_of(status: &tonic::Status) -> &str {
    status
        .metadata()
        .get(REASON_METADATA)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
}

#[tokio::test]
async fn issued_pairs_rotate_and_a_reused_refresh_token_revokes_the_family() {
    let app = spawn_app(config()).await;
    let mut control = app.control().await;
    let first = app.issue("u_1").await;
    let identity = first.identity.clone().expect("identity");
    assert_eq!(identity.user_id, "u_1");
    assert_eq!(identity.name, "u_1 name");
    assert_eq!(identity.roles, ["member"]);
    assert!(!identity.session_id.is_empty() && !identity.token_id.is_empty());
    let ttl = AuthConfig::default().access_ttl_s as i64 * 1000;
    let issued_at = now() as i64 * 1000;
    assert!((issued_at + ttl - 2_000..=issued_at + ttl + 2_000).contains(&first.access_expires_at));
    assert_eq!(
        app.verify(&first.access_token).await.expect("valid"),
        identity
    );
    // A refresh token is not an access token.
    assert_rejected(
        &app.verify(&first.refresh_token)
            .await
            .expect_err("refresh as access"),
        "wrong_token_type",
    );
    assert_rejected(
        &app.refresh(&first.access_token)
            .await
            .expect_err("access as refresh"),
        "wrong_token_type",
    );

    let second = app.refresh(&first.refresh_token).await.expect("rotate");
    let rotated = second.identity.clone().expect("identity");
    assert_eq!(rotated.session_id, identity.session_id, "same session");
    assert_ne!(rotated.token_id, identity.token_id);
    assert_ne!(second.refresh_token, first.refresh_token);
    assert_eq!(
        second.refresh_expires_at, first.refresh_expires_at,
        "a session does not grow"
    );
    app.verify(&second.access_token)
        .await
        .expect("new access token");

    // Someone replays the spent refresh token: the whole family goes.
    assert_rejected(
        &app.refresh(&first.refresh_token).await.expect_err("reuse"),
        "revoked",
    );
    let (kind, body) = announcement(&mut control).await;
    assert_eq!(kind, auth_service::REVOKED_KIND);
    assert_eq!(body["session_id"], identity.session_id.as_str());
    for token in [&first.access_token, &second.access_token] {
        assert_rejected(&app.verify(token).await.expect_err("revoked"), "revoked");
    }
    assert_rejected(
        &app.refresh(&second.refresh_token)
            .await
            .expect_err("family revoked"),
        "revoked",
    );
}

#[tokio::test]
async fn issuing_checks_its_input() {
    let app = spawn_app(config()).await;
    for request in [
        pair_request(""),
        pair_request("assistant"),
        pair_request("system"),
        pair_request("bot:x"),
        pair_request(&"u".repeat(129)),
        IssueTokensRequest {
            roles: vec![String::new()],
            ..pair_request("u_1")
        },
        IssueTokensRequest {
            name: "n".repeat(65),
            ..pair_request("u_1")
        },
    ] {
        let status = app
            .client
            .clone()
            .issue_tokens(request.clone())
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{request:?}");
    }
}

#[tokio::test]
async fn revocation_by_token_session_or_user_is_kept_and_announced() {
    let app = spawn_app(config()).await;
    let mut control = app.control().await;
    let a = app.issue("u_1").await;
    let b = app.issue("u_1").await;
    let c = app.issue("u_2").await;
    let id = |pair: &TokenPair| pair.identity.clone().expect("identity");

    app.revoke(RevokeRequest {
        token_id: id(&a).token_id,
        ..Default::default()
    })
    .await
    .expect("revoke token");
    assert_rejected(
        &app.verify(&a.access_token).await.expect_err("revoked"),
        "revoked",
    );
    app.verify(&b.access_token)
        .await
        .expect("other token of the user");
    let (_, body) = announcement(&mut control).await;
    assert_eq!(body["token_id"], id(&a).token_id.as_str());

    app.revoke(RevokeRequest {
        session_id: id(&b).session_id,
        ..Default::default()
    })
    .await
    .expect("revoke session");
    assert_rejected(
        &app.verify(&b.access_token).await.expect_err("revoked"),
        "revoked",
    );
    assert_rejected(
        &app.refresh(&b.refresh_token).await.expect_err("revoked"),
        "revoked",
    );
    let (_, body) = announcement(&mut control).await;
    assert_eq!(body["session_id"], id(&b).session_id.as_str());

    app.revoke(RevokeRequest {
        user_id: "u_2".into(),
        ..Default::default()
    })
    .await
    .expect("revoke user");
    assert_rejected(
        &app.verify(&c.access_token).await.expect_err("revoked"),
        "revoked",
    );
    assert_rejected(
        &app.refresh(&c.refresh_token).await.expect_err("revoked"),
        "revoked",
    );
    let (_, body) = announcement(&mut control).await;
    assert_eq!(body["user_id"], "u_2");

    for request in [
        RevokeRequest::default(),
        RevokeRequest {
            token_id: "t".into(),
            user_id: "u".into(),
            ..Default::default()
        },
    ] {
        let status = app.revoke(request).await.expect_err("exactly one target");
        assert_eq!(status.code(), Code::InvalidArgument);
    }
}

#[tokio::test]
async fn failed_attempts_block_the_address_and_only_that_address() {
    let app = spawn_app(AuthConfig {
        failed_attempts_max: 3,
        ..config()
    })
    .await;
    let mut control = app.control().await;
    let good = sign(&claims("u_1"));
    let bad = sign_with(
        Algorithm::HS256,
        "another-secret-0123456789abcdefgh",
        &claims("u_1"),
    );
    let expired = sign(&with(claims("u_1"), "exp", json!(now() - 3600)));

    // Expired tokens are routine and do not count.
    for _ in 0..5 {
        app.verify_from(&expired, "192.0.2.10")
            .await
            .expect_err("expired");
    }
    app.verify_from(&good, "192.0.2.10")
        .await
        .expect("not blocked by expiries");

    for _ in 0..2 {
        app.verify_from(&bad, "192.0.2.10").await.expect_err("bad");
        app.verify_from(&bad, "192.0.2.20").await.expect_err("bad");
    }
    // Successes from another address reset nothing.
    app.verify_from(&good, "192.0.2.30").await.expect("good");
    app.verify_from(&good, "192.0.2.10")
        .await
        .expect("below the limit");
    app.verify_from(&bad, "192.0.2.10")
        .await
        .expect_err("third failure");

    let status = app
        .verify_from(&good, "192.0.2.10")
        .await
        .expect_err("blocked");
    assert_eq!(status.code(), Code::ResourceExhausted);
    assert_eq!(reason_of(&status), "blocked");
    let retry = common::ErrorCode::retry_after(&status).expect("retry hint");
    assert!(
        retry > Duration::from_secs(890) && retry <= Duration::from_secs(900),
        "{retry:?}"
    );
    let (kind, body) = announcement(&mut control).await;
    assert_eq!(kind, auth_service::BLOCKED_KIND);
    assert_eq!(body["ip"], "192.0.2.10");

    app.verify_from(&good, "192.0.2.20")
        .await
        .expect("two failures only");
    app.verify_from(&good, "192.0.2.30")
        .await
        .expect("another address");
}

#[tokio::test]
async fn dev_login_works_only_when_enabled() {
    let request = || DevLoginRequest {
        user: "alice".into(),
        client_ip: "192.0.2.1".into(),
    };
    let off = spawn_app(config()).await;
    let status = off
        .client
        .clone()
        .dev_login(request())
        .await
        .expect_err("off");
    assert_eq!(status.code(), Code::FailedPrecondition);

    let on = spawn_app(AuthConfig {
        dev_login: true,
        ..config()
    })
    .await;
    let response = on
        .client
        .clone()
        .dev_login(request())
        .await
        .expect("on")
        .into_inner();
    let identity = response.identity.expect("identity");
    assert_eq!(
        (identity.user_id.as_str(), identity.name.as_str()),
        ("alice", "alice")
    );
    assert!(!identity.anonymous);
    assert_eq!(
        on.verify(&response.access_token).await.expect("verifies"),
        identity
    );
    for user in ["", "assistant", "system", "bot:x", &"a".repeat(65)] {
        let status = on
            .client
            .clone()
            .dev_login(DevLoginRequest {
                user: user.into(),
                client_ip: String::new(),
            })
            .await
            .expect_err("refused");
        assert_eq!(status.code(), Code::InvalidArgument, "{user:?}");
    }
}

/// Captures everything logged on this thread, all targets, through the
/// production filter at TRACE.
fn capture_logs() -> common::testing::logs::LogCapture {
    common::testing::logs::install();
    common::testing::logs::start()
}

#[tokio::test]
async fn no_token_appears_in_any_log_line() {
    let captured = capture_logs();
    let app = spawn_app(AuthConfig {
        failed_attempts_max: 4,
        dev_login: true,
        ..config()
    })
    .await;
    let ip = "198.51.100.7";
    let mut tokens = Vec::new();
    let pair = app.issue("u_log").await;
    tokens.push(pair.access_token.clone());
    tokens.push(pair.refresh_token.clone());
    app.verify_from(&pair.access_token, ip)
        .await
        .expect("valid");
    let next = app.refresh(&pair.refresh_token).await.expect("rotate");
    tokens.push(next.access_token.clone());
    tokens.push(next.refresh_token.clone());
    app.refresh(&pair.refresh_token).await.expect_err("reuse");
    app.verify_from(&next.access_token, ip)
        .await
        .expect_err("revoked");
    let failing = [
        sign(&with(claims("u_log"), "exp", json!(now() - 3600))),
        sign_with(
            Algorithm::HS256,
            "another-secret-0123456789abcdefgh",
            &claims("u_log"),
        ),
        sign(&with(claims("u_log"), "iss", json!("evil"))),
        format!("{}.e30.", URL_SAFE_NO_PAD_NONE),
        "garbage-token-value-that-is-not-a-jwt".to_string(),
    ];
    for token in &failing {
        app.verify_from(token, ip).await.expect_err("refused");
        tokens.push(token.clone());
    }
    app.verify_from(&sign(&claims("u_log")), ip)
        .await
        .expect_err("blocked by now");
    let (_, anonymous) = app.sign_in("guest").await.expect("anonymous");
    tokens.push(anonymous);
    let dev = app
        .client
        .clone()
        .dev_login(DevLoginRequest {
            user: "dev".into(),
            client_ip: ip.into(),
        })
        .await
        .expect("dev")
        .into_inner();
    tokens.push(dev.access_token);

    let log = captured.text();
    assert!(
        log.contains("security event"),
        "the flow was logged:\n{log}"
    );
    assert!(log.contains("ip_blocked"), "the block was logged");
    for token in &tokens {
        assert!(!log.contains(token.as_str()), "a token appears in the log");
        // Nor any of its signature.
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
            assert!(
                !log.contains(signature),
                "a token signature appears in the log"
            );
        }
    }
    assert!(
        !log.contains(SECRET),
        "the signing secret appears in the log"
    );
}

/// `{"alg":"none"}`.
const URL_SAFE_NO_PAD_NONE: &str = "eyJhbGciOiJub25lIn0";

/// Two auth replicas on one Redis: what one revokes or blocks, the other
/// refuses too. Runs when `PARLEY_TEST_REDIS_URL` is set (and then fails
/// loudly if Redis cannot be reached).
#[tokio::test]
async fn replicas_on_redis_share_revocations_families_and_blocks() {
    let Some(redis_url) = common::testing::test_redis_url() else {
        eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping the Redis replica test");
        return;
    };
    let shared = AuthConfig {
        backend: common::config::Backend::Redis,
        redis_url,
        redis_prefix: format!("{}:", common::ids::new_id("auth-e2e")),
        failed_attempts_max: 2,
        ..config()
    };
    let one = spawn_app(shared.clone()).await;
    let two = spawn_app(shared).await;

    let pair = one.issue("u_replica").await;
    two.verify(&pair.access_token).await.expect("valid on both");
    let next = two
        .refresh(&pair.refresh_token)
        .await
        .expect("rotate on the other");
    assert_rejected(
        &one.refresh(&pair.refresh_token)
            .await
            .expect_err("reuse seen by the first"),
        "revoked",
    );
    assert_rejected(
        &two.verify(&next.access_token)
            .await
            .expect_err("family revoked"),
        "revoked",
    );

    let other = one.issue("u_replica2").await;
    one.revoke(RevokeRequest {
        token_id: other.identity.clone().expect("identity").token_id,
        ..Default::default()
    })
    .await
    .expect("revoke");
    assert_rejected(
        &two.verify(&other.access_token).await.expect_err("revoked"),
        "revoked",
    );

    for _ in 0..2 {
        one.verify_from("garbage", "203.0.113.9")
            .await
            .expect_err("bad");
    }
    let status = two
        .verify_from(&sign(&claims("u_1")), "203.0.113.9")
        .await
        .expect_err("blocked on the other replica");
    assert_eq!(reason_of(&status), "blocked");
}

#[tokio::test]
async fn check_revoked_names_the_revoked_tokens_and_refuses_huge_batches() {
    let app = spawn_app(config()).await;
    app.client
        .clone()
        .revoke(proto::auth::v1::RevokeRequest {
            token_id: "t_gone".into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    let token = |id: &str| proto::auth::v1::TokenRef {
        token_id: id.into(),
        session_id: format!("s_{id}"),
        user_id: "u".into(),
        issued_at: now() as i64,
    };
    let reply = app
        .client
        .clone()
        .check_revoked(proto::auth::v1::CheckRevokedRequest {
            tokens: vec![token("t_ok"), token("t_gone"), token("t_fine")],
        })
        .await
        .expect("check")
        .into_inner();
    assert_eq!(reply.revoked, [1]);

    let status = app
        .client
        .clone()
        .check_revoked(proto::auth::v1::CheckRevokedRequest {
            tokens: vec![token("t"); 10_001],
        })
        .await
        .expect_err("too many");
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
    let app = spawn_app(AuthConfig {
        backend: common::config::Backend::Redis,
        redis_url,
        redis_prefix: format!("{}:", common::ids::new_id("health")),
        ..config()
    })
    .await;
    health_follows(
        &app.url,
        proto::auth::v1::auth_service_server::SERVICE_NAME,
        &proxy,
    )
    .await;
}
