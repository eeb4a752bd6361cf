//! The objects inside frames — a message, a room, a user, a notification, a
//! presence state, an error — and how each is made from its gRPC contract
//! type, so every producer shows the same shape.

use std::collections::BTreeMap;

use common::ErrorCode;
use proto::chat::v1 as chat;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// A user as frames name them: `{id, name}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct UserRef {
    pub id: String,
    pub name: String,
}

impl UserRef {
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// The signed-in user of `hello` and the `auth` reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct User {
    pub id: String,
    pub name: String,
    pub anonymous: bool,
}

impl From<&proto::auth::v1::Identity> for User {
    fn from(identity: &proto::auth::v1::Identity) -> Self {
        Self {
            id: identity.user_id.clone(),
            name: identity.name.clone(),
            anonymous: identity.anonymous,
        }
    }
}

/// Who may see and join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Visibility {
    Public,
    Private,
    Direct,
    /// Only in a room a newer server made.
    Unspecified,
}

impl Visibility {
    /// A visibility a client may ask for.
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "public" => Some(Visibility::Public),
            "private" => Some(Visibility::Private),
            "direct" => Some(Visibility::Direct),
            _ => None,
        }
    }

    /// The protocol's name.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Direct => "direct",
            Visibility::Unspecified => "unspecified",
        }
    }

    /// The gRPC contract's value.
    pub fn to_proto(self) -> chat::Visibility {
        match self {
            Visibility::Public => chat::Visibility::Public,
            Visibility::Private => chat::Visibility::Private,
            Visibility::Direct => chat::Visibility::Direct,
            Visibility::Unspecified => chat::Visibility::Unspecified,
        }
    }

    /// From the gRPC contract's value.
    pub fn from_proto(value: i32) -> Self {
        match chat::Visibility::try_from(value).unwrap_or(chat::Visibility::Unspecified) {
            chat::Visibility::Public => Visibility::Public,
            chat::Visibility::Private => Visibility::Private,
            chat::Visibility::Direct => Visibility::Direct,
            chat::Visibility::Unspecified => Visibility::Unspecified,
        }
    }
}

/// A message: `{id, room, seq, sender{id,name}, text, thread?, created_at,
/// edited_at?, deleted, client_msg_id, reactions{}, metadata?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Message {
    pub id: String,
    pub room: String,
    pub seq: i64,
    pub sender: UserRef,
    pub text: String,
    /// The thread's root message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub thread: Option<String>,
    pub created_at: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
    pub deleted: bool,
    pub client_msg_id: String,
    /// Emoji → ids of the users who reacted with it.
    pub reactions: BTreeMap<String, Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// The message this one replies to, quoted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<Quote>,
    /// What the message is; absent means `text`.
    #[serde(default, skip_serializing_if = "MessageKind::is_text")]
    pub kind: MessageKind,
    /// Files sent with it (none once it is deleted); download each through
    /// `attachment.url`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment>,
}

/// What a message is: `text`, or a message built around its attachments.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum MessageKind {
    #[default]
    Text,
    Image,
    Video,
    Audio,
    File,
    Voice,
}

impl MessageKind {
    pub fn is_text(&self) -> bool {
        *self == MessageKind::Text
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            MessageKind::Text => "text",
            MessageKind::Image => "image",
            MessageKind::Video => "video",
            MessageKind::Audio => "audio",
            MessageKind::File => "file",
            MessageKind::Voice => "voice",
        }
    }

    /// The kind named `s` (`""` is `text`).
    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "" | "text" => MessageKind::Text,
            "image" => MessageKind::Image,
            "video" => MessageKind::Video,
            "audio" => MessageKind::Audio,
            "file" => MessageKind::File,
            "voice" => MessageKind::Voice,
            _ => return None,
        })
    }

    /// Whether an attachment of type `mime` fits a message of this kind
    /// (`file` takes anything; `text` may carry files too).
    pub fn accepts(&self, mime: &str) -> bool {
        match self {
            MessageKind::Text | MessageKind::File => true,
            MessageKind::Image => mime.starts_with("image/"),
            MessageKind::Video => mime.starts_with("video/"),
            MessageKind::Audio | MessageKind::Voice => mime.starts_with("audio/"),
        }
    }
}

