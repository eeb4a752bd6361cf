//! The `parley.chat.v1.ChatService` gRPC handlers: validation, visibility
//! and membership checks, the store calls, and publishing each new log event
//! on the room's bus channel once it is committed.

mod attachments;
mod blocks;
mod messages;
mod moderation;
mod notifications;
mod reactions;
mod receipts;
mod rooms;
mod send_stream;

use std::sync::Arc;

use common::bus::Bus;
use common::config::InvitePolicy;
use common::grpc::{Actor, ServiceChannel};
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::chat::v1::chat_service_server::ChatService;
use proto::chat::v1::{
    AttachmentUsageRequest, AttachmentUsageResponse, CreateAttachmentRequest,
    CreateAttachmentResponse, GetAttachmentRequest, GetAttachmentResponse,
    ResolveAttachmentRequest,
};
use proto::chat::v1::{
    BlockRequest, BlockResponse, CheckRelationRequest, CheckRelationResponse, ListBlocksRequest,
    ListBlocksResponse,
};
use proto::chat::v1::{
    CheckPostRequest, CheckPostResponse, ClearNotificationsRequest, ClearNotificationsResponse,
    DeleteRoomRequest, DeleteRoomResponse, DirectoryRequest, DirectoryResponse, ListMembersRequest,
    ListMembersResponse, ModerateRequest, ModerateResponse, ReportMessageRequest,
    ReportMessageResponse, SetRoleRequest, SetRoleResponse, UpdateRoomRequest, UpdateRoomResponse,
};
use proto::chat::v1::{
    CreateRoomRequest, CreateRoomResponse, DeleteMessageRequest, DeleteMessageResponse,
    EditMessageRequest, EditMessageResponse, GetEventsRequest, GetEventsResponse,
    GetHistoryRequest, GetHistoryResponse, InviteMemberRequest, InviteMemberResponse,
    JoinRoomRequest, JoinRoomResponse, LeaveRoomRequest, LeaveRoomResponse,
    ListNotificationsRequest, ListNotificationsResponse, ListRoomsRequest, ListRoomsResponse,
    MarkReceiptRequest, MarkReceiptResponse, ReactionRequest, ReactionResponse,
    ReadNotificationsRequest, ReadNotificationsResponse, RemoveMemberRequest, RemoveMemberResponse,
    SendMessageRequest, SendMessageResponse, SendMessagesItem, User,
};
use proto::chat::v1::{
    InvitationRequest, InvitationResponse, ListInvitationsRequest, ListInvitationsResponse,
};
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use serde_json::Value;
use tonic::{Request, Response, Status};

use crate::error::ChatError;
pub(crate) use crate::service::attachments::delete_attachments;
pub(crate) use crate::service::moderation::Acting;
use crate::store::Store;
use crate::writer::Writer;
use common::coalesce::Coalesce;

/// Longest room name, in characters.
pub const MAX_ROOM_NAME_CHARS: usize = 100;
/// Longest id accepted in a request (room, message, user, client_msg_id), in bytes.
pub const MAX_ID_BYTES: usize = 128;
/// Largest `metadata` object, in bytes of JSON.
pub const MAX_METADATA_BYTES: usize = 4 * 1024;
/// Most rooms one page of `ListRooms` returns.
pub const MAX_LISTED_ROOMS: u32 = 100;
/// Most notifications one call lists or marks read.
const MAX_NOTIFICATIONS_PAGE: u32 = 100;

/// Limits from configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub max_text_chars: usize,
    pub page_limit: u32,
    pub invite_policy: InvitePolicy,
    /// Most members one message notifies (`chat.max_mentions_per_message`).
    pub max_mentions: usize,
    /// Whether admins may give roles (`chat.admins_set_roles`).
    pub admins_set_roles: bool,
    /// Most members `room.create` may name (`chat.max_initial_members`).
    pub max_initial_members: usize,
    /// Most attachments one message carries (`attachments.max_per_message`).
    pub max_attachments: usize,
    /// Bytes one user may store (`attachments.quota_bytes_per_user`).
    pub attachment_quota: i64,
}

impl Limits {
    /// The permission table's configurable cells.
    pub(crate) fn rules(&self) -> crate::permissions::Rules {
        crate::permissions::Rules {
            invite_policy: self.invite_policy,
            admins_set_roles: self.admins_set_roles,
        }
    }
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
    pub(crate) writer: Writer,
    /// Where attachment bytes are, to delete them; `None` when this
    /// service was built without the `[attachments]` section (tests).
    pub(crate) blobs: Option<common::attachments::Blobs>,
    /// Auth-service, to revoke an erased user's tokens; `None` in tests
    /// without it.
    pub(crate) auth: Option<AuthServiceClient<ServiceChannel>>,
    pub(crate) metrics: common::metrics::ChatMetrics,
    /// Joins' member lists and presence lookups, shared per room.
    pub(crate) online_reads: Arc<Coalesce<String, MembersOnline>>,
    /// Ends `SendMessages` streams when the service stops (set by
    /// `run_until_stopped`).
    pub(crate) shutdown: common::shutdown::ShutdownSignal,
}

