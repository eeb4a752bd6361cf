//! Room settings and deletion, the member list, roles, mutes and bans,
//! reports, the directory, and clearing notifications. Every permission is
//! read from the one table (`permissions.rs`).

use std::collections::HashMap;

use common::bus::{envelope, user_channel};
use common::grpc::Actor;
use proto::chat::v1::{
    ClearNotificationsRequest, DeleteRoomRequest, DirectoryRequest, DirectoryResponse,
    ListMembersRequest, ListMembersResponse, ModerateRequest, Report, ReportMessageRequest, Room,
    Sanction, SetRoleRequest, UpdateRoomRequest, User,
};
use proto::presence::v1::GetPresenceRequest;
use protocol::{NotificationCleared, Role, ServerFrame};

use super::rooms::check_room_name;
use super::{ChatHandler, check_id, check_metadata, check_no_nul, page, user_of};
use crate::error::ChatError;
use crate::permissions::{Action, rank};
use crate::store::{DirectoryPage, MembersPage, RoomChanges};
use crate::writer::Op;

/// Longest room topic, in characters.
pub const MAX_TOPIC_CHARS: usize = 1_000;
/// Longest report reason, in characters.
pub const MAX_REASON_CHARS: usize = 1_000;
/// Largest page of members or directory rooms.
const MAX_PAGE: u32 = 100;
/// Most members told of a room's deletion on their own channels.
const MAX_TOLD_OF_DELETE: u32 = 10_000;
/// Most notification ids one call clears or marks read.
pub(crate) const MAX_NOTIFICATION_IDS: usize = 100;

/// Who acts on a room: a member, checked against the permission table, or
/// a trusted backend, which may do everything.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Acting<'a> {
    Member(&'a Actor),
    Backend,
}

/// The sender of what backends do.
fn system() -> User {
    User {
        id: crate::backend::SYSTEM_SENDER.to_string(),
        name: "System".to_string(),
    }
}

/// Rank of a backend: above every role.
const BACKEND_RANK: u8 = u8::MAX;

impl ChatHandler {
    /// The room, the acting party's rank and who they are, when the table
    /// lets them do `action`; `Forbidden` otherwise.
    async fn authorize(
        &self,
        room_id: &str,
        acting: Acting<'_>,
        action: Action,
    ) -> Result<(Room, u8, User), ChatError> {
        match acting {
            Acting::Backend => Ok((self.existing_room(room_id).await?, BACKEND_RANK, system())),
            Acting::Member(actor) => {
                let (room, membership) = self.member_room(room_id, actor).await?;
                if !self.limits.rules().allows(membership.role, action) {
                    return Err(ChatError::Forbidden(format!(
                        "a room {} may not do this",
                        membership.role.as_str()
                    )));
                }
                Ok((room, rank(membership.role), user_of(actor)?))
            }
        }
    }

    /// The role of `user_id` in the room; `NotFound` unless a member.
    async fn target_role(&self, room_id: &str, user_id: &str) -> Result<Role, ChatError> {
        check_id("user_id", user_id)?;
        self.store
            .room_and_role(room_id, user_id)
            .await?
            .and_then(|found| found.membership)
            .map(|m| m.role)
            .ok_or(ChatError::NotFound("member"))
    }

    pub(crate) async fn update_room(
        &self,
        acting: Acting<'_>,
        request: UpdateRoomRequest,
    ) -> Result<Room, ChatError> {
        let name = match &request.name {
            Some(name) => {
                let name = check_room_name(name)?;
                if name.is_empty() {
                    return Err(ChatError::BadRequest("name must not be empty".into()));
                }
                Some(name)
            }
            None => None,
        };
        let topic = match request.topic {
            Some(topic) => {
                check_no_nul("topic", &topic)?;
                if topic.chars().count() > MAX_TOPIC_CHARS {
                    return Err(ChatError::TooLarge(format!(
                        "topic is longer than {MAX_TOPIC_CHARS} characters"
                    )));
                }
                Some(topic.trim().to_string())
            }
            None => None,
        };
        let metadata = match request.metadata_json {
            Some(json) if json == "{}" => Some(String::new()),
            Some(json) => Some(check_metadata(&json)?),
            None => None,
        };
        let (room, _, by) = self
            .authorize(&request.room_id, acting, Action::UpdateRoom)
            .await?;
        let applied = self
            .writer
            .submit(Op::UpdateRoom {
                room_id: room.id,
                changes: RoomChanges {
                    name,
                    topic,
                    metadata,
                },
                by,
            })
            .await
            .map_err(|e| match e {
                e if e.is_unique_violation() => ChatError::Conflict("room name is taken".into()),
                e => e,
            })?;
        applied
            .room
            .ok_or_else(|| ChatError::Commit("no room updated".into()))
    }

