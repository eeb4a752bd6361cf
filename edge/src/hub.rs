//! Fan-out: one bus subscription per channel per edge (not per connection),
//! each event encoded once and handed to every local member's outbox, in
//! order, with a per-member gate that holds live events while a join's reply
//! is being prepared (subscribe first, then read, then release the buffer).
//!
//! Room-wide presence: for a room small enough
//! (`edge.room_presence_max_members`) the hub keeps the room's member list
//! (from the first join's reply, then the log's `member.joined` and
//! `member.left`) and follows each member's presence channel once per edge,
//! whatever the number of local connections in the room; a `presence` event
//! is handed to every local connection of the rooms that follow its user,
//! like a room event. The hub also remembers, from those events, who of
//! them is online, so that a join of a room it follows answers `online[]`
//! without reading the member list or asking presence-service about every
//! member (only about those it has not heard of since it subscribed).
//!
//! Gap repair: for each room channel the hub knows the highest seq it has
//! handed on with nothing missing before it. An event further ahead waits
//! while the missing ones are read from chat-service's log; after a bus
//! reconnect every room is read from its last seq. The bus may lose events;
//! the edge never does.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
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
use protocol::ServerFrame;

/// Prefix of room channels (the others carry no seq).
const ROOM_PREFIX: &str = "room:";
/// Prefix of user presence channels.
const PRESENCE_PREFIX: &str = "presence:";
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
    /// delivery of the room, and a user's own presence is not sent back to
    /// them through a room.
    user: String,
}

impl Member {
    /// Queues an event to this member's connection.
    fn send(&self, text: Utf8Bytes) {
        if self.outbox.push(text) {
            self.deliveries.inc();
        }
    }
}

/// Who is in a room with room-wide presence, as of the room's `seq`.
struct Roster {
    members: HashSet<String>,
    /// Whether the room is small enough for room-wide presence now: then
    /// every member's presence channel lists this room.
    following: bool,
    /// `edge.room_presence_max_members`.
    max: usize,
}

impl Roster {
    /// Applies a member joining or leaving; returns the presence follows
    /// that change with it (one user's, or every member's when the room
    /// crosses the size limit).
    fn change(&mut self, room: &str, user: &str, joined: bool, follows: &mut Vec<Follow>) {
        let changed = if joined {
            self.members.insert(user.to_string())
        } else {
            self.members.remove(user)
        };
        if !changed {
            return;
        }
        let fits = self.members.len() <= self.max;
        if fits != self.following {
            self.following = fits;
            follows.extend(follows_of(room, self, fits));
            if !joined {
                // The one who left is no longer in `members`.
                follows.push(Follow {
                    room: room.to_string(),
                    user: user.to_string(),
                    on: false,
                });
            }
        } else if self.following {
            follows.push(Follow {
                room: room.to_string(),
                user: user.to_string(),
                on: joined,
            });
        }
    }
}

/// One subscribed channel and its local members.
#[derive(Default)]
struct Channel {
    /// Local connections: of the room, or following a user's presence by
    /// `presence.subscribe`, or of the user.
    members: HashMap<u64, Member>,
    /// Room channels, with room-wide presence on: the room's members.
    roster: Option<Roster>,
    /// Presence channels: the local room channels that follow this user
    /// room-wide.
    rooms: HashSet<String>,
    /// Presence channels: when (on the [`Clock`]) the bus subscription
    /// began; `None` until it has.
    watched_since: Option<u64>,
    /// Room channels: the connection whose join is the first on this edge
    /// (it reads the room's members); other joins wait for it. Dropped —
    /// which wakes them — when its reply opens the room or it leaves.
    introducing: Option<(u64, tokio::sync::watch::Sender<()>)>,
    /// Presence channels: whether the user is online, and when that was
    /// learnt — from an event, or from a lookup that began after the
    /// subscription (anything later comes as an event).
    online: Option<(bool, u64)>,
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

impl Channel {
    /// Nothing on this edge needs the channel any more.
    fn is_idle(&self) -> bool {
        self.members.is_empty() && self.rooms.is_empty()
    }
}

type Channels = HashMap<String, Channel>;

/// Orders what the hub learns of presence: each subscription's start, each
/// `presence` event, each lookup's start.
#[derive(Default)]
struct Clock(AtomicU64);

impl Clock {
    fn tick(&self) -> u64 {
        self.0.fetch_add(1, Ordering::Relaxed) + 1
    }
}

/// A room's members as the hub follows them: who is online, and whose
/// presence it has not learnt yet.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct RoomPresence {
    pub online: Vec<String>,
    pub unknown: Vec<String>,
}

