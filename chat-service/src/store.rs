//! The chat store: rooms, members, messages and each room's event log in
//! SQLite or Postgres, through one sqlx `Any` pool and one set of portable
//! migrations.
//!
//! Every persistent change to a room takes the room's next `seq` (an
//! `UPDATE rooms … RETURNING last_seq`, which also serialises appends to one
//! room) and stores its log event in the same transaction, so the log never
//! has a gap or a change without its event. The update holds the room's row
//! lock until the transaction ends, which makes this hold across replicas
//! sharing a Postgres database too: another writer's append waits for the
//! commit and then reads the committed `last_seq`, so no seq is taken twice,
//! and seq k+1 is taken only after seq k committed — a reader never sees a
//! seq before every lower one (docs/architecture.md, "Replicas"). Every
//! operation runs in a `sql` span, a child of the gRPC call that caused it.

mod attachments;
mod blocks;
mod cleanup;
mod erasure;
mod invitations;
pub(crate) mod log;
mod messages;
mod moderation;
mod notifications;
mod reactions;
mod receipts;
pub(crate) mod recent;
mod rooms;
mod rows;
pub(crate) mod webhooks;

pub(crate) use moderation::{DirectoryPage, MembersPage, RoomChanges};

use std::sync::Arc;
use std::time::Duration;

use proto::chat::v1::{Message, Room, RoomEvent, User, Visibility};
use protocol::{MessageEvent, ServerFrame};
use sqlx::any::{AnyArguments, AnyPoolOptions};
use sqlx::query::Query;
use sqlx::{Any, AnyPool, Row, Transaction};
use tracing::Instrument;

use crate::error::ChatError;
use recent::{Cached, RecentEvents};

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// How long a call waits for a pooled connection before `unavailable`.
const ACQUIRE_TIMEOUT: Duration = Duration::from_secs(5);

/// The database behind chat-service.
#[derive(Clone)]
pub(crate) struct Store {
    /// Pool for reads and for the small writes outside the room logs
    /// (receipts, notification read marks).
    reader: AnyPool,
    /// One connection of its own for the writer task (`writer.rs`), which
    /// makes every room-log append: never queued behind reads.
    pub(crate) appender: AnyPool,
    /// Whether parameters are written `?` (SQLite, where binding `$N` by
    /// name costs time linear in the statement's parameter count) or `$N`.
    positional: bool,
    /// `sqlite` or `postgresql`, for span attributes.
    system: &'static str,
    /// The SQLite database file (`None` on Postgres and in memory): the
    /// health probe checks it is still there and still a database, which
    /// open connections reading from their cache would not notice.
    sqlite_file: Option<std::path::PathBuf>,
    /// Per-user caps checked in the transaction that would pass them.
    pub(crate) caps: Caps,
    /// Bumped after every commit of this process's writer: wakes `Watch`
    /// streams and the webhook planner (other replicas' commits are found
    /// by polling).
    pub(crate) appended: Arc<tokio::sync::watch::Sender<u64>>,
    /// The latest events of busy rooms, for `since` reads (`recent.rs`).
    pub(crate) recent: Arc<RecentEvents>,
}

/// Per-user caps from configuration.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Caps {
    /// Most rooms one user is a member of (`chat.max_memberships_per_user`).
    pub memberships: u32,
    /// Most notifications stored per user (`chat.max_notifications_per_user`):
    /// a new one drops the oldest.
    pub notifications: u32,
    /// Most users one user blocks (`chat.max_blocks_per_user`).
    pub blocks: u32,
    /// Most pending invitations one user may have
    /// (`chat.max_pending_invitations_per_user`).
    pub invitations: u32,
}

impl Default for Caps {
    fn default() -> Self {
        Self {
            memberships: 1_000,
            notifications: 1_000,
            blocks: 1_000,
            invitations: 100,
        }
    }
}

/// A room to create.
pub(crate) struct NewRoom {
    pub id: String,
    pub name: String,
    pub visibility: Visibility,
    pub owner: User,
    /// Sorted pair of a direct room.
    pub direct_key: Option<String>,
    /// Members besides the owner.
    pub members: Vec<User>,
    pub created_at: i64,
}

/// A user's membership of a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Membership {
    pub role: protocol::Role,
    /// Until when the member is muted (`i64::MAX`: until unmuted).
    pub muted_until: Option<i64>,
}

impl Membership {
    /// Whether the member is muted at `now` (ms).
    pub(crate) fn muted(&self, now: i64) -> bool {
        self.muted_until.is_some_and(|until| until > now)
    }
}

/// A room as a user's call finds it.
pub(crate) struct RoomAndRole {
    pub room: Room,
    /// The user's membership; `None` when not a member.
    pub membership: Option<Membership>,
    /// The highest seq retention deleted from the room's log (0: none).
    pub truncated_seq: i64,
}

