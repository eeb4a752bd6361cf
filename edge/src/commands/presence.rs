//! Presence, typing and call signalling: `presence.*`, `typing.*`, `call.*`.

use common::ErrorCode;
use proto::presence::v1::{
    ActOnCallRequest, GetPresenceRequest, InviteCallRequest, SetStatusRequest,
};
use protocol::{
    CallAct, CallInvite, CallInviteReply, PresenceReply, PresenceSet, PresenceState, PresenceUsers,
    ReplyResult, Typing,
};
use serde_json::Value;

use super::{Outcome, done, failed, reply};
use crate::frames::CommandError;
use crate::session::Session;

/// Most users one GetPresence call may name (presence-service's limit).
const PRESENCE_BATCH: usize = 1_000;

pub(super) async fn set(s: &mut Session, args: PresenceSet) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(SetStatusRequest {
        status: args.status,
        text: args.text.unwrap_or_default(),
    });
    s.presence()
        .set_status(request)
        .await
        .map_err(failed("presence"))?;
    Ok(done())
}

/// Subscribes first, then reads: a change in between is not missed.
pub(super) async fn subscribe(
    s: &mut Session,
    args: PresenceUsers,
) -> Result<Outcome, CommandError> {
    let users = args.users;
    let max = s.shared().config.presence_subscribe_max;
    // Room-wide follows count too: members of joined rooms are followed.
    let me = s.actor()?.user_id;
    let mut followed = s.shared().hub.room_presence_members(s.rooms.iter());
    followed.remove(&me);
    followed.extend(s.follows.users().iter().cloned());
    let new = users.iter().filter(|u| !followed.contains(*u)).count();
    if followed.len() + new > max {
        return Err(CommandError::new(
            ErrorCode::TooLarge,
            format!("a connection may follow at most {max} users"),
        ));
    }
    // Only users who share a room with the caller, and do not block them.
    let fresh: Vec<String> = users
        .iter()
        .filter(|u| **u != me && !followed.contains(*u))
        .cloned()
        .collect();
    super::blocks::require_relation(s, &fresh, None).await?;
    s.follows.subscribe(&s.link, &me, &users).await?;
    let mut presence = Vec::with_capacity(users.len());
    for batch in users.chunks(PRESENCE_BATCH) {
        let request = GetPresenceRequest {
            user_ids: batch.to_vec(),
        };
        let response = s
            .shared()
            .backends
            .presence
            .clone()
            .get_presence(request)
            .await
            .map_err(failed("presence"))?;
        presence.extend(
            response
                .into_inner()
                .presence
                .into_iter()
                .map(|p| PresenceState {
                    user: p.user_id,
                    status: p.status,
                    text: p.text,
                    last_seen: p.last_seen,
                }),
        );
    }
    Ok(reply(ReplyResult::Presence(PresenceReply { presence })))
}

pub(super) async fn unsubscribe(
    s: &mut Session,
    args: PresenceUsers,
) -> Result<Outcome, CommandError> {
    s.follows.unsubscribe(&s.link, &args.users).await;
    Ok(done())
}

/// `typing.*` on a room not joined on this connection is `forbidden`.
pub(super) fn typing(s: &mut Session, args: Typing, start: bool) -> Result<Outcome, CommandError> {
    if !s.rooms.contains(&args.room) {
        return Err(CommandError::new(
            ErrorCode::Forbidden,
            "join the room on this connection first",
        ));
    }
    s.typing(args.room, start)?;
    Ok(done())
}

/// A call payload as JSON text; empty when absent.
fn payload_json(payload: Option<Value>) -> String {
    payload.map(|p| p.to_string()).unwrap_or_default()
}

pub(super) async fn call_invite(
    s: &mut Session,
    args: CallInvite,
) -> Result<Outcome, CommandError> {
    // A call needs a relationship: a shared room (the one named, if any)
    // and no block.
    // (Calling yourself is left to presence-service, which refuses it.)
    if args.to != s.actor()?.user_id {
        super::blocks::require_relation(s, std::slice::from_ref(&args.to), args.room.as_deref())
            .await?;
    }
    let request = s.actor()?.request(InviteCallRequest {
        to: args.to,
        room_id: args.room.unwrap_or_default(),
        payload_json: payload_json(args.payload),
    });
    let call_id = s
        .presence()
        .invite_call(request)
        .await
        .map_err(failed("presence"))?
        .into_inner()
        .call_id;
    Ok(reply(ReplyResult::CallInvite(CallInviteReply { call_id })))
}

/// `call.answer`, `call.reject`, `call.end`, `call.ice`: `action` is the part after `call.`.
pub(super) async fn call_act(
    s: &mut Session,
    action: &str,
    args: CallAct,
) -> Result<Outcome, CommandError> {
    let request = s.actor()?.request(ActOnCallRequest {
        action: action.to_string(),
        call_id: args.call_id,
        payload_json: payload_json(args.payload),
    });
    s.presence()
        .act_on_call(request)
        .await
        .map_err(failed("presence"))?;
    Ok(done())
}
