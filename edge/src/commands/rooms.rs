//! Room commands: create, join (with recovery and the gate that keeps live
//! events behind the reply), leave, list, invite, remove a member.

use common::bus::room_channel;
use proto::chat::v1::{
    CreateRoomRequest, InviteMemberRequest, JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest,
    ListRoomsRequest, RemoveMemberRequest,
};
use protocol::{
    JoinTarget, ReplyResult, Room, RoomCreate, RoomJoin, RoomJoinManyReply, RoomJoinReply,
    RoomJoinResult, RoomLeave, RoomListArgs, RoomListReply, RoomReply, RoomSummary, RoomUser,
};
use serde_json::value::RawValue;

use super::{Outcome, assistant, done, failed, missing, reply};
use crate::frames::{self, CommandError};
use crate::hub::{PresenceSource, RoomPresence};
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

/// `room.join`: one room, or several (`rooms`) answered by one reply.
pub(super) async fn join(
    s: &mut Session,
    args: RoomJoin,
    id: Option<u64>,
) -> Result<Outcome, CommandError> {
    if args.rooms.is_some() {
        return join_many(s, args.targets(), id).await;
    }
    let Some(target) = args.targets().pop() else {
        return Err(CommandError::bad_request("missing string field `room`"));
    };
    let max = s.shared().config.max_rooms_per_conn;
    if !s.rooms.contains(&target.room) && s.rooms.len() >= max {
        return Err(too_many_rooms(max));
    }
    let entered = enter(s, &target).await?;
    let reply = id.map(|id| frames::reply_ok(id, ReplyResult::RoomJoin(entered.reply.clone())));
    open(s, entered, reply).await;
    Ok(Outcome::Sent)
}

fn too_many_rooms(max: usize) -> CommandError {
    CommandError::new(
        common::ErrorCode::TooLarge,
        format!("a connection may join at most {max} rooms; leave one first"),
    )
}

/// Several rooms: each is joined as a single join would be (its live events
/// held until the one reply is queued), and the reply carries each room's
/// result. Too many rooms joins none.
async fn join_many(
    s: &mut Session,
    targets: Vec<JoinTarget>,
    id: Option<u64>,
) -> Result<Outcome, CommandError> {
    let config = &s.shared().config;
    let (per_join, per_conn) = (config.max_rooms_per_join, config.max_rooms_per_conn);
    if targets.len() > per_join {
        return Err(CommandError::new(
            common::ErrorCode::TooLarge,
            format!("one room.join may name at most {per_join} rooms"),
        ));
    }
    let new = targets
        .iter()
        .filter(|t| !s.rooms.contains(&t.room))
        .count();
    if s.rooms.len() + new > per_conn {
        return Err(too_many_rooms(per_conn));
    }
    let mut results = Vec::with_capacity(targets.len());
    let mut entered = Vec::new();
    for target in &targets {
        match enter(s, target).await {
            Ok(room) => {
                results.push(RoomJoinResult {
                    room: target.room.clone(),
                    ok: true,
                    error: None,
                    joined: Some(room.reply.clone()),
                });
                entered.push(room);
            }
            Err(error) => results.push(RoomJoinResult {
                room: target.room.clone(),
                ok: false,
                error: Some(error.object(None)),
                joined: None,
            }),
        }
    }
    let result = ReplyResult::RoomJoinMany(RoomJoinManyReply { results });
    if entered.is_empty() {
        return Ok(reply(result));
    }
    // The reply goes out with the first gate; every room's held events follow it.
    let mut reply = id.map(|id| frames::reply_ok(id, result));
    for room in entered {
        open(s, room, reply.take()).await;
    }
    Ok(Outcome::Sent)
}

/// A room joined on this connection whose live events are still held.
struct Entered {
    channel: String,
    gate: std::sync::Arc<std::sync::Mutex<crate::hub::Gate>>,
    reply: RoomJoinReply,
    members: Vec<String>,
}

