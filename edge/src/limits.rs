//! Rate limits: GCRA windows per user, address, connection and command
//! family, checked before a command runs (and per address before an
//! upgrade). A limited command answers `rate_limited` with `retry_after_ms`;
//! too many of those within a minute close the connection with 4029.
//!
//! Per-user and per-address windows (and the optional global caps) live in
//! Redis when one is configured, so every edge counts against the same
//! window; otherwise in this edge's memory. The per-connection window is
//! always local. A Redis that fails or answers slowly is bypassed: the
//! check falls back to this edge's memory, so the limits still hold per
//! edge (fail safe: neither every command refused nor limits switched off).

use std::collections::{HashMap, VecDeque};
use std::net::IpAddr;
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use common::ErrorCode;
use common::config::EdgeConfig;
use common::security::{SecurityEvent, log};
use protocol::{CloseCode, RateFamily, Spec};
use tokio::time::Instant;

use crate::Shared;
use crate::frames::CommandError;

/// `count` events per `period`, with bursts of up to `count`; a count of 0
/// means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rate {
    pub count: u32,
    pub period: Duration,
}

impl Rate {
    pub fn new(count: u32, period: Duration) -> Self {
        Self { count, period }
    }

    pub fn per_min(count: u32) -> Self {
        Self::new(count, Duration::from_secs(60))
    }

    fn off(self) -> bool {
        self.count == 0 || self.period.is_zero()
    }

    /// Spacing of events at the sustained rate.
    fn interval(self) -> Duration {
        self.period / self.count.max(1)
    }
}

/// GCRA over one key: the theoretical arrival time of the next event. An
/// event is allowed when, after it, the window holds at most `count` events'
/// worth of intervals.
fn gcra(tat: Option<Instant>, rate: Rate, now: Instant) -> Result<Instant, Duration> {
    let tat = tat.map_or(now, |t| t.max(now));
    let next = tat + rate.interval();
    let limit = now + rate.period;
    if next > limit {
        Err(next - limit)
    } else {
        Ok(next)
    }
}

/// One window to check: its key, rate and the tier's name (for the log).
#[derive(Debug, Clone)]
pub(crate) struct Check {
    pub key: String,
    pub rate: Rate,
    pub tier: &'static str,
}

/// Why an event was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Limited {
    pub tier: &'static str,
    pub retry_after: Duration,
}

/// Windows kept in memory, swept of expired keys as they are used.
#[derive(Default)]
struct Windows {
    tats: HashMap<String, Instant>,
    ops: u32,
}

/// Checks between sweeps of expired windows.
const SWEEP_EVERY: u32 = 4096;

impl Windows {
    /// All-or-nothing: an event refused by one tier counts against none.
    fn check(&mut self, checks: &[Check], now: Instant) -> Result<(), Limited> {
        self.ops += 1;
        if self.ops >= SWEEP_EVERY {
            self.ops = 0;
            self.tats.retain(|_, tat| *tat > now);
        }
        let mut next = Vec::with_capacity(checks.len());
        let mut refused: Option<Limited> = None;
        for check in checks {
            match gcra(self.tats.get(&check.key).copied(), check.rate, now) {
                Ok(tat) => next.push(tat),
                Err(wait) => {
                    if refused.as_ref().is_none_or(|r| wait > r.retry_after) {
                        refused = Some(Limited {
                            tier: check.tier,
                            retry_after: wait,
                        });
                    }
                }
            }
        }
        if let Some(refused) = refused {
            return Err(refused);
        }
        for (check, tat) in checks.iter().zip(next) {
            self.tats.insert(check.key.clone(), tat);
        }
        Ok(())
    }
}

/// Every window of this edge: local ones, and the shared Redis when set.
pub(crate) struct Limiter {
    local: Mutex<Windows>,
    redis: OnceLock<shared::RedisWindows>,
}

impl Limiter {
    pub fn new() -> Self {
        Self {
            local: Mutex::new(Windows::default()),
            redis: OnceLock::new(),
        }
    }

    /// Shares the windows through the Redis at `url` (a `rediss://` one
    /// verified against `ca_file`), under `prefix`.
    pub fn use_redis(&self, url: &str, ca_file: Option<&std::path::Path>, prefix: &str) {
        match shared::RedisWindows::new(url, ca_file, prefix) {
            Ok(redis) => {
                let _ = self.redis.set(redis);
            }
            Err(e) => {
                tracing::warn!(error = %e, "rate limits stay per edge: bad redis url");
            }
        }
    }