/// Where a join's `online[]` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PresenceSource {
    /// The hub follows the room's presence: chat-service may omit it.
    Hub,
    /// The room is open on this edge (the hub keeps its member list) but
    /// the hub does not follow its presence: chat-service answers who is
    /// online and may omit the members.
    Chat,
    /// The first join of the room on this edge: chat-service answers the
    /// members too, which open the room's roster.
    Introduce,
}

/// How long a join waits for the first join of its room on this edge.
const FIRST_JOIN_WAIT: Duration = Duration::from_secs(5);

/// A presence lookup begun at a point of the hub's [`Clock`].
#[derive(Debug, Clone, Copy)]
pub struct LookupStart(u64);

/// Marks a presence channel's entry as subscribed from now on, unless it
/// already is.
fn watched(channels: &Mutex<Channels>, name: &str, clock: &Clock) {
    if name.starts_with(PRESENCE_PREFIX)
        && let Some(entry) = lock(channels).get_mut(name)
        && entry.watched_since.is_none()
    {
        entry.watched_since = Some(clock.tick());
    }
}

/// A room channel starts (`true`) or stops following a user's presence.
struct Follow {
    room: String,
    user: String,
    on: bool,
}

/// Applies room-wide follows to the presence channels' entries; returns the
/// presence channels whose subscription may have to change.
fn apply_follows(channels: &mut Channels, follows: Vec<Follow>) -> Vec<String> {
    let mut touched = Vec::with_capacity(follows.len());
    for Follow { room, user, on } in follows {
        let name = format!("{PRESENCE_PREFIX}{user}");
        if on {
            channels.entry(name.clone()).or_default().rooms.insert(room);
        } else if let Some(entry) = channels.get_mut(&name) {
            entry.rooms.remove(&room);
            if entry.is_idle() {
                channels.remove(&name);
            }
        }
        touched.push(name);
    }
    touched
}

/// Follows for every member of a roster (on or off).
fn follows_of(room: &str, roster: &Roster, on: bool) -> impl Iterator<Item = Follow> {
    roster.members.iter().map(move |user| Follow {
        room: room.to_string(),
        user: user.clone(),
        on,
    })
}

/// The edge's bus subscriptions, changed one at a time so that a channel is
/// subscribed exactly while some entry of the channel table needs it.
struct Subscriptions {
    subscriber: Box<dyn Subscriber>,
    /// Channels subscribed on the bus.
    held: tokio::sync::Mutex<HashSet<String>>,
    metrics: EdgeMetrics,
    clock: Clock,
}

impl Subscriptions {
    /// Subscribes or unsubscribes each channel as the table says it is needed.
    async fn reconcile(&self, channels: &Mutex<Channels>, names: &[String]) {
        if names.is_empty() {
            return;
        }
        let mut held = self.held.lock().await;
        for name in names {
            self.reconcile_one(channels, &mut held, name).await;
        }
    }

    async fn reconcile_one(
        &self,
        channels: &Mutex<Channels>,
        held: &mut HashSet<String>,
        name: &str,
    ) {
        let wanted = lock(channels).get(name).is_some_and(|c| !c.is_idle());
        if wanted == held.contains(name) {
            if wanted {
                // A new entry for a channel that stayed subscribed.
                watched(channels, name, &self.clock);
            }
            return;
        }
        let is_room = name.starts_with(ROOM_PREFIX);
        if wanted {
            match self.subscriber.subscribe(name).await {
                Ok(()) => {
                    held.insert(name.to_string());
                    watched(channels, name, &self.clock);
                    if is_room {
                        self.metrics.room_subscriptions.inc();
                    }
                }
                Err(e) => tracing::warn!(channel = name, error = %e, "subscribe failed"),
            }
        } else {
            held.remove(name);
            if is_room {
                self.metrics.room_subscriptions.dec();
            }
            if let Err(e) = self.subscriber.unsubscribe(name).await {
                tracing::warn!(channel = name, error = %e, "unsubscribe failed");
            }
        }
    }
}

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
    subscriptions: Arc<Subscriptions>,
    channels: Arc<Mutex<Channels>>,
    repairer: Repairer,
    /// `edge.room_presence_max_members`: larger rooms have no room-wide
    /// presence; 0 turns it off.
    room_presence_max: usize,
    metrics: EdgeMetrics,
}

