//! Every command a client sends, one variant each, with its typed arguments
//! and its properties (needs a signed-in connection, rate family, counts as a
//! message, inspects text, belongs to the assistant) stated once, in the
//! table at the bottom of this file.
//!
//! Decoding is two steps so that errors come in the protocol's order: the
//! frame's `type` names a [`CommandKind`] (unknown types are `bad_request`),
//! the edge checks sign-in and rate limits by the kind's [`Spec`], and only
//! then [`CommandKind::decode`] reads and validates the arguments
//! (`bad_request`, or `too_large` for a field over its limit).

use common::ErrorCode;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::objects::{MessageKind, PresenceStatus, Role, Visibility};

/// Longest id (room, user, message, call) a command may carry, in bytes.
pub const ID_MAX: usize = 128;
/// Longest token, in bytes.
const TOKEN_MAX: usize = 64 * 1024;
/// Longest display name at sign-in, in bytes.
const NAME_MAX: usize = 256;
/// Longest room name, in bytes.
const ROOM_NAME_MAX: usize = 400;
/// Longest `client_msg_id`, in bytes.
const CLIENT_MSG_ID_MAX: usize = 64;
/// Most initial members of `room.create`.
const ROOM_MEMBERS_MAX: usize = 1000;
/// Longest stream id of `ai.cancel`, in bytes.
const STREAM_ID_MAX: usize = 160;
/// Longest model name of `ai.ask`, in bytes.
const MODEL_MAX: usize = 128;
/// Longest emoji, in bytes.
const EMOJI_MAX: usize = 64;
/// Most ids of `notification.read` and `notification.clear`.
const NOTIFICATION_IDS_MAX: usize = 100;
/// Longest room topic, in bytes (chat-service also counts characters).
const TOPIC_MAX: usize = 4 * 1024;
/// Largest room metadata, in bytes of JSON.
const ROOM_METADATA_MAX: usize = 4 * 1024;
/// Longest report reason, in bytes.
const REASON_MAX: usize = 1024;
/// Largest page of `room.members` and `room.directory`.
const PAGE_MAX: u64 = 100;
/// Longest paging cursor, in bytes.
const CURSOR_MAX: usize = 512;
/// Longest directory query, in bytes.
const QUERY_MAX: usize = 400;
/// Most rooms one `room.join` may name (the edge's configured bound is
/// usually lower: `edge.max_rooms_per_join`).
pub const JOIN_ROOMS_MAX: usize = 1000;
/// Largest page of `message.history`.
const HISTORY_LIMIT_MAX: u32 = 100;
/// Page of `message.history` when `limit` is absent.
const HISTORY_LIMIT_DEFAULT: u32 = 50;
/// Longest status name of `presence.set`, in bytes.
const STATUS_MAX: usize = 32;
/// Longest status text, in characters.
const STATUS_TEXT_MAX_CHARS: usize = 100;
/// Largest call payload, in bytes of JSON.
const CALL_PAYLOAD_MAX: usize = 16 * 1024;
/// Metadata keys only the server sets: content inspection's `flags` and
/// the assistant's markers.
pub const RESERVED_METADATA: &[&str] =
    &["flags", "stream_id", "ai_prompt", "truncated", "cancelled"];

/// Why a command's arguments were refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DecodeError {
    /// `bad_request`, or `too_large` for a field over its limit.
    pub code: ErrorCode,
    pub message: String,
}

impl DecodeError {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::BadRequest,
            message: message.into(),
        }
    }

    fn too_large(message: impl Into<String>) -> Self {
        Self {
            code: ErrorCode::TooLarge,
            message: message.into(),
        }
    }
}

/// The per-user rate window a command counts against besides the message
/// tiers (the limits themselves are edge configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RateFamily {
    Typing,
    Receipts,
    PresenceSet,
    CallInvite,
    Reactions,
    RoomCreate,
}

impl RateFamily {
    /// The family's name in rate-limit keys, logs and errors.
    pub fn as_str(self) -> &'static str {
        match self {
            RateFamily::Typing => "typing",
            RateFamily::Receipts => "receipts",
            RateFamily::PresenceSet => "presence_set",
            RateFamily::CallInvite => "call_invite",
            RateFamily::Reactions => "reactions",
            RateFamily::RoomCreate => "room_create",
        }
    }
}

/// A command's properties.
#[derive(Debug, Clone, Copy)]
pub struct Spec {
    /// The command's `type`.
    pub name: &'static str,
    /// One line for the protocol documents.
    pub summary: &'static str,
    /// Refused with `unauthorized` before `auth`.
    pub needs_auth: bool,
    /// Counted against the message tiers (per user, per address, global).
    pub message: bool,
    /// Its text goes through content inspection.
    pub inspects_text: bool,
    /// Part of the assistant: `disabled` when `ai.enabled = false`.
    pub assistant: bool,
    /// Its own per-user window, if any.
    pub family: Option<RateFamily>,
    /// Acts on one room (its `room` field) and changes nothing of the
    /// connection's state: it may run beside the connection's other
    /// commands, in order with those on the same room. Every other command
    /// is a barrier: it runs once everything before it has finished, and
    /// nothing after it starts before it has.
    pub room_ordered: bool,
}

