//! The `[edge]` section: the WebSocket listener, connection timings,
//! per-connection bounds, and the protection and admission limits
//! (docs/security.md).

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, at_least, string_or_list};
use crate::secret::Secret;

/// Upper bound of `edge.max_commands_in_flight`.
const MAX_COMMANDS_IN_FLIGHT: usize = 4096;

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
    /// Most commands one connection may have in flight (pipelining);
    /// further frames are read once one finishes. 1 runs a connection's
    /// commands one after another.
    pub max_commands_in_flight: usize,
    /// How often the edge renews its connections' presence leases (one batched call).
    pub presence_renew_ms: u64,
    /// Most users one connection follows: those `presence.subscribe` named
    /// and the members of small joined rooms together.
    pub presence_subscribe_max: usize,
    /// Most rooms one connection may have joined at once.
    pub max_rooms_per_conn: usize,
    /// Most rooms one `room.join{rooms}` may name.
    pub max_rooms_per_join: usize,
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
    /// Open TCP connections from one address that are not (yet) WebSockets
    /// (requests in progress, idle keep-alives); more are closed at accept.
    /// Trusted proxies are exempt. 0 turns the cap off.
    pub max_http_conns_per_ip: usize,
    /// Time a connection has to send a request's headers, and the longest a
    /// keep-alive connection may sit idle between requests.
    pub http_header_timeout_ms: u64,
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
    /// Rooms a signed-in user may create per hour.
    pub rate_room_create_per_hour: u32,
    /// Rooms an anonymous user may create per hour (lower: they cost nothing
    /// to make). 0 means no limit, like every rate here.
    pub rate_room_create_anonymous_per_hour: u32,
    /// Messages and new connections across all users (0: no global cap).
    pub rate_global_messages_per_min: u32,
    pub rate_global_connects_per_min: u32,
    /// This many `rate_limited` answers within a minute close the connection with 4029.
    pub rate_violations_close: u32,
    /// Redis holding the per-user and per-IP rate windows, shared by every
    /// edge. Empty: the bus's Redis when `bus.backend = "redis"`, else this
    /// edge's memory.
    pub rate_limit_redis_url: String,
    /// PEM CA certificates a `rediss://` `rate_limit_redis_url` must chain
    /// to; empty: the system's roots.
    pub rate_limit_redis_ca_file: String,
    /// Content inspection of message text: `off`, `flag` or `block`.
    pub content_inspection: InspectionMode,
    /// Bearer token of `GET /status`; empty disables the endpoint (404).
    pub admin_token: Secret,
    /// After authentication every command must be an HMAC-signed envelope
    /// (see docs/security.md); off by default.
    pub signed_frames: bool,
    /// Serve the web app (clients/web) at `/`; on in the one-process binary.
    pub web_app: bool,
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
            max_commands_in_flight: 64,
            presence_renew_ms: 10_000,
            presence_subscribe_max: 500,
            max_rooms_per_conn: 100,
            max_rooms_per_join: 20,
            room_presence_max_members: 100,
            typing_timeout_ms: 6_000,
            token_expiring_lead_ms: 60_000,
            shutdown_grace_ms: 10_000,
            drain_ms: 5_000,
            maintenance: false,
            idle_timeout_ms: 30 * 60 * 1000,
            max_conns: 100_000,
            max_conns_per_ip: 100,
            max_http_conns_per_ip: 50,
            http_header_timeout_ms: 10_000,
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
            rate_room_create_per_hour: 30,
            rate_room_create_anonymous_per_hour: 5,
            rate_global_messages_per_min: 0,
            rate_global_connects_per_min: 0,
            rate_violations_close: 10,
            rate_limit_redis_url: String::new(),
            rate_limit_redis_ca_file: String::new(),
            content_inspection: InspectionMode::Flag,
            admin_token: Secret::default(),
            signed_frames: false,
            web_app: false,
        }
    }
}

