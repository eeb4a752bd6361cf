//! Room commands: create, join (with recovery and the gate that keeps live
//! events behind the reply), leave, list, invite, remove a member.

use common::bus::room_channel;
use proto::chat::v1::{
    CreateRoomRequest, InviteMemberRequest, JoinRoomRequest, LeaveRoomRequest, ListRoomsRequest,
    RemoveMemberRequest,
};
use protocol::{
    ReplyResult, Room, RoomCreate, RoomJoin, RoomJoinReply, RoomLeave, RoomListReply, RoomReply,
    RoomSummary, RoomUser,
};
use serde_json::value::RawValue;

use super::{Outcome, assistant, done, failed, missing, reply};
use crate::frames::{self, CommandError};
use crate::session::Session;

pub(super) async fn create(s: &mut Session, args: RoomCreate) -> Result<Outcome, CommandError> {
    let visibility = args.visibility().to_proto();
    let request = s.actor()?.request(CreateRoomRequest {
        name: args.name.unwrap_or_default(),
        visibility: visibility as i32,
        members: args.members.unwrap_or_default(),
    });
    let room = s
        .chat()
        .create_room(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .room
        .ok_or_else(|| missing("room"))?;
    Ok(reply(ReplyResult::Room(RoomReply {
        room: Room::from(&room),
    })))
}

/// Subscribes first and holds live events, then reads the room, then sends
/// the reply and releases what is newer than it: nothing falls between.
pub(super) async fn join(
    s: &mut Session,
    args: RoomJoin,
    id: Option<u64>,
) -> Result<Outcome, CommandError> {
    let RoomJoin { room, since } = args;
    let channel = room_channel(&room);
    let actor = s.actor()?;
    let shared = s.link.shared.clone();
    let max = shared.config.max_rooms_per_conn;
    if !s.rooms.contains(&room) && s.rooms.len() >= max {
        return Err(CommandError::new(
            common::ErrorCode::TooLarge,
            format!("a connection may join at most {max} rooms; leave one first"),
        ));
    }
    if s.rooms.remove(&room) {
        shared.hub.leave(&channel, s.link.key).await;
    }
    let gate = shared
        .hub
        .join(
            &channel,
            s.link.key,
            &actor.user_id,
            s.link.outbox.clone(),
            true,
        )
        .await
        .map_err(|e| {
            CommandError::new(
                common::ErrorCode::Unavailable,
                format!("event bus unavailable: {e}"),
            )
        })?;
    let request = actor.request(JoinRoomRequest {
        room_id: room.clone(),
        since: since.and_then(|v| i64::try_from(v).ok()),
        limit: 0,
    });
    let response = match shared.backends.chat.clone().join_room(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            shared.hub.leave(&channel, s.link.key).await;
            return Err(CommandError::from_status("chat", &status));
        }
    };
    if since.is_some() && response.recovered {
        shared.metrics.recoveries.inc();
        shared
            .metrics
            .events_replayed
            .inc_by(response.events.len() as u64);
    }
    let streams = assistant::streams(s, &room).await;
    s.rooms.insert(room.clone());
    let reply = RoomJoinReply {
        room: response.room.as_ref().map(Room::from),
        last_seq: response.last_seq,
        events: response
            .events
            .into_iter()
            .filter_map(|e| RawValue::from_string(e.json).ok())
            .collect(),
        recovered: response.recovered,
        has_more: response.has_more,
        streams,
        online: response.online,
        read_marks: response
            .read_marks
            .into_iter()
            .map(|m| protocol::ReadMark {
                user: m.user_id,
                seq: m.seq,
            })
            .collect(),
    };
    let reply = id.map(|id| frames::reply_ok(id, ReplyResult::RoomJoin(reply)));
    shared
        .hub
        .open_gate(
            &channel,
            &gate,
            &s.link.outbox,
            reply,
            response.last_seq,
            &response.members,
        )
        .await;
    Ok(Outcome::Sent)
}

pub(super) async fn leave(s: &mut Session, args: RoomLeave) -> Result<Outcome, CommandError> {
    let RoomLeave { room, forget } = args;
    if forget == Some(true) {
        let request = s.actor()?.request(LeaveRoomRequest {
            room_id: room.clone(),
        });
        s.shared()
            .backends
            .chat
            .clone()
            .leave_room(request)
            .await
            .map_err(failed("chat"))?;
    }
    if s.rooms.remove(&room) {
        s.shared().hub.leave(&room_channel(&room), s.link.key).await;
    }
    Ok(done())
}

pub(super) async fn list(s: &mut Session) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ListRoomsRequest {});
    let rooms = s
        .chat()
        .list_rooms(request)
        .await
        .map_err(failed("chat"))?
        .into_inner()
        .rooms;
    Ok(reply(ReplyResult::RoomList(RoomListReply {
        rooms: rooms.iter().map(RoomSummary::from).collect(),
    })))
}

pub(super) async fn invite(s: &mut Session, args: RoomUser) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(InviteMemberRequest {
        room_id: args.room,
        user_id: args.user,
    });
    s.chat()
        .invite_member(request)
        .await
        .map_err(failed("chat"))?;
    Ok(done())
}

pub(super) async fn remove_member(
    s: &mut Session,
    args: RoomUser,
) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(RemoveMemberRequest {
        room_id: args.room,
        user_id: args.user,
    });
    s.chat()
        .remove_member(request)
        .await
        .map_err(failed("chat"))?;
    Ok(done())
}
