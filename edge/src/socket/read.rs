//! Reading frames: a client's frames are unmasked, fragments are put
//! together, and a message arrives whole. Bytes are kept only while their
//! frame (or message) is incomplete; an idle connection holds no buffer.

use std::io::Cursor;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::Poll;

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tungstenite::protocol::frame::FrameHeader;
use tungstenite::protocol::frame::coding::{Control, Data, OpCode};

/// Bytes taken from the socket per read, on the stack of the read.
const CHUNK: usize = 4096;
/// Longest payload of a control frame (RFC 6455 §5.5).
const MAX_CONTROL: u64 = 125;

/// What a client sent.
#[derive(Debug, PartialEq)]
pub(crate) enum Incoming {
    Text(Utf8Bytes),
    /// A binary message; Parley has no use for its bytes.
    Binary,
    Ping(Bytes),
    Pong,
    /// A close frame, with its status code if it had one.
    Close(Option<u16>),
}

/// Why reading ended.
#[derive(Debug)]
pub(crate) enum ReadError {
    /// A frame or message over the size limit (close 1009).
    TooLarge,
    /// A text message that is not UTF-8 (close 1007).
    InvalidUtf8,
    /// A frame RFC 6455 does not allow from a client.
    Protocol(&'static str),
    /// The socket failed, or closed inside a frame.
    Io(std::io::Error),
}

/// The reading half of a connection.
pub(crate) struct Reader<R> {
    io: R,
    /// Received bytes of a frame not yet whole.
    pending: Vec<u8>,
    /// A fragmented message being put together: whether it is text, and
    /// its payload so far.
    message: Option<(bool, Vec<u8>)>,
    /// Largest frame and message accepted.
    max: usize,
}

impl<R: AsyncRead + Unpin> Reader<R> {
    pub(crate) fn new(io: R, max: usize) -> Self {
        Self {
            io,
            pending: Vec::new(),
            message: None,
            max,
        }
    }

