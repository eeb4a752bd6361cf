//! One WebSocket connection: hello, authentication window, heartbeats, the
//! read loop that runs each command, and a writer task that drains the
//! outbox, flushing queued frames together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use proto::auth::v1::Identity;
use protocol::{CloseCode, User};
use tokio::time::Instant;

use crate::Shared;
use crate::commands::{self, Flow};
use crate::frames::{self, CommandError};
use crate::outbox::{Outbound, Outbox, OutboxReceiver, outbox};
use crate::pipeline::Pipeline;
use crate::session::Session;
use crate::socket::{Batch, Incoming, Io, ReadError, Reader, Writer};
use crate::token_life::Step;

static NEXT_CONN: AtomicU64 = AtomicU64::new(1);

/// How long a close frame may take to write before the socket is dropped.
const CLOSE_WRITE_TIMEOUT: Duration = Duration::from_secs(1);

/// Starts a connection's writer task and returns the connection task. Not
/// an `async fn`: one keeps room for its arguments for as long as it runs,
/// and an unsplit socket is large; every idle connection would carry it.
pub(crate) fn run(
    shared: Arc<Shared>,
    socket: Io,
    peer: SocketAddr,
    identity: Option<Identity>,
    parent: opentelemetry::Context,
    slot: crate::admission::Slot,
) -> impl Future<Output = ()> + Send {
    let (read, write) = tokio::io::split(socket);
    let stream = Reader::new(read, shared.config.max_message_bytes);
    let (outbox, out_rx) = outbox(shared.config.outbound_queue_bytes);
    let writer = tokio::spawn(write_loop(
        Writer::new(write),
        out_rx,
        shared.metrics.clone(),
    ));
    serve(shared, stream, writer, outbox, peer, identity, parent, slot)
}

