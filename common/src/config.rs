//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `PARLEY_<SECTION>_<KEY>` environment variables. Secret keys may name a
//! file instead (`<key>_file`, see [`files`]).
//!
//! The environment is passed in as a list of pairs, so tests build configs
//! without touching the process environment. Every key has a default (see
//! docs/configuration.md); a bad value stops start-up with an error naming
//! the key.

use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize};

use self::files::Resolved;

mod ai;
mod attachments;
mod auth;
mod bus;
mod chat;
mod deployment;
mod edge;
mod files;
mod log;
mod presence;
mod services;
mod webhooks;

pub use self::ai::{AiConfig, AiFallback, AiProvider};
pub use self::attachments::{AttachmentsConfig, StoreKind};
pub use self::auth::{AuthConfig, JwksConfig, KeyConfig, MIN_SECRET_BYTES};
pub use self::bus::BusConfig;
pub use self::chat::{ChatConfig, InvitePolicy};
pub use self::edge::{EdgeConfig, InspectionMode};
pub use self::log::{LogConfig, LogFormat};
pub use self::presence::PresenceConfig;
pub use self::services::{BackendCaller, Presenter, ServicesConfig};
pub use self::webhooks::{MIN_WEBHOOK_SECRET_BYTES, OFFLINE_NOTIFICATIONS, WebhookConfig};

/// Sections of the config file, in `PARLEY_<SECTION>_<KEY>` order.
const SECTIONS: &[&str] = &[
    "edge",
    "auth",
    "chat",
    "ai",
    "presence",
    "bus",
    "services",
    "log",
    "attachments",
];

/// The whole suite's configuration; each component reads its own section.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Config {
    pub edge: EdgeConfig,
    pub auth: AuthConfig,
    pub chat: ChatConfig,
    pub ai: AiConfig,
    pub presence: PresenceConfig,
    pub bus: BusConfig,
    pub services: ServicesConfig,
    pub log: LogConfig,
    pub attachments: AttachmentsConfig,
}

/// Where state lives: this process or Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Memory,
    Redis,
}

/// A configuration that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("invalid configuration: {0}")]
pub struct ConfigError(pub(crate) String);

impl ConfigError {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

impl Config {
    /// The defaults of the one-process `parley` binary: the built-in ones
    /// plus development conveniences (`auth.dev_login`, `edge.web_app`).
    pub fn one_process_defaults() -> Self {
        let mut config = Self::default();
        config.auth.dev_login = true;
        config.edge.web_app = true;
        config
    }

    /// Defaults, then `file` (if any), then `PARLEY_*` pairs from `env`.
    pub fn load<I, K, V>(file: Option<&Path>, env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        Self::load_over(Config::default(), file, env)
    }

    /// Like [`Config::load`] with other defaults underneath.
    pub fn load_over<I, K, V>(
        defaults: Config,
        file: Option<&Path>,
        env: I,
    ) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut figment = Figment::from(Serialized::defaults(defaults));
        if let Some(path) = file {
            if !path.exists() {
                return Err(ConfigError(format!(
                    "config file {} does not exist",
                    path.display()
                )));
            }
            figment = figment.merge(Resolved::new(&Toml::file(path))?);
        }
        figment = figment.merge(Resolved::new(&EnvPairs::new(env)?)?);
        let config: Config = figment.extract().map_err(describe)?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot: each section checks its own keys,
    /// then the keys that relate two sections.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.edge.validate()?;
        self.chat.validate()?;
        self.presence.validate()?;
        if self.presence.lease_ttl_ms <= self.edge.presence_renew_ms {
            return Err(ConfigError(format!(
                "key `presence.lease_ttl_ms`: must exceed edge.presence_renew_ms ({})",
                self.edge.presence_renew_ms
            )));
        }
        self.auth.validate()?;
        if self.auth.dev_login && !self.edge.listen.ip().is_loopback() {
            return Err(ConfigError(format!(
                "key `auth.dev_login`: development login signs anyone in as anyone; it is only \
                 allowed while `edge.listen` is a loopback address (it is {}); set \
                 auth.dev_login = false",
                self.edge.listen
            )));
        }
        self.services.validate()?;
        self.bus.validate()?;
        self.ai.validate()?;
        self.attachments.validate()?;
        self.log.validate()
    }
}

