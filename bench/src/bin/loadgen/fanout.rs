//! `fanout`: S subscribers in R rooms; messages arrive at a fixed total
//! rate for T seconds. Every subscriber checks it gets each of its room's
//! messages once and in order; latency is from the sender's stamp to the
//! subscriber's read.
//!
//! Messages come either from WebSocket senders (`--via send`: the whole
//! path, stored by chat-service) or from chat-service's backend API
//! (`--via publish`: `custom` events, not stored — the edge's fan-out alone).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use common::Secret;
use common::grpc::{ClientSettings, channel};
use futures::SinkExt;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::{PublishEventRequest, publish_event_request};
use serde_json::{Value, json};
use tokio::sync::{Barrier, Semaphore, watch};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::Message;

use crate::client::{self, Client, now_us, number_after};
use crate::{Run, own_cpu, round};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum Via {
    /// `message.send` over WebSocket: stored, sequenced, then fanned out.
    Send,
    /// chat-service's `PublishEvent` (service credential): fan-out only.
    Publish,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Subscribing connections, spread evenly over the rooms.
    #[arg(long, default_value_t = 1_000)]
    subscribers: usize,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    /// Messages per second, all rooms together.
    #[arg(long, default_value_t = 5_000)]
    rate: u64,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    #[arg(long, value_enum, default_value = "send")]
    via: Via,
    /// Sending connections (or gRPC tasks) per room.
    #[arg(long, default_value_t = 2)]
    senders_per_room: usize,
    /// Bytes of text per message (besides the timestamp).
    #[arg(long, default_value_t = 64)]
    text_bytes: usize,
    /// chat-service's gRPC address, for `--via publish`.
    #[arg(long, default_value = "http://127.0.0.1:50052")]
    chat_url: String,
    /// Service credential, for `--via publish`.
    #[arg(long, env = "PARLEY_SERVICES_CREDENTIAL", hide_env_values = true)]
    credential: Option<String>,
    /// Seconds to wait after the last send for deliveries still under way.
    #[arg(long, default_value_t = 10)]
    settle_s: u64,
}

