//! Layered configuration: built-in defaults, then an optional TOML file, then
//! `PARLEY_<SECTION>_<KEY>` environment variables.
//!
//! The environment is passed in as a list of pairs, so tests build configs
//! without touching the process environment. Every key has a default (see
//! docs/configuration.md); a bad value stops start-up with an error naming
//! the key.

use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Format, Serialized, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Figment, Metadata, Profile, Provider};
use serde::{Deserialize, Deserializer, Serialize};

use crate::secret::Secret;

mod ai;
mod auth;

pub use self::ai::{AiConfig, AiFallback, AiProvider};
pub use self::auth::{AuthConfig, JwksConfig, KeyConfig, MIN_SECRET_BYTES};

/// Sections of the config file, in `PARLEY_<SECTION>_<KEY>` order.
const SECTIONS: &[&str] = &[
    "edge", "auth", "chat", "ai", "presence", "bus", "services", "log",
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
}

/// The WebSocket edge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EdgeConfig {
    /// HTTP + WebSocket listen address (`/ws`, `/healthz`, `/readyz`).
    pub listen: SocketAddr,
    /// Exact `Origin` values allowed to open a WebSocket; empty allows none
    /// that send an Origin (browsers) unless listed.
    #[serde(deserialize_with = "string_or_list")]
    pub allowed_origins: Vec<String>,
    /// Whether requests without an `Origin` header (non-browser clients) may connect.
    pub allow_missing_origin: bool,
    /// Proxies (IP addresses or CIDR ranges) whose `X-Forwarded-For` is
    /// believed: a connection from one of them counts as coming from the
    /// right-most address in that header that is not itself a trusted
    /// proxy. Empty: the TCP peer is the client (every per-address limit,
    /// block and log uses it).
    #[serde(deserialize_with = "string_or_list")]
    pub trusted_proxies: Vec<String>,
    /// Time a connection has to authenticate before it is closed with 4001.
    pub auth_timeout_ms: u64,
    /// Interval of WebSocket pings.
    pub heartbeat_ms: u64,
    /// A connection that sends no pong within this window is closed with 4012.
    pub pong_timeout_ms: u64,
    /// Largest accepted WebSocket message (frames and reassembled messages).
    pub max_message_bytes: usize,
    /// Accept `?token=` on the upgrade URL (off: tokens in URLs end up in access logs).
    pub query_token: bool,
    /// Deadline of every gRPC call the edge makes.
    pub call_timeout_ms: u64,
    /// Bound on bytes queued to one connection; past it the connection closes with 4008.
    pub outbound_queue_bytes: usize,
    /// How often the edge renews its connections' presence leases (one batched call).
    pub presence_renew_ms: u64,
    /// Most users one connection may follow with `presence.subscribe`.
    pub presence_subscribe_max: usize,
    /// Rooms with at most this many members send their members' `presence`
    /// events to everyone who joined (cost grows with members × churn).
    /// 0 turns room-wide presence off; at most 1000.
    pub room_presence_max_members: usize,
    /// A `typing.start` not renewed within this time stops by itself.
    pub typing_timeout_ms: u64,
    /// How long before a token's `exp` the connection gets `token.expiring`.
    pub token_expiring_lead_ms: u64,
    /// Upper bound on a graceful shutdown.
    pub shutdown_grace_ms: u64,
    /// On shutdown, connections close with 1001 spread over this period, so
    /// clients do not all reconnect to the other edges at once. Must be
    /// shorter than `shutdown_grace_ms`.
    pub drain_ms: u64,
    // Protection and admission (docs/security.md). A rate of 0 turns its
    // tier off.
    /// Upgrades answer HTTP 503 (maintenance mode).
    pub maintenance: bool,
    /// A connection that sends no command for this long closes with 1000 `idle`.
    pub idle_timeout_ms: u64,
    /// Concurrent connections on this edge; more get HTTP 429.
    pub max_conns: usize,
    /// Concurrent connections from one address on this edge; more get HTTP 429.
    pub max_conns_per_ip: usize,
    /// Concurrent connections of one user on this edge; more close with 4009.
    pub max_conns_per_user: usize,
    /// Messages (`message.send`, `message.edit`) per signed-in user.
    pub rate_user_per_min: u32,
    pub rate_user_per_hour: u32,
    /// Messages per anonymous user.
    pub rate_anonymous_per_min: u32,
    pub rate_anonymous_per_hour: u32,
    /// Messages from one address.
    pub rate_ip_messages_per_min: u32,
    /// New connections from one address.
    pub rate_ip_connects_per_min: u32,
    /// Commands of any type on one connection.
    pub rate_conn_commands_per_min: u32,
    /// Per user and command family.
    pub rate_typing_per_10s: u32,
    pub rate_receipts_per_min: u32,
    pub rate_presence_set_per_min: u32,
    pub rate_call_invite_per_min: u32,
    pub rate_reactions_per_min: u32,
    /// Messages and new connections across all users (0: no global cap).
    pub rate_global_messages_per_min: u32,
    pub rate_global_connects_per_min: u32,
    /// This many `rate_limited` answers within a minute close the connection with 4029.
    pub rate_violations_close: u32,
    /// Redis holding the per-user and per-IP rate windows, shared by every
    /// edge. Empty: the bus's Redis when `bus.backend = "redis"`, else this
    /// edge's memory.
    pub rate_limit_redis_url: String,
    /// Content inspection of message text: `off`, `flag` or `block`.
    pub content_inspection: InspectionMode,
    /// Bearer token of `GET /status`; empty disables the endpoint (404).
    pub admin_token: Secret,
    /// After authentication every command must be an HMAC-signed envelope
    /// (see docs/security.md); off by default.
    pub signed_frames: bool,
}

