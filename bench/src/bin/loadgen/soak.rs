//! `soak`: N connections in R rooms of up to 1,000 members while messages
//! flow at a fixed total rate for minutes. Every subscriber checks seq
//! order and counts; the edge's RSS and CPU are sampled throughout. It
//! passes when the edge kept up with the rate, nothing was refused, lost,
//! out of order or disconnected, and the edge's RSS grew at most 5 % from
//! the end of warm-up to the end.

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::SinkExt;
use serde_json::{Value, json};
use tokio::sync::{Semaphore, mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::{Instant, Interval};
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Client, Incoming, Target, number_after};
use crate::{Run, own_cpu, round};

/// Most members of a room, subscribers and senders together.
const MAX_MEMBERS: usize = 1_000;
/// Most RSS growth after warm-up that passes, in percent.
const MAX_RSS_GROWTH_PCT: f64 = 5.0;
/// Least share of `--rate` the edge must accept for a pass: messages
/// accepted over the time from the first send to the last reply.
const MIN_RATE_SHARE: f64 = 0.98;
/// Longest a sender waits for its next reply before it gives up on the rest.
const REPLY_GAP: Duration = Duration::from_secs(30);
/// Longest wait after the replies for deliveries still under way.
const SETTLE: Duration = Duration::from_secs(10);
/// Error strings kept for the summary.
const ERRORS_KEPT: usize = 5;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subscribing connections; connection i joins room i % rooms.
    #[arg(long, default_value_t = 19_900)]
    connections: usize,
    #[arg(long, default_value_t = 20)]
    rooms: usize,
    /// Messages per second, all rooms together.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    /// Minutes of sending, warm-up included.
    #[arg(long, default_value_t = 10.0)]
    minutes: f64,
    /// Seconds of warm-up: RSS growth counts from the first sample after.
    #[arg(long, default_value_t = 60)]
    warmup_s: u64,
    /// Seconds between samples of the edge's RSS and CPU.
    #[arg(long, default_value_t = 10)]
    sample_s: u64,
    /// Sending connections per room (members without a subscription).
    #[arg(long, default_value_t = 1)]
    senders_per_room: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
}

/// Counters every task of the run adds to.
struct Shared {
    /// Messages accepted, per room.
    accepted: Vec<AtomicU64>,
    refused: AtomicU64,
    delivered: AtomicU64,
    disconnects: AtomicU64,
}

/// A connection that ended before the run did.
struct Disconnect {
    /// The edge's close code, if it sent a close frame.
    code: Option<u16>,
    error: String,
}

impl Disconnect {
    fn closed(who: &str, code: Option<u16>) -> Self {
        let error = match code {
            Some(code) => format!("{who}: closed by the edge with {code}"),
            None => format!("{who}: closed by the edge without a close frame"),
        };
        Disconnect { code, error }
    }

    fn failed(who: &str, error: impl Display) -> Self {
        Disconnect {
            code: None,
            error: format!("{who}: {error}"),
        }
    }
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    delivered: u64,
    out_of_order: u64,
    setup_error: Option<String>,
    disconnect: Option<Disconnect>,
}

/// One sender's share of the messages.
struct Share {
    sender: usize,
    room: usize,
    room_id: String,
    count: u64,
    ticks: Interval,
}

/// What one sender did.
struct Sent {
    written: u64,
    /// When its last reply came.
    last_reply: Option<Instant>,
    /// The first refusal's reply.
    refusal: Option<String>,
    disconnect: Option<Disconnect>,
}

