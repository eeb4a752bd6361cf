//! The auth service over real gRPC: token verification edge cases,
//! anonymous sign-in, and the service credential.

use std::time::Duration;

use auth_service::{AuthApp, REASON_METADATA};
use common::Secret;
use common::config::AuthConfig;
use common::grpc::{ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::auth::v1::{Identity, SignInAnonymousRequest, VerifyTokenRequest};
use serde_json::{Value, json};
use tonic::Code;

const SECRET: &str = "test-signing-secret-0123456789abcdef";

/// A running auth service and a client holding the service credential.
struct TestApp {
    url: String,
    client: AuthServiceClient<ServiceChannel>,
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
    let app = AuthApp::new(&config, &credential).expect("auth app");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    tokio::spawn(app.serve(listener, shutdown.signal()));
    let client = AuthServiceClient::new(channel(&url, &settings(&credential)).expect("channel"));
    TestApp {
        url,
        client,
        _shutdown: shutdown,
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
    let message = if reason == "expired" {
        "token expired"
    } else {
        "invalid token"
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
        "roles": ["member", "admin"], "sid": "sess_1", "jti": "jti_1",
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
    app.rejected(&format!("{header}.{payload}."), "invalid")
        .await;
    app.rejected(&format!("{header}.{payload}"), "invalid")
        .await;
}

#[tokio::test]
async fn tokens_signed_with_other_algorithms_are_refused() {
    let app = spawn_app(config()).await;
    for alg in [Algorithm::HS384, Algorithm::HS512] {
        app.rejected(&sign_with(alg, SECRET, &claims("u_1")), "invalid")
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
    app.rejected(&forged, "invalid").await;
    app.rejected("not.a.token", "invalid").await;
    app.rejected("", "invalid").await;
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
    app.rejected(&big, "invalid").await;
}

#[tokio::test]
async fn a_token_without_exp_is_refused() {
    let app = spawn_app(config()).await;
    app.rejected(&sign(&without(claims("u_1"), "exp")), "invalid")
        .await;
}

#[tokio::test]
async fn a_token_not_yet_valid_is_refused() {
    let app = spawn_app(config()).await;
    app.rejected(
        &sign(&with(claims("u_1"), "nbf", json!(now() + 3600))),
        "invalid",
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
        "invalid",
    )
    .await;
    app.rejected(&sign(&without(claims("u_1"), "iss")), "invalid")
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
    app.rejected(&sign(&claims("u_1")), "invalid").await;
    app.rejected(
        &sign(&with(claims("u_1"), "aud", json!("elsewhere"))),
        "invalid",
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
    app.rejected(&sign(&claims("assistant")), "invalid").await;
    app.rejected(&sign(&without(claims("u_1"), "sub")), "invalid")
        .await;
    app.rejected(&sign(&claims("")), "invalid").await;
    app.rejected(&sign(&claims(&"u".repeat(129))), "invalid")
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

#[test]
fn the_secrets_never_appear_in_debug_output() {
    let credential = Secret::new("service-credential-0123456789abcdef");
    let config = config();
    let app = AuthApp::new(&config, &credential).expect("auth app");
    for debug in [
        format!("{app:?}"),
        format!("{app:#?}"),
        format!("{config:?}"),
    ] {
        assert!(!debug.contains(SECRET), "signing secret leaked: {debug}");
        assert!(
            !debug.contains(credential.expose()),
            "credential leaked: {debug}"
        );
    }
}
