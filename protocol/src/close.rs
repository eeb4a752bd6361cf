//! The one table of WebSocket close codes: each code's name, what it means
//! and whether a client should reconnect. Every close the edge sends takes
//! its code and reason from here; docs/protocol.md carries the rendered
//! table (a test keeps the two equal).

/// Why the server closed a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CloseCode {
    /// No command within `edge.idle_timeout_ms`.
    Idle,
    /// The server is shutting down (drain).
    Draining,
    /// Repeated binary frames.
    BinaryFrames,
    /// A text frame that is not UTF-8.
    InvalidUtf8,
    /// A frame or message over `max_message_bytes`.
    TooLarge,
    /// No `auth` within `auth_timeout_ms`.
    AuthTimeout,
    /// The token was refused.
    InvalidToken,
    /// The token expired or was revoked.
    TokenExpired,
    /// The token was revoked (same code as an expired one).
    TokenRevoked,
    /// The outbound queue went over its bound.
    SlowConsumer,
    /// The user is at the per-user connection limit.
    TooManyConnections,
    /// No pong within `pong_timeout_ms`.
    NoPong,
    /// Too many `rate_limited` answers within a minute.
    RateViolations,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct CloseRow {
    pub close: CloseCode,
    /// The WebSocket close code.
    pub code: u16,
    /// The close frame's reason text.
    pub reason: &'static str,
    /// When the server sends it (docs/protocol.md).
    pub when: &'static str,
    /// Whether a client should reconnect (with `since`) after it.
    pub reconnect: Reconnect,
}

/// What a client should do after a close.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reconnect {
    /// Reconnect with the usual backoff.
    Yes,
    /// Reconnect only with a new token (or after signing in again).
    NewToken,
    /// Reconnect, but back off longer than usual.
    Later,
    /// Do not reconnect automatically.
    No,
}

impl Reconnect {
    fn as_str(self) -> &'static str {
        match self {
            Reconnect::Yes => "yes",
            Reconnect::NewToken => "with a new token",
            Reconnect::Later => "yes, after a longer backoff",
            Reconnect::No => "no",
        }
    }
}

/// Every close code, in code order.
pub const CLOSE_CODES: &[CloseRow] = &[
    CloseRow {
        close: CloseCode::Idle,
        code: 1000,
        reason: "idle",
        when: "no command within `edge.idle_timeout_ms` (30 min)",
        reconnect: Reconnect::Yes,
    },
    CloseRow {
        close: CloseCode::Draining,
        code: 1001,
        reason: "server draining",
        when: "the server is shutting down — reconnect (with `since`)",
        reconnect: Reconnect::Yes,
    },
    CloseRow {
        close: CloseCode::BinaryFrames,
        code: 1003,
        reason: "binary frames are not supported",
        when: "repeated binary frames",
        reconnect: Reconnect::No,
    },
    CloseRow {
        close: CloseCode::InvalidUtf8,
        code: 1007,
        reason: "invalid UTF-8",
        when: "a text frame that is not valid UTF-8",
        reconnect: Reconnect::No,
    },
    CloseRow {
        close: CloseCode::TooLarge,
        code: 1009,
        reason: "message too large",
        when: "a frame or message over `max_message_bytes` (refused before it is buffered)",
        reconnect: Reconnect::Yes,
    },
    CloseRow {
        close: CloseCode::AuthTimeout,
        code: 4001,
        reason: "authentication timeout",
        when: "no `auth` within `auth_timeout_ms`",
        reconnect: Reconnect::Yes,
    },
    CloseRow {
        close: CloseCode::InvalidToken,
        code: 4002,
        reason: "invalid token",
        when: "invalid token",
        reconnect: Reconnect::No,
    },
    CloseRow {
        close: CloseCode::TokenExpired,
        code: 4003,
        reason: "token expired",
        when: "expired token",
        reconnect: Reconnect::NewToken,
    },
    CloseRow {
        close: CloseCode::TokenRevoked,
        code: 4003,
        reason: "token revoked",
        when: "revoked token",
        reconnect: Reconnect::NewToken,
    },
    CloseRow {
        close: CloseCode::SlowConsumer,
        code: 4008,
        reason: "slow consumer",
        when: "outbound queue over its bound (slow consumer)",
        reconnect: Reconnect::Later,
    },
    CloseRow {
        close: CloseCode::TooManyConnections,
        code: 4009,
        reason: "too many connections",
        when: "the user already has `edge.max_conns_per_user` connections on this edge (after `auth`, or right after `hello` for an upgrade-time token)",
        reconnect: Reconnect::Later,
    },
    CloseRow {
        close: CloseCode::NoPong,
        code: 4012,
        reason: "no pong",
        when: "no pong within `pong_timeout_ms`",
        reconnect: Reconnect::Yes,
    },
    CloseRow {
        close: CloseCode::RateViolations,
        code: 4029,
        reason: "too many rate-limit violations",
        when: "`edge.rate_violations_close` (10) `rate_limited` answers within a minute",
        reconnect: Reconnect::Later,
    },
];

impl CloseCode {
    /// This close's row of [`CLOSE_CODES`].
    pub fn row(self) -> &'static CloseRow {
        CLOSE_CODES
            .iter()
            .find(|row| row.close == self)
            .unwrap_or(&CLOSE_CODES[0])
    }

    /// The WebSocket close code.
    pub fn code(self) -> u16 {
        self.row().code
    }

    /// The close frame's reason text.
    pub fn reason(self) -> &'static str {
        self.row().reason
    }

    /// `(code, reason)` as a close frame carries them.
    pub fn frame(self) -> (u16, &'static str) {
        (self.code(), self.reason())
    }
}

/// The close-code table of docs/protocol.md, rendered from [`CLOSE_CODES`].
pub fn markdown_table() -> String {
    let mut out = String::from("| code | reason | when | reconnect |\n|---|---|---|---|\n");
    for row in CLOSE_CODES {
        out.push_str(&format!(
            "| {} | `{}` | {} | {} |\n",
            row.code,
            row.reason,
            row.when,
            row.reconnect.as_str()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_close_has_exactly_one_row() {
        for row in CLOSE_CODES {
            let rows = CLOSE_CODES.iter().filter(|r| r.close == row.close).count();
            assert_eq!(rows, 1, "{:?}", row.close);
            assert_eq!(row.close.frame(), (row.code, row.reason));
            // A close frame's reason fits its 123-byte limit.
            assert!(row.reason.len() <= 123);
        }
        assert!(CLOSE_CODES.windows(2).all(|w| w[0].code <= w[1].code));
    }

    #[test]
    fn protocol_md_carries_the_table() {
        let doc = include_str!("../../docs/protocol.md");
        let table = markdown_table();
        assert!(
            doc.contains(&table),
            "docs/protocol.md's close-code table is stale; it must read:\n{table}"
        );
    }
}
