//! Presence, typing and call-signalling commands, and what a connection
//! follows because of them: the `presence` channels of users it subscribed
//! to or shares a small joined room with, and its typing indicators.
//!
//! Status and calls are one presence-service call each. Typing never leaves
//! the edge: it is published straight on the room's channel to the room's
//! other members, stops by itself after `edge.typing_timeout_ms` without a
//! renewal, and stops when the connection closes.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::ErrorCode;
use common::bus::{Bus, envelope, presence_channel, room_channel};
use proto::presence::v1::{
    ActOnCallRequest, GetPresenceRequest, InviteCallRequest, SetStatusRequest,
};
use serde_json::{Map, Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;

use crate::commands::{ID_MAX, Outcome, actor, optional_string, reply, string};
use crate::conn::Conn;
use crate::frames::{Command, CommandError};
use crate::hub::RosterChange;

/// The commands this module serves.
pub(crate) const COMMANDS: &[&str] = &[
    "presence.set",
    "presence.subscribe",
    "presence.unsubscribe",
    "typing.start",
    "typing.stop",
    "call.invite",
    "call.answer",
    "call.reject",
    "call.end",
    "call.ice",
];

/// Statuses a user may set (presence-service checks them too).
const STATUSES: &[&str] = &["online", "away", "busy", "invisible"];
/// Longest status text, in characters.
const MAX_STATUS_TEXT_CHARS: usize = 100;
/// Largest call payload, in bytes of JSON.
const MAX_CALL_PAYLOAD_BYTES: usize = 16 * 1024;
/// Most users one GetPresence call may name (presence-service's limit).
const PRESENCE_BATCH: usize = 1_000;

/// Why a connection follows one user's presence.
#[derive(Default)]
struct Reasons {
    /// `presence.subscribe` named them.
    subscribed: bool,
    /// Joined rooms (small enough for room-wide presence) they are in.
    rooms: HashSet<String>,
}

impl Reasons {
    fn is_empty(&self) -> bool {
        !self.subscribed && self.rooms.is_empty()
    }
}

/// A connection's presence state; dropped with the connection.
#[derive(Default)]
pub(crate) struct ConnPresence {
    /// user id → why this connection receives their `presence` events.
    follows: HashMap<String, Reasons>,
    /// The typing task, started by the first `typing.start`.
    typing: Option<mpsc::UnboundedSender<Typing>>,
    /// Joined rooms with room-wide presence on: members who join later are
    /// followed too, members who leave no longer.
    rooms: HashSet<String>,
    /// Where the hub reports joins and leaves in joined rooms; created by
    /// the first `room.join`, so an idle connection holds no channel.
    roster: Option<(
        mpsc::UnboundedSender<RosterChange>,
        mpsc::UnboundedReceiver<RosterChange>,
    )>,
}

impl ConnPresence {
    /// The sender the hub reports a joined room's membership changes to.
    pub(crate) fn roster_sender(&mut self) -> mpsc::UnboundedSender<RosterChange> {
        self.roster
            .get_or_insert_with(mpsc::unbounded_channel)
            .0
            .clone()
    }

    /// A membership change already waiting, if any.
    pub(crate) fn waiting_roster_change(&mut self) -> Option<RosterChange> {
        self.roster.as_mut()?.1.try_recv().ok()
    }

    /// The next membership change in a joined room; never, before the first join.
    pub(crate) async fn next_roster_change(&mut self) -> RosterChange {
        match self.roster.as_mut() {
            Some((_, changes)) => match changes.recv().await {
                Some(change) => change,
                // Unreachable while this struct holds a sender.
                None => std::future::pending().await,
            },
            None => std::future::pending().await,
        }
    }

    fn subscribed(&self) -> usize {
        self.follows.values().filter(|r| r.subscribed).count()
    }
}

fn presence_error(status: tonic::Status) -> CommandError {
    CommandError::from_status("presence", &status)
}

/// Subscribes the connection to a user's presence channel (once).
async fn follow(conn: &mut Conn, user: &str) -> Result<(), CommandError> {
    if conn.presence.follows.contains_key(user) {
        return Ok(());
    }
    let me = actor(conn)?.user_id;
    conn.shared
        .hub
        .join(
            &presence_channel(user),
            conn.key,
            &me,
            conn.outbox.clone(),
            false,
        )
        .await
        .map_err(|e| {
            CommandError::new(
                ErrorCode::Unavailable,
                format!("event bus unavailable: {e}"),
            )
        })?;
    conn.presence
        .follows
        .insert(user.to_string(), Reasons::default());
    Ok(())
}

/// Unsubscribes from the users no reason is left for.
async fn prune(conn: &mut Conn) {
    let done: Vec<String> = conn
        .presence
        .follows
        .iter()
        .filter(|(_, reasons)| reasons.is_empty())
        .map(|(user, _)| user.clone())
        .collect();
    for user in done {
        conn.presence.follows.remove(&user);
        conn.shared
            .hub
            .leave(&presence_channel(&user), conn.key)
            .await;
    }
}

/// After a `room.join`: the connection follows the presence of the room's
/// members when the room is small enough (`edge.room_presence_max_members`).
pub(crate) async fn follow_room(conn: &mut Conn, room: &str, members: &[String]) {
    let max = conn.shared.config.room_presence_max_members;
    if members.is_empty() || members.len() > max {
        return;
    }
    let Some(me) = conn.identity.as_ref().map(|i| i.user_id.clone()) else {
        return;
    };
    conn.presence.rooms.insert(room.to_string());
    for member in members.iter().filter(|m| **m != me) {
        if let Err(e) = follow(conn, member).await {
            tracing::warn!(conn_id = %conn.id, room, error = %e.message, "cannot follow a member's presence");
            continue;
        }
        if let Some(reasons) = conn.presence.follows.get_mut(member) {
            reasons.rooms.insert(room.to_string());
        }
    }
}

/// A user joined or left a room this connection follows room-wide: follow
/// the newcomer (unless the room has outgrown
/// `edge.room_presence_max_members`, which ends room-wide presence for it),
/// or stop following who left.
pub(crate) async fn roster_changed(conn: &mut Conn, change: RosterChange) {
    let RosterChange { room, user, joined } = change;
    if !conn.presence.rooms.contains(&room) {
        return;
    }
    if !joined {
        if let Some(reasons) = conn.presence.follows.get_mut(&user) {
            reasons.rooms.remove(&room);
        }
        prune(conn).await;
        return;
    }
    let known = |reasons: &Reasons| reasons.rooms.contains(&room);
    if conn.presence.follows.get(&user).is_some_and(known) {
        return;
    }
    // Me, the members followed for this room, and the newcomer.
    let members = 2 + conn.presence.follows.values().filter(|r| known(r)).count();
    if members > conn.shared.config.room_presence_max_members {
        unfollow_room(conn, &room).await;
        return;
    }
    if let Err(e) = follow(conn, &user).await {
        tracing::warn!(conn_id = %conn.id, room, error = %e.message, "cannot follow a member's presence");
        return;
    }
    if let Some(reasons) = conn.presence.follows.get_mut(&user) {
        reasons.rooms.insert(room);
    }
}

/// After a `room.leave`: stops following members only that room explained.
pub(crate) async fn unfollow_room(conn: &mut Conn, room: &str) {
    conn.presence.rooms.remove(room);
    for reasons in conn.presence.follows.values_mut() {
        reasons.rooms.remove(room);
    }
    prune(conn).await;
}

/// On close: leaves every presence channel and stops typing.
pub(crate) async fn close(conn: &mut Conn) {
    conn.presence.typing = None;
    conn.presence.rooms.clear();
    for reasons in conn.presence.follows.values_mut() {
        *reasons = Reasons::default();
    }
    prune(conn).await;
}

pub(crate) async fn presence_set(
    conn: &mut Conn,
    command: &Command,
) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let status = string(body, "status", 32)?;
    if !STATUSES.contains(&status.as_str()) {
        return Err(CommandError::bad_request(format!(
            "`status` must be one of {}",
            STATUSES.join(", ")
        )));
    }
    let text = match body.get("text") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(text)) if text.chars().count() > MAX_STATUS_TEXT_CHARS => {
            return Err(CommandError::new(
                ErrorCode::TooLarge,
                format!("`text` is longer than {MAX_STATUS_TEXT_CHARS} characters"),
            ));
        }
        Some(Value::String(text)) => text.clone(),
        Some(_) => return Err(CommandError::bad_request("`text` must be a string")),
    };
    let request = actor(conn)?.request(SetStatusRequest { status, text });
    conn.shared
        .backends
        .presence
        .clone()
        .set_status(request)
        .await
        .map_err(presence_error)?;
    Ok(Outcome::Reply(Map::new()))
}

