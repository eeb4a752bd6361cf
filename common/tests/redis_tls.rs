//! TLS to Redis: a redis-server of the test's own (TLS port only,
//! certificates from `common::testing::tls`, the `default` user off and an
//! ACL user with a password) accepts Parley's Redis connections — made by
//! `common::redis_client::open`, which the bus, the auth and presence stores
//! and the edge's rate limits all use — verified against the configured CA
//! and signed in as the ACL user: commands run and the bus publishes and
//! subscribes. The same connection given another CA is refused. The
//! configuration path too: a `rediss://` URL read from a file, its
//! `bus.redis_ca_file`, and `services.require_backend_tls`.
//!
//! Runs when `PARLEY_TEST_REDIS_URL` is set, as the other Redis tests do
//! (it then needs `redis-server` built with TLS, and openssl, and fails
//! loudly without them); skipped with a note otherwise.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::bus::{Bus, BusEvent, BusKeys, RedisBus, envelope, room_channel};
use common::config::Config;
use common::redis_client;
use common::testing::tls::{TestCerts, free_port};
use common::{Secret, ids};

/// The ACL user's password.
const PASSWORD: &str = "tls-test-password-0123456789";
/// 32 bytes: a service credential and a bus signing key.
const KEY: &str = "0123456789abcdef0123456789abcdef";
/// Upper bound on waiting for the server or one bus event.
const WAIT: Duration = Duration::from_secs(10);

/// A redis-server that speaks only TLS, with a certificate for `localhost`
/// signed by the test CA, and only the ACL user `parley` may sign in.
struct TlsRedis {
    server: Child,
    port: u16,
    /// The certificates; the server's config file lives among them.
    certs: TestCerts,
}

impl TlsRedis {
    fn start() -> Self {
        let certs = TestCerts::new("parley-redis-tls");
        let port = free_port();
        // A config file rather than arguments, so the password is not on a
        // command line.
        let config = certs.dir().join("redis.conf");
        std::fs::write(
            &config,
            format!(
                "bind 127.0.0.1\nport 0\ntls-port {port}\n\
                 tls-cert-file {cert}\ntls-key-file {key}\ntls-ca-cert-file {ca}\n\
                 tls-auth-clients no\nsave \"\"\nappendonly no\ndir {dir}\n\
                 user default off\nuser parley on >{PASSWORD} ~* &* +@all\n",
                cert = certs.server_cert().display(),
                key = certs.server_key().display(),
                ca = certs.ca().display(),
                dir = certs.dir().display(),
            ),
        )
        .expect("write redis.conf");
        let server = Command::new("redis-server")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts (is it installed?)");
        Self {
            server,
            port,
            certs,
        }
    }

    /// The ACL user's URL, with `password`.
    fn url_with(&self, password: &str) -> String {
        format!("rediss://parley:{password}@localhost:{}", self.port)
    }

    fn url(&self) -> String {
        self.url_with(PASSWORD)
    }

