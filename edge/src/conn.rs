//! One WebSocket connection: hello, authentication window, heartbeats, the
//! read loop that runs each command, and a writer task that drains the
//! outbox, flushing queued frames together.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket};
use common::ErrorCode;
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use opentelemetry::trace::TraceContextExt;
use proto::auth::v1::{Identity, VerifyTokenRequest};
use tokio::time::Instant;
use tracing::Instrument;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::Shared;
use crate::commands;
use crate::frames::{self, CommandError};
use crate::outbox::{Outbound, Outbox, OutboxReceiver, outbox};

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// How long a close frame may take to write before the socket is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// A live connection's state, owned by its read loop.
pub(crate) struct Conn {
    pub shared: Arc<Shared>,
    /// Key of this connection in the hub.
    pub key: u64,
    pub id: String,
    pub peer: SocketAddr,
    pub outbox: Outbox,
    pub identity: Option<Identity>,
    /// Rooms joined on this connection (left again on close).
    pub rooms: HashSet<String>,
    /// Trace context from the upgrade request's `traceparent`, if any.
    pub parent: opentelemetry::Context,
    /// Presence this connection follows, and its typing indicators.
    pub presence: crate::presence_commands::ConnPresence,
    /// This connection's command window and rate-limit violations.
    pub limits: crate::limits::ConnLimits,
    /// The signed-in user's connection slot (given back on close).
    pub user_slot: Option<crate::admission::UserSlot>,
    /// The session's frame secret and seen nonces (`edge.signed_frames`).
    pub signed: Option<Box<crate::signed::Signed>>,
    /// When the token warns and expires.
    pub life: crate::token_life::Life,
}

/// Whether the read loop goes on.
#[derive(PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    Close,
}

/// Verifies a token through auth-service. Expired and revoked tokens close
/// with 4003, other refusals with 4002; a blocked address is `rate_limited`
/// and remembered, so its next upgrade is refused before any WebSocket work.
pub(crate) async fn verify(
    shared: &Shared,
    token: &str,
    peer: SocketAddr,
) -> Result<Identity, CommandError> {
    let request = VerifyTokenRequest {
        token: token.to_string(),
        client_ip: peer.ip().to_string(),
    };
    match shared.backends.auth.clone().verify_token(request).await {
        Ok(response) => response.into_inner().identity.ok_or_else(|| {
            CommandError::new(ErrorCode::Internal, "auth service returned no identity")
        }),
        Err(status) => {
            let mut error = CommandError::from_status("auth", &status);
            let reason = status
                .metadata()
                .get("x-parley-reason")
                .and_then(|v| v.to_str().ok());
            if error.code == ErrorCode::Unauthorized {
                // auth-service wrote the `auth_failed` security event, with
                // the client's address the edge passed along.
                error.close = Some(match reason {
                    Some("expired") => (4003, "token expired"),
                    Some("revoked") => (4003, "token revoked"),
                    _ => (4002, "invalid token"),
                });
            }
            if reason == Some("blocked") {
                let retry = error.retry_after_ms.unwrap_or(0);
                let until = common::ids::now_ms() + i64::try_from(retry).unwrap_or(0);
                shared.blocks.block(peer.ip(), until);
            }
            Err(error)
        }
    }
}

/// The user object of the protocol.
pub(crate) fn user_json(identity: &Identity) -> serde_json::Value {
    serde_json::json!({"id": identity.user_id, "name": identity.name, "anonymous": identity.anonymous})
}

/// Starts a connection's writer task and returns the connection task. Not
/// an `async fn`: one keeps room for its arguments for as long as it runs,
/// and an unsplit socket is large; every idle connection would carry it.
pub(crate) fn run(
    shared: Arc<Shared>,
    socket: WebSocket,
    peer: SocketAddr,
    identity: Option<Identity>,
    parent: opentelemetry::Context,
    slot: crate::admission::Slot,
) -> impl Future<Output = ()> + Send {
    let (sink, stream) = socket.split();
    let (outbox, out_rx) = outbox(shared.config.outbound_queue_bytes);
    let writer = tokio::spawn(write_loop(sink, out_rx));
    serve(shared, stream, writer, outbox, peer, identity, parent, slot)
}

