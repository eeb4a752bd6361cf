//! `ai`: N users each ask the assistant at once; an OpenAI-compatible model
//! server inside this process streams every reply as stamped chunks. The
//! figures: how many streams ai-service held open at once, and the relay
//! overhead per delta — from the model server writing a chunk to the
//! client reading its `ai.delta` (one clock: both ends are this process).
//!
//! The suite must use this process's model server:
//! `PARLEY_AI_PROVIDER=openai PARLEY_AI_BASE_URL=http://<--model-listen>/v1`.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::body::Body;
use axum::http::header;
use axum::response::Response;
use axum::routing::post;
use common::testing::Reply;
use serde_json::{Value, json};
use tokio::sync::{Barrier, Semaphore};
use tokio::task::JoinSet;

use crate::client::{Client, now_us, number_after};
use crate::{Run, own_cpu, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Users asking at once (one stream each).
    #[arg(long, default_value_t = 1_000)]
    streams: usize,
    /// Chunks per reply.
    #[arg(long, default_value_t = 40)]
    chunks: usize,
    /// Pause between chunks; with the default, every reply lasts ~4 s, so
    /// all of them stream at the same time.
    #[arg(long, default_value_t = 100)]
    chunk_ms: u64,
    /// Where the model server listens.
    #[arg(long, default_value = "127.0.0.1:18080")]
    model_listen: SocketAddr,
}

/// Streams the model server is writing now, and the most at once.
#[derive(Default)]
struct Gauge {
    open: AtomicUsize,
    peak: AtomicUsize,
}

async fn model_server(args: &Args, gauge: Arc<Gauge>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(args.model_listen)
        .await
        .with_context(|| format!("model server on {}", args.model_listen))?;
    let (chunks, pause) = (args.chunks, Duration::from_millis(args.chunk_ms));
    let app = Router::new().route(
        "/v1/chat/completions",
        post(move || {
            let gauge = gauge.clone();
            async move {
                let now = gauge.open.fetch_add(1, Ordering::Relaxed) + 1;
                gauge.peak.fetch_max(now, Ordering::Relaxed);
                let body = async_stream(chunks, pause, gauge);
                Response::builder()
                    .header(header::CONTENT_TYPE, "text/event-stream")
                    .body(Body::from_stream(body))
                    .expect("response")
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(())
}

/// The SSE chunks of one reply, each stamped when it is written.
fn async_stream(
    chunks: usize,
    pause: Duration,
    gauge: Arc<Gauge>,
) -> impl futures::Stream<Item = Result<String, Infallible>> {
    futures::stream::unfold(0usize, move |n| {
        let gauge = gauge.clone();
        async move {
            if n > chunks {
                return None;
            }
            if n > 0 {
                tokio::time::sleep(pause).await;
            }
            if n == chunks {
                gauge.open.fetch_sub(1, Ordering::Relaxed);
                return Some((Ok(Reply::end()), n + 1));
            }
            Some((Ok(Reply::event(&format!("{} ", now_us()))), n + 1))
        }
    })
}

/// What one asker saw.
#[derive(Default)]
struct Seen {
    deltas: u64,
    /// Deltas whose index was not the next one.
    gaps: u64,
    done: bool,
    latencies_us: Vec<u32>,
    error: Option<String>,
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Value> {
    let gauge = Arc::new(Gauge::default());
    model_server(&args, gauge.clone()).await?;
    let gate = Arc::new(Semaphore::new(run.connect_concurrency));
    let ready = Arc::new(Barrier::new(args.streams + 1));
    let mut askers = JoinSet::new();
    for n in 0..args.streams {
        let (target, gate, ready) = (run.target.clone(), gate.clone(), ready.clone());
        let user = format!("{}-ai-{n}", run.prefix);
        askers.spawn(async move {
            let mut seen = Seen::default();
            let permit = gate.acquire_owned().await;
            let setup = async {
                let mut client = Client::signed_in(&target, n, &user).await?;
                let reply = client
                    .request(
                        "room.create",
                        json!({"name": format!("{user}-room"), "visibility": "private"}),
                    )
                    .await?;
                let room = reply["room"]["id"].as_str().context("room id")?.to_string();
                client.request("room.join", json!({"room": room})).await?;
                anyhow::Ok((client, room))
            }
            .await;
            drop(permit);
            ready.wait().await;
            let (mut client, room) = match setup {
                Ok(ok) => ok,
                Err(e) => {
                    seen.error = Some(format!("setup: {e}"));
                    return seen;
                }
            };
            if let Err(e) = client
                .send(
                    "ai.ask",
                    json!({"room": room, "prompt": "benchmark", "client_msg_id": "ask"}),
                )
                .await
            {
                seen.error = Some(format!("ask: {e}"));
                return seen;
            }
            let mut next_index = 0;
            loop {
                let text = match client.next_text().await {
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
                if text.contains("\"type\":\"ai.delta\"") {
                    let now = now_us();
                    if let Some(stamp) = number_after(&text, "\"text\":\"") {
                        seen.latencies_us
                            .push(now.saturating_sub(stamp).min(u64::from(u32::MAX)) as u32);
                    }
                    if number_after(&text, "\"index\":") != Some(next_index) {
                        seen.gaps += 1;
                    }
                    next_index += 1;
                    seen.deltas += 1;
                } else if text.contains("\"type\":\"ai.done\"") {
                    seen.done = true;
                    break;
                } else if text.contains("\"type\":\"ai.error\"")
                    || (text.contains("\"type\":\"reply\"") && text.contains("\"ok\":false"))
                {
                    seen.error = Some(text.to_string());
                    break;
                }
            }
            seen
        });
    }
    ready.wait().await;
    let cpu_edge_start = run.edge_cpu();
    let cpu_own_start = own_cpu();
    let started = std::time::Instant::now();
    let (mut done, mut deltas, mut gaps) = (0usize, 0u64, 0u64);
    let mut latencies = Vec::new();
    let mut errors = Vec::new();
    let mut failed = 0usize;
    while let Some(result) = askers.join_next().await {
        let seen = result?;
        done += usize::from(seen.done);
        deltas += seen.deltas;
        gaps += seen.gaps;
        latencies.extend(seen.latencies_us);
        if let Some(error) = seen.error {
            failed += 1;
            if errors.len() < 5 {
                errors.push(error);
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_server = match (cpu_edge_start, run.edge_cpu()) {
        (Some(a), Some(b)) => Some(b - a),
        _ => None,
    };
    Ok(json!({
        "scenario": "ai",
        "streams": args.streams,
        "completed": done,
        "failed": failed,
        "peak_concurrent_streams": gauge.peak.load(Ordering::Relaxed),
        "chunks_per_reply": args.chunks,
        "deltas": deltas,
        "index_gaps": gaps,
        "seconds": round(seconds, 2),
        "relay_latency_ms": parley_bench::latency_summary(&mut latencies),
        "server_cpu_s": cpu_server.map(|c| round(c, 2)),
        "server_cpu_us_per_delta": cpu_server.map(|c| round(c * 1e6 / deltas.max(1) as f64, 1)),
        "loadgen_cpu_s": round(own_cpu() - cpu_own_start, 2),
        "errors": errors,
    }))
}