/// The `users` field: distinct user ids.
fn users(body: &Map<String, Value>) -> Result<Vec<String>, CommandError> {
    let Some(Value::Array(items)) = body.get("users") else {
        return Err(CommandError::bad_request(
            "`users` must be an array of user ids",
        ));
    };
    let mut seen = HashSet::new();
    let mut users = Vec::new();
    for item in items {
        match item {
            Value::String(user) if !user.is_empty() && user.len() <= ID_MAX => {
                if seen.insert(user.as_str()) {
                    users.push(user.clone());
                }
            }
            _ => {
                return Err(CommandError::bad_request(
                    "`users` must be an array of user ids",
                ));
            }
        }
    }
    Ok(users)
}

pub(crate) async fn presence_subscribe(
    conn: &mut Conn,
    command: &Command,
) -> Result<Outcome, CommandError> {
    let users = users(&command.body)?;
    let max = conn.shared.config.presence_subscribe_max;
    let new = users
        .iter()
        .filter(|u| !conn.presence.follows.get(*u).is_some_and(|r| r.subscribed))
        .count();
    if conn.presence.subscribed() + new > max {
        return Err(CommandError::new(
            ErrorCode::TooLarge,
            format!("a connection may follow at most {max} users"),
        ));
    }
    // Subscribe first, then read: a change in between is not missed.
    for user in &users {
        follow(conn, user).await?;
        if let Some(reasons) = conn.presence.follows.get_mut(user) {
            reasons.subscribed = true;
        }
    }
    let mut presence = Vec::with_capacity(users.len());
    for batch in users.chunks(PRESENCE_BATCH) {
        let request = GetPresenceRequest {
            user_ids: batch.to_vec(),
        };
        let response = conn
            .shared
            .backends
            .presence
            .clone()
            .get_presence(request)
            .await
            .map_err(presence_error)?;
        presence.extend(response.into_inner().presence.into_iter().map(|p| {
            json!({
                "user": p.user_id,
                "status": p.status,
                "text": p.text,
                "last_seen": p.last_seen,
            })
        }));
    }
    Ok(reply(json!({ "presence": presence })))
}