const BASE: Spec = Spec {
    name: "",
    summary: "",
    needs_auth: true,
    message: false,
    inspects_text: false,
    assistant: false,
    family: None,
    room_ordered: false,
};

/// Arguments are checked after decoding; `validate` may also normalise them.
trait Validate {
    fn validate(&mut self) -> Result<(), DecodeError>;
}

/// Declares the commands: the enum, its kinds, their specs and decoding.
macro_rules! commands {
    ($(
        $(#[doc = $doc:literal])*
        $name:literal => $variant:ident($args:ty) { $($prop:ident: $value:expr),* $(,)? }
    ),* $(,)?) => {
        /// A client command, tagged by `type`.
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(tag = "type")]
        pub enum ClientCommand {
            $( $(#[doc = $doc])* #[serde(rename = $name)] $variant($args), )*
        }

        /// The kind of a command: its `type` without arguments.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum CommandKind {
            $( $variant, )*
        }

        impl CommandKind {
            /// Every command, in the protocol's order.
            pub const ALL: &'static [CommandKind] = &[$(CommandKind::$variant),*];

            /// The kind a frame's `type` names.
            pub fn from_name(name: &str) -> Option<Self> {
                match name {
                    $( $name => Some(CommandKind::$variant), )*
                    _ => None,
                }
            }

            /// This command's properties.
            pub fn spec(self) -> &'static Spec {
                match self {
                    $( CommandKind::$variant => {
                        const SPEC: Spec = Spec {
                            name: $name,
                            summary: concat!($($doc),*),
                            $($prop: $value,)*
                            ..BASE
                        };
                        &SPEC
                    } )*
                }
            }

            /// Reads and validates the arguments of a command of this kind
            /// (the frame without `type`, `id` and `traceparent`).
            pub fn decode(self, body: Map<String, Value>) -> Result<ClientCommand, DecodeError> {
                match self {
                    $( CommandKind::$variant => {
                        let mut args: $args = decode_args(body)?;
                        args.validate()?;
                        Ok(ClientCommand::$variant(args))
                    } )*
                }
            }
        }

        impl ClientCommand {
            /// The command's kind.
            pub fn kind(&self) -> CommandKind {
                match self {
                    $( ClientCommand::$variant(_) => CommandKind::$variant, )*
                }
            }
        }
    };
}

impl CommandKind {
    /// The command's `type`.
    pub fn name(self) -> &'static str {
        self.spec().name
    }
}

fn decode_args<T: serde::de::DeserializeOwned>(body: Map<String, Value>) -> Result<T, DecodeError> {
    serde_path_to_error::deserialize(Value::Object(body)).map_err(|error| {
        let path = error.path().to_string();
        let inner = error.into_inner();
        if path == "." || path.is_empty() {
            DecodeError::bad(inner.to_string())
        } else {
            DecodeError::bad(format!("`{path}`: {inner}"))
        }
    })
}

/// A required string: 1..=`max` bytes.
fn required(field: &str, value: &str, max: usize) -> Result<(), DecodeError> {
    if value.is_empty() {
        Err(DecodeError::bad(format!("missing string field `{field}`")))
    } else if value.len() > max {
        Err(DecodeError::too_large(format!(
            "`{field}` is longer than {max} bytes"
        )))
    } else {
        Ok(())
    }
}

/// An optional string: absent, or 1..=`max` bytes.
fn optional(field: &str, value: &Option<String>, max: usize) -> Result<(), DecodeError> {
    match value {
        Some(value) => required(field, value, max),
        None => Ok(()),
    }
}

/// A list of ids: at most `max_count`, each 1..=[`ID_MAX`] bytes.
fn ids(field: &str, values: &[String], max_count: usize, message: &str) -> Result<(), DecodeError> {
    if values.len() > max_count || values.iter().any(|v| v.is_empty() || v.len() > ID_MAX) {
        return Err(DecodeError::bad(format!("`{field}` {message}")));
    }
    Ok(())
}

/// A JSON payload of at most [`CALL_PAYLOAD_MAX`] bytes.
fn payload(value: &Option<Value>) -> Result<(), DecodeError> {
    if let Some(value) = value
        && value.to_string().len() > CALL_PAYLOAD_MAX
    {
        return Err(DecodeError::too_large(format!(
            "`payload` is larger than {CALL_PAYLOAD_MAX} bytes"
        )));
    }
    Ok(())
}

/// A command without arguments.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NoArgs {}

