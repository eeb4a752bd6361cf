//! Fan-out: one bus subscription per channel per edge (not per connection),
//! each event encoded once and handed to every local member's outbox, in
//! order, with a per-member gate that holds live events while a join's reply
//! is being prepared (subscribe first, then read, then release the buffer).
//!
//! Gap repair: for each room channel the hub knows the highest seq it has
//! handed on with nothing missing before it. An event further ahead waits
//! while the missing ones are read from chat-service's log; after a bus
//! reconnect every room is read from its last seq. The bus may lose events;
//! the edge never does.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::ws::Utf8Bytes;
use common::bus::{Bus, BusError, BusEvent, Subscriber};
use common::grpc::ServiceChannel;
use proto::chat::v1::GetEventsRequest;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use tokio::sync::mpsc;

use crate::outbox::Outbox;
use common::metrics::EdgeMetrics;
use prometheus_client::metrics::counter::Counter;

/// Prefix of room channels (the others carry no seq).
const ROOM_PREFIX: &str = "room:";
/// Room events held per channel while a gap is repaired; later ones are
/// dropped and read from the log instead.
const MAX_AHEAD: usize = 4096;
/// First pause before a failed backfill is retried; doubles up to the max.
const REPAIR_BACKOFF_START: Duration = Duration::from_millis(100);
const REPAIR_BACKOFF_MAX: Duration = Duration::from_secs(5);
/// Backfills in a row that end before the held events: then those are
/// beyond the room's log — no real event is — and are dropped.
const FRUITLESS_REPAIRS_MAX: u32 = 3;

/// Per (connection, channel) delivery state.
#[derive(Default)]
pub struct Gate {
    /// Events held back while the join reply is in flight; `None` once live.
    pending: Option<Vec<(i64, Utf8Bytes)>>,
    /// Highest room seq handed to this connection; older or equal ones are dropped.
    delivered: i64,
}

struct Member {
    outbox: Outbox,
    /// `parley_edge_deliveries_total`.
    deliveries: Counter,
    gate: Arc<Mutex<Gate>>,
    /// Whose connection this is: a `member.left` for that user ends its
    /// delivery of the room.
    user: String,
    /// Set by [`Hub::watch_roster`]: where this connection hears of other
    /// users joining or leaving the room (room-wide presence follows them).
    roster: Option<mpsc::UnboundedSender<RosterChange>>,
}

impl Member {
    /// Queues an event to this member's connection.
    fn send(&self, text: Utf8Bytes) {
        if self.outbox.push(text) {
            self.deliveries.inc();
        }
    }
}

/// A user joined or left a room (its `member.joined` / `member.left` was
/// handed on), told to the room's connections that asked for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RosterChange {
    pub room: String,
    pub user: String,
    pub joined: bool,
}

/// One subscribed channel and its local members.
#[derive(Default)]
struct Channel {
    members: HashMap<u64, Member>,
    /// Room channels: the highest seq handed on with nothing missing before
    /// it; `None` until the first join reply says where the log stands.
    seq: Option<i64>,
    /// Room events that arrived ahead of `seq` (or before it was known).
    ahead: BTreeMap<i64, RoomEvent>,
    /// Whether a backfill from chat-service is running.
    repairing: bool,
    /// Backfills in a row that read the log to its end and still left the
    /// held events ahead of it; the next one waits longer.
    fruitless: u32,
}

type Channels = HashMap<String, Channel>;

/// A page of a room's log read to fill a gap.
struct Backfill {
    channel: String,
    events: Vec<(i64, RoomEvent)>,
    /// The last page: the log has nothing after it (for now).
    done: bool,
    /// The log's last seq as this backfill read it.
    log_end: i64,
}

/// The edge's subscriptions and their local members.
pub struct Hub {
    subscriber: Box<dyn Subscriber>,
    channels: Arc<Mutex<Channels>>,
    repairer: Repairer,
    /// Serialises subscribe/unsubscribe so a second joiner never proceeds
    /// before the first one's subscription is confirmed.
    changes: tokio::sync::Mutex<()>,
    metrics: EdgeMetrics,
}

