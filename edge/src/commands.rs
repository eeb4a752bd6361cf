//! Each command type turned into exactly one gRPC call (or none, for `ping`),
//! with field validation up front so bad input never reaches a service.

use common::ErrorCode;
use common::grpc::Actor;
use proto::ai::v1::AskRequest;
use proto::auth::v1::{DevLoginRequest, Identity, SignInAnonymousRequest, SignInResponse};
use proto::chat::v1::{
    CreateRoomRequest, DeleteMessageRequest, EditMessageRequest, GetHistoryRequest,
    InviteMemberRequest, JoinRoomRequest, LeaveRoomRequest, ListNotificationsRequest,
    ListRoomsRequest, MarkReceiptRequest, ReactionRequest, ReadNotificationsRequest, ReceiptKind,
    RemoveMemberRequest, SendMessageRequest,
};
use serde_json::{Map, Value, json};

use crate::conn::{self, Conn};
use crate::frames::{self, Command, CommandError};
use crate::presence_commands;

/// What a successful command produced.
pub(crate) enum Outcome {
    /// Fields of the reply (sent when the command carried an `id`).
    Reply(Map<String, Value>),
    /// The handler already queued its reply (ordering with live events).
    Sent,
}

pub(crate) async fn dispatch(conn: &mut Conn, command: Command) -> Result<Outcome, CommandError> {
    let kind = command.kind.as_str();
    match kind {
        "ping" => Ok(reply(json!({"server_time": common::ids::now_ms()}))),
        "auth" => auth(conn, &command).await,
        _ if conn.identity.is_none() => {
            if is_known(kind) {
                Err(CommandError::new(
                    ErrorCode::Unauthorized,
                    "authenticate first (send `auth`)",
                ))
            } else {
                Err(unknown(kind))
            }
        }
        _ if kind.starts_with("ai.") && !conn.shared.ai_enabled() => Err(CommandError::new(
            ErrorCode::Disabled,
            "the assistant is switched off on this server",
        )),
        "refresh" => crate::token_life::refresh(conn, &command).await,
        "room.create" => room_create(conn, &command).await,
        "room.join" => room_join(conn, &command).await,
        "room.leave" => room_leave(conn, &command).await,
        "room.list" => room_list(conn).await,
        "message.send" => message_send(conn, &command).await,
        "message.history" => message_history(conn, &command).await,
        "ai.ask" => ai_ask(conn, &command).await,
        "ai.cancel" => crate::ai_commands::cancel(conn, &command).await,
        "room.invite" => room_invite(conn, &command).await,
        "room.remove_member" => room_remove_member(conn, &command).await,
        "message.edit" => message_edit(conn, &command).await,
        "message.delete" => message_delete(conn, &command).await,
        "reaction.add" | "reaction.remove" => reaction(conn, &command).await,
        "receipt.read" | "receipt.delivered" => receipt(conn, &command).await,
        "notification.list" => notification_list(conn, &command).await,
        "notification.read" => notification_read(conn, &command).await,
        "presence.set" => presence_commands::presence_set(conn, &command).await,
        "presence.subscribe" => presence_commands::presence_subscribe(conn, &command).await,
        "presence.unsubscribe" => presence_commands::presence_unsubscribe(conn, &command).await,
        "typing.start" | "typing.stop" => presence_commands::typing(conn, &command).await,
        "call.invite" => presence_commands::call_invite(conn, &command).await,
        "call.answer" | "call.reject" | "call.end" | "call.ice" => {
            presence_commands::call_act(conn, &command).await
        }
        _ => Err(unknown(kind)),
    }
}

fn is_known(kind: &str) -> bool {
    matches!(
        kind,
        "refresh"
            | "room.create"
            | "room.join"
            | "room.leave"
            | "room.list"
            | "message.send"
            | "message.history"
            | "ai.ask"
            | "ai.cancel"
            | "room.invite"
            | "room.remove_member"
            | "message.edit"
            | "message.delete"
            | "reaction.add"
            | "reaction.remove"
            | "receipt.read"
            | "receipt.delivered"
            | "notification.list"
            | "notification.read"
    ) || presence_commands::COMMANDS.contains(&kind)
}

fn unknown(kind: &str) -> CommandError {
    CommandError::bad_request(format!("unknown command type `{kind}`"))
}

