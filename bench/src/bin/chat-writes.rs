//! `chat-writes`: how many messages per second chat-service stores, over
//! real gRPC, spread over many rooms, with the write latency each caller saw.
//!
//! The database is a fresh SQLite file, or a fresh Postgres schema when
//! `PARLEY_TEST_DATABASE_URL` is set. Client and server share this process
//! (and the machine's cores), so the CPU figure covers both.
//!
//! ```sh
//! cargo run --release -p parley-bench --bin chat-writes -- --messages 100000
//! PARLEY_TEST_DATABASE_URL=postgres://postgres@127.0.0.1:5432/test \
//!   cargo run --release -p parley-bench --bin chat-writes -- --messages 100000
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chat_service::ChatApp;
use clap::Parser;
use common::Secret;
use common::bus::MemoryBus;
use common::config::ChatConfig;
use common::grpc::{Actor, ClientSettings, ServiceChannel, channel};
use common::shutdown::Shutdown;
use parley_bench::latency_summary;
use parley_bench::procfs::cpu_seconds;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::chat::v1::{CreateRoomRequest, SendMessageRequest, Visibility};

#[derive(Debug, Parser)]
struct Args {
    /// Messages to store in all.
    #[arg(long, default_value_t = 100_000)]
    messages: u64,
    /// Rooms the messages are spread over.
    #[arg(long, default_value_t = 100)]
    rooms: usize,
    /// Concurrent senders (each waits for its reply before sending again).
    #[arg(long, default_value_t = 512)]
    concurrency: usize,
    /// Bytes of text per message.
    #[arg(long, default_value_t = 100)]
    text_bytes: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let db = common::testing::test_database().await;
    let backend = if common::testing::uses_postgres() {
        "postgres"
    } else {
        "sqlite"
    };
    let credential = Secret::new(common::ids::random_secret(32));
    let config = ChatConfig {
        database_url: db.url.clone(),
        ..ChatConfig::default()
    };
    let app = ChatApp::connect(
        &config,
        Arc::new(MemoryBus::new()),
        None,
        &credential,
        &common::metrics::Metrics::new(&["chat"]),
    )
    .await?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}", listener.local_addr()?);
    let shutdown = Shutdown::new();
    tokio::spawn(app.run_until_stopped(listener, shutdown.signal()));

    let settings = ClientSettings {
        credential,
        connect_timeout: Duration::from_secs(2),
        timeout: Duration::from_secs(30),
    };
    // A few HTTP/2 connections, as a few edges would use.
    let clients: Vec<ChatServiceClient<ServiceChannel>> = (0..4)
        .map(|_| channel(&url, &settings).map(ChatServiceClient::new))
        .collect::<Result<_, _>>()?;
    let actor = Actor {
        user_id: "bench".into(),
        name: "bench".into(),
        anonymous: false,
    };
    let mut rooms = Vec::with_capacity(args.rooms);
    for i in 0..args.rooms {
        let request = actor.request(CreateRoomRequest {
            name: format!("bench-{i}"),
            visibility: Visibility::Public as i32,
            members: Vec::new(),
        });
        let room = clients[0]
            .clone()
            .create_room(request)
            .await?
            .into_inner()
            .room;
        rooms.push(room.map(|r| r.id).unwrap_or_default());
    }
    let rooms = Arc::new(rooms);
    let text = "x".repeat(args.text_bytes);
    let next = Arc::new(AtomicU64::new(0));

    let pid = std::process::id();
    let cpu_start = cpu_seconds(pid).unwrap_or(0.0);
    let started = Instant::now();
    let mut senders = tokio::task::JoinSet::new();
    for worker in 0..args.concurrency {
        let client = clients[worker % clients.len()].clone();
        let (rooms, next, text, actor) = (rooms.clone(), next.clone(), text.clone(), actor.clone());
        let total = args.messages;
        senders.spawn(async move {
            let mut latencies = Vec::new();
            let mut failures = 0u64;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                if n >= total {
                    break;
                }
                let request = actor.request(SendMessageRequest {
                    room_id: rooms[n as usize % rooms.len()].clone(),
                    text: text.clone(),
                    client_msg_id: format!("b{n}"),
                    thread_id: None,
                    metadata_json: String::new(),
                    reply_to: None,
                    ..SendMessageRequest::default()
                });
                let sent = Instant::now();
                match client.clone().send_message(request).await {
                    Ok(_) => {
                        latencies.push(sent.elapsed().as_micros().min(u128::from(u32::MAX)) as u32)
                    }
                    Err(_) => failures += 1,
                }
            }
            (latencies, failures)
        });
    }
    let mut latencies = Vec::with_capacity(args.messages as usize);
    let mut failures = 0;
    while let Some(done) = senders.join_next().await {
        let (worker_latencies, worker_failures) = done?;
        latencies.extend(worker_latencies);
        failures += worker_failures;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds(pid).unwrap_or(0.0) - cpu_start;
    let stored = latencies.len() as f64;
    let summary = serde_json::json!({
        "benchmark": "chat-writes",
        "database": backend,
        "messages": latencies.len(),
        "failed": failures,
        "rooms": args.rooms,
        "concurrency": args.concurrency,
        "seconds": (elapsed * 1000.0).round() / 1000.0,
        "messages_per_s": (stored / elapsed).round(),
        "latency_ms": latency_summary(&mut latencies),
        "process_cpu_us_per_message": ((cpu * 1e6 / stored) * 10.0).round() / 10.0,
    });
    println!("{summary}");
    shutdown.trigger();
    Ok(())
}
