//! The `parley.chat.v1.ChatService` gRPC handlers: validation, visibility
//! and membership checks, the store calls, and publishing each new log event
//! on the room's bus channel once it is committed.

use std::collections::HashSet;
use std::sync::Arc;

use common::bus::{Bus, envelope, room_channel, user_channel};
use common::config::InvitePolicy;
use common::grpc::{Actor, ServiceChannel};
use proto::chat::v1::chat_service_server::ChatService;
use proto::chat::v1::{
    CreateRoomRequest, CreateRoomResponse, DeleteMessageRequest, DeleteMessageResponse,
    EditMessageRequest, EditMessageResponse, GetEventsRequest, GetEventsResponse,
    GetHistoryRequest, GetHistoryResponse, InviteMemberRequest, InviteMemberResponse,
    JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest, LeaveRoomResponse,
    ListNotificationsRequest, ListNotificationsResponse, ListRoomsRequest, ListRoomsResponse,
    MarkReceiptRequest, MarkReceiptResponse, Message, Notification, ReactionRequest,
    ReactionResponse, ReadNotificationsRequest, ReadNotificationsResponse, ReceiptKind,
    RemoveMemberRequest, RemoveMemberResponse, Room, SendMessageRequest, SendMessageResponse, User,
    Visibility,
};
use proto::presence::v1::GetPresenceRequest;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::error::ChatError;
use crate::store::{HistoryQuery, NewRoom, Store};
use crate::writer::{Op, Writer};

/// Longest room name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 100;
/// Most members named when creating a room.
pub const MAX_INITIAL_MEMBERS: usize = 1_000;
/// Longest id accepted in a request (room, message, user, client_msg_id), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest `metadata` object, in bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// Most rooms `ListRooms` returns.
pub const MAX_LISTED_ROOMS: u32 = 1_000;
/// Most members whose presence `JoinRoom` looks up for `online`.
const MAX_PRESENCE_LOOKUP: u32 = 1_000;
/// Most distinct emoji on one message.
pub const MAX_EMOJI_PER_MESSAGE: i64 = 20;
/// Longest emoji, in bytes.
pub const MAX_EMOJI_BYTES: usize = 16;
/// Most notifications one call lists or marks read.
const MAX_NOTIFICATIONS_PAGE: u32 = 100;
/// Most members a mention is matched against.
const MAX_MENTION_LOOKUP: u32 = 1_000;
/// Characters of the message kept in a mention notification.
const MENTION_EXCERPT_CHARS: usize = 200;

/// Limits from configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_text_chars: usize,
    pub page_limit: u32,
    pub invite_policy: InvitePolicy,
}

/// Handles chat calls; cheap to clone.
#[derive(Clone)]
pub(crate) struct ChatHandler {
    pub(crate) store: Store,
    pub(crate) bus: Arc<dyn Bus>,
    /// Where `online` comes from; `None` leaves it empty.
    pub(crate) presence: Option<PresenceServiceClient<ServiceChannel>>,
    pub(crate) limits: Limits,
    /// Every append to a room log goes through it (group commit), and it
    /// publishes what it committed, in commit order.
    writer: Writer,
}

impl ChatHandler {
    pub(crate) fn new(
        store: Store,
        bus: Arc<dyn Bus>,
        presence: Option<PresenceServiceClient<ServiceChannel>>,
        limits: Limits,
    ) -> Self {
        Self {
            writer: Writer::start(store.clone(), bus.clone()),
            store,
            bus,
            presence,
            limits,
        }
    }