/// What content inspection does with a message that matches a detector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InspectionMode {
    /// No inspection.
    Off,
    /// Stored unchanged, with `metadata.flags`, and logged.
    Flag,
    /// Refused with `forbidden` (`content_blocked`).
    Block,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            allowed_origins: Vec::new(),
            trusted_proxies: Vec::new(),
            allow_missing_origin: true,
            auth_timeout_ms: 10_000,
            heartbeat_ms: 25_000,
            pong_timeout_ms: 60_000,
            max_message_bytes: 64 * 1024,
            query_token: false,
            call_timeout_ms: 10_000,
            outbound_queue_bytes: 1024 * 1024,
            presence_renew_ms: 10_000,
            presence_subscribe_max: 500,
            room_presence_max_members: 100,
            typing_timeout_ms: 6_000,
            token_expiring_lead_ms: 60_000,
            shutdown_grace_ms: 10_000,
            drain_ms: 5_000,
            maintenance: false,
            idle_timeout_ms: 30 * 60 * 1000,
            max_conns: 100_000,
            max_conns_per_ip: 100,
            max_conns_per_user: 20,
            rate_user_per_min: 60,
            rate_user_per_hour: 1_000,
            rate_anonymous_per_min: 10,
            rate_anonymous_per_hour: 100,
            rate_ip_messages_per_min: 200,
            rate_ip_connects_per_min: 20,
            rate_conn_commands_per_min: 300,
            rate_typing_per_10s: 10,
            rate_receipts_per_min: 100,
            rate_presence_set_per_min: 20,
            rate_call_invite_per_min: 5,
            rate_reactions_per_min: 50,
            rate_global_messages_per_min: 0,
            rate_global_connects_per_min: 0,
            rate_violations_close: 10,
            rate_limit_redis_url: String::new(),
            content_inspection: InspectionMode::Flag,
            admin_token: Secret::default(),
            signed_frames: false,
        }
    }
}

/// The chat service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    pub listen: SocketAddr,
    /// `sqlite://path?mode=rwc` or `postgres://…`; the migrations run at start.
    pub database_url: String,
    /// Database connection pool size (SQLite always uses one writer).
    pub max_connections: u32,
    /// Longest message text, in characters.
    pub max_text_chars: usize,
    /// Most events or messages returned by one page.
    pub page_limit: u32,
    /// Who may invite to a private room: `members` or only the `owner`.
    pub invite_policy: InvitePolicy,
}

/// Who may add people to a private room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InvitePolicy {
    /// Any member.
    Members,
    /// The owner only.
    Owner,
}

impl Default for ChatConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50052)),
            database_url: "sqlite://data/parley.db?mode=rwc".into(),
            max_connections: 10,
            max_text_chars: 4000,
            page_limit: 100,
            invite_policy: InvitePolicy::Members,
        }
    }
}

/// Where state lives: this process or Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    Memory,
    Redis,
}

