//! Parley's WebSocket client protocol (`parley.v1`) as Rust types: every
//! command a client sends ([`ClientCommand`]), every frame the server sends
//! ([`ServerFrame`]), the objects inside them, and the close codes
//! ([`CloseCode`]). The edge decodes commands with these types and every
//! producer of client-visible JSON (chat, ai and presence services, the edge)
//! encodes with them, so a message looks the same wherever it appears.
//!
//! [`schema`] turns the types into a JSON Schema and an AsyncAPI 3.0
//! document; both are checked in under `docs/` and a test fails when they
//! are stale.

pub mod close;
mod commands;
mod frames;
mod objects;
pub mod schema;

pub use close::CloseCode;
pub use commands::{
    AiAsk, AiCancel, AttachmentUrl, Auth, CallAct, CallInvite, ClientCommand, CommandKind,
    DecodeError, ID_MAX, JOIN_ROOMS_MAX, JoinTarget, MAX_ATTACHMENTS, MessageDelete, MessageEdit,
    MessageHistory, MessageReport, MessageSend, NoArgs, NotificationIds, NotificationList,
    PresenceSet, PresenceUsers, RateFamily, ReactionArgs, ReceiptArgs, Refresh, RoomCreate,
    RoomDirectory, RoomJoin, RoomLeave, RoomListArgs, RoomMembers, RoomRef, RoomSanction,
    RoomSetRole, RoomUpdate, RoomUser, SignIn, Spec, Typing, UserArg, page_size,
};
pub use frames::*;
pub use objects::*;
