//! Every frame the server sends: `hello`, replies and errors, and the events
//! of rooms, users and calls. [`ServerFrame`] is tagged by `type`; room-log
//! events (those with `seq`) are stored as their JSON and replayed as they
//! are.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::{Map, Value};

use crate::objects::{
    DirectoryRoom, ErrorObject, Member, Message, Notification, PresenceState, Role, Room,
    StreamInProgress, User, UserRef, Visibility,
};

/// The protocol's name, in `hello` and as the WebSocket subprotocol.
pub const PROTOCOL: &str = "parley.v1";

/// Declares the server frames: the enum and each frame's `type`.
macro_rules! frames {
    ($(
        $(#[doc = $doc:literal])*
        $name:literal => $variant:ident($body:ty)
    ),* $(,)?) => {
        /// A frame the server sends, tagged by `type`.
        #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum ServerFrame {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant($body), )*
        }

        impl ServerFrame {
            /// Every frame's `type` and summary, in the protocol's order.
            pub const ALL: &'static [(&'static str, &'static str)] =
                &[$(($name, concat!($($doc),*))),*];

            /// The frame's `type` (also the bus envelope's `kind`).
            pub fn kind(&self) -> &'static str {
                match self {
                    $( ServerFrame::$variant(_) => $name, )*
                }
            }
        }
    };
}

frames! {
    /// The first frame of every connection.
    "hello" => Hello(Hello),
    /// The answer to a command that carried an `id`.
    "reply" => Reply(ReplyFrame),
    /// A failed command that carried no `id`, or a frame that was not a command.
    "error" => Error(ErrorFrame),
    /// A stored message (room log).
    "message.new" => MessageNew(MessageEvent),
    /// An edited message (room log).
    "message.updated" => MessageUpdated(MessageEvent),
    /// A deleted message (room log).
    "message.deleted" => MessageDeleted(MessageDeleted),
    /// A reaction added (room log).
    "reaction.added" => ReactionAdded(ReactionEvent),
    /// A reaction removed (room log).
    "reaction.removed" => ReactionRemoved(ReactionEvent),
    /// A member joined, or accepted an invitation (room log).
    "member.joined" => MemberJoined(MemberEvent),
    /// A user was invited; they are not a member until they accept (room log).
    "member.invited" => MemberInvited(InvitationEvent),
    /// An invited user declined (room log).
    "member.declined" => MemberDeclined(InvitationEvent),
    /// A member left or was removed (room log).
    "member.left" => MemberLeft(MemberEvent),
    /// A room's name, topic or metadata changed (room log).
    "room.updated" => RoomUpdated(RoomUpdated),
    /// The room was deleted; its history is gone (room log, its last event).
    "room.deleted" => RoomDeleted(RoomDeleted),
    /// A member's role changed (room log).
    "member.role" => MemberRole(MemberRoleEvent),
    /// A member was muted (room log).
    "member.muted" => MemberMuted(SanctionEvent),
    /// A member's mute was undone (room log).
    "member.unmuted" => MemberUnmuted(SanctionEvent),
    /// A user was banned and removed (room log).
    "member.banned" => MemberBanned(SanctionEvent),
    /// A user's ban was undone (room log).
    "member.unbanned" => MemberUnbanned(SanctionEvent),
    /// Notifications were deleted on another of your connections.
    "notification.cleared" => NotificationCleared(NotificationCleared),
    /// A read or delivered mark moved.
    "receipt" => Receipt(ReceiptEvent),
    /// A new notification for the user.
    "notification.new" => NotificationNew(NotificationNew),
    /// An event a backend sent to a room or a user.
    "custom" => Custom(CustomEvent),
    /// A piece of an assistant reply.
    "ai.delta" => AiDelta(AiDelta),
    /// An assistant reply finished.
    "ai.done" => AiDone(AiDone),
    /// An assistant reply failed or was cancelled.
    "ai.error" => AiError(AiError),
    /// The connection's token expires soon: send `refresh`.
    "token.expiring" => TokenExpiring(TokenExpiring),
    /// A followed user's presence changed.
    "presence" => Presence(PresenceState),
    /// A room member started or stopped typing.
    "typing" => Typing(TypingEvent),
    /// Someone is calling you.
    "call.incoming" => CallIncoming(CallIncoming),
    /// The callee answered.
    "call.answer" => CallAnswer(CallEvent),
    /// The callee rejected the call.
    "call.reject" => CallReject(CallEvent),
    /// The call ended (`reason: "missed"` when it rang out).
    "call.end" => CallEnd(CallEvent),
    /// An ICE candidate from the other party.
    "call.ice" => CallIce(CallEvent),
}