impl Validate for NoArgs {
    fn validate(&mut self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// `auth`: a token, or anonymous sign-in, or a development login.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Auth {
    /// A token from your identity provider or from `IssueTokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Sign in as a new anonymous user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anonymous: Option<bool>,
    /// The anonymous user's display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Development login as this user (only with `auth.dev_login`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev_user: Option<String>,
}

/// How `auth` signs in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SignIn<'a> {
    Anonymous { name: &'a str },
    Dev { user: &'a str },
    Token(&'a str),
}

impl Auth {
    /// The way of signing in this command asks for (validated).
    pub fn sign_in(&self) -> SignIn<'_> {
        if self.anonymous == Some(true) {
            SignIn::Anonymous {
                name: self.name.as_deref().unwrap_or_default(),
            }
        } else if let Some(user) = &self.dev_user {
            SignIn::Dev { user }
        } else {
            SignIn::Token(self.token.as_deref().unwrap_or_default())
        }
    }
}

impl Validate for Auth {
    fn validate(&mut self) -> Result<(), DecodeError> {
        if self.anonymous == Some(true) {
            return optional("name", &self.name, NAME_MAX);
        }
        if self.dev_user.is_some() {
            return optional("dev_user", &self.dev_user, NAME_MAX);
        }
        match &self.token {
            Some(token) if !token.is_empty() => required("token", token, TOKEN_MAX),
            _ => Err(DecodeError::bad(
                "send `token`, `anonymous: true` or `dev_user`",
            )),
        }
    }
}

/// `refresh`: a newer token of the same user.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Refresh {
    pub token: String,
}

impl Validate for Refresh {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("token", &self.token, TOKEN_MAX)
    }
}

/// `room.create`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomCreate {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `public` (default), `private` or `direct`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(with = "Option<Visibility>")]
    pub visibility: Option<String>,
    /// Initial members (a `direct` room names exactly one other user).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<Vec<String>>,
}

impl RoomCreate {
    /// The visibility asked for (validated).
    pub fn visibility(&self) -> Visibility {
        self.visibility
            .as_deref()
            .and_then(Visibility::parse)
            .unwrap_or(Visibility::Public)
    }
}

impl Validate for RoomCreate {
    fn validate(&mut self) -> Result<(), DecodeError> {
        optional("name", &self.name, ROOM_NAME_MAX)?;
        optional("visibility", &self.visibility, 16)?;
        if let Some(v) = &self.visibility
            && Visibility::parse(v).is_none()
        {
            return Err(DecodeError::bad(
                "`visibility` must be public, private or direct",
            ));
        }
        ids(
            "members",
            self.members.as_deref().unwrap_or_default(),
            ROOM_MEMBERS_MAX,
            "must be an array of at most 1000 user ids",
        )
    }
}

/// `room.join`: one `room` (optionally recovering from `since`), or several
/// at once in `rooms`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomJoin {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// The last `seq` the client saw.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Several rooms in one command (instead of `room`); one reply carries
    /// each room's result.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rooms: Option<Vec<JoinTarget>>,
}

/// One room of a `room.join{rooms}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct JoinTarget {
    pub room: String,
    /// The last `seq` the client saw of this room.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
}

impl RoomJoin {
    /// The rooms asked for, in order (validated: one or more, no repeats).
    pub fn targets(&self) -> Vec<JoinTarget> {
        match (&self.room, &self.rooms) {
            (Some(room), _) => vec![JoinTarget {
                room: room.clone(),
                since: self.since,
            }],
            (None, Some(rooms)) => rooms.clone(),
            (None, None) => Vec::new(),
        }
    }
}

impl Validate for RoomJoin {
    fn validate(&mut self) -> Result<(), DecodeError> {
        match (&self.room, &self.rooms) {
            (Some(room), None) => {
                required("room", room, ID_MAX)?;
                seq("since", self.since)
            }
            (None, Some(rooms)) => {
                if self.since.is_some() {
                    return Err(DecodeError::bad(
                        "`since` goes inside each entry of `rooms`",
                    ));
                }
                if rooms.is_empty() {
                    return Err(DecodeError::bad("`rooms` must not be empty"));
                }
                if rooms.len() > JOIN_ROOMS_MAX {
                    return Err(DecodeError::too_large(format!(
                        "`rooms` names more than {JOIN_ROOMS_MAX} rooms"
                    )));
                }
                let mut seen = std::collections::HashSet::new();
                for target in rooms {
                    required("rooms[].room", &target.room, ID_MAX)?;
                    seq("rooms[].since", target.since)?;
                    if !seen.insert(target.room.as_str()) {
                        return Err(DecodeError::bad(format!(
                            "`rooms` names `{}` twice",
                            target.room
                        )));
                    }
                }
                Ok(())
            }
            (Some(_), Some(_)) => Err(DecodeError::bad("send `room` or `rooms`, not both")),
            (None, None) => Err(DecodeError::bad("missing string field `room`")),
        }
    }
}

fn seq(field: &str, value: Option<u64>) -> Result<(), DecodeError> {
    match value {
        Some(v) if i64::try_from(v).is_err() => Err(DecodeError::bad(format!(
            "`{field}` must be a non-negative integer"
        ))),
        _ => Ok(()),
    }
}

