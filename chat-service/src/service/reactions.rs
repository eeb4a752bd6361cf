//! Reaction calls: adding and removing an emoji on a message.

use common::grpc::Actor;
use proto::chat::v1::ReactionRequest;

use super::{ChatHandler, check_id, user_of};
use crate::error::ChatError;
use crate::writer::Op;

impl ChatHandler {
    pub(super) async fn react(
        &self,
        actor: &Actor,
        request: ReactionRequest,
        add: bool,
    ) -> Result<(), ChatError> {
        check_emoji(&request.emoji)?;
        let (room, membership) = self.member_room(&request.room_id, actor).await?;
        self.may_post(&membership)?;
        check_id("message_id", &request.message_id)?;
        let user = user_of(actor)?;
        let op = if add {
            Op::AddReaction {
                room_id: room.id,
                message_id: request.message_id,
                user,
                emoji: request.emoji,
                max_emoji: MAX_EMOJI_PER_MESSAGE,
            }
        } else {
            if self
                .store
                .message(&room.id, &request.message_id)
                .await?
                .is_none_or(|m| m.deleted)
            {
                return Err(ChatError::NotFound("message"));
            }
            Op::RemoveReaction {
                room_id: room.id,
                message_id: request.message_id,
                user,
                emoji: request.emoji,
            }
        };
        self.writer.submit(op).await?;
        Ok(())
    }
}

/// Most distinct emoji on one message.
const MAX_EMOJI_PER_MESSAGE: i64 = 20;

/// Longest emoji, in bytes.
const MAX_EMOJI_BYTES: usize = 16;

/// An emoji is 1–16 bytes of visible text.
fn check_emoji(emoji: &str) -> Result<(), ChatError> {
    if emoji.is_empty() || emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ChatError::BadRequest(
            "emoji must be 1 to 16 bytes of visible text".into(),
        ));
    }
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(ChatError::TooLarge(format!(
            "emoji is longer than {MAX_EMOJI_BYTES} bytes"
        )));
    }
    Ok(())
}