/// The connection task: reads frames, runs commands, keeps time.
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: Arc<Shared>,
    mut stream: SplitStream<WebSocket>,
    mut writer: tokio::task::JoinHandle<()>,
    outbox: Outbox,
    peer: SocketAddr,
    identity: Option<Identity>,
    parent: opentelemetry::Context,
    slot: crate::admission::Slot,
) {
    // Given back when the connection ends.
    let _slot = slot;
    let _alive = shared.conns_alive.clone();
    // A finished JoinHandle must not be polled again.
    let mut writer_done = false;
    let key = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let mut conn = Conn {
        shared: shared.clone(),
        key,
        id: common::ids::new_id("c"),
        peer,
        outbox: outbox.clone(),
        identity: None,
        rooms: HashSet::new(),
        parent,
        presence: Default::default(),
        limits: crate::limits::ConnLimits::new(),
        user_slot: None,
        signed: None,
        life: Default::default(),
    };
    let config = &shared.config;
    if identity.is_some() && config.signed_frames {
        conn.signed = Some(Box::new(crate::signed::Signed::new()));
    }
    outbox.push(frames::hello(
        &conn.id,
        config.auth_timeout_ms,
        config.heartbeat_ms,
        config.max_message_bytes,
        identity.as_ref().map(user_json),
        conn.signed.as_ref().map(|s| s.secret()),
    ));
    // A refused upgrade-time identity (user at the connection limit)
    // closes right after `hello`.
    let mut refused = false;
    if let Some(identity) = identity
        && let Err(error) = Box::pin(conn.authenticated(identity)).await
    {
        outbox.push(frames::failure(Some("auth"), None, &error, None));
        if let Some((code, reason)) = error.close {
            outbox.close(code, reason);
        }
        refused = true;
    }
    tracing::debug!(conn_id = %conn.id, peer = %peer.ip(), "connection opened");

    let auth_deadline = Instant::now() + Duration::from_millis(config.auth_timeout_ms);
    let heartbeat = Duration::from_millis(config.heartbeat_ms);
    let pong_timeout = Duration::from_millis(config.pong_timeout_ms);
    let mut ticks = tokio::time::interval_at(Instant::now() + heartbeat, heartbeat);
    let mut last_pong = Instant::now();
    let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
    let mut last_command = Instant::now();
    let mut binary_frames = 0u32;
    let shutdown = shared.shutdown.clone().wait();
    tokio::pin!(shutdown);
    let mut drain_at: Option<Instant> = None;

    loop {
        if refused {
            break;
        }
        let token_step = conn.life.next();
        tokio::select! {
            _ = tokio::time::sleep_until(token_step.map_or_else(Instant::now, |(at, _)| at)), if token_step.is_some() => {
                let step = token_step.map(|(_, step)| step).unwrap_or(crate::token_life::Step::Expire);
                match conn.life.fire(step) {
                    Some(warning) => {
                        outbox.push(warning);
                    }
                    None => {
                        outbox.close(4003, "token expired");
                        break;
                    }
                }
            }
            _ = &mut shutdown, if drain_at.is_none() => {
                // In-flight commands have finished (they run inside this
                // loop); the close itself waits for this connection's turn.
                let drain = Duration::from_millis(config.drain_ms);
                drain_at = Some(Instant::now() + drain_delay(key, drain));
            }
            _ = tokio::time::sleep_until(drain_at.unwrap_or_else(Instant::now)), if drain_at.is_some() => {
                outbox.close(1001, "server draining");
                break;
            }
            _ = tokio::time::sleep_until(auth_deadline), if conn.identity.is_none() => {
                outbox.close(4001, "authentication timeout");
                break;
            }
            _ = ticks.tick() => {
                if let Some((code, reason)) = liveness(last_pong, last_command, pong_timeout, idle_timeout) {
                    outbox.close(code, reason);
                    break;
                }
                outbox.ping();
            }
            change = conn.presence.next_roster_change() => {
                Box::pin(crate::presence_commands::roster_changed(&mut conn, change)).await;
            }
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                break;
            }
            frame = stream.next() => match frame {
                None | Some(Ok(Message::Close(_))) => break,
                Some(Err(e)) => {
                    if is_too_large(&e) {
                        outbox.close(1009, "message too large");
                    }
                    break;
                }
                Some(Ok(Message::Text(text))) => {
                    last_pong = Instant::now();
                    last_command = last_pong;
                    // Membership changes the client may have seen come
                    // first: a command sent after a `member.joined` finds
                    // the newcomer followed.
                    while let Some(change) = conn.presence.waiting_roster_change() {
                        Box::pin(crate::presence_commands::roster_changed(&mut conn, change)).await;
                    }
                    // Boxed: the command futures are large, and an idle
                    // connection should not carry their space.
                    if Box::pin(conn.handle_text(&text)).await == Flow::Close {
                        break;
                    }
                }
                Some(Ok(Message::Binary(_))) => {
                    binary_frames += 1;
                    if binary_frames > 1 {
                        outbox.close(1003, "binary frames are not supported");
                        break;
                    }
                    let error = CommandError::bad_request("binary frames are not supported; send JSON text frames");
                    outbox.push(frames::failure(None, None, &error, None));
                }
                Some(Ok(Message::Pong(_))) => last_pong = Instant::now(),
                Some(Ok(Message::Ping(_))) => {}
            },
        }
    }

    Box::pin(conn.close()).await;
    // The connection's own outbox handle and its user slot go now: the
    // writer ends once every handle is gone, and a slot is free again.
    drop(conn);
    drop(outbox);
    if !writer_done
        && tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
}