/// `room.leave`; `forget` also ends the membership.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomLeave {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forget: Option<bool>,
}

impl Validate for RoomLeave {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)
    }
}

/// A room and a user: `room.invite`, `room.remove_member`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomUser {
    pub room: String,
    pub user: String,
}

impl Validate for RoomUser {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("user", &self.user, ID_MAX)
    }
}

/// A user: `user.block`, `user.unblock`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct UserArg {
    pub user: String,
}

impl Validate for UserArg {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("user", &self.user, ID_MAX)
    }
}

/// `message.send`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageSend {
    pub room: String,
    pub text: String,
    /// The client's id for the message: sending again with it stores nothing new.
    pub client_msg_id: String,
    /// The id of the thread's root message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The id of a message of the same room this one replies to: its id,
    /// sender and an excerpt travel with the new message as `reply_to`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<String>,
    /// `text` (default), `image`, `video`, `audio`, `file` or `voice`; any
    /// kind but `text` needs attachments of a fitting type.
    #[serde(default, skip_serializing_if = "MessageKind::is_text")]
    pub kind: MessageKind,
    /// Ids of your uploads (`POST /v1/attachments`) not yet sent; with
    /// attachments `text` may be empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<String>,
}

impl Validate for MessageSend {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("client_msg_id", &self.client_msg_id, CLIENT_MSG_ID_MAX)?;
        if let Some(key) = self
            .metadata
            .iter()
            .flat_map(|m| m.keys())
            .find(|k| RESERVED_METADATA.contains(&k.as_str()))
        {
            return Err(DecodeError::bad(format!(
                "`metadata.{key}` is set by the server only"
            )));
        }
        optional("reply_to", &self.reply_to, ID_MAX)?;
        if self.attachments.len() > MAX_ATTACHMENTS {
            return Err(DecodeError::bad(format!(
                "`attachments` holds at most {MAX_ATTACHMENTS} ids"
            )));
        }
        for id in &self.attachments {
            required("attachments[]", id, ID_MAX)?;
        }
        if !self.kind.is_text() && self.attachments.is_empty() {
            return Err(DecodeError::bad(format!(
                "a `{}` message needs `attachments`",
                self.kind.as_str()
            )));
        }
        optional("thread", &self.thread, ID_MAX)
    }
}

/// Most attachment ids one frame may carry (the server's own limit,
/// `attachments.max_per_message`, may be lower).
pub const MAX_ATTACHMENTS: usize = 100;

/// `attachment.url`: a signed download URL of an attachment of a message
/// in a room you are a member of.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AttachmentUrl {
    pub room: String,
    pub attachment: String,
}

impl Validate for AttachmentUrl {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("attachment", &self.attachment, ID_MAX)
    }
}

/// `message.history`: a page of a room's messages.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageHistory {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// 1–100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

impl MessageHistory {
    /// The page size (validated).
    pub fn limit(&self) -> u32 {
        self.limit
            .and_then(|l| u32::try_from(l).ok())
            .unwrap_or(HISTORY_LIMIT_DEFAULT)
    }
}

impl Validate for MessageHistory {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        seq("before", self.before)?;
        seq("after", self.after)?;
        if let Some(limit) = self.limit
            && !(1..=u64::from(HISTORY_LIMIT_MAX)).contains(&limit)
        {
            return Err(DecodeError::bad("`limit` must be between 1 and 100"));
        }
        optional("thread", &self.thread, ID_MAX)
    }
}

/// `message.edit` (the author only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageEdit {
    pub room: String,
    pub message_id: String,
    pub text: String,
}

impl Validate for MessageEdit {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("message_id", &self.message_id, ID_MAX)
    }
}

/// `message.delete` (the author or the room's owner).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageDelete {
    pub room: String,
    pub message_id: String,
}

impl Validate for MessageDelete {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("message_id", &self.message_id, ID_MAX)
    }
}

/// `reaction.add`, `reaction.remove`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReactionArgs {
    pub room: String,
    pub message_id: String,
    pub emoji: String,
}

impl Validate for ReactionArgs {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("message_id", &self.message_id, ID_MAX)?;
        required("emoji", &self.emoji, EMOJI_MAX)
    }
}

/// `receipt.read`, `receipt.delivered`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ReceiptArgs {
    pub room: String,
    pub seq: u64,
}

impl Validate for ReceiptArgs {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        seq("seq", Some(self.seq))
    }
}

/// `notification.list`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationList {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unread_only: Option<bool>,
}

impl Validate for NotificationList {
    fn validate(&mut self) -> Result<(), DecodeError> {
        Ok(())
    }
}

/// `notification.read`, `notification.clear`: some ids, or `all: true`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct NotificationIds {
    /// At most 100 notification ids.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ids: Option<Vec<String>>,
    /// Every notification of yours (instead of `ids`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub all: Option<bool>,
}

impl NotificationIds {
    /// Whether every notification is meant (validated).
    pub fn all(&self) -> bool {
        self.all == Some(true)
    }
}