    /// Waits until the server answers a verified, signed-in connection.
    async fn ready(&self) {
        let start = tokio::time::Instant::now();
        loop {
            match whoami(&self.url(), &self.certs.ca()).await {
                Ok(_) => return,
                Err(e) if start.elapsed() > WAIT => {
                    panic!("the TLS redis-server did not accept Parley's connection: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }
}

impl Drop for TlsRedis {
    /// Stops the server; then `certs` removes the directory.
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

/// Connects as Parley does, verifying against `ca`, and asks who it is.
async fn whoami(url: &str, ca: &Path) -> redis::RedisResult<String> {
    let client = redis_client::open(url, Some(ca))?;
    let config = redis::AsyncConnectionConfig::new().set_connection_timeout(Duration::from_secs(2));
    let mut connection = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    redis::cmd("ACL")
        .arg("WHOAMI")
        .query_async(&mut connection)
        .await
}

fn enabled() -> bool {
    if common::testing::test_redis_url().is_none() {
        eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping the Redis TLS test");
        return false;
    }
    true
}

/// Publishes one envelope on `bus` and sees it come back through a
/// subscriber of the same bus.
async fn round_trip(bus: &dyn Bus) {
    let (subscriber, mut events) = bus.subscriber().await.expect("subscriber");
    let room = ids::new_id("room");
    subscriber
        .subscribe(&room_channel(&room))
        .await
        .expect("subscribe");
    bus.publish(
        &room_channel(&room),
        &envelope(&room, 1, "message.new", "{}".into()),
    )
    .await
    .expect("publish");
    match tokio::time::timeout(WAIT, events.recv()).await {
        Ok(Some(BusEvent::Message { envelope, .. })) => assert_eq!(envelope.room_id, room),
        other => panic!("no message through the TLS bus: {other:?}"),
    }
}

#[tokio::test]
async fn parley_connects_to_redis_over_verified_tls_with_acl_credentials() {
    if !enabled() {
        return;
    }
    let redis = TlsRedis::start();
    redis.ready().await;
    let ca = redis.certs.ca();

    // A command, signed in as the ACL user over a verified connection.
    let user = whoami(&redis.url(), &ca)
        .await
        .expect("verified connection");
    assert_eq!(user, "parley");

    // The bus: publish and subscribe (its subscribers use RESP3 and their
    // own connections, which keep the CA).
    let keys = BusKeys::new(Secret::new(KEY), Secret::default());
    let bus = RedisBus::connect(&redis.url(), Some(&ca), &ids::new_id("tls"), keys)
        .await
        .expect("the bus connects over TLS");
    round_trip(&bus).await;

    // The ACL is enforced: a wrong password is refused.
    let e = whoami(&redis.url_with("wrong-password"), &ca)
        .await
        .expect_err("wrong password");
    assert_eq!(e.kind(), redis::ErrorKind::AuthenticationFailed, "{e}");
}

#[tokio::test]
async fn a_server_whose_certificate_does_not_verify_is_refused() {
    if !enabled() {
        return;
    }
    let redis = TlsRedis::start();
    redis.ready().await;
    let other_ca = redis.certs.other_ca();
    let e = whoami(&redis.url(), &other_ca)
        .await
        .expect_err("a certificate from another CA is refused");
    let message = e.to_string().to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("issuer"),
        "{e}"
    );
    let keys = BusKeys::new(Secret::new(KEY), Secret::default());
    RedisBus::connect(&redis.url(), Some(&other_ca), "tls", keys)
        .await
        .err()
        .expect("the bus refuses it too");
    // Without a CA file the system's roots are used, which do not hold the
    // test CA either.
    let client = redis_client::open(&redis.url(), None).expect("client");
    client
        .get_multiplexed_async_connection()
        .await
        .expect_err("the system's roots do not verify it");
}

#[tokio::test]
async fn the_configuration_reaches_redis_over_tls_and_requires_it() {
    if !enabled() {
        return;
    }
    let redis = TlsRedis::start();
    redis.ready().await;
    // As on Kubernetes: the URL (with the password) comes from a file.
    let url_file = redis.certs.dir().join("redis-url");
    std::fs::write(&url_file, format!("{}\n", redis.url())).expect("write");
    let url_file = url_file.display().to_string();
    let ca = redis.certs.ca().display().to_string();
    let env = |url_key: &str, url: &str, ca: &str| {
        vec![
            (
                "PARLEY_SERVICES_REQUIRE_BACKEND_TLS".to_string(),
                "true".to_string(),
            ),
            ("PARLEY_SERVICES_CREDENTIAL".into(), KEY.into()),
            ("PARLEY_BUS_BACKEND".into(), "redis".into()),
            ("PARLEY_BUS_SIGNING_KEY".into(), KEY.into()),
            ("PARLEY_BUS_CHANNEL_PREFIX".into(), ids::new_id("tls")),
            (url_key.to_string(), url.to_string()),
            ("PARLEY_BUS_REDIS_CA_FILE".into(), ca.to_string()),
        ]
    };

    let config = Config::load(None, env("PARLEY_BUS_REDIS_URL_FILE", &url_file, &ca))
        .expect("valid configuration");
    config
        .check_components(&["edge"], true)
        .expect("rediss:// satisfies services.require_backend_tls");
    let bus = common::bus::connect(&config.bus, &common::metrics::Metrics::new(&["edge"]))
        .await
        .expect("the configured bus connects");
    round_trip(bus.as_ref()).await;

    let other_ca = redis.certs.other_ca().display().to_string();
    let config = Config::load(None, env("PARLEY_BUS_REDIS_URL_FILE", &url_file, &other_ca))
        .expect("valid configuration");
    common::bus::connect(&config.bus, &common::metrics::Metrics::new(&["edge"]))
        .await
        .err()
        .expect("another CA is refused");

    let plain = format!("redis://parley:{PASSWORD}@localhost:{}", redis.port);
    let config =
        Config::load(None, env("PARLEY_BUS_REDIS_URL", &plain, &ca)).expect("valid otherwise");
    let e = config
        .check_components(&["edge"], true)
        .expect_err("plain text refused");
    assert!(e.to_string().contains("bus.redis_url"), "{e}");
    assert!(!e.to_string().contains(PASSWORD), "password leaked: {e}");

    let e = Config::load(
        None,
        env(
            "PARLEY_BUS_REDIS_URL_FILE",
            &url_file,
            "/nonexistent/ca.crt",
        ),
    )
    .expect_err("unreadable CA file");
    assert!(e.to_string().contains("bus.redis_ca_file"), "{e}");
}
