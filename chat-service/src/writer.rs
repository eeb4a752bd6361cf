//! Group commit for the room logs. Every append to a log — a message, an
//! edit, a delete, a reaction, a membership change, a new room — is a job for
//! one writer task. The task takes whatever is queued, runs each job in a
//! savepoint of its own inside one transaction (a refused job never undoes
//! another), commits once, then publishes the committed events in commit
//! order and answers each caller. Many rooms share one commit and one fsync;
//! within a room, seqs follow the order of jobs, and so does the bus.

use std::sync::Arc;

use common::bus::{Bus, envelope, room_channel, user_channel};
use common::metrics::ChatMetrics;
use proto::chat::v1::{Message, Notification, Room, RoomEvent, Sanction, User};
use protocol::NotificationNew;
use sqlx::{AnyConnection, Connection};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use crate::error::ChatError;
use crate::store::{NewRoom, RoomChanges, Store};

/// Most jobs committed together.
const MAX_BATCH: usize = 1024;
/// Jobs waiting for the writer before submitters wait too (back-pressure).
const QUEUE: usize = 8192;

/// One change to a room log.
pub(crate) enum Op {
    CreateRoom(NewRoom),
    AddMember {
        room_id: String,
        user: User,
    },
    RemoveMember {
        room_id: String,
        user: User,
    },
    InsertMessage {
        message: Message,
        /// Mentions, stored with the message and sent to the users' channels.
        notifications: Vec<Notification>,
    },
    EditMessage {
        room_id: String,
        message_id: String,
        text: String,
    },
    DeleteMessage {
        room_id: String,
        message_id: String,
    },
    AddReaction {
        room_id: String,
        message_id: String,
        user: User,
        emoji: String,
        max_emoji: i64,
    },
    RemoveReaction {
        room_id: String,
        message_id: String,
        user: User,
        emoji: String,
    },
    UpdateRoom {
        room_id: String,
        changes: RoomChanges,
        by: User,
    },
    DeleteRoom {
        room_id: String,
        by: User,
    },
    SetRole {
        room_id: String,
        user_id: String,
        role: protocol::Role,
        by: User,
    },
    Sanction {
        room_id: String,
        user_id: String,
        sanction: Sanction,
        until: Option<i64>,
        by: User,
    },
}

/// What a committed job changed. Empty `events` means it changed nothing
/// (e.g. joining a room one is already in).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub room: Option<Room>,
    pub message: Option<Message>,
    pub events: Vec<RoomEvent>,
    pub notifications: Vec<Notification>,
}

struct Job {
    op: Op,
    reply: oneshot::Sender<Result<Applied, ChatError>>,
    /// The caller's span: the job's SQL spans are its children.
    span: tracing::Span,
}

/// A finished job: where to answer, the result, and the caller's span.
type Done = (
    oneshot::Sender<Result<Applied, ChatError>>,
    Result<Applied, ChatError>,
    tracing::Span,
);

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub(crate) struct Writer {
    jobs: mpsc::Sender<Job>,
}

impl Writer {
    /// Starts the writer task; it ends when every handle is dropped.
    pub(crate) fn start(store: Store, bus: Arc<dyn Bus>, metrics: ChatMetrics) -> Writer {
        let (jobs, queue) = mpsc::channel(QUEUE);
        tokio::spawn(run(store, bus, queue, metrics));
        Writer { jobs }
    }

    /// Appends to a log; resolves once the change is committed and published.
    pub(crate) async fn submit(&self, op: Op) -> Result<Applied, ChatError> {
        let (reply, answer) = oneshot::channel();
        let job = Job {
            op,
            reply,
            span: tracing::Span::current(),
        };
        self.jobs
            .send(job)
            .await
            .map_err(|_| ChatError::Commit("the writer has stopped".into()))?;
        answer
            .await
            .map_err(|_| ChatError::Commit("the writer dropped the job".into()))?
    }
}