impl Conn {
    async fn handle_text(&mut self, text: &str) -> Flow {
        let opened;
        let text = match self.signed.as_mut() {
            Some(signed) if self.identity.is_some() => {
                match signed.open(text, common::ids::now_ms()) {
                    Ok(payload) => {
                        opened = payload;
                        opened.as_str()
                    }
                    Err((id, refusal)) => {
                        let user = self.identity.as_ref().map(|i| i.user_id.as_str());
                        common::security::log(
                            common::security::SecurityEvent::AuthFailed,
                            Some(self.peer.ip()),
                            user,
                            refusal.as_str(),
                        );
                        let error = refusal.error();
                        self.outbox.push(frames::failure(None, id, &error, None));
                        return Flow::Continue;
                    }
                }
            }
            _ => text,
        };
        let command = match frames::parse(text) {
            Ok(command) => command,
            Err((kind, id, error)) => {
                self.outbox
                    .push(frames::failure(kind.as_deref(), id, &error, None));
                return Flow::Continue;
            }
        };
        let span = tracing::info_span!(
            "ws.frame",
            otel.name = %format!("ws {}", command.kind),
            otel.kind = "server",
            parley.command = %command.kind,
            parley.conn_id = %self.id,
            enduser.id = tracing::field::Empty,
        );
        if let Some(identity) = &self.identity {
            span.record("enduser.id", identity.user_id.as_str());
        }
        let parent = match command.body.get("traceparent").and_then(|v| v.as_str()) {
            Some(tp) => common::trace::context_from_traceparent(tp),
            None => self.parent.clone(),
        };
        if parent.span().span_context().is_valid() {
            let _ = span.set_parent(parent);
        }
        let kind = command.kind.clone();
        let id = command.id;
        let result = match crate::limits::admit(self, &kind).await {
            Ok(()) => {
                commands::dispatch(self, command)
                    .instrument(span.clone())
                    .await
            }
            Err(limited) => Err(limited),
        };
        match result {
            Ok(commands::Outcome::Reply(fields)) => {
                if let Some(id) = id {
                    self.outbox.push(frames::reply_ok(id, fields));
                }
                Flow::Continue
            }
            Ok(commands::Outcome::Sent) => Flow::Continue,
            Err(error) => {
                let trace_id = if self.shared.tracing {
                    span.in_scope(common::trace::current_trace_id)
                } else {
                    None
                };
                if error.code == ErrorCode::Internal {
                    tracing::error!(parent: &span, command = %kind, message = %error.message, "command failed");
                }
                self.outbox
                    .push(frames::failure(Some(&kind), id, &error, trace_id));
                match error.close {
                    Some((code, reason)) => {
                        self.outbox.close(code, reason);
                        Flow::Close
                    }
                    None => Flow::Continue,
                }
            }
        }
    }

