//! A connection's outbound queue, bounded in bytes: a client that stops
//! reading is disconnected (4008) instead of growing server memory.
//!
//! The writer takes everything queued at once and writes it with one
//! flush. An idle connection's queue holds no allocation: the deque is
//! handed to the writer whole and starts empty again.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use axum::extract::ws::Utf8Bytes;
use protocol::CloseCode;
use tokio::sync::Notify;

/// What the writer task sends.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
    Ping,
    /// The answer to a client's ping.
    Pong(bytes::Bytes),
    Close(CloseCode),
    /// The answer to a client's close frame: its status echoed.
    CloseReply(Option<u16>),
}

struct Shared {
    queue: Mutex<VecDeque<Outbound>>,
    /// Bytes of text queued and not yet written.
    queued: AtomicUsize,
    limit: usize,
    /// Set once the queue overflowed; the writer then closes with 4008.
    overflowed: AtomicBool,
    /// Live `Outbox` handles; the writer stops when the last one is gone.
    senders: AtomicUsize,
    /// Set when the writer is gone: pushes report failure.
    receiver_gone: AtomicBool,
    /// Wakes the writer: something queued, or the last sender left.
    wake: Notify,
    /// Wakes the writer on overflow, even while it waits on the socket.
    overflow: Notify,
    /// The close code the writer sent (0: none yet).
    closed_with: AtomicU16,
}

/// The sending side of a connection's queue; cheap to clone.
pub struct Outbox {
    shared: Arc<Shared>,
}

/// See [`Outbox::close_watch`].
pub struct CloseWatch {
    shared: Arc<Shared>,
}

impl CloseWatch {
    /// The close code the writer sent, once it sent one.
    pub fn code(&self) -> Option<u16> {
        match self.shared.closed_with.load(Ordering::Acquire) {
            0 => None,
            code => Some(code),
        }
    }
}

/// The writer's side.
pub struct OutboxReceiver {
    shared: Arc<Shared>,
}

pub fn outbox(limit: usize) -> (Outbox, OutboxReceiver) {
    let shared = Arc::new(Shared {
        queue: Mutex::new(VecDeque::new()),
        queued: AtomicUsize::new(0),
        limit,
        overflowed: AtomicBool::new(false),
        senders: AtomicUsize::new(1),
        receiver_gone: AtomicBool::new(false),
        wake: Notify::new(),
        overflow: Notify::new(),
        closed_with: AtomicU16::new(0),
    });
    (
        Outbox {
            shared: shared.clone(),
        },
        OutboxReceiver { shared },
    )
}

impl Outbox {
    /// Queues a text frame; returns false if the connection is gone or over its bound.
    pub fn push(&self, text: Utf8Bytes) -> bool {
        let shared = &self.shared;
        if shared.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let len = text.len();
        let before = shared.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > shared.limit {
            shared.queued.fetch_sub(len, Ordering::AcqRel);
            shared.overflowed.store(true, Ordering::Relaxed);
            // Wake the writer, idle or blocked on the socket.
            shared.overflow.notify_one();
            return false;
        }
        self.enqueue(Outbound::Text(text))
    }

    pub fn ping(&self) {
        self.enqueue(Outbound::Ping);
    }

    pub fn pong(&self, payload: bytes::Bytes) {
        self.enqueue(Outbound::Pong(payload));
    }

    /// Answers the client's close frame after what is queued.
    pub fn close_reply(&self, code: Option<u16>) {
        self.enqueue(Outbound::CloseReply(code));
    }

    /// Asks the writer to close the connection after what is queued.
    pub fn close(&self, close: CloseCode) {
        self.enqueue(Outbound::Close(close));
    }

    /// A handle telling the close code the writer sent; it does not keep
    /// the writer running as an `Outbox` does.
    pub fn close_watch(&self) -> CloseWatch {
        CloseWatch {
            shared: self.shared.clone(),
        }
    }

    fn enqueue(&self, item: Outbound) -> bool {
        if self.shared.receiver_gone.load(Ordering::Acquire) {
            return false;
        }
        lock(&self.shared.queue).push_back(item);
        self.shared.wake.notify_one();
        true
    }
}

impl Clone for Outbox {
    fn clone(&self) -> Self {
        self.shared.senders.fetch_add(1, Ordering::AcqRel);
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        if self.shared.senders.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.shared.wake.notify_one();
        }
    }
}