impl Validate for NotificationIds {
    fn validate(&mut self) -> Result<(), DecodeError> {
        match (&self.ids, self.all()) {
            (Some(_), true) => Err(DecodeError::bad("send `ids` or `all: true`, not both")),
            (None, false) => Err(DecodeError::bad("send `ids` or `all: true`")),
            (None, true) => Ok(()),
            (Some(values), false) => ids(
                "ids",
                values,
                NOTIFICATION_IDS_MAX,
                "must be an array of at most 100 ids",
            ),
        }
    }
}

/// `room.update`: what is absent stays as it is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomUpdate {
    pub room: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Empty removes the topic.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub topic: Option<String>,
    /// Replaces the room's metadata (an empty object removes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
}

impl Validate for RoomUpdate {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        optional("name", &self.name, ROOM_NAME_MAX)?;
        if let Some(topic) = &self.topic
            && topic.len() > TOPIC_MAX
        {
            return Err(DecodeError::too_large(format!(
                "`topic` is longer than {TOPIC_MAX} bytes"
            )));
        }
        if let Some(metadata) = &self.metadata
            && Value::Object(metadata.clone()).to_string().len() > ROOM_METADATA_MAX
        {
            return Err(DecodeError::too_large(format!(
                "`metadata` is larger than {ROOM_METADATA_MAX} bytes"
            )));
        }
        if self.name.is_none() && self.topic.is_none() && self.metadata.is_none() {
            return Err(DecodeError::bad("send `name`, `topic` or `metadata`"));
        }
        Ok(())
    }
}

/// A command naming one room: `room.delete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomRef {
    pub room: String,
}

impl Validate for RoomRef {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)
    }
}

/// A page size: 1..=100, default 50.
fn page_limit(limit: Option<u64>) -> Result<(), DecodeError> {
    match limit {
        Some(limit) if !(1..=PAGE_MAX).contains(&limit) => {
            Err(DecodeError::bad("`limit` must be between 1 and 100"))
        }
        _ => Ok(()),
    }
}

/// `room.members`: a page of a room's members.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomMembers {
    pub room: String,
    /// `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1–100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl Validate for RoomMembers {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        optional("cursor", &self.cursor, CURSOR_MAX)?;
        page_limit(self.limit)
    }
}

/// `room.list`: your rooms, the most recently joined first, a page at a time.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomListArgs {
    /// `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1–100, default 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl Validate for RoomListArgs {
    fn validate(&mut self) -> Result<(), DecodeError> {
        optional("cursor", &self.cursor, CURSOR_MAX)?;
        page_limit(self.limit)
    }
}

/// `room.directory`: public rooms by name prefix.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomDirectory {
    /// A prefix of the name (case-insensitive).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub query: Option<String>,
    /// `next_cursor` of the previous page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cursor: Option<String>,
    /// 1–100, default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
}

impl Validate for RoomDirectory {
    fn validate(&mut self) -> Result<(), DecodeError> {
        if let Some(query) = &self.query
            && query.len() > QUERY_MAX
        {
            return Err(DecodeError::too_large(format!(
                "`query` is longer than {QUERY_MAX} bytes"
            )));
        }
        optional("cursor", &self.cursor, CURSOR_MAX)?;
        page_limit(self.limit)
    }
}

/// The page size of `room.members` and `room.directory` (validated).
pub fn page_size(limit: Option<u64>) -> u32 {
    limit.and_then(|l| u32::try_from(l).ok()).unwrap_or(50)
}

/// `room.set_role`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomSetRole {
    pub room: String,
    pub user: String,
    /// `owner` (transfers ownership: you become an admin), `admin` or `member`.
    #[schemars(with = "Role")]
    pub role: String,
}

impl RoomSetRole {
    /// The role asked for (validated).
    pub fn role(&self) -> Role {
        Role::parse(&self.role).unwrap_or(Role::Member)
    }
}

impl Validate for RoomSetRole {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("user", &self.user, ID_MAX)?;
        if Role::parse(&self.role).is_none() {
            return Err(DecodeError::bad("`role` must be owner, admin or member"));
        }
        Ok(())
    }
}

/// `room.mute`, `room.ban`: until `until` (ms since the epoch), or until undone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct RoomSanction {
    pub room: String,
    pub user: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub until: Option<u64>,
}

impl Validate for RoomSanction {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("user", &self.user, ID_MAX)?;
        seq("until", self.until)
    }
}

/// `message.report`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct MessageReport {
    pub room: String,
    /// The reported message's id.
    pub message: String,
    /// At most 1024 bytes.
    pub reason: String,
}

impl Validate for MessageReport {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        required("message", &self.message, ID_MAX)?;
        required("reason", &self.reason, REASON_MAX)
    }
}

/// `ai.ask`: a question for the assistant.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiAsk {
    pub room: String,
    pub prompt: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_msg_id: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
}