pub(crate) async fn presence_unsubscribe(
    conn: &mut Conn,
    command: &Command,
) -> Result<Outcome, CommandError> {
    for user in users(&command.body)? {
        if let Some(reasons) = conn.presence.follows.get_mut(&user) {
            reasons.subscribed = false;
        }
    }
    prune(conn).await;
    Ok(Outcome::Reply(Map::new()))
}

/// What the typing task is told.
enum Typing {
    Start(String),
    Stop(String),
}

pub(crate) async fn typing(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let room = string(&command.body, "room", ID_MAX)?;
    if !conn.rooms.contains(&room) {
        return Err(CommandError::new(
            ErrorCode::Forbidden,
            "join the room on this connection first",
        ));
    }
    let user = actor(conn)?.user_id;
    let typing = conn.presence.typing.get_or_insert_with(|| {
        let timeout = Duration::from_millis(conn.shared.config.typing_timeout_ms);
        start_typing(conn.shared.bus.clone(), user, timeout)
    });
    let order = if command.kind == "typing.start" {
        Typing::Start(room)
    } else {
        Typing::Stop(room)
    };
    let _ = typing.send(order);
    Ok(Outcome::Reply(Map::new()))
}

/// Publishes `typing` for one user's connection: `typing:true` once per
/// start, `typing:false` on stop, after `timeout` without a renewal, and for
/// every room still typing when the connection (the sender) goes away.
fn start_typing(
    bus: Arc<dyn Bus>,
    user: String,
    timeout: Duration,
) -> mpsc::UnboundedSender<Typing> {
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::spawn(run_typing(bus, user, timeout, rx));
    tx
}

async fn run_typing(
    bus: Arc<dyn Bus>,
    user: String,
    timeout: Duration,
    mut orders: mpsc::UnboundedReceiver<Typing>,
) {
    let publish = |room: String, typing: bool| {
        let (bus, user) = (bus.clone(), user.clone());
        async move {
            let event = json!({"type": "typing", "room": room, "user": user, "typing": typing});
            let mut envelope = envelope(&room, 0, "typing", event.to_string());
            envelope.except_user = user;
            if let Err(error) = bus.publish(&room_channel(&room), &envelope).await {
                tracing::debug!(room, %error, "cannot publish typing");
            }
        }
    };
    // room → when its indicator stops unless renewed.
    let mut active: HashMap<String, Instant> = HashMap::new();
    loop {
        let next = active.values().min().copied();
        tokio::select! {
            order = orders.recv() => match order {
                Some(Typing::Start(room)) => {
                    if active.insert(room.clone(), Instant::now() + timeout).is_none() {
                        publish(room, true).await;
                    }
                }
                Some(Typing::Stop(room)) => {
                    if active.remove(&room).is_some() {
                        publish(room, false).await;
                    }
                }
                None => break,
            },
            () = tokio::time::sleep_until(next.unwrap_or_else(Instant::now)), if next.is_some() => {
                let now = Instant::now();
                let expired: Vec<String> = active
                    .iter()
                    .filter(|(_, until)| **until <= now)
                    .map(|(room, _)| room.clone())
                    .collect();
                for room in expired {
                    active.remove(&room);
                    publish(room, false).await;
                }
            }
        }
    }
    for room in active.into_keys() {
        publish(room, false).await;
    }
}

