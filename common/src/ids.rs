//! Identifiers and clocks.

use std::time::{SystemTime, UNIX_EPOCH};

/// A new time-ordered id with a short type prefix, e.g. `m_0190…`.
pub fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::now_v7().simple())
}

/// Unix time in milliseconds.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

/// A random secret of `len` bytes, hex-encoded (dev defaults only).
pub fn random_secret(len: usize) -> String {
    use rand::RngCore;
    let mut buf = vec![0u8; len];
    rand::rng().fill_bytes(&mut buf);
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_ordered() {
        let a = new_id("m");
        let b = new_id("m");
        assert!(a.starts_with("m_"));
        assert_ne!(a, b);
        assert!(a < b);
    }
}
