//! Room administration commands: settings and deletion, the member list,
//! roles, mutes and bans, reports and the directory — one chat-service
//! call each; chat-service checks every permission.

use proto::chat::v1::{
    CheckPostRequest, DeleteRoomRequest, DirectoryRequest, ListMembersRequest, ModerateRequest,
    ReportMessageRequest, Sanction, SetRoleRequest, UpdateRoomRequest,
};
use protocol::{
    DirectoryReply, DirectoryRoom, Member, MembersReply, MessageReport, ReplyResult, ReportReply,
    Room, RoomDirectory, RoomMembers, RoomRef, RoomReply, RoomSanction, RoomSetRole, RoomUpdate,
    RoomUser, page_size,
};
use serde_json::Value;

use super::{Outcome, done, failed, missing, reply};
use crate::frames::CommandError;
use crate::session::Session;

pub(super) async fn update(s: &mut Session, args: RoomUpdate) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(UpdateRoomRequest {
        room_id: args.room,
        name: args.name,
        topic: args.topic,
        metadata_json: args.metadata.map(|m| Value::Object(m).to_string()),
    });
    let room = s
        .chat()
        .update_room(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .room
        .ok_or_else(|| missing("room"))?;
    Ok(reply(ReplyResult::Room(RoomReply {
        room: Room::from(&room),
    })))
}

pub(super) async fn delete(s: &mut Session, args: RoomRef) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(DeleteRoomRequest { room_id: args.room });
    s.chat()
        .delete_room(request)
        .await
        .map_err(failed("chat"))?;
    Ok(done())
}

pub(super) async fn members(s: &mut Session, args: RoomMembers) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ListMembersRequest {
        room_id: args.room,
        cursor: args.cursor,
        limit: page_size(args.limit),
    });
    let response = s
        .chat()
        .list_members(request)
        .await
        .map_err(failed("chat"))?
        .into_inner();
    Ok(reply(ReplyResult::Members(MembersReply {
        members: response.members.iter().map(Member::from).collect(),
        next_cursor: response.next_cursor,
    })))
}

pub(super) async fn set_role(s: &mut Session, args: RoomSetRole) -> Result<Outcome, CommandError> {
    let role = args.role().to_proto();
    let request = s.actor()?.request(SetRoleRequest {
        room_id: args.room,
        user_id: args.user,
        role: role as i32,
    });
    s.chat().set_role(request).await.map_err(failed("chat"))?;
    Ok(done())
}

/// `room.mute`, `room.ban`.
pub(super) async fn sanction(
    s: &mut Session,
    args: RoomSanction,
    sanction: Sanction,
) -> Result<Outcome, CommandError> {
    moderate(
        s,
        ModerateRequest {
            room_id: args.room,
            user_id: args.user,
            sanction: sanction as i32,
            until: args.until.and_then(|u| i64::try_from(u).ok()),
        },
    )
    .await
}

/// `room.unmute`, `room.unban`.
pub(super) async fn undo(
    s: &mut Session,
    args: RoomUser,
    sanction: Sanction,
) -> Result<Outcome, CommandError> {
    moderate(
        s,
        ModerateRequest {
            room_id: args.room,
            user_id: args.user,
            sanction: sanction as i32,
            until: None,
        },
    )
    .await
}

async fn moderate(s: &mut Session, request: ModerateRequest) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(request);
    s.chat().moderate(request).await.map_err(failed("chat"))?;
    Ok(done())
}

pub(super) async fn report(s: &mut Session, args: MessageReport) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ReportMessageRequest {
        room_id: args.room,
        message_id: args.message,
        reason: args.reason,
    });
    let report = s
        .chat()
        .report_message(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .report
        .ok_or_else(|| missing("report"))?;
    Ok(reply(ReplyResult::Report(ReportReply {
        report_id: report.id,
    })))
}

pub(super) async fn directory(
    s: &mut Session,
    args: RoomDirectory,
) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(DirectoryRequest {
        query: args.query,
        cursor: args.cursor,
        limit: page_size(args.limit),
    });
    let response = s
        .chat()
        .directory(request)
        .await
        .map_err(failed("chat"))?
        .into_inner();
    Ok(reply(ReplyResult::Directory(DirectoryReply {
        rooms: response.rooms.iter().map(DirectoryRoom::from).collect(),
        next_cursor: response.next_cursor,
    })))
}

/// Before `typing.start` in a room joined on this connection: a muted
/// member's typing is refused (`forbidden`, reason `muted`) by chat-service.
pub(super) async fn may_type(s: &mut Session, room: &str) -> Result<(), CommandError> {
    if !s.rooms.contains(room) {
        // The typing handler refuses it with its own error.
        return Ok(());
    }
    let request = s.actor()?.request(CheckPostRequest {
        room_id: room.to_string(),
    });
    s.chat().check_post(request).await.map_err(failed("chat"))?;
    Ok(())
}
