//! One reconnecting protocol session: signs in, re-joins every room from the
//! last seq it delivered, delivers room events once and in order, and
//! re-sends unstored messages under their `client_msg_id` after a reconnect.

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use rand::Rng;
use serde_json::{Value, json};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream, connect_async};

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
const ROOM_EVENTS: &[&str] = &[
    "message.new",
    "message.updated",
    "message.deleted",
    "reaction.added",
    "reaction.removed",
    "member.joined",
    "member.left",
];

/// How to sign in.
#[derive(Debug, Clone)]
pub enum Credentials {
    Token(String),
    DevUser(String),
    Anonymous(Option<String>),
}

/// Why the session is not connected.
#[derive(Debug)]
pub enum Failure {
    /// Worth reconnecting: the connection dropped or closed with this code.
    Lost(Option<u16>),
    /// Give up: e.g. an invalid token, or a refused command.
    Fatal(anyhow::Error),
}

impl From<tokio_tungstenite::tungstenite::Error> for Failure {
    fn from(_: tokio_tungstenite::tungstenite::Error) -> Self {
        Failure::Lost(None)
    }
}

/// A message waiting to be stored.
#[derive(Debug, Clone)]
struct Outgoing {
    room: String,
    text: String,
    client_msg_id: String,
}

pub struct Session {
    url: String,
    credentials: Credentials,
    /// The token the server issued to a dev or anonymous sign-in, reused on reconnect.
    issued: Option<String>,
    ws: Option<Ws>,
    next_id: u64,
    /// Joined rooms and the last seq delivered from each.
    rooms: BTreeMap<String, Option<i64>>,
    /// Room events received while waiting for a reply, delivered next.
    inbox: VecDeque<Value>,
    outbox: Vec<Outgoing>,
    attempt: u32,
    /// The signed-in user's name.
    pub user_name: String,
}

impl Session {
    pub fn new(url: String, credentials: Credentials) -> Self {
        Self {
            url,
            credentials,
            issued: None,
            ws: None,
            next_id: 1,
            rooms: BTreeMap::new(),
            inbox: VecDeque::new(),
            outbox: Vec::new(),
            attempt: 0,
            user_name: String::new(),
        }
    }

    /// Joins `room` on this and every later connection, from `since` if given.
    pub fn add_room(&mut self, room: &str, since: Option<i64>) {
        self.rooms.insert(room.to_owned(), since);
    }

    /// Queues a message; it is sent now if connected, else after reconnecting.
    pub fn queue_send(&mut self, room: &str, text: &str) -> String {
        let client_msg_id = uuid::Uuid::new_v4().to_string();
        self.outbox.push(Outgoing {
            room: room.to_owned(),
            text: text.to_owned(),
            client_msg_id: client_msg_id.clone(),
        });
        client_msg_id
    }

    /// Connects until it succeeds, with full-jitter backoff (0.5 s → 20 s,
    /// 5 s → 60 s after 4008/4009/4029), re-joining rooms and re-sending
    /// queued messages. Returns the stored messages that were sent.
    pub async fn connect(&mut self, mut last: Option<u16>) -> Result<Vec<Value>, anyhow::Error> {
        loop {
            if let Some(code) = last {
                match code {
                    1003 | 1007 | 4002 => {
                        anyhow::bail!("the server closed the connection ({code}): not retrying")
                    }
                    4003 => match self.credentials {
                        Credentials::Token(_) => {
                            anyhow::bail!("the token expired or was revoked (4003); get a new one")
                        }
                        _ => self.issued = None,
                    },
                    _ => {}
                }
            }
            if last.is_some() || self.attempt > 0 {
                let (min, max) = match last {
                    Some(4008 | 4009 | 4029) => (5_000u64, 60_000u64),
                    _ => (500, 20_000),
                };
                let cap = max.min(min.saturating_mul(1 << self.attempt.min(16)));
                let delay = rand::rng().random_range(0..=cap).max(min);
                eprintln!("parley-cli: reconnecting in {} ms", delay);
                tokio::time::sleep(Duration::from_millis(delay)).await;
            }
            self.attempt += 1;
            match self.try_connect().await {
                Ok(sent) => {
                    self.attempt = 0;
                    return Ok(sent);
                }
                Err(Failure::Fatal(e)) => return Err(e),
                Err(Failure::Lost(code)) => {
                    self.ws = None;
                    last = code.or(last);
                }
            }
        }
    }

    async fn try_connect(&mut self) -> Result<Vec<Value>, Failure> {
        let (ws, _) = connect_async(self.url.as_str()).await?;
        self.ws = Some(ws);
        let hello = self.next_frame().await?;
        if hello["type"] != "hello" {
            return Err(Failure::Fatal(anyhow::anyhow!(
                "expected hello, got {hello}"
            )));
        }
        let auth = match (&self.issued, &self.credentials) {
            (Some(token), _) | (None, Credentials::Token(token)) => json!({ "token": token }),
            (None, Credentials::DevUser(name)) => json!({ "dev_user": name }),
            (None, Credentials::Anonymous(name)) => json!({ "anonymous": true, "name": name }),
        };
        let reply = match self.request("auth", auth).await? {
            Ok(reply) => reply,
            Err(error) if self.issued.is_some() => {
                // the issued token is no longer accepted: sign in afresh
                self.issued = None;
                eprintln!("parley-cli: signing in again ({})", error["message"]);
                return Err(Failure::Lost(None));
            }
            Err(error) => {
                return Err(Failure::Fatal(anyhow::anyhow!(
                    "sign-in refused: {}",
                    error["message"]
                )));
            }
        };
        if let Some(token) = reply["token"].as_str() {
            self.issued = Some(token.to_owned());
        }
        self.user_name = reply["user"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned();
        let rooms: Vec<String> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.sync(&room).await?;
        }
        self.flush().await
    }