    /// The room if `actor` may see it: public rooms to everyone, others to
    /// members only; otherwise `NotFound`, whether it exists or not.
    async fn visible_room(
        &self,
        room_id: &str,
        actor: &Actor,
    ) -> Result<(Room, Option<String>), ChatError> {
        check_id("room_id", room_id)?;
        let (room, role) = self
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
    /// (a join does not fail for it).
    async fn members_online(&self, room_id: &str) -> (Vec<String>, Vec<String>) {
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

    async fn create_room(
        &self,
        actor: &Actor,
        request: CreateRoomRequest,
    ) -> Result<Room, ChatError> {
        let visibility =
            Visibility::try_from(request.visibility).unwrap_or(Visibility::Unspecified);
        let name = request.name.trim().to_string();
        check_no_nul("name", &name)?;
        if name.chars().count() > MAX_ROOM_NAME_CHARS {
            return Err(ChatError::TooLarge(format!(
                "name is longer than {MAX_ROOM_NAME_CHARS} characters"
            )));
        }
        if request.members.len() > MAX_INITIAL_MEMBERS {
            return Err(ChatError::TooLarge(format!(
                "at most {MAX_INITIAL_MEMBERS} members"
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

    async fn join_room(
        &self,
        actor: &Actor,
        request: JoinRoomRequest,
    ) -> Result<JoinRoomResponse, ChatError> {
        if request.since.is_some_and(|since| since < 0) {
            return Err(ChatError::BadRequest("since must not be negative".into()));
        }
        let (mut room, role) = self.visible_room(&request.room_id, actor).await?;
        if role.is_none() {
            // Visible without membership means public: joining makes a member.
            let user = user_of(actor)?;
            let applied = self
                .writer
                .submit(Op::AddMember {
                    room_id: room.id.clone(),
                    user,
                })
                .await?;
            if let Some(event) = applied.events.last() {
                room.last_seq = event.seq;
            }
        }
        // Everything up to this seq is answered from the log; later events
        // reach the caller live (it subscribed before calling).
        let last_seq = self
            .store
            .room(&room.id)
            .await?
            .map(|r| r.last_seq)
            .unwrap_or(room.last_seq);
        room.last_seq = last_seq;
        let (events, has_more) = match request.since {
            Some(since) if since < 0 => {
                return Err(ChatError::BadRequest("since must not be negative".into()));
            }
            Some(since) => {
                let limit = page(request.limit, self.limits.page_limit);
                self.store.events(&room.id, since, last_seq, limit).await?
            }
            None => (Vec::new(), false),
        };
        let (members, online) = self.members_online(&room.id).await;
        Ok(JoinRoomResponse {
            room: Some(room),
            last_seq,
            events,
            has_more,
            recovered: request.since.is_some() && !has_more,
            online,
            members,
        })
    }

    async fn leave_room(&self, actor: &Actor, request: LeaveRoomRequest) -> Result<(), ChatError> {
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

    async fn send_message(
        &self,
        actor: &Actor,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse, ChatError> {
        let sender = user_of(actor)?;
        // The assistant posts on behalf of the service; everyone else must be a member.
        let room = if actor.user_id == Actor::assistant().user_id {
            self.existing_room(&request.room_id).await?
        } else {
            let (room, role) = self.visible_room(&request.room_id, actor).await?;
            if role.is_none() {
                return Err(ChatError::Forbidden("join the room before sending".into()));
            }
            room
        };
        self.post(&room, sender, request).await
    }

    /// A room that exists, whoever may see it (service-side callers).
    pub(crate) async fn existing_room(&self, room_id: &str) -> Result<Room, ChatError> {
        check_id("room_id", room_id)?;
        self.store
            .room(room_id)
            .await?
            .ok_or(ChatError::NotFound("room"))
    }

    /// Stores a message from `sender` (already allowed to post in `room`),
    /// with the notifications its mentions create, and publishes both.
    pub(crate) async fn post(
        &self,
        room: &Room,
        sender: User,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse, ChatError> {
        let SendMessageRequest {
            text,
            client_msg_id,
            thread_id,
            metadata_json,
            ..
        } = request;
        check_id("client_msg_id", &client_msg_id)?;
        self.check_text(&text)?;
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
        };
        let notifications = self.mentions(&message).await?;
        let op = Op::InsertMessage {
            message,
            notifications,
        };
        match self.writer.submit(op).await {
            Ok(applied) => Ok(SendMessageResponse {
                message: applied.message,
                duplicate: false,
            }),
            // A concurrent retry stored it first.
            Err(e) if e.is_unique_violation() => {
                let existing = self
                    .store
                    .message_by_client_id(&room.id, &sender.id, &client_msg_id)
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

    /// A `mention` notification for every member named as `@id` or `@name`
    /// in the text (not the sender, each once).
    async fn mentions(&self, message: &Message) -> Result<Vec<Notification>, ChatError> {
        let handles = mention_handles(&message.text);
        if handles.is_empty() {
            return Ok(Vec::new());
        }
        let sender = message.sender.clone().unwrap_or_default();
        let members = self
            .store
            .members(&message.room_id, MAX_MENTION_LOOKUP)
            .await?;
        let mut notified = HashSet::new();
        let mut notifications = Vec::new();
        for member in members {
            let named = handles
                .iter()
                .any(|h| h == &member.id.to_lowercase() || h == &member.name.to_lowercase());
            if !named || member.id == sender.id || !notified.insert(member.id.clone()) {
                continue;
            }
            let id = common::ids::new_id("n");
            let excerpt: String = message.text.chars().take(MENTION_EXCERPT_CHARS).collect();
            let json = serde_json::json!({
                "id": id,
                "kind": "mention",
                "room": message.room_id,
                "message_id": message.id,
                "from": {"id": sender.id, "name": sender.name},
                "text": excerpt,
                "created_at": message.created_at,
            });
            notifications.push(Notification {
                id,
                kind: "mention".into(),
                room_id: message.room_id.clone(),
                message_id: Some(message.id.clone()),
                json: json.to_string(),
                created_at: message.created_at,
                read: false,
                user_id: member.id,
            });
        }
        Ok(notifications)
    }

    async fn history(
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

    async fn events(
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
}

/// Membership changes, edits, deletes, reactions, receipts, notifications.
impl ChatHandler {
    /// The room and the caller's role; `Forbidden` unless a member.
    async fn member_room(&self, room_id: &str, actor: &Actor) -> Result<(Room, String), ChatError> {
        let (room, role) = self.visible_room(room_id, actor).await?;
        let role = role.ok_or_else(|| ChatError::Forbidden("join the room first".into()))?;
        Ok((room, role))
    }

    async fn invite(&self, actor: &Actor, request: InviteMemberRequest) -> Result<(), ChatError> {
        let (room, role) = self.member_room(&request.room_id, actor).await?;
        check_id("user_id", &request.user_id)?;
        match Visibility::try_from(room.visibility) {
            Ok(Visibility::Direct) => {
                return Err(ChatError::Forbidden(
                    "a direct room has exactly two members".into(),
                ));
            }
            Ok(Visibility::Private)
                if self.limits.invite_policy == InvitePolicy::Owner && role != OWNER =>
            {
                return Err(ChatError::Forbidden("only the owner may invite".into()));
            }
            _ => {}
        }
        let invitee = User {
            id: request.user_id.clone(),
            name: request.user_id,
        };
        self.writer
            .submit(Op::AddMember {
                room_id: room.id,
                user: invitee,
            })
            .await?;
        Ok(())
    }

    async fn remove(&self, actor: &Actor, request: RemoveMemberRequest) -> Result<(), ChatError> {
        let (room, role) = self.member_room(&request.room_id, actor).await?;
        check_id("user_id", &request.user_id)?;
        if role != OWNER {
            return Err(ChatError::Forbidden(
                "only the owner may remove members".into(),
            ));
        }
        if request.user_id == actor.user_id {
            return Err(ChatError::BadRequest(
                "the owner leaves with LeaveRoom".into(),
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

    /// A live message of a room the caller is a member of.
    async fn live_message(
        &self,
        room_id: &str,
        message_id: &str,
        actor: &Actor,
    ) -> Result<(Room, String, Message), ChatError> {
        let (room, role) = self.member_room(room_id, actor).await?;
        check_id("message_id", message_id)?;
        let message = self
            .store
            .message(&room.id, message_id)
            .await?
            .ok_or(ChatError::NotFound("message"))?;
        Ok((room, role, message))
    }

    async fn edit(&self, actor: &Actor, request: EditMessageRequest) -> Result<Message, ChatError> {
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

    async fn delete(&self, actor: &Actor, request: DeleteMessageRequest) -> Result<(), ChatError> {
        let (room, role, message) = self
            .live_message(&request.room_id, &request.message_id, actor)
            .await?;
        let author = message.sender.as_ref().map(|s| s.id.as_str()) == Some(actor.user_id.as_str());
        if !author && role != OWNER {
            return Err(ChatError::Forbidden(
                "only the author or the room owner may delete a message".into(),
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

    async fn react(
        &self,
        actor: &Actor,
        request: ReactionRequest,
        add: bool,
    ) -> Result<(), ChatError> {
        check_emoji(&request.emoji)?;
        let (room, _) = self.member_room(&request.room_id, actor).await?;
        check_id("message_id", &request.message_id)?;
        let user = user_of(actor)?;
        let op = if add {
            Op::AddReaction {
                room_id: room.id,
                message_id: request.message_id,
                user,
                emoji: request.emoji,
                max_emoji: MAX_EMOJI_PER_MESSAGE,
            }
        } else {
            if self
                .store
                .message(&room.id, &request.message_id)
                .await?
                .is_none_or(|m| m.deleted)
            {
                return Err(ChatError::NotFound("message"));
            }
            Op::RemoveReaction {
                room_id: room.id,
                message_id: request.message_id,
                user,
                emoji: request.emoji,
            }
        };
        self.writer.submit(op).await?;
        Ok(())
    }

    async fn receipt(&self, actor: &Actor, request: MarkReceiptRequest) -> Result<i64, ChatError> {
        let kind = match ReceiptKind::try_from(request.kind) {
            Ok(kind @ (ReceiptKind::Read | ReceiptKind::Delivered)) => kind,
            _ => {
                return Err(ChatError::BadRequest(
                    "kind must be read or delivered".into(),
                ));
            }
        };
        if request.seq < 0 {
            return Err(ChatError::BadRequest("seq must not be negative".into()));
        }
        let (room, _) = self.member_room(&request.room_id, actor).await?;
        // A mark past the end of the log means "everything so far".
        let seq = request.seq.min(room.last_seq);
        let (mark, moved) = self
            .store
            .mark_receipt(&room.id, &actor.user_id, kind, seq)
            .await?
            .ok_or_else(|| ChatError::Forbidden("join the room first".into()))?;
        if moved {
            let kind_name = if kind == ReceiptKind::Read {
                "read"
            } else {
                "delivered"
            };
            let event = serde_json::json!({
                "type": "receipt",
                "room": room.id,
                "user": actor.user_id,
                "kind": kind_name,
                "seq": mark,
            })
            .to_string();
            // The room's members see it, and so do all of the user's own
            // devices (edges skip the copy for devices that joined the room).
            let envelope = envelope(&room.id, 0, "receipt", event);
            for channel in [room_channel(&room.id), user_channel(&actor.user_id)] {
                if let Err(error) = self.bus.publish(&channel, &envelope).await {
                    tracing::warn!(%error, "cannot publish receipt");
                }
            }
        }
        Ok(mark)
    }
}

/// Role name of a room's owner.
const OWNER: &str = "owner";

/// The lower-cased handles named as `@handle` in a text.
fn mention_handles(text: &str) -> Vec<String> {
    let mut handles: Vec<String> = Vec::new();
    for (at, _) in text.match_indices('@') {
        // A mention starts a word: `a@b.c` is an address, not a mention.
        if text[..at]
            .chars()
            .next_back()
            .is_some_and(|c| c.is_alphanumeric())
        {
            continue;
        }
        let handle: String = text[at + 1..]
            .chars()
            .take_while(|c| c.is_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'))
            .collect();
        let handle = handle.trim_end_matches(['.', ':']).to_lowercase();
        if !handle.is_empty() && !handles.contains(&handle) {
            handles.push(handle);
        }
    }
    handles
}

/// An emoji is 1–16 bytes of visible text.
fn check_emoji(emoji: &str) -> Result<(), ChatError> {
    if emoji.is_empty() || emoji.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(ChatError::BadRequest(
            "emoji must be 1 to 16 bytes of visible text".into(),
        ));
    }
    if emoji.len() > MAX_EMOJI_BYTES {
        return Err(ChatError::TooLarge(format!(
            "emoji is longer than {MAX_EMOJI_BYTES} bytes"
        )));
    }
    Ok(())
}

/// A page size: the request's, defaulting to and capped at the configured limit.
pub(crate) fn page(requested: u32, cap: u32) -> u32 {
    if requested == 0 {
        cap
    } else {
        requested.min(cap)
    }
}

pub(crate) fn check_id(field: &str, value: &str) -> Result<(), ChatError> {
    if value.is_empty() {
        return Err(ChatError::BadRequest(format!("{field} is required")));
    }
    check_no_nul(field, value)?;
    if value.len() > MAX_ID_BYTES {
        return Err(ChatError::TooLarge(format!(
            "{field} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

/// U+0000 cannot be stored by every database (Postgres text refuses it),
/// so it is refused everywhere, the same way on every backend.
pub(crate) fn check_no_nul(field: &str, value: &str) -> Result<(), ChatError> {
    if value.contains('\0') {
        return Err(ChatError::BadRequest(format!(
            "{field} must not contain U+0000"
        )));
    }
    Ok(())
}

/// The end user as stored with what they do (their name checked).
fn user_of(actor: &Actor) -> Result<User, ChatError> {
    check_no_nul("user name", &actor.name)?;
    Ok(User {
        id: actor.user_id.clone(),
        name: actor.name.clone(),
    })
}

/// Metadata must be a JSON object of at most [`MAX_METADATA_BYTES`]; empty means none.
fn check_metadata(metadata: &str) -> Result<String, ChatError> {
    if metadata.is_empty() {
        return Ok(String::new());
    }
    if metadata.len() > MAX_METADATA_BYTES {
        return Err(ChatError::TooLarge(format!(
            "metadata is larger than {MAX_METADATA_BYTES} bytes"
        )));
    }
    match serde_json::from_str::<Value>(metadata) {
        Ok(value @ Value::Object(_)) => Ok(value.to_string()),
        _ => Err(ChatError::BadRequest(
            "metadata must be a JSON object".into(),
        )),
    }
}

#[tonic::async_trait]
impl ChatService for ChatHandler {
    async fn create_room(
        &self,
        request: Request<CreateRoomRequest>,
    ) -> Result<Response<CreateRoomResponse>, Status> {
        let actor = Actor::of(&request)?;
        let room = ChatHandler::create_room(self, &actor, request.into_inner()).await?;
        Ok(Response::new(CreateRoomResponse { room: Some(room) }))
    }

    async fn join_room(
        &self,
        request: Request<JoinRoomRequest>,
    ) -> Result<Response<JoinRoomResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            ChatHandler::join_room(self, &actor, request.into_inner()).await?,
        ))
    }

    async fn leave_room(
        &self,
        request: Request<LeaveRoomRequest>,
    ) -> Result<Response<LeaveRoomResponse>, Status> {
        let actor = Actor::of(&request)?;
        ChatHandler::leave_room(self, &actor, request.into_inner()).await?;
        Ok(Response::new(LeaveRoomResponse {}))
    }

    async fn list_rooms(
        &self,
        request: Request<ListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        let actor = Actor::of(&request)?;
        let rooms = self
            .store
            .rooms_of(&actor.user_id, MAX_LISTED_ROOMS)
            .await?;
        Ok(Response::new(ListRoomsResponse { rooms }))
    }

    async fn send_message(
        &self,
        request: Request<SendMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            ChatHandler::send_message(self, &actor, request.into_inner()).await?,
        ))
    }

    async fn get_history(
        &self,
        request: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            self.history(&actor, request.into_inner()).await?,
        ))
    }

    async fn get_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Result<Response<GetEventsResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            self.events(&actor, request.into_inner()).await?,
        ))
    }

    async fn invite_member(
        &self,
        request: Request<InviteMemberRequest>,
    ) -> Result<Response<InviteMemberResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.invite(&actor, request.into_inner()).await?;
        Ok(Response::new(InviteMemberResponse {}))
    }

    async fn remove_member(
        &self,
        request: Request<RemoveMemberRequest>,
    ) -> Result<Response<RemoveMemberResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.remove(&actor, request.into_inner()).await?;
        Ok(Response::new(RemoveMemberResponse {}))
    }

    async fn edit_message(
        &self,
        request: Request<EditMessageRequest>,
    ) -> Result<Response<EditMessageResponse>, Status> {
        let actor = Actor::of(&request)?;
        let message = self.edit(&actor, request.into_inner()).await?;
        Ok(Response::new(EditMessageResponse {
            message: Some(message),
        }))
    }

    async fn delete_message(
        &self,
        request: Request<DeleteMessageRequest>,
    ) -> Result<Response<DeleteMessageResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.delete(&actor, request.into_inner()).await?;
        Ok(Response::new(DeleteMessageResponse {}))
    }

    async fn add_reaction(
        &self,
        request: Request<ReactionRequest>,
    ) -> Result<Response<ReactionResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.react(&actor, request.into_inner(), true).await?;
        Ok(Response::new(ReactionResponse {}))
    }

    async fn remove_reaction(
        &self,
        request: Request<ReactionRequest>,
    ) -> Result<Response<ReactionResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.react(&actor, request.into_inner(), false).await?;
        Ok(Response::new(ReactionResponse {}))
    }

    async fn mark_receipt(
        &self,
        request: Request<MarkReceiptRequest>,
    ) -> Result<Response<MarkReceiptResponse>, Status> {
        let actor = Actor::of(&request)?;
        let seq = self.receipt(&actor, request.into_inner()).await?;
        Ok(Response::new(MarkReceiptResponse { seq }))
    }

    async fn list_notifications(
        &self,
        request: Request<ListNotificationsRequest>,
    ) -> Result<Response<ListNotificationsResponse>, Status> {
        let actor = Actor::of(&request)?;
        let request = request.into_inner();
        let limit = page(request.limit, MAX_NOTIFICATIONS_PAGE);
        let notifications = self
            .store
            .notifications(&actor.user_id, request.unread_only, limit)
            .await?;
        Ok(Response::new(ListNotificationsResponse { notifications }))
    }

    async fn read_notifications(
        &self,
        request: Request<ReadNotificationsRequest>,
    ) -> Result<Response<ReadNotificationsResponse>, Status> {
        let actor = Actor::of(&request)?;
        let ids = request.into_inner().ids;
        if ids.len() > MAX_NOTIFICATIONS_PAGE as usize {
            return Err(
                ChatError::TooLarge(format!("at most {MAX_NOTIFICATIONS_PAGE} ids")).into(),
            );
        }
        for id in &ids {
            check_id("ids", id)?;
        }
        self.store.read_notifications(&actor.user_id, &ids).await?;
        Ok(Response::new(ReadNotificationsResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_must_be_a_small_object() {
        assert_eq!(check_metadata("").expect("none"), "");
        assert_eq!(check_metadata(r#"{"a": 1}"#).expect("object"), r#"{"a":1}"#);
        assert!(matches!(
            check_metadata("[1]"),
            Err(ChatError::BadRequest(_))
        ));
        assert!(matches!(check_metadata("{"), Err(ChatError::BadRequest(_))));
        let big = format!(r#"{{"a":"{}"}}"#, "x".repeat(MAX_METADATA_BYTES));
        assert!(matches!(check_metadata(&big), Err(ChatError::TooLarge(_))));
    }

    #[test]
    fn pages_default_to_and_are_capped_at_the_limit() {
        assert_eq!(page(0, 100), 100);
        assert_eq!(page(10, 100), 10);
        assert_eq!(page(1000, 100), 100);
    }
}