    pub(crate) async fn delete_room(
        &self,
        acting: Acting<'_>,
        request: DeleteRoomRequest,
    ) -> Result<(), ChatError> {
        let (room, _, by) = self
            .authorize(&request.room_id, acting, Action::DeleteRoom)
            .await?;
        // Read before they go: every member hears of it, joined or not.
        let members = self.store.members(&room.id, MAX_TOLD_OF_DELETE).await?;
        let applied = self
            .writer
            .submit(Op::DeleteRoom {
                room_id: room.id,
                by,
            })
            .await?;
        // Each member's connections that did not join the room (those that
        // did got it on the room's channel) get it on the user's channel.
        for event in &applied.events {
            let envelope = envelope(&event.room_id, event.seq, &event.kind, event.json.clone());
            for member in &members {
                if let Err(error) = self.bus.publish(&user_channel(&member.id), &envelope).await {
                    tracing::warn!(%error, "cannot publish room.deleted to a member");
                }
            }
        }
        Ok(())
    }

    pub(crate) async fn list_members(
        &self,
        actor: &Actor,
        request: ListMembersRequest,
    ) -> Result<ListMembersResponse, ChatError> {
        let (room, _) = self.visible_room(&request.room_id, actor).await?;
        let after = match request.cursor.as_deref() {
            None => None,
            Some(cursor) => Some(
                cursor
                    .split_once(':')
                    .and_then(|(at, user)| Some((at.parse::<i64>().ok()?, user.to_string())))
                    .filter(|(_, user)| !user.is_empty())
                    .ok_or_else(|| ChatError::BadRequest("cursor is not valid".into()))?,
            ),
        };
        let limit = page(request.limit, MAX_PAGE);
        let (mut members, more) = self
            .store
            .members_page(&room.id, &MembersPage { after, limit })
            .await?;
        let ids: Vec<String> = members
            .iter()
            .filter_map(|m| m.user.as_ref().map(|u| u.id.clone()))
            .collect();
        let statuses = self.statuses(ids).await;
        for member in &mut members {
            let id = member.user.as_ref().map(|u| u.id.as_str()).unwrap_or("");
            member.status = statuses
                .get(id)
                .cloned()
                .unwrap_or_else(|| "offline".to_string());
        }
        let next_cursor = more.then(|| members.last()).flatten().map(|m| {
            let id = m.user.as_ref().map(|u| u.id.as_str()).unwrap_or("");
            format!("{}:{id}", m.joined_at)
        });
        Ok(ListMembersResponse {
            members,
            next_cursor,
        })
    }

    /// Each user's presence status; everyone `offline` when presence is
    /// unreachable (the list does not fail for it).
    async fn statuses(&self, user_ids: Vec<String>) -> HashMap<String, String> {
        let Some(presence) = self.presence.clone() else {
            return HashMap::new();
        };
        if user_ids.is_empty() {
            return HashMap::new();
        }
        match presence
            .clone()
            .get_presence(GetPresenceRequest { user_ids })
            .await
        {
            Ok(response) => response
                .into_inner()
                .presence
                .into_iter()
                .map(|p| (p.user_id, p.status))
                .collect(),
            Err(status) => {
                tracing::warn!(code = ?status.code(), message = status.message(), "presence lookup failed");
                HashMap::new()
            }
        }
    }