/// The presence service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PresenceConfig {
    pub listen: SocketAddr,
    pub backend: Backend,
    pub redis_url: String,
    /// Prefix of every Redis key, so several deployments can share a Redis.
    pub redis_prefix: String,
    /// Lease lifetime; an edge that stops renewing loses its users after this.
    pub lease_ttl_ms: u64,
    /// A user whose last lease ended is announced offline only after this
    /// long without a new one (no offline/online pair on a reconnect).
    pub grace_ms: u64,
    /// How often expired leases, passed grace periods and unanswered calls
    /// are looked for.
    pub sweep_ms: u64,
    /// An unanswered call ends after this long and leaves a missed-call
    /// notification.
    pub call_ring_ms: u64,
}

impl Default for PresenceConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50054)),
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_prefix: "presence:".into(),
            lease_ttl_ms: 30_000,
            grace_ms: 5_000,
            sweep_ms: 1_000,
            call_ring_ms: 45_000,
        }
    }
}

/// The event bus between services and edges.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BusConfig {
    /// `memory` (one process only) or `redis` (pub/sub).
    pub backend: Backend,
    pub redis_url: String,
    /// Prefix of every channel name, so several deployments can share a Redis.
    pub channel_prefix: String,
}

impl Default for BusConfig {
    fn default() -> Self {
        Self {
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            channel_prefix: "parley".into(),
        }
    }
}

/// How components reach each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    pub auth_url: String,
    pub chat_url: String,
    pub ai_url: String,
    pub presence_url: String,
    /// Credential every internal gRPC call carries (`authorization: Bearer …`).
    /// Empty: generated at start in one-process mode; required (32+ bytes)
    /// when services run as separate processes.
    pub credential: Secret,
    /// Timeout for establishing a gRPC connection.
    pub connect_timeout_ms: u64,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            auth_url: "http://127.0.0.1:50051".into(),
            chat_url: "http://127.0.0.1:50052".into(),
            ai_url: "http://127.0.0.1:50053".into(),
            presence_url: "http://127.0.0.1:50054".into(),
            credential: Secret::default(),
            connect_timeout_ms: 2_000,
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