/// The connection task: reads frames, runs commands, keeps time.
#[allow(clippy::too_many_arguments)]
async fn serve(
    shared: Arc<Shared>,
    mut stream: Reader<ReadHalf>,
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
    let metrics = &shared.metrics;
    metrics.connections_accepted.inc();
    metrics.connections.inc();
    // The code the client closed with, if it sent a close frame.
    let mut client_close: Option<u16> = None;
    // A finished JoinHandle must not be polled again.
    let mut writer_done = false;
    let key = NEXT_CONN.fetch_add(1, Ordering::Relaxed);
    let mut session = Session::new(shared.clone(), key, peer, outbox.clone(), parent);
    let config = &shared.config;
    if identity.is_some() {
        session.start_signed_frames();
    }
    outbox.push(frames::hello(
        &session.link.id,
        config.auth_timeout_ms,
        config.heartbeat_ms,
        config.max_message_bytes,
        identity.as_ref().map(User::from),
        session.signed.as_ref().map(|s| s.secret()),
    ));
    // A refused upgrade-time identity (user at the connection limit)
    // closes right after `hello`.
    let mut refused = false;
    if let Some(identity) = identity
        && let Err(error) = Box::pin(session.authenticated(identity)).await
    {
        outbox.push(frames::failure(Some("auth"), None, &error, None));
        if let Some(close) = error.close {
            outbox.close(close);
        }
        refused = true;
    }
    tracing::debug!(conn_id = %session.link.id, peer = %peer.ip(), "connection opened");

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
    // Room-ordered commands in flight; none (and no allocation) while idle.
    let mut pipeline: Option<Box<Pipeline>> = None;
    let max_in_flight = config.max_commands_in_flight;

    loop {
        if refused {
            break;
        }
        let token_step = session.life.next();
        tokio::select! {
            _ = tokio::time::sleep_until(token_step.map_or_else(Instant::now, |(at, _)| at)), if token_step.is_some() => {
                let step = token_step.map(|(_, step)| step).unwrap_or(Step::Expire);
                match session.life.fire(step) {
                    Some(warning) => {
                        outbox.push(warning);
                    }
                    None => {
                        settle(&mut pipeline).await;
                        outbox.close(CloseCode::TokenExpired);
                        break;
                    }
                }
            }
            _ = &mut shutdown, if drain_at.is_none() => {
                // Commands in flight finish before the connection ends (see
                // below); the close itself waits for this connection's turn.
                let drain = Duration::from_millis(config.drain_ms);
                drain_at = Some(Instant::now() + drain_delay(key, drain));
            }
            _ = tokio::time::sleep_until(drain_at.unwrap_or_else(Instant::now)), if drain_at.is_some() => {
                settle(&mut pipeline).await;
                outbox.close(CloseCode::Draining);
                break;
            }
            _ = tokio::time::sleep_until(auth_deadline), if session.identity.is_none() => {
                outbox.close(CloseCode::AuthTimeout);
                break;
            }
            _ = ticks.tick() => {
                if let Some(close) = liveness(last_pong, last_command, pong_timeout, idle_timeout) {
                    outbox.close(close);
                    break;
                }
                outbox.ping();
            }
            _ = &mut writer, if !writer_done => {
                writer_done = true;
                break;
            }
            () = next_done(&mut pipeline), if pipeline.is_some() => {
                if pipeline.as_ref().is_some_and(|p| p.in_flight() == 0) {
                    pipeline = None;
                }
            }
            // At the bound, the next frame waits until a command finishes.
            frame = stream.next(), if pipeline.as_ref().is_none_or(|p| p.in_flight() < max_in_flight) => match frame {
                Ok(None) => break,
                Ok(Some(Incoming::Close(code))) => {
                    outbox.close_reply(code);
                    client_close = Some(code.unwrap_or(NO_STATUS));
                    break;
                }
                Err(e) => {
                    if let Some(close) = close_for(&e) {
                        outbox.close(close);
                    }
                    break;
                }
                Ok(Some(Incoming::Text(text))) => {
                    metrics.frames_received.inc();
                    last_pong = Instant::now();
                    last_command = last_pong;
                    // Boxed: the command futures are large, and an idle
                    // connection should not carry their space.
                    if Box::pin(commands::handle(&mut session, &mut pipeline, &text)).await == Flow::Close {
                        break;
                    }
                }
                Ok(Some(Incoming::Binary)) => {
                    metrics.frames_received.inc();
                    binary_frames += 1;
                    if binary_frames > 1 {
                        outbox.close(CloseCode::BinaryFrames);
                        break;
                    }
                    let error = CommandError::bad_request("binary frames are not supported; send JSON text frames");
                    outbox.push(frames::failure(None, None, &error, None));
                }
                Ok(Some(Incoming::Pong)) => last_pong = Instant::now(),
                Ok(Some(Incoming::Ping(payload))) => outbox.pong(payload),
            },
        }
    }

    settle(&mut pipeline).await;
    Box::pin(session.close()).await;
    // The connection's own outbox handle and its user slot go now: the
    // writer ends once every handle is gone, and a slot is free again.
    drop(session);
    let closed = outbox.close_watch();
    drop(outbox);
    if !writer_done
        && tokio::time::timeout(Duration::from_secs(5), &mut writer)
            .await
            .is_err()
    {
        writer.abort();
    }
    let code = closed
        .code()
        .or(client_close.map(bounded_code))
        .unwrap_or(ABNORMAL);
    if code == CloseCode::SlowConsumer.code() {
        metrics.slow_consumer_disconnects.inc();
    }
    metrics.disconnects.get_or_create(&[("code", code)]).inc();
    metrics.connections.dec();
}

/// Waits for one command of the pipeline to finish.
async fn next_done(pipeline: &mut Option<Box<Pipeline>>) {
    match pipeline {
        Some(pipeline) => pipeline.next().await,
        None => std::future::pending().await,
    }
}

/// Waits for every command in flight (their replies go before a close the
/// server sends), and drops the pipeline.
async fn settle(pipeline: &mut Option<Box<Pipeline>>) {
    if let Some(mut running) = pipeline.take() {
        running.drain().await;
    }
}

/// Close code of a close frame without a status.
const NO_STATUS: u16 = 1005;
/// Close code of a connection that ended without a close frame.
const ABNORMAL: u16 = 1006;

/// A close code a client sent, as a metric label: the standard codes and
/// Parley's own as they are, anything else as 0 (so clients cannot grow the
/// label set).
fn bounded_code(code: u16) -> u16 {
    let known = (1000..=1015).contains(&code)
        || protocol::close::CLOSE_CODES
            .iter()
            .any(|row| row.code == code);
    if known { code } else { 0 }
}

