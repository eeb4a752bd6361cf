//! Message calls: sending and posting, history and the event log, editing
//! and deleting.

use common::grpc::Actor;
use proto::chat::v1::{
    DeleteMessageRequest, EditMessageRequest, GetEventsRequest, GetEventsResponse,
    GetHistoryRequest, GetHistoryResponse, Message, Room, SendMessageRequest, SendMessageResponse,
    User,
};

use super::{ChatHandler, check_id, check_metadata, check_no_nul, page, user_of};
use crate::error::{ChatError, Denial};
use crate::permissions::Action;
use crate::store::HistoryQuery;
use crate::writer::{Committing, Op};

/// A send checked and ready for the writer, or already answered.
pub(crate) enum Prepared {
    /// A message to store.
    Store {
        op: Box<Op>,
        /// What finds the message again if a concurrent retry stored it.
        retry: RetryKey,
    },
    /// A retry whose message is already stored.
    Answered(Box<SendMessageResponse>),
}

/// A send queued on the writer, or already answered.
pub(crate) enum Queued {
    Committing {
        committing: Committing,
        retry: RetryKey,
    },
    Answered(Box<SendMessageResponse>),
}

/// A message's idempotency key: room, sender and `client_msg_id`.
pub(crate) struct RetryKey {
    room_id: String,
    sender_id: String,
    client_msg_id: String,
}

