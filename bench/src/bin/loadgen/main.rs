//! `loadgen`: real WebSocket clients against a running edge, in five
//! scenarios, each printing one JSON summary line.
//!
//! - `idle`: hold N authenticated connections; with `--edge-pid`, the
//!   edge's RSS per connection.
//! - `fanout`: S subscribers in R rooms while messages arrive at a fixed
//!   rate: deliveries/s, loss, latency, server CPU per delivery.
//! - `reconnect`: N clients drop, miss messages, and come back with
//!   `since`: time until every one has exactly what it missed.
//! - `ai`: N users ask the assistant at once, answered by a model server in
//!   this process: streams held at once, relay overhead per delta.
//! - `soak`: N connections in rooms of up to 1,000 members while messages
//!   flow for minutes: loss, order, disconnects, the edge's RSS growth
//!   after warm-up and its CPU.
//!
//! Start the server with a known HS256 secret and pass the same one here
//! (`--secret` or `PARLEY_AUTH_HS256_SECRET`); without one, clients sign in
//! anonymously. Commands and measured figures: docs/performance.md.

mod ai;
mod client;
mod fanout;
mod idle;
mod reconnect;
mod soak;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use parley_bench::procfs;

use crate::client::Target;

#[derive(Debug, Parser)]
#[command(name = "loadgen", about = "Load generator for a Parley edge")]
struct Args {
    /// The edge's WebSocket URL.
    #[arg(long, default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// HS256 secret of the auth service (tokens are signed here); anonymous
    /// sign-in when unset.
    #[arg(long, env = "PARLEY_AUTH_HS256_SECRET", hide_env_values = true)]
    secret: Option<String>,
    /// `iss` claim of the tokens.
    #[arg(long, default_value = "parley")]
    issuer: String,
    /// Source addresses 127.0.0.1 ..= 127.0.0.N, used round-robin.
    #[arg(long, default_value_t = 1)]
    sources: u8,
    /// The edge's process id: its RSS and CPU time are reported.
    #[arg(long)]
    edge_pid: Option<u32>,
    /// Connections opened at the same time.
    #[arg(long, default_value_t = 256)]
    connect_concurrency: usize,
    /// Prefix of user ids and room names (unique per run by default).
    #[arg(long)]
    prefix: Option<String>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Debug, Subcommand)]
enum Scenario {
    Idle(idle::Args),
    Fanout(fanout::Args),
    Reconnect(reconnect::Args),
    Ai(ai::Args),
    Soak(soak::Args),
}

/// What every scenario gets.
pub struct Run {
    pub target: Target,
    pub edge_pid: Option<u32>,
    pub connect_concurrency: usize,
    pub prefix: String,
}

impl Run {
    /// The edge's CPU seconds so far, if its pid was given.
    pub fn edge_cpu(&self) -> Option<f64> {
        self.edge_pid.and_then(procfs::cpu_seconds)
    }

    pub fn edge_rss(&self) -> Option<u64> {
        self.edge_pid.and_then(procfs::rss_bytes)
    }
}

/// This process's CPU seconds so far.
pub fn own_cpu() -> f64 {
    procfs::cpu_seconds(std::process::id()).unwrap_or(0.0)
}

/// Rounds to `places` decimals for the summary.
pub fn round(value: f64, places: i32) -> f64 {
    let scale = 10f64.powi(places);
    (value * scale).round() / scale
}

fn target(args: &Args) -> anyhow::Result<Target> {
    let url = args
        .url
        .strip_prefix("ws://")
        .context("--url must start with ws:// (the load generator does not speak TLS)")?;
    let (authority, path) = match url.find('/') {
        Some(i) => (&url[..i], &url[i..]),
        None => (url, "/ws"),
    };
    let addr: SocketAddr = authority
        .parse()
        .with_context(|| format!("--url: `{authority}` is not an ip:port"))?;
    anyhow::ensure!(args.sources >= 1, "--sources must be at least 1");
    let sources = (1..=args.sources)
        .map(|n| IpAddr::V4(Ipv4Addr::new(127, 0, 0, n)))
        .collect();
    Ok(Target {
        addr,
        path: path.to_string(),
        sources,
        secret: args.secret.clone(),
        issuer: args.issuer.clone(),
    })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    client::now_us();
    let run = Run {
        target: target(&args)?,
        edge_pid: args.edge_pid,
        connect_concurrency: args.connect_concurrency.max(1),
        prefix: args.prefix.clone().unwrap_or_else(|| {
            let unique = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap_or(Duration::ZERO)
                .as_millis()
                % 1_000_000_000;
            format!("lg{unique}")
        }),
    };
    let summary = match args.scenario {
        Scenario::Idle(a) => idle::run(&run, a).await?,
        Scenario::Fanout(a) => fanout::run(&run, a).await?,
        Scenario::Reconnect(a) => reconnect::run(&run, a).await?,
        Scenario::Ai(a) => ai::run(&run, a).await?,
        Scenario::Soak(a) => soak::run(&run, a).await?,
    };
    println!("{summary}");
    Ok(())
}
