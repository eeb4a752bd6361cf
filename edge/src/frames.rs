//! Frames on the wire: reading a text frame's envelope (`type`, `id`,
//! `traceparent` and the arguments), and writing replies, errors and
//! `hello` with the protocol's types.

use axum::extract::ws::Utf8Bytes;
use common::ErrorCode;
use protocol::{
    CloseCode, DecodeError, ErrorFrame, ErrorObject, Hello, Limits, PROTOCOL, ReplyFrame,
    ReplyResult, ServerFrame, User,
};
use serde_json::{Map, Value};

/// A text frame's envelope; the arguments are decoded once the command is admitted.
#[derive(Debug)]
pub struct Envelope {
    /// The frame's `type`, as sent.
    pub kind: String,
    pub id: Option<u64>,
    /// W3C trace context making the command part of the client's trace.
    pub traceparent: Option<String>,
    /// The remaining fields: the command's arguments.
    pub body: Map<String, Value>,
}

/// A command's failure, as sent to the client.
#[derive(Debug, Clone)]
pub struct CommandError {
    pub code: ErrorCode,
    pub message: String,
    pub retry_after_ms: Option<u64>,
    /// The close that follows when the failure ends the connection.
    pub close: Option<CloseCode>,
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
    /// Chat-service refused a muted member or a banned user (`forbidden`).
    Denied(common::denial::Denial),
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ContentBlocked => "content_blocked",
            Self::TooManyConnections => "too_many_connections",
            Self::Denied(denial) => denial.as_str(),
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
        error.reason = common::denial::Denial::decode(status).map(Reason::Denied);
        error
    }

    /// The error object of the protocol.
    pub(crate) fn object(&self, trace_id: Option<String>) -> ErrorObject {
        let mut object = ErrorObject::new(self.code, self.message.clone());
        object.reason = self.reason.map(|r| r.as_str().to_string());
        object.retry_after_ms = self.retry_after_ms;
        object.trace_id = trace_id;
        object
    }
}

impl From<DecodeError> for CommandError {
    fn from(error: DecodeError) -> Self {
        Self::new(error.code, error.message)
    }
}

/// Reads a text frame's envelope, or says why it is not a command (with
/// the `type` and `id` when they could be read).
pub fn parse(text: &str) -> Result<Envelope, (Option<String>, Option<u64>, CommandError)> {
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
    let traceparent = match body.remove("traceparent") {
        Some(Value::String(tp)) => Some(tp),
        _ => None,
    };
    Ok(Envelope {
        kind,
        id,
        traceparent,
        body,
    })
}

/// `{"type":"reply","id":..,"ok":true, ..result}`
pub fn reply_ok(id: u64, result: ReplyResult) -> Utf8Bytes {
    let frame = ServerFrame::Reply(ReplyFrame {
        id,
        ok: true,
        error: None,
        result: Some(result),
    });
    Utf8Bytes::from(frame.to_json())
}

/// A failed command's frame: a reply when it had an id, an `error` otherwise.
pub fn failure(
    kind: Option<&str>,
    id: Option<u64>,
    error: &CommandError,
    trace_id: Option<String>,
) -> Utf8Bytes {
    let error = error.object(trace_id);
    let frame = match id {
        Some(id) => ServerFrame::Reply(ReplyFrame {
            id,
            ok: false,
            error: Some(error),
            result: None,
        }),
        None => ServerFrame::Error(ErrorFrame {
            re: kind.map(str::to_string),
            error,
        }),
    };
    Utf8Bytes::from(frame.to_json())
}

/// The first server frame.
pub fn hello(
    conn_id: &str,
    auth_timeout_ms: u64,
    heartbeat_ms: u64,
    max_message_bytes: usize,
    user: Option<User>,
    frame_secret: Option<&str>,
) -> Utf8Bytes {
    let frame = ServerFrame::Hello(Hello {
        conn_id: conn_id.to_string(),
        protocol: PROTOCOL.to_string(),
        server_time: common::ids::now_ms(),
        auth_timeout_ms,
        heartbeat_ms,
        limits: Limits { max_message_bytes },
        user,
        frame_secret: frame_secret.map(str::to_string),
    });
    Utf8Bytes::from(frame.to_json())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn parses_envelopes_and_rejects_malformed_frames() {
        let c = parse(r#"{"type":"ping","id":7,"x":1,"traceparent":"00-ab"}"#).expect("valid");
        assert_eq!((c.kind.as_str(), c.id), ("ping", Some(7)));
        assert_eq!(c.traceparent.as_deref(), Some("00-ab"));
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
        let hello: Value =
            serde_json::from_str(&hello("c_1", 10, 20, 30, None, None)).expect("json");
        assert_eq!(hello["user"], Value::Null, "hello always names its user");
        assert_eq!(hello["protocol"], "parley.v1");
    }
}
