//! `SendMessages`: an edge's sends over one long-lived stream instead of a
//! unary call each. Items are checked side by side, queued on the writer in
//! the order they arrived within their lane, and answered by id as each
//! commits, so one connection's sends to a room share group commits instead
//! of waiting a round trip each. Each item runs in a span of its own whose
//! parent is the trace context it carries, so a send keeps its one trace.

use std::collections::HashMap;
use std::pin::Pin;

use common::grpc::Actor;
use common::shutdown::ShutdownSignal;
use futures::stream::FuturesUnordered;
use futures::{Stream, StreamExt};
use proto::chat::v1::send_messages_result::Outcome;
use proto::chat::v1::{
    SendMessageRequest, SendMessageResponse, SendMessagesItem, SendMessagesResult, StatusHeaders,
};
use tokio::sync::{mpsc, oneshot};
use tonic::{Status, Streaming};
use tracing::Instrument;

use super::ChatHandler;
use crate::error::ChatError;

/// Items of one stream checked or committing at once; past it the stream
/// is not read (HTTP/2 flow control holds the edge back).
pub(crate) const MAX_IN_FLIGHT: usize = 4096;

/// The answers of one stream.
pub(crate) type SendResults =
    Pin<Box<dyn Stream<Item = Result<SendMessagesResult, Status>> + Send>>;

/// Where each lane's latest item signals that it has been queued (or
/// refused): the lane's next item waits for that before queuing.
#[derive(Default)]
struct Lanes {
    last: HashMap<u64, oneshot::Receiver<()>>,
    /// Size after the last sweep of finished lanes.
    swept: usize,
}

impl Lanes {
    /// The turn of a new item on `lane`: what it waits for before queuing,
    /// and what it drops once queued.
    fn turn(&mut self, lane: u64) -> (Option<oneshot::Receiver<()>>, oneshot::Sender<()>) {
        let (queued, next) = oneshot::channel();
        let previous = self.last.insert(lane, next);
        if self.last.len() > 2 * self.swept.max(512) {
            // A lane whose last item is queued has nothing to wait for.
            self.last
                .retain(|_, rx| matches!(rx.try_recv(), Err(oneshot::error::TryRecvError::Empty)));
            self.swept = self.last.len();
        }
        (previous, queued)
    }
}

impl ChatHandler {
    /// Answers `items` until the caller closes its side or `shutdown`
    /// fires; then the items already read are answered and the stream
    /// ends, and the edge opens a new one (to another replica).
    pub(crate) fn send_stream(
        &self,
        items: Streaming<SendMessagesItem>,
        shutdown: ShutdownSignal,
    ) -> SendResults {
        let (results, answers) = mpsc::channel(MAX_IN_FLIGHT);
        tokio::spawn(run(self.clone(), items, results, shutdown));
        Box::pin(tokio_stream::wrappers::ReceiverStream::new(answers))
    }

    /// One item: checked side by side with others, queued in its lane's
    /// turn, answered once committed.
    async fn send_item(
        &self,
        item: SendMessagesItem,
        previous: Option<oneshot::Receiver<()>>,
        queued: oneshot::Sender<()>,
    ) -> Result<SendMessageResponse, ChatError> {
        let prepared = match sender_of(item) {
            Ok((actor, request)) => self.prepare_send(&actor, request).await,
            Err(error) => Err(error),
        };
        // Even a refused item waits for its turn before giving it up, so
        // the lane's next item never overtakes an earlier one.
        if let Some(previous) = previous {
            // Sent or dropped: either way the earlier item is queued or refused.
            let _ = previous.await;
        }
        let queued_send = match prepared {
            Ok(prepared) => self.queue(prepared).await,
            Err(error) => Err(error),
        };
        drop(queued);
        self.settle(queued_send?).await
    }
}

/// The end user and the send an item carries.
fn sender_of(item: SendMessagesItem) -> Result<(Actor, SendMessageRequest), ChatError> {
    let request = item
        .request
        .ok_or_else(|| ChatError::BadRequest("request is missing".into()))?;
    if item.user_id.is_empty() {
        return Err(ChatError::BadRequest("user_id is missing".into()));
    }
    let actor = Actor {
        user_id: item.user_id,
        name: item.user_name,
        anonymous: item.anonymous,
    };
    Ok((actor, request))
}

async fn run(
    handler: ChatHandler,
    mut items: Streaming<SendMessagesItem>,
    results: mpsc::Sender<Result<SendMessagesResult, Status>>,
    shutdown: ShutdownSignal,
) {
    let mut lanes = Lanes::default();
    let mut in_flight = FuturesUnordered::new();
    let stopped = shutdown.wait();
    tokio::pin!(stopped);
    let mut reading = true;
    loop {
        tokio::select! {
            () = &mut stopped, if reading => reading = false,
            item = items.next(), if reading && in_flight.len() < MAX_IN_FLIGHT => match item {
                Some(Ok(item)) => {
                    let (previous, queued) = lanes.turn(item.lane);
                    in_flight.push(answer(handler.clone(), item, previous, queued));
                }
                // The caller closed its side, or the connection broke.
                Some(Err(_)) | None => reading = false,
            },
            Some(result) = in_flight.next() => {
                if results.send(Ok(result)).await.is_err() {
                    // The caller is gone; what is queued still commits.
                    reading = false;
                }
            }
            else => break,
        }
        if !reading && in_flight.is_empty() {
            break;
        }
    }
}

/// One item's answer, in a span whose parent is the item's trace context.
async fn answer(
    handler: ChatHandler,
    item: SendMessagesItem,
    previous: Option<oneshot::Receiver<()>>,
    queued: oneshot::Sender<()>,
) -> SendMessagesResult {
    let id = item.id;
    let span = tracing::info_span!(
        "chat.send",
        otel.name = "/parley.chat.v1.ChatService/SendMessages",
        otel.kind = "server",
        rpc.system = "grpc",
        parley.component = "chat",
        parley.room = %item.request.as_ref().map(|r| r.room_id.as_str()).unwrap_or_default(),
        parley.stream_item = id,
        rpc.grpc.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    common::trace::set_parent_from_map(&span, &item.trace_context);
    let result = handler
        .send_item(item, previous, queued)
        .instrument(span.clone())
        .await;
    let code = result.as_ref().map_or_else(|e| e.code().as_str(), |_| "ok");
    handler
        .metrics
        .stream_sends
        .get_or_create(&[("code", code)])
        .inc();
    let outcome = match result {
        Ok(sent) => {
            span.record("rpc.grpc.status_code", tonic::Code::Ok as i64);
            Outcome::Sent(sent)
        }
        Err(error) => {
            let status = Status::from(error);
            span.record("rpc.grpc.status_code", status.code() as i64);
            span.record("otel.status_code", "ERROR");
            Outcome::Failed(StatusHeaders {
                headers: common::grpc::status_to_headers(&status),
            })
        }
    };
    SendMessagesResult {
        id,
        outcome: Some(outcome),
    }
}