/// One reading of the edge, `at` seconds after the first send.
struct Sample {
    at: f64,
    rss_kb: u64,
    edge_cpu_s: f64,
    own_cpu_s: f64,
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.rooms > 0 && args.connections >= args.rooms,
        "need at least one connection per room"
    );
    let members = args.connections.div_ceil(args.rooms) + args.senders_per_room;
    anyhow::ensure!(
        members <= MAX_MEMBERS,
        "{members} members per room (subscribers and senders); at most {MAX_MEMBERS}: add rooms"
    );
    anyhow::ensure!(
        args.rate > 0 && args.sample_s > 0 && args.senders_per_room > 0 && args.text_bytes > 0,
        "--rate, --sample-s, --senders-per-room and --text-bytes must be positive"
    );
    let seconds = args.minutes * 60.0;
    anyhow::ensure!(
        (args.warmup_s + args.sample_s) as f64 <= seconds,
        "--minutes must leave at least one --sample-s after --warmup-s"
    );
    anyhow::ensure!(
        run.edge_pid.is_some(),
        "soak needs --edge-pid: it passes on the edge's RSS growth"
    );
    // Fails early when the edge's figures cannot be read.
    sample(run, Instant::now())?;
    let target = &run.target;
    let setup_started = Instant::now();

    // The first member of each room creates it.
    let mut creators = Vec::with_capacity(args.rooms);
    let mut rooms = Vec::with_capacity(args.rooms);
    for r in 0..args.rooms {
        let mut client = Client::signed_in(target, r, &format!("{}-sub-{r}", run.prefix)).await?;
        let reply = client
            .request(
                "room.create",
                json!({"name": format!("{}-room-{r}", run.prefix)}),
            )
            .await?;
        let room = reply["room"]["id"].as_str().context("room id")?.to_string();
        client.request("room.join", json!({"room": room})).await?;
        creators.push(client);
        rooms.push(room);
    }
    let shared = Arc::new(Shared {
        accepted: (0..args.rooms).map(|_| AtomicU64::new(0)).collect(),
        refused: AtomicU64::new(0),
        delivered: AtomicU64::new(0),
        disconnects: AtomicU64::new(0),
    });

    // The others join; every subscriber reads from its join on (nothing
    // piles up unread while the rest join) and counts until told to stop.
    let gate = Arc::new(Semaphore::new(run.connect_concurrency));
    let (joined_tx, mut joined_rx) = mpsc::unbounded_channel::<()>();
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut creators = creators.into_iter();
    let mut subscribers = JoinSet::new();
    for n in 0..args.connections {
        let first = creators.next();
        let (target, gate, joined, stop, shared) = (
            target.clone(),
            gate.clone(),
            joined_tx.clone(),
            stop_rx.clone(),
            shared.clone(),
        );
        let room = rooms[n % args.rooms].clone();
        let user = format!("{}-sub-{n}", run.prefix);
        subscribers.spawn(async move {
            let client = match first {
                Some(client) => Ok(client),
                None => {
                    let _permit = gate.acquire_owned().await;
                    member(&target, n, &user, &room).await
                }
            };
            let _ = joined.send(());
            match client {
                Ok(client) => subscribe(client, n, stop, &shared).await,
                Err(e) => Seen {
                    setup_error: Some(format!("subscriber {n}: setup: {e}")),
                    ..Seen::default()
                },
            }
        });
    }
    drop(joined_tx);
    for _ in 0..args.connections {
        if joined_rx.recv().await.is_none() {
            break;
        }
    }

    // Senders: members who leave their subscription (not the membership),
    // so their own copies stay out of the counts.
    let senders = args.rooms * args.senders_per_room;
    let mut sender_clients = Vec::with_capacity(senders);
    for s in 0..senders {
        let room = &rooms[s % args.rooms];
        let user = format!("{}-snd-{s}", run.prefix);
        let mut client = member(target, args.connections + s, &user, room).await?;
        client.request("room.leave", json!({"room": room})).await?;
        sender_clients.push(client);
    }
    let setup_s = setup_started.elapsed().as_secs_f64();

    let period = Duration::from_secs_f64(senders as f64 / args.rate as f64);
    let per_sender = (args.rate as f64 * seconds / senders as f64).ceil() as u64;
    let text: Arc<str> = "x".repeat(args.text_bytes).into();
    let start = Instant::now();
    let mut sending = JoinSet::new();
    for (s, client) in sender_clients.into_iter().enumerate() {
        // Senders start spread over one period, so they never fire together.
        let phase = period.mul_f64(s as f64 / senders as f64);
        let mut ticks = tokio::time::interval_at(start + phase, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let share = Share {
            sender: s,
            room: s % args.rooms,
            room_id: rooms[s % args.rooms].clone(),
            count: per_sender,
            ticks,
        };
        sending.spawn(send(client, share, text.clone(), shared.clone()));
    }

    // Samples every --sample-s from the first send, and one at the end.
    let duration = Duration::from_secs_f64(seconds);
    let every = Duration::from_secs(args.sample_s);
    let mut samples = Vec::new();
    let mut at = Duration::ZERO;
    while at < duration {
        tokio::time::sleep_until(start + at).await;
        let sample = sample(run, start)?;
        eprintln!(
            "soak: {:.0} s, edge RSS {} kB, {} deliveries, {} disconnects",
            sample.at,
            sample.rss_kb,
            shared.delivered.load(Ordering::Relaxed),
            shared.disconnects.load(Ordering::Relaxed),
        );
        samples.push(sample);
        at += every;
    }
    tokio::time::sleep_until(start + duration).await;
    samples.push(sample(run, start)?);
    // The first sample at or after warm-up; `ensure` above keeps it before
    // the end.
    let base = &samples[args.warmup_s.div_ceil(args.sample_s) as usize];
    let end = samples.last().context("no samples")?;

    let (mut written, mut last_reply) = (0, start);
    let mut errors = Vec::new();
    let mut close_codes = BTreeMap::<String, u64>::new();
    let mut note = |disconnect: Option<Disconnect>, errors: &mut Vec<String>| {
        if let Some(d) = disconnect {
            let code = d.code.map_or("none".to_string(), |c| c.to_string());
            *close_codes.entry(code).or_default() += 1;
            errors.push(d.error);
        }
    };
    while let Some(done) = sending.join_next().await {
        let sent = done?;
        written += sent.written;
        last_reply = last_reply.max(sent.last_reply.unwrap_or(start));
        errors.extend(sent.refusal);
        note(sent.disconnect, &mut errors);
    }
    let accepted = shared
        .accepted
        .iter()
        .map(|a| a.load(Ordering::Relaxed))
        .sum::<u64>();
    let refused = shared.refused.load(Ordering::Relaxed);
    // Room r has every connection i with i % rooms == r.
    let expected = (0..args.rooms)
        .map(|r| {
            let subscribers =
                args.connections / args.rooms + usize::from(r < args.connections % args.rooms);
            shared.accepted[r].load(Ordering::Relaxed) * subscribers as u64
        })
        .sum::<u64>();

    client::settle(&shared.delivered, expected, SETTLE).await;
    let _ = stop_tx.send(true);

    let (mut delivered, mut out_of_order, mut setup_failed) = (0u64, 0u64, 0usize);
    while let Some(done) = subscribers.join_next().await {
        let seen = done?;
        delivered += seen.delivered;
        out_of_order += seen.out_of_order;
        if let Some(error) = seen.setup_error {
            setup_failed += 1;
            errors.push(error);
        }
        note(seen.disconnect, &mut errors);
    }
    errors.truncate(ERRORS_KEPT);
    let disconnects = close_codes.values().sum::<u64>();
    let lost = expected.saturating_sub(delivered);
    let unanswered = written.saturating_sub(accepted + refused);
    let send_s = (last_reply - start).as_secs_f64();
    let messages_per_s = accepted as f64 / send_s.max(1e-3);

    let steady_s = end.at - base.at;
    let edge_cpu_s = end.edge_cpu_s - base.edge_cpu_s;
    let own_cpu_s = end.own_cpu_s - base.own_cpu_s;
    let growth_pct = (end.rss_kb as f64 / base.rss_kb as f64 - 1.0) * 100.0;
    let ok = messages_per_s >= args.rate as f64 * MIN_RATE_SHARE
        && refused == 0
        && unanswered == 0
        && lost == 0
        && out_of_order == 0
        && disconnects == 0
        && setup_failed == 0
        && growth_pct <= MAX_RSS_GROWTH_PCT;
    Ok(json!({
        "scenario": "soak",
        "connections": args.connections,
        "rooms": args.rooms,
        "senders": senders,
        "rate": args.rate,
        "seconds": round(seconds, 1),
        "warmup_s": args.warmup_s,
        "setup_s": round(setup_s, 1),
        "setup_failed": setup_failed,
        "messages_sent": written,
        "messages_accepted": accepted,
        "messages_refused": refused,
        "messages_unanswered": unanswered,
        "send_s": round(send_s, 1),
        "messages_per_s": round(messages_per_s, 0),
        "deliveries": delivered,
        "deliveries_expected": expected,
        "lost": lost,
        "out_of_order": out_of_order,
        "disconnects": disconnects,
        "close_codes": close_codes,
        "steady_s": round(steady_s, 1),
        "edge_cpu_s": round(edge_cpu_s, 2),
        "edge_cpu_pct": round(edge_cpu_s * 100.0 / steady_s, 1),
        "loadgen_cpu_pct": round(own_cpu_s * 100.0 / steady_s, 1),
        "rss_samples_kb": samples.iter().map(|s| s.rss_kb).collect::<Vec<_>>(),
        "rss_after_warmup_kb": base.rss_kb,
        "rss_end_kb": end.rss_kb,
        "rss_growth_pct": round(growth_pct, 2),
        "rss_max_kb": samples.iter().map(|s| s.rss_kb).max(),
        "errors": errors,
        "ok": ok,
    }))
}