    /// Keeps the verified identity (refused past the per-user connection
    /// limit), registers the presence lease, subscribes the user's own
    /// channel, and follows the token's expiry and revocations.
    pub(crate) async fn authenticated(&mut self, identity: Identity) -> Result<(), CommandError> {
        let slot = self
            .shared
            .admission
            .sign_in(&identity.user_id, identity.anonymous)
            .map_err(|refused| {
                common::security::log(
                    common::security::SecurityEvent::ConnLimited,
                    Some(self.peer.ip()),
                    Some(&identity.user_id),
                    refused.as_str(),
                );
                let mut error =
                    CommandError::new(ErrorCode::Forbidden, "too many connections for this user");
                error.reason = Some(frames::Reason::TooManyConnections);
                error.close = Some((4009, "too many connections"));
                error
            })?;
        self.user_slot = Some(slot);
        if self.shared.config.signed_frames && self.signed.is_none() {
            self.signed = Some(Box::new(crate::signed::Signed::new()));
        }
        self.shared.sessions.set(self.key, &identity, &self.outbox);
        self.life.set(
            identity.expires_at,
            Duration::from_millis(self.shared.config.token_expiring_lead_ms),
        );
        self.shared
            .leases
            .register(&self.id, &identity.user_id)
            .await;
        let channel = common::bus::user_channel(&identity.user_id);
        if let Err(e) = self
            .shared
            .hub
            .join(
                &channel,
                self.key,
                &identity.user_id,
                self.outbox.clone(),
                false,
            )
            .await
        {
            tracing::warn!(conn_id = %self.id, error = %e, "user channel subscribe failed");
        }
        self.identity = Some(identity);
        Ok(())
    }

    async fn close(&mut self) {
        self.shared.sessions.remove(self.key);
        crate::presence_commands::close(self).await;
        for room in std::mem::take(&mut self.rooms) {
            self.shared
                .hub
                .leave(&common::bus::room_channel(&room), self.key)
                .await;
        }
        if let Some(identity) = &self.identity {
            self.shared
                .hub
                .leave(&common::bus::user_channel(&identity.user_id), self.key)
                .await;
            self.shared.leases.release(&self.id).await;
        }
        tracing::debug!(conn_id = %self.id, "connection closed");
    }
}

/// What a heartbeat tick decides: close 4012 when no pong (or frame) came
/// within `pong_timeout`, 1000 `idle` when no command came within `idle`
/// (checked on each tick, so an idle close comes up to one heartbeat late).
fn liveness(
    last_pong: Instant,
    last_command: Instant,
    pong_timeout: Duration,
    idle: Duration,
) -> Option<(u16, &'static str)> {
    if last_pong.elapsed() > pong_timeout {
        Some((4012, "no pong"))
    } else if last_command.elapsed() >= idle {
        Some((1000, "idle"))
    } else {
        None
    }
}

/// When, within the drain period, a connection closes: spread evenly over
/// the period by connection number.
fn drain_delay(key: u64, drain: Duration) -> Duration {
    const SLOTS: u64 = 1024;
    // Consecutive connections land far apart (golden-ratio stride).
    let slot = key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 54;
    drain.mul_f64(slot as f64 / SLOTS as f64)
}

fn is_too_large(error: &axum::Error) -> bool {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if let Some(tungstenite::Error::Capacity(_)) = e.downcast_ref::<tungstenite::Error>() {
            return true;
        }
        source = e.source();
    }
    false
}