/// A figment error as a [`ConfigError`] naming each key and its layer.
fn describe(error: figment::Error) -> ConfigError {
    let mut message = String::new();
    for err in error {
        if !message.is_empty() {
            message.push_str("; ");
        }
        let key = err.path.join(".");
        let source = err
            .metadata
            .as_ref()
            .map(|m| m.name.to_string())
            .unwrap_or_default();
        message.push_str(&format!("key `{key}` ({source}): {}", err.kind));
    }
    ConfigError(message)
}

/// `value` is at least `min`; the error names `key`.
pub(crate) fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(ConfigError(format!(
            "key `{key}`: must be at least {min}, got {value}"
        )));
    }
    Ok(())
}

/// `<section>.metrics_listen` is not the section's gRPC address (port 0,
/// "any free port", may appear in both).
pub(crate) fn metrics_listen(
    section: &str,
    listen: std::net::SocketAddr,
    metrics: std::net::SocketAddr,
) -> Result<(), ConfigError> {
    if metrics.port() != 0 && metrics == listen {
        return Err(ConfigError(format!(
            "key `{section}.metrics_listen`: must differ from {section}.listen ({listen})"
        )));
    }
    Ok(())
}

/// `url` is a Redis URL; the error names `key`.
pub(crate) fn redis_url(key: &str, url: &str) -> Result<(), ConfigError> {
    if url.starts_with("redis://") || url.starts_with("rediss://") {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "key `{key}`: must start with redis:// or rediss://"
        )))
    }
}

/// `key`, when set, names a readable file of PEM CA certificates that a
/// `rediss://` connection can trust; the error names `key`.
pub(crate) fn redis_ca_file(key: &str, path: &str) -> Result<(), ConfigError> {
    match crate::redis_client::ca_path(path) {
        Some(path) => crate::redis_client::check_ca(path)
            .map_err(|e| ConfigError(format!("key `{key}`: {e}"))),
        None => Ok(()),
    }
}

/// `PARLEY_<SECTION>_<KEY>=value` pairs as a figment provider. Variables whose
/// section is not a config section (e.g. `PARLEY_TEST_…`, `PARLEY_CONFIG`) are
/// not config keys and are ignored.
struct EnvPairs {
    dict: Dict,
}

impl EnvPairs {
    fn new<I, K, V>(env: I) -> Result<Self, ConfigError>
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<String>,
        V: Into<String>,
    {
        let mut dict = Dict::new();
        for (name, value) in env {
            let name: String = name.into();
            let Some(rest) = name.strip_prefix("PARLEY_") else {
                continue;
            };
            let rest = rest.to_ascii_lowercase();
            let Some((section, key)) = rest.split_once('_') else {
                continue;
            };
            if !SECTIONS.contains(&section) || key.is_empty() {
                continue;
            }
            let value: String = value.into();
            let parsed: Value = if is_string_key(key) {
                Value::from(value)
            } else {
                value.parse().unwrap_or_else(|_| Value::from(value.clone()))
            };
            let entry = dict
                .entry(section.to_string())
                .or_insert_with(|| Value::from(Dict::new()));
            if let Value::Dict(_, inner) = entry {
                inner.insert(key.to_string(), parsed);
            }
        }
        Ok(Self { dict })
    }
}

impl Provider for EnvPairs {
    fn metadata(&self) -> Metadata {
        Metadata::named("PARLEY_* environment variables")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        Ok(Profile::Default.collect(self.dict.clone()))
    }
}

