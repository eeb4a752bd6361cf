//! User blocks (`user.block`, `user.unblock`, `user.blocks`), and the
//! relation checks that guard calls and presence follows: the other user
//! must share a room with the caller and must not block them.

use common::ErrorCode;
use common::denial::Denial;
use proto::chat::v1::{BlockRequest, CheckRelationRequest, ListBlocksRequest};
use protocol::{BlockedUser, BlocksReply, ReplyResult, UserArg};

use super::{Outcome, done, failed, reply};
use crate::frames::{CommandError, Reason};
use crate::session::Session;

pub(super) async fn block(
    s: &mut Session,
    args: UserArg,
    on: bool,
) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(BlockRequest { user_id: args.user });
    let mut chat = s.chat();
    let result = if on {
        chat.block_user(request).await
    } else {
        chat.unblock_user(request).await
    };
    result.map_err(failed("chat"))?;
    Ok(done())
}

pub(super) async fn list(s: &mut Session) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ListBlocksRequest {});
    let blocks = s
        .chat()
        .list_blocks(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .blocks;
    Ok(reply(ReplyResult::Blocks(BlocksReply {
        blocks: blocks
            .into_iter()
            .map(|b| BlockedUser {
                user: b.user_id,
                blocked_at: b.created_at,
            })
            .collect(),
    })))
}

/// `forbidden` unless each of `users` shares a room with the caller (the
/// room `room`, when given) and none of them blocks the caller.
pub(super) async fn require_relation(
    s: &Session,
    users: &[String],
    room: Option<&str>,
) -> Result<(), CommandError> {
    if users.is_empty() {
        return Ok(());
    }
    let request = s.actor()?.request(CheckRelationRequest {
        user_ids: users.to_vec(),
        room_id: room.unwrap_or_default().to_string(),
    });
    let relation = s
        .chat()
        .check_relation(request)
        .await
        .map_err(failed("chat"))?
        .into_inner();
    if let Some(user) = relation.blocked_by.first() {
        return Err(denied(Denial::Blocked, format!("{user} blocks you")));
    }
    if let Some(user) = users.iter().find(|u| !relation.shared.contains(u)) {
        let message = match room {
            Some(room) => format!("{user} is not a member of {room}"),
            None => format!("you share no room with {user}"),
        };
        return Err(denied(Denial::NoSharedRoom, message));
    }
    Ok(())
}

fn denied(denial: Denial, message: String) -> CommandError {
    let mut error = CommandError::new(ErrorCode::Forbidden, message);
    error.reason = Some(Reason::Denied(denial));
    error
}
