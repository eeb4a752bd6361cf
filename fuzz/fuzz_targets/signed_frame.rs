//! Signed frames (`edge.signed_frames`). An even first byte: the rest is
//! any frame, opened with a secret the input does not know. An odd one: the
//! rest is `nonce\npayload`, signed with the session's secret at a time
//! the first byte sets (0 to 21 minutes ago); the frame must open exactly
//! when its nonce and time are acceptable, refuse a replay, and its payload
//! goes on through the frame decoder.
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
    let Ok(text) = std::str::from_utf8(rest) else {
        return;
    };
    let mut frames = SignedFrames::new(SECRET);
    if mode % 2 == 0 {
        if let Ok(payload) = frames.open(text, NOW_MS) {
            panic!("a frame opened without the secret: {payload:?}");
        }
        return;
    }
    let Some((nonce, payload)) = text.split_once('\n') else {
        return;
    };
    let ts = NOW_MS - i64::from(mode >> 1) * 10_000;
    let signed = sign(payload, ts, nonce);
    let opened = frames.open(&signed, NOW_MS);
    let expected = if nonce.is_empty() || nonce.len() > MAX_NONCE_BYTES {
        Err("malformed_signed_frame")
    } else if NOW_MS - ts > SIGNED_WINDOW_MS {
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
