//! Room calls: creating, joining (with who is online) and leaving rooms,
//! inviting and removing members, and the visibility and membership checks
//! the other calls share.

use std::collections::HashSet;

use common::grpc::Actor;
use proto::chat::v1::{
    CreateRoomRequest, InviteMemberRequest, JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest,
    RemoveMemberRequest, Room, User, Visibility,
};
use proto::presence::v1::GetPresenceRequest;

use super::{
    ChatHandler, MAX_ROOM_NAME_CHARS, MembersOnline, check_id, check_no_nul, page, user_of,
};
use crate::error::{ChatError, Denial};
use crate::permissions::{Action, rank};
use crate::store::{Membership, NewRoom, RoomAndRole};
use crate::writer::Op;

impl ChatHandler {
    /// The room if `actor` may see it: public rooms to everyone, others to
    /// members only; otherwise `NotFound`, whether it exists or not.
    pub(super) async fn visible_room(
        &self,
        room_id: &str,
        actor: &Actor,
    ) -> Result<(Room, Option<Membership>), ChatError> {
        check_id("room_id", room_id)?;
        let RoomAndRole {
            room,
            membership: role,
            ..
        } = self
            .store
            .room_and_role(room_id, &actor.user_id)
            .await?
            .ok_or(ChatError::NotFound("room"))?;
        if role.is_none() && room.visibility != Visibility::Public as i32 {
            return Err(ChatError::NotFound("room"));
        }
        Ok((room, role))
    }

    /// The room's member ids (the first [`MAX_PRESENCE_LOOKUP`]) and who
    /// of them is online now; nobody online when presence is unreachable
    /// (a join does not fail for it). Joins of one room that arrive
    /// together share one read (`common::coalesce`), begun after each arrived.
    async fn members_online(&self, room_id: &str) -> MembersOnline {
        self.online_reads
            .get(room_id.to_string(), || self.read_members_online(room_id))
            .await
    }