/// Logging.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    pub format: LogFormat,
    /// `tracing` filter directive, e.g. `info` or `info,chat_service=debug`.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
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
    /// plus development conveniences (`auth.dev_login`).
    pub fn one_process_defaults() -> Self {
        let mut config = Self::default();
        config.auth.dev_login = true;
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
            figment = figment.merge(Toml::file(path));
        }
        figment = figment.merge(EnvPairs::new(env)?);
        let config: Config = figment.extract().map_err(|e| {
            let mut message = String::new();
            for err in e {
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
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks what types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        fn at_least(key: &str, value: u64, min: u64) -> Result<(), ConfigError> {
            if value < min {
                return Err(ConfigError(format!(
                    "key `{key}`: must be at least {min}, got {value}"
                )));
            }
            Ok(())
        }
        at_least(
            "edge.max_message_bytes",
            self.edge.max_message_bytes as u64,
            1024,
        )?;
        at_least("edge.auth_timeout_ms", self.edge.auth_timeout_ms, 100)?;
        at_least("edge.heartbeat_ms", self.edge.heartbeat_ms, 100)?;
        at_least(
            "edge.pong_timeout_ms",
            self.edge.pong_timeout_ms,
            self.edge.heartbeat_ms,
        )?;
        at_least("edge.call_timeout_ms", self.edge.call_timeout_ms, 10)?;
        at_least(
            "edge.outbound_queue_bytes",
            self.edge.outbound_queue_bytes as u64,
            4096,
        )?;
        at_least("edge.presence_renew_ms", self.edge.presence_renew_ms, 100)?;
        if self.edge.drain_ms >= self.edge.shutdown_grace_ms {
            return Err(ConfigError(format!(
                "key `edge.drain_ms`: must be shorter than edge.shutdown_grace_ms ({})",
                self.edge.shutdown_grace_ms
            )));
        }
        at_least("edge.idle_timeout_ms", self.edge.idle_timeout_ms, 100)?;
        at_least("edge.max_conns", self.edge.max_conns as u64, 1)?;
        at_least(
            "edge.max_conns_per_ip",
            self.edge.max_conns_per_ip as u64,
            1,
        )?;
        at_least(
            "edge.max_conns_per_user",
            self.edge.max_conns_per_user as u64,
            1,
        )?;
        at_least(
            "edge.rate_violations_close",
            u64::from(self.edge.rate_violations_close),
            1,
        )?;
        let rl = &self.edge.rate_limit_redis_url;
        if !(rl.is_empty() || rl.starts_with("redis://") || rl.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "key `edge.rate_limit_redis_url`: must be empty or start with redis:// or rediss://",
            ));
        }
        if !self.edge.admin_token.is_empty() && self.edge.admin_token.expose().len() < 16 {
            return Err(ConfigError::new(
                "key `edge.admin_token`: must be at least 16 bytes (or empty to disable /status)",
            ));
        }
        at_least("chat.max_connections", self.chat.max_connections as u64, 1)?;
        at_least("chat.max_text_chars", self.chat.max_text_chars as u64, 1)?;
        at_least("chat.page_limit", self.chat.page_limit as u64, 1)?;
        at_least("presence.lease_ttl_ms", self.presence.lease_ttl_ms, 1_000)?;
        at_least("presence.sweep_ms", self.presence.sweep_ms, 10)?;
        if self.presence.redis_prefix.is_empty() {
            return Err(ConfigError::new(
                "key `presence.redis_prefix`: must not be empty",
            ));
        }
        at_least("presence.call_ring_ms", self.presence.call_ring_ms, 100)?;
        at_least(
            "edge.presence_subscribe_max",
            self.edge.presence_subscribe_max as u64,
            1,
        )?;
        at_least("edge.typing_timeout_ms", self.edge.typing_timeout_ms, 100)?;
        if self.edge.room_presence_max_members > 1_000 {
            return Err(ConfigError(format!(
                "key `edge.room_presence_max_members`: must be at most 1000, got {}",
                self.edge.room_presence_max_members
            )));
        }
        if self.presence.lease_ttl_ms <= self.edge.presence_renew_ms {
            return Err(ConfigError(format!(
                "key `presence.lease_ttl_ms`: must exceed edge.presence_renew_ms ({})",
                self.edge.presence_renew_ms
            )));
        }
        self.auth.validate()?;
        if !self.services.credential.is_empty() && self.services.credential.expose().len() < 32 {
            return Err(ConfigError(
                "key `services.credential`: must be at least 32 bytes".into(),
            ));
        }
        let db = &self.chat.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(ConfigError(
                "key `chat.database_url`: must start with sqlite: or postgres://".into(),
            ));
        }
        for (key, url) in [
            ("services.auth_url", &self.services.auth_url),
            ("services.chat_url", &self.services.chat_url),
            ("services.ai_url", &self.services.ai_url),
            ("services.presence_url", &self.services.presence_url),
        ] {
            if url
                .parse::<http::Uri>()
                .map(|u| u.scheme().is_none())
                .unwrap_or(true)
            {
                return Err(ConfigError(format!(
                    "key `{key}`: `{url}` is not an http(s) URL"
                )));
            }
        }
        for (key, url) in [
            ("bus.redis_url", &self.bus.redis_url),
            ("presence.redis_url", &self.presence.redis_url),
        ] {
            if !(url.starts_with("redis://") || url.starts_with("rediss://")) {
                return Err(ConfigError(format!(
                    "key `{key}`: must start with redis:// or rediss://"
                )));
            }
        }
        for origin in &self.edge.allowed_origins {
            if origin.contains('*') || origin.ends_with('/') || !origin.contains("://") {
                return Err(ConfigError(format!(
                    "key `edge.allowed_origins`: `{origin}` is not an exact origin like https://app.example.com"
                )));
            }
        }
        for proxy in &self.edge.trusted_proxies {
            if let Err(e) = proxy.parse::<crate::cidr::Cidr>() {
                return Err(ConfigError(format!("key `edge.trusted_proxies`: {e}")));
            }
        }
        self.ai.validate()?;
        if let Err(e) = self.log.level.parse::<tracing_subscriber::EnvFilter>() {
            return Err(ConfigError(format!("key `log.level`: {e}")));
        }
        Ok(())
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
        || key.ends_with("secret")
        || key.ends_with("api_key")
        || key.ends_with("model")
        || key.ends_with("prompt")
        || matches!(
            key,
            "credential"
                | "admin_token"
                | "issuer"
                | "audience"
                | "channel_prefix"
                | "redis_prefix"
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

    fn load(env: &[(&str, &str)]) -> Result<Config, ConfigError> {
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
        assert_eq!(c.auth.access_ttl_s, 900);
        assert_eq!(c.auth.refresh_ttl_s, 30 * 24 * 3600);
        assert_eq!(c.auth.failed_attempts_max, 10);
        assert_eq!(c.auth.failed_window_s, 300);
        assert_eq!(c.auth.block_s, 900);
        assert_eq!(c.auth.jwks_refetch_s, 60);
    }

    #[test]
    fn protection_keys_load_from_the_environment() {
        let c = load(&[
            ("PARLEY_EDGE_CONTENT_INSPECTION", "block"),
            ("PARLEY_EDGE_ADMIN_TOKEN", "0123456789abcdef0123"),
            ("PARLEY_EDGE_RATE_USER_PER_MIN", "0"),
            ("PARLEY_EDGE_MAINTENANCE", "true"),
        ])
        .expect("valid");
        assert_eq!(c.edge.content_inspection, InspectionMode::Block);
        assert_eq!(c.edge.admin_token.expose(), "0123456789abcdef0123");
        assert_eq!(c.edge.rate_user_per_min, 0);
        assert!(c.edge.maintenance);
        let e = load(&[("PARLEY_EDGE_CONTENT_INSPECTION", "strict")]).expect_err("bad mode");
        assert!(e.to_string().contains("edge.content_inspection"), "{e}");
        let e = load(&[("PARLEY_EDGE_ADMIN_TOKEN", "short")]).expect_err("short token");
        assert!(e.to_string().contains("edge.admin_token"), "{e}");
        assert!(!e.to_string().contains("short\""), "token leaked: {e}");
        let e = load(&[("PARLEY_EDGE_MAX_CONNS_PER_USER", "0")]).expect_err("zero");
        assert!(e.to_string().contains("edge.max_conns_per_user"), "{e}");
        let e = load(&[("PARLEY_EDGE_RATE_LIMIT_REDIS_URL", "http://x")]).expect_err("not redis");
        assert!(e.to_string().contains("edge.rate_limit_redis_url"), "{e}");
        let e = load(&[("PARLEY_EDGE_RATE_VIOLATIONS_CLOSE", "0")]).expect_err("zero");
        assert!(e.to_string().contains("edge.rate_violations_close"), "{e}");
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
        let c = Config::load_over(
            Config::one_process_defaults(),
            None,
            [("PARLEY_AUTH_DEV_LOGIN", "false")],
        )
        .expect("valid");
        assert!(!c.auth.dev_login);
    }

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
        let e = load(&[("PARLEY_EDGE_DRAIN_MS", "20000")]).expect_err("drain past grace");
        assert!(e.to_string().contains("edge.drain_ms"), "{e}");
        let e = load(&[("PARLEY_EDGE_ROOM_PRESENCE_MAX_MEMBERS", "5000")]).expect_err("too many");
        assert!(
            e.to_string().contains("edge.room_presence_max_members"),
            "{e}"
        );
        let e = load(&[("PARLEY_EDGE_PRESENCE_SUBSCRIBE_MAX", "0")]).expect_err("zero");
        assert!(e.to_string().contains("edge.presence_subscribe_max"), "{e}");
        let e = load(&[("PARLEY_EDGE_TYPING_TIMEOUT_MS", "5")]).expect_err("too short");
        assert!(e.to_string().contains("edge.typing_timeout_ms"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_GRACE_MS", "soon")]).expect_err("not a number");
        assert!(e.to_string().contains("presence.grace_ms"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_REDIS_PREFIX", "")]).expect_err("empty prefix");
        assert!(e.to_string().contains("presence.redis_prefix"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_SWEEP_MS", "0")]).expect_err("zero");
        assert!(e.to_string().contains("presence.sweep_ms"), "{e}");
        let e = load(&[("PARLEY_PRESENCE_CALL_RING_MS", "1")]).expect_err("too short");
        assert!(e.to_string().contains("presence.call_ring_ms"), "{e}");
        let e = load(&[("PARLEY_EDGE_ALLOWED_ORIGINS", "*")]).expect_err("wildcard");
        assert!(e.to_string().contains("edge.allowed_origins"), "{e}");
        let e =
            load(&[("PARLEY_EDGE_TRUSTED_PROXIES", "10.0.0.0/8, 10.1/16")]).expect_err("bad range");
        assert!(e.to_string().contains("edge.trusted_proxies"), "{e}");
        let c = load(&[("PARLEY_EDGE_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).expect("valid");
        assert_eq!(c.edge.trusted_proxies, ["10.0.0.0/8", "127.0.0.1"]);
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
}