pub(crate) fn reply(value: Value) -> Outcome {
    match value {
        Value::Object(map) => Outcome::Reply(map),
        _ => Outcome::Reply(Map::new()),
    }
}

pub(crate) fn actor(conn: &Conn) -> Result<Actor, CommandError> {
    let identity = conn.identity.as_ref().ok_or_else(|| {
        CommandError::new(ErrorCode::Unauthorized, "authenticate first (send `auth`)")
    })?;
    Ok(Actor {
        user_id: identity.user_id.clone(),
        name: identity.name.clone(),
        anonymous: identity.anonymous,
    })
}

/// A required string field, 1..=`max` bytes.
pub(crate) fn string(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<String, CommandError> {
    match body.get(field) {
        Some(Value::String(s)) if !s.is_empty() && s.len() <= max => Ok(s.clone()),
        Some(Value::String(s)) if s.len() > max => Err(CommandError::new(
            ErrorCode::TooLarge,
            format!("`{field}` is longer than {max} bytes"),
        )),
        _ => Err(CommandError::bad_request(format!(
            "missing string field `{field}`"
        ))),
    }
}

pub(crate) fn optional_string(
    body: &Map<String, Value>,
    field: &str,
    max: usize,
) -> Result<Option<String>, CommandError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => string(body, field, max).map(Some),
    }
}

fn optional_seq(body: &Map<String, Value>, field: &str) -> Result<Option<i64>, CommandError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(None),
        Some(v) => v
            .as_u64()
            .and_then(|n| i64::try_from(n).ok())
            .map(Some)
            .ok_or_else(|| {
                CommandError::bad_request(format!("`{field}` must be a non-negative integer"))
            }),
    }
}

fn optional_bool(body: &Map<String, Value>, field: &str) -> Result<bool, CommandError> {
    match body.get(field) {
        None | Some(Value::Null) => Ok(false),
        Some(Value::Bool(b)) => Ok(*b),
        Some(_) => Err(CommandError::bad_request(format!(
            "`{field}` must be a boolean"
        ))),
    }
}

pub(crate) const ID_MAX: usize = 128;

async fn auth(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    if conn.identity.is_some() {
        return Err(CommandError::bad_request("already authenticated"));
    }
    let body = &command.body;
    let (identity, token) = if optional_bool(body, "anonymous")? {
        let name = optional_string(body, "name", 256)?.unwrap_or_default();
        let request = SignInAnonymousRequest {
            name,
            client_ip: conn.peer.ip().to_string(),
        };
        signed_in(
            conn.shared
                .backends
                .auth
                .clone()
                .sign_in_anonymous(request)
                .await,
        )?
    } else if let Some(user) = optional_string(body, "dev_user", 256)? {
        let request = DevLoginRequest {
            user,
            client_ip: conn.peer.ip().to_string(),
        };
        signed_in(conn.shared.backends.auth.clone().dev_login(request).await)?
    } else {
        let max = 64 * 1024;
        let token = string(body, "token", max).map_err(|mut e| {
            if e.code == ErrorCode::BadRequest {
                e.message = "send `token`, `anonymous: true` or `dev_user`".into();
            }
            e
        })?;
        (conn::verify(&conn.shared, &token, conn.peer).await?, None)
    };
    let mut fields = json!({
        "user": conn::user_json(&identity),
        "session_id": identity.session_id,
        "expires_at": identity.expires_at,
    });
    if let Some(token) = token {
        fields["token"] = json!(token);
    }
    conn.authenticated(identity).await?;
    if let Some(signed) = &conn.signed {
        fields["frame_secret"] = json!(signed.secret());
    }
    Ok(reply(fields))
}

/// The identity and token of an anonymous or development sign-in.
fn signed_in(
    response: Result<tonic::Response<SignInResponse>, tonic::Status>,
) -> Result<(Identity, Option<String>), CommandError> {
    let response = response
        .map_err(|s| CommandError::from_status("auth", &s))?
        .into_inner();
    let identity = response.identity.ok_or_else(|| {
        CommandError::new(ErrorCode::Internal, "auth service returned no identity")
    })?;
    Ok((identity, Some(response.access_token)))
}