    /// Whether one more event fits every window in `checks` (and counts it).
    pub async fn check(&self, checks: &[Check]) -> Result<(), Limited> {
        let checks: Vec<Check> = checks.iter().filter(|c| !c.rate.off()).cloned().collect();
        if checks.is_empty() {
            return Ok(());
        }
        if let Some(redis) = self.redis.get()
            && let Some(outcome) = redis.check(&checks).await
        {
            return outcome;
        }
        self.local
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .check(&checks, Instant::now())
    }
}

/// The key of an address: IPv4 as is, IPv6 by its /64 (one host's block).
fn ip_key(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => v4.to_string(),
            None => {
                let s = v6.segments();
                format!("{:x}:{:x}:{:x}:{:x}::", s[0], s[1], s[2], s[3])
            }
        },
    }
}

/// The per-user window of a rate family.
fn family_rate(config: &EdgeConfig, family: RateFamily, anonymous: bool) -> Rate {
    let min = Rate::per_min;
    match family {
        RateFamily::Typing => Rate::new(config.rate_typing_per_10s, Duration::from_secs(10)),
        RateFamily::Receipts => min(config.rate_receipts_per_min),
        RateFamily::PresenceSet => min(config.rate_presence_set_per_min),
        RateFamily::CallInvite => min(config.rate_call_invite_per_min),
        RateFamily::Reactions => min(config.rate_reactions_per_min),
        RateFamily::RoomCreate => {
            let count = if anonymous {
                config.rate_room_create_anonymous_per_hour
            } else {
                config.rate_room_create_per_hour
            };
            Rate::new(count, Duration::from_secs(3600))
        }
    }
}

/// The shared windows a command of `kind` counts against.
pub(crate) fn command_checks(
    config: &EdgeConfig,
    spec: Option<&Spec>,
    user: Option<(&str, bool)>,
    ip: IpAddr,
) -> Vec<Check> {
    let mut checks = Vec::new();
    let Some((user, anonymous)) = user else {
        return checks;
    };
    if spec.is_some_and(|s| s.message) {
        let (per_min, per_hour, tier) = if anonymous {
            (
                config.rate_anonymous_per_min,
                config.rate_anonymous_per_hour,
                "anonymous",
            )
        } else {
            (config.rate_user_per_min, config.rate_user_per_hour, "user")
        };
        checks.push(Check {
            key: format!("u:{user}:m"),
            rate: Rate::per_min(per_min),
            tier,
        });
        checks.push(Check {
            key: format!("u:{user}:h"),
            rate: Rate::new(per_hour, Duration::from_secs(3600)),
            tier,
        });
        checks.push(Check {
            key: format!("ip:{}:m", ip_key(ip)),
            rate: Rate::per_min(config.rate_ip_messages_per_min),
            tier: "ip_messages",
        });
        checks.push(Check {
            key: "global:m".into(),
            rate: Rate::per_min(config.rate_global_messages_per_min),
            tier: "global_messages",
        });
    }
    if let Some(family) = spec.and_then(|s| s.family) {
        let name = family.as_str();
        checks.push(Check {
            key: format!("u:{user}:{name}"),
            rate: family_rate(config, family, anonymous),
            tier: name,
        });
    }
    checks
}

/// The windows a new connection from `ip` counts against.
pub(crate) fn connect_checks(config: &EdgeConfig, ip: IpAddr) -> Vec<Check> {
    vec![
        Check {
            key: format!("ip:{}:c", ip_key(ip)),
            rate: Rate::per_min(config.rate_ip_connects_per_min),
            tier: "ip_connects",
        },
        Check {
            key: "global:c".into(),
            rate: Rate::per_min(config.rate_global_connects_per_min),
            tier: "global_connects",
        },
    ]
}

/// A connection's own window and its recent violations.
pub(crate) struct ConnLimits {
    commands: Option<Instant>,
    violations: VecDeque<Instant>,
}

impl ConnLimits {
    pub fn new() -> Self {
        Self {
            commands: None,
            violations: VecDeque::new(),
        }
    }

    /// Counts one command against the connection's window.
    fn command(&mut self, rate: Rate, now: Instant) -> Result<(), Limited> {
        if rate.off() {
            return Ok(());
        }
        match gcra(self.commands, rate, now) {
            Ok(tat) => {
                self.commands = Some(tat);
                Ok(())
            }
            Err(retry_after) => Err(Limited {
                tier: "connection",
                retry_after,
            }),
        }
    }