impl OutboxReceiver {
    /// Everything queued, waiting until there is something; `None` once
    /// every sender is gone and nothing is left.
    pub async fn next_batch(&self) -> Option<VecDeque<Outbound>> {
        loop {
            let batch = std::mem::take(&mut *lock(&self.shared.queue));
            if !batch.is_empty() {
                return Some(batch);
            }
            if self.shared.senders.load(Ordering::Acquire) == 0 {
                return None;
            }
            self.shared.wake.notified().await;
        }
    }

    /// Marks a frame as written.
    pub fn sent(&self, len: usize) {
        self.shared.queued.fetch_sub(len, Ordering::AcqRel);
    }

    pub fn overflowed(&self) -> bool {
        self.shared.overflowed.load(Ordering::Relaxed)
    }

    /// Notes the close code the writer is sending.
    pub fn closing(&self, code: CloseCode) {
        self.shared
            .closed_with
            .store(code.code(), Ordering::Release);
    }

    /// Resolves once the queue overflows.
    pub async fn overflow(&self) {
        self.shared.overflow.notified().await;
    }
}

impl Drop for OutboxReceiver {
    fn drop(&mut self) {
        self.shared.receiver_gone.store(true, Ordering::Release);
        // Frames nobody will write no longer hold memory.
        lock(&self.shared.queue).clear();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(batch: &VecDeque<Outbound>) -> Vec<&str> {
        batch
            .iter()
            .map(|item| match item {
                Outbound::Text(text) => text.as_str(),
                Outbound::Ping => "<ping>",
                Outbound::Pong(..) => "<pong>",
                Outbound::Close(..) | Outbound::CloseReply(..) => "<close>",
            })
            .collect()
    }

    #[tokio::test]
    async fn overflow_refuses_and_requests_4008() {
        let (outbox, rx) = outbox(10);
        assert!(outbox.push(Utf8Bytes::from_static("12345")));
        assert!(!outbox.push(Utf8Bytes::from_static("1234567")));
        assert!(rx.overflowed());
        assert!(!outbox.push(Utf8Bytes::from_static("1")));
        let batch = rx.next_batch().await.expect("batch");
        assert_eq!(texts(&batch), ["12345"], "nothing past the bound is queued");
    }

    #[tokio::test]
    async fn overflow_wakes_the_writer() {
        let (outbox, rx) = outbox(4);
        assert!(!outbox.push(Utf8Bytes::from_static("12345")));
        // Resolves at once: the permit was stored by the overflow.
        rx.overflow().await;
    }

    #[tokio::test]
    async fn written_frames_free_their_bytes() {
        let (outbox, rx) = outbox(10);
        assert!(outbox.push(Utf8Bytes::from_static("1234567890")));
        rx.sent(10);
        assert!(outbox.push(Utf8Bytes::from_static("1234567890")));
    }

    #[tokio::test(start_paused = true)]
    async fn the_writer_takes_all_that_is_queued_in_order() {
        let (outbox, rx) = outbox(100);
        outbox.push(Utf8Bytes::from_static("a"));
        outbox.ping();
        outbox.push(Utf8Bytes::from_static("b"));
        outbox.close(CloseCode::Idle);
        let batch = rx.next_batch().await.expect("batch");
        assert_eq!(texts(&batch), ["a", "<ping>", "b", "<close>"]);
        // Then it waits for more.
        let waiting = tokio::time::timeout(std::time::Duration::from_millis(20), rx.next_batch());
        assert!(waiting.await.is_err());
    }

    #[tokio::test]
    async fn the_writer_ends_when_the_last_sender_is_gone() {
        let (outbox, rx) = outbox(100);
        let other = outbox.clone();
        drop(outbox);
        other.push(Utf8Bytes::from_static("last"));
        let writer = tokio::spawn(async move {
            let mut got = Vec::new();
            while let Some(batch) = rx.next_batch().await {
                got.extend(texts(&batch).into_iter().map(str::to_string));
            }
            got
        });
        tokio::task::yield_now().await;
        drop(other);
        assert_eq!(writer.await.expect("writer"), ["last"]);
    }

    #[tokio::test]
    async fn pushes_fail_once_the_writer_is_gone() {
        let (outbox, rx) = outbox(100);
        drop(rx);
        assert!(!outbox.push(Utf8Bytes::from_static("x")));
    }
}