impl EdgeConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        at_least(
            "edge.max_message_bytes",
            self.max_message_bytes as u64,
            1024,
        )?;
        at_least("edge.auth_timeout_ms", self.auth_timeout_ms, 100)?;
        at_least("edge.heartbeat_ms", self.heartbeat_ms, 100)?;
        at_least(
            "edge.pong_timeout_ms",
            self.pong_timeout_ms,
            self.heartbeat_ms,
        )?;
        at_least("edge.call_timeout_ms", self.call_timeout_ms, 10)?;
        at_least(
            "edge.outbound_queue_bytes",
            self.outbound_queue_bytes as u64,
            4096,
        )?;
        at_least("edge.presence_renew_ms", self.presence_renew_ms, 100)?;
        at_least(
            "edge.max_commands_in_flight",
            self.max_commands_in_flight as u64,
            1,
        )?;
        if self.max_commands_in_flight > MAX_COMMANDS_IN_FLIGHT {
            return Err(ConfigError(format!(
                "key `edge.max_commands_in_flight`: must be at most {MAX_COMMANDS_IN_FLIGHT}, got {}",
                self.max_commands_in_flight
            )));
        }
        if self.drain_ms >= self.shutdown_grace_ms {
            return Err(ConfigError(format!(
                "key `edge.drain_ms`: must be shorter than edge.shutdown_grace_ms ({})",
                self.shutdown_grace_ms
            )));
        }
        at_least("edge.idle_timeout_ms", self.idle_timeout_ms, 100)?;
        at_least("edge.max_conns", self.max_conns as u64, 1)?;
        at_least("edge.max_conns_per_ip", self.max_conns_per_ip as u64, 1)?;
        at_least(
            "edge.http_header_timeout_ms",
            self.http_header_timeout_ms,
            100,
        )?;
        at_least("edge.max_conns_per_user", self.max_conns_per_user as u64, 1)?;
        at_least(
            "edge.rate_violations_close",
            u64::from(self.rate_violations_close),
            1,
        )?;
        let rl = &self.rate_limit_redis_url;
        if !(rl.is_empty() || rl.starts_with("redis://") || rl.starts_with("rediss://")) {
            return Err(ConfigError::new(
                "key `edge.rate_limit_redis_url`: must be empty or start with redis:// or rediss://",
            ));
        }
        super::redis_ca_file(
            "edge.rate_limit_redis_ca_file",
            &self.rate_limit_redis_ca_file,
        )?;
        if !self.admin_token.is_empty() && self.admin_token.expose().len() < 16 {
            return Err(ConfigError::new(
                "key `edge.admin_token`: must be at least 16 bytes (or empty to disable /status)",
            ));
        }
        at_least(
            "edge.presence_subscribe_max",
            self.presence_subscribe_max as u64,
            1,
        )?;
        at_least("edge.typing_timeout_ms", self.typing_timeout_ms, 100)?;
        at_least("edge.max_rooms_per_conn", self.max_rooms_per_conn as u64, 1)?;
        at_least("edge.max_rooms_per_join", self.max_rooms_per_join as u64, 1)?;
        if self.max_rooms_per_join > protocol_join_rooms_max() {
            return Err(ConfigError(format!(
                "key `edge.max_rooms_per_join`: must be at most {}, got {}",
                protocol_join_rooms_max(),
                self.max_rooms_per_join
            )));
        }
        if self.room_presence_max_members > 1_000 {
            return Err(ConfigError(format!(
                "key `edge.room_presence_max_members`: must be at most 1000, got {}",
                self.room_presence_max_members
            )));
        }
        for origin in &self.allowed_origins {
            if origin.contains('*') || origin.ends_with('/') || !origin.contains("://") {
                return Err(ConfigError(format!(
                    "key `edge.allowed_origins`: `{origin}` is not an exact origin like https://app.example.com"
                )));
            }
        }
        for proxy in &self.trusted_proxies {
            if let Err(e) = proxy.parse::<crate::cidr::Cidr>() {
                return Err(ConfigError(format!("key `edge.trusted_proxies`: {e}")));
            }
        }
        Ok(())
    }
}

/// The protocol's own bound on `room.join{rooms}` (`protocol::JOIN_ROOMS_MAX`;
/// `common` cannot depend on `protocol`).
const fn protocol_join_rooms_max() -> usize {
    1000
}

#[cfg(test)]
mod tests {
    use super::InspectionMode;
    use crate::config::tests::load;

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
    fn invalid_edge_values_name_the_key() {
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
        let e = load(&[("PARLEY_EDGE_ALLOWED_ORIGINS", "*")]).expect_err("wildcard");
        assert!(e.to_string().contains("edge.allowed_origins"), "{e}");
        let e =
            load(&[("PARLEY_EDGE_TRUSTED_PROXIES", "10.0.0.0/8, 10.1/16")]).expect_err("bad range");
        assert!(e.to_string().contains("edge.trusted_proxies"), "{e}");
        for bad in ["0", "4097"] {
            let e = load(&[("PARLEY_EDGE_MAX_COMMANDS_IN_FLIGHT", bad)]).expect_err("out of range");
            assert!(e.to_string().contains("edge.max_commands_in_flight"), "{e}");
        }
        let c = load(&[("PARLEY_EDGE_MAX_COMMANDS_IN_FLIGHT", "1")]).expect("sequential");
        assert_eq!(c.edge.max_commands_in_flight, 1);
        let c = load(&[("PARLEY_EDGE_TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1")]).expect("valid");
        assert_eq!(c.edge.trusted_proxies, ["10.0.0.0/8", "127.0.0.1"]);
    }
}
