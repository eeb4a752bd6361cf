//! `ChatBackendService.Watch`: every room-log event in position order,
//! from a position the caller holds, then live.
//!
//! The stream always reads from the log: a page after the caller's position,
//! sent through a small bounded channel. A consumer that reads slowly makes
//! the task wait on the channel, and the next page is read only when there
//! is room — memory per stream is bounded by the channel and one page,
//! however far behind the consumer is. Caught up, the task waits for this
//! process's writer to commit, or `chat.watch_poll_ms` for other replicas'
//! commits. Positions are held by the caller (no server-side cursors): any
//! number of consumers each resume from their own.

use std::pin::Pin;
use std::time::Duration;

use common::shutdown::ShutdownSignal;
use futures::Stream;
use proto::chat::v1::{WatchEvent, WatchRequest};
use tokio::sync::mpsc;
use tonic::Status;

use crate::error::ChatError;
use crate::service::check_id;
use crate::store::Store;
use crate::store::log::Bounds;

/// Most rooms one `Watch` may name.
pub(crate) const MAX_WATCH_ROOMS: usize = 1_000;
/// Events read from the log at a time.
const PAGE: u32 = 256;
/// Events waiting for the consumer before the task stops reading.
const BUFFER: usize = 64;

pub(crate) type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

/// Where a stream starts, checked against what the log holds.
pub(crate) fn start(request: &WatchRequest, bounds: Bounds) -> Result<i64, ChatError> {
    if request.from_now {
        return Ok(bounds.head);
    }
    let asked = request.since_position;
    if asked < 0 {
        return Err(ChatError::BadRequest(
            "since_position must not be negative".into(),
        ));
    }
    check_gap(asked, bounds)?;
    Ok(asked)
}

/// `OUT_OF_RANGE` when `position` is past the head, or when events after it
/// are gone (0 means "from the oldest stored" and is never too old).
fn check_gap(position: i64, bounds: Bounds) -> Result<(), ChatError> {
    if position > bounds.head || (position != 0 && position < bounds.oldest - 1) {
        return Err(ChatError::PositionOutOfRange {
            asked: position,
            oldest: bounds.oldest,
            head: bounds.head,
        });
    }
    Ok(())
}

/// Checks the request's rooms.
pub(crate) fn check_rooms(rooms: &[String]) -> Result<(), ChatError> {
    if rooms.len() > MAX_WATCH_ROOMS {
        return Err(ChatError::TooLarge(format!(
            "room_ids names more than {MAX_WATCH_ROOMS} rooms"
        )));
    }
    rooms.iter().try_for_each(|room| check_id("room_ids", room))
}

/// Streams the log after `position` until the consumer goes away or
/// `shutdown` fires.
pub(crate) fn stream(
    store: Store,
    rooms: Vec<String>,
    mut position: i64,
    poll: Duration,
    shutdown: ShutdownSignal,
) -> WatchStream {
    let (tx, rx) = mpsc::channel(BUFFER);
    let mut appended = store.appended.subscribe();
    tokio::spawn(async move {
        let stopped = shutdown.wait();
        tokio::pin!(stopped);
        loop {
            appended.mark_unchanged();
            let page = match store.log_after(position, &rooms, PAGE).await {
                Ok(page) => page,
                Err(error) => {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            };
            // Events after the position removed while the consumer was
            // behind (retention) end the stream as a start there would.
            if position != 0 && page.first().is_some_and(|e| e.position > position + 1) {
                let checked = store
                    .log_bounds()
                    .await
                    .and_then(|bounds| check_gap(position, bounds));
                if let Err(error) = checked {
                    let _ = tx.send(Err(error.into())).await;
                    return;
                }
            }
            if page.is_empty() {
                tokio::select! {
                    _ = appended.changed() => {}
                    () = tokio::time::sleep(poll) => {}
                    () = tx.closed() => return,
                    () = &mut stopped => return shutting_down(&tx),
                }
                continue;
            }
            for event in page {
                position = event.position;
                tokio::select! {
                    sent = tx.send(Ok(event)) => if sent.is_err() { return },
                    () = &mut stopped => return shutting_down(&tx),
                }
            }
        }
    });
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}

/// Ends a stream because the service stops: `UNAVAILABLE`, so the
/// consumer resumes elsewhere or after the restart.
fn shutting_down(tx: &mpsc::Sender<Result<WatchEvent, Status>>) {
    let _ = tx.try_send(Err(Status::unavailable(
        "chat-service is shutting down; watch again from your position",
    )));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(since_position: i64) -> WatchRequest {
        WatchRequest {
            since_position,
            ..WatchRequest::default()
        }
    }

    #[test]
    fn positions_outside_the_log_are_out_of_range_with_the_oldest() {
        let bounds = Bounds {
            oldest: 10,
            head: 20,
        };
        assert_eq!(start(&request(0), bounds).ok(), Some(0));
        assert_eq!(start(&request(9), bounds).ok(), Some(9));
        assert_eq!(start(&request(20), bounds).ok(), Some(20));
        for asked in [3, 21] {
            let status = Status::from(start(&request(asked), bounds).expect_err("out of range"));
            assert_eq!(status.code(), tonic::Code::OutOfRange);
            assert!(
                status.message().contains("oldest available is 10"),
                "{status:?}"
            );
            assert_eq!(
                status
                    .metadata()
                    .get(crate::error::OLDEST_POSITION)
                    .map(|v| v.to_str().ok()),
                Some(Some("10"))
            );
        }
        let from_now = WatchRequest {
            since_position: 3,
            from_now: true,
            ..WatchRequest::default()
        };
        assert_eq!(start(&from_now, bounds).ok(), Some(20));
        assert!(start(&request(-1), bounds).is_err());
    }
}
