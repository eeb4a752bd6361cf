//! Signed frames (`edge.signed_frames`). The client holds its session's
//! secret, so it can sign anything. First byte `b`, by `b % 3`: 0, the rest
//! is any frame, opened with a secret the input does not know; 1, the rest
//! is `nonce\npayload`, signed `b / 3` × 10 s ago (0 to 14 minutes); 2, the
//! rest is an 8-byte big-endian timestamp (Unix ms) and `nonce\npayload`,
//! signed at that time. A signed frame must open exactly when its nonce and
//! time are acceptable, refuse a replay, and its payload goes on through the
//! frame decoder.
#![no_main]

use edge::fuzzing::{MAX_NONCE_BYTES, SIGNED_WINDOW_MS, SignedFrames, frame};
use hmac::{Hmac, Mac};
use libfuzzer_sys::fuzz_target;
use sha2::Sha256;

const SECRET: &str = "fuzzing-frame-secret-0123456789abcdef0123456789abcdef0123456789";
const NOW_MS: i64 = 1_764_650_000_000;

fn sign(payload: &str, ts: i64, nonce: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(SECRET.as_bytes()).expect("any key length");
    mac.update(format!("{ts}.{nonce}.{payload}").as_bytes());
    let signature: String = mac
        .finalize()
        .into_bytes()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    serde_json::json!({
        "payload": payload,
        "signature": signature,
        "timestamp": ts,
        "nonce": nonce,
    })
    .to_string()
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let mut frames = SignedFrames::new(SECRET);
    let (ts, text) = match mode % 3 {
        0 => {
            if let Ok(text) = std::str::from_utf8(rest) {
                if let Ok(payload) = frames.open(text, NOW_MS) {
                    panic!("a frame opened without the secret: {payload:?}");
                }
            }
            return;
        }
        1 => (NOW_MS - i64::from(mode / 3) * 10_000, rest),
        _ => {
            let Some((ts, rest)) = rest.split_first_chunk::<8>() else {
                return;
            };
            (i64::from_be_bytes(*ts), rest)
        }
    };
    let Ok(text) = std::str::from_utf8(text) else {
        return;
    };
    let Some((nonce, payload)) = text.split_once('\n') else {
        return;
    };
    let signed = sign(payload, ts, nonce);
    let opened = frames.open(&signed, NOW_MS);
    let expected = if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
        Err("malformed_signed_frame")
    } else if (i128::from(NOW_MS) - i128::from(ts)).abs() > i128::from(SIGNED_WINDOW_MS) {
        Err("stale_timestamp")
    } else {
        Ok(payload.to_string())
    };
    assert_eq!(opened, expected);
    if opened.is_ok() {
        assert_eq!(frames.open(&signed, NOW_MS), Err("replayed_nonce"));
        let _ = frame(payload);
    }
});
