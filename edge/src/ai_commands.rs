//! The assistant's commands beyond `ai.ask`: `ai.cancel`, and the list of
//! replies in progress that `room.join` hands to late joiners.

use proto::ai::v1::{CancelRequest, ListStreamsRequest};
use serde_json::{Map, Value, json};

use crate::commands::Outcome;
use crate::conn::Conn;
use crate::frames::{Command, CommandError};

/// Longest stream id accepted.
const STREAM_ID_MAX: usize = 160;

/// `ai.cancel{stream_id}`: the asker or the room's owner stops a reply; the
/// room then gets `ai.error{code:"cancelled"}`.
pub(crate) async fn cancel(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let stream_id = match command.body.get("stream_id") {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= STREAM_ID_MAX => s.clone(),
        _ => {
            return Err(CommandError::bad_request(
                "missing string field `stream_id`",
            ));
        }
    };
    let request = crate::commands::actor(conn)?.request(CancelRequest { stream_id });
    conn.shared
        .backends
        .ai
        .clone()
        .cancel(request)
        .await
        .map_err(|s| CommandError::from_status("ai", &s))?;
    Ok(Outcome::Reply(Map::new()))
}

/// The room's replies in progress as `room.join` lists them
/// (`[{stream_id, text_so_far, index}]`). Called after the connection
/// subscribed to the room, so every later delta reaches it; one it already
/// has (index below `index`) may also arrive live. A failing ai-service
/// costs the list, not the join.
pub(crate) async fn streams(conn: &Conn, room: &str) -> Value {
    let request = ListStreamsRequest {
        room_id: room.to_string(),
    };
    match conn.shared.backends.ai.clone().list_streams(request).await {
        Ok(response) => Value::Array(
            response
                .into_inner()
                .streams
                .into_iter()
                .map(|s| json!({"stream_id": s.stream_id, "text_so_far": s.text_so_far, "index": s.index}))
                .collect(),
        ),
        Err(status) => {
            tracing::warn!(room, code = ?status.code(), "cannot list the room's assistant replies");
            json!([])
        }
    }
}