/// What one subscriber saw.
#[derive(Default)]
struct Seen {
    delivered: u64,
    out_of_order: u64,
    latencies_us: Vec<u32>,
    last_at_us: u64,
    error: Option<String>,
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.rooms > 0
            && args.subscribers >= args.rooms
            && args.subscribers.is_multiple_of(args.rooms),
        "--subscribers must be a positive multiple of --rooms"
    );
    let target = &run.target;
    let mut owner = Client::signed_in(target, 0, &format!("{}-owner", run.prefix)).await?;
    let mut rooms = Vec::with_capacity(args.rooms);
    for r in 0..args.rooms {
        let reply = owner
            .request(
                "room.create",
                json!({"name": format!("{}-room-{r}", run.prefix)}),
            )
            .await?;
        rooms.push(reply["room"]["id"].as_str().context("room id")?.to_string());
    }
    let rooms = Arc::new(rooms);

    // Subscribers join their room, then count until told to stop.
    let gate = Arc::new(Semaphore::new(run.connect_concurrency));
    let joined = Arc::new(Barrier::new(args.subscribers + 1));
    let (stop_tx, stop_rx) = watch::channel(false);
    let counted = Arc::new(AtomicU64::new(0));
    let mut subscribers = JoinSet::new();
    for n in 0..args.subscribers {
        let counted = counted.clone();
        let (target, gate, joined, rooms, mut stop) = (
            target.clone(),
            gate.clone(),
            joined.clone(),
            rooms.clone(),
            stop_rx.clone(),
        );
        let user = format!("{}-sub-{n}", run.prefix);
        let via = args.via;
        subscribers.spawn(async move {
            let mut seen = Seen::default();
            let permit = gate.acquire_owned().await;
            let room = &rooms[n % rooms.len()];
            let client = async {
                let mut client = Client::signed_in(&target, n + 1, &user).await?;
                client.request("room.join", json!({"room": room})).await?;
                anyhow::Ok(client)
            }
            .await;
            drop(permit);
            joined.wait().await;
            let mut client = match client {
                Ok(client) => client,
                Err(e) => {
                    seen.error = Some(format!("setup: {e}"));
                    return seen;
                }
            };
            let mut last_seq = 0;
            loop {
                let frame = tokio::select! {
                    _ = stop.changed() => break,
                    frame = client.next_text() => frame,
                };
                let text = match frame {
                    Ok(Some(text)) => text,
                    Ok(None) => {
                        seen.error = Some("closed by the server".into());
                        break;
                    }
                    Err(e) => {
                        seen.error = Some(e.to_string());
                        break;
                    }
                };
                let stamp = match via {
                    Via::Send if text.contains("\"type\":\"message.new\"") => {
                        let seq = number_after(&text, "\"seq\":").unwrap_or(0);
                        if last_seq != 0 && seq != last_seq + 1 {
                            seen.out_of_order += 1;
                        }
                        last_seq = seq;
                        number_after(&text, "\"text\":\"t=")
                    }
                    Via::Publish if text.contains("\"type\":\"custom\"") => {
                        number_after(&text, "\"t\":")
                    }
                    _ => None,
                };
                if let Some(stamp) = stamp {
                    let now = now_us();
                    seen.delivered += 1;
                    counted.fetch_add(1, Ordering::Relaxed);
                    seen.last_at_us = now;
                    seen.latencies_us
                        .push(now.saturating_sub(stamp).min(u64::from(u32::MAX)) as u32);
                }
            }
            seen
        });
    }
    joined.wait().await;

    // Senders: each its share of the rate, stamping every message.
    let senders = args.rooms * args.senders_per_room.max(1);
    let period = Duration::from_secs_f64(senders as f64 / args.rate.max(1) as f64);
    let per_sender = (args.rate * args.seconds).div_ceil(senders as u64);
    let padding = "x".repeat(args.text_bytes);
    let accepted = Arc::new(AtomicU64::new(0));
    let refused = Arc::new(AtomicU64::new(0));
    let publisher = match args.via {
        Via::Publish => {
            let credential = args
                .credential
                .clone()
                .context("--via publish needs --credential (or PARLEY_SERVICES_CREDENTIAL)")?;
            let settings = ClientSettings {
                credential: Secret::new(credential),
                connect_timeout: Duration::from_secs(2),
                timeout: Duration::from_secs(10),
            };
            Some(ChatBackendServiceClient::new(channel(
                &args.chat_url,
                &settings,
            )?))
        }
        Via::Send => None,
    };
    let mut sending = JoinSet::new();
    let mut sender_clients = Vec::new();
    if args.via == Via::Send {
        for s in 0..senders {
            let room = &rooms[s % rooms.len()];
            let mut client = Client::signed_in(
                target,
                args.subscribers + 1 + s,
                &format!("{}-snd-{s}", run.prefix),
            )
            .await?;
            // Members may post; leaving the subscription (not the membership)
            // keeps the senders' own copies out of the figures.
            client.request("room.join", json!({"room": room})).await?;
            client.request("room.leave", json!({"room": room})).await?;
            sender_clients.push(client);
        }
    }
    let cpu_edge_start = run.edge_cpu();
    let cpu_own_start = own_cpu();
    let started_us = now_us();
    let started = Instant::now();
    for s in 0..senders {
        let room = rooms[s % rooms.len()].clone();
        let padding = padding.clone();
        let (accepted, refused) = (accepted.clone(), refused.clone());
        // Senders start spread over one period: started together, every
        // sender would fire at the same instant, and the figure would be
        // the burst's own queueing (all rooms' deliveries at once).
        let phase = period.mul_f64(s as f64 / senders as f64);
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + phase, period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        match &publisher {
            Some(publisher) => {
                let publisher = publisher.clone();
                sending.spawn(async move {
                    for _ in 0..per_sender {
                        ticks.tick().await;
                        let request = PublishEventRequest {
                            target: Some(publish_event_request::Target::RoomId(room.clone())),
                            event: "bench".into(),
                            data_json: format!("{{\"t\":{},\"pad\":\"{padding}\"}}", now_us()),
                        };
                        match publisher.clone().publish_event(request).await {
                            Ok(_) => accepted.fetch_add(1, Ordering::Relaxed),
                            Err(_) => refused.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                });
            }
            None => {
                let (mut sink, mut stream, mut next_id) = sender_clients.remove(0).split();
                let prefix = format!("{s}-");
                sending.spawn(async move {
                    // Replies are counted by a reader of their own, so sends
                    // never wait on a round trip.
                    let reader = tokio::spawn(async move {
                        let mut got = 0;
                        while got < per_sender {
                            match client::next_text(&mut stream).await {
                                Ok(Some(text)) if text.contains("\"type\":\"reply\"") => {
                                    got += 1;
                                    if text.contains("\"ok\":true") {
                                        accepted.fetch_add(1, Ordering::Relaxed);
                                    } else {
                                        refused.fetch_add(1, Ordering::Relaxed);
                                    }
                                }
                                Ok(Some(_)) => {}
                                _ => break,
                            }
                        }
                    });
                    for n in 0..per_sender {
                        ticks.tick().await;
                        let frame = json!({
                            "type": "message.send", "id": next_id, "room": room,
                            "text": format!("t={} {padding}", now_us()),
                            "client_msg_id": format!("{prefix}{n}"),
                        });
                        next_id += 1;
                        if sink.send(Message::text(frame.to_string())).await.is_err() {
                            break;
                        }
                    }
                    let _ = tokio::time::timeout(Duration::from_secs(30), reader).await;
                });
            }
        }
    }
    while sending.join_next().await.is_some() {}
    let sent_s = started.elapsed().as_secs_f64();
    let accepted = accepted.load(Ordering::Relaxed);
    let expected = accepted * (args.subscribers / args.rooms) as u64;

    client::settle(&counted, expected, Duration::from_secs(args.settle_s)).await;
    let cpu_edge = match (cpu_edge_start, run.edge_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    let cpu_own = own_cpu() - cpu_own_start;
    let _ = stop_tx.send(true);

    let mut delivered = 0u64;
    let mut out_of_order = 0u64;
    let mut last_at = started_us;
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    while let Some(done) = subscribers.join_next().await {
        let seen = done?;
        delivered += seen.delivered;
        out_of_order += seen.out_of_order;
        last_at = last_at.max(seen.last_at_us);
        latencies.extend(seen.latencies_us);
        if let Some(error) = seen.error
            && errors.len() < 5
        {
            errors.push(error);
        }
    }
    let delivery_s = (last_at - started_us) as f64 / 1e6;
    Ok(json!({
        "scenario": "fanout",
        "via": format!("{:?}", args.via).to_lowercase(),
        "subscribers": args.subscribers,
        "rooms": args.rooms,
        "target_rate": args.rate,
        "messages_accepted": accepted,
        "messages_refused": refused.load(Ordering::Relaxed),
        "send_s": round(sent_s, 2),
        "messages_per_s": round(accepted as f64 / sent_s, 0),
        "deliveries": delivered,
        "deliveries_expected": expected,
        "lost": expected.saturating_sub(delivered),
        "out_of_order": out_of_order,
        "deliveries_per_s": round(delivered as f64 / delivery_s.max(1e-3), 0),
        "latency_ms": parley_bench::latency_summary(&mut latencies),
        "edge_cpu_s": cpu_edge.map(|c| round(c, 2)),
        "edge_cpu_us_per_delivery": cpu_edge.map(|c| round(c * 1e6 / delivered.max(1) as f64, 2)),
        "loadgen_cpu_s": round(cpu_own, 2),
        "errors": errors,
    }))
}
