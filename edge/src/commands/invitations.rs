//! Invitations to rooms (`invitation.list`, `invitation.accept`,
//! `invitation.decline`): being added to a room that is not direct makes
//! an invitation, and only the invitee turns it into a membership.

use proto::chat::v1::{InvitationRequest, ListInvitationsRequest};
use protocol::{
    Invitation, InvitationsReply, ReplyResult, Room, RoomRef, RoomReply, RoomSummary, UserRef,
};

use super::{Outcome, done, failed, missing, reply};
use crate::frames::CommandError;
use crate::session::Session;

pub(super) async fn list(s: &mut Session) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ListInvitationsRequest {});
    let invitations = s
        .chat()
        .list_invitations(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .invitations;
    Ok(reply(ReplyResult::Invitations(InvitationsReply {
        invitations: invitations
            .into_iter()
            .filter_map(|i| {
                let by = i.by.unwrap_or_default();
                Some(Invitation {
                    room: RoomSummary::from(i.room.as_ref()?),
                    by: UserRef::new(by.id, by.name),
                    invited_at: i.created_at,
                })
            })
            .collect(),
    })))
}

/// Accepts (the reply is the room, which can then be joined) or declines.
pub(super) async fn answer(
    s: &mut Session,
    args: RoomRef,
    accept: bool,
) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(InvitationRequest { room_id: args.room });
    let mut chat = s.chat();
    if !accept {
        chat.decline_invitation(request)
            .await
            .map_err(failed("chat"))?;
        return Ok(done());
    }
    let room = chat
        .accept_invitation(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .room
        .ok_or_else(|| missing("room"))?;
    Ok(reply(ReplyResult::Room(RoomReply {
        room: Room::from(&room),
    })))
}
