//! The `parley.chat.v1.ChatService` gRPC handlers: validation, visibility
//! and membership checks, the store calls, and publishing each new log event
//! on the room's bus channel once it is committed.

use std::collections::HashSet;
use std::sync::Arc;

use common::bus::{Bus, envelope, room_channel};
use common::grpc::{Actor, ServiceChannel};
use proto::chat::v1::chat_service_server::ChatService;
use proto::chat::v1::{
    CreateRoomRequest, CreateRoomResponse, GetEventsRequest, GetEventsResponse, GetHistoryRequest,
    GetHistoryResponse, JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest, LeaveRoomResponse,
    ListRoomsRequest, ListRoomsResponse, Message, Room, RoomEvent, SendMessageRequest,
    SendMessageResponse, User, Visibility,
};
use proto::presence::v1::GetPresenceRequest;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use serde_json::Value;
use tokio::sync::Mutex;
use tonic::{Request, Response, Status};

use crate::error::ChatError;
use crate::store::{HistoryQuery, NewRoom, Store};

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
/// Stripes of the per-room publish locks.
const ROOM_LOCKS: usize = 256;

/// Limits from configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_text_chars: usize,
    pub page_limit: u32,
}

/// Handles chat calls; cheap to clone.
#[derive(Clone)]
pub(crate) struct ChatHandler {
    pub(crate) store: Store,
    pub(crate) bus: Arc<dyn Bus>,
    /// Where `online` comes from; `None` leaves it empty.
    pub(crate) presence: Option<PresenceServiceClient<ServiceChannel>>,
    pub(crate) limits: Limits,
    /// Appends to one room and their publication happen under the room's
    /// stripe, so the bus carries each room's events in seq order.
    pub(crate) room_locks: Arc<[Mutex<()>]>,
}

impl ChatHandler {
    pub(crate) fn new(
        store: Store,
        bus: Arc<dyn Bus>,
        presence: Option<PresenceServiceClient<ServiceChannel>>,
        limits: Limits,
    ) -> Self {
        Self {
            store,
            bus,
            presence,
            limits,
            room_locks: (0..ROOM_LOCKS).map(|_| Mutex::new(())).collect(),
        }
    }

    fn room_lock(&self, room_id: &str) -> &Mutex<()> {
        // FNV-1a: stable and cheap; only spreads rooms over stripes.
        let hash = room_id.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
        &self.room_locks[(hash % ROOM_LOCKS as u64) as usize]
    }

