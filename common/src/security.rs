//! The security event log: one line per event on the `security` target, so
//! operators can route it apart from ordinary logs. Addresses are masked
//! (IPv4 keeps its first three octets, IPv6 its first 64 bits) and no event
//! carries a token.

use std::net::IpAddr;

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
}

impl SecurityEvent {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::AuthFailed => "auth_failed",
            Self::OriginRejected => "origin_rejected",
            Self::RateLimited => "rate_limited",
            Self::ConnLimited => "conn_limited",
            Self::IpBlocked => "ip_blocked",
            Self::ContentFlagged => "content_flagged",
            Self::TokenRevoked => "token_revoked",
        }
    }
}

/// Writes one security event. `reason` is a short machine-readable word
/// (`expired`, `per_ip`, `html`…), never user input or a credential.
pub fn log(event: SecurityEvent, addr: Option<IpAddr>, user: Option<&str>, reason: &str) {
    let addr = addr.map(mask_ip).unwrap_or_else(|| "-".to_string());
    tracing::warn!(
        target: "security",
        event = event.as_str(),
        addr = %addr,
        user = user.unwrap_or("-"),
        reason,
        "security event"
    );
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
