//! `parley.chat.v1.ChatBackendService`: what other backends may do that
//! WebSocket users cannot — post as a bot or system sender, push `custom`
//! events to a room or to all of one user's connections, and read rooms,
//! history and logs without being a member. Callers hold the service credential; the
//! edge maps no client frame to these methods.

use common::bus::{envelope, room_channel, user_channel};
use proto::chat::v1::chat_backend_service_server::ChatBackendService;
use proto::chat::v1::publish_event_request::Target;
use proto::chat::v1::{
    BackendListRoomsRequest, CreateNotificationRequest, CreateNotificationResponse,
    GetEventsRequest, GetEventsResponse, GetHistoryRequest, GetHistoryResponse, GetRoomRequest,
    GetRoomResponse, ListRoomsResponse, Notification, PostMessageRequest, PublishEventRequest,
    PublishEventResponse, SendMessageRequest, SendMessageResponse, User,
};
use proto::chat::v1::{
    DeleteRoomRequest, DeleteRoomResponse, ListReportsRequest, ListReportsResponse,
    ModerateRequest, ModerateResponse, SetRoleRequest, SetRoleResponse, UpdateRoomRequest,
    UpdateRoomResponse,
};
use proto::chat::v1::{
    EraseUserRequest, EraseUserResponse, ListErasuresRequest, ListErasuresResponse,
    SetRetentionRequest, SetRetentionResponse,
};
use protocol::{CustomEvent, NotificationKind, NotificationNew, ServerFrame};
use serde_json::Value;
use std::time::Duration;

use common::shutdown::ShutdownSignal;
use proto::chat::v1::{
    ListWebhookDeadLettersRequest, ListWebhookDeadLettersResponse,
    RedriveWebhookDeadLettersRequest, RedriveWebhookDeadLettersResponse, WatchRequest,
};
use tonic::{Request, Response, Status};

use crate::error::ChatError;
use crate::service::{Acting, ChatHandler, MAX_ROOM_NAME_CHARS, check_id, page};
use crate::watch::WatchStream;
use crate::webhooks::Webhooks;

/// Most dead letters one `ListWebhookDeadLetters` returns.
const MAX_LISTED_DEAD_LETTERS: u32 = 100;
/// Most ids one `RedriveWebhookDeadLetters` may name.
const MAX_REDRIVE_IDS: usize = 1_000;

/// Most reports one `ListReports` returns.
const MAX_LISTED_REPORTS: u32 = 100;

/// Prefix of bot sender ids (`bot:weather`); `system` is the other allowed sender.
pub const BOT_PREFIX: &str = "bot:";
/// The system sender's id.
pub const SYSTEM_SENDER: &str = "system";
/// Largest `data` of a custom event, in bytes of JSON.
pub const MAX_CUSTOM_DATA_BYTES: usize = 16 * 1024;
/// Longest custom event name, in bytes.
pub const MAX_EVENT_NAME_BYTES: usize = 64;
/// Kinds a backend may not create (they are chat-service's own).
const RESERVED_NOTIFICATION_KINDS: &[&str] = &["mention"];

/// Serves the backend API on top of the chat handler.
#[derive(Clone)]
pub(crate) struct BackendHandler {
    pub(crate) chat: ChatHandler,
    /// Where offline users' notifications go; its dead letters.
    pub(crate) webhooks: Webhooks,
    /// `chat.watch_poll_ms`.
    pub(crate) watch_poll: Duration,
    /// Ends `Watch` streams.
    pub(crate) shutdown: ShutdownSignal,
}

/// Bot and system senders only: a backend cannot speak as a real user.
fn check_sender(sender: Option<User>) -> Result<User, ChatError> {
    let sender = sender.ok_or_else(|| ChatError::BadRequest("sender is required".into()))?;
    check_id("sender.id", &sender.id)?;
    let bot = sender
        .id
        .strip_prefix(BOT_PREFIX)
        .is_some_and(|name| !name.is_empty());
    if !bot && sender.id != SYSTEM_SENDER {
        return Err(ChatError::BadRequest(format!(
            "sender.id must be `{SYSTEM_SENDER}` or start with `{BOT_PREFIX}`"
        )));
    }
    let name = sender.name.trim();
    if name.is_empty()
        || name.chars().any(char::is_control)
        || name.chars().count() > MAX_ROOM_NAME_CHARS
    {
        return Err(ChatError::BadRequest(format!(
            "sender.name must be 1 to {MAX_ROOM_NAME_CHARS} characters"
        )));
    }
    Ok(User {
        id: sender.id,
        name: name.to_string(),
    })
}

