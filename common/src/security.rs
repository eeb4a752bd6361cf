//! The security event log: one line per event on the `security` target, so
//! operators can route it apart from ordinary logs. Addresses are masked
//! (IPv4 keeps its first three octets, IPv6 its first 64 bits) and no event
//! carries a token. A flood of refusals cannot flood the log: each kind
//! writes at most [`LINES_PER_SECOND`] lines a second, and the first line
//! after a suppressed stretch says how many were left out (`suppressed`).

use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most lines one kind of event writes per second.
pub const LINES_PER_SECOND: u32 = 100;

/// The `tracing` target every security event is written to.
pub const TARGET: &str = "security";

/// What happened; the `event` field of the log line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityEvent {
    AuthFailed,
    OriginRejected,
    RateLimited,
    ConnLimited,
    IpBlocked,
    ContentFlagged,
    TokenRevoked,
    CallerRefused,
}

const KINDS: usize = 8;

impl SecurityEvent {
    fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "auth_failed",
            Self::OriginRejected => "origin_rejected",
            Self::RateLimited => "rate_limited",
            Self::ConnLimited => "conn_limited",
            Self::IpBlocked => "ip_blocked",
            Self::ContentFlagged => "content_flagged",
            Self::TokenRevoked => "token_revoked",
            Self::CallerRefused => "caller_refused",
        }
    }
}

/// Writes one security event. `reason` is a short machine-readable word
/// (`expired`, `per_ip`, `html`…), never user input or a credential.
pub fn log(event: SecurityEvent, addr: Option<IpAddr>, user: Option<&str>, reason: &str) {
    static THROTTLES: Mutex<[Throttle; KINDS]> = Mutex::new([Throttle::NEW; KINDS]);
    let suppressed = {
        let mut throttles = THROTTLES.lock().unwrap_or_else(|p| p.into_inner());
        match throttles[event.index()].admit(Instant::now(), LINES_PER_SECOND) {
            Some(suppressed) => suppressed,
            None => return,
        }
    };
    let addr = addr.map(mask_ip).unwrap_or_else(|| "-".to_string());
    tracing::warn!(
        target: "security",
        event = event.as_str(),
        addr = %addr,
        user = user.unwrap_or("-"),
        reason,
        suppressed,
        "security event"
    );
}

/// One kind's budget of lines in the current one-second window.
#[derive(Debug, Clone, Copy)]
struct Throttle {
    window_start: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Throttle {
    const NEW: Self = Self {
        window_start: None,
        written: 0,
        suppressed: 0,
    };

    /// `Some(suppressed before this one)` when a line may be written now;
    /// `None` (and one more suppressed) when the window's budget is spent.
    fn admit(&mut self, now: Instant, per_second: u32) -> Option<u64> {
        let expired = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= Duration::from_secs(1));
        if expired {
            self.window_start = Some(now);
            self.written = 0;
        }
        if self.written >= per_second {
            self.suppressed += 1;
            return None;
        }
        self.written += 1;
        Some(std::mem::take(&mut self.suppressed))
    }
}

/// `203.0.113.7` → `203.0.113.xxx`; `2001:db8:1:2:3:4:5:6` → `2001:db8:1:2::/64`.
pub fn mask_ip(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => {
            let [a, b, c, _] = v4.octets();
            format!("{a}.{b}.{c}.xxx")
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return mask_ip(IpAddr::V4(v4));
            }
            let s = v6.segments();
            format!("{:x}:{:x}:{:x}:{:x}::/64", s[0], s[1], s[2], s[3])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_kind_writes_a_bounded_number_of_lines_and_counts_the_rest() {
        let start = Instant::now();
        let mut throttle = Throttle::NEW;
        let admitted = (0..120)
            .filter(|_| throttle.admit(start, 50).is_some())
            .count();
        assert_eq!(admitted, 50, "one second's budget");
        let later = start + Duration::from_millis(999);
        assert_eq!(throttle.admit(later, 50), None, "still the same window");
        let next = start + Duration::from_secs(1);
        assert_eq!(
            throttle.admit(next, 50),
            Some(71),
            "the next line says how many were left out"
        );
        assert_eq!(throttle.admit(next, 50), Some(0));
    }

    #[test]
    fn addresses_are_masked() {
        assert_eq!(
            mask_ip("203.0.113.7".parse().expect("address")),
            "203.0.113.xxx"
        );
        assert_eq!(
            mask_ip("2001:db8:1:2:3:4:5:6".parse().expect("address")),
            "2001:db8:1:2::/64"
        );
        assert_eq!(
            mask_ip("::ffff:10.1.2.3".parse().expect("address")),
            "10.1.2.xxx",
            "an IPv4-mapped address is masked as IPv4"
        );
    }
}