/// The `payload` field: any JSON up to [`MAX_CALL_PAYLOAD_BYTES`], as JSON
/// text; empty when absent.
fn payload(body: &Map<String, Value>) -> Result<String, CommandError> {
    match body.get("payload") {
        None | Some(Value::Null) => Ok(String::new()),
        Some(value) => {
            let json = value.to_string();
            if json.len() > MAX_CALL_PAYLOAD_BYTES {
                return Err(CommandError::new(
                    ErrorCode::TooLarge,
                    format!("`payload` is larger than {MAX_CALL_PAYLOAD_BYTES} bytes"),
                ));
            }
            Ok(json)
        }
    }
}

pub(crate) async fn call_invite(
    conn: &mut Conn,
    command: &Command,
) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let request = actor(conn)?.request(InviteCallRequest {
        to: string(body, "to", ID_MAX)?,
        room_id: optional_string(body, "room", ID_MAX)?.unwrap_or_default(),
        payload_json: payload(body)?,
    });
    let call_id = conn
        .shared
        .backends
        .presence
        .clone()
        .invite_call(request)
        .await
        .map_err(presence_error)?
        .into_inner()
        .call_id;
    Ok(reply(json!({ "call_id": call_id })))
}

pub(crate) async fn call_act(conn: &mut Conn, command: &Command) -> Result<Outcome, CommandError> {
    let body = &command.body;
    let action = command.kind.trim_start_matches("call.").to_string();
    let request = actor(conn)?.request(ActOnCallRequest {
        action,
        call_id: string(body, "call_id", ID_MAX)?,
        payload_json: payload(body)?,
    });
    conn.shared
        .backends
        .presence
        .clone()
        .act_on_call(request)
        .await
        .map_err(presence_error)?;
    Ok(Outcome::Reply(Map::new()))
}

#[cfg(test)]
mod tests {
    //! The typing task on paused time.

    use common::bus::{BusEvent, MemoryBus};

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(6);

    /// `typing` values published on `room`'s channel so far.
    fn published(events: &mut mpsc::UnboundedReceiver<BusEvent>) -> Vec<bool> {
        let mut out = Vec::new();
        while let Ok(BusEvent::Message { envelope, .. }) = events.try_recv() {
            assert_eq!(envelope.except_user, "alice", "not to the typist");
            let event: Value = serde_json::from_str(&envelope.json).expect("json");
            assert_eq!(
                (event["room"].as_str(), event["user"].as_str()),
                (Some("r1"), Some("alice"))
            );
            out.push(event["typing"].as_bool().expect("typing"));
        }
        out
    }

    async fn settle() {
        for _ in 0..20 {
            tokio::task::yield_now().await;
        }
    }

    async fn setup() -> (
        mpsc::UnboundedSender<Typing>,
        mpsc::UnboundedReceiver<BusEvent>,
        Box<dyn common::bus::Subscriber>,
    ) {
        let bus = Arc::new(MemoryBus::new());
        let (subscriber, events) = bus.subscriber().await.expect("subscriber");
        subscriber
            .subscribe(&room_channel("r1"))
            .await
            .expect("subscribe");
        (
            start_typing(bus, "alice".into(), TIMEOUT),
            events,
            subscriber,
        )
    }

    #[tokio::test(start_paused = true)]
    async fn typing_stops_by_itself_after_the_timeout_unless_renewed() {
        let (typing, mut events, _subscriber) = setup().await;
        typing.send(Typing::Start("r1".into())).expect("send");
        settle().await;
        assert_eq!(published(&mut events), [true]);
        tokio::time::advance(TIMEOUT - Duration::from_secs(1)).await;
        typing.send(Typing::Start("r1".into())).expect("renew");
        settle().await;
        assert_eq!(
            published(&mut events),
            Vec::<bool>::new(),
            "a renewal publishes nothing"
        );
        tokio::time::advance(TIMEOUT - Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(
            published(&mut events),
            Vec::<bool>::new(),
            "renewed: still typing"
        );
        tokio::time::advance(Duration::from_millis(1)).await;
        settle().await;
        assert_eq!(published(&mut events), [false], "stopped by itself");
    }

    #[tokio::test(start_paused = true)]
    async fn typing_stops_on_stop_and_when_the_connection_goes() {
        let (typing, mut events, _subscriber) = setup().await;
        typing.send(Typing::Start("r1".into())).expect("send");
        typing.send(Typing::Stop("r1".into())).expect("send");
        typing.send(Typing::Stop("r1".into())).expect("send");
        settle().await;
        assert_eq!(published(&mut events), [true, false], "one stop");
        typing.send(Typing::Start("r1".into())).expect("send");
        settle().await;
        drop(typing);
        settle().await;
        assert_eq!(published(&mut events), [true, false], "closing stops it");
    }
}