    /// Publishes committed log events. The log is the source of truth, so a
    /// failed publish only delays delivery until edges repair the gap.
    async fn publish(&self, events: &[RoomEvent]) {
        for event in events {
            let envelope = envelope(&event.room_id, event.seq, &event.kind, event.json.clone());
            if let Err(error) = self
                .bus
                .publish(&room_channel(&event.room_id), &envelope)
                .await
            {
                tracing::warn!(room_id = %event.room_id, seq = event.seq, %error, "cannot publish room event");
            }
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
        let room = self
            .store
            .room(room_id)
            .await?
            .ok_or(ChatError::NotFound("room"))?;
        let role = self.store.role(room_id, &actor.user_id).await?;
        if role.is_none() && room.visibility != Visibility::Public as i32 {
            return Err(ChatError::NotFound("room"));
        }
        Ok((room, role))
    }

    /// Who of the room's members is online now; empty when presence is
    /// unreachable (a join does not fail for it).
    async fn online(&self, room_id: &str) -> Vec<String> {
        let Some(presence) = self.presence.clone() else {
            return Vec::new();
        };
        let user_ids = match self.store.member_ids(room_id, MAX_PRESENCE_LOOKUP).await {
            Ok(ids) if !ids.is_empty() => ids,
            Ok(_) => return Vec::new(),
            Err(error) => {
                tracing::warn!(%error, "cannot list members for presence");
                return Vec::new();
            }
        };
        match presence
            .clone()
            .get_presence(GetPresenceRequest { user_ids })
            .await
        {
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
        }
    }

    async fn create_room(
        &self,
        actor: &Actor,
        request: CreateRoomRequest,
    ) -> Result<Room, ChatError> {
        let visibility =
            Visibility::try_from(request.visibility).unwrap_or(Visibility::Unspecified);
        let name = request.name.trim().to_string();
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
        let owner = User {
            id: actor.user_id.clone(),
            name: actor.name.clone(),
        };
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
                    let _order = self.room_lock(&room.id).lock().await;
                    if let Some(event) = self.store.add_member(&room.id, &owner).await? {
                        self.publish(&[event]).await;
                    }
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
        match self.store.create_room(new).await {
            Ok((room, events)) => {
                self.publish(&events).await;
                Ok(room)
            }
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
            let user = User {
                id: actor.user_id.clone(),
                name: actor.name.clone(),
            };
            let _order = self.room_lock(&room.id).lock().await;
            if let Some(event) = self.store.add_member(&room.id, &user).await? {
                room.last_seq = event.seq;
                self.publish(&[event]).await;
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
        let online = self.online(&room.id).await;
        Ok(JoinRoomResponse {
            room: Some(room),
            last_seq,
            events,
            has_more,
            recovered: request.since.is_some() && !has_more,
            online,
        })
    }

    async fn leave_room(&self, actor: &Actor, request: LeaveRoomRequest) -> Result<(), ChatError> {
        let (room, role) = self.visible_room(&request.room_id, actor).await?;
        if role.is_none() {
            return Ok(());
        }
        let user = User {
            id: actor.user_id.clone(),
            name: actor.name.clone(),
        };
        let _order = self.room_lock(&room.id).lock().await;
        if let Some(event) = self.store.remove_member(&room.id, &user).await? {
            self.publish(&[event]).await;
        }
        Ok(())
    }

    async fn send_message(
        &self,
        actor: &Actor,
        request: SendMessageRequest,
    ) -> Result<SendMessageResponse, ChatError> {
        let SendMessageRequest {
            room_id,
            text,
            client_msg_id,
            thread_id,
            metadata_json,
        } = request;
        check_id("client_msg_id", &client_msg_id)?;
        if text.trim().is_empty() {
            return Err(ChatError::BadRequest("text must not be empty".into()));
        }
        if text.chars().count() > self.limits.max_text_chars {
            return Err(ChatError::TooLarge(format!(
                "text is longer than {} characters",
                self.limits.max_text_chars
            )));
        }
        let metadata_json = check_metadata(&metadata_json)?;
        // The assistant posts on behalf of the service; everyone else must be a member.
        let room = if actor.user_id == Actor::assistant().user_id {
            check_id("room_id", &room_id)?;
            self.store
                .room(&room_id)
                .await?
                .ok_or(ChatError::NotFound("room"))?
        } else {
            let (room, role) = self.visible_room(&room_id, actor).await?;
            if role.is_none() {
                return Err(ChatError::Forbidden("join the room before sending".into()));
            }
            room
        };
        if let Some(existing) = self
            .store
            .message_by_client_id(&room.id, &actor.user_id, &client_msg_id)
            .await?
        {
            return Ok(SendMessageResponse {
                message: Some(existing),
                duplicate: true,
            });
        }
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
            sender: Some(User {
                id: actor.user_id.clone(),
                name: actor.name.clone(),
            }),
            text,
            thread_id,
            created_at: common::ids::now_ms(),
            edited_at: None,
            deleted: false,
            client_msg_id: client_msg_id.clone(),
            metadata_json,
        };
        let _order = self.room_lock(&room.id).lock().await;
        match self.store.insert_message(message).await {
            Ok((message, event)) => {
                self.publish(&[event]).await;
                Ok(SendMessageResponse {
                    message: Some(message),
                    duplicate: false,
                })
            }
            // A concurrent retry stored it first.
            Err(e) if e.is_unique_violation() => {
                let existing = self
                    .store
                    .message_by_client_id(&room.id, &actor.user_id, &client_msg_id)
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

    async fn history(
        &self,
        actor: &Actor,
        request: GetHistoryRequest,
    ) -> Result<GetHistoryResponse, ChatError> {
        let (room, _) = self.visible_room(&request.room_id, actor).await?;
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
                room_id: &room.id,
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
        if request.after < 0 {
            return Err(ChatError::BadRequest("after must not be negative".into()));
        }
        let limit = page(request.limit, self.limits.page_limit);
        let (events, has_more) = self
            .store
            .events(&room.id, request.after, i64::MAX, limit)
            .await?;
        Ok(GetEventsResponse { events, has_more })
    }
}

/// A page size: the request's, defaulting to and capped at the configured limit.
fn page(requested: u32, cap: u32) -> u32 {
    if requested == 0 {
        cap
    } else {
        requested.min(cap)
    }
}

fn check_id(field: &str, value: &str) -> Result<(), ChatError> {
    if value.is_empty() {
        return Err(ChatError::BadRequest(format!("{field} is required")));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(ChatError::TooLarge(format!(
            "{field} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
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
