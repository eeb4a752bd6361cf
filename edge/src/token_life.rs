//! A connection's token over time: `token.expiring` a lead time before
//! `exp`, close 4003 at `exp` unless `refresh{token}` swapped in a newer
//! token of the same user.

use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use protocol::{ServerFrame, TokenExpiring};
use tokio::time::Instant;

/// What is due next for a connection's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Send `token.expiring`.
    Warn,
    /// Close with 4003.
    Expire,
}

/// The schedule of one connection's token (none before `auth`).
#[derive(Debug, Default)]
pub(crate) struct Life {
    /// `exp` of the current token, Unix ms.
    expires_at: i64,
    warn_at: Option<Instant>,
    expire_at: Option<Instant>,
}

impl Life {
    /// Schedules a token expiring at `expires_at` (Unix ms), warning `lead`
    /// before; a token with no expiry (0) schedules nothing.
    pub(crate) fn set(&mut self, expires_at: i64, lead: Duration) {
        self.expires_at = expires_at;
        if expires_at <= 0 {
            self.warn_at = None;
            self.expire_at = None;
            return;
        }
        let now = Instant::now();
        let left =
            Duration::from_millis(u64::try_from(expires_at - common::ids::now_ms()).unwrap_or(0));
        self.expire_at = Some(now + left);
        self.warn_at = Some(now + left.saturating_sub(lead));
    }

    /// The next step and when it is due.
    pub(crate) fn next(&self) -> Option<(Instant, Step)> {
        match (self.warn_at, self.expire_at) {
            (Some(at), _) => Some((at, Step::Warn)),
            (None, Some(at)) => Some((at, Step::Expire)),
            (None, None) => None,
        }
    }

    /// Takes `step` as done; returns the `token.expiring` frame to send for
    /// a warning.
    pub(crate) fn fire(&mut self, step: Step) -> Option<Utf8Bytes> {
        match step {
            Step::Warn => {
                self.warn_at = None;
                let left = self.expire_at.map_or(0, |at| {
                    at.saturating_duration_since(Instant::now()).as_millis()
                });
                let frame = ServerFrame::TokenExpiring(TokenExpiring {
                    expires_in_ms: u64::try_from(left).unwrap_or(u64::MAX),
                    expires_at: self.expires_at,
                });
                Some(Utf8Bytes::from(frame.to_json()))
            }
            Step::Expire => {
                self.expire_at = None;
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_warning_comes_lead_before_exp_and_the_close_at_exp() {
        let mut life = Life::default();
        assert_eq!(life.next(), None, "nothing before auth");
        let start = Instant::now();
        let expires_at = common::ids::now_ms() + 120_000;
        life.set(expires_at, Duration::from_secs(60));

        let (at, step) = life.next().expect("scheduled");
        assert_eq!(step, Step::Warn);
        tokio::time::sleep_until(at).await;
        let warned = start.elapsed();
        assert!(
            warned >= Duration::from_millis(59_900) && warned <= Duration::from_millis(60_100),
            "{warned:?}"
        );
        let frame: serde_json::Value =
            serde_json::from_str(life.fire(step).expect("a frame").as_str()).expect("json");
        assert_eq!(frame["type"], "token.expiring");
        assert_eq!(frame["expires_at"], expires_at);
        let left = frame["expires_in_ms"].as_i64().expect("ms");
        assert!((59_000..=61_000).contains(&left), "{left}");

        let (at, step) = life.next().expect("expiry");
        assert_eq!(step, Step::Expire);
        tokio::time::sleep_until(at).await;
        let expired = start.elapsed();
        assert!(
            expired >= Duration::from_millis(119_900) && expired <= Duration::from_millis(120_100),
            "{expired:?}"
        );
        assert!(life.fire(step).is_none());
        assert_eq!(life.next(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refresh_reschedules_and_a_short_token_warns_at_once() {
        let mut life = Life::default();
        let start = Instant::now();
        life.set(common::ids::now_ms() + 10_000, Duration::from_secs(60));
        let (at, step) = life.next().expect("scheduled");
        assert_eq!(step, Step::Warn);
        assert!(
            at <= start + Duration::from_millis(1),
            "shorter than the lead: warn now"
        );
        life.fire(step);
        // A refresh before exp: a new warning, later expiry.
        life.set(common::ids::now_ms() + 300_000, Duration::from_secs(60));
        let (at, step) = life.next().expect("rescheduled");
        assert_eq!(step, Step::Warn);
        assert!(
            at >= start + Duration::from_millis(239_000),
            "{:?}",
            at - start
        );
        life.set(0, Duration::from_secs(60));
        assert_eq!(life.next(), None, "no exp, nothing to do");
    }
}
