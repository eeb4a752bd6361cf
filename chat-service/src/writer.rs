//! Group commit for the room logs. Every append to a log — a message, an
//! edit, a delete, a reaction, a membership change, a new room — is a job for
//! one writer task. The task takes whatever is queued, runs each job in a
//! savepoint of its own inside one transaction (a refused job never undoes
//! another), commits once, then hands the committed events to the
//! [`Publisher`] in commit order and answers each caller at once: a commit
//! never waits for the bus. Many rooms share one commit and one fsync;
//! within a room, seqs follow the order of jobs, and so does the bus.

use std::sync::Arc;

use crate::publisher::{self, Publication, Publisher};
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
    Invite {
        room_id: String,
        user: User,
        by: User,
    },
    AcceptInvitation {
        room_id: String,
        user: User,
    },
    DeclineInvitation {
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

impl Op {
    /// Whether the job may join a multi-row insert: a message without
    /// attachments (claiming attachments takes statements of its own).
    fn batchable(&self) -> bool {
        matches!(self, Op::InsertMessage { message, .. } if message.attachments.is_empty())
    }
}

/// What a committed job changed. Empty `events` means it changed nothing
/// (e.g. joining a room one is already in).
#[derive(Debug, Default)]
pub(crate) struct Applied {
    pub room: Option<Room>,
    pub message: Option<Message>,
    pub events: Vec<RoomEvent>,
    pub notifications: Vec<Notification>,
    /// Whether the job also changed earlier events of its room (an edit or
    /// delete rewrites quotes and tombstones), not only appended.
    pub rewrote: bool,
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
        let publisher = Publisher::start(bus, publisher::QUEUE, metrics.clone());
        tokio::spawn(run(store, publisher, queue, metrics));
        Writer { jobs }
    }

    /// Appends to a log; resolves once the change is committed (and queued
    /// for publication).
    pub(crate) async fn submit(&self, op: Op) -> Result<Applied, ChatError> {
        self.enqueue(op).await?.committed().await
    }

    /// Queues a change: any job queued after this returns is applied after
    /// it (so a room's seqs follow this order). Waits only while the queue
    /// is full; [`Committing::committed`] waits for the commit.
    pub(crate) async fn enqueue(&self, op: Op) -> Result<Committing, ChatError> {
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
        Ok(Committing(answer))
    }
}

/// A queued job, until its commit.
pub(crate) struct Committing(oneshot::Receiver<Result<Applied, ChatError>>);

impl Committing {
    /// What the job changed, once committed (and queued for publication).
    pub(crate) async fn committed(self) -> Result<Applied, ChatError> {
        self.0
            .await
            .map_err(|_| ChatError::Commit("the writer dropped the job".into()))?
    }
}