/// An uploaded file: `{id, mime, size, width?, height?, name?}`. `mime` is
/// what the bytes are, whatever the upload claimed; images carry their size
/// in pixels.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Attachment {
    pub id: String,
    pub mime: String,
    pub size: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub width: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub height: Option<i64>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
}

impl From<&chat::Attachment> for Attachment {
    fn from(a: &chat::Attachment) -> Self {
        Self {
            id: a.id.clone(),
            mime: a.mime.clone(),
            size: a.size,
            width: a.width,
            height: a.height,
            name: a.name.clone(),
        }
    }
}

/// A quoted message: `{id, sender{id,name}, excerpt, deleted, edited_at?}`.
/// An edit of the original changes the excerpt; a delete empties it and
/// sets `deleted` (stored events are rewritten, so replay shows the same).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Quote {
    pub id: String,
    pub sender: UserRef,
    /// The start of the original's text (at most 200 characters).
    pub excerpt: String,
    pub deleted: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<i64>,
}

impl Quote {
    /// Longest excerpt, in characters.
    pub const EXCERPT_CHARS: usize = 200;

    /// The quote of a stored message as it stands.
    pub fn of(m: &chat::Message) -> Self {
        let sender = m.sender.clone().unwrap_or_default();
        Self {
            id: m.id.clone(),
            sender: UserRef::new(sender.id, sender.name),
            excerpt: if m.deleted {
                String::new()
            } else {
                m.text.chars().take(Self::EXCERPT_CHARS).collect()
            },
            deleted: m.deleted,
            edited_at: m.edited_at,
        }
    }
}

impl From<&chat::Quote> for Quote {
    fn from(q: &chat::Quote) -> Self {
        let sender = q.sender.clone().unwrap_or_default();
        Self {
            id: q.id.clone(),
            sender: UserRef::new(sender.id, sender.name),
            excerpt: q.excerpt.clone(),
            deleted: q.deleted,
            edited_at: q.edited_at,
        }
    }
}

impl From<&Quote> for chat::Quote {
    fn from(q: &Quote) -> Self {
        Self {
            id: q.id.clone(),
            sender: Some(chat::User {
                id: q.sender.id.clone(),
                name: q.sender.name.clone(),
            }),
            excerpt: q.excerpt.clone(),
            deleted: q.deleted,
            edited_at: q.edited_at,
        }
    }
}

impl From<&chat::Message> for Message {
    fn from(m: &chat::Message) -> Self {
        let sender = m.sender.as_ref();
        Self {
            id: m.id.clone(),
            room: m.room_id.clone(),
            seq: m.seq,
            sender: UserRef {
                id: sender.map(|s| s.id.clone()).unwrap_or_default(),
                name: sender.map(|s| s.name.clone()).unwrap_or_default(),
            },
            text: m.text.clone(),
            thread: m.thread_id.clone(),
            created_at: m.created_at,
            edited_at: m.edited_at,
            deleted: m.deleted,
            client_msg_id: m.client_msg_id.clone(),
            reactions: m
                .reactions
                .iter()
                .map(|r| (r.emoji.clone(), r.user_ids.clone()))
                .collect(),
            metadata: match m.metadata_json.as_str() {
                "" => None,
                json => serde_json::from_str(json).ok(),
            },
            reply_to: m.reply_to.as_deref().map(Quote::from),
            kind: MessageKind::parse(&m.kind).unwrap_or_default(),
            attachments: m.attachments.iter().map(Attachment::from).collect(),
        }
    }
}

/// A room: `{id, name, topic, metadata?, visibility, owner, last_seq,
/// created_at, unread, deleted?}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Room {
    pub id: String,
    pub name: String,
    pub visibility: Visibility,
    pub owner: String,
    pub last_seq: i64,
    pub created_at: i64,
    /// Messages from others after your read mark.
    pub unread: i64,
    pub topic: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Map<String, Value>>,
    /// Only in the reply of a recovering join of a deleted room.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

/// The room metadata of its gRPC form (`""` is none).
pub fn metadata_of(json: &str) -> Option<Map<String, Value>> {
    match json {
        "" => None,
        json => serde_json::from_str(json).ok(),
    }
}