    pub(crate) async fn set_role(
        &self,
        acting: Acting<'_>,
        request: SetRoleRequest,
    ) -> Result<(), ChatError> {
        let role = Role::from_proto(request.role)
            .ok_or_else(|| ChatError::BadRequest("role must be owner, admin or member".into()))?;
        let action = if role == Role::Owner {
            Action::TransferOwnership
        } else {
            Action::SetRole
        };
        let (room, my_rank, by) = self.authorize(&request.room_id, acting, action).await?;
        let current = self.target_role(&room.id, &request.user_id).await?;
        if current == role {
            return Ok(());
        }
        if current == Role::Owner {
            return Err(ChatError::Forbidden(
                "the owner's role changes only by transferring ownership".into(),
            ));
        }
        if role != Role::Owner && (rank(current) >= my_rank || rank(role) > my_rank) {
            return Err(ChatError::Forbidden(
                "you may only give roles up to yours to members below you".into(),
            ));
        }
        self.writer
            .submit(Op::SetRole {
                room_id: room.id,
                user_id: request.user_id,
                role,
                by,
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn moderate(
        &self,
        acting: Acting<'_>,
        request: ModerateRequest,
    ) -> Result<(), ChatError> {
        let sanction = Sanction::try_from(request.sanction).unwrap_or(Sanction::Unspecified);
        let action = match sanction {
            Sanction::Mute | Sanction::Unmute => Action::Mute,
            Sanction::Ban | Sanction::Unban => Action::Ban,
            Sanction::Unspecified => {
                return Err(ChatError::BadRequest(
                    "sanction must be mute, unmute, ban or unban".into(),
                ));
            }
        };
        if let Some(until) = request.until
            && until <= common::ids::now_ms()
        {
            return Err(ChatError::BadRequest("until must be in the future".into()));
        }
        let (room, my_rank, by) = self.authorize(&request.room_id, acting, action).await?;
        check_id("user_id", &request.user_id)?;
        if request.user_id == by.id {
            return Err(ChatError::BadRequest("you cannot sanction yourself".into()));
        }
        if sanction != Sanction::Unban {
            let target = self.target_role(&room.id, &request.user_id).await?;
            if rank(target) >= my_rank {
                return Err(ChatError::Forbidden(
                    "you may only act on members below your role".into(),
                ));
            }
        }
        self.writer
            .submit(Op::Sanction {
                room_id: room.id,
                user_id: request.user_id,
                sanction,
                until: request.until,
                by,
            })
            .await?;
        Ok(())
    }

    pub(crate) async fn report(
        &self,
        actor: &Actor,
        request: ReportMessageRequest,
    ) -> Result<Report, ChatError> {
        let reason = request.reason.trim().to_string();
        if reason.is_empty() {
            return Err(ChatError::BadRequest("reason is required".into()));
        }
        check_no_nul("reason", &reason)?;
        if reason.chars().count() > MAX_REASON_CHARS {
            return Err(ChatError::TooLarge(format!(
                "reason is longer than {MAX_REASON_CHARS} characters"
            )));
        }
        let (room, _) = self.member_room(&request.room_id, actor).await?;
        check_id("message_id", &request.message_id)?;
        let message = self
            .store
            .message(&room.id, &request.message_id)
            .await?
            .filter(|m| !m.deleted)
            .ok_or(ChatError::NotFound("message"))?;
        let report = Report {
            id: common::ids::new_id("rep"),
            room_id: room.id,
            message_id: message.id,
            reporter_id: actor.user_id.clone(),
            reason,
            created_at: common::ids::now_ms(),
            sender_id: message.sender.map(|s| s.id).unwrap_or_default(),
            text: message.text,
        };
        self.store.add_report(&report).await?;
        Ok(report)
    }

    pub(crate) async fn directory(
        &self,
        request: DirectoryRequest,
    ) -> Result<DirectoryResponse, ChatError> {
        let prefix = request.query.unwrap_or_default().trim().to_lowercase();
        check_no_nul("query", &prefix)?;
        if prefix.chars().count() > super::MAX_ROOM_NAME_CHARS {
            return Err(ChatError::TooLarge(
                "query is longer than a room name".into(),
            ));
        }
        if let Some(cursor) = &request.cursor {
            check_id("cursor", cursor)?;
        }
        let limit = page(request.limit, MAX_PAGE);
        let (rooms, more) = self
            .store
            .directory(&DirectoryPage {
                prefix,
                after: request.cursor,
                limit,
            })
            .await?;
        let next_cursor = more.then(|| rooms.last().map(|r| r.id.clone())).flatten();
        Ok(DirectoryResponse { rooms, next_cursor })
    }

    /// Deletes notifications and tells the user's connections.
    pub(crate) async fn clear_notifications(
        &self,
        actor: &Actor,
        request: ClearNotificationsRequest,
    ) -> Result<Vec<String>, ChatError> {
        let ids = notification_ids(&request.ids, request.all)?;
        let cleared = self.store.clear_notifications(&actor.user_id, ids).await?;
        if ids.is_none() || !cleared.is_empty() {
            let frame = ServerFrame::NotificationCleared(NotificationCleared {
                ids: ids.is_some().then(|| cleared.clone()),
                all: ids.is_none(),
                conn_id: Some(request.conn_id).filter(|c| !c.is_empty()),
            });
            let envelope = envelope("", 0, frame.kind(), frame.to_json());
            if let Err(error) = self
                .bus
                .publish(&user_channel(&actor.user_id), &envelope)
                .await
            {
                tracing::warn!(%error, "cannot publish notification.cleared");
            }
        }
        Ok(cleared)
    }
}

/// The ids of a read or clear call (`None`: all), checked.
pub(crate) fn notification_ids(ids: &[String], all: bool) -> Result<Option<&[String]>, ChatError> {
    if all {
        if !ids.is_empty() {
            return Err(ChatError::BadRequest("send ids or all, not both".into()));
        }
        return Ok(None);
    }
    if ids.len() > MAX_NOTIFICATION_IDS {
        return Err(ChatError::TooLarge(format!(
            "at most {MAX_NOTIFICATION_IDS} ids"
        )));
    }
    for id in ids {
        check_id("ids", id)?;
    }
    Ok(Some(ids))
}