    /// Records a violation; true when `max` happened within the last minute.
    fn violation(&mut self, max: u32, now: Instant) -> bool {
        let minute = Duration::from_secs(60);
        while self
            .violations
            .front()
            .is_some_and(|t| now.duration_since(*t) >= minute)
        {
            self.violations.pop_front();
        }
        self.violations.push_back(now);
        self.violations.len() >= max.max(1) as usize
    }
}

/// Runs before every command (`spec` is `None` for an unknown `type`):
/// `Err` is the command's answer instead.
pub(crate) async fn admit(
    shared: &Shared,
    limits: &mut ConnLimits,
    user: Option<(&str, bool)>,
    ip: IpAddr,
    spec: Option<&Spec>,
) -> Result<(), CommandError> {
    let config = &shared.config;
    let rate = Rate::per_min(config.rate_conn_commands_per_min);
    let mut outcome = limits.command(rate, Instant::now());
    if outcome.is_ok() {
        let checks = command_checks(config, spec, user, ip);
        outcome = shared.limiter.check(&checks).await;
    }
    let Err(limited) = outcome else {
        return Ok(());
    };
    shared
        .metrics
        .rate_limited
        .get_or_create(&[("tier", limited.tier)])
        .inc();
    log(
        SecurityEvent::RateLimited,
        Some(ip),
        user.map(|(id, _)| id),
        limited.tier,
    );
    let mut error = CommandError::new(
        ErrorCode::RateLimited,
        format!("too many requests ({})", limited.tier),
    );
    error.retry_after_ms = Some((limited.retry_after.as_millis() as u64).max(1));
    if limits.violation(config.rate_violations_close, Instant::now()) {
        error.close = Some(CloseCode::RateViolations);
    }
    Err(error)
}

/// The Redis side: one script checks and counts every window at once.
mod shared {
    use std::time::Duration;

    use redis::aio::ConnectionManager;
    use tokio::time::Instant;

    use super::{Check, Limited};

    /// GCRA over several keys, all-or-nothing, times in (fractional) ms.
    /// ARGV: now, then interval and period per key. Returns
    /// `{0}` when allowed, `{index, wait_ms}` of the worst refusal otherwise.
    const SCRIPT: &str = r"
local now = tonumber(ARGV[1])
local worst, worst_i = 0, 0
local next = {}
for i, key in ipairs(KEYS) do
  local interval = tonumber(ARGV[2 * i])
  local period = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', key) or now)
  if tat < now then tat = now end
  local n = tat + interval
  local wait = n - (now + period)
  if wait > 0 and wait > worst then worst, worst_i = wait, i end
  next[i] = n
end
if worst_i > 0 then return {worst_i, math.ceil(worst)} end
for i, key in ipairs(KEYS) do
  local period = tonumber(ARGV[2 * i + 1])
  redis.call('SET', key, string.format('%.3f', next[i]), 'PX', math.ceil(period))
end
return {0}
";

    /// How long a check may wait on Redis before memory answers instead.
    const CALL_TIMEOUT: Duration = Duration::from_millis(250);
    /// Pause between attempts to reach a Redis that is down.
    const RETRY: Duration = Duration::from_secs(1);

    pub(super) struct RedisWindows {
        client: redis::Client,
        prefix: String,
        script: redis::Script,
        state: std::sync::Mutex<State>,
    }

    #[derive(Default)]
    struct State {
        conn: Option<ConnectionManager>,
        /// No connection attempt before this.
        retry_at: Option<Instant>,
        /// Last time a failure was logged (at most one line per RETRY).
        warned_at: Option<Instant>,
    }

    impl RedisWindows {
        pub fn new(
            url: &str,
            ca_file: Option<&std::path::Path>,
            prefix: &str,
        ) -> redis::RedisResult<Self> {
            Ok(Self {
                client: common::redis_client::open(url, ca_file)?,
                prefix: prefix.to_string(),
                script: redis::Script::new(SCRIPT),
                state: Default::default(),
            })
        }

        fn state(&self) -> std::sync::MutexGuard<'_, State> {
            self.state.lock().unwrap_or_else(|p| p.into_inner())
        }

        async fn connection(&self) -> Option<ConnectionManager> {
            {
                let mut state = self.state();
                if let Some(conn) = &state.conn {
                    return Some(conn.clone());
                }
                let now = Instant::now();
                if state.retry_at.is_some_and(|at| now < at) {
                    return None;
                }
                state.retry_at = Some(now + RETRY);
            }
            let connect = ConnectionManager::new(self.client.clone());
            match tokio::time::timeout(CALL_TIMEOUT * 2, connect).await {
                Ok(Ok(conn)) => {
                    self.state().conn = Some(conn.clone());
                    Some(conn)
                }
                Ok(Err(e)) => {
                    self.warn(&e.to_string());
                    None
                }
                Err(_) => {
                    self.warn("connect timed out");
                    None
                }
            }
        }

