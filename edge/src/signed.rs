//! Signed frames (optional, `edge.signed_frames`). The `auth` reply (or
//! `hello`, for an upgrade-time token) carries a per-session
//! `frame_secret`; every later command is sent as
//! `{"payload": "<command JSON>", "signature": "<hex>", "timestamp": <ms>, "nonce": "<id>"}`
//! where `signature = hex(HMAC-SHA256(frame_secret, "<timestamp>.<nonce>.<payload>"))`.
//! The timestamp must be within ±5 minutes of the server's clock, and a nonce
//! is accepted once within that window. Any failure answers `unauthorized`
//! and the command does not run.

use std::collections::{HashSet, VecDeque};

use common::ErrorCode;
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::Sha256;

use crate::frames::CommandError;

/// How far a frame's timestamp may be from the server's clock.
pub(crate) const WINDOW_MS: i64 = 5 * 60 * 1000;
/// Nonces remembered at most; past that, frames are refused until old ones
/// leave the window (the per-connection rate limit keeps honest clients far
/// below: 300 commands a minute is 1,500 per window).
const MAX_NONCES: usize = 4096;
pub(crate) const MAX_NONCE_BYTES: usize = 64;

/// A session's frame secret and the nonces seen within the window.
pub(crate) struct Signed {
    secret: String,
    seen: HashSet<String>,
    /// Nonces by arrival, with their frames' timestamps, for expiry.
    order: VecDeque<(i64, String)>,
}

/// Why a signed frame was refused (the security log's reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Malformed,
    BadSignature,
    Stale,
    Replayed,
    TooManyNonces,
}

impl Refusal {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Malformed => "malformed_signed_frame",
            Self::BadSignature => "bad_signature",
            Self::Stale => "stale_timestamp",
            Self::Replayed => "replayed_nonce",
            Self::TooManyNonces => "too_many_nonces",
        }
    }

    pub fn error(self) -> CommandError {
        let message = match self {
            Self::Malformed => "send {payload, signature, timestamp, nonce} (signed frames are on)",
            Self::BadSignature => "bad frame signature",
            Self::Stale => "frame timestamp outside the ±5 minute window",
            Self::Replayed => "frame nonce already used",
            Self::TooManyNonces => "too many frames in the window",
        };
        CommandError::new(ErrorCode::Unauthorized, message)
    }
}

impl Signed {
    pub fn new() -> Self {
        Self::with_secret(common::ids::random_secret(32))
    }