impl Hub {
    /// Opens the edge's bus subscriber and starts the fan-out task; gaps are
    /// filled from `chat`'s log. Rooms of at most `room_presence_max`
    /// members get room-wide presence.
    pub async fn start(
        bus: &dyn Bus,
        chat: ChatBackendServiceClient<ServiceChannel>,
        room_presence_max: usize,
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
        let subscriptions = Arc::new(Subscriptions {
            subscriber,
            held: tokio::sync::Mutex::default(),
            metrics: metrics.clone(),
            clock: Clock::default(),
        });
        tokio::spawn(fan_out(
            events,
            filled,
            channels.clone(),
            subscriptions.clone(),
            repairer.clone(),
            metrics.clone(),
        ));
        Ok(Self {
            subscriptions,
            channels,
            repairer,
            room_presence_max,
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
        let mut held = self.subscriptions.held.lock().await;
        let gate = Arc::new(Mutex::new(Gate {
            pending: gated.then(Vec::new),
            delivered: 0,
        }));
        lock(&self.channels)
            .entry(channel.to_string())
            .or_default()
            .members
            .insert(
                conn,
                Member {
                    outbox,
                    deliveries: self.metrics.deliveries.clone(),
                    gate: gate.clone(),
                    user: user.to_string(),
                },
            );
        if held.contains(channel) {
            watched(&self.channels, channel, &self.subscriptions.clock);
            return Ok(gate);
        }
        if let Err(e) = self.subscriptions.subscriber.subscribe(channel).await {
            let mut channels = lock(&self.channels);
            if let Some(entry) = channels.get_mut(channel) {
                entry.members.remove(&conn);
                if entry
                    .introducing
                    .as_ref()
                    .is_some_and(|(by, _)| *by == conn)
                {
                    entry.introducing = None;
                }
                if entry.is_idle() {
                    channels.remove(channel);
                }
            }
            return Err(e);
        }
        held.insert(channel.to_string());
        watched(&self.channels, channel, &self.subscriptions.clock);
        if channel.starts_with(ROOM_PREFIX) {
            self.metrics.room_subscriptions.inc();
        }
        Ok(gate)
    }

    /// Removes a member; unsubscribes the edge when nothing needs the
    /// channel any more (a room's last local member takes the room's
    /// presence follows with it).
    pub async fn leave(&self, channel: &str, conn: u64) {
        let touched = {
            let mut channels = lock(&self.channels);
            let mut follows = Vec::new();
            if let Some(entry) = channels.get_mut(channel) {
                entry.members.remove(&conn);
                if entry.is_idle() {
                    if let Some(roster) = entry.roster.as_ref().filter(|r| r.following) {
                        follows.extend(follows_of(channel, roster, false));
                    }
                    channels.remove(channel);
                }
            }
            let mut touched = apply_follows(&mut channels, follows);
            touched.push(channel.to_string());
            touched
        };
        self.subscriptions.reconcile(&self.channels, &touched).await;
    }

    /// Sends `reply` to the member, then what was buffered meanwhile that is
    /// newer than `delivered` (the log position the reply covered), and
    /// switches the member to live delivery. The first reply for a room
    /// also tells the hub where the room's log stands and who is in it
    /// (`members`, as of `delivered`): room-wide presence starts from them.
    pub async fn open_gate(
        &self,
        channel: &str,
        gate: &Mutex<Gate>,
        outbox: &Outbox,
        reply: Option<Utf8Bytes>,
        delivered: i64,
        members: &[String],
    ) {
        let touched = {
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
            let mut follows = Vec::new();
            if let Some(entry) = channels.get_mut(channel)
                && entry.seq.is_none()
            {
                entry.seq = Some(delivered);
                entry.introducing = None;
                if self.room_presence_max > 0 {
                    let roster = Roster {
                        members: members.iter().cloned().collect(),
                        following: members.len() <= self.room_presence_max,
                        max: self.room_presence_max,
                    };
                    if roster.following {
                        follows.extend(follows_of(channel, &roster, true));
                    }
                    entry.roster = Some(roster);
                }
                advance(entry, channel, &self.repairer, &mut follows);
            }
            apply_follows(&mut channels, follows)
        };
        self.subscriptions.reconcile(&self.channels, &touched).await;
    }

    /// Where the `online[]` of `conn`'s join of `channel` (joined with
    /// [`Hub::join`]) comes from: the hub, when it follows the presence of
    /// the room's members. The first join of a room on this edge asks
    /// chat-service, and joins arriving meanwhile wait for its reply (at
    /// most [`FIRST_JOIN_WAIT`]): a burst of joins reads the members once.
    pub async fn presence_source(&self, channel: &str, conn: u64) -> PresenceSource {
        let deadline = tokio::time::Instant::now() + FIRST_JOIN_WAIT;
        loop {
            let (first, mut done) = {
                let mut channels = lock(&self.channels);
                let Some(entry) = channels.get_mut(channel) else {
                    return PresenceSource::Introduce;
                };
                if entry.roster.as_ref().is_some_and(|r| r.following) {
                    return PresenceSource::Hub;
                }
                if entry.seq.is_some() || self.room_presence_max == 0 {
                    return PresenceSource::Chat;
                }
                match &entry.introducing {
                    Some((by, first)) if *by != conn => (*by, first.subscribe()),
                    _ => {
                        entry.introducing = Some((conn, tokio::sync::watch::channel(()).0));
                        return PresenceSource::Introduce;
                    }
                }
            };
            // Ends when the first join's sender is dropped.
            if tokio::time::timeout_at(deadline, done.changed())
                .await
                .is_err()
            {
                // The first join is stuck (or its command was dropped):
                // this one takes its place, so later joins wait for a live one.
                if let Some(entry) = lock(&self.channels).get_mut(channel)
                    && entry.seq.is_none()
                    && entry
                        .introducing
                        .as_ref()
                        .is_some_and(|(by, _)| *by == first)
                {
                    entry.introducing = Some((conn, tokio::sync::watch::channel(()).0));
                }
                return PresenceSource::Introduce;
            }
        }
    }

    /// Who of `channel`'s members is online as far as the hub knows;
    /// `None` when it does not follow the room's presence.
    pub fn room_presence(&self, channel: &str) -> Option<RoomPresence> {
        let channels = lock(&self.channels);
        let roster = channels
            .get(channel)?
            .roster
            .as_ref()
            .filter(|r| r.following)?;
        let mut presence = RoomPresence::default();
        for user in &roster.members {
            let known = channels
                .get(&format!("{PRESENCE_PREFIX}{user}"))
                .and_then(|c| c.online);
            match known {
                Some((true, _)) => presence.online.push(user.clone()),
                Some((false, _)) => {}
                None => presence.unknown.push(user.clone()),
            }
        }
        Some(presence)
    }

    /// Call before asking presence-service; hand the answer to
    /// [`Hub::learn_presence`].
    pub fn lookup_start(&self) -> LookupStart {
        LookupStart(self.subscriptions.clock.tick())
    }

    /// Keeps what a lookup begun at `start` found, for the users followed
    /// since before it and not heard of since.
    pub fn learn_presence(&self, start: LookupStart, seen: &HashMap<String, bool>) {
        let mut channels = lock(&self.channels);
        for (user, online) in seen {
            if let Some(entry) = channels.get_mut(&format!("{PRESENCE_PREFIX}{user}"))
                && entry.watched_since.is_some_and(|since| since < start.0)
                && entry.online.is_none_or(|(_, at)| at < start.0)
            {
                entry.online = Some((*online, start.0));
            }
        }
    }

    /// The users this edge follows room-wide for the given rooms.
    pub fn room_presence_members<'a>(
        &self,
        rooms: impl Iterator<Item = &'a String>,
    ) -> HashSet<String> {
        let channels = lock(&self.channels);
        let mut users = HashSet::new();
        for room in rooms {
            if let Some(roster) = channels
                .get(&common::bus::room_channel(room))
                .and_then(|c| c.roster.as_ref())
                .filter(|r| r.following)
            {
                users.extend(roster.members.iter().cloned());
            }
        }
        users
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

/// Hands one room-log event on; for a membership change, drops the
/// connections of a user who left.
fn deliver_logged(channel: &mut Channel, seq: i64, event: &RoomEvent) {
    deliver(channel, seq, &event.text);
    if let Some((false, user)) = &event.roster {
        channel.members.retain(|_, member| &member.user != user);
    }
}

/// Hands on the room's next event in log order: a membership change also
/// updates the room's roster (and its presence follows).
fn deliver_next(
    channel: &mut Channel,
    name: &str,
    seq: i64,
    event: &RoomEvent,
    follows: &mut Vec<Follow>,
) {
    if let (Some((joined, user)), Some(roster)) = (&event.roster, channel.roster.as_mut()) {
        roster.change(name, user, *joined, follows);
    }
    deliver_logged(channel, seq, event);
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
fn room_event(
    entry: &mut Channel,
    name: &str,
    seq: i64,
    event: RoomEvent,
    repairer: &Repairer,
    follows: &mut Vec<Follow>,
) {
    match entry.seq {
        Some(current) if seq <= current => deliver_logged(entry, seq, &event),
        Some(current) if seq == current + 1 => {
            deliver_next(entry, name, seq, &event, follows);
            entry.seq = Some(seq);
            advance(entry, name, repairer, follows);
        }
        _ => {
            if entry.ahead.len() < MAX_AHEAD {
                entry.ahead.insert(seq, event);
            }
            if entry.seq.is_some() {
                advance(entry, name, repairer, follows);
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
fn advance(entry: &mut Channel, name: &str, repairer: &Repairer, follows: &mut Vec<Follow>) {
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
            deliver_next(entry, name, seq, &event, follows);
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
    subscriptions: Arc<Subscriptions>,
    repairer: Repairer,
    metrics: EdgeMetrics,
) {
    loop {
        // Presence channels whose subscription a membership change touched:
        // changed after the event is handed on, before the next one.
        let touched = tokio::select! {
            event = events.recv() => match event {
                Some(BusEvent::Message { channel, envelope }) => {
                    if let Some(lag) = common::bus::lag_seconds(&envelope) {
                        metrics.bus_lag.observe(lag);
                    }
                    bus_message(&channels, &repairer, &subscriptions.clock, channel, envelope)
                }
                Some(BusEvent::Resubscribed) => {
                    metrics.bus_reconnects.inc();
                    // Anything published while the bus was away is in the
                    // log; presence it carried meanwhile is not known.
                    let mut channels = lock(&channels);
                    let mut repairs = 0;
                    let now = subscriptions.clock.tick();
                    for (name, entry) in channels.iter_mut() {
                        if name.starts_with(PRESENCE_PREFIX) {
                            entry.online = None;
                            // Subscribed again from now.
                            if entry.watched_since.is_some() {
                                entry.watched_since = Some(now);
                            }
                        }
                        if let Some(seq) = entry.seq
                            && !entry.repairing
                        {
                            entry.repairing = true;
                            repairer.start(name, seq, Duration::ZERO);
                            repairs += 1;
                        }
                    }
                    tracing::warn!(rooms = repairs, "bus resubscribed; reading what it missed from the log");
                    Vec::new()
                }
                None => return,
            },
            Some(backfill) = filled.recv() => {
                let mut channels = lock(&channels);
                let mut follows = Vec::new();
                if let Some(entry) = channels.get_mut(&backfill.channel) {
                    for (seq, event) in backfill.events {
                        room_event(entry, &backfill.channel, seq, event, &repairer, &mut follows);
                    }
                    if backfill.done {
                        entry.repairing = false;
                        beyond_the_log(entry, &backfill.channel, backfill.log_end, &repairer);
                        advance(entry, &backfill.channel, &repairer, &mut follows);
                    }
                }
                apply_follows(&mut channels, follows)
            }
        };
        subscriptions.reconcile(&channels, &touched).await;
    }
}

/// Hands one bus message to the local connections it is for; returns the
/// presence channels whose subscription may have to change.
fn bus_message(
    channels: &Mutex<Channels>,
    repairer: &Repairer,
    clock: &Clock,
    channel: String,
    envelope: common::bus::Envelope,
) -> Vec<String> {
    let seq = envelope.seq;
    let mut channels = lock(channels);
    if seq > 0 && channel.starts_with(ROOM_PREFIX) {
        let mut follows = Vec::new();
        if let Some(entry) = channels.get_mut(&channel) {
            let event = RoomEvent::new(&envelope.kind, envelope.json);
            room_event(entry, &channel, seq, event, repairer, &mut follows);
        }
        return apply_follows(&mut channels, follows);
    }
    if channel.starts_with(PRESENCE_PREFIX)
        && let Some(entry) = channels.get_mut(&channel)
        && let Ok(ServerFrame::Presence(state)) = serde_json::from_str(&envelope.json)
    {
        entry.online = Some((state.status != "offline", clock.tick()));
    }
    // Encoded once per edge; every recipient shares the bytes.
    let text = Utf8Bytes::from(envelope.json);
    let Some(entry) = channels.get(&channel) else {
        return Vec::new();
    };
    if channel.starts_with("user:") && !envelope.room_id.is_empty() {
        // A room event sent to a user's own channel (e.g. their read
        // receipt) reaches the devices that joined the room through the
        // room channel already.
        let room = channels.get(&common::bus::room_channel(&envelope.room_id));
        for (key, member) in &entry.members {
            if !room.is_some_and(|room| room.members.contains_key(key)) {
                member.send(text.clone());
            }
        }
    } else if let Some(user) = channel.strip_prefix(PRESENCE_PREFIX)
        && !entry.rooms.is_empty()
    {
        deliver_presence(&channels, entry, user, &text);
    } else if envelope.except_user.is_empty() {
        deliver(entry, seq, &text);
    } else {
        deliver_except(entry, &text, &envelope.except_user);
    }
    Vec::new()
}

/// Hands a user's `presence` event to the connections following them by
/// `presence.subscribe` and to the other local members of the rooms that
/// follow them room-wide, once per connection.
fn deliver_presence(channels: &Channels, entry: &Channel, user: &str, text: &Utf8Bytes) {
    let mut reached: HashSet<u64> = HashSet::new();
    for (key, member) in &entry.members {
        reached.insert(*key);
        deliver_to(member, 0, text);
    }
    for room in &entry.rooms {
        let Some(room) = channels.get(room) else {
            continue;
        };
        for (key, member) in &room.members {
            if member.user != user && reached.insert(*key) {
                deliver_to(member, 0, text);
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
    use common::bus::{MemoryBus, RedisBus, envelope, presence_channel, room_channel};
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
                        ..SendMessageRequest::default()
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
        let hub = Hub::start(&bus, chat.backend.clone(), 100, EdgeMetrics::default())
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
            &[],
        )
        .await;
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

    /// The next frame's text.
    async fn next_text(rx: &mut Frames) -> String {
        if rx.1.is_empty() {
            rx.1 = tokio::time::timeout(Duration::from_secs(10), rx.0.next_batch())
                .await
                .expect("a frame within 10 s")
                .expect("outbox open");
        }
        match rx.1.pop_front() {
            Some(Outbound::Text(text)) => text.as_str().to_string(),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn presence_event(user: &str) -> common::bus::Envelope {
        envelope("", 0, "presence", format!("{{\"presence\":\"{user}\"}}"))
    }

    /// A real `presence` event, as presence-service publishes it.
    fn status_event(user: &str, status: &str) -> common::bus::Envelope {
        let frame = ServerFrame::Presence(protocol::PresenceState {
            user: user.into(),
            status: status.into(),
            text: String::new(),
            last_seen: 0,
        });
        envelope("", 0, "presence", frame.to_json())
    }

    /// In a room too big for room-wide presence, only the first join on
    /// this edge needs the member list; later ones ask chat-service who is
    /// online without it.
    #[tokio::test]
    async fn only_the_first_join_of_a_big_room_reads_its_members() {
        let chat = chat().await;
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), 2, EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, _rx) = outbox(1 << 20);
        let gate = hub
            .join("room:r", 1, "alice", out.clone(), true)
            .await
            .expect("join");
        assert_eq!(
            hub.presence_source("room:r", 1).await,
            PresenceSource::Introduce
        );
        let members = ["alice", "bob", "zoe"].map(String::from);
        hub.open_gate("room:r", &gate, &out, None, 1, &members)
            .await;
        let (out2, _rx2) = outbox(1 << 20);
        hub.join("room:r", 2, "bob", out2, true)
            .await
            .expect("join");
        assert_eq!(hub.presence_source("room:r", 2).await, PresenceSource::Chat);
        assert!(hub.room_presence("room:r").is_none(), "three is over two");
    }

    #[tokio::test]
    async fn who_is_online_is_known_from_events_and_from_lookups_begun_after_subscribing() {
        let chat = chat().await;
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), 10, EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join("room:r", 1, "alice", out.clone(), true)
            .await
            .expect("join");
        let members = ["alice", "bob", "zoe"].map(String::from);
        assert_eq!(
            hub.presence_source("room:r", 1).await,
            PresenceSource::Introduce,
            "the first join reads the members"
        );
        // A second join waits for the first one's reply.
        let (out2, _rx2) = outbox(1 << 20);
        hub.join("room:r", 2, "bob", out2, true)
            .await
            .expect("join");
        let second = hub.presence_source("room:r", 2);
        tokio::pin!(second);
        assert!(
            futures::poll!(second.as_mut()).is_pending(),
            "waits for the first"
        );
        hub.open_gate("room:r", &gate, &out, None, 1, &members)
            .await;
        assert_eq!(second.await, PresenceSource::Hub);
        let sorted = |mut users: Vec<String>| {
            users.sort();
            users
        };
        let presence = hub.room_presence("room:r").expect("followed");
        assert!(presence.online.is_empty());
        assert_eq!(sorted(presence.unknown), members, "nothing known yet");

        // A lookup begun after the subscriptions is kept.
        let seen = |pairs: &[(&str, bool)]| -> HashMap<String, bool> {
            pairs.iter().map(|(u, o)| (u.to_string(), *o)).collect()
        };
        let stale = hub.lookup_start();
        hub.learn_presence(
            hub.lookup_start(),
            &seen(&[("alice", true), ("bob", true), ("zoe", false)]),
        );
        let presence = hub.room_presence("room:r").expect("followed");
        assert_eq!(sorted(presence.online), ["alice", "bob"]);
        assert!(presence.unknown.is_empty());

        // An event is newer than a lookup begun before it arrived.
        bus.publish(&presence_channel("bob"), &status_event("bob", "offline"))
            .await
            .expect("publish");
        bus.publish("room:r", &event("r", 2))
            .await
            .expect("publish");
        assert!(
            next_text(&mut rx).await.contains("offline"),
            "alice hears bob"
        );
        assert_eq!(next_seq(&mut rx).await, 2);
        hub.learn_presence(stale, &seen(&[("bob", true)]));
        assert_eq!(
            hub.room_presence("room:r").expect("followed").online,
            ["alice"],
            "bob's offline event outranks the older lookup"
        );

        // A new member: a lookup begun before the edge followed them could
        // miss a change, so it is not kept; a later one is.
        let early = hub.lookup_start();
        bus.publish("room:r", &membership("r", 3, "member.joined", "carol"))
            .await
            .expect("publish");
        assert_eq!(next_seq(&mut rx).await, 3);
        hub.learn_presence(early, &seen(&[("carol", true)]));
        assert_eq!(
            hub.room_presence("room:r").expect("followed").unknown,
            ["carol"]
        );
        hub.learn_presence(hub.lookup_start(), &seen(&[("carol", true)]));
        let presence = hub.room_presence("room:r").expect("followed");
        assert_eq!(sorted(presence.online), ["alice", "carol"]);
        assert!(presence.unknown.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_stuck_first_join_holds_the_others_up_only_for_a_while() {
        // No chat-service: nothing here reads a room's log.
        let settings = ClientSettings {
            credential: Secret::new("unused"),
            connect_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
        };
        let nowhere = channel("http://127.0.0.1:1", &settings).expect("channel");
        let bus = MemoryBus::new();
        let hub = Hub::start(
            &bus,
            ChatBackendServiceClient::new(nowhere),
            10,
            EdgeMetrics::default(),
        )
        .await
        .expect("hub");
        let mut outs = Vec::new();
        for (conn, user) in [(1, "alice"), (2, "bob"), (3, "carol")] {
            let (out, rx) = outbox(1 << 20);
            hub.join("room:r", conn, user, out.clone(), true)
                .await
                .expect("join");
            outs.push((out, rx));
        }
        // Alice's join goes first and never answers.
        assert_eq!(
            hub.presence_source("room:r", 1).await,
            PresenceSource::Introduce
        );
        let started = tokio::time::Instant::now();
        assert_eq!(
            hub.presence_source("room:r", 2).await,
            PresenceSource::Introduce
        );
        assert_eq!(
            started.elapsed(),
            FIRST_JOIN_WAIT,
            "bob waited, then went ahead"
        );
        // Carol now waits for bob's join, not alice's: when bob's fails
        // (he leaves), she goes ahead.
        let introducer = |hub: &Hub| {
            lock(&hub.channels)
                .get("room:r")
                .and_then(|c| c.introducing.as_ref().map(|(by, _)| *by))
        };
        assert_eq!(introducer(&hub), Some(2), "bob took alice's place");
        let carol = hub.presence_source("room:r", 3);
        tokio::pin!(carol);
        assert!(futures::poll!(carol.as_mut()).is_pending());
        hub.leave("room:r", 2).await;
        assert_eq!(carol.await, PresenceSource::Introduce);
        assert_eq!(introducer(&hub), Some(3));
        // Carol's join answers: nobody waits any more.
        let gate = Arc::new(Mutex::new(Gate::default()));
        let members = ["alice", "bob", "carol"].map(String::from);
        hub.open_gate("room:r", &gate, &outs[2].0, None, 1, &members)
            .await;
        assert_eq!(hub.presence_source("room:r", 1).await, PresenceSource::Hub);
    }

    #[tokio::test]
    async fn room_presence_is_one_follow_per_member_per_edge_kept_by_the_log() {
        let chat = chat().await;
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), 3, EdgeMetrics::default())
            .await
            .expect("hub");
        let mut rxs = Vec::new();
        for (conn, user) in [(1, "alice"), (2, "alice"), (3, "zoe")] {
            let (out, rx) = outbox(1 << 20);
            let gate = hub
                .join("room:r", conn, user, out.clone(), true)
                .await
                .expect("join");
            let members = ["alice".to_string(), "zoe".to_string()];
            hub.open_gate(
                "room:r",
                &gate,
                &out,
                Some(Utf8Bytes::from_static("reply")),
                1,
                &members,
            )
            .await;
            let mut rx = frames(rx);
            assert_eq!(next_seq(&mut rx).await, 0);
            rxs.push(rx);
        }
        for (seq, kind, user) in [
            (2, "member.joined", "bob"),
            (3, "member.joined", "carol"),
            (4, "member.left", "bob"),
        ] {
            bus.publish("room:r", &membership("r", seq, kind, user))
                .await
                .expect("publish");
            for rx in &mut rxs {
                assert_eq!(next_seq(rx).await, seq);
            }
        }
        // A replay of an old `member.joined` (a backfill overlapping the bus)
        // must not bring bob back.
        bus.publish("room:r", &membership("r", 2, "member.joined", "bob"))
            .await
            .expect("publish");
        bus.publish("room:r", &event("r", 5))
            .await
            .expect("publish");
        for rx in &mut rxs {
            assert_eq!(next_seq(rx).await, 5);
        }

        let held = hub.subscriptions.held.lock().await.clone();
        let mut presence: Vec<&String> =
            held.iter().filter(|c| c.starts_with("presence:")).collect();
        presence.sort();
        assert_eq!(
            presence,
            ["presence:alice", "presence:carol", "presence:zoe"],
            "one subscription per member for the whole edge; bob left"
        );
        assert_eq!(
            hub.members("presence:carol"),
            0,
            "no per-connection entries"
        );

        // Carol's and alice's presence reach every local connection of the
        // room once, except a user's own connections; bob's no longer.
        for user in ["bob", "carol", "alice"] {
            bus.publish(&presence_channel(user), &presence_event(user))
                .await
                .expect("publish");
        }
        bus.publish("room:r", &event("r", 6))
            .await
            .expect("publish");
        let carol = r#"{"presence":"carol"}"#;
        let alice = r#"{"presence":"alice"}"#;
        for (i, rx) in rxs.iter_mut().enumerate() {
            let mut got = vec![next_text(rx).await];
            if i == 2 {
                got.push(next_text(rx).await);
                assert_eq!(got, [carol, alice], "zoe hears carol and alice");
            } else {
                assert_eq!(got, [carol], "alice hears carol only");
            }
            assert_eq!(next_seq(rx).await, 6);
        }

        // Two more members take the room past three: room-wide presence ends.
        for (seq, user) in [(7, "dave"), (8, "erin")] {
            bus.publish("room:r", &membership("r", seq, "member.joined", user))
                .await
                .expect("publish");
            for rx in &mut rxs {
                assert_eq!(next_seq(rx).await, seq);
            }
        }
        bus.publish(&presence_channel("carol"), &presence_event("carol"))
            .await
            .expect("publish");
        bus.publish("room:r", &event("r", 9))
            .await
            .expect("publish");
        for rx in &mut rxs {
            assert_eq!(
                next_seq(rx).await,
                9,
                "no presence once the room outgrew the cap"
            );
        }
        let held = hub.subscriptions.held.lock().await.clone();
        assert!(!held.iter().any(|c| c.starts_with("presence:")), "{held:?}");

        // The room shrinks back: presence follows again; the last local
        // member leaving takes every follow with it.
        for (seq, user) in [(10, "erin"), (11, "dave")] {
            bus.publish("room:r", &membership("r", seq, "member.left", user))
                .await
                .expect("publish");
            for rx in &mut rxs {
                assert_eq!(next_seq(rx).await, seq);
            }
        }
        assert_eq!(
            hub.subscriptions
                .held
                .lock()
                .await
                .iter()
                .filter(|c| c.starts_with("presence:"))
                .count(),
            3,
            "alice, zoe and carol again"
        );
        for conn in 1..=3 {
            hub.leave("room:r", conn).await;
        }
        assert!(hub.subscriptions.held.lock().await.is_empty());
        assert!(lock(&hub.channels).is_empty());
    }

    #[tokio::test]
    async fn a_seq_gap_on_the_bus_is_filled_from_the_log_before_delivery() {
        let chat = chat().await;
        let room = chat.room_with(5).await; // seqs 1..=6
        let channel = room_channel(&room);
        let bus = MemoryBus::new();
        let hub = Hub::start(&bus, chat.backend.clone(), 100, EdgeMetrics::default())
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
            &[],
        )
        .await;
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
        let hub = Hub::start(&bus, chat.backend.clone(), 100, EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join(&channel, 1, "u", out.clone(), true)
            .await
            .expect("join");
        hub.open_gate(&channel, &gate, &out, None, 1, &[]).await;
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
        let bus = RedisBus::connect(&redis_url, None, &prefix, keys)
            .await
            .unwrap_or_else(|e| panic!("PARLEY_TEST_REDIS_URL is set but Redis is unusable: {e}"));
        let chat = chat().await;
        let room = chat.room_with(0).await; // seq 1
        let channel = room_channel(&room);
        let hub = Hub::start(&bus, chat.backend.clone(), 100, EdgeMetrics::default())
            .await
            .expect("hub");
        let (out, rx) = outbox(1 << 20);
        let mut rx = frames(rx);
        let gate = hub
            .join(&channel, 1, "u", out.clone(), true)
            .await
            .expect("join");
        hub.open_gate(&channel, &gate, &out, None, 1, &["zoe".to_string()])
            .await;
        let start = hub.lookup_start();
        hub.learn_presence(start, &HashMap::from([("zoe".to_string(), true)]));
        assert_eq!(
            hub.room_presence(&channel).expect("followed").online,
            ["zoe"]
        );

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
                    ..SendMessageRequest::default()
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
        assert_eq!(
            hub.room_presence(&channel).expect("followed").unknown,
            ["zoe"],
            "presence the bus may have missed is not known any more"
        );
    }
}
