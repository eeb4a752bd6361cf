//! Opening Redis: every Redis client Parley makes (the bus, the auth and
//! presence stores, the edge's shared rate limits) comes from [`open`], so
//! TLS is verified the same way everywhere.
//!
//! A `rediss://` URL is served over TLS with rustls; the server's
//! certificate must chain to the CA file configured beside the URL (a
//! managed Redis's private CA), or to the system's roots when none is set.
//! ACL credentials come in the URL (`rediss://user:password@host:port`).

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{Client, RedisResult, TlsCertificates};

/// Longest wait for a TCP connection and handshake to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the reply to one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// A client for `url` (nothing is connected yet). For a `rediss://` URL
/// with `ca_file`, the server must present a certificate signed by one of
/// the PEM certificates in that file; without it, by the system's roots.
/// `ca_file` has no effect on a plain `redis://` URL.
pub fn open(url: &str, ca_file: Option<&Path>) -> RedisResult<Client> {
    match ca_file {
        Some(path) if is_tls(url) => Client::build_with_tls(
            url,
            TlsCertificates {
                client_tls: None,
                root_cert: Some(read_ca(path)?),
            },
        ),
        _ => Client::open(url),
    }
}

/// A store's shared connection to `url` (see [`open`] for `ca_file`): one
/// auto-reconnecting, multiplexed connection, checked with `PING`.
///
/// One connection attempt per reconnect: while Redis is down a call fails
/// within the connect timeout instead of waiting out the library's backoff,
/// and the next call tries again.
pub async fn connect(url: &str, ca_file: Option<&Path>) -> RedisResult<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(0);
    let mut connection = open(url, ca_file)?
        .get_connection_manager_with_config(config)
        .await?;
    redis::cmd("PING").exec_async(&mut connection).await?;
    Ok(connection)
}

/// Whether `url` asks for TLS.
pub fn is_tls(url: &str) -> bool {
    url.starts_with("rediss://")
}

/// The CA file key of a config section as [`open`] takes it: empty means
/// none (the system's roots).
pub fn ca_path(configured: &str) -> Option<&Path> {
    (!configured.is_empty()).then(|| Path::new(configured))
}

/// Checks that `ca_file` can be read and holds certificates a TLS client
/// can trust, as [`open`] will load them (it builds a client, which parses
/// the PEM into a root store, and connects nowhere).
pub fn check_ca(ca_file: &Path) -> RedisResult<()> {
    open("rediss://localhost", Some(ca_file)).map(drop)
}

/// The PEM file's bytes; the error names the file (a path, never a secret).
fn read_ca(path: &Path) -> RedisResult<Vec<u8>> {
    let pem = std::fs::read(path).map_err(|e| {
        std::io::Error::new(
            e.kind(),
            format!("cannot read the CA file {}: {e}", path.display()),
        )
    })?;
    if !pem
        .windows(b"-----BEGIN CERTIFICATE-----".len())
        .any(|w| w == b"-----BEGIN CERTIFICATE-----")
    {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "the CA file {} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        )
        .into());
    }
    Ok(pem)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_file(name: &str, contents: &str) -> std::path::PathBuf {
        let dir = std::env::temp_dir().join(crate::ids::new_id("parley-redis-ca"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join(name);
        std::fs::write(&path, contents).expect("write");
        path
    }

    #[test]
    fn a_missing_or_empty_ca_file_is_refused_naming_the_file() {
        let missing = Path::new("/nonexistent/parley/ca.crt");
        let e = check_ca(missing).expect_err("missing");
        assert!(e.to_string().contains("/nonexistent/parley/ca.crt"), "{e}");
        let empty = temp_file("empty.crt", "");
        let e = check_ca(&empty).expect_err("no certificate");
        assert!(e.to_string().contains("no PEM certificate"), "{e}");
        let garbage = temp_file(
            "garbage.crt",
            "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydGlmaWNhdGU=\n-----END CERTIFICATE-----\n",
        );
        check_ca(&garbage).expect_err("not a certificate");
        for path in [empty, garbage] {
            let _ = std::fs::remove_dir_all(path.parent().expect("dir"));
        }
    }

    #[test]
    fn the_ca_file_only_applies_to_tls_urls() {
        open(
            "redis://127.0.0.1:6379",
            Some(Path::new("/nonexistent/ca.crt")),
        )
        .expect("plain text ignores the CA");
        assert_eq!(ca_path(""), None);
        assert_eq!(ca_path("/ca.crt"), Some(Path::new("/ca.crt")));
        assert!(is_tls("rediss://h:6380") && !is_tls("redis://h:6379"));
    }
}