    /// Sends every queued message; returns the stored ones. A temporary
    /// error leaves a message queued for the next flush.
    pub async fn flush(&mut self) -> Result<Vec<Value>, Failure> {
        let mut sent = Vec::new();
        for out in self.outbox.clone() {
            let body =
                json!({ "room": out.room, "text": out.text, "client_msg_id": out.client_msg_id });
            match self.request("message.send", body).await? {
                Ok(reply) => sent.push(reply["message"].clone()),
                Err(error) if error["temporary"] == true => continue,
                Err(error) => eprintln!("parley-cli: not sent: {}", error["message"]),
            }
            self.outbox.retain(|o| o.client_msg_id != out.client_msg_id);
        }
        Ok(sent)
    }

    /// Whether messages are still waiting to be stored.
    pub fn has_queued(&self) -> bool {
        !self.outbox.is_empty()
    }

    /// Re-joins one room from its last delivered seq, paging while `has_more`.
    /// The pages' events and live events that came meanwhile go to the inbox
    /// in seq order; `next_event` drops those already delivered.
    async fn sync(&mut self, room: &str) -> Result<(), Failure> {
        let mut since = self.rooms.get(room).copied().flatten();
        loop {
            let mut body = json!({ "room": room });
            if let Some(since) = since {
                body["since"] = json!(since);
            }
            let reply = match self.request("room.join", body).await? {
                Ok(reply) => reply,
                Err(error) => {
                    return Err(Failure::Fatal(anyhow::anyhow!(
                        "cannot join {room}: {}",
                        error["message"]
                    )));
                }
            };
            let events = reply["events"].as_array().cloned().unwrap_or_default();
            let newest = events.iter().filter_map(|e| e["seq"].as_i64()).max();
            self.inbox.extend(events);
            if reply["has_more"] != true || newest.is_none() {
                break;
            }
            since = newest;
        }
        let (mut mine, rest): (Vec<Value>, Vec<Value>) = self
            .inbox
            .drain(..)
            .partition(|e| e["room"] == room && e["seq"].is_i64());
        mine.sort_by_key(|e| e["seq"].as_i64());
        self.inbox = rest.into_iter().chain(mine).collect();
        Ok(())
    }

    /// The next room event not delivered before (or any other frame), in order.
    pub async fn next_event(&mut self) -> Result<Value, Failure> {
        loop {
            let frame = match self.inbox.pop_front() {
                Some(frame) => frame,
                None => self.next_frame().await?,
            };
            if let Some(frame) = self.deliverable(frame) {
                return Ok(frame);
            }
        }
    }

    /// Drops a room event already delivered (by seq); moves the room's mark.
    fn deliverable(&mut self, frame: Value) -> Option<Value> {
        let kind = frame["type"].as_str().unwrap_or_default();
        if kind == "reply" {
            return None;
        }
        if ROOM_EVENTS.contains(&kind) {
            let room = frame["room"].as_str()?.to_owned();
            let seq = frame["seq"].as_i64()?;
            let mark = self.rooms.get_mut(&room)?;
            if mark.is_some_and(|m| seq <= m) {
                return None;
            }
            *mark = Some(seq);
        }
        Some(frame)
    }

    /// Sends a command and waits for its reply: `Ok(result)` or `Err(error object)`.
    pub async fn request(
        &mut self,
        kind: &str,
        mut body: Value,
    ) -> Result<Result<Value, Value>, Failure> {
        let id = self.next_id;
        self.next_id += 1;
        body["type"] = json!(kind);
        body["id"] = json!(id);
        let ws = self.ws.as_mut().ok_or(Failure::Lost(None))?;
        ws.send(WsMessage::text(body.to_string())).await?;
        let wait = async {
            loop {
                let frame = self.next_frame().await?;
                if frame["type"] == "reply" && frame["id"] == id {
                    return Ok::<_, Failure>(frame);
                }
                self.inbox.push_back(frame);
            }
        };
        let reply = match tokio::time::timeout(REQUEST_TIMEOUT, wait).await {
            Ok(reply) => reply?,
            Err(_) => return Err(Failure::Lost(None)),
        };
        if reply["ok"] == true {
            Ok(Ok(reply))
        } else {
            Ok(Err(reply["error"].clone()))
        }
    }

    async fn next_frame(&mut self) -> Result<Value, Failure> {
        let ws = self.ws.as_mut().ok_or(Failure::Lost(None))?;
        loop {
            match ws.next().await {
                None => return Err(Failure::Lost(None)),
                Some(Err(_)) => return Err(Failure::Lost(None)),
                Some(Ok(WsMessage::Text(text))) => match serde_json::from_str::<Value>(&text) {
                    Ok(frame) if frame["type"].is_string() => return Ok(frame),
                    _ => eprintln!("parley-cli: ignoring a frame that is not a protocol frame"),
                },
                Some(Ok(WsMessage::Close(close))) => {
                    let code = close
                        .map(|c| u16::from(c.code))
                        .filter(|c| *c != u16::from(CloseCode::Status));
                    return Err(Failure::Lost(code));
                }
                Some(Ok(_)) => {}
            }
        }
    }
}
