//! `parley-cli`: talk to Parley from a terminal. `chat` (line mode), `tail`
//! (events as JSON lines), `send` and `history`; reconnects with backoff,
//! recovers every room with `since`, and stores each message exactly once.

mod session;

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::session::{Credentials, Failure, Session};

#[derive(Parser, Debug)]
#[command(name = "parley-cli", version, about = "Talk to Parley from a terminal")]
struct Args {
    /// The edge's WebSocket URL.
    #[arg(long, env = "PARLEY_URL", default_value = "ws://127.0.0.1:8080/ws")]
    url: String,
    /// An access token (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "PARLEY_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Development login as this user (servers with `auth.dev_login`).
    #[arg(long, env = "PARLEY_DEV_USER", conflicts_with = "token")]
    dev_user: Option<String>,
    /// Anonymous sign-in with this display name.
    #[arg(long, conflicts_with_all = ["token", "dev_user"])]
    anonymous: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Line mode: every stdin line is sent to ROOM; the room's events are printed.
    Chat { room: String },
    /// Prints ROOM's events as JSON lines, from seq N on with `--since N`.
    Tail {
        room: String,
        #[arg(long)]
        since: Option<i64>,
    },
    /// Sends TEXT to ROOM (exactly once, retried across reconnects) and prints the stored message.
    Send { room: String, text: String },
    /// Prints ROOM's messages as JSON lines (the newest page, or the page before `--before`).
    History {
        room: String,
        #[arg(long, default_value_t = 50)]
        limit: u32,
        #[arg(long)]
        before: Option<i64>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    let credentials = match (args.token, args.dev_user, args.anonymous) {
        (Some(token), _, _) => Credentials::Token(token),
        (_, Some(user), _) => Credentials::DevUser(user),
        (_, _, Some(name)) => Credentials::Anonymous(Some(name)),
        _ => {
            eprintln!(
                "parley-cli: give --token (or PARLEY_TOKEN), --dev-user NAME or --anonymous NAME"
            );
            return ExitCode::from(64);
        }
    };
    let mut session = Session::new(args.url, credentials);
    let result = match args.command {
        Command::Chat { room } => chat(&mut session, &room).await,
        Command::Tail { room, since } => tail(&mut session, &room, since).await,
        Command::Send { room, text } => send(&mut session, &room, &text).await,
        Command::History {
            room,
            limit,
            before,
        } => history(&mut session, &room, limit, before).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley-cli: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Turns a lost connection into a reconnect; a fatal failure ends the command.
async fn recover(session: &mut Session, failure: Failure) -> anyhow::Result<()> {
    match failure {
        Failure::Fatal(e) => Err(e),
        Failure::Lost(code) => {
            eprintln!(
                "parley-cli: connection lost{}",
                code.map(|c| format!(" ({c})")).unwrap_or_default()
            );
            session.connect(code).await?;
            eprintln!("parley-cli: reconnected");
            Ok(())
        }
    }
}

async fn chat(session: &mut Session, room: &str) -> anyhow::Result<()> {
    session.add_room(room, None);
    session.connect(None).await?;
    eprintln!(
        "parley-cli: joined {room} as {}; type a line to send it",
        session.user_name
    );
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let mut stdin_open = true;
    loop {
        if !stdin_open && !session.has_queued() {
            return Ok(());
        }
        let step = tokio::select! {
            line = lines.next_line(), if stdin_open => {
                match line? {
                    Some(line) if !line.trim().is_empty() => {
                        session.queue_send(room, &line);
                        session.flush().await.map(|_| ())
                    }
                    Some(_) => Ok(()),
                    None => {
                        stdin_open = false;
                        Ok(())
                    }
                }
            }
            event = session.next_event() => event.map(|e| print_chat_line(&e)),
        };
        if let Err(failure) = step {
            recover(session, failure).await?;
        }
    }
}

fn print_chat_line(e: &Value) {
    let seq = &e["seq"];
    let m = &e["message"];
    let name = |v: &Value| v["name"].as_str().or(v.as_str()).unwrap_or("?").to_owned();
    match e["type"].as_str().unwrap_or_default() {
        "message.new" => println!(
            "#{seq} {}: {}",
            name(&m["sender"]),
            m["text"].as_str().unwrap_or_default()
        ),
        "message.updated" if m["deleted"] == true => println!("#{seq} message {} deleted", m["id"]),
        "message.updated" => println!(
            "#{seq} {} (edited): {}",
            name(&m["sender"]),
            m["text"].as_str().unwrap_or_default()
        ),
        "message.deleted" => println!("#{seq} message {} deleted", e["message_id"]),
        "reaction.added" => println!(
            "#{seq} {} reacted {}",
            name(&e["user"]),
            e["emoji"].as_str().unwrap_or_default()
        ),
        "member.joined" => println!("#{seq} {} joined", name(&e["user"])),
        "member.left" => println!("#{seq} {} left", name(&e["user"])),
        _ => {}
    }
}

async fn tail(session: &mut Session, room: &str, since: Option<i64>) -> anyhow::Result<()> {
    session.add_room(room, since);
    session.connect(None).await?;
    loop {
        match session.next_event().await {
            Ok(event) if event["room"] == room && event["seq"].is_i64() => println!("{event}"),
            Ok(_) => {}
            Err(failure) => recover(session, failure).await?,
        }
    }
}

async fn send(session: &mut Session, room: &str, text: &str) -> anyhow::Result<()> {
    session.add_room(room, None); // joining a public room makes you a member
    session.queue_send(room, text);
    // connecting sends the queue; a lost connection sends it again after reconnecting
    let mut stored = session.connect(None).await?;
    while stored.is_empty() && session.has_queued() {
        stored = match session.flush().await {
            Ok(stored) => stored,
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Lost(code)) => session.connect(code).await?,
        };
    }
    match stored.pop() {
        Some(message) => {
            println!("{message}");
            Ok(())
        }
        None => anyhow::bail!("the message was refused"),
    }
}

async fn history(
    session: &mut Session,
    room: &str,
    limit: u32,
    before: Option<i64>,
) -> anyhow::Result<()> {
    session.connect(None).await?;
    let mut body = json!({ "room": room, "limit": limit });
    if let Some(before) = before {
        body["before"] = json!(before);
    }
    loop {
        match session.request("message.history", body.clone()).await {
            Ok(Ok(page)) => {
                for m in page["messages"].as_array().into_iter().flatten() {
                    println!("{m}");
                }
                return Ok(());
            }
            Ok(Err(error)) => anyhow::bail!("history refused: {}", error["message"]),
            Err(failure) => recover(session, failure).await?,
        }
    }
}
