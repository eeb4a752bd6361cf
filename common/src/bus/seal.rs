//! Signed envelopes for buses that cross a network (Redis): whoever can
//! publish on Redis but does not hold the bus key cannot inject events,
//! revocations or blocks. Each payload is
//! `[version 1][timestamp ms, 8 bytes][HMAC-SHA256, 32 bytes][envelope]`;
//! the MAC covers the channel too, so an envelope cannot be replayed onto
//! another channel, and the timestamp bounds replays to a few minutes.
//! Rotation: publish with the new key while the old one is still accepted
//! (`bus.previous_signing_key`).

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::secret::Secret;

use super::{Envelope, decode, encode};

const VERSION: u8 = 1;
const HEADER: usize = 1 + 8 + 32;
/// How far a payload's timestamp may be from this clock.
const WINDOW_MS: i64 = 5 * 60 * 1000;

/// The key envelopes are signed with, and the one before it.
#[derive(Debug, Clone)]
pub struct BusKeys {
    current: Secret,
    previous: Option<Secret>,
}

/// Why a payload was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Not a signed payload of this version.
    Unsigned,
    /// Signed with neither key (or for another channel).
    BadSignature,
    /// Signed too long ago (or in the future).
    Stale,
    /// Signed, but not an envelope.
    Undecodable,
}

impl BusKeys {
    /// `previous` may be empty.
    pub fn new(current: Secret, previous: Secret) -> Self {
        Self {
            current,
            previous: (!previous.is_empty()).then_some(previous),
        }
    }

    /// The signed payload of `envelope` on `channel`.
    pub fn seal(&self, channel: &str, envelope: &Envelope, now_ms: i64) -> Vec<u8> {
        let body = encode(envelope);
        let ts = now_ms.to_be_bytes();
        let tag = mac(&self.current, channel, &ts, &body);
        let mut out = Vec::with_capacity(HEADER + body.len());
        out.push(VERSION);
        out.extend_from_slice(&ts);
        out.extend_from_slice(&tag);
        out.extend_from_slice(&body);
        out
    }

    /// The envelope of a payload received on `channel`, if it is genuine.
    pub fn open(&self, channel: &str, payload: &[u8], now_ms: i64) -> Result<Envelope, Refused> {
        if payload.len() < HEADER || payload[0] != VERSION {
            return Err(Refused::Unsigned);
        }
        let ts: [u8; 8] = payload[1..9].try_into().map_err(|_| Refused::Unsigned)?;
        let tag = &payload[9..HEADER];
        let body = &payload[HEADER..];
        let genuine = std::iter::once(&self.current)
            .chain(self.previous.as_ref())
            .any(|key| verify(key, channel, &ts, body, tag));
        if !genuine {
            return Err(Refused::BadSignature);
        }
        // `abs_diff`: a timestamp at either end of the range must not overflow.
        if now_ms.abs_diff(i64::from_be_bytes(ts)) > WINDOW_MS.unsigned_abs() {
            return Err(Refused::Stale);
        }
        decode(body).map_err(|_| Refused::Undecodable)
    }
}

fn keyed(key: &Secret, channel: &str, ts: &[u8; 8], body: &[u8]) -> Hmac<Sha256> {
    // HMAC takes keys of any length.
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key.expose().as_bytes())
        .unwrap_or_else(|_| unreachable!("HMAC accepts any key length"));
    mac.update(b"parley-bus-v1\0");
    mac.update(channel.as_bytes());
    mac.update(b"\0");
    mac.update(ts);
    mac.update(body);
    mac
}

fn mac(key: &Secret, channel: &str, ts: &[u8; 8], body: &[u8]) -> [u8; 32] {
    keyed(key, channel, ts, body).finalize().into_bytes().into()
}

fn verify(key: &Secret, channel: &str, ts: &[u8; 8], body: &[u8], tag: &[u8]) -> bool {
    // Constant-time comparison.
    keyed(key, channel, ts, body).verify_slice(tag).is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(current: &str, previous: &str) -> BusKeys {
        BusKeys::new(
            Secret::new(current.repeat(32)),
            Secret::new(previous.repeat(32)),
        )
    }

    fn envelope() -> Envelope {
        super::super::envelope("r_1", 7, "message.new", "{}".into())
    }

    #[test]
    fn only_genuine_fresh_envelopes_for_their_channel_open() {
        let now = 1_000_000_000;
        let k = keys("a", "");
        let original = envelope();
        let sealed = k.seal("room:r_1", &original, now);
        assert_eq!(k.open("room:r_1", &sealed, now + 1000), Ok(original));
        assert_eq!(k.open("room:r_2", &sealed, now), Err(Refused::BadSignature));
        assert_eq!(
            k.open("room:r_1", &sealed, now + WINDOW_MS + 1),
            Err(Refused::Stale)
        );
        assert_eq!(
            k.open("room:r_1", &encode(&envelope()), now),
            Err(Refused::Unsigned),
            "a raw envelope (e.g. a PUBLISH from redis-cli)"
        );
        let mut tampered = sealed.clone();
        let last = tampered.len() - 1;
        tampered[last] ^= 1;
        assert_eq!(
            k.open("room:r_1", &tampered, now),
            Err(Refused::BadSignature)
        );
        let forged = keys("b", "").seal("room:r_1", &envelope(), now);
        assert_eq!(k.open("room:r_1", &forged, now), Err(Refused::BadSignature));
    }

    #[test]
    fn a_timestamp_at_either_end_of_the_range_is_stale() {
        // Found by the bus_envelope fuzz target: the age was computed with
        // a subtraction that overflowed (a panic in debug builds).
        let now = 1_764_650_000_000;
        let k = keys("a", "");
        for ts in [i64::MIN, i64::MIN + 1, -now, i64::MAX] {
            let sealed = k.seal("c", &envelope(), ts);
            assert_eq!(k.open("c", &sealed, now), Err(Refused::Stale), "{ts}");
        }
        let sealed = k.seal("c", &envelope(), now);
        assert_eq!(k.open("c", &sealed, i64::MIN), Err(Refused::Stale));
    }

    #[test]
    fn the_previous_key_is_accepted_during_a_rotation() {
        let now = 5;
        let old = keys("a", "");
        let rotated = keys("b", "a");
        let sealed_by_old = old.seal("c", &envelope(), now);
        assert!(rotated.open("c", &sealed_by_old, now).is_ok());
        let sealed_by_new = rotated.seal("c", &envelope(), now);
        assert!(rotated.open("c", &sealed_by_new, now).is_ok());
        assert_eq!(
            old.open("c", &sealed_by_new, now),
            Err(Refused::BadSignature),
            "the old key alone does not know the new one"
        );
    }
}