/// A page of history.
pub(crate) struct HistoryQuery<'a> {
    pub room_id: &'a str,
    pub before: Option<i64>,
    pub after: Option<i64>,
    pub thread_id: Option<&'a str>,
    pub limit: u32,
}

/// Placeholders for `values` (bound as text), comma-separated.
fn in_list(params: &mut Params, values: &[String]) -> String {
    values
        .iter()
        .map(|v| params.push(Bind::Text(v.clone())))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A value bound to a dynamically built query.
enum Bind {
    Text(String),
    OptText(Option<String>),
    Int(i64),
}

impl Store {
    /// Connects to `url` (`sqlite:` or `postgres://`), creating the SQLite
    /// file's directory on demand, and runs the migrations.
    pub(crate) async fn connect(url: &str, max_connections: u32) -> Result<Store, ChatError> {
        sqlx::any::install_default_drivers();
        let sqlite = url.starts_with("sqlite:");
        let sqlite_file = sqlite.then(|| sqlite_path(url)).flatten();
        if let Some(file) = &sqlite_file {
            create_sqlite_dir(file)?;
        }
        let setup = |e: sqlx::Error| ChatError::Setup(e.to_string());
        let pool = |max: u32| {
            AnyPoolOptions::new()
                .max_connections(max)
                .acquire_timeout(ACQUIRE_TIMEOUT)
                // sqlx pings every connection it hands out by default: one
                // more round trip per statement (to SQLite's worker thread,
                // or to Postgres). A broken connection fails its statement
                // instead, and the pool replaces it.
                .test_before_acquire(false)
        };
        let appender = pool(1).connect(url).await.map_err(setup)?;
        if sqlite {
            // Readers then never block the writer, nor it them.
            sqlx::query("PRAGMA journal_mode = WAL")
                .execute(&appender)
                .await
                .map_err(setup)?;
        }
        MIGRATOR
            .run(&appender)
            .await
            .map_err(|e| ChatError::Setup(format!("migrations: {e}")))?;
        let reader = pool(max_connections).connect(url).await.map_err(setup)?;
        Ok(Store {
            reader,
            appender,
            positional: sqlite,
            system: if sqlite { "sqlite" } else { "postgresql" },
            sqlite_file,
            caps: Caps::default(),
            appended: Arc::new(tokio::sync::watch::Sender::new(0)),
            recent: Arc::new(RecentEvents::new(0, 0)),
        })
    }

    /// Whether the database answers a read of the room table (which, on
    /// SQLite, reads the file itself).
    pub(crate) async fn ping(&self) -> bool {
        if let Some(file) = &self.sqlite_file
            && !is_sqlite_file(file).await
        {
            return false;
        }
        sqlx::query("SELECT COUNT(*) FROM rooms")
            .fetch_one(&self.reader)
            .await
            .is_ok()
    }

    /// The span of one statement, named like `sql UPDATE messages`; it
    /// carries the OpenTelemetry database attributes (`db.system`,
    /// `db.operation.name`, `db.collection.name`).
    pub(crate) fn span(&self, name: &'static str) -> tracing::Span {
        let mut words = name.strip_prefix("sql ").unwrap_or(name).split_whitespace();
        let operation = words.next().unwrap_or_default();
        let collection = words.next().unwrap_or_default();
        tracing::info_span!(
            "sql",
            otel.name = name,
            otel.kind = "client",
            db.system = self.system,
            db.operation.name = operation,
            db.collection.name = collection,
        )
    }

    /// Log events with `after < seq <= upto`, in order, at most `limit`, and
    /// whether more follow within that range.
    pub(crate) async fn events(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<(Vec<RoomEvent>, bool), ChatError> {
        async {
            let rows = sqlx::query(
                "SELECT room_id, seq, kind, body FROM room_events \
                 WHERE room_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
            )
            .bind(room_id.to_string())
            .bind(after)
            .bind(upto)
            .bind(i64::from(limit) + 1)
            .fetch_all(&self.reader)
            .await?;
            let mut events = rows
                .iter()
                .map(|row| {
                    Ok(RoomEvent {
                        room_id: row.try_get("room_id")?,
                        seq: row.try_get("seq")?,
                        kind: row.try_get("kind")?,
                        json: row.try_get("body")?,
                    })
                })
                .collect::<Result<Vec<_>, sqlx::Error>>()?;
            let has_more = events.len() > limit as usize;
            events.truncate(limit as usize);
            Ok((events, has_more))
        }
        .instrument(self.span("sql SELECT room_events"))
        .await
    }

    /// Log events with `after < seq <= upto` (`upto` the room's `last_seq`
    /// as just read), at most `limit`: from the cache of recent events when
    /// it holds them all, else from the log (which then fills the cache).
    /// The second value says whether more follow; `hit` whether the cache
    /// answered.
    pub(crate) async fn events_since(
        &self,
        room_id: &str,
        after: i64,
        upto: i64,
        limit: u32,
    ) -> Result<(Vec<RoomEvent>, bool, bool), ChatError> {
        if upto.saturating_sub(after) <= i64::from(limit)
            && let Cached::Hit(events) = self.recent.read(room_id, after, upto)
        {
            return Ok((events, false, true));
        }
        let (events, has_more) = self.events(room_id, after, upto, limit).await?;
        if !has_more {
            self.recent.fill(room_id, after, upto, &events);
        }
        Ok((events, has_more, false))
    }
}

/// The parameters of a statement built at run time, with the placeholder
/// style the database binds fastest.
struct Params {
    positional: bool,
    binds: Vec<Bind>,
}

impl Params {
    fn new(positional: bool) -> Self {
        Self {
            positional,
            binds: Vec::new(),
        }
    }

    /// Adds a value; returns its placeholder (`?` or `$N`).
    fn push(&mut self, bind: Bind) -> String {
        self.binds.push(bind);
        if self.positional {
            "?".to_string()
        } else {
            format!("${}", self.binds.len())
        }
    }

    fn query(self, sql: &str) -> Query<'_, Any, AnyArguments<'_>> {
        bind_all(sqlx::query(sql), self.binds)
    }
}

/// Takes the room's next seq; `NotFound` when the room does not exist.
async fn next_seq(tx: &mut Transaction<'_, Any>, room_id: &str) -> Result<i64, ChatError> {
    let row =
        sqlx::query("UPDATE rooms SET last_seq = last_seq + 1 WHERE id = $1 RETURNING last_seq")
            .bind(room_id.to_string())
            .fetch_optional(&mut **tx)
            .await?;
    match row {
        Some(row) => Ok(row.try_get("last_seq")?),
        None => Err(ChatError::NotFound("room")),
    }
}

async fn insert_event(
    tx: &mut Transaction<'_, Any>,
    event: &RoomEvent,
    message_id: Option<&str>,
    now: i64,
) -> Result<(), ChatError> {
    let position = log::take_positions(tx, 1).await?;
    sqlx::query(
        "INSERT INTO room_events (room_id, seq, kind, body, created_at, message_id, position) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(event.room_id.clone())
    .bind(event.seq)
    .bind(event.kind.clone())
    .bind(event.json.clone())
    .bind(now)
    .bind(message_id.map(str::to_string))
    .bind(position)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

/// A room-log event: the frame clients get, stored as its JSON.
fn log_event(frame: ServerFrame) -> RoomEvent {
    let (room_id, seq) = frame
        .room_seq()
        .map_or((String::new(), 0), |(room, seq)| (room.to_string(), seq));
    RoomEvent {
        room_id,
        seq,
        kind: frame.kind().to_string(),
        json: frame.to_json(),
    }
}

/// The `message.new` event of a stored message.
fn message_new(message: &Message) -> RoomEvent {
    log_event(ServerFrame::MessageNew(MessageEvent {
        room: message.room_id.clone(),
        seq: message.seq,
        message: protocol::Message::from(message),
    }))
}

fn bind_all<'q>(
    mut query: Query<'q, Any, AnyArguments<'q>>,
    binds: Vec<Bind>,
) -> Query<'q, Any, AnyArguments<'q>> {
    for bind in binds {
        query = match bind {
            Bind::Text(s) => query.bind(s),
            Bind::OptText(s) => query.bind(s),
            Bind::Int(n) => query.bind(n),
        };
    }
    query
}

/// Creates the directory of a `sqlite:` URL's file.
/// The file of a `sqlite:` URL; `None` for an in-memory database.
fn sqlite_path(url: &str) -> Option<std::path::PathBuf> {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    let path = path.split('?').next().unwrap_or_default();
    (!path.is_empty() && path != ":memory:").then(|| path.into())
}

/// Whether `file` exists and starts with SQLite's header.
async fn is_sqlite_file(file: &std::path::Path) -> bool {
    let file = file.to_path_buf();
    let read = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut header = [0u8; 16];
        std::fs::File::open(file)
            .and_then(|mut f| f.read_exact(&mut header))
            .map(|()| &header == b"SQLite format 3\0")
    });
    matches!(read.await, Ok(Ok(true)))
}

fn create_sqlite_dir(path: &std::path::Path) -> Result<(), ChatError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| ChatError::Setup(format!("cannot create {}: {e}", dir.display())))?;
    }
    Ok(())
}