async fn run(
    store: Store,
    bus: Arc<dyn Bus>,
    mut queue: mpsc::Receiver<Job>,
    metrics: ChatMetrics,
) {
    let mut batch = Vec::with_capacity(MAX_BATCH);
    while queue.recv_many(&mut batch, MAX_BATCH).await > 0 {
        metrics.writer_queue_depth.set(queue.len() as i64);
        let jobs = std::mem::take(&mut batch);
        let size = jobs.len();
        metrics.commit_batch_size.observe(size as f64);
        let started = std::time::Instant::now();
        let done = commit(&store, jobs)
            .instrument(tracing::debug_span!("chat.commit", jobs = size))
            .await;
        metrics
            .commit_duration
            .observe(started.elapsed().as_secs_f64());
        for (reply, result, span) in done {
            if let Ok(applied) = &result {
                for event in &applied.events {
                    metrics
                        .events_appended
                        .get_or_create(&[("kind", event_kind_label(&event.kind))])
                        .inc();
                }
                // In the caller's span, so envelopes carry its trace context.
                publish(bus.as_ref(), applied).instrument(span).await;
            }
            let _ = reply.send(result);
        }
    }
}

/// Runs the jobs in one transaction; every result is final (a failed commit
/// fails every job of the batch, and nothing of it is stored).
async fn commit(store: &Store, jobs: Vec<Job>) -> Vec<Done> {
    let mut conn = match store.appender.acquire().await {
        Ok(conn) => conn,
        Err(error) => return fail_all(jobs, &ChatError::from(error)),
    };
    let mut tx = match conn.begin().await {
        Ok(tx) => tx,
        Err(error) => return fail_all(jobs, &ChatError::from(error)),
    };
    let mut done = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter().peekable();
    while let Some(job) = jobs.next() {
        if !matches!(job.op, Op::InsertMessage { .. }) {
            let result = apply(store, &mut tx, job.op)
                .instrument(job.span.clone())
                .await;
            done.push((job.reply, result, job.span));
            continue;
        }
        // Consecutive messages are stored together.
        let mut run = vec![job];
        while let Some(next) = jobs.next_if(|j| matches!(j.op, Op::InsertMessage { .. })) {
            run.push(next);
        }
        done.extend(insert_messages(store, &mut tx, run).await);
    }
    let committed = tx.commit().instrument(store.span("sql COMMIT")).await;
    if let Err(error) = committed {
        let error = ChatError::from(error);
        tracing::warn!(%error, jobs = done.len(), "group commit failed");
        for (_, result, _) in &mut done {
            if result.is_ok() {
                *result = Err(ChatError::Commit(error.to_string()));
            }
        }
    }
    done
}

/// Stores a run of messages with one multi-row write; falls back to one
/// savepoint per message when the run holds a repeated `client_msg_id` or a
/// missing room, so each of those gets its own answer.
async fn insert_messages(store: &Store, conn: &mut AnyConnection, run: Vec<Job>) -> Vec<Done> {
    let mut batch = Vec::with_capacity(run.len());
    let mut callers = Vec::with_capacity(run.len());
    for job in run {
        if let Op::InsertMessage {
            message,
            notifications,
        } = job.op
        {
            batch.push((message, notifications));
            callers.push((job.reply, job.span));
        }
    }
    if batch.len() > 1 {
        // The SQL belongs to the first caller's trace and links the others'.
        let span =
            tracing::info_span!(parent: &callers[0].1, "chat.group_commit", messages = batch.len());
        for (_, other) in &callers[1..] {
            span.follows_from(other);
        }
        match store.insert_messages(conn, &batch).instrument(span).await {
            Ok(Some(stored)) => {
                return stored
                    .into_iter()
                    .zip(batch)
                    .zip(callers)
                    .map(|(((message, event), (_, notifications)), (reply, span))| {
                        let applied = Applied {
                            message: Some(message),
                            events: vec![event],
                            notifications,
                            ..Applied::default()
                        };
                        (reply, Ok(applied), span)
                    })
                    .collect();
            }
            Ok(None) => {}
            Err(error) => tracing::warn!(%error, "multi-row insert failed; storing one by one"),
        }
    }
    let mut done = Vec::with_capacity(batch.len());
    for ((message, notifications), (reply, span)) in batch.into_iter().zip(callers) {
        let op = Op::InsertMessage {
            message,
            notifications,
        };
        let result = apply(store, conn, op).instrument(span.clone()).await;
        done.push((reply, result, span));
    }
    done
}

