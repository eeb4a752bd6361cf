//! The `[chat]` section: the chat service's listener, database and the
//! limits of rooms and messages.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{ConfigError, WebhookConfig, at_least};

/// The chat service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ChatConfig {
    pub listen: SocketAddr,
    /// HTTP address of `/metrics` when the service runs as its own process
    /// (the one-process suite serves every metric on the edge's `/metrics`).
    pub metrics_listen: SocketAddr,
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
    /// Most members one message notifies by mentioning them; further
    /// mentions in the same message notify no one.
    pub max_mentions_per_message: usize,
    /// Whether a room's admins may give roles (`room.set_role` to `admin`
    /// or `member`); otherwise only the owner.
    pub admins_set_roles: bool,
    /// Most rooms one user may be a member of; joining, creating or being
    /// added past it is refused with `too_large`.
    pub max_memberships_per_user: u32,
    /// Most members `room.create` may name besides the creator.
    pub max_initial_members: usize,
    /// Most notifications stored per user; a new one drops the oldest.
    pub max_notifications_per_user: u32,
    /// Most users one user may block.
    pub max_blocks_per_user: u32,
    /// Most pending invitations one user may have; one more
    /// (`room.create{members}`, `room.invite`) is refused with `too_large`.
    pub max_pending_invitations_per_user: u32,
    /// Days a room's log, messages, reactions and attachments are kept;
    /// `0` keeps them forever. A room's own `retention_days` overrides it.
    pub retention_days: u32,
    /// Interval of the clean-up job (retention, deleted rooms, unreferenced
    /// attachments).
    pub cleanup_interval_s: u64,
    /// Most rows one clean-up statement deletes, so the job never holds the
    /// database long and writes go on between its batches.
    pub cleanup_batch: u32,
    /// A deleted room's tombstone (and what is left of it) is purged this
    /// long after `room.delete`.
    pub deleted_room_purge_s: u64,
    /// How often `Watch` streams and the webhook planner look for events
    /// appended by other replicas (this process's own wake them at once).
    pub watch_poll_ms: u64,
    /// Latest events kept in memory per busy room, so that reconnecting
    /// clients' `room.join{since}` reads them without the database; `0`
    /// turns the cache off.
    pub recent_events_per_room: u32,
    /// Most bytes of event JSON the cache of recent events holds in all;
    /// the least recently read room goes first.
    pub recent_events_max_bytes: u64,
    /// Outgoing webhook endpoints (`[[chat.webhooks]]`); none by default.
    pub webhooks: Vec<WebhookConfig>,
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
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9452)),
            database_url: "sqlite://data/parley.db?mode=rwc".into(),
            max_connections: 10,
            max_text_chars: 4000,
            page_limit: 100,
            invite_policy: InvitePolicy::Members,
            max_mentions_per_message: 20,
            admins_set_roles: false,
            max_memberships_per_user: 1_000,
            max_initial_members: 100,
            max_notifications_per_user: 1_000,
            max_blocks_per_user: 1_000,
            max_pending_invitations_per_user: 100,
            retention_days: 0,
            cleanup_interval_s: 300,
            cleanup_batch: 500,
            deleted_room_purge_s: 86_400,
            watch_poll_ms: 1_000,
            recent_events_per_room: 100,
            recent_events_max_bytes: 32 << 20,
            webhooks: Vec::new(),
        }
    }
}

impl ChatConfig {
    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::metrics_listen("chat", self.listen, self.metrics_listen)?;
        at_least("chat.max_connections", u64::from(self.max_connections), 1)?;
        at_least("chat.max_text_chars", self.max_text_chars as u64, 1)?;
        at_least("chat.page_limit", u64::from(self.page_limit), 1)?;
        if self.max_mentions_per_message > 1_000 {
            return Err(ConfigError(format!(
                "key `chat.max_mentions_per_message`: must be at most 1000, got {}",
                self.max_mentions_per_message
            )));
        }
        at_least(
            "chat.max_memberships_per_user",
            u64::from(self.max_memberships_per_user),
            1,
        )?;
        if self.max_initial_members > 1_000 {
            return Err(ConfigError(format!(
                "key `chat.max_initial_members`: must be at most 1000, got {}",
                self.max_initial_members
            )));
        }
        at_least(
            "chat.max_notifications_per_user",
            u64::from(self.max_notifications_per_user),
            1,
        )?;
        at_least(
            "chat.max_blocks_per_user",
            u64::from(self.max_blocks_per_user),
            1,
        )?;
        at_least(
            "chat.max_pending_invitations_per_user",
            u64::from(self.max_pending_invitations_per_user),
            1,
        )?;
        if self.retention_days > 36_500 {
            return Err(ConfigError(format!(
                "key `chat.retention_days`: must be at most 36500, got {}",
                self.retention_days
            )));
        }
        at_least("chat.cleanup_interval_s", self.cleanup_interval_s, 1)?;
        at_least("chat.cleanup_batch", u64::from(self.cleanup_batch), 1)?;
        at_least("chat.watch_poll_ms", self.watch_poll_ms, 10)?;
        if self.recent_events_per_room > 10_000 {
            return Err(ConfigError(format!(
                "key `chat.recent_events_per_room`: must be at most 10000, got {}",
                self.recent_events_per_room
            )));
        }
        super::webhooks::validate(&self.webhooks)?;
        let db = &self.database_url;
        if !(db.starts_with("sqlite:")
            || db.starts_with("postgres://")
            || db.starts_with("postgresql://"))
        {
            return Err(ConfigError(
                "key `chat.database_url`: must start with sqlite: or postgres://".into(),
            ));
        }
        Ok(())
    }
}