impl ServerFrame {
    /// The frame as JSON text.
    pub fn to_json(&self) -> String {
        // Serialising these types cannot fail: every map key is a string.
        serde_json::to_string(self).unwrap_or_default()
    }
}

/// `hello`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Hello {
    pub conn_id: String,
    /// `parley.v1`.
    pub protocol: String,
    pub server_time: i64,
    /// Time left to send `auth`.
    pub auth_timeout_ms: u64,
    pub heartbeat_ms: u64,
    pub limits: Limits,
    /// Set when the upgrade request carried a token.
    pub user: Option<User>,
    /// With `edge.signed_frames`: the key of this session's signed frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_secret: Option<String>,
}

/// The limits `hello` announces.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Limits {
    pub max_message_bytes: usize,
}

/// `reply`: `ok` with the command's result fields, or `error`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReplyFrame {
    /// The command's `id`.
    pub id: u64,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
    /// The result's fields, beside `id` and `ok`.
    #[serde(flatten)]
    pub result: Option<ReplyResult>,
}

/// `error`: a failure without a reply to carry it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ErrorFrame {
    /// The command's `type`, when the frame had one.
    pub re: Option<String>,
    pub error: ErrorObject,
}

/// The result fields of a successful command.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum ReplyResult {
    Ping(PingReply),
    Auth(AuthReply),
    Refresh(RefreshReply),
    Room(RoomReply),
    RoomJoin(RoomJoinReply),
    RoomList(RoomListReply),
    Message(MessageReply),
    History(HistoryReply),
    AiAsk(AiAskReply),
    Receipt(ReceiptReply),
    Notifications(NotificationListReply),
    Presence(PresenceReply),
    CallInvite(CallInviteReply),
    RoomJoinMany(RoomJoinManyReply),
    Members(MembersReply),
    Directory(DirectoryReply),
    Report(ReportReply),
    Blocks(BlocksReply),
    Invitations(InvitationsReply),
    AttachmentUrl(AttachmentUrlReply),
    /// Commands that answer with `ok` alone.
    Empty(Empty),
}

/// `attachment.url`: a URL of the edge serving the file until `expires_at`
/// (ms since the epoch); relative to the edge's origin.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AttachmentUrlReply {
    pub url: String,
    pub expires_at: i64,
    pub attachment: crate::Attachment,
}

/// `ping`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PingReply {
    pub server_time: i64,
}

/// `auth`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AuthReply {
    pub user: User,
    pub session_id: String,
    pub expires_at: i64,
    /// The issued token (anonymous sign-in and development login).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// With `edge.signed_frames`: the key of this session's signed frames.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame_secret: Option<String>,
}

/// `refresh`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RefreshReply {
    pub expires_at: i64,
}

/// `room.create`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomReply {
    pub room: Room,
}

/// `room.join`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomJoinReply {
    pub room: Option<Room>,
    pub last_seq: i64,
    /// The room's log after `since` (one page), as stored.
    #[schemars(with = "Vec<ServerFrame>")]
    pub events: Vec<Box<RawValue>>,
    /// Whether `since` was recovered from the log.
    pub recovered: bool,
    /// More of the log follows: join again from the last `seq`.
    pub has_more: bool,
    /// Assistant replies in progress.
    pub streams: Vec<StreamInProgress>,
    /// Members online now.
    pub online: Vec<String>,
    /// How far members have read (the 1,000 furthest).
    pub read_marks: Vec<ReadMark>,
    /// `since` is older than what the room's retention kept: `events` is
    /// empty and the client must reload the room (`message.history`)
    /// rather than replay; never a silent gap.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub history_truncated: bool,
}

/// `room.join{rooms}`: each room's result, in the order asked.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomJoinManyReply {
    pub results: Vec<RoomJoinResult>,
}

/// One room's result of `room.join{rooms}`: `ok` with what a single join
/// answers in `joined`, or `error`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomJoinResult {
    /// The room's id, as asked.
    pub room: String,
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorObject>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub joined: Option<RoomJoinReply>,
}