    /// What [`Self::members_online`] shares: the member list and a presence
    /// lookup of them.
    async fn read_members_online(&self, room_id: &str) -> MembersOnline {
        let user_ids: Vec<String> = match self.store.members(room_id, MAX_PRESENCE_LOOKUP).await {
            Ok(members) => members.into_iter().map(|m| m.id).collect(),
            Err(error) => {
                tracing::warn!(%error, "cannot list members for presence");
                return (Vec::new(), Vec::new());
            }
        };
        let Some(presence) = self.presence.clone() else {
            return (user_ids, Vec::new());
        };
        if user_ids.is_empty() {
            return (user_ids, Vec::new());
        }
        let request = GetPresenceRequest {
            user_ids: user_ids.clone(),
        };
        let online = match presence.clone().get_presence(request).await {
            Ok(response) => response
                .into_inner()
                .presence
                .into_iter()
                .filter(|p| p.online)
                .map(|p| p.user_id)
                .collect(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "presence lookup failed");
                Vec::new()
            }
        };
        (user_ids, online)
    }

    pub(super) async fn create_room(
        &self,
        actor: &Actor,
        request: CreateRoomRequest,
    ) -> Result<Room, ChatError> {
        let visibility =
            Visibility::try_from(request.visibility).unwrap_or(Visibility::Unspecified);
        let name = check_room_name(&request.name)?;
        let max_members = self.limits.max_initial_members;
        if request.members.len() > max_members {
            return Err(ChatError::TooLarge(format!(
                "a new room may name at most {max_members} members"
            )));
        }
        let mut seen = HashSet::from([actor.user_id.clone()]);
        let mut members = Vec::new();
        for id in request.members {
            check_id("members", &id)?;
            if seen.insert(id.clone()) {
                members.push(User {
                    name: id.clone(),
                    id,
                });
            }
        }
        let owner = user_of(actor)?;
        let direct_key = match visibility {
            Visibility::Unspecified => {
                return Err(ChatError::BadRequest(
                    "visibility must be public, private or direct".into(),
                ));
            }
            Visibility::Public | Visibility::Private => {
                if name.is_empty() {
                    return Err(ChatError::BadRequest("name is required".into()));
                }
                None
            }
            Visibility::Direct => {
                let [other] = members.as_slice() else {
                    return Err(ChatError::BadRequest(
                        "a direct room needs exactly one other member".into(),
                    ));
                };
                if !self
                    .store
                    .blockers_of(&actor.user_id, std::slice::from_ref(&other.id))
                    .await?
                    .is_empty()
                {
                    return Err(ChatError::Denied(Denial::Blocked));
                }
                let mut pair = [actor.user_id.as_str(), other.id.as_str()];
                pair.sort_unstable();
                let key = pair.join("\n");
                if let Some(room) = self.store.direct_room(&key).await? {
                    // One of the pair who left gets back in.
                    self.writer
                        .submit(Op::AddMember {
                            room_id: room.id.clone(),
                            user: owner,
                        })
                        .await?;
                    return Ok(room);
                }
                Some(key)
            }
        };
        let new = NewRoom {
            id: common::ids::new_id("r"),
            name,
            visibility,
            owner,
            direct_key: direct_key.clone(),
            members,
            created_at: common::ids::now_ms(),
        };
        match self.writer.submit(Op::CreateRoom(new)).await {
            Ok(applied) => applied
                .room
                .ok_or_else(|| ChatError::Commit("no room created".into())),
            // Two creates of the same direct pair raced: the other one won.
            Err(e) if e.is_unique_violation() && direct_key.is_some() => {
                let key = direct_key.unwrap_or_default();
                self.store.direct_room(&key).await?.ok_or(e)
            }
            Err(e) if e.is_unique_violation() => {
                Err(ChatError::Conflict("room name is taken".into()))
            }
            Err(e) => Err(e),
        }
    }

    pub(super) async fn join_room(
        &self,
        actor: &Actor,
        request: JoinRoomRequest,
    ) -> Result<JoinRoomResponse, ChatError> {
        if request.since.is_some_and(|since| since < 0) {
            return Err(ChatError::BadRequest("since must not be negative".into()));
        }
        check_id("room_id", &request.room_id)?;
        let found = self
            .store
            .room_and_role(&request.room_id, &actor.user_id)
            .await?;
        let Some(RoomAndRole {
            mut room,
            membership: role,
            truncated_seq,
        }) = found
        else {
            return self.join_deleted(&request).await;
        };
        if role.is_none() && room.visibility != Visibility::Public as i32 {
            if self.store.is_banned(&room.id, &actor.user_id).await? {
                return Err(ChatError::Denied(Denial::Banned));
            }
            return Err(ChatError::NotFound("room"));
        }
        if role.is_none() {
            // Visible without membership means public: joining makes a
            // member (the writer refuses a banned user).
            let user = user_of(actor)?;
            let applied = self
                .writer
                .submit(Op::AddMember {
                    room_id: room.id.clone(),
                    user,
                })
                .await?;
            if let Some(event) = applied.events.last() {
                room.last_seq = room.last_seq.max(event.seq);
            }
        }
        // Everything up to this seq is answered from the log; later events
        // reach the caller live: it subscribed before calling, so whatever
        // the room's row said when read above, or the join's own event, is
        // a point after which nothing can be missed.
        let last_seq = room.last_seq;
        // Retention deleted the log from before `since`: replaying would
        // leave a gap the client cannot see, so it reloads instead. The
        // room's row says so, or (retention ran after it was read) the
        // log read starts past `since`.
        let (events, has_more, history_truncated) = match request.since {
            Some(since) if since < truncated_seq => (Vec::new(), false, true),
            // Nothing was missed: nothing to read.
            Some(since) if since >= last_seq => (Vec::new(), false, false),
            Some(since) => {
                let limit = page(request.limit, self.limits.page_limit);
                let (events, has_more, hit) = self
                    .store
                    .events_since(&room.id, since, last_seq, limit)
                    .await?;
                self.metrics
                    .recent_events_reads
                    .get_or_create(&[("result", if hit { "hit" } else { "miss" })])
                    .inc();
                if events.first().is_none_or(|event| event.seq != since + 1) {
                    (Vec::new(), false, true)
                } else {
                    (events, has_more, false)
                }
            }
            None => (Vec::new(), false, false),
        };
        let (members, online) = if request.omit_presence {
            (Vec::new(), Vec::new())
        } else {
            let (members, online) = self.members_online(&room.id).await;
            (
                if request.omit_members {
                    Vec::new()
                } else {
                    members
                },
                online,
            )
        };
        let read_marks = self.store.read_marks(&room.id, MAX_PRESENCE_LOOKUP).await?;
        Ok(JoinRoomResponse {
            room: Some(room),
            last_seq,
            events,
            has_more,
            recovered: request.since.is_some() && !has_more && !history_truncated,
            online,
            members,
            read_marks,
            history_truncated,
        })
    }

    /// A join of a room that is not there: `NotFound`, except that a
    /// recovering join (`since` before the deletion) of a deleted room gets
    /// its `room.deleted` event — all that is left of it.
    async fn join_deleted(&self, request: &JoinRoomRequest) -> Result<JoinRoomResponse, ChatError> {
        let Some(since) = request.since else {
            return Err(ChatError::NotFound("room"));
        };
        let Some((room, event)) = self.store.deleted_room(&request.room_id).await? else {
            return Err(ChatError::NotFound("room"));
        };
        if since >= room.last_seq {
            return Err(ChatError::NotFound("room"));
        }
        Ok(JoinRoomResponse {
            last_seq: room.last_seq,
            room: Some(room),
            events: vec![event],
            has_more: false,
            recovered: true,
            ..JoinRoomResponse::default()
        })
    }

    pub(super) async fn leave_room(
        &self,
        actor: &Actor,
        request: LeaveRoomRequest,
    ) -> Result<(), ChatError> {
        let (room, role) = self.visible_room(&request.room_id, actor).await?;
        if role.is_none() {
            return Ok(());
        }
        let user = user_of(actor)?;
        self.writer
            .submit(Op::RemoveMember {
                room_id: room.id,
                user,
            })
            .await?;
        Ok(())
    }

    /// A room that exists, whoever may see it (service-side callers).
    pub(crate) async fn existing_room(&self, room_id: &str) -> Result<Room, ChatError> {
        check_id("room_id", room_id)?;
        self.store
            .room(room_id)
            .await?
            .ok_or(ChatError::NotFound("room"))
    }

    /// The room and the caller's membership; `Forbidden` unless a member.
    pub(super) async fn member_room(
        &self,
        room_id: &str,
        actor: &Actor,
    ) -> Result<(Room, Membership), ChatError> {
        let (room, role) = self.visible_room(room_id, actor).await?;
        let role = role.ok_or_else(|| ChatError::Forbidden("join the room first".into()))?;
        Ok((room, role))
    }

    pub(super) async fn invite(
        &self,
        actor: &Actor,
        request: InviteMemberRequest,
    ) -> Result<(), ChatError> {
        let (room, role) = self.member_room(&request.room_id, actor).await?;
        check_id("user_id", &request.user_id)?;
        match Visibility::try_from(room.visibility) {
            Ok(Visibility::Direct) => {
                return Err(ChatError::Forbidden(
                    "a direct room has exactly two members".into(),
                ));
            }
            Ok(Visibility::Private)
                if !self.limits.rules().allows(role.role, Action::InvitePrivate) =>
            {
                return Err(ChatError::Forbidden(
                    "only the owner or an admin may invite".into(),
                ));
            }
            _ => {}
        }
        let invitee = User {
            id: request.user_id.clone(),
            name: request.user_id,
        };
        // The invitee becomes a member only by accepting.
        self.writer
            .submit(Op::Invite {
                room_id: room.id,
                user: invitee,
                by: user_of(actor)?,
            })
            .await?;
        Ok(())
    }

    /// The caller accepts (`accept`) or declines an invitation to `room_id`;
    /// accepting answers the room they are now a member of.
    pub(super) async fn answer_invitation(
        &self,
        actor: &Actor,
        room_id: &str,
        accept: bool,
    ) -> Result<Option<Room>, ChatError> {
        check_id("room_id", room_id)?;
        let user = user_of(actor)?;
        let room_id = room_id.to_string();
        let op = if accept {
            Op::AcceptInvitation { room_id, user }
        } else {
            Op::DeclineInvitation { room_id, user }
        };
        match self.writer.submit(op).await {
            Ok(applied) => Ok(applied.room),
            // A room that no longer exists has no invitation either.
            Err(ChatError::NotFound(_)) => Err(ChatError::NotFound("invitation")),
            Err(error) => Err(error),
        }
    }

    pub(super) async fn remove(
        &self,
        actor: &Actor,
        request: RemoveMemberRequest,
    ) -> Result<(), ChatError> {
        let (room, role) = self.member_room(&request.room_id, actor).await?;
        check_id("user_id", &request.user_id)?;
        if !self.limits.rules().allows(role.role, Action::RemoveMember) {
            return Err(ChatError::Forbidden(
                "only the owner or an admin may remove members".into(),
            ));
        }
        if request.user_id == actor.user_id {
            return Err(ChatError::BadRequest("leave with LeaveRoom".into()));
        }
        if let Some(RoomAndRole {
            membership: Some(target),
            ..
        }) = self.store.room_and_role(&room.id, &request.user_id).await?
            && rank(target.role) >= rank(role.role)
        {
            return Err(ChatError::Forbidden(
                "you may only remove members below your role".into(),
            ));
        }
        let member = User {
            name: request.user_id.clone(),
            id: request.user_id,
        };
        let applied = self
            .writer
            .submit(Op::RemoveMember {
                room_id: room.id,
                user: member,
            })
            .await?;
        if applied.events.is_empty() {
            return Err(ChatError::NotFound("member"));
        }
        Ok(())
    }
}

/// A room name, trimmed and checked (empty is allowed here).
pub(super) fn check_room_name(name: &str) -> Result<String, ChatError> {
    let name = name.trim().to_string();
    check_no_nul("name", &name)?;
    if common::ids::has_disguising_chars(&name) {
        return Err(ChatError::BadRequest(
            "name must not contain control or text-direction characters".into(),
        ));
    }
    if name.chars().count() > MAX_ROOM_NAME_CHARS {
        return Err(ChatError::TooLarge(format!(
            "name is longer than {MAX_ROOM_NAME_CHARS} characters"
        )));
    }
    Ok(name)
}

/// Most members whose presence `JoinRoom` looks up for `online`.
const MAX_PRESENCE_LOOKUP: u32 = 1_000;