async fn write_loop(mut sink: SplitSink<WebSocket, Message>, out: OutboxReceiver) {
    let closing = tokio::select! {
        closing = pump(&mut sink, &out) => closing,
        // Even while a write waits on a client that stopped reading.
        () = out.overflow() => Some((4008, "slow consumer")),
    };
    if let Some((code, reason)) = closing {
        // A client that stopped reading may never take the close frame.
        let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, close(&mut sink, code, reason)).await;
    }
}

/// Writes everything queued, then flushes once; returns the close to send
/// (`None` when the connection ended or the socket failed).
async fn pump(
    sink: &mut SplitSink<WebSocket, Message>,
    out: &OutboxReceiver,
) -> Option<(u16, &'static str)> {
    while let Some(batch) = out.next_batch().await {
        for item in batch {
            if out.overflowed() {
                return Some((4008, "slow consumer"));
            }
            match item {
                Outbound::Text(text) => {
                    let len = text.len();
                    sink.feed(Message::Text(text)).await.ok()?;
                    out.sent(len);
                }
                Outbound::Ping => sink.feed(Message::Ping(bytes::Bytes::new())).await.ok()?,
                Outbound::Close(code, reason) => return Some((code, reason)),
            }
        }
        sink.flush().await.ok()?;
    }
    None
}

async fn close(
    sink: &mut SplitSink<WebSocket, Message>,
    code: u16,
    reason: &'static str,
) -> Result<(), axum::Error> {
    sink.send(Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    })))
    .await?;
    sink.close().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::type_complexity)]
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(
            Arc<Shared>,
            SplitStream<WebSocket>,
            tokio::task::JoinHandle<()>,
            Outbox,
            SocketAddr,
            Option<Identity>,
            opentelemetry::Context,
            crate::admission::Slot,
        ) -> Fut,
    {
        std::mem::size_of::<Fut>()
    }

    /// An idle connection's task holds the read loop's state only; command
    /// handling is boxed while it runs (unboxed, this was over 4 KiB).
    #[test]
    fn an_idle_connection_task_is_small() {
        let size = future_size(serve);
        assert!(size < 3 * 1024, "connection task future is {size} bytes");
    }

    #[tokio::test(start_paused = true)]
    async fn heartbeat_ticks_close_on_missing_pongs_and_idleness() {
        let pong = Duration::from_secs(60);
        let idle = Duration::from_secs(30 * 60);
        let start = Instant::now();
        assert_eq!(liveness(start, start, pong, idle), None);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!(liveness(start, start, pong, idle), None, "60 s is not past");
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(liveness(start, start, pong, idle), Some((4012, "no pong")));
        // Pongs keep coming, commands do not.
        let mut last_pong = Instant::now();
        while start.elapsed() < idle {
            assert_eq!(liveness(last_pong, start, pong, idle), None);
            tokio::time::advance(Duration::from_secs(25)).await;
            last_pong = Instant::now();
        }
        assert_eq!(liveness(last_pong, start, pong, idle), Some((1000, "idle")));
        assert_eq!(liveness(last_pong, Instant::now(), pong, idle), None);
    }

    #[test]
    fn drain_closes_are_spread_over_the_whole_period() {
        let drain = Duration::from_secs(10);
        let delays: Vec<Duration> = (1..=1000).map(|key| drain_delay(key, drain)).collect();
        assert!(delays.iter().all(|d| *d < drain));
        // Every tenth of the period gets its share (80–120 of 1000).
        for tenth in 0..10 {
            let from = drain.mul_f64(f64::from(tenth) / 10.0);
            let to = drain.mul_f64(f64::from(tenth + 1) / 10.0);
            let share = delays.iter().filter(|d| **d >= from && **d < to).count();
            assert!((80..=120).contains(&share), "tenth {tenth}: {share}");
        }
        assert_eq!(drain_delay(7, Duration::ZERO), Duration::ZERO);
    }
}