/// `room.members`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MembersReply {
    /// In join order.
    pub members: Vec<Member>,
    /// Send it as `cursor` for the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `room.directory`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct DirectoryReply {
    /// By name.
    pub rooms: Vec<DirectoryRoom>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// `message.report`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReportReply {
    pub report_id: String,
}

/// How far one member has read a room.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReadMark {
    /// The member's id.
    pub user: String,
    pub seq: i64,
}

/// `room.list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomListReply {
    /// The most recently joined first.
    pub rooms: Vec<RoomSummary>,
    /// Set when more rooms follow: pass it as `cursor`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// A room as `room.list` shows it.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomSummary {
    pub id: String,
    pub name: String,
    pub visibility: Visibility,
    pub last_seq: i64,
    pub unread: i64,
}

impl From<&proto::chat::v1::Room> for RoomSummary {
    fn from(r: &proto::chat::v1::Room) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            visibility: Visibility::from_proto(r.visibility),
            last_seq: r.last_seq,
            unread: r.unread,
        }
    }
}

/// `message.send`, `message.edit`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageReply {
    pub message: Message,
}

/// `message.history`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct HistoryReply {
    /// In ascending `seq`.
    pub messages: Vec<Message>,
    pub has_more: bool,
}

/// `ai.ask`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AiAskReply {
    pub stream_id: String,
    /// The stored question.
    pub message: Option<Message>,
}

/// `receipt.read`, `receipt.delivered`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReceiptReply {
    /// Your mark after the call.
    pub seq: i64,
}

/// `notification.list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NotificationListReply {
    pub notifications: Vec<Notification>,
}

/// `user.blocks`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BlocksReply {
    pub blocks: Vec<BlockedUser>,
}

/// A user you block, and since when.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct BlockedUser {
    pub user: String,
    pub blocked_at: i64,
}

/// `invitation.list`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InvitationsReply {
    pub invitations: Vec<Invitation>,
}

/// A pending invitation to a room.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Invitation {
    pub room: RoomSummary,
    /// Who invited you.
    pub by: UserRef,
    pub invited_at: i64,
}

/// `presence.subscribe`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct PresenceReply {
    pub presence: Vec<PresenceState>,
}

/// `call.invite`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CallInviteReply {
    pub call_id: String,
}

/// No result fields.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
pub struct Empty {}

/// `message.new`, `message.updated`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageEvent {
    pub room: String,
    pub seq: i64,
    pub message: Message,
}

/// `message.deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MessageDeleted {
    pub room: String,
    pub seq: i64,
    pub message_id: String,
}

/// `reaction.added`, `reaction.removed`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReactionEvent {
    pub room: String,
    pub seq: i64,
    pub message_id: String,
    pub emoji: String,
    pub user: UserRef,
}

/// `member.joined`, `member.left`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemberEvent {
    pub room: String,
    pub seq: i64,
    pub user: UserRef,
}

/// `member.invited`, `member.declined`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct InvitationEvent {
    pub room: String,
    pub seq: i64,
    /// The invited user.
    pub user: UserRef,
    /// Who invited them.
    pub by: UserRef,
}

/// `room.updated`: the room's settings after the change.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomUpdated {
    pub room: String,
    pub seq: i64,
    pub name: String,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Who changed it.
    pub by: UserRef,
}

/// `room.deleted`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct RoomDeleted {
    pub room: String,
    pub seq: i64,
    pub by: UserRef,
}

/// `member.role`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct MemberRoleEvent {
    pub room: String,
    pub seq: i64,
    pub user: UserRef,
    pub role: Role,
    pub by: UserRef,
}

/// `member.muted`, `member.unmuted`, `member.banned`, `member.unbanned`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct SanctionEvent {
    pub room: String,
    pub seq: i64,
    pub user: UserRef,
    /// When a mute or ban ends by itself (ms since the epoch); absent: until undone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<i64>,
    pub by: UserRef,
}

/// `notification.cleared`: `ids` deleted, or `all`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NotificationCleared {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub all: bool,
    /// The connection that cleared them (it is not told again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub conn_id: Option<String>,
}