/// Subscribes first and holds live events, then reads the room: nothing
/// falls between the reply and what follows it (see [`open`]).
async fn enter(s: &mut Session, target: &JoinTarget) -> Result<Entered, CommandError> {
    let JoinTarget { room, since } = target.clone();
    let channel = room_channel(&room);
    let actor = s.actor()?;
    let shared = s.link.shared.clone();
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
    // A room whose members' presence this edge follows answers `online[]`
    // from what the hub knows, not from a member list and lookup per join;
    // only the first join of a room on this edge needs its member list.
    let source = shared.hub.presence_source(&channel, s.link.key).await;
    // The assistant's replies in progress are read alongside.
    let (response, streams) = tokio::join!(
        join_room(s, &channel, &room, since, source),
        assistant::streams(s, &room)
    );
    let mut response = response?;
    let online = match source {
        PresenceSource::Chat | PresenceSource::Introduce => std::mem::take(&mut response.online),
        PresenceSource::Hub => match online_now(s, &channel, &actor.user_id).await {
            Some(online) => online,
            // The room outgrew room-wide presence meanwhile: ask chat-service.
            None => {
                response = join_room(s, &channel, &room, since, PresenceSource::Chat).await?;
                std::mem::take(&mut response.online)
            }
        },
    };
    if since.is_some() && response.recovered {
        shared.metrics.recoveries.inc();
        shared
            .metrics
            .events_replayed
            .inc_by(response.events.len() as u64);
    }
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
        online,
        read_marks: response
            .read_marks
            .into_iter()
            .map(|m| protocol::ReadMark {
                user: m.user_id,
                seq: m.seq,
            })
            .collect(),
        history_truncated: response.history_truncated,
    };
    Ok(Entered {
        channel,
        gate,
        reply,
        members: response.members,
    })
}

/// chat-service's `JoinRoom`; on failure the connection leaves the channel
/// it subscribed to for the join.
async fn join_room(
    s: &Session,
    channel: &str,
    room: &str,
    since: Option<u64>,
    source: PresenceSource,
) -> Result<JoinRoomResponse, CommandError> {
    let shared = &s.link.shared;
    let request = s.actor()?.request(JoinRoomRequest {
        room_id: room.to_string(),
        since: since.and_then(|v| i64::try_from(v).ok()),
        limit: 0,
        omit_presence: source == PresenceSource::Hub,
        omit_members: source != PresenceSource::Introduce,
    });
    match shared.backends.chat.clone().join_room(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) => {
            shared.hub.leave(channel, s.link.key).await;
            Err(CommandError::from_status("chat", &status))
        }
    }
}

/// Who of the room's members is online, from the hub's room-wide presence,
/// asking presence-service only about those it has not heard of (and the
/// joining user, until the log makes them a member); `None` when the hub
/// does not follow the room's presence.
async fn online_now(s: &Session, channel: &str, user: &str) -> Option<Vec<String>> {
    let shared = &s.link.shared;
    let RoomPresence {
        mut online,
        mut unknown,
    } = shared.hub.room_presence(channel)?;
    if !online.iter().chain(&unknown).any(|u| u == user) {
        unknown.push(user.to_string());
    }
    if !unknown.is_empty() {
        let start = shared.hub.lookup_start();
        let seen = shared.leases.online(&unknown).await;
        shared.hub.learn_presence(start, &seen);
        online.extend(unknown.into_iter().filter(|u| seen.get(u) == Some(&true)));
    }
    Some(online)
}

/// Queues `reply` (if any), then releases the room's held events newer
/// than it, and follows the members' presence.
async fn open(s: &mut Session, entered: Entered, reply: Option<axum::extract::ws::Utf8Bytes>) {
    let shared = s.link.shared.clone();
    shared
        .hub
        .open_gate(
            &entered.channel,
            &entered.gate,
            &s.link.outbox,
            reply,
            entered.reply.last_seq,
            &entered.members,
        )
        .await;
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

pub(super) async fn list(s: &mut Session, args: RoomListArgs) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ListRoomsRequest {
        cursor: args.cursor,
        // 0: chat-service's largest page.
        limit: args.limit.and_then(|l| u32::try_from(l).ok()).unwrap_or(0),
    });
    let response = s
        .chat()
        .list_rooms(request)
        .await
        .map_err(failed("chat"))?
        .into_inner();
    Ok(reply(ReplyResult::RoomList(RoomListReply {
        rooms: response.rooms.iter().map(RoomSummary::from).collect(),
        next_cursor: response.next_cursor,
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
