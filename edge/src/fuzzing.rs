//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): the
//! steps a text frame from a client goes through before any gRPC call, in
//! the order `commands::parse` and `commands::admit` take them, without a
//! connection around them. See docs/security.md#fuzzing.

use std::net::{IpAddr, Ipv4Addr};

use common::config::InspectionMode;
use protocol::{ClientCommand, CommandKind};

use crate::frames::{self, CommandError};
use crate::signed::Signed;

/// What became of a frame.
#[derive(Debug)]
pub enum Decoded {
    /// A command with its arguments decoded and validated.
    Command(Box<ClientCommand>),
    /// Refused; the frame the client would get back.
    Refused(String),
}

/// Reads a client's text frame as the edge does: the envelope, its trace
/// context, the command's kind and arguments, content inspection (`flag`
/// and `block`) and the flagged metadata of a message. Refusals are
/// rendered into the failure frame the client would receive.
pub fn frame(text: &str) -> Decoded {
    let envelope = match frames::parse(text) {
        Ok(envelope) => envelope,
        Err((kind, id, error)) => return refused(kind.as_deref(), id, &error),
    };
    if let Some(traceparent) = &envelope.traceparent {
        let _ = common::trace::context_from_traceparent(traceparent);
    }
    let Some(kind) = CommandKind::from_name(&envelope.kind) else {
        let error = CommandError::bad_request(format!("unknown command type `{}`", envelope.kind));
        return refused(Some(&envelope.kind), envelope.id, &error);
    };
    let command = match kind.decode(envelope.body) {
        Ok(command) => command,
        Err(error) => return refused(Some(&envelope.kind), envelope.id, &error.into()),
    };
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    if let Some(text) = crate::commands::inspected_text(&command) {
        let flags = match crate::inspect::check(InspectionMode::Flag, ip, None, text) {
            Ok(flags) => flags,
            Err(error) => return refused(Some(&envelope.kind), envelope.id, &error),
        };
        if let ClientCommand::MessageSend(args) = &command {
            let _ = crate::inspect::flag_metadata(args.metadata.clone(), &flags);
        }
        if let Err(error) = crate::inspect::check(InspectionMode::Block, ip, None, text) {
            return refused(Some(&envelope.kind), envelope.id, &error);
        }
    }
    let _ = crate::commands::room_of(&command);
    Decoded::Command(Box::new(command))
}

fn refused(kind: Option<&str>, id: Option<u64>, error: &CommandError) -> Decoded {
    Decoded::Refused(frames::failure(kind, id, error, None).to_string())
}

/// A session's signed-frame state (`edge.signed_frames`) with a known
/// secret, so a fuzz target can sign the frames it makes.
pub struct SignedFrames(Signed);

impl SignedFrames {
    pub fn new(secret: &str) -> Self {
        Self(Signed::with_secret(secret.to_string()))
    }

    /// Opens a signed frame at `now_ms`: the command text inside, or the
    /// refusal's name (`bad_signature`, `replayed_nonce`, …).
    pub fn open(&mut self, text: &str, now_ms: i64) -> Result<String, &'static str> {
        self.0
            .open(text, now_ms)
            .map_err(|(_, refusal)| refusal.as_str())
    }
}

/// How far a signed frame's timestamp may be from the server's clock.
pub const SIGNED_WINDOW_MS: i64 = crate::signed::WINDOW_MS;
/// Longest nonce a signed frame may carry.
pub const MAX_NONCE_BYTES: usize = crate::signed::MAX_NONCE_BYTES;