/// Connection `n` signs in as `user` and joins `room`.
async fn member(target: &Target, n: usize, user: &str, room: &str) -> anyhow::Result<Client> {
    let mut client = Client::signed_in(target, n, user).await?;
    client.request("room.join", json!({"room": room})).await?;
    Ok(client)
}

/// Counts subscriber `n`'s messages until `stop`; each `message.new` must
/// carry the seq after the previous one.
async fn subscribe(
    mut client: Client,
    n: usize,
    mut stop: watch::Receiver<bool>,
    shared: &Shared,
) -> Seen {
    let mut seen = Seen::default();
    let mut last_seq = 0;
    loop {
        let incoming = tokio::select! {
            _ = stop.changed() => break,
            incoming = client.next_incoming() => incoming,
        };
        let disconnect = match incoming {
            Ok(Incoming::Text(text)) => {
                if text.contains("\"type\":\"message.new\"") {
                    let seq = number_after(&text, "\"seq\":").unwrap_or(0);
                    if last_seq != 0 && seq != last_seq + 1 {
                        seen.out_of_order += 1;
                    }
                    last_seq = seq;
                    seen.delivered += 1;
                    shared.delivered.fetch_add(1, Ordering::Relaxed);
                }
                continue;
            }
            Ok(Incoming::Closed(code)) => Disconnect::closed(&format!("subscriber {n}"), code),
            Err(e) => Disconnect::failed(&format!("subscriber {n}"), e),
        };
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
        seen.disconnect = Some(disconnect);
        break;
    }
    seen
}