/// A room's member ids and those of them online.
pub(crate) type MembersOnline = (Vec<String>, Vec<String>);

impl ChatHandler {
    pub(crate) fn new(
        store: Store,
        bus: Arc<dyn Bus>,
        presence: Option<PresenceServiceClient<ServiceChannel>>,
        limits: Limits,
        metrics: common::metrics::ChatMetrics,
    ) -> Self {
        Self {
            writer: Writer::start(store.clone(), bus.clone(), metrics.clone()),
            metrics,
            online_reads: Arc::new(Coalesce::new()),
            store,
            bus,
            presence,
            limits,
            blobs: None,
            auth: None,
            shutdown: common::shutdown::ShutdownSignal::never(),
        }
    }
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
        let request = request.into_inner();
        let after = match request.cursor.as_deref() {
            None => None,
            Some(cursor) => Some(
                cursor
                    .split_once(':')
                    .and_then(|(at, room)| Some((at.parse::<i64>().ok()?, room.to_string())))
                    .filter(|(_, room)| !room.is_empty())
                    .ok_or_else(|| ChatError::BadRequest("cursor is not valid".into()))?,
            ),
        };
        let limit = page(request.limit, MAX_LISTED_ROOMS);
        let (rooms, more) = self.store.rooms_of(&actor.user_id, after, limit).await?;
        let next_cursor = more
            .then(|| rooms.last())
            .flatten()
            .map(|(room, since)| format!("{since}:{}", room.id));
        Ok(Response::new(ListRoomsResponse {
            rooms: rooms.into_iter().map(|(room, _)| room).collect(),
            next_cursor,
        }))
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

    type SendMessagesStream = send_stream::SendResults;