async fn run(
    store: Store,
    publisher: Publisher,
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
                publisher.push(span.in_scope(|| publications(applied, &span)));
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
    // The log head first, before any room row (store/log.rs).
    if let Err(error) = crate::store::log::lock_head(&mut tx)
        .instrument(store.span("sql UPDATE log_head"))
        .await
    {
        return fail_all(jobs, &error);
    }
    let mut done = Vec::with_capacity(jobs.len());
    let mut jobs = jobs.into_iter().peekable();
    while let Some(job) = jobs.next() {
        if !job.op.batchable() {
            let result = apply(store, &mut tx, job.op)
                .instrument(job.span.clone())
                .await;
            done.push((job.reply, result, job.span));
            continue;
        }
        // Consecutive messages are stored together.
        let mut run = vec![job];
        while let Some(next) = jobs.next_if(|j| j.op.batchable()) {
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
    } else {
        for (_, result, _) in &done {
            let Ok(applied) = result else { continue };
            if applied.rewrote {
                for event in &applied.events {
                    store.recent.forget(&event.room_id);
                }
            } else {
                store.recent.committed(&applied.events);
            }
        }
        store.appended.send_modify(|n| *n = n.wrapping_add(1));
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
        Op::Invite { room_id, user, by } => event(store.invite(conn, &room_id, &user, &by).await?),
        Op::AcceptInvitation { room_id, user } => {
            let (room, event) = store.accept_invitation(conn, &room_id, &user).await?;
            Applied {
                room: Some(room),
                events: vec![event],
                ..Applied::default()
            }
        }
        Op::DeclineInvitation { room_id, user } => {
            event(Some(store.decline_invitation(conn, &room_id, &user).await?))
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
                rewrote: true,
                ..Applied::default()
            }
        }
        Op::DeleteMessage {
            room_id,
            message_id,
        } => Applied {
            rewrote: true,
            ..event(store.delete_message(conn, &room_id, &message_id).await?)
        },
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
        Op::DeleteRoom { room_id, by } => Applied {
            rewrote: true,
            ..event(Some(store.delete_room(conn, &room_id, &by).await?))
        },
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

/// The committed events for their rooms' channels and the notifications
/// for their users' channels, in order.
fn publications(applied: &Applied, span: &tracing::Span) -> Vec<Publication> {
    let rooms = applied.events.iter().map(|event| Publication {
        channel: room_channel(&event.room_id),
        envelope: envelope(&event.room_id, event.seq, &event.kind, event.json.clone()),
        span: span.clone(),
    });
    let users = applied.notifications.iter().map(|notification| {
        let event = NotificationNew::frame(notification);
        Publication {
            channel: user_channel(&notification.user_id),
            envelope: envelope("", 0, event.kind(), event.to_json()),
            span: span.clone(),
        }
    });
    rooms.chain(users).collect()
}

#[cfg(test)]
mod tests {
    use async_trait::async_trait;
    use common::bus::{BusError, BusEvent, Envelope, Subscriber};
    use proto::chat::v1::Visibility;

    use super::*;

    /// A frozen bus: every publish is announced, then never completes.
    struct FrozenBus {
        started: mpsc::UnboundedSender<i64>,
    }

    #[async_trait]
    impl Bus for FrozenBus {
        async fn publish(&self, _channel: &str, envelope: &Envelope) -> Result<(), BusError> {
            let _ = self.started.send(envelope.seq);
            std::future::pending().await
        }

        async fn subscriber(
            &self,
        ) -> Result<(Box<dyn Subscriber>, mpsc::UnboundedReceiver<BusEvent>), BusError> {
            Err(BusError::Unavailable("publish only".into()))
        }
    }

    fn message(room_id: &str, user: &User, n: usize) -> Op {
        Op::InsertMessage {
            message: Message {
                id: common::ids::new_id("m"),
                room_id: room_id.to_string(),
                sender: Some(user.clone()),
                text: format!("m{n}"),
                created_at: common::ids::now_ms(),
                client_msg_id: format!("c{n}"),
                ..Message::default()
            },
            notifications: Vec::new(),
        }
    }

    #[tokio::test]
    async fn commits_are_answered_while_the_bus_is_frozen() {
        let db = common::testing::test_database().await;
        let store = Store::connect(&db.url, 2).await.expect("store");
        let (started, mut publishes) = mpsc::unbounded_channel();
        let metrics = ChatMetrics::default();
        let writer = Writer::start(store, Arc::new(FrozenBus { started }), metrics.clone());
        let owner = User {
            id: "u1".into(),
            name: "one".into(),
        };
        let room = writer
            .submit(Op::CreateRoom(NewRoom {
                id: "r1".into(),
                name: "frozen".into(),
                visibility: Visibility::Public,
                owner: owner.clone(),
                direct_key: None,
                members: Vec::new(),
                created_at: common::ids::now_ms(),
            }))
            .await
            .expect("room created")
            .room
            .expect("room");
        // The first publication is stuck on the bus for good.
        let first = publishes.recv().await.expect("a publish started");
        let mut seqs = Vec::new();
        for n in 0..20 {
            let applied = writer
                .submit(message(&room.id, &owner, n))
                .await
                .expect("stored");
            seqs.push(applied.message.expect("message").seq);
        }
        assert_eq!(seqs, (first + 1..=first + 20).collect::<Vec<_>>());
        assert_eq!(metrics.publish_queue_depth.get(), 20);
    }
}
