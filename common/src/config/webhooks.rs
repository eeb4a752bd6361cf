//! `[[chat.webhooks]]`: outgoing webhook endpoints, each with its filter,
//! signing secret, retry schedule and concurrency bound.

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// Shortest accepted signing secret, in bytes.
pub const MIN_WEBHOOK_SECRET_BYTES: usize = 32;

/// The filter entry of offline users' notifications.
pub const OFFLINE_NOTIFICATIONS: &str = "notification.offline";

/// One endpoint that receives signed POSTs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WebhookConfig {
    /// Names the endpoint in dead letters and idempotency keys; changing it
    /// starts the endpoint afresh (from the log's newest event).
    pub name: String,
    /// Where the POSTs go (http or https).
    pub url: String,
    /// HMAC-SHA256 key of the signature header, 32+ bytes (`secret_file`).
    pub secret: Secret,
    /// What is sent: `*` (every room-log event), a kind (`message.new`), a
    /// family (`message.*`), `notification.offline` (mentions, direct
    /// messages and other notifications of users with no live connection),
    /// or `connection.*` (connects and disconnects, never sent for `*`).
    pub events: Vec<String>,
    /// Most POSTs to this endpoint in flight at once.
    pub max_in_flight: u32,
    /// Attempts before a delivery becomes a dead letter.
    pub max_attempts: u32,
    /// Pause before the first retry; doubles for each further one.
    pub retry_base_ms: u64,
    /// Longest pause between two attempts.
    pub retry_max_ms: u64,
    /// Deadline of one POST.
    pub timeout_ms: u64,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        Self {
            name: String::new(),
            url: String::new(),
            secret: Secret::default(),
            events: vec!["*".into()],
            max_in_flight: 4,
            max_attempts: 10,
            retry_base_ms: 1_000,
            retry_max_ms: 3_600_000,
            timeout_ms: 10_000,
        }
    }
}

impl WebhookConfig {
    /// Whether this endpoint takes room-log events of `kind`.
    pub fn wants_kind(&self, kind: &str) -> bool {
        self.events
            .iter()
            .any(|filter| filter == "*" || matches(filter, kind))
    }

    /// Whether this endpoint takes connection events of `kind`
    /// (`connection.connected`, `connection.disconnected`): named by a
    /// kind or a family, never by `*` alone.
    pub fn wants_connection(&self, kind: &str) -> bool {
        self.events.iter().any(|filter| matches(filter, kind))
    }

    /// Whether this endpoint takes offline users' notifications.
    pub fn wants_offline_notifications(&self) -> bool {
        self.events.iter().any(|f| f == OFFLINE_NOTIFICATIONS)
    }
}

/// Whether `filter` (a kind or a `family.*`) takes `kind`.
fn matches(filter: &str, kind: &str) -> bool {
    if filter == OFFLINE_NOTIFICATIONS {
        return false;
    }
    match filter.strip_suffix(".*") {
        Some(family) => kind
            .strip_prefix(family)
            .is_some_and(|rest| rest.starts_with('.')),
        None => filter == kind,
    }
}

/// Checks every endpoint; errors name `chat.webhooks[i].<key>`.
pub(super) fn validate(webhooks: &[WebhookConfig]) -> Result<(), ConfigError> {
    for (i, hook) in webhooks.iter().enumerate() {
        let at = format!("chat.webhooks[{i}]");
        let bad = |key: &str, why: &str| ConfigError(format!("key `{at}.{key}`: {why}"));
        let valid_name = !hook.name.is_empty()
            && hook.name.len() <= 64
            && hook
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '_' | '-'));
        if !valid_name {
            return Err(bad("name", "must be 1 to 64 characters of [a-z0-9_-]"));
        }
        if webhooks[..i].iter().any(|other| other.name == hook.name) {
            return Err(bad("name", "another endpoint has this name"));
        }
        let url_ok = (hook.url.starts_with("http://") || hook.url.starts_with("https://"))
            && reqwest_like_host(&hook.url);
        if !url_ok {
            return Err(bad("url", "must be an http:// or https:// URL"));
        }
        if hook.secret.expose().len() < MIN_WEBHOOK_SECRET_BYTES {
            return Err(bad("secret", "must be at least 32 bytes"));
        }
        if hook.events.is_empty() {
            return Err(bad("events", "must name at least one filter"));
        }
        for filter in &hook.events {
            if !valid_filter(filter) {
                return Err(bad(
                    "events",
                    "each entry is `*`, an event kind (`message.new`), a family (`message.*`) \
                     or `notification.offline`",
                ));
            }
        }
        if !(1..=256).contains(&hook.max_in_flight) {
            return Err(bad("max_in_flight", "must be 1 to 256"));
        }
        if !(1..=100).contains(&hook.max_attempts) {
            return Err(bad("max_attempts", "must be 1 to 100"));
        }
        if hook.retry_base_ms < 10 {
            return Err(bad("retry_base_ms", "must be at least 10"));
        }
        if hook.retry_max_ms < hook.retry_base_ms {
            return Err(bad("retry_max_ms", "must be at least retry_base_ms"));
        }
        if hook.timeout_ms < 100 {
            return Err(bad("timeout_ms", "must be at least 100"));
        }
    }
    Ok(())
}