/// The `custom` event JSON for a publish request.
fn custom_event(room: Option<&str>, event: &str, data_json: &str) -> Result<String, ChatError> {
    let valid_name = !event.is_empty()
        && event.len() <= MAX_EVENT_NAME_BYTES
        && event
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.' | ':'));
    if !valid_name {
        return Err(ChatError::BadRequest(format!(
            "event must be 1 to {MAX_EVENT_NAME_BYTES} characters of [A-Za-z0-9_.:-]"
        )));
    }
    if data_json.len() > MAX_CUSTOM_DATA_BYTES {
        return Err(ChatError::TooLarge(format!(
            "data is larger than {MAX_CUSTOM_DATA_BYTES} bytes"
        )));
    }
    let data: Value = if data_json.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(data_json)
            .map_err(|_| ChatError::BadRequest("data_json is not JSON".into()))?
    };
    let event = ServerFrame::Custom(CustomEvent {
        room: room.map(str::to_string),
        event: event.to_string(),
        data,
    });
    Ok(event.to_json())
}

/// A notification a backend asked for: its client JSON is `data` plus the
/// fields the service owns.
fn backend_notification(request: CreateNotificationRequest) -> Result<Notification, ChatError> {
    check_id("user_id", &request.user_id)?;
    let valid_kind = !request.kind.is_empty()
        && request.kind.len() <= MAX_EVENT_NAME_BYTES
        && request
            .kind
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !valid_kind || RESERVED_NOTIFICATION_KINDS.contains(&request.kind.as_str()) {
        return Err(ChatError::BadRequest(format!(
            "kind must be 1 to {MAX_EVENT_NAME_BYTES} characters of [a-z0-9_], not mention"
        )));
    }
    if !request.room_id.is_empty() {
        check_id("room_id", &request.room_id)?;
    }
    if request.data_json.len() > MAX_CUSTOM_DATA_BYTES {
        return Err(ChatError::TooLarge(format!(
            "data is larger than {MAX_CUSTOM_DATA_BYTES} bytes"
        )));
    }
    let mut details = match request.data_json.as_str() {
        "" => serde_json::Map::new(),
        data => match serde_json::from_str(data) {
            Ok(Value::Object(map)) => map,
            _ => {
                return Err(ChatError::BadRequest(
                    "data_json must be a JSON object".into(),
                ));
            }
        },
    };
    let id = common::ids::new_id("n");
    let created_at = common::ids::now_ms();
    // The service's own fields win over same-named ones in `data`.
    for owned in ["id", "kind", "room", "created_at", "read"] {
        details.remove(owned);
    }
    let json = protocol::Notification::new(
        id.clone(),
        NotificationKind::Other(request.kind.clone()),
        Some(request.room_id.clone()),
        created_at,
        details,
    )
    .to_json();
    Ok(Notification {
        id,
        kind: request.kind,
        room_id: request.room_id,
        message_id: None,
        json,
        created_at,
        read: false,
        user_id: request.user_id,
    })
}

impl BackendHandler {
    /// An endpoint name the request gave: it must be configured.
    fn endpoint<'a>(&self, endpoint: Option<&'a str>) -> Result<Option<&'a str>, ChatError> {
        match endpoint {
            Some(name) if !self.webhooks.knows(name) => {
                Err(ChatError::UnknownEndpoint(name.to_string()))
            }
            other => Ok(other),
        }
    }
}