impl Validate for AiAsk {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)?;
        optional("model", &self.model, MODEL_MAX)?;
        optional("client_msg_id", &self.client_msg_id, CLIENT_MSG_ID_MAX)?;
        optional("thread", &self.thread, ID_MAX)
    }
}

/// `ai.cancel`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct AiCancel {
    pub stream_id: String,
}

impl Validate for AiCancel {
    fn validate(&mut self) -> Result<(), DecodeError> {
        if self.stream_id.is_empty() || self.stream_id.len() > STREAM_ID_MAX {
            return Err(DecodeError::bad("missing string field `stream_id`"));
        }
        Ok(())
    }
}

/// `presence.set`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceSet {
    /// `online`, `away`, `busy` or `invisible`.
    #[schemars(with = "PresenceStatus")]
    pub status: String,
    /// At most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Validate for PresenceSet {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("status", &self.status, STATUS_MAX)?;
        if !PresenceStatus::SETTABLE.contains(&self.status.as_str()) {
            return Err(DecodeError::bad(format!(
                "`status` must be one of {}",
                PresenceStatus::SETTABLE.join(", ")
            )));
        }
        if let Some(text) = &self.text
            && text.chars().count() > STATUS_TEXT_MAX_CHARS
        {
            return Err(DecodeError::too_large(format!(
                "`text` is longer than {STATUS_TEXT_MAX_CHARS} characters"
            )));
        }
        Ok(())
    }
}

/// `presence.subscribe`, `presence.unsubscribe`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceUsers {
    /// User ids; repeats are ignored.
    pub users: Vec<String>,
}

impl Validate for PresenceUsers {
    fn validate(&mut self) -> Result<(), DecodeError> {
        ids(
            "users",
            &self.users,
            usize::MAX,
            "must be an array of user ids",
        )?;
        let mut seen = std::collections::HashSet::new();
        self.users.retain(|u| seen.insert(u.clone()));
        Ok(())
    }
}

/// `typing.start`, `typing.stop`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Typing {
    /// A room joined on this connection.
    pub room: String,
}

impl Validate for Typing {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("room", &self.room, ID_MAX)
    }
}

/// `call.invite`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallInvite {
    /// The callee's user id.
    pub to: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Any JSON (an SDP offer, say), at most 16 KiB; relayed as it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl Validate for CallInvite {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("to", &self.to, ID_MAX)?;
        optional("room", &self.room, ID_MAX)?;
        payload(&self.payload)
    }
}

/// `call.answer`, `call.reject`, `call.end`, `call.ice`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct CallAct {
    pub call_id: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub payload: Option<Value>,
}

impl Validate for CallAct {
    fn validate(&mut self) -> Result<(), DecodeError> {
        required("call_id", &self.call_id, ID_MAX)?;
        payload(&self.payload)
    }
}

