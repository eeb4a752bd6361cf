//! The chat service's errors, the one place database errors are translated,
//! and how each error reaches a gRPC caller.

use common::ErrorCode;
pub use common::denial::Denial;
use tonic::Status;

/// Everything that can go wrong in the chat service.
#[derive(Debug, thiserror::Error)]
pub enum ChatError {
    /// A request field is missing, malformed or out of range.
    #[error("{0}")]
    BadRequest(String),
    /// A field is over its size limit.
    #[error("{0}")]
    TooLarge(String),
    /// The thing does not exist, or the caller may not see it (a private
    /// room looks the same as a missing one to a non-member).
    #[error("{0} not found")]
    NotFound(&'static str),
    /// The caller may see the thing but not do this to it.
    #[error("{0}")]
    Forbidden(String),
    /// The role allows it, but the member is muted or the user banned
    /// (`forbidden` with the denial as the error's `reason`).
    #[error("{}", denied_message(*.0))]
    Denied(Denial),
    /// The change conflicts with stored state (e.g. a public room name taken).
    #[error("{0}")]
    Conflict(String),
    /// The database cannot be reached.
    #[error("database unavailable: {0}")]
    Unavailable(sqlx::Error),
    /// The database failed otherwise.
    #[error("database error: {0}")]
    Database(sqlx::Error),
    /// A group commit failed (connection lost, serialization failure):
    /// nothing of the change was stored; retrying may succeed.
    #[error("commit failed: {0}")]
    Commit(String),
    /// The database could not be set up at start.
    #[error("cannot prepare the database: {0}")]
    Setup(String),
    /// A `Watch` position that is not in the log: newer than any handed
    /// out, or older than the oldest event still stored.
    #[error(
        "position {asked} is out of range: the oldest available is {oldest} \
         (resume with since_position {}), the newest is {head}", oldest - 1
    )]
    PositionOutOfRange { asked: i64, oldest: i64, head: i64 },
    /// A webhook endpoint that is not configured.
    #[error("no webhook endpoint is named {0:?}")]
    UnknownEndpoint(String),
}

/// gRPC metadata key of the oldest position still stored, on a `Watch`
/// refused with `OUT_OF_RANGE`.
pub const OLDEST_POSITION: &str = "x-parley-oldest-position";

impl ChatError {
    /// The protocol error code of this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::BadRequest(_) => ErrorCode::BadRequest,
            // Its gRPC code is OUT_OF_RANGE (backend API only).
            ChatError::TooLarge(_) | ChatError::PositionOutOfRange { .. } => ErrorCode::TooLarge,
            ChatError::NotFound(_) | ChatError::UnknownEndpoint(_) => ErrorCode::NotFound,
            ChatError::Forbidden(_) | ChatError::Denied(_) => ErrorCode::Forbidden,
            ChatError::Conflict(_) => ErrorCode::Conflict,
            ChatError::Unavailable(_) | ChatError::Commit(_) => ErrorCode::Unavailable,
            ChatError::Database(_) | ChatError::Setup(_) => ErrorCode::Internal,
        }
    }

    /// Whether this is a unique-constraint violation (a lost race with a
    /// concurrent insert of the same thing).
    pub(crate) fn is_unique_violation(&self) -> bool {
        matches!(self, ChatError::Conflict(_))
    }
}

impl From<sqlx::Error> for ChatError {
    /// The one translation of database errors: constraint violations become
    /// protocol errors, lost connections `unavailable`, the rest `internal`.
    fn from(error: sqlx::Error) -> Self {
        use sqlx::error::ErrorKind;
        match &error {
            sqlx::Error::Database(db) => match db.kind() {
                ErrorKind::UniqueViolation => ChatError::Conflict("already exists".into()),
                ErrorKind::ForeignKeyViolation => ChatError::NotFound("room"),
                ErrorKind::CheckViolation | ErrorKind::NotNullViolation => {
                    ChatError::BadRequest("invalid value".into())
                }
                _ => ChatError::Database(error),
            },
            sqlx::Error::Io(_)
            | sqlx::Error::Tls(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed => ChatError::Unavailable(error),
            _ => ChatError::Database(error),
        }
    }
}

impl From<ChatError> for Status {
    fn from(error: ChatError) -> Self {
        let message = match &error {
            ChatError::Unavailable(_) => "database unavailable".to_string(),
            ChatError::Commit(_) => {
                tracing::warn!(%error, "chat write failed");
                "database write failed; retry".to_string()
            }
            ChatError::Database(_) | ChatError::Setup(_) => {
                tracing::error!(%error, "chat request failed");
                "internal error".to_string()
            }
            other => other.to_string(),
        };
        let mut status = error.code().status(message);
        match error {
            ChatError::Denied(denial) => denial.encode(&mut status),
            ChatError::PositionOutOfRange { oldest, .. } => {
                status.metadata_mut().insert(
                    OLDEST_POSITION,
                    tonic::metadata::AsciiMetadataValue::from(oldest),
                );
            }
            _ => {}
        }
        status
    }
}

fn denied_message(denial: Denial) -> &'static str {
    match denial {
        Denial::Muted => "you are muted in this room",
        Denial::Banned => "you are banned from this room",
        Denial::Blocked => "this user blocks you",
        Denial::NoSharedRoom => "you share no room with this user",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_details_stay_out_of_statuses() {
        let status = Status::from(ChatError::from(sqlx::Error::PoolTimedOut));
        assert_eq!(status.code(), tonic::Code::Unavailable);
        assert_eq!(status.message(), "database unavailable");

        let status = Status::from(ChatError::from(sqlx::Error::RowNotFound));
        assert_eq!(status.code(), tonic::Code::Internal);
        assert_eq!(status.message(), "internal error");

        let status = Status::from(ChatError::NotFound("room"));
        assert_eq!(status.code(), tonic::Code::NotFound);
        assert_eq!(status.message(), "room not found");
    }
}