impl ServerFrame {
    /// The room and seq of a room-log event (`None` for other frames).
    pub fn room_seq(&self) -> Option<(&str, i64)> {
        use ServerFrame as F;
        match self {
            F::MessageNew(e) | F::MessageUpdated(e) => Some((&e.room, e.seq)),
            F::MessageDeleted(e) => Some((&e.room, e.seq)),
            F::ReactionAdded(e) | F::ReactionRemoved(e) => Some((&e.room, e.seq)),
            F::MemberJoined(e) | F::MemberLeft(e) => Some((&e.room, e.seq)),
            F::MemberInvited(e) | F::MemberDeclined(e) => Some((&e.room, e.seq)),
            F::RoomUpdated(e) => Some((&e.room, e.seq)),
            F::RoomDeleted(e) => Some((&e.room, e.seq)),
            F::MemberRole(e) => Some((&e.room, e.seq)),
            F::MemberMuted(e) | F::MemberUnmuted(e) | F::MemberBanned(e) | F::MemberUnbanned(e) => {
                Some((&e.room, e.seq))
            }
            _ => None,
        }
    }
}

/// Which mark a receipt moved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ReceiptKind {
    Read,
    Delivered,
}

/// `receipt`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct ReceiptEvent {
    pub room: String,
    /// The reader's id.
    pub user: String,
    pub kind: ReceiptKind,
    pub seq: i64,
}

/// `notification.new`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct NotificationNew {
    pub notification: Notification,
}

impl NotificationNew {
    /// The `notification.new` frame of a stored notification (unread).
    pub fn frame(stored: &proto::chat::v1::Notification) -> ServerFrame {
        ServerFrame::NotificationNew(NotificationNew {
            notification: Notification::from(stored),
        })
    }
}

/// `custom`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CustomEvent {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The backend's event name.
    pub event: String,
    pub data: Value,
}

/// `ai.delta`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AiDelta {
    pub room: String,
    pub stream_id: String,
    /// Counts from 0 without gaps.
    pub index: u64,
    pub text: String,
}

/// `ai.done`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AiDone {
    pub room: String,
    pub stream_id: String,
    /// The reply, stored as a message from `assistant`.
    pub message: Option<Message>,
}

/// `ai.error`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct AiError {
    pub room: String,
    pub stream_id: String,
    /// `code` is an error code or `cancelled`.
    pub error: StreamError,
    /// A cancelled reply's partial text, stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<Message>,
}

/// Why an assistant reply ended without `ai.done`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct StreamError {
    /// An error code, or `cancelled`.
    pub code: String,
    pub message: String,
    pub temporary: bool,
}

/// `token.expiring`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TokenExpiring {
    pub expires_in_ms: u64,
    pub expires_at: i64,
}

/// `typing`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct TypingEvent {
    pub room: String,
    /// The typist's id.
    pub user: String,
    pub typing: bool,
}

/// `call.incoming`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CallIncoming {
    pub call_id: String,
    pub from: UserRef,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The caller's payload, as sent.
    pub payload: Value,
    /// How long it rings.
    pub expires_in_ms: u64,
}

/// `call.answer`, `call.reject`, `call.end`, `call.ice`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct CallEvent {
    pub call_id: String,
    /// The party who acted (absent when the call rang out).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<UserRef>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
    /// `missed` when the call rang out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// A reply's result as the map of its fields.
pub fn result_fields(result: &ReplyResult) -> Map<String, Value> {
    match serde_json::to_value(result) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn frames_carry_their_type_first_and_replies_flatten_their_result() {
        let frame = ServerFrame::Reply(ReplyFrame {
            id: 7,
            ok: true,
            error: None,
            result: Some(ReplyResult::Receipt(ReceiptReply { seq: 3 })),
        });
        assert_eq!(
            frame.to_json(),
            r#"{"type":"reply","id":7,"ok":true,"seq":3}"#
        );
        let typing = ServerFrame::Typing(TypingEvent {
            room: "r".into(),
            user: "u".into(),
            typing: true,
        });
        assert_eq!(typing.kind(), "typing");
        assert_eq!(
            serde_json::to_value(&typing).expect("json"),
            json!({"type": "typing", "room": "r", "user": "u", "typing": true})
        );
    }

    #[test]
    fn stored_events_read_back_as_frames() {
        let json = r#"{"type":"member.joined","room":"r","seq":2,"user":{"id":"u","name":"U"}}"#;
        let frame: ServerFrame = serde_json::from_str(json).expect("frame");
        assert_eq!(frame.kind(), "member.joined");
        assert_eq!(frame.to_json(), json);
    }
}