async fn room_create(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let name = optional_string(body, "name", 400)?.unwrap_or_default();
    let visibility = optional_string(body, "visibility", 16)?.unwrap_or_else(|| "public".into());
    let visibility = proto::json::parse_visibility(&visibility).ok_or_else(|| {
        CommandError::bad_request("`visibility` must be public, private or direct")
    })?;
    let members = match body.get("members") {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) if items.len() <= 1000 => items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() && s.len() <= ID_MAX => Ok(s.clone()),
                _ => Err(CommandError::bad_request("`members` must be user ids")),
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(CommandError::bad_request(
                "`members` must be an array of at most 1000 user ids",
            ));
        }
    };
    let request = actor(conn)?.request(CreateRoomRequest {
        name,
        visibility: visibility as i32,
        members,
    });
    let room = conn
        .shared
        .backends
        .chat
        .clone()
        .create_room(request)
        .await
        .map_err(|s| CommandError::from_status("chat", &s))?
        .into_inner()
        .room
        .ok_or_else(|| CommandError::new(ErrorCode::Internal, "chat service returned no room"))?;
    Ok(reply(json!({"room": proto::json::room(&room)})))
}

async fn room_join(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let room = string(body, "room", ID_MAX)?;
    let since = optional_seq(body, "since")?;
    let channel = common::bus::room_channel(&room);
    let actor = actor(conn)?;
    if conn.rooms.remove(&room) {
        conn.shared.hub.leave(&channel, conn.key).await;
    }
    // Subscribe first and hold live events, then read, then release.
    let gate = conn
        .shared
        .hub
        .join(
            &channel,
            conn.key,
            &actor.user_id,
            conn.outbox.clone(),
            true,
        )
        .await
        .map_err(|e| {
            CommandError::new(
                ErrorCode::Unavailable,
                format!("event bus unavailable: {e}"),
            )
        })?;
    if conn.shared.config.room_presence_max_members > 0 {
        // Before the read: a member joining from now on is reported.
        let roster = conn.presence.roster_sender();
        conn.shared.hub.watch_roster(&channel, conn.key, roster);
    }
    let request = actor.request(JoinRoomRequest {
        room_id: room.clone(),
        since,
        limit: 0,
    });
    let response = match conn.shared.backends.chat.clone().join_room(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => {
            conn.shared.hub.leave(&channel, conn.key).await;
            return Err(CommandError::from_status("chat", &status));
        }
    };
    let streams = crate::ai_commands::streams(conn, &room).await;
    let room_id = room.clone();
    conn.rooms.insert(room);
    let events: Vec<Value> = response
        .events
        .iter()
        .filter_map(|e| serde_json::from_str(&e.json).ok())
        .collect();
    let fields = json!({
        "room": response.room.as_ref().map(proto::json::room),
        "last_seq": response.last_seq,
        "events": events,
        "recovered": response.recovered,
        "has_more": response.has_more,
        "streams": streams,
        "online": response.online,
    });
    let members = response.members;
    let reply = command.id.map(|id| match fields {
        Value::Object(map) => frames::reply_ok(id, map),
        _ => frames::reply_ok(id, Map::new()),
    });
    conn.shared
        .hub
        .open_gate(&channel, &gate, &conn.outbox, reply, response.last_seq);
    presence_commands::follow_room(conn, &room_id, &members).await;
    Ok(Outcome::Sent)
}

async fn room_leave(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let room = string(body, "room", ID_MAX)?;
    let forget = optional_bool(body, "forget")?;
    if forget {
        let request = actor(conn)?.request(LeaveRoomRequest {
            room_id: room.clone(),
        });
        conn.shared
            .backends
            .chat
            .clone()
            .leave_room(request)
            .await
            .map_err(|s| CommandError::from_status("chat", &s))?;
    }
    if conn.rooms.remove(&room) {
        conn.shared
            .hub
            .leave(&common::bus::room_channel(&room), conn.key)
            .await;
        presence_commands::unfollow_room(conn, &room).await;
    }
    Ok(Outcome::Reply(Map::new()))
}