/// Sends one share of the messages; a reader of its own counts the
/// replies, so sends never wait on a round trip.
async fn send(client: Client, mut share: Share, text: Arc<str>, shared: Arc<Shared>) -> Sent {
    let (mut sink, mut stream, mut next_id) = client.split();
    let (count, room) = (share.count, share.room);
    let who = format!("sender {}", share.sender);
    let (counters, reader_who) = (shared.clone(), who.clone());
    let reader = tokio::spawn(async move {
        let (mut got, mut last_reply, mut refusal) = (0, None, None);
        while got < count {
            let Ok(incoming) =
                tokio::time::timeout(REPLY_GAP, client::next_incoming(&mut stream)).await
            else {
                // The rest count as unanswered.
                break;
            };
            match incoming {
                Ok(Incoming::Text(reply)) if reply.contains("\"type\":\"reply\"") => {
                    got += 1;
                    last_reply = Some(Instant::now());
                    if reply.contains("\"ok\":true") {
                        counters.accepted[room].fetch_add(1, Ordering::Relaxed);
                    } else {
                        counters.refused.fetch_add(1, Ordering::Relaxed);
                        refusal.get_or_insert_with(|| format!("{reader_who}: refused: {reply}"));
                    }
                }
                Ok(Incoming::Text(_)) => {}
                Ok(Incoming::Closed(code)) => {
                    let disconnect = Disconnect::closed(&reader_who, code);
                    return (last_reply, refusal, Some(disconnect));
                }
                Err(e) => {
                    let disconnect = Disconnect::failed(&reader_who, e);
                    return (last_reply, refusal, Some(disconnect));
                }
            }
        }
        (last_reply, refusal, None)
    });
    let mut written = 0;
    let mut write_error = None;
    for n in 0..count {
        share.ticks.tick().await;
        let frame = json!({
            "type": "message.send", "id": next_id, "room": share.room_id,
            "text": &*text, "client_msg_id": format!("{}-{n}", share.sender),
        });
        next_id += 1;
        if let Err(e) = sink.send(Message::text(frame.to_string())).await {
            write_error = Some(Disconnect::failed(&who, format!("write: {e}")));
            break;
        }
        written += 1;
    }
    let (last_reply, refusal, disconnect) = match reader.await {
        Ok(ended) => ended,
        Err(e) => (None, None, Some(Disconnect::failed(&who, e))),
    };
    let disconnect = disconnect.or(write_error);
    if disconnect.is_some() {
        shared.disconnects.fetch_add(1, Ordering::Relaxed);
    }
    Sent {
        written,
        last_reply,
        refusal,
        disconnect,
    }
}

/// Reads the edge's RSS and CPU time, and this process's CPU time.
fn sample(run: &Run, start: Instant) -> anyhow::Result<Sample> {
    let gone = "the edge's /proc entry is gone: did it exit?";
    Ok(Sample {
        at: start.elapsed().as_secs_f64(),
        rss_kb: run.edge_rss().context(gone)? / 1024,
        edge_cpu_s: run.edge_cpu().context(gone)?,
        own_cpu_s: own_cpu(),
    })
}
