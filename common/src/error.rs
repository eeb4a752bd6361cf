//! The one table of error codes: protocol code, gRPC code, HTTP status and
//! whether a retry can help.

use std::fmt;
use std::time::Duration;

/// gRPC metadata key of how long a caller should wait before retrying a
/// `rate_limited` call, in milliseconds (the edge turns it into `retry_after_ms`).
pub const RETRY_AFTER_MS: &str = "x-parley-retry-after-ms";

/// Error codes of the WebSocket protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorCode {
    BadRequest,
    Unauthorized,
    Forbidden,
    NotFound,
    Conflict,
    RateLimited,
    TooLarge,
    Unavailable,
    Timeout,
    Disabled,
    Internal,
}

/// (code, protocol name, gRPC code, HTTP status, temporary)
const TABLE: &[(ErrorCode, &str, tonic::Code, u16, bool)] = &[
    (
        ErrorCode::BadRequest,
        "bad_request",
        tonic::Code::InvalidArgument,
        400,
        false,
    ),
    (
        ErrorCode::Unauthorized,
        "unauthorized",
        tonic::Code::Unauthenticated,
        401,
        false,
    ),
    (
        ErrorCode::Forbidden,
        "forbidden",
        tonic::Code::PermissionDenied,
        403,
        false,
    ),
    (
        ErrorCode::NotFound,
        "not_found",
        tonic::Code::NotFound,
        404,
        false,
    ),
    (
        ErrorCode::Conflict,
        "conflict",
        tonic::Code::AlreadyExists,
        409,
        false,
    ),
    (
        ErrorCode::RateLimited,
        "rate_limited",
        tonic::Code::ResourceExhausted,
        429,
        true,
    ),
    (
        ErrorCode::TooLarge,
        "too_large",
        tonic::Code::OutOfRange,
        413,
        false,
    ),
    (
        ErrorCode::Unavailable,
        "unavailable",
        tonic::Code::Unavailable,
        503,
        true,
    ),
    (
        ErrorCode::Timeout,
        "timeout",
        tonic::Code::DeadlineExceeded,
        504,
        true,
    ),
    (
        ErrorCode::Disabled,
        "disabled",
        tonic::Code::FailedPrecondition,
        403,
        false,
    ),
    (
        ErrorCode::Internal,
        "internal",
        tonic::Code::Internal,
        500,
        true,
    ),
];

impl ErrorCode {
    /// Every code, in the table's order.
    pub const ALL: [ErrorCode; 11] = [
        ErrorCode::BadRequest,
        ErrorCode::Unauthorized,
        ErrorCode::Forbidden,
        ErrorCode::NotFound,
        ErrorCode::Conflict,
        ErrorCode::RateLimited,
        ErrorCode::TooLarge,
        ErrorCode::Unavailable,
        ErrorCode::Timeout,
        ErrorCode::Disabled,
        ErrorCode::Internal,
    ];

    /// The code of a protocol name (`rate_limited` → `RateLimited`).
    pub fn from_name(name: &str) -> Option<Self> {
        TABLE.iter().find(|row| row.1 == name).map(|row| row.0)
    }

    fn row(self) -> &'static (ErrorCode, &'static str, tonic::Code, u16, bool) {
        TABLE
            .iter()
            .find(|row| row.0 == self)
            .unwrap_or(&TABLE[TABLE.len() - 1])
    }

    /// The protocol's name for the code, e.g. `rate_limited`.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    pub fn grpc(self) -> tonic::Code {
        self.row().2
    }

    pub fn http_status(self) -> u16 {
        self.row().3
    }

    /// Whether retrying the same request later can succeed.
    pub fn temporary(self) -> bool {
        self.row().4
    }

    /// The protocol code for a gRPC status code (every code maps somewhere).
    pub fn from_grpc(code: tonic::Code) -> Self {
        use tonic::Code;
        match code {
            Code::Ok => ErrorCode::Internal,
            Code::Cancelled | Code::DeadlineExceeded => ErrorCode::Timeout,
            Code::Aborted => ErrorCode::Conflict,
            Code::Unimplemented => ErrorCode::Disabled,
            Code::Unknown | Code::DataLoss => ErrorCode::Internal,
            other => TABLE
                .iter()
                .find(|row| row.2 == other)
                .map(|row| row.0)
                .unwrap_or(ErrorCode::Internal),
        }
    }

    /// A gRPC status carrying this code and a message.
    pub fn status(self, message: impl Into<String>) -> tonic::Status {
        tonic::Status::new(self.grpc(), message)
    }

    /// A status that also says when a retry may succeed.
    pub fn status_retry_after(self, message: impl Into<String>, after: Duration) -> tonic::Status {
        let mut status = self.status(message);
        let ms = after.as_millis().max(1).to_string();
        if let Ok(value) = ms.parse() {
            status.metadata_mut().insert(RETRY_AFTER_MS, value);
        }
        status
    }

    /// The retry hint of a status made by [`ErrorCode::status_retry_after`].
    pub fn retry_after(status: &tonic::Status) -> Option<Duration> {
        let ms = status.metadata().get(RETRY_AFTER_MS)?.to_str().ok()?;
        ms.parse().ok().map(Duration::from_millis)
    }
}

impl fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_round_trips_through_grpc() {
        for row in TABLE {
            assert_eq!(ErrorCode::from_grpc(row.0.grpc()), row.0, "{}", row.1);
        }
    }

    #[test]
    fn a_retry_hint_travels_in_the_status() {
        let status =
            ErrorCode::RateLimited.status_retry_after("slow down", Duration::from_millis(1200));
        assert_eq!(status.code(), tonic::Code::ResourceExhausted);
        assert_eq!(
            ErrorCode::retry_after(&status),
            Some(Duration::from_millis(1200))
        );
        assert_eq!(
            ErrorCode::retry_after(&ErrorCode::RateLimited.status("x")),
            None
        );
    }

    #[test]
    fn temporary_codes_match_the_protocol() {
        let temporary: Vec<_> = TABLE.iter().filter(|r| r.4).map(|r| r.1).collect();
        assert_eq!(
            temporary,
            ["rate_limited", "unavailable", "timeout", "internal"]
        );
    }
}
