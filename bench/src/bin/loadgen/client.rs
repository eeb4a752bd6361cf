//! A lean protocol-v1 client: small WebSocket buffers (thousands of these
//! share one process), a chosen source address, and replies matched by id.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context, anyhow, bail};
use futures::stream::{SplitSink, SplitStream};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::net::{TcpSocket, TcpStream};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use tokio_tungstenite::{WebSocketStream, client_async_with_config};

pub type Ws = WebSocketStream<TcpStream>;

/// Where and how clients connect and sign in.
#[derive(Clone)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
    /// Source addresses, used round-robin (127.0.0.x spreads past the
    /// ~28k ephemeral ports one source address has towards one server).
    pub sources: Vec<IpAddr>,
    /// HS256 secret to sign user tokens with; anonymous sign-in without it.
    pub secret: Option<String>,
    pub issuer: String,
}

/// Microseconds since the first call in this process: senders stamp
/// messages with it, receivers subtract it (one clock, one process).
pub fn now_us() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_micros() as u64
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4 * 1024)
        .write_buffer_size(0)
}

pub struct Client {
    ws: Ws,
    next_id: u64,
    /// Frames read while waiting for a reply.
    pending: VecDeque<Utf8Bytes>,
}

impl Client {
    /// Opens connection number `n` (which picks the source address) and
    /// reads `hello`.
    pub async fn connect(target: &Target, n: usize) -> anyhow::Result<Self> {
        let source = target.sources[n % target.sources.len()];
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::new(source, 0))?;
        let stream = socket.connect(target.addr).await?;
        stream.set_nodelay(true)?;
        let request = format!("ws://{}{}", target.addr, target.path).into_client_request()?;
        let (ws, _) = client_async_with_config(request, stream, Some(config())).await?;
        let mut client = Client {
            ws,
            next_id: 1,
            pending: VecDeque::new(),
        };
        let hello = client.next_text().await?.context("closed before hello")?;
        if !hello.contains("\"hello\"") {
            bail!("first frame is not hello: {hello}");
        }
        Ok(client)
    }

    /// Signs in as `user` (a token for that subject, or anonymously).
    pub async fn auth(&mut self, target: &Target, user: &str) -> anyhow::Result<Value> {
        let fields = match &target.secret {
            Some(secret) => json!({"token": token(secret, &target.issuer, user)?}),
            None => json!({"anonymous": true, "name": user}),
        };
        self.request("auth", fields).await
    }

    /// Connects and signs in.
    pub async fn signed_in(target: &Target, n: usize, user: &str) -> anyhow::Result<Self> {
        let mut client = Self::connect(target, n).await?;
        client.auth(target, user).await?;
        Ok(client)
    }

    /// Sends a command and returns its reply's fields; an error reply is an
    /// error. Other frames read meanwhile are kept for `next_text`.
    pub async fn request(&mut self, kind: &str, fields: Value) -> anyhow::Result<Value> {
        let id = self.send(kind, fields).await?;
        loop {
            let text = self
                .ws
                .next()
                .await
                .ok_or_else(|| anyhow!("closed while waiting for the `{kind}` reply"))??;
            let Message::Text(text) = text else {
                if let Message::Close(frame) = text {
                    bail!("closed while waiting for the `{kind}` reply: {frame:?}");
                }
                continue;
            };
            if text.contains("\"reply\"") {
                let reply: Value = serde_json::from_str(&text)?;
                if reply["type"] == "reply" && reply["id"] == id {
                    if reply["ok"] != true {
                        bail!("`{kind}` failed: {}", reply["error"]);
                    }
                    return Ok(reply);
                }
            }
            self.pending.push_back(text);
        }
    }

    /// Sends a command with a fresh id without waiting; returns the id.
    pub async fn send(&mut self, kind: &str, fields: Value) -> anyhow::Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        let mut frame = fields;
        frame["type"] = json!(kind);
        frame["id"] = json!(id);
        self.ws.send(Message::text(frame.to_string())).await?;
        Ok(id)
    }

    /// The next text frame (pings are answered while reading); `None` once
    /// the connection closed.
    pub async fn next_text(&mut self) -> anyhow::Result<Option<Utf8Bytes>> {
        Ok(self.next_incoming().await?.into_text())
    }

    /// The next text frame, or the connection's end with its close code.
    pub async fn next_incoming(&mut self) -> anyhow::Result<Incoming> {
        if let Some(text) = self.pending.pop_front() {
            return Ok(Incoming::Text(text));
        }
        next_incoming(&mut self.ws).await
    }

    /// Frames read while waiting for replies.
    pub fn take_pending(&mut self) -> Vec<Utf8Bytes> {
        self.pending.drain(..).collect()
    }

    /// Splits into a writer and a reader half (pending frames are dropped).
    pub fn split(self) -> (SplitSink<Ws, Message>, SplitStream<Ws>, u64) {
        let (sink, stream) = self.ws.split();
        (sink, stream, self.next_id)
    }

    /// Closes the connection (close handshake, bounded by the caller).
    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
    }
}