async fn room_list(conn: &mut Conn) -> Result<Outcome, CommandError> {
    let request = actor(conn)?.request(ListRoomsRequest {});
    let rooms = conn
        .shared
        .backends
        .chat
        .clone()
        .list_rooms(request)
        .await
        .map_err(|s| CommandError::from_status("chat", &s))?
        .into_inner()
        .rooms;
    let rooms: Vec<Value> = rooms
        .iter()
        .map(|r| {
            json!({
                "id": r.id,
                "name": r.name,
                "visibility": proto::json::visibility_name(r.visibility),
                "last_seq": r.last_seq,
                "unread": r.unread,
            })
        })
        .collect();
    Ok(reply(json!({"rooms": rooms})))
}

async fn message_send(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let room = string(body, "room", ID_MAX)?;
    let text = match body.get("text") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(CommandError::bad_request("missing string field `text`")),
    };
    let client_msg_id = string(body, "client_msg_id", 64)?;
    let thread_id = optional_string(body, "thread", ID_MAX)?;
    let metadata = match body.get("metadata") {
        None | Some(Value::Null) => None,
        Some(Value::Object(m)) => Some(m.clone()),
        Some(_) => {
            return Err(CommandError::bad_request(
                "`metadata` must be a JSON object",
            ));
        }
    };
    let flags = crate::inspect::check(conn, &text)?;
    let metadata_json = match metadata {
        _ if !flags.is_empty() => crate::inspect::flag_metadata(metadata, &flags).to_string(),
        Some(m) => Value::Object(m).to_string(),
        None => String::new(),
    };
    let request = actor(conn)?.request(SendMessageRequest {
        room_id: room,
        text,
        client_msg_id,
        thread_id,
        metadata_json,
    });
    let message = conn
        .shared
        .backends
        .chat
        .clone()
        .send_message(request)
        .await
        .map_err(|s| CommandError::from_status("chat", &s))?
        .into_inner()
        .message
        .ok_or_else(|| {
            CommandError::new(ErrorCode::Internal, "chat service returned no message")
        })?;
    Ok(reply(json!({"message": proto::json::message(&message)})))
}

async fn message_history(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let room = string(body, "room", ID_MAX)?;
    let before = optional_seq(body, "before")?;
    let after = optional_seq(body, "after")?;
    let limit = match optional_seq(body, "limit")? {
        None => 50,
        Some(n @ 1..=100) => n as u32,
        Some(_) => {
            return Err(CommandError::bad_request(
                "`limit` must be between 1 and 100",
            ));
        }
    };
    let thread_id = optional_string(body, "thread", ID_MAX)?;
    let request = actor(conn)?.request(GetHistoryRequest {
        room_id: room,
        before,
        after,
        limit,
        thread_id,
    });
    let response = conn
        .shared
        .backends
        .chat
        .clone()
        .get_history(request)
        .await
        .map_err(|s| CommandError::from_status("chat", &s))?
        .into_inner();
    let messages: Vec<Value> = response.messages.iter().map(proto::json::message).collect();
    Ok(reply(
        json!({"messages": messages, "has_more": response.has_more}),
    ))
}

async fn ai_ask(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let room = string(body, "room", ID_MAX)?;
    let prompt = match body.get("prompt") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(CommandError::bad_request("missing string field `prompt`")),
    };
    let model = optional_string(body, "model", 128)?;
    let client_msg_id = optional_string(body, "client_msg_id", 64)?.unwrap_or_default();
    let thread_id = optional_string(body, "thread", ID_MAX)?;
    let request = actor(conn)?.request(AskRequest {
        room_id: room,
        prompt,
        model,
        client_msg_id,
        thread_id,
    });
    let response = conn
        .shared
        .backends
        .ai
        .clone()
        .ask(request)
        .await
        .map_err(|s| CommandError::from_status("ai", &s))?
        .into_inner();
    Ok(reply(json!({
        "stream_id": response.stream_id,
        "message": response.message.as_ref().map(proto::json::message),
    })))
}

/// Maps a failed chat call to the client's error.
fn chat_error(status: tonic::Status) -> CommandError {
    CommandError::from_status("chat", &status)
}

async fn room_invite(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let request = actor(conn)?.request(InviteMemberRequest {
        room_id: string(body, "room", ID_MAX)?,
        user_id: string(body, "user", ID_MAX)?,
    });
    conn.shared
        .backends
        .chat
        .clone()
        .invite_member(request)
        .await
        .map_err(chat_error)?;
    Ok(Outcome::Reply(Map::new()))
}

