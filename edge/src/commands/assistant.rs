//! The assistant's commands: `ai.ask`, `ai.cancel`, and the list of replies
//! in progress that `room.join` hands to late joiners.

use proto::ai::v1::{AskRequest, CancelRequest, ListStreamsRequest};
use protocol::{AiAsk, AiAskReply, AiCancel, Message, ReplyResult, StreamInProgress};

use super::{Outcome, done, failed, reply};
use crate::frames::CommandError;
use crate::session::Session;

pub(super) async fn ask(s: &mut Session, args: AiAsk) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(AskRequest {
        room_id: args.room,
        prompt: args.prompt,
        model: args.model,
        client_msg_id: args.client_msg_id.unwrap_or_default(),
        thread_id: args.thread,
    });
    let response = s
        .ai()
        .ask(request)
        .await
        .map_err(failed("ai"))?
        .into_inner();
    Ok(reply(ReplyResult::AiAsk(AiAskReply {
        stream_id: response.stream_id,
        message: response.message.as_ref().map(Message::from),
    })))
}

/// `ai.cancel{stream_id}`: the asker or the room's owner stops a reply; the
/// room then gets `ai.error{code:"cancelled"}`.
pub(super) async fn cancel(s: &mut Session, args: AiCancel) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(CancelRequest {
        stream_id: args.stream_id,
    });
    s.ai().cancel(request).await.map_err(failed("ai"))?;
    Ok(done())
}

/// The room's replies in progress. Called after the connection subscribed
/// to the room, so every later delta reaches it; one it already has (index
/// below `index`) may also arrive live. A failing ai-service costs the
/// list, not the join.
pub(super) async fn streams(s: &Session, room: &str) -> Vec<StreamInProgress> {
    let request = ListStreamsRequest {
        room_id: room.to_string(),
    };
    match s.ai().list_streams(request).await {
        Ok(response) => response
            .into_inner()
            .streams
            .into_iter()
            .map(|s| StreamInProgress {
                stream_id: s.stream_id,
                text_so_far: s.text_so_far,
                index: s.index,
            })
            .collect(),
        Err(status) => {
            tracing::warn!(room, code = ?status.code(), "cannot list the room's assistant replies");
            Vec::new()
        }
    }
}