/// What a connection yields next.
pub enum Incoming {
    Text(Utf8Bytes),
    /// The connection ended, with the peer's close code if it sent one.
    Closed(Option<u16>),
}

impl Incoming {
    fn into_text(self) -> Option<Utf8Bytes> {
        match self {
            Incoming::Text(text) => Some(text),
            Incoming::Closed(_) => None,
        }
    }
}

/// Reads the next text frame of a stream; `None` once it closed.
pub async fn next_text<S>(stream: &mut S) -> anyhow::Result<Option<Utf8Bytes>>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    Ok(next_incoming(stream).await?.into_text())
}

/// Reads the next text frame of a stream, or its end with the close code.
pub async fn next_incoming<S>(stream: &mut S) -> anyhow::Result<Incoming>
where
    S: futures::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            None => return Ok(Incoming::Closed(None)),
            Some(Ok(Message::Close(frame))) => {
                return Ok(Incoming::Closed(frame.map(|f| f.code.into())));
            }
            Some(Ok(Message::Text(text))) => return Ok(Incoming::Text(text)),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

/// An HS256 token for `user`, valid for a day.
pub fn token(secret: &str, issuer: &str, user: &str) -> anyhow::Result<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_secs();
    let claims = json!({"sub": user, "name": user, "iss": issuer, "iat": now, "exp": now + 86_400});
    Ok(jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(secret.as_bytes()),
    )?)
}

/// The number after the first `"<field>":` in a frame, without parsing the
/// whole frame (receivers handle hundreds of thousands of frames a second).
pub fn number_after(text: &str, field: &str) -> Option<u64> {
    let at = text.find(field)? + field.len();
    let digits: &str = &text[at..];
    let end = digits
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(digits.len());
    digits[..end].parse().ok()
}

/// Waits for deliveries still under way: until `counted` reaches
/// `expected`, or nothing arrived for a second, or `limit` is over.
pub async fn settle(counted: &std::sync::atomic::AtomicU64, expected: u64, limit: Duration) {
    use std::sync::atomic::Ordering;
    let until = tokio::time::Instant::now() + limit;
    let mut last = (counted.load(Ordering::Relaxed), tokio::time::Instant::now());
    while tokio::time::Instant::now() < until && last.0 < expected {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counted.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, tokio::time::Instant::now());
        } else if last.1.elapsed() > Duration::from_secs(1) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_are_found_after_their_field() {
        let frame =
            r#"{"type":"message.new","room":"r","seq":42,"message":{"seq":42,"text":"t=123 x"}}"#;
        assert_eq!(number_after(frame, "\"seq\":"), Some(42));
        assert_eq!(number_after(frame, "\"text\":\"t="), Some(123));
        assert_eq!(number_after(frame, "\"missing\":"), None);
    }
}