fn fail_all(jobs: Vec<Job>, error: &ChatError) -> Vec<Done> {
    tracing::warn!(%error, jobs = jobs.len(), "cannot start a group commit");
    jobs.into_iter()
        .map(|job| {
            (
                job.reply,
                Err(ChatError::Commit(error.to_string())),
                job.span,
            )
        })
        .collect()
}

/// One job, in a savepoint of its own (the store's operations begin a
/// nested transaction on the connection they are given).
async fn apply(store: &Store, conn: &mut AnyConnection, op: Op) -> Result<Applied, ChatError> {
    let event = |e: Option<RoomEvent>| Applied {
        events: e.into_iter().collect(),
        ..Applied::default()
    };
    Ok(match op {
        Op::CreateRoom(new) => {
            let (room, events) = store.create_room(conn, new).await?;
            Applied {
                room: Some(room),
                events,
                ..Applied::default()
            }
        }
        Op::AddMember { room_id, user } => event(store.add_member(conn, &room_id, &user).await?),
        Op::RemoveMember { room_id, user } => {
            event(store.remove_member(conn, &room_id, &user).await?)
        }
        Op::InsertMessage {
            message,
            notifications,
        } => {
            let (message, event) = store.insert_message(conn, message, &notifications).await?;
            Applied {
                message: Some(message),
                events: vec![event],
                notifications,
                ..Applied::default()
            }
        }
        Op::EditMessage {
            room_id,
            message_id,
            text,
        } => {
            let (message, event) = store
                .edit_message(conn, &room_id, &message_id, &text)
                .await?;
            Applied {
                message: Some(message),
                events: vec![event],
                ..Applied::default()
            }
        }
        Op::DeleteMessage {
            room_id,
            message_id,
        } => event(store.delete_message(conn, &room_id, &message_id).await?),
        Op::AddReaction {
            room_id,
            message_id,
            user,
            emoji,
            max_emoji,
        } => event(
            store
                .add_reaction(conn, &room_id, &message_id, &user, &emoji, max_emoji)
                .await?,
        ),
        Op::RemoveReaction {
            room_id,
            message_id,
            user,
            emoji,
        } => event(
            store
                .remove_reaction(conn, &room_id, &message_id, &user, &emoji)
                .await?,
        ),
        Op::UpdateRoom {
            room_id,
            changes,
            by,
        } => {
            let (room, event) = store.update_room(conn, &room_id, changes, &by).await?;
            Applied {
                room: Some(room),
                events: vec![event],
                ..Applied::default()
            }
        }
        Op::DeleteRoom { room_id, by } => {
            event(Some(store.delete_room(conn, &room_id, &by).await?))
        }
        Op::SetRole {
            room_id,
            user_id,
            role,
            by,
        } => Applied {
            events: store.set_role(conn, &room_id, &user_id, role, &by).await?,
            ..Applied::default()
        },
        Op::Sanction {
            room_id,
            user_id,
            sanction,
            until,
            by,
        } => Applied {
            events: store
                .sanction(conn, &room_id, &user_id, sanction, until, &by)
                .await?,
            ..Applied::default()
        },
    })
}

/// A room-log event kind as a metric label: one of the protocol's frame
/// types, or `other` (so the label set stays closed).
fn event_kind_label(kind: &str) -> &'static str {
    protocol::ServerFrame::ALL
        .iter()
        .find(|(name, _)| *name == kind)
        .map_or("other", |(name, _)| name)
}

/// Publishes committed events on their rooms' channels and notifications
/// on their users' channels. The log is the source of truth, so a failed
/// publish only delays delivery until edges repair the gap.
async fn publish(bus: &dyn Bus, applied: &Applied) {
    for event in &applied.events {
        let envelope = envelope(&event.room_id, event.seq, &event.kind, event.json.clone());
        if let Err(error) = bus.publish(&room_channel(&event.room_id), &envelope).await {
            tracing::warn!(room_id = %event.room_id, seq = event.seq, %error, "cannot publish room event");
        }
    }
    for notification in &applied.notifications {
        let event = NotificationNew::frame(notification);
        let envelope = envelope("", 0, event.kind(), event.to_json());
        if let Err(error) = bus
            .publish(&user_channel(&notification.user_id), &envelope)
            .await
        {
            tracing::warn!(%error, "cannot publish notification");
        }
    }
}