    /// The next message or control frame; `None` when the client closed
    /// the connection between frames. Cancel-safe: what was read stays
    /// here for the next call.
    pub(crate) async fn next(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            if let Some(incoming) = self.parse()? {
                return Ok(Some(incoming));
            }
            let Self { io, pending, .. } = self;
            let read = std::future::poll_fn(|cx| {
                let mut chunk = [MaybeUninit::<u8>::uninit(); CHUNK];
                let mut buf = ReadBuf::uninit(&mut chunk);
                match Pin::new(&mut *io).poll_read(cx, &mut buf) {
                    Poll::Ready(Ok(())) => {
                        pending.extend_from_slice(buf.filled());
                        Poll::Ready(Ok(buf.filled().len()))
                    }
                    Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
                    Poll::Pending => Poll::Pending,
                }
            })
            .await
            .map_err(ReadError::Io)?;
            if read == 0 {
                if self.pending.is_empty() && self.message.is_none() {
                    return Ok(None);
                }
                return Err(ReadError::Io(std::io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Takes every whole frame from `pending` until one completes a
    /// message or is a control frame.
    fn parse(&mut self) -> Result<Option<Incoming>, ReadError> {
        loop {
            let mut cursor = Cursor::new(&self.pending[..]);
            let Some((header, len)) =
                FrameHeader::parse(&mut cursor).map_err(|_| ReadError::Protocol("bad opcode"))?
            else {
                return Ok(None);
            };
            let so_far = self.message.as_ref().map_or(0, |(_, m)| m.len());
            if len > self.max as u64 || so_far as u64 + len > self.max as u64 {
                return Err(ReadError::TooLarge);
            }
            let start = cursor.position() as usize;
            let end = start + len as usize;
            if self.pending.len() < end {
                return Ok(None);
            }
            let Some(mask) = header.mask else {
                return Err(ReadError::Protocol("unmasked frame from a client"));
            };
            if header.rsv1 || header.rsv2 || header.rsv3 {
                return Err(ReadError::Protocol("reserved bits set"));
            }
            let payload = &mut self.pending[start..end];
            unmask(payload, mask);
            let incoming = match header.opcode {
                OpCode::Control(control) => {
                    if !header.is_final || len > MAX_CONTROL {
                        return Err(ReadError::Protocol("bad control frame"));
                    }
                    match control {
                        Control::Ping => Some(Incoming::Ping(Bytes::copy_from_slice(payload))),
                        Control::Pong => Some(Incoming::Pong),
                        Control::Close => Some(Incoming::Close(close_code(payload)?)),
                        Control::Reserved(_) => return Err(ReadError::Protocol("bad opcode")),
                    }
                }
                OpCode::Data(Data::Continue) => {
                    let Some((_, message)) = self.message.as_mut() else {
                        return Err(ReadError::Protocol("continuation without a message"));
                    };
                    message.extend_from_slice(payload);
                    if header.is_final {
                        let (text, message) = self.message.take().unwrap_or_default();
                        Some(whole(text, message)?)
                    } else {
                        None
                    }
                }
                OpCode::Data(data @ (Data::Text | Data::Binary)) => {
                    if self.message.is_some() {
                        return Err(ReadError::Protocol("new message inside a fragmented one"));
                    }
                    let text = data == Data::Text;
                    if header.is_final {
                        Some(whole(text, payload.to_vec())?)
                    } else {
                        self.message = Some((text, payload.to_vec()));
                        None
                    }
                }
                OpCode::Data(Data::Reserved(_)) => return Err(ReadError::Protocol("bad opcode")),
            };
            self.pending.drain(..end);
            if self.pending.is_empty() {
                // Idle again: give the buffer back.
                self.pending = Vec::new();
            }
            if incoming.is_some() {
                return Ok(incoming);
            }
        }
    }
}

/// Removes a client's mask (RFC 6455 §5.3).
fn unmask(payload: &mut [u8], mask: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= mask[i & 3];
    }
}

/// A complete message.
fn whole(text: bool, payload: Vec<u8>) -> Result<Incoming, ReadError> {
    if !text {
        return Ok(Incoming::Binary);
    }
    String::from_utf8(payload)
        .map(|s| Incoming::Text(Utf8Bytes::from(s)))
        .map_err(|_| ReadError::InvalidUtf8)
}

/// The status code of a close frame's payload (RFC 6455 §5.5.1).
fn close_code(payload: &[u8]) -> Result<Option<u16>, ReadError> {
    match payload {
        [] => Ok(None),
        [_] => Err(ReadError::Protocol("close frame of one byte")),
        [hi, lo, reason @ ..] => {
            if std::str::from_utf8(reason).is_err() {
                return Err(ReadError::InvalidUtf8);
            }
            Ok(Some(u16::from_be_bytes([*hi, *lo])))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A client frame: masked, as RFC 6455 requires.
    fn frame(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [1, 2, 3, 4];
        let mut out = vec![opcode | if fin { 0x80 } else { 0 }];
        match payload.len() {
            n if n < 126 => out.push(0x80 | n as u8),
            n if n <= 0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    async fn read_all(bytes: Vec<u8>, max: usize) -> Vec<Result<Incoming, String>> {
        let (mut client, server) = tokio::io::duplex(64);
        tokio::spawn(async move {
            // Dribbled in small writes: frames arrive split across reads.
            for piece in bytes.chunks(7) {
                if client.write_all(piece).await.is_err() {
                    return;
                }
            }
        });
        let mut reader = Reader::new(server, max);
        let mut got = Vec::new();
        loop {
            match reader.next().await {
                Ok(Some(incoming)) => got.push(Ok(incoming)),
                Ok(None) => break,
                Err(e) => {
                    got.push(Err(format!("{e:?}")));
                    break;
                }
            }
        }
        got
    }

    #[tokio::test]
    async fn messages_arrive_whole_and_control_frames_between_fragments() {
        let mut bytes = frame(0x1, true, b"hello");
        bytes.extend(frame(0x1, false, "zo".as_bytes()));
        bytes.extend(frame(0x9, true, b"p"));
        bytes.extend(frame(0x0, false, &"ë…".as_bytes()[..3]));
        bytes.extend(frame(0x0, true, &"ë…".as_bytes()[3..]));
        bytes.extend(frame(0x2, true, &[0xff; 300]));
        bytes.extend(frame(0xA, true, b""));
        bytes.extend(frame(0x8, true, &[0x03, 0xe8, b'o', b'k']));
        let got = read_all(bytes, 1024).await;
        assert_eq!(
            got.into_iter().map(Result::unwrap).collect::<Vec<_>>(),
            vec![
                Incoming::Text(Utf8Bytes::from_static("hello")),
                Incoming::Ping(Bytes::from_static(b"p")),
                Incoming::Text(Utf8Bytes::from("zoë…".to_string())),
                Incoming::Binary,
                Incoming::Pong,
                Incoming::Close(Some(1000)),
            ]
        );
    }

    #[tokio::test]
    async fn oversized_invalid_and_unmasked_frames_end_the_read() {
        let too_big = read_all(frame(0x1, true, &[b'a'; 2000]), 1024).await;
        assert!(matches!(too_big.last(), Some(Err(e)) if e == "TooLarge"));
        // Fragments that add up past the limit.
        let mut pieces = frame(0x1, false, &[b'a'; 600]);
        pieces.extend(frame(0x0, true, &[b'a'; 600]));
        let too_big = read_all(pieces, 1024).await;
        assert!(matches!(too_big.last(), Some(Err(e)) if e == "TooLarge"));
        let not_utf8 = read_all(frame(0x1, true, &[0xc3, 0x28]), 1024).await;
        assert!(matches!(not_utf8.last(), Some(Err(e)) if e == "InvalidUtf8"));
        let mut unmasked = frame(0x1, true, b"hi");
        unmasked[1] &= 0x7f;
        unmasked.drain(2..6);
        let refused = read_all(unmasked, 1024).await;
        assert!(matches!(refused.last(), Some(Err(e)) if e.starts_with("Protocol")));
        let stray = read_all(frame(0x0, true, b"x"), 1024).await;
        assert!(matches!(stray.last(), Some(Err(e)) if e.starts_with("Protocol")));
    }

    #[tokio::test]
    async fn an_idle_reader_holds_no_buffer() {
        let (mut client, server) = tokio::io::duplex(64);
        let mut reader = Reader::new(server, 1024);
        client
            .write_all(&frame(0x1, true, b"one"))
            .await
            .expect("write");
        assert_eq!(
            reader.next().await.expect("read"),
            Some(Incoming::Text(Utf8Bytes::from_static("one")))
        );
        assert_eq!(reader.pending.capacity(), 0);
        assert!(reader.message.is_none());
    }
}