async fn room_remove_member(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let request = actor(conn)?.request(RemoveMemberRequest {
        room_id: string(body, "room", ID_MAX)?,
        user_id: string(body, "user", ID_MAX)?,
    });
    conn.shared
        .backends
        .chat
        .clone()
        .remove_member(request)
        .await
        .map_err(chat_error)?;
    Ok(Outcome::Reply(Map::new()))
}

async fn message_edit(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let text = match body.get("text") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(CommandError::bad_request("missing string field `text`")),
    };
    // An edit cannot carry metadata: `flag` mode only logs it.
    crate::inspect::check(conn, &text)?;
    let request = actor(conn)?.request(EditMessageRequest {
        room_id: string(body, "room", ID_MAX)?,
        message_id: string(body, "message_id", ID_MAX)?,
        text,
    });
    let message = conn
        .shared
        .backends
        .chat
        .clone()
        .edit_message(request)
        .await
        .map_err(chat_error)?
        .into_inner()
        .message
        .ok_or_else(|| {
            CommandError::new(ErrorCode::Internal, "chat service returned no message")
        })?;
    Ok(reply(json!({"message": proto::json::message(&message)})))
}

async fn message_delete(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let request = actor(conn)?.request(DeleteMessageRequest {
        room_id: string(body, "room", ID_MAX)?,
        message_id: string(body, "message_id", ID_MAX)?,
    });
    conn.shared
        .backends
        .chat
        .clone()
        .delete_message(request)
        .await
        .map_err(chat_error)?;
    Ok(Outcome::Reply(Map::new()))
}

async fn reaction(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let request = actor(conn)?.request(ReactionRequest {
        room_id: string(body, "room", ID_MAX)?,
        message_id: string(body, "message_id", ID_MAX)?,
        emoji: string(body, "emoji", 64)?,
    });
    let mut chat = conn.shared.backends.chat.clone();
    if command.kind == "reaction.add" {
        chat.add_reaction(request).await.map_err(chat_error)?;
    } else {
        chat.remove_reaction(request).await.map_err(chat_error)?;
    }
    Ok(Outcome::Reply(Map::new()))
}

async fn receipt(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let kind = if command.kind == "receipt.read" {
        ReceiptKind::Read
    } else {
        ReceiptKind::Delivered
    };
    let seq = optional_seq(body, "seq")?
        .ok_or_else(|| CommandError::bad_request("missing integer field `seq`"))?;
    let request = actor(conn)?.request(MarkReceiptRequest {
        room_id: string(body, "room", ID_MAX)?,
        kind: kind as i32,
        seq,
    });
    let mark = conn
        .shared
        .backends
        .chat
        .clone()
        .mark_receipt(request)
        .await
        .map_err(chat_error)?
        .into_inner()
        .seq;
    Ok(reply(json!({"seq": mark})))
}

async fn notification_list(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let request = actor(conn)?.request(ListNotificationsRequest {
        unread_only: optional_bool(&command.body, "unread_only")?,
        limit: 0,
    });
    let notifications = conn
        .shared
        .backends
        .chat
        .clone()
        .list_notifications(request)
        .await
        .map_err(chat_error)?
        .into_inner()
        .notifications;
    let notifications: Vec<Value> = notifications
        .iter()
        .map(proto::json::notification)
        .collect();
    Ok(reply(json!({"notifications": notifications})))
}

async fn notification_read(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let ids = match command.body.get("ids") {
        Some(Value::Array(items)) if items.len() <= 100 => items
            .iter()
            .map(|v| match v {
                Value::String(s) if !s.is_empty() && s.len() <= ID_MAX => Ok(s.clone()),
                _ => Err(CommandError::bad_request("`ids` must be notification ids")),
            })
            .collect::<Result<Vec<_>, _>>()?,
        _ => {
            return Err(CommandError::bad_request(
                "`ids` must be an array of at most 100 ids",
            ));
        }
    };
    let request = actor(conn)?.request(ReadNotificationsRequest { ids });
    conn.shared
        .backends
        .chat
        .clone()
        .read_notifications(request)
        .await
        .map_err(chat_error)?;
    Ok(Outcome::Reply(Map::new()))
}
