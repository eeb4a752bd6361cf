//! The `[auth]` section: verification keys (secrets, PEM public keys, JWKS
//! URLs), first-party token lifetimes, revocation storage and failed-attempt
//! blocking.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Backend, ConfigError};
use crate::secret::Secret;

/// Shortest accepted HMAC secret, in bytes.
pub const MIN_SECRET_BYTES: usize = 32;

/// Algorithm names a key may allow; `none` is never one of them.
pub const ALGORITHMS: &[&str] = &[
    "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256",
    "ES384", "EdDSA",
];

/// The auth service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AuthConfig {
    pub listen: SocketAddr,
    /// HTTP address of `/metrics` when the service runs as its own process
    /// (the one-process suite serves every metric on the edge's `/metrics`).
    pub metrics_listen: SocketAddr,
    /// HS256 secret of first-party tokens (issued and verified), at least 32
    /// bytes. Empty: a random secret is generated at start (one-process
    /// development only). Verifies tokens without a `kid`.
    pub hs256_secret: Secret,
    /// Further verification keys, looked up by the token's `kid`.
    pub keys: Vec<KeyConfig>,
    /// JSON Web Key Sets of external identity providers (Clerk, Auth0, …).
    pub jwks: Vec<JwksConfig>,
    /// An unknown `kid` refetches the JWKS at most once per this period.
    pub jwks_refetch_s: u64,
    /// A fetched JWKS is used for at most this long before it is fetched again.
    pub jwks_cache_s: u64,
    /// Deadline of one JWKS fetch.
    pub jwks_timeout_ms: u64,
    /// `iss` of issued tokens, and required on verified tokens when non-empty.
    pub issuer: String,
    /// `aud` required on verified tokens when non-empty.
    pub audience: String,
    /// Whether anonymous sign-in is allowed.
    pub anonymous: bool,
    /// Lifetime of anonymous tokens.
    pub anonymous_ttl_s: u64,
    /// Whether anyone may sign in as any user name (`auth{dev_user}`).
    /// Development only: on in the one-process `parley` binary's defaults.
    pub dev_login: bool,
    /// Lifetime of issued access tokens.
    pub access_ttl_s: u64,
    /// Lifetime of issued refresh tokens (each refresh issues a new one).
    pub refresh_ttl_s: u64,
    /// Clock skew tolerated on `exp` / `nbf`.
    pub leeway_s: u64,
    /// Presented access tokens whose `exp` is further away than this are
    /// refused: a leaked long-lived token stays dangerous for too long.
    pub max_token_lifetime_s: u64,
    /// Tokens larger than this are rejected before parsing.
    pub max_token_bytes: usize,
    /// Failed verifications per IP within `failed_window_s` before the IP is blocked.
    pub failed_attempts_max: u32,
    /// Sliding window of failed-attempt counting.
    pub failed_window_s: u64,
    /// How long a blocked IP stays blocked.
    pub block_s: u64,
    /// Where revocations, refresh families and failed attempts live:
    /// `memory` (one process) or `redis` (shared by every replica).
    pub backend: Backend,
    pub redis_url: String,
    /// PEM CA certificates a `rediss://` `redis_url` must chain to; empty:
    /// the system's roots.
    pub redis_ca_file: String,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9451)),
            hs256_secret: Secret::default(),
            keys: Vec::new(),
            jwks: Vec::new(),
            jwks_refetch_s: 60,
            jwks_cache_s: 3600,
            jwks_timeout_ms: 5_000,
            issuer: "parley".into(),
            audience: String::new(),
            anonymous: true,
            anonymous_ttl_s: 24 * 3600,
            dev_login: false,
            access_ttl_s: 900,
            refresh_ttl_s: 30 * 24 * 3600,
            leeway_s: 30,
            max_token_lifetime_s: 7 * 24 * 3600,
            max_token_bytes: 8 * 1024,
            failed_attempts_max: 10,
            failed_window_s: 300,
            block_s: 900,
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: String::new(),
            redis_prefix: "auth:".into(),
        }
    }
}

