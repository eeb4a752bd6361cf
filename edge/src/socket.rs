//! The server side of RFC 6455 over an upgraded HTTP/1.1 connection, built
//! for many mostly idle connections: nothing is buffered while a connection
//! is idle. A read keeps bytes only until their frame is whole; a write
//! formats one batch of frames into one buffer, writes it and frees it.
//!
//! tungstenite (through axum) kept a write buffer as large as the largest
//! batch a connection ever wrote (a `room.join` reply with `online[]` is
//! about 5 KB) for the connection's whole life, and a read buffer beside it:
//! together more than a third of an idle joined connection's memory. Frame
//! headers, masks and the accept key still come from tungstenite.

mod handshake;
mod read;
mod write;

pub(crate) use handshake::Upgrade;
pub(crate) use read::{Incoming, ReadError, Reader};
pub(crate) use write::{Batch, Writer};

/// The upgraded connection a WebSocket runs on.
pub(crate) type Io = hyper_util::rt::TokioIo<hyper::upgrade::Upgraded>;