commands! {
    /// Liveness check; allowed before `auth`.
    "ping" => Ping(NoArgs) { needs_auth: false },
    /// Sign in: a token, anonymous, or a development login.
    "auth" => Auth(Auth) { needs_auth: false },
    /// Swap in a newer token of the same user.
    "refresh" => Refresh(Refresh) {},
    /// Create a room; the creator owns it.
    "room.create" => RoomCreate(RoomCreate) { family: Some(RateFamily::RoomCreate) },
    /// Join a room's live events, recovering from `since`; or several rooms in `rooms`.
    "room.join" => RoomJoin(RoomJoin) {},
    /// Stop receiving a room's events on this connection.
    "room.leave" => RoomLeave(RoomLeave) {},
    /// The rooms you are a member of.
    "room.list" => RoomList(RoomListArgs) {},
    /// Post a message.
    "message.send" => MessageSend(MessageSend) { message: true, inspects_text: true, room_ordered: true },
    /// A short-lived signed download URL of an attachment.
    "attachment.url" => AttachmentUrl(AttachmentUrl) {},
    /// A page of a room's messages.
    "message.history" => MessageHistory(MessageHistory) { room_ordered: true },
    /// Ask the assistant; the reply streams as `ai.delta`.
    "ai.ask" => AiAsk(AiAsk) { assistant: true, inspects_text: true },
    /// Stop an assistant reply.
    "ai.cancel" => AiCancel(AiCancel) { assistant: true },
    /// Invite a user to a room; they become a member when they accept.
    "room.invite" => RoomInvite(RoomUser) {},
    /// Remove a member from a room (owner only).
    "room.remove_member" => RoomRemoveMember(RoomUser) {},
    /// Change a message's text (author only).
    "message.edit" => MessageEdit(MessageEdit) { message: true, inspects_text: true, room_ordered: true },
    /// Delete a message, leaving a tombstone.
    "message.delete" => MessageDelete(MessageDelete) { room_ordered: true },
    /// React to a message.
    "reaction.add" => ReactionAdd(ReactionArgs) { family: Some(RateFamily::Reactions), room_ordered: true },
    /// Take a reaction back.
    "reaction.remove" => ReactionRemove(ReactionArgs) { family: Some(RateFamily::Reactions), room_ordered: true },
    /// Move your read mark.
    "receipt.read" => ReceiptRead(ReceiptArgs) { family: Some(RateFamily::Receipts) },
    /// Move your delivered mark.
    "receipt.delivered" => ReceiptDelivered(ReceiptArgs) { family: Some(RateFamily::Receipts) },
    /// Your notifications, newest first.
    "notification.list" => NotificationList(NotificationList) {},
    /// Mark notifications read: `ids`, or `all: true`.
    "notification.read" => NotificationRead(NotificationIds) {},
    /// Delete notifications: `ids`, or `all: true`; your other connections get `notification.cleared`.
    "notification.clear" => NotificationClear(NotificationIds) {},
    /// Change a room's name, topic or metadata (owner or admins).
    "room.update" => RoomUpdate(RoomUpdate) {},
    /// Delete a room (the owner): its history goes at once.
    "room.delete" => RoomDelete(RoomRef) {},
    /// A page of a room's members with role, join time and presence.
    "room.members" => RoomMembers(RoomMembers) {},
    /// Give a member a role; `owner` transfers ownership.
    "room.set_role" => RoomSetRole(RoomSetRole) {},
    /// Mute a member: no sending, reacting or typing.
    "room.mute" => RoomMute(RoomSanction) {},
    /// Undo a mute.
    "room.unmute" => RoomUnmute(RoomUser) {},
    /// Ban a user: removed, and cannot rejoin or be invited.
    "room.ban" => RoomBan(RoomSanction) {},
    /// Undo a ban.
    "room.unban" => RoomUnban(RoomUser) {},
    /// Report a message to the service's operators.
    "message.report" => MessageReport(MessageReport) {},
    /// Public rooms by name prefix, with member counts.
    "room.directory" => RoomDirectory(RoomDirectory) {},
    /// Set your status.
    "presence.set" => PresenceSet(PresenceSet) { family: Some(RateFamily::PresenceSet) },
    /// Follow users' presence.
    "presence.subscribe" => PresenceSubscribe(PresenceUsers) {},
    /// Stop following users' presence.
    "presence.unsubscribe" => PresenceUnsubscribe(PresenceUsers) {},
    /// Start a typing indicator.
    "typing.start" => TypingStart(Typing) { family: Some(RateFamily::Typing) },
    /// Stop a typing indicator.
    "typing.stop" => TypingStop(Typing) { family: Some(RateFamily::Typing) },
    /// Ring a user.
    "call.invite" => CallInvite(CallInvite) { family: Some(RateFamily::CallInvite) },
    /// Answer a ringing call (the callee).
    "call.answer" => CallAnswer(CallAct) {},
    /// Reject a ringing call (the callee).
    "call.reject" => CallReject(CallAct) {},
    /// End a call (either party).
    "call.end" => CallEnd(CallAct) {},
    /// Relay an ICE candidate (either party).
    "call.ice" => CallIce(CallAct) {},
    /// Block a user: no direct room, direct message, call or mention from them.
    "user.block" => UserBlock(UserArg) {},
    /// Undo a block.
    "user.unblock" => UserUnblock(UserArg) {},
    /// The users you block, newest first.
    "user.blocks" => UserBlocks(NoArgs) {},
    /// Your pending invitations to rooms, newest first.
    "invitation.list" => InvitationList(NoArgs) {},
    /// Accept an invitation: you become a member of the room.
    "invitation.accept" => InvitationAccept(RoomRef) {},
    /// Decline an invitation.
    "invitation.decline" => InvitationDecline(RoomRef) {},
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn decode(value: Value) -> Result<ClientCommand, DecodeError> {
        let Value::Object(mut body) = value else {
            panic!("object")
        };
        let kind = body.remove("type").expect("type");
        let kind = CommandKind::from_name(kind.as_str().expect("str")).expect("known");
        kind.decode(body)
    }

    #[test]
    fn every_kind_round_trips_its_name_and_the_enum_tag() {
        for kind in CommandKind::ALL {
            assert_eq!(CommandKind::from_name(kind.name()), Some(*kind));
        }
        let command = decode(json!({"type": "room.join", "room": "r_1", "since": 4})).expect("ok");
        assert_eq!(command.kind(), CommandKind::RoomJoin);
        let tagged: ClientCommand =
            serde_json::from_value(json!({"type": "room.join", "room": "r_1", "since": 4}))
                .expect("serde");
        assert_eq!(tagged, command);
        assert_eq!(
            serde_json::to_value(&command).expect("json"),
            json!({"type": "room.join", "room": "r_1", "since": 4})
        );
    }

    #[test]
    fn fields_are_validated_with_the_protocols_codes() {
        let code = |v: Value| decode(v).expect_err("refused").code;
        assert_eq!(
            code(json!({"type": "message.send", "room": "r"})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "room.join", "room": 5})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "room.join", "room": ""})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "room.join", "room": "r".repeat(129)})),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code(json!({"type": "room.join", "room": "r", "since": -1})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "message.history", "room": "r", "limit": 101})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "room.create", "visibility": "secret"})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "presence.set", "status": "online", "text": "é".repeat(101)})),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code(json!({"type": "presence.set", "status": "asleep"})),
            ErrorCode::BadRequest
        );
        assert_eq!(
            code(json!({"type": "call.invite", "to": "u", "payload": "x".repeat(17 * 1024)})),
            ErrorCode::TooLarge
        );
        assert_eq!(code(json!({"type": "auth"})), ErrorCode::BadRequest);
        assert_eq!(
            code(
                json!({"type": "message.send", "room": "r", "text": "t", "client_msg_id": "1",
                        "metadata": {"flags": ["xss"]}})
            ),
            ErrorCode::BadRequest,
            "clients cannot set reserved metadata"
        );
        let message = decode(json!({"type": "room.join", "room": 5}))
            .expect_err("bad")
            .message;
        assert!(message.contains("`room`"), "{message}");
    }

    #[test]
    fn the_commands_of_issue_21_refuse_bad_input_with_the_protocols_codes() {
        let code = |v: Value| decode(v).expect_err("refused").code;
        let bad = ErrorCode::BadRequest;
        assert_eq!(code(json!({"type": "room.join"})), bad);
        assert_eq!(
            code(json!({"type": "room.join", "room": "a", "rooms": [{"room": "b"}]})),
            bad
        );
        assert_eq!(code(json!({"type": "room.join", "rooms": []})), bad);
        assert_eq!(
            code(json!({"type": "room.join", "rooms": [{"room": "a"}, {"room": "a"}]})),
            bad,
            "a room named twice"
        );
        assert_eq!(
            code(json!({"type": "room.join", "rooms": [{"room": "a"}], "since": 1})),
            bad
        );
        let many: Vec<Value> = (0..=JOIN_ROOMS_MAX)
            .map(|i| json!({"room": format!("r{i}")}))
            .collect();
        assert_eq!(
            code(json!({"type": "room.join", "rooms": many})),
            ErrorCode::TooLarge
        );
        assert_eq!(code(json!({"type": "notification.clear"})), bad);
        assert_eq!(
            code(json!({"type": "notification.clear", "ids": ["n"], "all": true})),
            bad
        );
        assert_eq!(
            code(json!({"type": "notification.read", "all": false})),
            bad
        );
        assert_eq!(code(json!({"type": "room.update", "room": "r"})), bad);
        assert_eq!(
            code(json!({"type": "room.update", "room": "r", "topic": "t".repeat(5000)})),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code(json!({"type": "room.set_role", "room": "r", "user": "u", "role": "king"})),
            bad
        );
        assert_eq!(
            code(
                json!({"type": "message.report", "room": "r", "message": "m", "reason": "x".repeat(1025)})
            ),
            ErrorCode::TooLarge
        );
        assert_eq!(
            code(json!({"type": "room.members", "room": "r", "limit": 0})),
            bad
        );
        assert_eq!(
            code(json!({"type": "room.directory", "query": "q".repeat(401)})),
            ErrorCode::TooLarge
        );
        let ClientCommand::RoomJoin(join) = decode(
            json!({"type": "room.join", "rooms": [{"room": "a", "since": 3}, {"room": "b"}]}),
        )
        .expect("ok") else {
            panic!("kind")
        };
        let targets: Vec<(String, Option<u64>)> = join
            .targets()
            .into_iter()
            .map(|t| (t.room, t.since))
            .collect();
        assert_eq!(
            targets,
            [("a".to_string(), Some(3)), ("b".to_string(), None)]
        );
        let ClientCommand::NotificationClear(clear) =
            decode(json!({"type": "notification.clear", "all": true})).expect("ok")
        else {
            panic!("kind")
        };
        assert!(clear.all());
    }

    #[test]
    fn arguments_are_normalised() {
        let ClientCommand::PresenceSubscribe(users) =
            decode(json!({"type": "presence.subscribe", "users": ["a", "b", "a"]})).expect("ok")
        else {
            panic!("kind")
        };
        assert_eq!(users.users, ["a", "b"]);
        let ClientCommand::Auth(auth) =
            decode(json!({"type": "auth", "anonymous": true, "name": null})).expect("ok")
        else {
            panic!("kind")
        };
        assert_eq!(auth.sign_in(), SignIn::Anonymous { name: "" });
    }

    #[test]
    fn properties_are_stated_once_per_command() {
        let spec = |name| CommandKind::from_name(name).expect("known").spec();
        assert!(!spec("ping").needs_auth && !spec("auth").needs_auth);
        assert!(spec("room.list").needs_auth);
        assert!(spec("message.send").message && spec("message.edit").message);
        assert!(!spec("message.delete").message);
        assert_eq!(spec("typing.stop").family, Some(RateFamily::Typing));
        assert!(spec("ai.cancel").assistant && !spec("room.join").assistant);
        assert_eq!(
            spec("ping").summary.trim(),
            "Liveness check; allowed before `auth`."
        );
    }
}
