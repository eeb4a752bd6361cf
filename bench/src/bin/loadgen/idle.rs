//! `idle`: N authenticated connections held open, answering pings; the
//! edge's RSS growth divided by N is the cost of an idle connection.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::client::Client;
use crate::{Run, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Connections to hold.
    #[arg(long, default_value_t = 10_000)]
    connections: usize,
    /// Seconds to hold them once all are open (RSS is read at the end).
    #[arg(long, default_value_t = 10)]
    hold_s: u64,
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Value> {
    let rss_before = run.edge_rss();
    let gate = Arc::new(Semaphore::new(run.connect_concurrency));
    let (stop_tx, stop_rx) = watch::channel(false);
    let (opened_tx, mut opened_rx) = tokio::sync::mpsc::unbounded_channel::<bool>();
    let started = Instant::now();
    let mut tasks = JoinSet::new();
    for n in 0..args.connections {
        let (target, gate, mut stop, opened) = (
            run.target.clone(),
            gate.clone(),
            stop_rx.clone(),
            opened_tx.clone(),
        );
        let user = format!("{}-{n}", run.prefix);
        tasks.spawn(async move {
            let permit = gate.acquire_owned().await;
            let client = Client::signed_in(&target, n, &user).await;
            drop(permit);
            let mut client = match client {
                Ok(client) => client,
                Err(e) => {
                    let _ = opened.send(false);
                    return Some(format!("connect: {e}"));
                }
            };
            let _ = opened.send(true);
            // Hold: keep reading (answers the edge's pings) until told to stop.
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    frame = client.next_text() => match frame {
                        Ok(Some(_)) => {}
                        Ok(None) => return Some("closed by the server while idle".into()),
                        Err(e) => return Some(format!("while idle: {e}")),
                    },
                }
            }
            client.close().await;
            None
        });
    }
    drop(opened_tx);
    let (mut open, mut failed) = (0usize, 0usize);
    for _ in 0..args.connections {
        let Some(ok) = opened_rx.recv().await else {
            break;
        };
        if ok {
            open += 1;
        } else {
            failed += 1;
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.hold_s)).await;
    let rss_after = run.edge_rss();
    let own_rss = parley_bench::procfs::rss_bytes(std::process::id());
    let _ = stop_tx.send(true);
    let mut errors = Vec::new();
    let mut dropped = 0usize;
    while let Some(done) = tasks.join_next().await {
        if let Ok(Some(error)) = done {
            if !error.starts_with("connect:") {
                dropped += 1;
            }
            if errors.len() < 5 {
                errors.push(error);
            }
        }
    }
    let per_conn = match (rss_before, rss_after) {
        (Some(before), Some(after)) if open > 0 => {
            json!(after.saturating_sub(before) / open as u64)
        }
        _ => Value::Null,
    };
    Ok(json!({
        "scenario": "idle",
        "connections": open,
        "failed": failed,
        "dropped_while_held": dropped,
        "connect_s": round(connect_s, 2),
        "connects_per_s": round(open as f64 / connect_s, 0),
        "hold_s": args.hold_s,
        "edge_rss_before_bytes": rss_before,
        "edge_rss_after_bytes": rss_after,
        "edge_rss_per_connection_bytes": per_conn,
        "loadgen_rss_bytes": own_rss,
        "errors": errors,
    }))
}