/// An http(s) URL with a non-empty host part.
fn reqwest_like_host(url: &str) -> bool {
    let rest = url.split_once("://").map_or("", |(_, rest)| rest);
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    !host.is_empty() && !host.contains(char::is_whitespace)
}

/// `*`, `notification.offline`, or dot-separated words of `[a-z_]` with an
/// optional `.*` at the end.
fn valid_filter(filter: &str) -> bool {
    if filter == "*" {
        return true;
    }
    let words = filter.strip_suffix(".*").unwrap_or(filter);
    !words.is_empty()
        && words.split('.').all(|word| {
            !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c == '_')
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    #[test]
    fn endpoints_are_checked_at_start_up_naming_the_key_never_the_secret() {
        let dir = std::env::temp_dir().join(crate::ids::new_id("parley-webhooks"));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("parley.toml");
        let check = |table: &str| {
            let toml = format!(
                "[chat]\nwatch_poll_ms = 500\n\n[[chat.webhooks]]\nname = \"push\"\n\
                 url = \"https://push.example/hook\"\n{table}"
            );
            std::fs::write(&path, toml).expect("write");
            Config::load(Some(&path), Vec::<(String, String)>::new())
        };
        let ok = check(&format!("secret = \"{SECRET}\"\n")).expect("valid");
        let hook = &ok.chat.webhooks[0];
        assert_eq!(ok.chat.watch_poll_ms, 500);
        assert_eq!(
            (
                hook.events.as_slice(),
                hook.max_in_flight,
                hook.max_attempts
            ),
            (&["*".to_string()][..], 4, 10)
        );
        assert!(!format!("{ok:?}").contains(SECRET), "secret printed");
        for (table, key) in [
            ("secret = \"short\"\n", "chat.webhooks[0].secret"),
            (
                &format!("secret = \"{SECRET}\"\nevents = [\"message.*.x\"]\n"),
                "chat.webhooks[0].events",
            ),
            (
                &format!("secret = \"{SECRET}\"\nmax_in_flight = 0\n"),
                "chat.webhooks[0].max_in_flight",
            ),
            (
                &format!("secret = \"{SECRET}\"\nretry_base_ms = 5000\nretry_max_ms = 10\n"),
                "chat.webhooks[0].retry_max_ms",
            ),
            (
                &format!(
                    "secret = \"{SECRET}\"\n\n[[chat.webhooks]]\nname = \"push\"\nurl = \"http://x/\"\nsecret = \"{SECRET}\"\n"
                ),
                "chat.webhooks[1].name",
            ),
        ] {
            let e = check(table).expect_err(key);
            assert!(e.to_string().contains(key), "{e}");
            assert!(!e.to_string().contains(SECRET), "secret leaked: {e}");
        }
        let e = check(&format!("secret = \"{SECRET}\"\nurl_typo = 1\n")).expect_err("unknown key");
        assert!(e.to_string().contains("url_typo"), "{e}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn hook(events: &[&str]) -> WebhookConfig {
        WebhookConfig {
            events: events.iter().map(|e| e.to_string()).collect(),
            ..WebhookConfig::default()
        }
    }

    #[test]
    fn filters_match_kinds_and_families() {
        assert!(hook(&["*"]).wants_kind("message.new"));
        assert!(hook(&["message.*"]).wants_kind("message.new"));
        assert!(!hook(&["message.*"]).wants_kind("messages.new"));
        assert!(hook(&["member.joined"]).wants_kind("member.joined"));
        assert!(!hook(&["member.joined"]).wants_kind("member.left"));
        let offline = hook(&["notification.offline"]);
        assert!(!offline.wants_kind("message.new"));
        assert!(offline.wants_offline_notifications());
        assert!(!hook(&["*"]).wants_offline_notifications());
        assert!(!hook(&["*"]).wants_connection("connection.connected"));
        assert!(hook(&["connection.*"]).wants_connection("connection.disconnected"));
        assert!(hook(&["connection.connected"]).wants_connection("connection.connected"));
        assert!(!hook(&["connection.connected"]).wants_connection("connection.disconnected"));
    }
}