#[tonic::async_trait]
impl ChatBackendService for BackendHandler {
    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        crate::watch::check_rooms(&request.room_ids)?;
        let bounds = self.chat.store.log_bounds().await?;
        let position = crate::watch::start(&request, bounds)?;
        Ok(Response::new(crate::watch::stream(
            self.chat.store.clone(),
            request.room_ids,
            position,
            self.watch_poll,
            self.shutdown.clone(),
        )))
    }

    async fn list_webhook_dead_letters(
        &self,
        request: Request<ListWebhookDeadLettersRequest>,
    ) -> Result<Response<ListWebhookDeadLettersResponse>, Status> {
        let request = request.into_inner();
        let endpoint = self.endpoint(request.endpoint.as_deref())?;
        let deliveries = self
            .chat
            .store
            .dead_webhooks(
                endpoint,
                request.after.as_deref(),
                page(request.limit, MAX_LISTED_DEAD_LETTERS),
            )
            .await?;
        Ok(Response::new(ListWebhookDeadLettersResponse { deliveries }))
    }

    async fn redrive_webhook_dead_letters(
        &self,
        request: Request<RedriveWebhookDeadLettersRequest>,
    ) -> Result<Response<RedriveWebhookDeadLettersResponse>, Status> {
        let request = request.into_inner();
        if request.ids.len() > MAX_REDRIVE_IDS {
            return Err(ChatError::TooLarge(format!(
                "ids names more than {MAX_REDRIVE_IDS} deliveries"
            ))
            .into());
        }
        let endpoint = self.endpoint(request.endpoint.as_deref())?;
        let redriven = self
            .chat
            .store
            .redrive_webhooks(&request.ids, endpoint, common::ids::now_ms())
            .await?;
        self.webhooks.wake();
        Ok(Response::new(RedriveWebhookDeadLettersResponse {
            redriven: u32::try_from(redriven).unwrap_or(u32::MAX),
        }))
    }
    async fn create_notification(
        &self,
        request: Request<CreateNotificationRequest>,
    ) -> Result<Response<CreateNotificationResponse>, Status> {
        let notification = backend_notification(request.into_inner())?;
        self.chat.store.add_notification(&notification).await?;
        self.webhooks.notification(&notification).await;
        let event = NotificationNew::frame(&notification);
        let envelope = envelope("", 0, event.kind(), event.to_json());
        // Stored is what counts; a lost event is found by notification.list.
        if let Err(error) = self
            .chat
            .bus
            .publish(&user_channel(&notification.user_id), &envelope)
            .await
        {
            tracing::warn!(%error, "cannot publish notification");
        }
        Ok(Response::new(CreateNotificationResponse {
            notification: Some(notification),
        }))
    }

    async fn post_message(
        &self,
        request: Request<PostMessageRequest>,
    ) -> Result<Response<SendMessageResponse>, Status> {
        let request = request.into_inner();
        let sender = check_sender(request.sender)?;
        let room = self.chat.existing_room(&request.room_id).await?;
        let message = SendMessageRequest {
            room_id: request.room_id,
            text: request.text,
            client_msg_id: request.client_msg_id,
            thread_id: request.thread_id,
            metadata_json: request.metadata_json,
            reply_to: request.reply_to,
            ..SendMessageRequest::default()
        };
        Ok(Response::new(self.chat.post(&room, sender, message).await?))
    }

    async fn publish_event(
        &self,
        request: Request<PublishEventRequest>,
    ) -> Result<Response<PublishEventResponse>, Status> {
        let request = request.into_inner();
        let (channel, room_id, json) = match request.target {
            Some(Target::RoomId(room_id)) => {
                let room = self.chat.existing_room(&room_id).await?;
                let json = custom_event(Some(&room.id), &request.event, &request.data_json)?;
                (room_channel(&room.id), room.id, json)
            }
            Some(Target::UserId(user_id)) => {
                check_id("user_id", &user_id)?;
                let json = custom_event(None, &request.event, &request.data_json)?;
                (user_channel(&user_id), String::new(), json)
            }
            None => {
                return Err(ChatError::BadRequest("room_id or user_id is required".into()).into());
            }
        };
        self.chat
            .bus
            .publish(&channel, &envelope(&room_id, 0, "custom", json))
            .await
            .map_err(|e| common::ErrorCode::Unavailable.status(e.to_string()))?;
        Ok(Response::new(PublishEventResponse {}))
    }

    async fn list_rooms(
        &self,
        request: Request<BackendListRoomsRequest>,
    ) -> Result<Response<ListRoomsResponse>, Status> {
        let request = request.into_inner();
        if let Some(user) = &request.user_id {
            check_id("user_id", user)?;
        }
        if let Some(before) = &request.before {
            check_id("before", before)?;
        }
        let limit = page(request.limit, self.chat.limits.page_limit);
        let rooms = self
            .chat
            .store
            .all_rooms(request.user_id.as_deref(), request.before.as_deref(), limit)
            .await?;
        Ok(Response::new(ListRoomsResponse {
            rooms,
            next_cursor: None,
        }))
    }

    async fn get_history(
        &self,
        request: Request<GetHistoryRequest>,
    ) -> Result<Response<GetHistoryResponse>, Status> {
        let request = request.into_inner();
        let room = self.chat.existing_room(&request.room_id).await?;
        Ok(Response::new(
            self.chat.page_of_history(&room.id, &request).await?,
        ))
    }

    async fn get_events(
        &self,
        request: Request<GetEventsRequest>,
    ) -> Result<Response<GetEventsResponse>, Status> {
        let request = request.into_inner();
        // A deleted room's log is its `room.deleted` event: edges repairing
        // a gap in it get that, not an error to retry forever.
        let room_id = match self.chat.existing_room(&request.room_id).await {
            Ok(room) => room.id,
            Err(ChatError::NotFound(_)) => {
                match self.chat.store.deleted_room(&request.room_id).await? {
                    Some((room, _)) => room.id,
                    None => return Err(ChatError::NotFound("room").into()),
                }
            }
            Err(e) => return Err(e.into()),
        };
        Ok(Response::new(self.chat.log_page(&room_id, &request).await?))
    }

    async fn get_room(
        &self,
        request: Request<GetRoomRequest>,
    ) -> Result<Response<GetRoomResponse>, Status> {
        let room = self
            .chat
            .existing_room(&request.into_inner().room_id)
            .await?;
        Ok(Response::new(GetRoomResponse { room: Some(room) }))
    }

    async fn update_room(
        &self,
        request: Request<UpdateRoomRequest>,
    ) -> Result<Response<UpdateRoomResponse>, Status> {
        let room = self
            .chat
            .update_room(Acting::Backend, request.into_inner())
            .await?;
        Ok(Response::new(UpdateRoomResponse { room: Some(room) }))
    }

    async fn delete_room(
        &self,
        request: Request<DeleteRoomRequest>,
    ) -> Result<Response<DeleteRoomResponse>, Status> {
        self.chat
            .delete_room(Acting::Backend, request.into_inner())
            .await?;
        Ok(Response::new(DeleteRoomResponse {}))
    }

    async fn set_role(
        &self,
        request: Request<SetRoleRequest>,
    ) -> Result<Response<SetRoleResponse>, Status> {
        self.chat
            .set_role(Acting::Backend, request.into_inner())
            .await?;
        Ok(Response::new(SetRoleResponse {}))
    }

    async fn moderate(
        &self,
        request: Request<ModerateRequest>,
    ) -> Result<Response<ModerateResponse>, Status> {
        self.chat
            .moderate(Acting::Backend, request.into_inner())
            .await?;
        Ok(Response::new(ModerateResponse {}))
    }

    async fn list_reports(
        &self,
        request: Request<ListReportsRequest>,
    ) -> Result<Response<ListReportsResponse>, Status> {
        let request = request.into_inner();
        if let Some(room) = &request.room_id {
            check_id("room_id", room)?;
        }
        if let Some(before) = &request.before {
            check_id("before", before)?;
        }
        let reports = self
            .chat
            .store
            .reports(
                request.room_id.as_deref(),
                request.before.as_deref(),
                page(request.limit, MAX_LISTED_REPORTS),
            )
            .await?;
        Ok(Response::new(ListReportsResponse { reports }))
    }

    async fn set_retention(
        &self,
        request: Request<SetRetentionRequest>,
    ) -> Result<Response<SetRetentionResponse>, Status> {
        let request = request.into_inner();
        check_id("room_id", &request.room_id)?;
        if request.days.is_some_and(|days| days > 36_500) {
            return Err(ChatError::BadRequest("days must be at most 36500".into()).into());
        }
        self.chat
            .store
            .set_retention(&request.room_id, request.days)
            .await?;
        Ok(Response::new(SetRetentionResponse {}))
    }

    async fn erase_user(
        &self,
        request: Request<EraseUserRequest>,
    ) -> Result<Response<EraseUserResponse>, Status> {
        let credential = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim_start_matches("Bearer ").trim())
            .unwrap_or_default();
        let credential = crate::erasure::fingerprint(credential);
        let request = request.into_inner();
        let erasure = self
            .chat
            .erase_user(&request.user_id, credential, &request.requested_by)
            .await?;
        Ok(Response::new(EraseUserResponse {
            erasure: Some(erasure),
        }))
    }

    async fn list_erasures(
        &self,
        request: Request<ListErasuresRequest>,
    ) -> Result<Response<ListErasuresResponse>, Status> {
        let request = request.into_inner();
        if !request.user_id.is_empty() {
            check_id("user_id", &request.user_id)?;
        }
        let erasures = self.chat.store.erasures(&request.user_id).await?;
        Ok(Response::new(ListErasuresResponse { erasures }))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn only_bots_and_system_may_be_senders() {
        let user = |id: &str| {
            Some(User {
                id: id.into(),
                name: "Name".into(),
            })
        };
        assert!(check_sender(user("bot:weather")).is_ok());
        assert!(check_sender(user("system")).is_ok());
        assert!(check_sender(user("bot:")).is_err());
        assert!(check_sender(user("alice")).is_err());
        assert!(check_sender(user("assistant")).is_err());
        assert!(check_sender(None).is_err());
    }

    #[test]
    fn custom_events_carry_room_event_and_data() {
        let json = custom_event(Some("r_1"), "sync", r#"{"v":1}"#).expect("valid");
        let value: Value = serde_json::from_str(&json).expect("json");
        assert_eq!(
            value,
            json!({"type": "custom", "room": "r_1", "event": "sync", "data": {"v": 1}})
        );
        assert!(custom_event(None, "bad name", "").is_err());
        assert!(custom_event(None, "sync", "{").is_err());
    }
}