impl Hub {
    /// Opens the edge's bus subscriber and starts the fan-out task; gaps are
    /// filled from `chat`'s log.
    pub async fn start(
        bus: &dyn Bus,
        chat: ChatBackendServiceClient<ServiceChannel>,
        metrics: EdgeMetrics,
    ) -> Result<Self, BusError> {
        let (subscriber, events) = bus.subscriber().await?;
        let channels: Arc<Mutex<Channels>> = Arc::default();
        let (backfills, filled) = mpsc::unbounded_channel();
        let repairer = Repairer {
            chat,
            backfills,
            dropped: Arc::default(),
            metrics: metrics.clone(),
        };
        tokio::spawn(fan_out(
            events,
            filled,
            channels.clone(),
            repairer.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            subscriber,
            channels,
            repairer,
            changes: tokio::sync::Mutex::new(()),
            metrics,
        })
    }

    /// Held room events dropped because their room's log never reached them.
    pub fn dropped_beyond_log(&self) -> u64 {
        self.repairer
            .dropped
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds a member to `channel` with its gate closed (events are buffered
    /// until [`Hub::open_gate`]); subscribes the edge if it is the first member.
    pub async fn join(
        &self,
        channel: &str,
        conn: u64,
        user: &str,
        outbox: Outbox,
        gated: bool,
    ) -> Result<Arc<Mutex<Gate>>, BusError> {
        let _changes = self.changes.lock().await;
        let gate = Arc::new(Mutex::new(Gate {
            pending: gated.then(Vec::new),
            delivered: 0,
        }));
        let first = {
            let mut channels = lock(&self.channels);
            let entry = channels.entry(channel.to_string()).or_default();
            let first = entry.members.is_empty();
            entry.members.insert(
                conn,
                Member {
                    outbox,
                    deliveries: self.metrics.deliveries.clone(),
                    gate: gate.clone(),
                    user: user.to_string(),
                    roster: None,
                },
            );
            first
        };
        if first && let Err(e) = self.subscriber.subscribe(channel).await {
            let mut channels = lock(&self.channels);
            if let Some(entry) = channels.get_mut(channel) {
                entry.members.remove(&conn);
                if entry.members.is_empty() {
                    channels.remove(channel);
                }
            }
            return Err(e);
        }
        if first && channel.starts_with(ROOM_PREFIX) {
            self.metrics.room_subscriptions.inc();
        }
        Ok(gate)
    }

    /// From now on, tells `conn` (a member of room `channel`) of every other
    /// user joining or leaving the room, in log order. Called right after
    /// [`Hub::join`], before the room is read, so no change falls between
    /// the member list the join read and the ones that follow.
    pub fn watch_roster(
        &self,
        channel: &str,
        conn: u64,
        changes: mpsc::UnboundedSender<RosterChange>,
    ) {
        if let Some(member) = lock(&self.channels)
            .get_mut(channel)
            .and_then(|entry| entry.members.get_mut(&conn))
        {
            member.roster = Some(changes);
        }
    }

    /// Removes a member; unsubscribes the edge when it was the last one.
    pub async fn leave(&self, channel: &str, conn: u64) {
        let _changes = self.changes.lock().await;
        let last = {
            let mut channels = lock(&self.channels);
            match channels.get_mut(channel) {
                Some(entry) => {
                    entry.members.remove(&conn);
                    if entry.members.is_empty() {
                        channels.remove(channel);
                        true
                    } else {
                        false
                    }
                }
                None => false,
            }
        };
        if last && channel.starts_with(ROOM_PREFIX) {
            self.metrics.room_subscriptions.dec();
        }
        if last && let Err(e) = self.subscriber.unsubscribe(channel).await {
            tracing::warn!(channel, error = %e, "unsubscribe failed");
        }
    }

    /// Sends `reply` to the member, then what was buffered meanwhile that is
    /// newer than `delivered` (the log position the reply covered), and
    /// switches the member to live delivery. The first reply for a room
    /// also tells the hub where the room's log stands.
    pub fn open_gate(
        &self,
        channel: &str,
        gate: &Mutex<Gate>,
        outbox: &Outbox,
        reply: Option<Utf8Bytes>,
        delivered: i64,
    ) {
        let mut channels = lock(&self.channels);
        {
            let mut gate = lock(gate);
            if let Some(reply) = reply {
                outbox.push(reply);
            }
            gate.delivered = gate.delivered.max(delivered);
            for (seq, text) in gate.pending.take().unwrap_or_default() {
                if seq == 0 || seq > gate.delivered {
                    gate.delivered = gate.delivered.max(seq);
                    if outbox.push(text) {
                        self.metrics.deliveries.inc();
                    }
                }
            }
        }
        if let Some(entry) = channels.get_mut(channel)
            && entry.seq.is_none()
        {
            entry.seq = Some(delivered);
            advance(entry, channel, &self.repairer);
        }
    }

    /// Rooms with local members, and how many of this edge's connections
    /// joined each.
    pub fn rooms(&self) -> Vec<(String, usize)> {
        lock(&self.channels)
            .iter()
            .filter_map(|(name, c)| {
                let room = name.strip_prefix(ROOM_PREFIX)?;
                (!c.members.is_empty()).then(|| (room.to_string(), c.members.len()))
            })
            .collect()
    }

    /// Number of local members of a channel.
    #[cfg(test)]
    pub fn members(&self, channel: &str) -> usize {
        lock(&self.channels)
            .get(channel)
            .map(|c| c.members.len())
            .unwrap_or(0)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// A room-log event as the hub passes it on.
struct RoomEvent {
    text: Utf8Bytes,
    /// For a `member.joined` (true) or `member.left` (false): who. A user
    /// who left gets nothing more of the room on any connection.
    roster: Option<(bool, String)>,
}

impl RoomEvent {
    /// Reads the JSON only for `member.joined` and `member.left`, the kinds
    /// that change who is in the room.
    fn new(kind: &str, json: String) -> Self {
        let joined = match kind {
            "member.joined" => Some(true),
            "member.left" => Some(false),
            _ => None,
        };
        let roster = joined.and_then(|joined| {
            let event = serde_json::from_str::<serde_json::Value>(&json).ok()?;
            Some((joined, event["user"]["id"].as_str()?.to_string()))
        });
        Self {
            text: Utf8Bytes::from(json),
            roster,
        }
    }
}

/// Hands one room-log event on; for a membership change, tells the members
/// watching the roster and drops the connections of a user who left.
fn deliver_logged(channel: &mut Channel, name: &str, seq: i64, event: &RoomEvent) {
    let Some((joined, user)) = &event.roster else {
        deliver(channel, seq, &event.text);
        return;
    };
    let room = name.strip_prefix(ROOM_PREFIX).unwrap_or(name);
    for member in channel.members.values() {
        // Only a member this event is new to hears of it: a replayed old
        // `member.left` must not undo a later rejoin.
        if deliver_to(member, seq, &event.text)
            && let Some(roster) = &member.roster
            && &member.user != user
        {
            let _ = roster.send(RosterChange {
                room: room.to_string(),
                user: user.clone(),
                joined: *joined,
            });
        }
    }
    if !joined {
        channel.members.retain(|_, member| &member.user != user);
    }
}

/// Hands one event to every member: held while a member's join is in
/// flight, dropped for a member that already has its seq.
fn deliver(channel: &Channel, seq: i64, text: &Utf8Bytes) {
    for member in channel.members.values() {
        deliver_to(member, seq, text);
    }
}

/// Hands one event to one member (or holds it while its join is in
/// flight); false when the member already has it.
fn deliver_to(member: &Member, seq: i64, text: &Utf8Bytes) -> bool {
    let mut gate = lock(&member.gate);
    if let Some(pending) = gate.pending.as_mut() {
        pending.push((seq, text.clone()));
    } else if seq == 0 {
        member.send(text.clone());
    } else if seq > gate.delivered {
        gate.delivered = seq;
        member.send(text.clone());
    } else {
        return false;
    }
    true
}

/// Hands an ephemeral event to every member except `user`'s connections
/// (typing goes to the room's other members).
fn deliver_except(channel: &Channel, text: &Utf8Bytes, user: &str) {
    for member in channel.members.values().filter(|m| m.user != user) {
        let mut gate = lock(&member.gate);
        match gate.pending.as_mut() {
            Some(pending) => pending.push((0, text.clone())),
            None => member.send(text.clone()),
        }
    }
}

/// A room event from the bus or the log: handed on when it is the next one,
/// held when it is ahead (and the gap repaired), dropped when old.
fn room_event(entry: &mut Channel, name: &str, seq: i64, event: RoomEvent, repairer: &Repairer) {
    match entry.seq {
        Some(current) if seq <= current => deliver_logged(entry, name, seq, &event),
        Some(current) if seq == current + 1 => {
            deliver_logged(entry, name, seq, &event);
            entry.seq = Some(seq);
            advance(entry, name, repairer);
        }
        _ => {
            if entry.ahead.len() < MAX_AHEAD {
                entry.ahead.insert(seq, event);
            }
            if entry.seq.is_some() {
                advance(entry, name, repairer);
            }
        }
    }
}

/// After a backfill read the log to its end: held events still ahead of it
/// are counted as a fruitless repair (the next waits longer), and after
/// [`FRUITLESS_REPAIRS_MAX`] in a row they are dropped as events no log
/// has — a forged or corrupt envelope must not keep the edge reading.
fn beyond_the_log(entry: &mut Channel, name: &str, log_end: i64, repairer: &Repairer) {
    let held_beyond = entry.ahead.range(log_end + 1..).count();
    if held_beyond == 0 {
        entry.fruitless = 0;
        return;
    }
    entry.fruitless += 1;
    if entry.fruitless >= FRUITLESS_REPAIRS_MAX {
        entry.ahead.retain(|seq, _| *seq <= log_end);
        entry.fruitless = 0;
        repairer
            .dropped
            .fetch_add(held_beyond as u64, std::sync::atomic::Ordering::Relaxed);
        repairer
            .metrics
            .events_dropped_beyond_log
            .inc_by(held_beyond as u64);
        tracing::warn!(
            channel = name,
            log_end,
            dropped = held_beyond,
            "dropped events beyond the room's log"
        );
    }
}

/// Hands on the held events that are now next; starts a backfill when some
/// are still ahead of a gap.
fn advance(entry: &mut Channel, name: &str, repairer: &Repairer) {
    let Some(mut current) = entry.seq else {
        return;
    };
    while let Some(next) = entry.ahead.first_entry() {
        let seq = *next.key();
        if seq > current + 1 {
            break;
        }
        let event = next.remove();
        if seq == current + 1 {
            deliver_logged(entry, name, seq, &event);
            current = seq;
        }
    }
    entry.seq = Some(current);
    if !entry.ahead.is_empty() && !entry.repairing {
        entry.repairing = true;
        let wait = match entry.fruitless {
            0 => Duration::ZERO,
            n => (REPAIR_BACKOFF_START * 2u32.pow(n - 1)).min(REPAIR_BACKOFF_MAX),
        };
        repairer.start(name, current, wait);
    }
}

async fn fan_out(
    mut events: mpsc::UnboundedReceiver<BusEvent>,
    mut filled: mpsc::UnboundedReceiver<Backfill>,
    channels: Arc<Mutex<Channels>>,
    repairer: Repairer,
    metrics: EdgeMetrics,
) {
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Some(BusEvent::Message { channel, envelope }) => {
                    if let Some(lag) = common::bus::lag_seconds(&envelope) {
                        metrics.bus_lag.observe(lag);
                    }
                    let seq = envelope.seq;
                    let mut channels = lock(&channels);
                    if seq > 0 && channel.starts_with(ROOM_PREFIX) {
                        if let Some(entry) = channels.get_mut(&channel) {
                            let event = RoomEvent::new(&envelope.kind, envelope.json);
                            room_event(entry, &channel, seq, event, &repairer);
                        }
                        continue;
                    }
                    // Encoded once per edge; every recipient shares the bytes.
                    let text = Utf8Bytes::from(envelope.json);
                    match channel.strip_prefix("user:") {
                        // A room event sent to a user's own channel (e.g.
                        // their read receipt) reaches the devices that joined
                        // the room through the room channel already.
                        Some(_) if !envelope.room_id.is_empty() => {
                            let Some(entry) = channels.get(&channel) else {
                                continue;
                            };
                            let room = channels.get(&common::bus::room_channel(&envelope.room_id));
                            for (key, member) in &entry.members {
                                if !room.is_some_and(|room| room.members.contains_key(key)) {
                                    member.send(text.clone());
                                }
                            }
                        }
                        _ => {
                            if let Some(entry) = channels.get(&channel) {
                                if envelope.except_user.is_empty() {
                                    deliver(entry, seq, &text);
                                } else {
                                    deliver_except(entry, &text, &envelope.except_user);
                                }
                            }
                        }
                    }
                }
                Some(BusEvent::Resubscribed) => {
                    metrics.bus_reconnects.inc();
                    // Anything published while the bus was away is in the log.
                    let mut channels = lock(&channels);
                    let mut repairs = 0;
                    for (name, entry) in channels.iter_mut() {
                        if let Some(seq) = entry.seq
                            && !entry.repairing
                        {
                            entry.repairing = true;
                            repairer.start(name, seq, Duration::ZERO);
                            repairs += 1;
                        }
                    }
                    tracing::warn!(rooms = repairs, "bus resubscribed; reading what it missed from the log");
                }
                None => return,
            },
            Some(backfill) = filled.recv() => {
                let mut channels = lock(&channels);
                let Some(entry) = channels.get_mut(&backfill.channel) else {
                    continue;
                };
                for (seq, event) in backfill.events {
                    room_event(entry, &backfill.channel, seq, event, &repairer);
                }
                if backfill.done {
                    entry.repairing = false;
                    beyond_the_log(entry, &backfill.channel, backfill.log_end, &repairer);
                    advance(entry, &backfill.channel, &repairer);
                }
            }
        }
    }
}

/// Reads rooms' logs from chat-service for the fan-out task.
#[derive(Clone)]
struct Repairer {
    chat: ChatBackendServiceClient<ServiceChannel>,
    backfills: mpsc::UnboundedSender<Backfill>,
    /// Held events dropped as beyond their room's log.
    dropped: Arc<std::sync::atomic::AtomicU64>,
    metrics: EdgeMetrics,
}

impl Repairer {
    /// After `wait`, reads `channel`'s room log after `after`, page by page,
    /// retrying with backoff while chat-service is unreachable.
    fn start(&self, channel: &str, after: i64, wait: Duration) {
        let Some(room_id) = channel.strip_prefix(ROOM_PREFIX) else {
            return;
        };
        self.metrics.gap_repairs.inc();
        let backfilled = self.metrics.events_backfilled.clone();
        let request = GetEventsRequest {
            room_id: room_id.to_string(),
            after,
            limit: 0,
        };
        let (chat, backfills, channel) = (
            self.chat.clone(),
            self.backfills.clone(),
            channel.to_string(),
        );
        tokio::spawn(async move {
            tokio::time::sleep(wait).await;
            let mut request = request;
            let mut backoff = REPAIR_BACKOFF_START;
            while !backfills.is_closed() {
                match chat.clone().get_events(request.clone()).await {
                    Ok(page) => {
                        backoff = REPAIR_BACKOFF_START;
                        let page = page.into_inner();
                        let done = !page.has_more;
                        if let Some(last) = page.events.last() {
                            request.after = last.seq;
                        }
                        backfilled.inc_by(page.events.len() as u64);
                        let events = page
                            .events
                            .into_iter()
                            .map(|e| (e.seq, RoomEvent::new(&e.kind, e.json)))
                            .collect();
                        let backfill = Backfill {
                            channel: channel.clone(),
                            events,
                            done,
                            log_end: request.after,
                        };
                        if backfills.send(backfill).is_err() || done {
                            return;
                        }
                    }
                    Err(status) => {
                        tracing::warn!(channel, code = ?status.code(), message = status.message(), "backfill failed; retrying");
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(REPAIR_BACKOFF_MAX);
                    }
                }
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::Secret;
    use common::bus::{MemoryBus, RedisBus, envelope, room_channel};
    use common::config::ChatConfig;
    use common::grpc::{Actor, ClientSettings, channel};
    use common::shutdown::Shutdown;
    use proto::chat::v1::chat_service_client::ChatServiceClient;
    use proto::chat::v1::{CreateRoomRequest, SendMessageRequest, Visibility};

    use super::*;
    use crate::outbox::{Outbound, OutboxReceiver, outbox};

    /// A writer's view of an outbox: the receiver and the batch being read.
    type Frames = (OutboxReceiver, std::collections::VecDeque<Outbound>);

    fn frames(rx: OutboxReceiver) -> Frames {
        (rx, std::collections::VecDeque::new())
    }

    /// A real chat-service on its own bus (so the hub hears nothing from it
    /// unless a test says so), with a client for users and one for the hub.
    struct Chat {
        users: ChatServiceClient<ServiceChannel>,
        backend: ChatBackendServiceClient<ServiceChannel>,
        _db: common::testing::TestDatabase,
        _shutdown: Shutdown,
    }

    async fn chat() -> Chat {
        let db = common::testing::test_database().await;
        let credential = Secret::new(common::ids::random_secret(32));
        let config = ChatConfig {
            database_url: db.url.clone(),
            ..ChatConfig::default()
        };
        let app = chat_service::ChatApp::connect(
            &config,
            Arc::new(MemoryBus::new()),
            None,
            &credential,
            &common::metrics::Metrics::new(&["chat"]),
        )
        .await
        .expect("chat app");
        let server =
            common::testing::serve_grpc(|listener, signal| app.run_until_stopped(listener, signal))
                .await;
        let (url, shutdown) = (server.url, server.shutdown);
        let settings = ClientSettings {
            credential,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        };
        Chat {
            users: ChatServiceClient::new(channel(&url, &settings).expect("channel")),
            backend: ChatBackendServiceClient::new(channel(&url, &settings).expect("channel")),
            _db: db,
            _shutdown: shutdown,
        }
    }

    impl Chat {
        /// A public room with `messages` messages; returns its id (seq 1 is
        /// the owner's join, messages follow).
        async fn room_with(&self, messages: usize) -> String {
            let alice = Actor {
                user_id: "alice".into(),
                name: "Alice".into(),
                anonymous: false,
            };
            let room = self
                .users
                .clone()
                .create_room(alice.request(CreateRoomRequest {
                    name: common::ids::new_id("room"),
                    visibility: Visibility::Public as i32,
                    members: Vec::new(),
                }))
                .await
                .expect("create")
                .into_inner()
                .room
                .expect("room");
            for i in 0..messages {
                self.users
                    .clone()
                    .send_message(alice.request(SendMessageRequest {
                        room_id: room.id.clone(),
                        text: format!("m{i}"),
                        client_msg_id: format!("m{i}"),
                        thread_id: None,
                        metadata_json: String::new(),
                        reply_to: None,
                    }))
                    .await
                    .expect("send");
            }
            room.id
        }
    }

    /// The seq of the next frame (the reply counts as 0).
    async fn next_seq(rx: &mut Frames) -> i64 {
        if rx.1.is_empty() {
            rx.1 = tokio::time::timeout(Duration::from_secs(10), rx.0.next_batch())
                .await
                .expect("a frame within 10 s")
                .expect("outbox open");
        }
        match rx.1.pop_front() {
            Some(Outbound::Text(text)) if text.as_str() == "reply" => 0,
            Some(Outbound::Text(text)) => {
                let value: serde_json::Value = serde_json::from_str(text.as_str()).expect("json");
                value["seq"].as_i64().expect("seq")
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    fn event(room: &str, seq: i64) -> common::bus::Envelope {
        envelope(room, seq, "message.new", format!("{{\"seq\":{seq}}}"))
    }

    #[tokio::test]
    async fn gate_holds_events_until_the_reply_then_skips_what_it_covered() {
        let chat = chat().await;
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join("room:r", 1, "u", out.clone(), true)
            .await
            .expect("join");
        for seq in 1..=3 {
            bus.publish("room:r", &event("r", seq))
                .await
                .expect("publish");
        }
        // Wait until the fan-out task holds them.
        while lock(&hub.channels).get("room:r").map(|c| c.ahead.len()) != Some(3) {
            tokio::task::yield_now().await;
        }
        hub.open_gate(
            "room:r",
            &gate,
            &out,
            Some(Utf8Bytes::from_static("reply")),
            2,
        );
        assert_eq!(next_seq(&mut rx).await, 0, "the reply first");
        assert_eq!(next_seq(&mut rx).await, 3, "then what it did not cover");
        bus.publish("room:r", &event("r", 3))
            .await
            .expect("publish");
        bus.publish("room:r", &event("r", 4))
            .await
            .expect("publish");
        assert_eq!(next_seq(&mut rx).await, 4, "a repeated seq is dropped");
        hub.leave("room:r", 1).await;
        assert_eq!(hub.members("room:r"), 0);
    }

    fn membership(room: &str, seq: i64, kind: &str, user: &str) -> common::bus::Envelope {
        envelope(
            room,
            seq,
            kind,
            format!("{{\"seq\":{seq},\"user\":{{\"id\":\"{user}\"}}}}"),
        )
    }

    #[tokio::test]
    async fn watchers_hear_of_joins_and_leaves_new_to_them_in_order() {
        let chat = chat().await;
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join("room:r", 1, "alice", out.clone(), true)
            .await
            .expect("join");
        let (changes, mut heard) = mpsc::unbounded_channel();
        hub.watch_roster("room:r", 1, changes);
        hub.open_gate(
            "room:r",
            &gate,
            &out,
            Some(Utf8Bytes::from_static("reply")),
            1,
        );
        assert_eq!(next_seq(&mut rx).await, 0);

        for (seq, kind, user) in [
            (2, "member.joined", "bob"),
            (3, "member.joined", "alice"),
            (4, "member.left", "bob"),
        ] {
            bus.publish("room:r", &membership("r", seq, kind, user))
                .await
                .expect("publish");
            assert_eq!(next_seq(&mut rx).await, seq);
        }
        // A replay of an old `member.joined` (a backfill overlapping the bus)
        // must not bring bob back.
        bus.publish("room:r", &membership("r", 2, "member.joined", "bob"))
            .await
            .expect("publish");
        bus.publish("room:r", &event("r", 5))
            .await
            .expect("publish");
        assert_eq!(next_seq(&mut rx).await, 5);

        let change = |user: &str, joined| RosterChange {
            room: "r".into(),
            user: user.into(),
            joined,
        };
        let mut got = Vec::new();
        while let Ok(c) = heard.try_recv() {
            got.push(c);
        }
        assert_eq!(
            got,
            [change("bob", true), change("bob", false)],
            "alice's own join is not news to her; the replay is dropped"
        );
    }

    #[tokio::test]
    async fn a_seq_gap_on_the_bus_is_filled_from_the_log_before_delivery() {
        let chat = chat().await;
        let room = chat.room_with(5).await; // seqs 1..=6
        let channel = room_channel(&room);
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join(&channel, 1, "u", out.clone(), true)
            .await
            .expect("join");
        hub.open_gate(
            &channel,
            &gate,
            &out,
            Some(Utf8Bytes::from_static("reply")),
            2,
        );
        assert_eq!(next_seq(&mut rx).await, 0);

        // The bus loses 3 and 4 and delivers 5 and 6 out of order.
        bus.publish(&channel, &event(&room, 6))
            .await
            .expect("publish");
        bus.publish(&channel, &event(&room, 5))
            .await
            .expect("publish");
        let mut seen = Vec::new();
        for _ in 0..4 {
            seen.push(next_seq(&mut rx).await);
        }
        assert_eq!(seen, [3, 4, 5, 6], "in order, nothing lost");
        bus.publish(&channel, &event(&room, 7))
            .await
            .expect("publish");
        assert_eq!(next_seq(&mut rx).await, 7, "live again, no duplicate");
    }

    #[tokio::test]
    async fn an_event_far_beyond_the_log_is_dropped_after_a_few_repairs() {
        let chat = chat().await;
        let room = chat.room_with(0).await; // seq 1
        let channel = room_channel(&room);
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join(&channel, 1, "u", out.clone(), true)
            .await
            .expect("join");
        hub.open_gate(&channel, &gate, &out, None, 1);
        // A forged envelope far ahead of the log.
        bus.publish(&channel, &event(&room, 100_001))
            .await
            .expect("publish");
        tokio::time::timeout(Duration::from_secs(10), async {
            while hub.dropped_beyond_log() == 0 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("dropped after a few fruitless repairs");
        assert_eq!(hub.dropped_beyond_log(), 1);
        // The room goes on: the next real event is handed on at once.
        bus.publish(&channel, &event(&room, 2))
            .await
            .expect("publish");
        assert_eq!(next_seq(&mut rx).await, 2);
    }

    #[tokio::test]
    async fn after_a_bus_reconnect_every_room_is_read_from_the_log() {
        let Some(redis_url) = common::testing::test_redis_url() else {
            eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping the bus reconnect test");
            return;
        };
        let prefix = common::ids::new_id("hub");
        let key = Secret::new(common::ids::random_secret(32));
        let keys = common::bus::BusKeys::new(key, Secret::default());
        let bus = RedisBus::connect(&redis_url, &prefix, keys)
            .await
            .unwrap_or_else(|e| panic!("PARLEY_TEST_REDIS_URL is set but Redis is unusable: {e}"));
        let chat = chat().await;
        let room = chat.room_with(0).await; // seq 1
        let channel = room_channel(&room);
        let hub = Hub::start(&bus, chat.backend.clone(), EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join(&channel, 1, "u", out.clone(), true)
            .await
            .expect("join");
        hub.open_gate(&channel, &gate, &out, None, 1);

        // Messages stored while the hub hears nothing of them (chat-service
        // publishes on a bus of its own here, as if Redis dropped them).
        let alice = Actor {
            user_id: "alice".into(),
            name: "Alice".into(),
            anonymous: false,
        };
        for i in 0..3 {
            chat.users
                .clone()
                .send_message(alice.request(SendMessageRequest {
                    room_id: room.clone(),
                    text: format!("while away {i}"),
                    client_msg_id: format!("away-{i}"),
                    thread_id: None,
                    metadata_json: String::new(),
                    reply_to: None,
                }))
                .await
                .expect("send");
        }
        // Drop the hub's subscriber connection; it reconnects and resubscribes.
        let client = redis::Client::open(redis_url.as_str()).expect("redis url");
        let mut conn = client
            .get_multiplexed_async_connection()
            .await
            .expect("redis");
        let clients: String = redis::cmd("CLIENT")
            .arg("LIST")
            .query_async(&mut conn)
            .await
            .expect("client list");
        let ids: Vec<String> = clients
            .lines()
            .filter(|line| line.contains(&format!("name=parley-sub-{prefix}")))
            .filter_map(|line| {
                line.split_whitespace()
                    .find_map(|f| f.strip_prefix("id="))
                    .map(str::to_string)
            })
            .collect();
        assert!(!ids.is_empty(), "the hub's subscriber connection is listed");
        for id in ids {
            let _: redis::Value = redis::cmd("CLIENT")
                .arg("KILL")
                .arg("ID")
                .arg(&id)
                .query_async(&mut conn)
                .await
                .expect("kill");
        }
        let mut seen = Vec::new();
        for _ in 0..3 {
            seen.push(next_seq(&mut rx).await);
        }
        assert_eq!(seen, [2, 3, 4], "what the bus missed arrives from the log");
    }
}