/// Keys whose values are strings even when they look like numbers or booleans.
fn is_string_key(key: &str) -> bool {
    key.ends_with("_url")
        || key.ends_with("_file")
        || key.ends_with("secret")
        || key.ends_with("api_key")
        || key.ends_with("model")
        || key.ends_with("prompt")
        || matches!(
            key,
            "credential"
                | "edge_credential"
                | "ai_credential"
                | "presence_credential"
                | "chat_credential"
                | "admin_token"
                | "issuer"
                | "audience"
                | "channel_prefix"
                | "redis_prefix"
                | "signing_key"
                | "dir"
                | "store"
                | "allowed_types"
                | "s3_bucket"
                | "s3_endpoint"
                | "s3_region"
                | "s3_access_key_id"
                | "s3_secret_access_key"
                | "previous_signing_key"
                | "level"
                | "allowed_origins"
                | "trusted_proxies"
                | "models"
        )
}

/// Accepts a list or a comma-separated string (handy in environment variables).
pub(crate) fn string_or_list<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => s
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(String::from)
            .collect(),
        OneOrMany::Many(v) => v,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Loads the defaults under `env`.
    pub(super) fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
        Config::load(
            None,
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        )
    }

    #[test]
    fn defaults_are_valid() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.edge.listen.port(), 8080);
        assert_eq!(c.auth.listen.port(), 50051);
        assert_eq!(c.chat.listen.port(), 50052);
        assert_eq!(c.ai.listen.port(), 50053);
        assert_eq!(c.presence.listen.port(), 50054);
        assert_eq!(c.bus.backend, Backend::Memory);
        assert_eq!(c.presence.grace_ms, 5_000);
        assert_eq!(c.presence.call_ring_ms, 45_000);
        assert_eq!(c.edge.presence_subscribe_max, 500);
        assert_eq!(c.edge.room_presence_max_members, 100);
        assert_eq!(c.edge.typing_timeout_ms, 6_000);
        assert_eq!(c.edge.idle_timeout_ms, 1_800_000);
        assert_eq!(
            (
                c.edge.max_conns,
                c.edge.max_conns_per_ip,
                c.edge.max_conns_per_user
            ),
            (100_000, 100, 20)
        );
        assert_eq!(c.edge.rate_user_per_min, 60);
        assert_eq!(c.edge.rate_violations_close, 10);
        assert_eq!(c.edge.content_inspection, InspectionMode::Flag);
        assert!(c.edge.admin_token.is_empty() && !c.edge.maintenance);
        assert_eq!(c.edge.token_expiring_lead_ms, 60_000);
        assert!(!c.auth.dev_login, "dev login is off unless asked for");
        assert!(
            !c.edge.web_app,
            "the split edge serves no web app unless asked"
        );
        assert_eq!(c.auth.access_ttl_s, 900);
        assert_eq!(c.auth.refresh_ttl_s, 30 * 24 * 3600);
        assert_eq!(c.auth.failed_attempts_max, 10);
        assert_eq!(c.auth.failed_window_s, 300);
        assert_eq!(c.auth.block_s, 900);
        assert_eq!(c.auth.jwks_refetch_s, 60);
    }

    #[test]
    fn a_redis_bus_needs_a_signing_key() {
        let e = load(&[("PARLEY_BUS_BACKEND", "redis")]).expect_err("no key");
        assert!(e.to_string().contains("bus.signing_key"), "{e}");
        let e = load(&[
            ("PARLEY_BUS_BACKEND", "redis"),
            ("PARLEY_BUS_SIGNING_KEY", "short"),
        ])
        .expect_err("short key");
        assert!(e.to_string().contains("bus.signing_key"), "{e}");
        assert!(
            !e.to_string().contains("short"),
            "the key is not echoed: {e}"
        );
        let e = load(&[("PARLEY_BUS_PREVIOUS_SIGNING_KEY", "short")]).expect_err("short");
        assert!(e.to_string().contains("bus.previous_signing_key"), "{e}");
    }

    #[test]
    fn dev_login_is_refused_unless_the_edge_listens_on_loopback() {
        let e = Config::load_over(
            Config::one_process_defaults(),
            None,
            [("PARLEY_EDGE_LISTEN", "0.0.0.0:8080")],
        )
        .expect_err("dev login on a public address");
        assert!(e.to_string().contains("auth.dev_login"), "{e}");
        let c = Config::load_over(
            Config::one_process_defaults(),
            None,
            [
                ("PARLEY_EDGE_LISTEN", "0.0.0.0:8080"),
                ("PARLEY_AUTH_DEV_LOGIN", "false"),
            ],
        )
        .expect("without dev login");
        assert!(!c.auth.dev_login);
    }

    #[test]
    fn the_one_process_defaults_turn_dev_login_on_unless_configured_off() {
        let c = Config::load_over(
            Config::one_process_defaults(),
            None,
            Vec::<(String, String)>::new(),
        )
        .expect("valid");
        assert!(c.auth.dev_login);
        assert!(c.edge.web_app);
        let c = Config::load_over(
            Config::one_process_defaults(),
            None,
            [("PARLEY_AUTH_DEV_LOGIN", "false")],
        )
        .expect("valid");
        assert!(!c.auth.dev_login);
    }

    #[test]
    fn env_overrides_defaults() {
        let c = load(&[
            ("PARLEY_EDGE_LISTEN", "0.0.0.0:9000"),
            ("PARLEY_EDGE_AUTH_TIMEOUT_MS", "500"),
            (
                "PARLEY_EDGE_ALLOWED_ORIGINS",
                "https://a.example, https://b.example",
            ),
            ("PARLEY_BUS_BACKEND", "redis"),
            ("PARLEY_BUS_SIGNING_KEY", &"k".repeat(32)),
            ("PARLEY_TEST_DATABASE_URL", "ignored"),
        ])
        .expect("valid");
        assert_eq!(c.edge.listen.port(), 9000);
        assert_eq!(c.edge.auth_timeout_ms, 500);
        assert_eq!(
            c.edge.allowed_origins,
            ["https://a.example", "https://b.example"]
        );
        assert_eq!(c.bus.backend, Backend::Redis);
    }

    #[test]
    fn invalid_values_name_the_key() {
        let e = load(&[("PARLEY_EDGE_LISTEN", "nope")]).expect_err("bad address");
        assert!(e.to_string().contains("edge.listen"), "{e}");
        let e = load(&[("PARLEY_BUS_BACKEND", "kafka")]).expect_err("bad enum");
        assert!(e.to_string().contains("bus.backend"), "{e}");
        let e = load(&[("PARLEY_AUTH_HS256_SECRET", "short")]).expect_err("short secret");
        assert!(e.to_string().contains("auth.hs256_secret"), "{e}");
        assert!(!e.to_string().contains("short"), "secret value leaked: {e}");
        let e = load(&[("PARLEY_EDGE_NO_SUCH_KEY", "1")]).expect_err("unknown key");
        assert!(e.to_string().contains("no_such_key"), "{e}");
    }

    #[test]
    fn an_unreadable_redis_ca_file_stops_loading_naming_its_key() {
        for key in [
            "bus.redis_ca_file",
            "auth.redis_ca_file",
            "presence.redis_ca_file",
            "edge.rate_limit_redis_ca_file",
        ] {
            let var = format!("PARLEY_{}", key.replace('.', "_").to_ascii_uppercase());
            let e = load(&[(var.as_str(), "/nonexistent/parley/ca.crt")]).expect_err(key);
            assert!(e.to_string().contains(&format!("key `{key}`")), "{e}");
            assert!(e.to_string().contains("/nonexistent/parley/ca.crt"), "{e}");
        }
        let c = load(&[]).expect("defaults");
        assert!(c.bus.redis_ca_file.is_empty() && c.edge.rate_limit_redis_ca_file.is_empty());
    }

    #[test]
    fn metrics_listeners_have_defaults_and_must_not_take_the_grpc_address() {
        let c = load(&[]).expect("defaults");
        assert_eq!(c.chat.metrics_listen.port(), 9452);
        assert_eq!(c.presence.metrics_listen.port(), 9454);
        let c = load(&[("PARLEY_AI_METRICS_LISTEN", "0.0.0.0:9999")]).expect("valid");
        assert_eq!(c.ai.metrics_listen.port(), 9999);
        let e = load(&[("PARLEY_AUTH_METRICS_LISTEN", "127.0.0.1:50051")])
            .expect_err("same as auth.listen");
        assert!(e.to_string().contains("auth.metrics_listen"), "{e}");
        let e = load(&[("PARLEY_CHAT_METRICS_LISTEN", "nope")]).expect_err("bad address");
        assert!(e.to_string().contains("chat.metrics_listen"), "{e}");
    }

    #[test]
    fn file_layer_sits_between_defaults_and_env() {
        let dir = std::env::temp_dir().join(format!("parley-config-{}", crate::ids::new_id("t")));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("parley.toml");
        std::fs::write(
            &path,
            "[edge]\nheartbeat_ms = 1000\nauth_timeout_ms = 700\n",
        )
        .expect("write");
        let c = Config::load(Some(&path), [("PARLEY_EDGE_AUTH_TIMEOUT_MS", "900")]).expect("valid");
        assert_eq!(c.edge.heartbeat_ms, 1000);
        assert_eq!(c.edge.auth_timeout_ms, 900);
        let _ = std::fs::remove_dir_all(dir);
    }

    #[test]
    fn attachment_and_retention_keys_are_checked_naming_the_key() {
        let c = load(&[
            ("PARLEY_ATTACHMENTS_STORE", "s3"),
            ("PARLEY_ATTACHMENTS_S3_BUCKET", "files"),
            ("PARLEY_ATTACHMENTS_S3_ENDPOINT", "http://127.0.0.1:5000"),
            (
                "PARLEY_ATTACHMENTS_ALLOWED_TYPES",
                "image/png,application/pdf",
            ),
            ("PARLEY_ATTACHMENTS_MAX_BYTES", "1024"),
            ("PARLEY_CHAT_RETENTION_DAYS", "30"),
        ])
        .expect("valid");
        assert_eq!(c.attachments.store, StoreKind::S3);
        assert_eq!(
            c.attachments.allowed_types,
            ["image/png", "application/pdf"]
        );
        assert_eq!((c.attachments.max_bytes, c.chat.retention_days), (1024, 30));
        for (env, key) in [
            (("PARLEY_ATTACHMENTS_STORE", "s3"), "attachments.s3_bucket"),
            (("PARLEY_ATTACHMENTS_STORE", "ftp"), "attachments.store"),
            (
                ("PARLEY_ATTACHMENTS_MAX_BYTES", "0"),
                "attachments.max_bytes",
            ),
            (
                ("PARLEY_ATTACHMENTS_URL_TTL_S", "-1"),
                "attachments.url_ttl_s",
            ),
            (
                ("PARLEY_ATTACHMENTS_ALLOWED_TYPES", "png"),
                "attachments.allowed_types",
            ),
            (
                ("PARLEY_ATTACHMENTS_SIGNING_KEY", "short"),
                "attachments.signing_key",
            ),
            (
                ("PARLEY_ATTACHMENTS_S3_ENDPOINT", "minio:9000"),
                "attachments.s3_endpoint",
            ),
            (
                ("PARLEY_CHAT_RETENTION_DAYS", "many"),
                "chat.retention_days",
            ),
            (
                ("PARLEY_CHAT_RETENTION_DAYS", "99999"),
                "chat.retention_days",
            ),
            (("PARLEY_CHAT_CLEANUP_BATCH", "0"), "chat.cleanup_batch"),
        ] {
            let e = load(&[env]).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
            assert!(!e.to_string().contains("short"), "secret leaked: {e}");
        }
    }
}