    pub(crate) fn with_secret(secret: String) -> Self {
        Self {
            secret,
            seen: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    pub fn secret(&self) -> &str {
        &self.secret
    }

    /// The command text inside a signed frame, once its signature, time and
    /// nonce check out; the refusal (and the outer `id`, if any) otherwise.
    pub fn open(&mut self, text: &str, now_ms: i64) -> Result<String, (Option<u64>, Refusal)> {
        let Ok(Value::Object(mut frame)) = serde_json::from_str::<Value>(text) else {
            return Err((None, Refusal::Malformed));
        };
        let id = frame.get("id").and_then(Value::as_u64);
        let fields = (
            frame.remove("payload"),
            frame.remove("signature"),
            frame.get("timestamp").and_then(Value::as_i64),
            frame.remove("nonce"),
        );
        let (
            Some(Value::String(payload)),
            Some(Value::String(signature)),
            Some(ts),
            Some(Value::String(nonce)),
        ) = fields
        else {
            return Err((id, Refusal::Malformed));
        };
        if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
            return Err((id, Refusal::Malformed));
        }
        let Some(signature) = decode_hex(&signature) else {
            return Err((id, Refusal::BadSignature));
        };
        let mut mac = Hmac::<Sha256>::new_from_slice(self.secret.as_bytes())
            .map_err(|_| (id, Refusal::BadSignature))?;
        mac.update(format!("{ts}.{nonce}.").as_bytes());
        mac.update(payload.as_bytes());
        if mac.verify_slice(&signature).is_err() {
            return Err((id, Refusal::BadSignature));
        }
        // `abs_diff`: a timestamp at either end of the range must not overflow.
        if now_ms.abs_diff(ts) > WINDOW_MS.unsigned_abs() {
            return Err((id, Refusal::Stale));
        }
        // Nonces of frames that left the window can go: those frames would
        // be refused as stale anyway.
        while self
            .order
            .front()
            .is_some_and(|(t, _)| now_ms - *t > WINDOW_MS)
        {
            if let Some((_, old)) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        if self.seen.contains(&nonce) {
            return Err((id, Refusal::Replayed));
        }
        if self.seen.len() >= MAX_NONCES {
            return Err((id, Refusal::TooManyNonces));
        }
        self.seen.insert(nonce.clone());
        self.order.push_back((ts, nonce));
        Ok(payload)
    }
}

fn decode_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sign(secret: &str, payload: &str, ts: i64, nonce: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("key");
        mac.update(format!("{ts}.{nonce}.{payload}").as_bytes());
        let signature: String = mac
            .finalize()
            .into_bytes()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect();
        json!({"payload": payload, "signature": signature, "timestamp": ts, "nonce": nonce})
            .to_string()
    }

    const NOW: i64 = 1_764_650_000_000;
    const PING: &str = r#"{"type":"ping","id":1}"#;

    #[test]
    fn a_valid_frame_opens_to_its_payload() {
        let mut s = Signed::with_secret("k".repeat(64));
        let frame = sign(s.secret(), PING, NOW - 1000, "n1");
        assert_eq!(s.open(&frame, NOW).expect("valid"), PING);
    }

    #[test]
    fn a_bad_signature_is_refused() {
        let mut s = Signed::with_secret("k".repeat(64));
        let frame = sign("another-secret", PING, NOW, "n1");
        assert_eq!(
            s.open(&frame, NOW).err(),
            Some((None, Refusal::BadSignature))
        );
        // A payload changed after signing.
        let frame = sign(s.secret(), PING, NOW, "n2").replace("ping", "pong");
        assert_eq!(
            s.open(&frame, NOW).err(),
            Some((None, Refusal::BadSignature))
        );
        assert_eq!(
            s.open(PING, NOW).err(),
            Some((Some(1), Refusal::Malformed)),
            "an unsigned command"
        );
    }

    #[test]
    fn a_replayed_nonce_is_refused() {
        let mut s = Signed::with_secret("k".repeat(64));
        let frame = sign(s.secret(), PING, NOW, "n1");
        s.open(&frame, NOW).expect("first");
        assert_eq!(
            s.open(&frame, NOW + 10).err(),
            Some((None, Refusal::Replayed))
        );
        let other = sign(s.secret(), PING, NOW, "n2");
        s.open(&other, NOW).expect("another nonce");
    }

    #[test]
    fn a_stale_or_future_timestamp_is_refused() {
        let mut s = Signed::with_secret("k".repeat(64));
        let old = sign(s.secret(), PING, NOW - WINDOW_MS - 1, "n1");
        assert_eq!(s.open(&old, NOW).err(), Some((None, Refusal::Stale)));
        let future = sign(s.secret(), PING, NOW + WINDOW_MS + 1, "n2");
        assert_eq!(s.open(&future, NOW).err(), Some((None, Refusal::Stale)));
        let edge = sign(s.secret(), PING, NOW - WINDOW_MS, "n3");
        s.open(&edge, NOW).expect("exactly at the window's edge");
    }

    #[test]
    fn a_timestamp_at_either_end_of_the_range_is_stale() {
        // A client holds its frame secret, so it can sign any timestamp;
        // the age was computed with a subtraction that overflowed (a panic
        // in debug builds).
        let mut s = Signed::with_secret("k".repeat(64));
        for (i, ts) in [i64::MIN, i64::MIN + 1, -NOW, i64::MAX]
            .into_iter()
            .enumerate()
        {
            let frame = sign(s.secret(), PING, ts, &format!("n{i}"));
            assert_eq!(
                s.open(&frame, NOW).err(),
                Some((None, Refusal::Stale)),
                "{ts}"
            );
        }
    }

    #[test]
    fn nonce_memory_is_bounded_and_expires() {
        let mut s = Signed::with_secret("k".repeat(64));
        for i in 0..MAX_NONCES {
            let frame = sign(s.secret(), PING, NOW, &format!("n{i}"));
            s.open(&frame, NOW).expect("within the bound");
        }
        let one_more = sign(s.secret(), PING, NOW, "extra");
        assert_eq!(
            s.open(&one_more, NOW).err(),
            Some((None, Refusal::TooManyNonces))
        );
        // Once the window has passed, the old nonces are forgotten.
        let later = NOW + WINDOW_MS + 1;
        let fresh = sign(s.secret(), PING, later, "extra");
        s.open(&fresh, later).expect("room again");
        assert_eq!(s.seen.len(), 1);
    }
}
