//! `reconnect`: N clients join rooms and note the last `seq`; all drop;
//! messages are posted while they are away; then all reconnect at once,
//! sign in and `room.join{since}`. Recovered = the client holds exactly
//! the room's events after its `since` (none lost, none twice, in order).
//! The figure is the time from the reconnect burst until the last client
//! recovered.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::client::{Client, number_after};
use crate::{Run, own_cpu, round};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Reconnecting clients, spread evenly over the rooms.
    #[arg(long, default_value_t = 10_000)]
    clients: usize,
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Messages posted to each room while the clients are away.
    #[arg(long, default_value_t = 20)]
    missed: u64,
}

pub async fn run(run: &Run, args: Args) -> anyhow::Result<Value> {
    anyhow::ensure!(
        args.rooms > 0 && args.clients >= args.rooms,
        "need at least one client per room"
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
        let room = reply["room"]["id"].as_str().context("room id")?.to_string();
        // Something to recover past: the log does not start at the join.
        owner
            .request(
                "message.send",
                json!({"room": room, "text": "before", "client_msg_id": "before"}),
            )
            .await?;
        rooms.push(room);
    }
    let rooms = Arc::new(rooms);

    // 1. Everyone joins and remembers where its room's log ends.
    let gate = Arc::new(Semaphore::new(run.connect_concurrency));
    let mut joins = JoinSet::new();
    for n in 0..args.clients {
        let (target, gate, rooms) = (target.clone(), gate.clone(), rooms.clone());
        let user = format!("{}-c-{n}", run.prefix);
        joins.spawn(async move {
            let _permit = gate.acquire_owned().await;
            let room = &rooms[n % rooms.len()];
            let mut client = Client::signed_in(&target, n + 1, &user).await?;
            let reply = client.request("room.join", json!({"room": room})).await?;
            let since = reply["last_seq"].as_u64().context("last_seq")?;
            // 2. ... and drops.
            client.close().await;
            anyhow::Ok((n, since))
        });
    }
    let mut since = vec![0u64; args.clients];
    while let Some(done) = joins.join_next().await {
        let (n, seq) = done??;
        since[n] = seq;
    }

    // 3. Messages arrive while they are away.
    let mut last_seq = vec![0u64; args.rooms];
    for (r, room) in rooms.iter().enumerate() {
        for m in 0..args.missed {
            let reply = owner
                .request(
                    "message.send",
                    json!({"room": room, "text": format!("missed {m}"), "client_msg_id": format!("m{m}")}),
                )
                .await?;
            last_seq[r] = reply["message"]["seq"].as_u64().context("seq")?;
        }
    }
    let last_seq = Arc::new(last_seq);

    // 4. All come back at once.
    let cpu_edge_start = run.edge_cpu();
    let cpu_own_start = own_cpu();
    let started = Instant::now();
    let mut returns = JoinSet::new();
    for (n, since) in since.into_iter().enumerate() {
        let (target, gate, rooms, last_seq) = (
            target.clone(),
            gate.clone(),
            rooms.clone(),
            last_seq.clone(),
        );
        let user = format!("{}-c-{n}", run.prefix);
        returns.spawn(async move {
            let r = n % rooms.len();
            let permit = gate.acquire_owned().await;
            let mut client = Client::signed_in(&target, n + 1, &user).await?;
            drop(permit);
            let got = recover(&mut client, &rooms[r], since, last_seq[r]).await?;
            let took = started.elapsed();
            // Stay until every client is done, so no one's close is timed.
            anyhow::Ok((took, got, client))
        });
    }
    let mut times_us = Vec::with_capacity(args.clients);
    let mut recovered_events = 0u64;
    let mut failed = 0usize;
    let mut errors = Vec::new();
    let mut clients = Vec::with_capacity(args.clients);
    while let Some(done) = returns.join_next().await {
        match done? {
            Ok((took, got, client)) => {
                times_us.push(took.as_micros().min(u128::from(u32::MAX)) as u32);
                recovered_events += got;
                clients.push(client);
            }
            Err(e) => {
                failed += 1;
                if errors.len() < 5 {
                    errors.push(e.to_string());
                }
            }
        }
    }
    let all_s = started.elapsed().as_secs_f64();
    let cpu_edge = match (cpu_edge_start, run.edge_cpu()) {
        (Some(a), Some(b)) => Some(round(b - a, 2)),
        _ => None,
    };
    let cpu_own = own_cpu() - cpu_own_start;
    for client in clients {
        let _ = tokio::time::timeout(Duration::from_millis(100), client.close()).await;
    }
    Ok(json!({
        "scenario": "reconnect",
        "clients": args.clients,
        "rooms": args.rooms,
        "missed_per_room": args.missed,
        "recovered": times_us.len(),
        "failed": failed,
        "events_recovered": recovered_events,
        "all_recovered_s": round(all_s, 3),
        "time_to_recover_ms": parley_bench::latency_summary(&mut times_us),
        "edge_cpu_s": cpu_edge,
        "loadgen_cpu_s": round(cpu_own, 2),
        "errors": errors,
    }))
}

/// Joins with `since` and reads until the room's events up to `last` are
/// all there, each once and in order; returns how many were recovered.
async fn recover(client: &mut Client, room: &str, since: u64, last: u64) -> anyhow::Result<u64> {
    let mut next = since + 1;
    let mut cursor = since;
    loop {
        let reply = client
            .request("room.join", json!({"room": room, "since": cursor}))
            .await?;
        for event in reply["events"].as_array().context("events")? {
            let seq = event["seq"].as_u64().context("event seq")?;
            if seq != next {
                bail!("room {room}: expected seq {next}, got {seq}");
            }
            next += 1;
        }
        if reply["has_more"] != true {
            break;
        }
        cursor = next - 1;
    }
    // Live events that followed the reply (none expected: nothing is sent
    // during recovery, but they must continue the sequence if any come).
    for text in client.take_pending() {
        if text.contains("\"seq\":")
            && let Some(seq) = number_after(&text, "\"seq\":")
            && seq >= next
        {
            if seq != next {
                bail!("room {room}: expected live seq {next}, got {seq}");
            }
            next += 1;
        }
    }
    if next != last + 1 {
        bail!("room {room}: recovered up to {} of {last}", next - 1);
    }
    Ok(last - since)
}
