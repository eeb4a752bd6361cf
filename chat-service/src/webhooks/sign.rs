//! The signature every webhook POST carries: HMAC-SHA256 with the
//! endpoint's secret over `<timestamp>.<body>`, hex-encoded, as
//! `Parley-Signature: v1=<hex>` beside `Parley-Timestamp: <unix seconds>`.
//! A receiver recomputes it over the raw body, compares in constant time,
//! and refuses timestamps more than a few minutes from its clock (replays).

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// Header of the Unix time (seconds) the attempt was signed at.
pub(crate) const TIMESTAMP_HEADER: &str = "parley-timestamp";
/// Header of the signature, `v1=<hex>`.
pub(crate) const SIGNATURE_HEADER: &str = "parley-signature";
/// Header of the delivery's id, the same on every attempt.
pub(crate) const IDEMPOTENCY_HEADER: &str = "idempotency-key";
/// Header of the payload's type (`room.event`, `notification.offline`).
pub(crate) const EVENT_HEADER: &str = "parley-event";

/// `v1=<hex of HMAC-SHA256(secret, "<timestamp>.<body>")>`.
pub(crate) fn signature(secret: &[u8], timestamp: i64, body: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.to_string().as_bytes());
    mac.update(b".");
    mac.update(body.as_bytes());
    let digest = mac.finalize().into_bytes();
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("v1={hex}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_an_independent_computation() {
        // python3 -c 'import hmac,hashlib;print(hmac.new(b"k"*32,b"1700000000.{}",hashlib.sha256).hexdigest())'
        assert_eq!(
            signature(&[b'k'; 32], 1_700_000_000, "{}"),
            "v1=0b3b35525c10b3757ffa78df69037021fc3168d8390a51a4fcb4a8d56a25b557"
        );
    }
}