        fn warn(&self, error: &str) {
            let mut state = self.state();
            let now = Instant::now();
            if state.warned_at.is_none_or(|at| now >= at + RETRY) {
                state.warned_at = Some(now);
                tracing::warn!(
                    error,
                    "rate-limit redis unavailable; limits are per edge meanwhile"
                );
            }
        }

        /// The shared answer, or `None` when Redis cannot give one.
        pub async fn check(&self, checks: &[Check]) -> Option<Result<(), Limited>> {
            let mut conn = self.connection().await?;
            let mut invocation = self.script.prepare_invoke();
            invocation.arg(common::ids::now_ms() as f64);
            for check in checks {
                invocation.key(format!("{}{}", self.prefix, check.key));
                let interval = check.rate.interval().as_secs_f64() * 1000.0;
                let period = check.rate.period.as_secs_f64() * 1000.0;
                invocation.arg(interval).arg(period);
            }
            let call = invocation.invoke_async::<Vec<u64>>(&mut conn);
            let reply = match tokio::time::timeout(CALL_TIMEOUT, call).await {
                Ok(Ok(reply)) => reply,
                Ok(Err(e)) => {
                    self.warn(&e.to_string());
                    return None;
                }
                Err(_) => {
                    self.warn("call timed out");
                    return None;
                }
            };
            match reply.as_slice() {
                [0] => Some(Ok(())),
                [index, wait_ms] => {
                    let check = checks.get((*index as usize).checked_sub(1)?)?;
                    Some(Err(Limited {
                        tier: check.tier,
                        retry_after: Duration::from_millis((*wait_ms).max(1)),
                    }))
                }
                _ => None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use protocol::CommandKind;

    use super::*;

    fn spec(name: &str) -> Option<&'static Spec> {
        CommandKind::from_name(name).map(CommandKind::spec)
    }

    fn check(key: &str, count: u32, period_s: u64) -> Check {
        Check {
            key: key.into(),
            rate: Rate::new(count, Duration::from_secs(period_s)),
            tier: "test",
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_window_allows_its_count_then_refuses_until_it_refills() {
        let limiter = Limiter::new();
        let c = [check("k", 60, 60)];
        for _ in 0..60 {
            limiter.check(&c).await.expect("within the burst");
        }
        let refused = limiter.check(&c).await.expect_err("61st in a minute");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_millis(999)).await;
        assert!(limiter.check(&c).await.is_err(), "not yet");
        tokio::time::advance(Duration::from_millis(1)).await;
        limiter.check(&c).await.expect("one interval later");
        assert!(limiter.check(&c).await.is_err(), "only one refilled");
        tokio::time::advance(Duration::from_secs(60)).await;
        for _ in 0..60 {
            limiter
                .check(&c)
                .await
                .expect("a full minute later: all again");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn tiers_are_all_or_nothing_and_the_longest_wait_wins() {
        let limiter = Limiter::new();
        let both = [check("minute", 60, 60), check("hour", 3, 3600)];
        for _ in 0..3 {
            limiter.check(&both).await.expect("allowed");
        }
        let refused = limiter.check(&both).await.expect_err("hour tier full");
        assert_eq!(refused.retry_after, Duration::from_secs(1200));
        // The refused event did not count against the minute tier.
        let minute = [check("minute", 60, 60)];
        for _ in 0..57 {
            limiter.check(&minute).await.expect("57 left in the minute");
        }
        assert!(limiter.check(&minute).await.is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_rate_of_zero_is_unlimited() {
        let limiter = Limiter::new();
        for _ in 0..10_000 {
            limiter.check(&[check("off", 0, 60)]).await.expect("off");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn typing_is_ten_per_ten_seconds() {
        let config = EdgeConfig::default();
        let ip: IpAddr = "203.0.113.9".parse().expect("ip");
        let checks = command_checks(&config, spec("typing.start"), Some(("u1", false)), ip);
        let limiter = Limiter::new();
        for _ in 0..10 {
            limiter.check(&checks).await.expect("ten");
        }
        let refused = limiter.check(&checks).await.expect_err("eleventh");
        assert_eq!(refused.tier, "typing");
        assert_eq!(refused.retry_after, Duration::from_secs(1));
        tokio::time::advance(Duration::from_secs(10)).await;
        limiter.check(&checks).await.expect("window passed");
    }

    #[test]
    fn commands_count_against_the_right_tiers() {
        let config = EdgeConfig::default();
        let ip: IpAddr = "2001:db8:1:2:3:4:5:6".parse().expect("ip");
        let tiers = |kind: &str, user: Option<(&str, bool)>| -> Vec<(&'static str, u32)> {
            command_checks(&config, spec(kind), user, ip)
                .into_iter()
                .map(|c| (c.tier, c.rate.count))
                .collect()
        };
        assert_eq!(
            tiers("message.send", Some(("u", false))),
            [
                ("user", 60),
                ("user", 1000),
                ("ip_messages", 200),
                ("global_messages", 0)
            ]
        );
        assert_eq!(
            tiers("message.edit", Some(("u", true)))[..2],
            [("anonymous", 10), ("anonymous", 100)]
        );
        assert_eq!(
            tiers("receipt.read", Some(("u", false))),
            [("receipts", 100)]
        );
        assert_eq!(
            tiers("presence.set", Some(("u", false))),
            [("presence_set", 20)]
        );
        assert_eq!(
            tiers("call.invite", Some(("u", false))),
            [("call_invite", 5)]
        );
        assert_eq!(
            tiers("reaction.remove", Some(("u", false))),
            [("reactions", 50)]
        );
        assert!(tiers("room.list", Some(("u", false))).is_empty());
        assert_eq!(
            tiers("room.create", Some(("u", false))),
            [("room_create", 30)]
        );
        assert_eq!(
            tiers("room.create", Some(("u", true))),
            [("room_create", 5)],
            "anonymous users create fewer rooms"
        );
        assert!(tiers("message.send", None).is_empty(), "not signed in yet");
        let ip_key = &command_checks(&config, spec("message.send"), Some(("u", false)), ip)[2].key;
        assert_eq!(ip_key, "ip:2001:db8:1:2:::m", "IPv6 counts by /64");
        let c = connect_checks(&config, "198.51.100.4".parse().expect("ip"));
        assert_eq!((c[0].tier, c[0].rate.count), ("ip_connects", 20));
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_has_its_own_window_and_violation_count() {
        let mut limits = ConnLimits::new();
        let rate = Rate::per_min(300);
        for _ in 0..300 {
            limits.command(rate, Instant::now()).expect("300 a minute");
        }
        let refused = limits.command(rate, Instant::now()).expect_err("301st");
        assert_eq!(refused.tier, "connection");
        assert_eq!(refused.retry_after, Duration::from_millis(200));

        for _ in 0..9 {
            assert!(!limits.violation(10, Instant::now()));
            tokio::time::advance(Duration::from_secs(5)).await;
        }
        // The first violation is 45 s old: the tenth within a minute.
        assert!(limits.violation(10, Instant::now()));
        let mut spread = ConnLimits::new();
        for _ in 0..20 {
            assert!(!spread.violation(10, Instant::now()), "one every 7 s");
            tokio::time::advance(Duration::from_secs(7)).await;
        }
    }

    /// Two limiters on one Redis (two edges) share the windows.
    #[tokio::test]
    async fn redis_windows_are_shared_by_every_edge() {
        let Some(url) = common::testing::test_redis_url() else {
            return;
        };
        let prefix = format!("{}:rl:", common::ids::new_id("test"));
        let (a, b) = (Limiter::new(), Limiter::new());
        a.use_redis(&url, None, &prefix);
        b.use_redis(&url, None, &prefix);
        let c = [check("u:alice:m", 4, 60)];
        for limiter in [&a, &b, &a, &b] {
            limiter.check(&c).await.expect("four between both edges");
        }
        let refused = b.check(&c).await.expect_err("fifth, on either edge");
        assert_eq!(refused.tier, "test");
        assert!(
            refused.retry_after > Duration::from_secs(14)
                && refused.retry_after <= Duration::from_secs(15),
            "{:?}",
            refused.retry_after
        );
        assert!(a.check(&c).await.is_err());
        // Local memory never saw these: the windows were in Redis.
        assert!(a.local.lock().expect("lock").tats.is_empty());
    }

    /// A Redis that cannot be reached falls back to this edge's memory.
    #[tokio::test]
    async fn an_unreachable_redis_falls_back_to_local_limits() {
        let dead = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
            l.local_addr().expect("addr")
        };
        let limiter = Limiter::new();
        limiter.use_redis(&format!("redis://{dead}"), None, "x:");
        let c = [check("k", 2, 60)];
        limiter.check(&c).await.expect("first, locally");
        limiter.check(&c).await.expect("second, locally");
        assert!(limiter.check(&c).await.is_err(), "still limited");
    }
}