impl ChatHandler {
    pub(super) async fn send_message(
        &self,
        actor: &Actor,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse, ChatError> {
        let prepared = self.prepare_send(actor, request).await?;
        let queued = self.queue(prepared).await?;
        self.settle(queued).await
    }

    /// Checks a user's send (membership, role, mute, blocks, the message
    /// itself) without queuing it.
    pub(crate) async fn prepare_send(
        &self,
        actor: &Actor,
        request: SendMessageRequest,
    ) -> Result<Prepared, ChatError> {
        let sender = user_of(actor)?;
        // The assistant posts on behalf of the service; everyone else must be a member.
        let room = if actor.user_id == Actor::assistant().user_id {
            self.existing_room(&request.room_id).await?
        } else {
            let (room, membership) = self.visible_room(&request.room_id, actor).await?;
            let Some(membership) = membership else {
                return Err(ChatError::Forbidden("join the room before sending".into()));
            };
            self.may_post(&membership)?;
            if room.visibility == proto::chat::v1::Visibility::Direct as i32 {
                self.not_blocked_in_direct(&room.id, &actor.user_id).await?;
            }
            room
        };
        self.prepare_post(&room, sender, request).await
    }

    /// Stores a message from `sender` (already allowed to post in `room`),
    /// with the notifications its mentions create, and publishes both.
    pub(crate) async fn post(
        &self,
        room: &Room,
        sender: User,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse, ChatError> {
        let prepared = self.prepare_post(room, sender, request).await?;
        let queued = self.queue(prepared).await?;
        self.settle(queued).await
    }

    /// Hands a prepared send to the writer: sends queued after this returns
    /// are stored after it.
    pub(crate) async fn queue(&self, prepared: Prepared) -> Result<Queued, ChatError> {
        Ok(match prepared {
            Prepared::Answered(answer) => Queued::Answered(answer),
            Prepared::Store { op, retry } => Queued::Committing {
                committing: self.writer.enqueue(*op).await?,
                retry,
            },
        })
    }

    /// The answer to a queued send, once committed. A repeated
    /// `client_msg_id` answers the message stored first.
    pub(crate) async fn settle(&self, queued: Queued) -> Result<SendMessageResponse, ChatError> {
        let (committing, retry) = match queued {
            Queued::Answered(answer) => return Ok(*answer),
            Queued::Committing { committing, retry } => (committing, retry),
        };
        match committing.committed().await {
            Ok(applied) => Ok(SendMessageResponse {
                message: applied.message,
                duplicate: false,
            }),
            // A concurrent retry stored it first.
            Err(e) if e.is_unique_violation() => {
                let existing = self
                    .store
                    .message_by_client_id(&retry.room_id, &retry.sender_id, &retry.client_msg_id)
                    .await?
                    .ok_or(e)?;
                Ok(SendMessageResponse {
                    message: Some(existing),
                    duplicate: true,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// Checks a message from `sender` (already allowed to post in `room`)
    /// and builds its job, with the notifications its mentions create.
    async fn prepare_post(
        &self,
        room: &Room,
        sender: User,
        request: SendMessageRequest,
    ) -> Result<Prepared, ChatError> {
        let SendMessageRequest {
            text,
            client_msg_id,
            thread_id,
            metadata_json,
            reply_to,
            kind,
            attachment_ids,
            ..
        } = request;
        check_id("client_msg_id", &client_msg_id)?;
        let kind = protocol::MessageKind::parse(&kind).ok_or_else(|| {
            ChatError::BadRequest("kind must be text, image, video, audio, file or voice".into())
        })?;
        // A message of files alone has no text.
        if attachment_ids.is_empty() || !text.is_empty() {
            self.check_text(&text)?;
        }
        let metadata_json = check_metadata(&metadata_json)?;
        // A retried send is not looked up first: the store refuses the
        // repeated client_msg_id, and the stored message is answered then.
        let thread_id = match thread_id {
            None => None,
            Some(id) => {
                check_id("thread_id", &id)?;
                let root = self
                    .store
                    .message(&room.id, &id)
                    .await?
                    .ok_or(ChatError::NotFound("thread"))?;
                // A reply to a reply belongs to the same thread.
                Some(root.thread_id.unwrap_or(root.id))
            }
        };
        let reply_to = match reply_to {
            None => None,
            Some(id) => {
                check_id("reply_to", &id)?;
                let original = self
                    .store
                    .message(&room.id, &id)
                    .await?
                    .filter(|m| !m.deleted)
                    .ok_or(ChatError::NotFound("reply_to message"))?;
                Some(Box::new((&protocol::Quote::of(&original)).into()))
            }
        };
        let attachments = if attachment_ids.is_empty() {
            Vec::new()
        } else {
            // A retried send finds its uploads already sent: answer the
            // stored message, as for any retry.
            if let Some(existing) = self
                .store
                .message_by_client_id(&room.id, &sender.id, &client_msg_id)
                .await?
            {
                return Ok(Prepared::Answered(Box::new(SendMessageResponse {
                    message: Some(existing),
                    duplicate: true,
                })));
            }
            self.attachments_for(&sender.id, kind, &attachment_ids)
                .await?
        };
        let message = Message {
            id: common::ids::new_id("m"),
            room_id: room.id.clone(),
            seq: 0,
            sender: Some(sender.clone()),
            text,
            thread_id,
            created_at: common::ids::now_ms(),
            edited_at: None,
            deleted: false,
            client_msg_id: client_msg_id.clone(),
            metadata_json,
            reactions: Vec::new(),
            reply_to,
            kind: kind.as_str().to_string(),
            attachments,
        };
        let notifications = self.mentions(&message).await?;
        let retry = RetryKey {
            room_id: room.id.clone(),
            sender_id: sender.id,
            client_msg_id,
        };
        let op = Op::InsertMessage {
            message,
            notifications,
        };
        Ok(Prepared::Store {
            op: Box::new(op),
            retry,
        })
    }

    /// Whether a member may post or react now: the table, then a mute.
    pub(super) fn may_post(&self, membership: &crate::store::Membership) -> Result<(), ChatError> {
        if !self.limits.rules().allows(membership.role, Action::Post) {
            return Err(ChatError::Forbidden("your role may not post".into()));
        }
        if membership.muted(common::ids::now_ms()) {
            return Err(ChatError::Denied(Denial::Muted));
        }
        Ok(())
    }

    fn check_text(&self, text: &str) -> Result<(), ChatError> {
        if text.trim().is_empty() {
            return Err(ChatError::BadRequest("text must not be empty".into()));
        }
        check_no_nul("text", text)?;
        if text.chars().count() > self.limits.max_text_chars {
            return Err(ChatError::TooLarge(format!(
                "text is longer than {} characters",
                self.limits.max_text_chars
            )));
        }
        Ok(())
    }

    pub(super) async fn history(
        &self,
        actor: &Actor,
        request: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ChatError> {
        let (room, _) = self.visible_room(&request.room_id, actor).await?;
        self.page_of_history(&room.id, &request).await
    }

    /// A page of a room's history (the caller checked who may read it).
    pub(crate) async fn page_of_history(
        &self,
        room_id: &str,
        request: &GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ChatError> {
        if let Some(thread) = &request.thread_id {
            check_id("thread_id", thread)?;
        }
        for (field, value) in [("before", request.before), ("after", request.after)] {
            if value.is_some_and(|v| v < 0) {
                return Err(ChatError::BadRequest(format!(
                    "{field} must not be negative"
                )));
            }
        }
        let (messages, has_more) = self
            .store
            .history(HistoryQuery {
                room_id,
                before: request.before,
                after: request.after,
                thread_id: request.thread_id.as_deref(),
                limit: page(request.limit, self.limits.page_limit),
            })
            .await?;
        Ok(GetHistoryResponse { messages, has_more })
    }

    pub(super) async fn events(
        &self,
        actor: &Actor,
        request: GetEventsRequest,
    ) -> Result<GetEventsResponse, ChatError> {
        let (room, _) = self.visible_room(&request.room_id, actor).await?;
        self.log_page(&room.id, &request).await
    }

    /// A page of a room's log (the caller checked who may read it).
    pub(crate) async fn log_page(
        &self,
        room_id: &str,
        request: &GetEventsRequest,
    ) -> Result<GetEventsResponse, ChatError> {
        if request.after < 0 {
            return Err(ChatError::BadRequest("after must not be negative".into()));
        }
        let limit = page(request.limit, self.limits.page_limit);
        let (events, has_more) = self
            .store
            .events(room_id, request.after, i64::MAX, limit)
            .await?;
        Ok(GetEventsResponse { events, has_more })
    }

    /// A live message of a room the caller is a member of.
    async fn live_message(
        &self,
        room_id: &str,
        message_id: &str,
        actor: &Actor,
    ) -> Result<(Room, crate::store::Membership, Message), ChatError> {
        let (room, role) = self.member_room(room_id, actor).await?;
        check_id("message_id", message_id)?;
        let message = self
            .store
            .message(&room.id, message_id)
            .await?
            .ok_or(ChatError::NotFound("message"))?;
        Ok((room, role, message))
    }

    pub(super) async fn edit(
        &self,
        actor: &Actor,
        request: EditMessageRequest,
    ) -> Result<Message, ChatError> {
        self.check_text(&request.text)?;
        let (room, _, message) = self
            .live_message(&request.room_id, &request.message_id, actor)
            .await?;
        if message.deleted {
            return Err(ChatError::NotFound("message"));
        }
        if message.sender.as_ref().map(|s| s.id.as_str()) != Some(actor.user_id.as_str()) {
            return Err(ChatError::Forbidden(
                "only the author may edit a message".into(),
            ));
        }
        let applied = self
            .writer
            .submit(Op::EditMessage {
                room_id: room.id,
                message_id: message.id,
                text: request.text,
            })
            .await?;
        applied
            .message
            .ok_or_else(|| ChatError::Commit("no message edited".into()))
    }

    pub(super) async fn delete(
        &self,
        actor: &Actor,
        request: DeleteMessageRequest,
    ) -> Result<(), ChatError> {
        let (room, role, message) = self
            .live_message(&request.room_id, &request.message_id, actor)
            .await?;
        let author = message.sender.as_ref().map(|s| s.id.as_str()) == Some(actor.user_id.as_str());
        if !author
            && !self
                .limits
                .rules()
                .allows(role.role, Action::DeleteOthersMessage)
        {
            return Err(ChatError::Forbidden(
                "only the author, the room owner or an admin may delete a message".into(),
            ));
        }
        // Deleting a tombstone again changes nothing.
        self.writer
            .submit(Op::DeleteMessage {
                room_id: room.id,
                message_id: message.id,
            })
            .await?;
        Ok(())
    }
}