impl From<&chat::Room> for Room {
    fn from(r: &chat::Room) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            visibility: Visibility::from_proto(r.visibility),
            owner: r.owner_id.clone(),
            last_seq: r.last_seq,
            created_at: r.created_at,
            unread: r.unread,
            topic: r.topic.clone(),
            metadata: metadata_of(&r.metadata_json),
            deleted: r.deleted,
        }
    }
}

/// A member's role in a room. What each role may do is one table
/// (chat-service's `permissions.rs`; docs/protocol.md shows it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    Owner,
    Admin,
    Member,
}

impl Role {
    /// Every role, highest first.
    pub const ALL: &'static [Role] = &[Role::Owner, Role::Admin, Role::Member];

    /// The protocol's (and the database's) name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Owner => "owner",
            Role::Admin => "admin",
            Role::Member => "member",
        }
    }

    pub fn parse(name: &str) -> Option<Self> {
        Role::ALL.iter().copied().find(|r| r.as_str() == name)
    }

    /// The gRPC contract's value.
    pub fn to_proto(self) -> chat::Role {
        match self {
            Role::Owner => chat::Role::Owner,
            Role::Admin => chat::Role::Admin,
            Role::Member => chat::Role::Member,
        }
    }

    /// From the gRPC contract's value (`None` when unspecified).
    pub fn from_proto(value: i32) -> Option<Self> {
        match chat::Role::try_from(value).ok()? {
            chat::Role::Owner => Some(Role::Owner),
            chat::Role::Admin => Some(Role::Admin),
            chat::Role::Member => Some(Role::Member),
            chat::Role::Unspecified => None,
        }
    }
}

/// A member as `room.members` lists them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct Member {
    pub user: UserRef,
    pub role: Role,
    pub joined_at: i64,
    /// `online`, `away`, `busy` or `offline`.
    #[schemars(with = "PresenceStatus")]
    pub status: String,
    /// While muted: until when (absent when muted until unmuted, see `muted`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub muted_until: Option<i64>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub muted: bool,
}

impl From<&chat::Member> for Member {
    fn from(m: &chat::Member) -> Self {
        let user = m.user.clone().unwrap_or_default();
        Self {
            user: UserRef::new(user.id, user.name),
            role: Role::from_proto(m.role).unwrap_or(Role::Member),
            joined_at: m.joined_at,
            status: m.status.clone(),
            muted_until: m.muted_until.filter(|t| *t != i64::MAX),
            muted: m.muted_until.is_some(),
        }
    }
}

/// A public room as `room.directory` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct DirectoryRoom {
    pub id: String,
    pub name: String,
    pub topic: String,
    pub member_count: i64,
}

impl From<&chat::Room> for DirectoryRoom {
    fn from(r: &chat::Room) -> Self {
        Self {
            id: r.id.clone(),
            name: r.name.clone(),
            topic: r.topic.clone(),
            member_count: r.member_count,
        }
    }
}

/// What kind of notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum NotificationKind {
    /// `@id` or `@name` of yours in a message.
    Mention,
    /// A call to you rang out.
    MissedCall,
    /// A kind a backend chose (`[a-z0-9_]+`).
    #[serde(untagged)]
    Other(String),
}

impl NotificationKind {
    pub fn as_str(&self) -> &str {
        match self {
            NotificationKind::Mention => "mention",
            NotificationKind::MissedCall => "missed_call",
            NotificationKind::Other(kind) => kind,
        }
    }
}

/// A stored notification: `{id, kind, room?, created_at, read, …}` plus the
/// kind's own fields (a mention's `message_id`, `from`, `text`; a missed
/// call's `call_id`, `from`; a backend's `data` fields).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct Notification {
    pub id: String,
    pub kind: NotificationKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    pub created_at: i64,
    /// Set when listed or announced; not stored in the body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub read: Option<bool>,
    /// The kind's own fields.
    #[serde(flatten)]
    pub details: Map<String, Value>,
}

impl Notification {
    /// A new notification's body (without `read`), as it is stored.
    pub fn new(
        id: impl Into<String>,
        kind: NotificationKind,
        room: Option<String>,
        created_at: i64,
        details: Map<String, Value>,
    ) -> Self {
        Self {
            id: id.into(),
            kind,
            room: room.filter(|r| !r.is_empty()),
            created_at,
            read: None,
            details,
        }
    }

