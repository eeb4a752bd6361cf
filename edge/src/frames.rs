//! Frame shapes of protocol v1: parsing commands, building replies, errors
//! and server frames.

use axum::extract::ws::Utf8Bytes;
use common::ErrorCode;
use serde_json::{Map, Value, json};

/// A parsed command frame.
#[derive(Debug)]
pub struct Command {
    pub kind: String,
    pub id: Option<u64>,
    pub body: Map<String, Value>,
}

/// A command's failure, as sent to the client.
#[derive(Debug, Clone)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
    /// Close code and reason when the failure ends the connection (bad token).
    pub close: Option<(u16, &'static str)>,
    /// A machine-readable refinement of `code` (the error's `reason`).
    pub reason: Option<Reason>,
}

/// Refinements of an error code the client can act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reason {
    /// Content inspection refused the text (`forbidden`).
    ContentBlocked,
    /// The user is at the per-user connection limit (`forbidden`, then 4009).
    TooManyConnections,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentBlocked => "content_blocked",
            Self::TooManyConnections => "too_many_connections",
        }
    }
}

impl CommandError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            retry_after_ms: None,
            close: None,
            reason: None,
        }
    }

    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::BadRequest, message)
    }

    /// Translates a failed gRPC call; transport failures become `unavailable`.
    pub fn from_status(service: &str, status: &tonic::Status) -> Self {
        let code = ErrorCode::from_grpc(status.code());
        let message = match code {
            ErrorCode::Unavailable => format!("{service} service unavailable"),
            ErrorCode::Timeout => format!("{service} service timed out"),
            ErrorCode::Internal => "internal error".to_string(),
            _ => status.message().to_string(),
        };
        let mut error = Self::new(code, message);
        error.retry_after_ms = ErrorCode::retry_after(status).map(|d| d.as_millis() as u64);
        error
    }
}

/// Parses a text frame into a command, or says why it is not one.
pub fn parse(text: &str) -> Result<Command, (Option<String>, Option<u64>, CommandError)> {
    let value: Value = serde_json::from_str(text).map_err(|e| {
        (
            None,
            None,
            CommandError::bad_request(format!("malformed JSON: {e}")),
        )
    })?;
    let Value::Object(mut body) = value else {
        return Err((
            None,
            None,
            CommandError::bad_request("a frame must be a JSON object"),
        ));
    };
    let kind = match body.remove("type") {
        Some(Value::String(kind)) if !kind.is_empty() && kind.len() <= 64 => kind,
        _ => {
            return Err((
                None,
                None,
                CommandError::bad_request("missing string field `type`"),
            ));
        }
    };
    let id = match body.remove("id") {
        None | Some(Value::Null) => None,
        Some(v) => match v.as_u64() {
            Some(id) => Some(id),
            None => {
                return Err((
                    Some(kind),
                    None,
                    CommandError::bad_request("`id` must be a non-negative integer"),
                ));
            }
        },
    };
    Ok(Command { kind, id, body })
}

/// `{"type":"reply","id":..,"ok":true, ..fields}`
pub fn reply_ok(id: u64, fields: Map<String, Value>) -> Utf8Bytes {
    let mut o = Map::with_capacity(fields.len() + 3);
    o.insert("type".into(), json!("reply"));
    o.insert("id".into(), json!(id));
    o.insert("ok".into(), json!(true));
    o.extend(fields);
    Utf8Bytes::from(Value::Object(o).to_string())
}

fn error_object(error: &CommandError, trace_id: Option<String>) -> Value {
    let mut e = Map::new();
    e.insert("code".into(), json!(error.code.as_str()));
    e.insert("message".into(), json!(error.message));
    e.insert("temporary".into(), json!(error.code.temporary()));
    if let Some(reason) = error.reason {
        e.insert("reason".into(), json!(reason.as_str()));
    }
    if let Some(ms) = error.retry_after_ms {
        e.insert("retry_after_ms".into(), json!(ms));
    }
    if let Some(trace_id) = trace_id {
        e.insert("trace_id".into(), json!(trace_id));
    }
    Value::Object(e)
}

/// A failed command's frame: a reply when it had an id, an `error` otherwise.
pub fn failure(
    kind: Option<&str>,
    id: Option<u64>,
    error: &CommandError,
    trace_id: Option<String>,
) -> Utf8Bytes {
    let frame = match id {
        Some(id) => {
            json!({"type": "reply", "id": id, "ok": false, "error": error_object(error, trace_id)})
        }
        None => json!({"type": "error", "re": kind, "error": error_object(error, trace_id)}),
    };
    Utf8Bytes::from(frame.to_string())
}

/// The first server frame.
pub fn hello(
    conn_id: &str,
    auth_timeout_ms: u64,
    heartbeat_ms: u64,
    max_message_bytes: usize,
    user: Option<Value>,
    frame_secret: Option<&str>,
) -> Utf8Bytes {
    let mut hello = json!({
            "type": "hello",
            "conn_id": conn_id,
            "protocol": "parley.v1",
            "server_time": common::ids::now_ms(),
            "auth_timeout_ms": auth_timeout_ms,
            "heartbeat_ms": heartbeat_ms,
            "limits": {"max_message_bytes": max_message_bytes},
            "user": user,
    });
    if let Some(secret) = frame_secret {
        hello["frame_secret"] = json!(secret);
    }
    Utf8Bytes::from(hello.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_commands_and_rejects_malformed_frames() {
        let c = parse(r#"{"type":"ping","id":7,"x":1}"#).expect("valid");
        assert_eq!((c.kind.as_str(), c.id), ("ping", Some(7)));
        assert_eq!(c.body.get("x"), Some(&json!(1)));
        assert!(parse("not json").is_err());
        assert!(parse("[1]").is_err());
        assert!(parse(r#"{"id":1}"#).is_err());
        let (kind, _, e) = parse(r#"{"type":"ping","id":-1}"#).expect_err("negative id");
        assert_eq!(kind.as_deref(), Some("ping"));
        assert_eq!(e.code, ErrorCode::BadRequest);
    }

    #[test]
    fn failures_carry_the_protocol_shape() {
        let e = CommandError::new(ErrorCode::RateLimited, "slow down");
        let with_id: Value =
            serde_json::from_str(&failure(Some("message.send"), Some(3), &e, None)).expect("json");
        assert_eq!(with_id["type"], "reply");
        assert_eq!(with_id["ok"], false);
        assert_eq!(with_id["error"]["code"], "rate_limited");
        assert_eq!(with_id["error"]["temporary"], true);
        let without: Value =
            serde_json::from_str(&failure(Some("message.send"), None, &e, Some("abc".into())))
                .expect("json");
        assert_eq!(without["type"], "error");
        assert_eq!(without["re"], "message.send");
        assert_eq!(without["error"]["trace_id"], "abc");
    }
}
