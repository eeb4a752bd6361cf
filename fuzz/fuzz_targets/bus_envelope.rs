//! Payloads received from the Redis bus. First byte `b`, by `b % 4`: 0, the
//! rest is any payload, opened with keys the input does not know; 1 and 2,
//! the rest is an envelope body signed now with the current (1) or previous
//! (2) bus key on its channel; 3, the rest is an 8-byte big-endian
//! timestamp (Unix ms) and a body signed at that time with the current key.
//! A signed payload must open, or be refused as stale exactly when its time
//! is outside the window and as undecodable exactly when the body is not an
//! envelope; an opened envelope sealed again must open to itself.
#![no_main]

use common::Secret;
use common::bus::{BusKeys, Refused};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const CURRENT: &str = "fuzzing-bus-key-current-0123456789abcdef";
const PREVIOUS: &str = "fuzzing-bus-key-previous-0123456789abcdef";
const CHANNEL: &str = "room:r_1";
const NOW_MS: i64 = 1_764_650_000_000;
/// How far a payload's timestamp may be from the subscriber's clock.
const WINDOW_MS: i128 = 5 * 60 * 1000;

/// `[version 1][timestamp ms][HMAC-SHA256 over the domain, channel,
/// timestamp and body][body]`, as common/src/bus/seal.rs documents it.
fn sealed(key: &str, ts: i64, body: &[u8]) -> Vec<u8> {
    let ts = ts.to_be_bytes();
    let mut mac = Hmac::<Sha256>::new_from_slice(key.as_bytes()).expect("any key length");
    mac.update(b"parley-bus-v1\0");
    mac.update(CHANNEL.as_bytes());
    mac.update(b"\0");
    mac.update(&ts);
    mac.update(body);
    let mut out = vec![1];
    out.extend_from_slice(&ts);
    out.extend_from_slice(&mac.finalize().into_bytes());
    out.extend_from_slice(body);
    out
}

fuzz_target!(|data: &[u8]| {
    let keys = BusKeys::new(Secret::new(CURRENT), Secret::new(PREVIOUS));
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let (payload, ts, body) = match mode % 4 {
        0 => {
            if let Ok(envelope) = keys.open(CHANNEL, rest, NOW_MS) {
                panic!("a payload opened without the key: {envelope:?}");
            }
            return;
        }
        1 => (sealed(CURRENT, NOW_MS, rest), NOW_MS, rest),
        2 => (sealed(PREVIOUS, NOW_MS, rest), NOW_MS, rest),
        _ => {
            let Some((ts, body)) = rest.split_first_chunk::<8>() else {
                return;
            };
            let ts = i64::from_be_bytes(*ts);
            (sealed(CURRENT, ts, body), ts, body)
        }
    };
    let stale = (i128::from(NOW_MS) - i128::from(ts)).abs() > WINDOW_MS;
    match keys.open(CHANNEL, &payload, NOW_MS) {
        Ok(envelope) => {
            assert!(!stale, "a stale payload opened");
            let again = keys.seal(CHANNEL, &envelope, NOW_MS);
            assert_eq!(keys.open(CHANNEL, &again, NOW_MS), Ok(envelope.clone()));
            let _ = common::bus::lag_seconds(&envelope);
        }
        Err(Refused::Stale) => assert!(stale, "a fresh payload refused as stale"),
        Err(Refused::Undecodable) => {
            assert!(!stale, "a stale payload was decoded");
            assert!(common::bus::decode(body).is_err());
        }
        Err(refused) => panic!("a genuine payload refused: {refused:?}"),
    }
});