    async fn send_messages(
        &self,
        request: Request<tonic::Streaming<SendMessagesItem>>,
    ) -> Result<Response<Self::SendMessagesStream>, Status> {
        Ok(Response::new(
            self.send_stream(request.into_inner(), self.shutdown.clone()),
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

    async fn list_invitations(
        &self,
        request: Request<ListInvitationsRequest>,
    ) -> Result<Response<ListInvitationsResponse>, Status> {
        let actor = Actor::of(&request)?;
        let invitations = self.store.invitations(&actor.user_id).await?;
        Ok(Response::new(ListInvitationsResponse { invitations }))
    }

    async fn accept_invitation(
        &self,
        request: Request<InvitationRequest>,
    ) -> Result<Response<InvitationResponse>, Status> {
        let actor = Actor::of(&request)?;
        let room = self
            .answer_invitation(&actor, &request.into_inner().room_id, true)
            .await?;
        Ok(Response::new(InvitationResponse { room }))
    }

    async fn decline_invitation(
        &self,
        request: Request<InvitationRequest>,
    ) -> Result<Response<InvitationResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.answer_invitation(&actor, &request.into_inner().room_id, false)
            .await?;
        Ok(Response::new(InvitationResponse { room: None }))
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
        let request = request.into_inner();
        let ids = moderation::notification_ids(&request.ids, request.all)?;
        self.store.read_notifications(&actor.user_id, ids).await?;
        Ok(Response::new(ReadNotificationsResponse {}))
    }

    async fn clear_notifications(
        &self,
        request: Request<ClearNotificationsRequest>,
    ) -> Result<Response<ClearNotificationsResponse>, Status> {
        let actor = Actor::of(&request)?;
        let ids = ChatHandler::clear_notifications(self, &actor, request.into_inner()).await?;
        Ok(Response::new(ClearNotificationsResponse { ids }))
    }

    async fn update_room(
        &self,
        request: Request<UpdateRoomRequest>,
    ) -> Result<Response<UpdateRoomResponse>, Status> {
        let actor = Actor::of(&request)?;
        let room =
            ChatHandler::update_room(self, Acting::Member(&actor), request.into_inner()).await?;
        Ok(Response::new(UpdateRoomResponse { room: Some(room) }))
    }

    async fn delete_room(
        &self,
        request: Request<DeleteRoomRequest>,
    ) -> Result<Response<DeleteRoomResponse>, Status> {
        let actor = Actor::of(&request)?;
        ChatHandler::delete_room(self, Acting::Member(&actor), request.into_inner()).await?;
        Ok(Response::new(DeleteRoomResponse {}))
    }

    async fn list_members(
        &self,
        request: Request<ListMembersRequest>,
    ) -> Result<Response<ListMembersResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            ChatHandler::list_members(self, &actor, request.into_inner()).await?,
        ))
    }

    async fn set_role(
        &self,
        request: Request<SetRoleRequest>,
    ) -> Result<Response<SetRoleResponse>, Status> {
        let actor = Actor::of(&request)?;
        ChatHandler::set_role(self, Acting::Member(&actor), request.into_inner()).await?;
        Ok(Response::new(SetRoleResponse {}))
    }

    async fn moderate(
        &self,
        request: Request<ModerateRequest>,
    ) -> Result<Response<ModerateResponse>, Status> {
        let actor = Actor::of(&request)?;
        ChatHandler::moderate(self, Acting::Member(&actor), request.into_inner()).await?;
        Ok(Response::new(ModerateResponse {}))
    }

    async fn report_message(
        &self,
        request: Request<ReportMessageRequest>,
    ) -> Result<Response<ReportMessageResponse>, Status> {
        let actor = Actor::of(&request)?;
        let report = self.report(&actor, request.into_inner()).await?;
        Ok(Response::new(ReportMessageResponse {
            report: Some(report),
        }))
    }

    async fn check_post(
        &self,
        request: Request<CheckPostRequest>,
    ) -> Result<Response<CheckPostResponse>, Status> {
        let actor = Actor::of(&request)?;
        let (_, membership) = self
            .member_room(&request.into_inner().room_id, &actor)
            .await?;
        self.may_post(&membership)?;
        Ok(Response::new(CheckPostResponse {}))
    }

    async fn block_user(
        &self,
        request: Request<BlockRequest>,
    ) -> Result<Response<BlockResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.block(&actor, &request.into_inner().user_id, true)
            .await?;
        Ok(Response::new(BlockResponse {}))
    }

    async fn unblock_user(
        &self,
        request: Request<BlockRequest>,
    ) -> Result<Response<BlockResponse>, Status> {
        let actor = Actor::of(&request)?;
        self.block(&actor, &request.into_inner().user_id, false)
            .await?;
        Ok(Response::new(BlockResponse {}))
    }

    async fn list_blocks(
        &self,
        request: Request<ListBlocksRequest>,
    ) -> Result<Response<ListBlocksResponse>, Status> {
        let actor = Actor::of(&request)?;
        let blocks = self.store.blocks(&actor.user_id).await?;
        Ok(Response::new(ListBlocksResponse { blocks }))
    }

    async fn attachment_usage(
        &self,
        request: Request<AttachmentUsageRequest>,
    ) -> Result<Response<AttachmentUsageResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            ChatHandler::attachment_usage(self, &actor).await?,
        ))
    }

    async fn create_attachment(
        &self,
        request: Request<CreateAttachmentRequest>,
    ) -> Result<Response<CreateAttachmentResponse>, Status> {
        let actor = Actor::of(&request)?;
        let attachment = ChatHandler::create_attachment(self, &actor, request.into_inner()).await?;
        Ok(Response::new(CreateAttachmentResponse {
            attachment: Some(attachment),
        }))
    }

    async fn get_attachment(
        &self,
        request: Request<GetAttachmentRequest>,
    ) -> Result<Response<GetAttachmentResponse>, Status> {
        let actor = Actor::of(&request)?;
        let attachment = ChatHandler::get_attachment(self, &actor, request.into_inner()).await?;
        Ok(Response::new(GetAttachmentResponse {
            attachment: Some(attachment),
        }))
    }

    async fn resolve_attachment(
        &self,
        request: Request<ResolveAttachmentRequest>,
    ) -> Result<Response<GetAttachmentResponse>, Status> {
        let attachment = ChatHandler::resolve_attachment(self, request.into_inner()).await?;
        Ok(Response::new(GetAttachmentResponse {
            attachment: Some(attachment),
        }))
    }

    async fn check_relation(
        &self,
        request: Request<CheckRelationRequest>,
    ) -> Result<Response<CheckRelationResponse>, Status> {
        let actor = Actor::of(&request)?;
        Ok(Response::new(
            self.relation(&actor, request.into_inner()).await?,
        ))
    }

    async fn directory(
        &self,
        request: Request<DirectoryRequest>,
    ) -> Result<Response<DirectoryResponse>, Status> {
        Actor::of(&request)?;
        Ok(Response::new(
            ChatHandler::directory(self, request.into_inner()).await?,
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
