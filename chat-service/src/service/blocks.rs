//! Blocks and relations: a user blocking another, and how the caller
//! stands with some users (shared rooms, blocks), which the edge asks
//! before relaying calls and presence.

use common::grpc::Actor;
use proto::chat::v1::{CheckRelationRequest, CheckRelationResponse};

use super::{ChatHandler, check_id};
use crate::error::{ChatError, Denial};

/// Most users one `CheckRelation` may name.
const MAX_RELATION_USERS: usize = 1_000;

impl ChatHandler {
    /// `actor` blocks (or, `block = false`, unblocks) `user_id`.
    pub(super) async fn block(
        &self,
        actor: &Actor,
        user_id: &str,
        block: bool,
    ) -> Result<(), ChatError> {
        check_id("user_id", user_id)?;
        if user_id == actor.user_id {
            return Err(ChatError::BadRequest("you cannot block yourself".into()));
        }
        if block {
            self.store.block(&actor.user_id, user_id).await
        } else {
            self.store.unblock(&actor.user_id, user_id).await
        }
    }

    /// Which of the named users share a room with `actor` (the named room,
    /// which `actor` must see as a member) and which block `actor`.
    pub(super) async fn relation(
        &self,
        actor: &Actor,
        request: CheckRelationRequest,
    ) -> Result<CheckRelationResponse, ChatError> {
        if request.user_ids.len() > MAX_RELATION_USERS {
            return Err(ChatError::TooLarge(format!(
                "at most {MAX_RELATION_USERS} users"
            )));
        }
        for user in &request.user_ids {
            check_id("user_ids", user)?;
        }
        let room = if request.room_id.is_empty() {
            None
        } else {
            self.member_room(&request.room_id, actor).await?;
            Some(request.room_id.as_str())
        };
        let shared = self
            .store
            .sharing_a_room(&actor.user_id, &request.user_ids, room)
            .await?;
        let blocked_by = self
            .store
            .blockers_of(&actor.user_id, &request.user_ids)
            .await?;
        let keep = |set: &std::collections::HashSet<String>| {
            request
                .user_ids
                .iter()
                .filter(|u| set.contains(*u))
                .cloned()
                .collect()
        };
        Ok(CheckRelationResponse {
            shared: keep(&shared),
            blocked_by: keep(&blocked_by),
        })
    }

    /// `Denied(Blocked)` when the other member of the direct room blocks `sender`.
    pub(super) async fn not_blocked_in_direct(
        &self,
        room_id: &str,
        sender: &str,
    ) -> Result<(), ChatError> {
        let others: Vec<String> = self
            .store
            .members(room_id, 2)
            .await?
            .into_iter()
            .map(|m| m.id)
            .filter(|id| id != sender)
            .collect();
        if self.store.blockers_of(sender, &others).await?.is_empty() {
            Ok(())
        } else {
            Err(ChatError::Denied(Denial::Blocked))
        }
    }
}
