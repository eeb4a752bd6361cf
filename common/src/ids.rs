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

/// User ids that belong to the server: the assistant, `system` and bots
/// (`bot:…`). No token, development login or sign-in may claim one.
pub fn is_reserved_user_id(id: &str) -> bool {
    id == "assistant" || id == "system" || id.starts_with("bot:")
}

/// Whether `text` holds a character that must not appear in a name: a
/// control character, or one that reorders text (bidirectional overrides,
/// embeddings and isolates), which can disguise a name or a room.
pub fn has_disguising_chars(text: &str) -> bool {
    text.chars().any(|c| {
        c.is_control() || matches!(c, '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}')
    })
}

#[cfg(test)]
mod reserved_tests {
    use super::*;

    #[test]
    fn the_servers_identities_are_reserved() {
        for id in ["assistant", "system", "bot:weather", "bot:"] {
            assert!(is_reserved_user_id(id), "{id}");
        }
        for id in ["alice", "zoë", "systems", "robot:x", "Assistant"] {
            assert!(!is_reserved_user_id(id), "{id}");
        }
    }

    #[test]
    fn names_cannot_hide_reordering_or_control_characters() {
        assert!(has_disguising_chars("evil\u{202E}gpj.exe"));
        assert!(has_disguising_chars("a\u{2066}b"));
        assert!(has_disguising_chars("tab\there"));
        assert!(!has_disguising_chars("Zoë — 東京 🎉"));
    }
}
