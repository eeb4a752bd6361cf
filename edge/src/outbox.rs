//! A connection's outbound queue, bounded in bytes: a client that stops
//! reading is disconnected (4008) instead of growing server memory.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use axum::extract::ws::Utf8Bytes;
use tokio::sync::{Notify, mpsc};

/// What the writer task sends.
#[derive(Debug)]
pub enum Outbound {
    Text(Utf8Bytes),
    Ping,
    Close(u16, &'static str),
}

/// The sending side of a connection's queue; cheap to clone.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::UnboundedSender<Outbound>,
    queued: Arc<AtomicUsize>,
    limit: usize,
    /// Set once the queue overflowed; the writer then closes with 4008.
    overflowed: Arc<AtomicBool>,
    /// Wakes the writer on overflow, even while it waits on the socket.
    overflow: Arc<Notify>,
}

/// The writer's side.
pub struct OutboxReceiver {
    pub rx: mpsc::UnboundedReceiver<Outbound>,
    queued: Arc<AtomicUsize>,
    overflowed: Arc<AtomicBool>,
    overflow: Arc<Notify>,
}

pub fn outbox(limit: usize) -> (Outbox, OutboxReceiver) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let overflowed = Arc::new(AtomicBool::new(false));
    let overflow = Arc::new(Notify::new());
    (
        Outbox {
            tx,
            queued: queued.clone(),
            limit,
            overflowed: overflowed.clone(),
            overflow: overflow.clone(),
        },
        OutboxReceiver {
            rx,
            queued,
            overflowed,
            overflow,
        },
    )
}

impl Outbox {
    /// Queues a text frame; returns false if the connection is gone or over its bound.
    pub fn push(&self, text: Utf8Bytes) -> bool {
        if self.overflowed.load(Ordering::Relaxed) {
            return false;
        }
        let len = text.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before + len > self.limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            self.overflowed.store(true, Ordering::Relaxed);
            // Wake the writer, idle or blocked on the socket.
            self.overflow.notify_one();
            return false;
        }
        self.tx.send(Outbound::Text(text)).is_ok()
    }

    pub fn ping(&self) {
        let _ = self.tx.send(Outbound::Ping);
    }

    /// Asks the writer to close the connection after what is queued.
    pub fn close(&self, code: u16, reason: &'static str) {
        let _ = self.tx.send(Outbound::Close(code, reason));
    }
}

impl OutboxReceiver {
    /// Marks a frame as written.
    pub fn sent(&self, len: usize) {
        self.queued.fetch_sub(len, Ordering::AcqRel);
    }

    pub fn overflowed(&self) -> bool {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Fires once the queue overflows.
    pub fn overflow_signal(&self) -> Arc<Notify> {
        self.overflow.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overflow_refuses_and_requests_4008() {
        let (outbox, mut rx) = outbox(10);
        assert!(outbox.push(Utf8Bytes::from_static("12345")));
        assert!(!outbox.push(Utf8Bytes::from_static("1234567")));
        assert!(rx.overflowed());
        assert!(!outbox.push(Utf8Bytes::from_static("1")));
        assert!(matches!(rx.rx.try_recv(), Ok(Outbound::Text(_))));
        assert!(
            rx.rx.try_recv().is_err(),
            "nothing past the bound is queued"
        );
    }

    #[tokio::test]
    async fn overflow_wakes_the_writer() {
        let (outbox, rx) = outbox(4);
        let signal = rx.overflow_signal();
        assert!(!outbox.push(Utf8Bytes::from_static("12345")));
        // Resolves at once: the permit was stored by the overflow.
        signal.notified().await;
    }

    #[test]
    fn written_frames_free_their_bytes() {
        let (outbox, rx) = outbox(10);
        assert!(outbox.push(Utf8Bytes::from_static("1234567890")));
        rx.sent(10);
        assert!(outbox.push(Utf8Bytes::from_static("1234567890")));
    }
}
