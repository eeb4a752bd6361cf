//! Writing frames: a batch of frames is formatted into one buffer sized for
//! it, written, and the buffer freed, so a connection between writes holds
//! none.

use tokio::io::{AsyncWrite, AsyncWriteExt};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// The writing half of a connection.
pub(crate) struct Writer<W> {
    io: W,
}

/// One batch of frames, formatted.
#[derive(Default)]
pub(crate) struct Batch {
    bytes: Vec<u8>,
}

impl Batch {
    /// A batch with room for `payload` bytes of payload in `frames` frames.
    pub(crate) fn with_capacity(payload: usize, frames: usize) -> Self {
        Self {
            // Server frames are unmasked: at most 10 bytes of header.
            bytes: Vec::with_capacity(payload + frames * 10),
        }
    }

    pub(crate) fn text(&mut self, text: &str) {
        self.frame(OpCode::Data(Data::Text), text.as_bytes());
    }

    pub(crate) fn ping(&mut self) {
        self.frame(OpCode::Control(Control::Ping), &[]);
    }

    pub(crate) fn pong(&mut self, payload: &[u8]) {
        self.frame(OpCode::Control(Control::Pong), payload);
    }

    /// A close frame: `code` and `reason`, or no status at all.
    pub(crate) fn close(&mut self, code: Option<u16>, reason: &str) {
        let Some(code) = code else {
            self.frame(OpCode::Control(Control::Close), &[]);
            return;
        };
        let mut payload = Vec::with_capacity(2 + reason.len());
        payload.extend_from_slice(&code.to_be_bytes());
        // A control frame's payload is at most 125 bytes.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        payload.extend_from_slice(&reason.as_bytes()[..end]);
        self.frame(OpCode::Control(Control::Close), &payload);
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    fn frame(&mut self, opcode: OpCode, payload: &[u8]) {
        let header = FrameHeader {
            opcode,
            ..FrameHeader::default()
        };
        // Writing into a Vec cannot fail.
        let _ = header.format(payload.len() as u64, &mut self.bytes);
        self.bytes.extend_from_slice(payload);
    }
}

impl<W: AsyncWrite + Unpin> Writer<W> {
    pub(crate) fn new(io: W) -> Self {
        Self { io }
    }

    /// Writes the whole batch (and frees it).
    pub(crate) async fn write(&mut self, batch: Batch) -> std::io::Result<()> {
        self.io.write_all(&batch.bytes).await?;
        self.io.flush().await
    }

    /// Ends the sending side (TCP FIN) after a close frame.
    pub(crate) async fn shutdown(&mut self) -> std::io::Result<()> {
        self.io.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_unmasked_with_the_shortest_length_form() {
        let mut batch = Batch::default();
        batch.text("hi");
        batch.ping();
        batch.text(&"x".repeat(300));
        batch.close(Some(4008), "slow consumer");
        let b = &batch.bytes;
        assert_eq!(&b[..4], &[0x81, 2, b'h', b'i']);
        assert_eq!(&b[4..6], &[0x89, 0]);
        assert_eq!(&b[6..10], &[0x81, 126, 1, 44]);
        let close = &b[10 + 300..];
        assert_eq!(&close[..4], &[0x88, 15, 0x0f, 0xa8]);
        assert_eq!(&close[4..], b"slow consumer");
    }

    #[test]
    fn close_reasons_fit_a_control_frame() {
        let mut batch = Batch::default();
        batch.close(Some(1000), &"é".repeat(100));
        assert!(batch.bytes.len() <= 2 + 125);
        assert!(std::str::from_utf8(&batch.bytes[4..]).is_ok());
    }
}