/// One verification key (`[[auth.keys]]`): a secret or a PEM public key.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KeyConfig {
    /// The `kid` tokens name this key by (a map key, never a path).
    pub kid: String,
    /// Algorithms this key accepts, e.g. `["RS256"]`; must fit the key type.
    pub algorithms: Vec<String>,
    /// HMAC secret (HS256/HS384/HS512), at least 32 bytes.
    pub secret: Secret,
    /// PEM public key: RSA (RS*/PS*), EC P-256/P-384 (ES256/ES384) or Ed25519 (EdDSA).
    pub public_key: String,
    /// `iss` required on tokens of this key; empty: `auth.issuer` applies.
    pub issuer: String,
    /// `aud` required on tokens of this key; empty: `auth.audience` applies.
    pub audience: String,
}

/// A JWKS URL of an external identity provider (`[[auth.jwks]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JwksConfig {
    pub url: String,
    /// Algorithms accepted from this provider's keys, e.g. `["RS256"]`.
    pub algorithms: Vec<String>,
    /// `iss` required on this provider's tokens; empty: `auth.issuer` applies.
    pub issuer: String,
    /// `aud` required on this provider's tokens; empty: `auth.audience` applies.
    pub audience: String,
}

impl AuthConfig {
    /// Checks what types alone cannot; PEM keys are parsed by auth-service.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::metrics_listen("auth", self.listen, self.metrics_listen)?;
        if !self.hs256_secret.is_empty() && self.hs256_secret.expose().len() < MIN_SECRET_BYTES {
            return Err(ConfigError::new(
                "key `auth.hs256_secret`: must be at least 32 bytes",
            ));
        }
        if self.max_token_bytes < 256 {
            return Err(ConfigError(format!(
                "key `auth.max_token_bytes`: must be at least 256, got {}",
                self.max_token_bytes
            )));
        }
        let longest_issued = self.access_ttl_s.max(self.anonymous_ttl_s);
        if self.max_token_lifetime_s < longest_issued {
            return Err(ConfigError(format!(
                "key `auth.max_token_lifetime_s`: must be at least auth.access_ttl_s and \
                 auth.anonymous_ttl_s ({longest_issued}), got {}",
                self.max_token_lifetime_s
            )));
        }
        if self.leeway_s > 3600 {
            return Err(ConfigError::new(
                "key `auth.leeway_s`: must be at most 3600",
            ));
        }
        for (key, value) in [
            ("auth.access_ttl_s", self.access_ttl_s),
            ("auth.refresh_ttl_s", self.refresh_ttl_s),
            ("auth.anonymous_ttl_s", self.anonymous_ttl_s),
            (
                "auth.failed_attempts_max",
                u64::from(self.failed_attempts_max),
            ),
            ("auth.failed_window_s", self.failed_window_s),
            ("auth.block_s", self.block_s),
            ("auth.jwks_cache_s", self.jwks_cache_s),
            ("auth.jwks_timeout_ms", self.jwks_timeout_ms),
        ] {
            if value == 0 {
                return Err(ConfigError(format!("key `{key}`: must be at least 1")));
            }
        }
        if self.refresh_ttl_s < self.access_ttl_s {
            return Err(ConfigError::new(
                "key `auth.refresh_ttl_s`: must not be shorter than auth.access_ttl_s",
            ));
        }
        if self.redis_prefix.is_empty() {
            return Err(ConfigError::new(
                "key `auth.redis_prefix`: must not be empty",
            ));
        }
        super::redis_url("auth.redis_url", &self.redis_url)?;
        super::redis_ca_file("auth.redis_ca_file", &self.redis_ca_file)?;
        let mut kids = std::collections::HashSet::new();
        for (i, key) in self.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            if key.kid.is_empty() || key.kid.len() > 256 {
                return Err(ConfigError(format!(
                    "key `{at}.kid`: must be 1 to 256 bytes"
                )));
            }
            if !kids.insert(key.kid.as_str()) {
                return Err(ConfigError(format!(
                    "key `{at}.kid`: `{}` is used by another key",
                    key.kid
                )));
            }
            let hmac = match (key.secret.is_empty(), key.public_key.trim().is_empty()) {
                (false, true) => true,
                (true, false) => false,
                _ => {
                    return Err(ConfigError(format!(
                        "key `{at}`: set exactly one of `secret` and `public_key`"
                    )));
                }
            };
            if hmac && key.secret.expose().len() < MIN_SECRET_BYTES {
                return Err(ConfigError(format!(
                    "key `{at}.secret`: must be at least 32 bytes"
                )));
            }
            check_algorithms(&format!("{at}.algorithms"), &key.algorithms, Some(hmac))?;
        }
        for (i, jwks) in self.jwks.iter().enumerate() {
            let at = format!("auth.jwks[{i}]");
            if !(jwks.url.starts_with("https://") || jwks.url.starts_with("http://")) {
                return Err(ConfigError(format!(
                    "key `{at}.url`: must be an http(s) URL"
                )));
            }
            check_algorithms(&format!("{at}.algorithms"), &jwks.algorithms, Some(false))?;
        }
        Ok(())
    }
}