/// What a heartbeat tick decides: close 4012 when no pong (or frame) came
/// within `pong_timeout`, 1000 `idle` when no command came within `idle`
/// (checked on each tick, so an idle close comes up to one heartbeat late).
fn liveness(
    last_pong: Instant,
    last_command: Instant,
    pong_timeout: Duration,
    idle: Duration,
) -> Option<CloseCode> {
    if last_pong.elapsed() > pong_timeout {
        Some(CloseCode::NoPong)
    } else if last_command.elapsed() >= idle {
        Some(CloseCode::Idle)
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

/// The close a read error deserves: 1009 for a frame over the size
/// limit, 1007 for a text frame that is not UTF-8; none when the socket
/// itself failed or the client broke the protocol.
fn close_for(error: &ReadError) -> Option<CloseCode> {
    match error {
        ReadError::TooLarge => Some(CloseCode::TooLarge),
        ReadError::InvalidUtf8 => Some(CloseCode::InvalidUtf8),
        ReadError::Protocol(reason) => {
            tracing::debug!(reason, "websocket protocol error");
            None
        }
        ReadError::Io(error) => {
            tracing::debug!(%error, "websocket read failed");
            None
        }
    }
}

/// The connection's two halves.
type ReadHalf = tokio::io::ReadHalf<Io>;
type WriteHalf = tokio::io::WriteHalf<Io>;

async fn write_loop(
    mut sink: Writer<WriteHalf>,
    out: OutboxReceiver,
    metrics: common::metrics::EdgeMetrics,
) {
    let closing = tokio::select! {
        closing = pump(&mut sink, &out, &metrics) => closing,
        // Even while a write waits on a client that stopped reading.
        () = out.overflow() => Some(Closing::Server(CloseCode::SlowConsumer)),
    };
    let mut batch = Batch::default();
    match closing {
        Some(Closing::Server(code)) => {
            out.closing(code);
            batch.close(Some(code.code()), code.reason());
        }
        Some(Closing::Reply(code)) => batch.close(code, ""),
        None => return,
    }
    // A client that stopped reading may never take the close frame.
    let _ = tokio::time::timeout(CLOSE_WRITE_TIMEOUT, async {
        sink.write(batch).await?;
        sink.shutdown().await
    })
    .await;
}

/// The close frame the writer ends with.
enum Closing {
    /// The server closes with this code.
    Server(CloseCode),
    /// The client closed; its status echoed.
    Reply(Option<u16>),
}

/// Writes everything queued as one batch at a time; returns the close to
/// send (`None` when the connection ended or the socket failed).
async fn pump(
    sink: &mut Writer<WriteHalf>,
    out: &OutboxReceiver,
    metrics: &common::metrics::EdgeMetrics,
) -> Option<Closing> {
    while let Some(queued) = out.next_batch().await {
        if out.overflowed() {
            return Some(Closing::Server(CloseCode::SlowConsumer));
        }
        let payload: usize = queued
            .iter()
            .map(|item| match item {
                Outbound::Text(text) => text.len(),
                _ => 0,
            })
            .sum();
        let mut batch = Batch::with_capacity(payload, queued.len());
        let (mut frames, mut text_bytes) = (0u64, 0usize);
        let mut closing = None;
        for item in queued {
            match item {
                Outbound::Text(text) => {
                    batch.text(text.as_str());
                    frames += 1;
                    text_bytes += text.len();
                }
                Outbound::Ping => batch.ping(),
                Outbound::Pong(payload) => batch.pong(&payload),
                Outbound::Close(code) => {
                    closing = Some(Closing::Server(code));
                    break;
                }
                Outbound::CloseReply(code) => {
                    closing = Some(Closing::Reply(code));
                    break;
                }
            }
        }
        if !batch.is_empty() {
            sink.write(batch).await.ok()?;
        }
        out.sent(text_bytes);
        metrics.frames_sent.inc_by(frames);
        metrics.bytes_sent.inc_by(text_bytes as u64);
        if closing.is_some() {
            return closing;
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[allow(clippy::type_complexity)]
    fn future_size<F, Fut>(_: F) -> usize
    where
        F: FnOnce(
            Arc<Shared>,
            Reader<ReadHalf>,
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
        assert_eq!(liveness(start, start, pong, idle), Some(CloseCode::NoPong));
        // Pongs keep coming, commands do not.
        let mut last_pong = Instant::now();
        while start.elapsed() < idle {
            assert_eq!(liveness(last_pong, start, pong, idle), None);
            tokio::time::advance(Duration::from_secs(25)).await;
            last_pong = Instant::now();
        }
        assert_eq!(
            liveness(last_pong, start, pong, idle),
            Some(CloseCode::Idle)
        );
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
