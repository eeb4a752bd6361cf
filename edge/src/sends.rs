//! The edge's `message.send`s to chat-service: one long-lived
//! `SendMessages` stream carries every connection's sends, in order, with
//! each send's user and trace context, and brings each answer back by id.
//! A send is handed to the stream at once, so a connection's next send to
//! the same room goes out without waiting for the first's commit, and
//! chat-service stores a lane's sends in the order they came (one lane
//! per connection and room). A stream that breaks fails the sends it holds
//! with `unavailable` (a client retries them with the same
//! `client_msg_id`); the next send opens a new one.

use std::collections::HashMap;
use std::future::Future;
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::grpc::{Actor, ServiceChannel};
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::send_messages_result::Outcome;
use proto::chat::v1::{SendMessageRequest, SendMessageResponse, SendMessagesItem};
use tokio::sync::{mpsc, oneshot};
use tonic::Status;

/// Sends waiting to go out on one stream; past it a send is refused as
/// `unavailable` (retry) rather than queued without bound.
const QUEUE: usize = 16_384;

type Answer = oneshot::Sender<Result<SendMessageResponse, Status>>;

/// The send stream; cheap to share.
pub(crate) struct Sends {
    chat: ChatServiceClient<ServiceChannel>,
    /// How long a send waits for its answer (`edge.call_timeout_ms`).
    deadline: Duration,
    open: Mutex<Option<Arc<Stream>>>,
    next_id: AtomicU64,
}

/// One open stream.
struct Stream {
    /// Dropped with the last handle, which ends the stream.
    items: mpsc::Sender<SendMessagesItem>,
    /// Shared with the task reading the answers.
    waiting: Arc<Mutex<Waiting>>,
}

#[derive(Default)]
struct Waiting {
    /// Set once the stream has ended: no send waits on it any more.
    closed: bool,
    answers: HashMap<u64, Answer>,
}

impl Sends {
    pub(crate) fn new(chat: ChatServiceClient<ServiceChannel>, deadline: Duration) -> Self {
        Self {
            chat,
            deadline,
            open: Mutex::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    /// Hands a send to the stream now, in the current span's trace; sends
    /// of one `lane` are stored in the order they were handed over. The
    /// future is the answer.
    pub(crate) fn send(
        &self,
        actor: &Actor,
        lane: u64,
        request: SendMessageRequest,
    ) -> impl Future<Output = Result<SendMessageResponse, Status>> + Send + 'static {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let item = SendMessagesItem {
            id,
            lane,
            request: Some(request),
            user_id: actor.user_id.clone(),
            user_name: actor.name.clone(),
            anonymous: actor.anonymous,
            trace_context: common::trace::current_context_map(),
        };
        let (answer, answered) = oneshot::channel();
        let handed = self.hand(id, item, answer);
        let deadline = self.deadline;
        async move {
            let stream = handed?;
            match tokio::time::timeout(deadline, answered).await {
                Ok(Ok(result)) => result,
                Ok(Err(_)) => Err(Status::unavailable("the send stream to chat ended")),
                Err(_) => {
                    stream.forget(id);
                    Err(Status::deadline_exceeded(
                        "chat did not answer the send in time",
                    ))
                }
            }
        }
    }

    fn hand(&self, id: u64, item: SendMessagesItem, answer: Answer) -> Result<Arc<Stream>, Status> {
        let stream = {
            let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
            match &*open {
                Some(stream) if !stream.closed() => stream.clone(),
                _ => {
                    let stream = self.start();
                    *open = Some(stream.clone());
                    stream
                }
            }
        };
        {
            let mut waiting = stream.waiting();
            if waiting.closed {
                return Err(Status::unavailable("the send stream to chat ended"));
            }
            waiting.answers.insert(id, answer);
        }
        // Under the caller's lane order: the item is queued before the
        // lane's next send is.
        if stream.items.try_send(item).is_err() {
            stream.forget(id);
            return Err(common::ErrorCode::Unavailable.status("too many sends waiting for chat"));
        }
        Ok(stream)
    }

    /// Opens a stream; its task reads the answers until it ends.
    fn start(&self) -> Arc<Stream> {
        let (items, queued) = mpsc::channel(QUEUE);
        let stream = Arc::new(Stream {
            items,
            waiting: Arc::default(),
        });
        let mut chat = self.chat.clone();
        let reader = stream.waiting.clone();
        tokio::spawn(async move {
            let queued = tokio_stream::wrappers::ReceiverStream::new(queued);
            let ended = match chat.send_messages(queued).await {
                Ok(answers) => read(answers.into_inner(), &reader).await,
                Err(status) => status,
            };
            close(&reader, &ended);
        });
        stream
    }
}

/// Answers sends until the stream ends; how it ended.
async fn read(
    mut answers: tonic::Streaming<proto::chat::v1::SendMessagesResult>,
    waiting: &Mutex<Waiting>,
) -> Status {
    loop {
        match answers.message().await {
            Ok(Some(result)) => {
                let answer = lock(waiting).answers.remove(&result.id);
                let outcome = match result.outcome {
                    Some(Outcome::Sent(sent)) => Ok(sent),
                    Some(Outcome::Failed(failed)) => {
                        Err(common::grpc::status_from_headers(&failed.headers))
                    }
                    None => Err(Status::internal("an answer without an outcome")),
                };
                if let Some(answer) = answer {
                    let _ = answer.send(outcome);
                }
            }
            Ok(None) => return Status::unavailable("chat ended the send stream"),
            Err(status) => return status,
        }
    }
}

impl Stream {
    fn waiting(&self) -> std::sync::MutexGuard<'_, Waiting> {
        lock(&self.waiting)
    }

    fn closed(&self) -> bool {
        self.waiting().closed
    }

    fn forget(&self, id: u64) {
        self.waiting().answers.remove(&id);
    }
}

fn lock(waiting: &Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|p| p.into_inner())
}

/// Fails every send still waiting once the stream has ended (a send that
/// never reached chat is as good as not sent: `unavailable`).
fn close(waiting: &Mutex<Waiting>, ended: &Status) {
    let answers = {
        let mut waiting = lock(waiting);
        waiting.closed = true;
        std::mem::take(&mut waiting.answers)
    };
    if !answers.is_empty() {
        tracing::warn!(sends = answers.len(), status = %ended.message(), "the send stream to chat ended");
    }
    for (_, answer) in answers {
        let _ = answer.send(Err(Status::unavailable(format!(
            "the send stream to chat ended: {}",
            ended.message()
        ))));
    }
}

/// The lane of a connection's sends to one room.
pub(crate) fn lane(conn_id: &str, room: &str) -> u64 {
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    (conn_id, room).hash(&mut hasher);
    hasher.finish()
}