/// A non-empty list of known algorithm names; HMAC ones only for secrets,
/// asymmetric ones only for public keys (no algorithm confusion).
fn check_algorithms(
    key: &str,
    algorithms: &[String],
    hmac: Option<bool>,
) -> Result<(), ConfigError> {
    if algorithms.is_empty() {
        return Err(ConfigError(format!(
            "key `{key}`: list the accepted algorithms, e.g. [\"RS256\"]"
        )));
    }
    for alg in algorithms {
        if !ALGORITHMS.contains(&alg.as_str()) {
            return Err(ConfigError(format!(
                "key `{key}`: `{alg}` is not one of {}",
                ALGORITHMS.join(", ")
            )));
        }
        if let Some(hmac) = hmac
            && alg.starts_with("HS") != hmac
        {
            return Err(ConfigError(format!(
                "key `{key}`: `{alg}` does not fit a {}",
                if hmac { "secret" } else { "public key" }
            )));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use crate::config::Config;

    #[test]
    fn auth_keys_are_checked_at_start_up() {
        let dir = std::env::temp_dir().join(format!("parley-config-{}", crate::ids::new_id("t")));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("parley.toml");
        let check = |toml: &str| {
            std::fs::write(&path, toml).expect("write");
            Config::load(Some(&path), Vec::<(String, String)>::new())
        };
        let ok = check(
            "[[auth.keys]]\nkid = \"k1\"\nalgorithms = [\"HS256\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\n\
             [[auth.jwks]]\nurl = \"https://idp.example/.well-known/jwks.json\"\nalgorithms = [\"RS256\"]\n",
        )
        .expect("valid keys");
        assert_eq!(ok.auth.keys[0].kid, "k1");
        assert_eq!(ok.auth.jwks[0].algorithms, ["RS256"]);
        let e =
            check("[[auth.keys]]\nkid = \"k1\"\nalgorithms = [\"HS256\"]\nsecret = \"short\"\n")
                .expect_err("short secret");
        assert!(e.to_string().contains("auth.keys[0].secret"), "{e}");
        assert!(!e.to_string().contains("short\""), "secret leaked: {e}");
        let e = check("[[auth.keys]]\nkid = \"k1\"\nalgorithms = [\"none\"]\nsecret = \"0123456789abcdef0123456789abcdef\"\n")
            .expect_err("none");
        assert!(e.to_string().contains("auth.keys[0].algorithms"), "{e}");
        let e = check("[[auth.keys]]\nkid = \"k1\"\nalgorithms = [\"HS256\"]\npublic_key = \"-----BEGIN PUBLIC KEY-----\"\n")
            .expect_err("HS256 with a public key");
        assert!(e.to_string().contains("auth.keys[0].algorithms"), "{e}");
        let e = check("[[auth.keys]]\nkid = \"k1\"\nalgorithms = []\nsecret = \"0123456789abcdef0123456789abcdef\"\n")
            .expect_err("no algorithms");
        assert!(e.to_string().contains("auth.keys[0].algorithms"), "{e}");
        let e = check("[[auth.jwks]]\nurl = \"file:///etc/passwd\"\nalgorithms = [\"RS256\"]\n")
            .expect_err("not http");
        assert!(e.to_string().contains("auth.jwks[0].url"), "{e}");
        let e = check("[auth]\nrefresh_ttl_s = 10\n").expect_err("refresh shorter than access");
        assert!(e.to_string().contains("auth.refresh_ttl_s"), "{e}");
        let _ = std::fs::remove_dir_all(dir);
    }
}