    /// The stored body.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }
}

impl From<&chat::Notification> for Notification {
    /// The stored body plus `read`.
    fn from(n: &chat::Notification) -> Self {
        let mut notification: Notification =
            serde_json::from_str(&n.json).unwrap_or_else(|_| Notification {
                id: n.id.clone(),
                kind: NotificationKind::Other(n.kind.clone()),
                room: Some(n.room_id.clone()).filter(|r| !r.is_empty()),
                created_at: n.created_at,
                read: None,
                details: Map::new(),
            });
        notification.read = Some(n.read);
        notification
    }
}

/// A presence status as others see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PresenceStatus {
    Online,
    Away,
    Busy,
    /// Set by its user; everyone else sees `offline`.
    Invisible,
    Offline,
}

impl PresenceStatus {
    /// The statuses `presence.set` accepts.
    pub const SETTABLE: &'static [&'static str] = &["online", "away", "busy", "invisible"];
}

/// A user's presence: `{user, status, text, last_seen}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct PresenceState {
    /// The user's id.
    pub user: String,
    #[schemars(with = "PresenceStatus")]
    pub status: String,
    pub text: String,
    /// When the user was last online (ms since the epoch); 0 while online.
    pub last_seen: i64,
}

/// An assistant reply in progress, as `room.join` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub struct StreamInProgress {
    pub stream_id: String,
    pub text_so_far: String,
    /// The index of the next delta.
    pub index: u64,
}

/// An error: `{code, message, temporary, reason?, retry_after_ms?, trace_id?}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct ErrorObject {
    #[schemars(with = "ErrorCodeName")]
    #[serde(with = "error_code")]
    pub code: ErrorCode,
    pub message: String,
    /// Whether the same command may succeed later.
    pub temporary: bool,
    /// A machine-readable refinement of `code`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the same command fits again (`rate_limited`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    /// The server-side trace (when tracing is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trace_id: Option<String>,
}

impl ErrorObject {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            temporary: code.temporary(),
            reason: None,
            retry_after_ms: None,
            trace_id: None,
        }
    }
}

/// The protocol's error codes, for the schema: every [`ErrorCode`] and
/// `cancelled` (only in `ai.error`).
struct ErrorCodeName;

impl JsonSchema for ErrorCodeName {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "ErrorCode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        let mut names: Vec<&str> = ErrorCode::ALL.iter().map(|c| c.as_str()).collect();
        names.push("cancelled");
        schemars::json_schema!({"type": "string", "enum": names})
    }
}

/// An [`ErrorCode`] as its protocol name.
mod error_code {
    use common::ErrorCode;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(code: &ErrorCode, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(code.as_str())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<ErrorCode, D::Error> {
        let name = String::deserialize(d)?;
        ErrorCode::from_name(&name)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown error code `{name}`")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_have_their_protocol_names_in_the_schema() {
        let schema = schemars::schema_for!(ErrorCodeName);
        let names = schema.as_value()["enum"].clone();
        for code in ErrorCode::ALL {
            assert!(
                names
                    .as_array()
                    .expect("enum")
                    .contains(&Value::from(code.as_str())),
                "{code}"
            );
        }
    }

    #[test]
    fn a_notification_keeps_its_kinds_fields() {
        let json = r#"{"id":"n_1","kind":"mention","room":"r_1","message_id":"m_1","from":{"id":"u","name":"U"},"text":"hi","created_at":5}"#;
        let stored = chat::Notification {
            id: "n_1".into(),
            json: json.into(),
            read: true,
            ..Default::default()
        };
        let n = Notification::from(&stored);
        assert_eq!(n.kind, NotificationKind::Mention);
        let value = serde_json::to_value(&n).expect("json");
        assert_eq!(value["message_id"], "m_1");
        assert_eq!(value["read"], true);
        let custom: Notification =
            serde_json::from_str(r#"{"id":"n","kind":"build_failed","created_at":1,"x":2}"#)
                .expect("json");
        assert_eq!(custom.kind.as_str(), "build_failed");
    }
}
