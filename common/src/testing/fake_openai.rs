//! A small OpenAI-compatible model server for tests: a real HTTP server on
//! `127.0.0.1:0` answering `POST /v1/chat/completions` with server-sent
//! events written the way OpenAI and Ollama write them, or with the error,
//! stall or pause a test scripts. It records what it was asked.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use axum::routing::post;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

/// How the server answers one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// A `200` event stream written as these raw pieces (split anywhere,
    /// even inside a UTF-8 character), with `pause` before each piece after
    /// the first.
    Sse { pieces: Vec<Bytes>, pause: Duration },
    /// An HTTP error with this body.
    Status { status: u16, body: String },
    /// A `200` event stream that writes these pieces, then nothing more and
    /// never ends.
    Stall { pieces: Vec<Bytes> },
}

impl Reply {
    /// One completion chunk carrying `text`, as OpenAI sends it.
    pub fn event(text: &str) -> String {
        let chunk = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "model": "test",
            "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}],
        });
        format!("data: {chunk}\n\n")
    }

    /// The end of a completion: a chunk with `finish_reason`, then `[DONE]`.
    pub fn end() -> String {
        let chunk = json!({
            "id": "chatcmpl-test",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        });
        format!("data: {chunk}\n\ndata: [DONE]\n\n")
    }

    /// A stream written as `whole` cut into pieces of `size` bytes.
    pub fn split(whole: &str, size: usize) -> Reply {
        Reply::Sse {
            pieces: whole
                .as_bytes()
                .chunks(size.max(1))
                .map(Bytes::copy_from_slice)
                .collect(),
            pause: Duration::ZERO,
        }
    }

    /// A complete reply streamed as these texts, one event each.
    pub fn chunks(texts: &[&str]) -> Reply {
        Self::paced(texts, Duration::ZERO)
    }

    /// Like [`Reply::chunks`] with a pause before every event after the first.
    pub fn paced(texts: &[&str], pause: Duration) -> Reply {
        let mut pieces: Vec<Bytes> = texts.iter().map(|t| Self::event(t).into()).collect();
        pieces.push(Self::end().into());
        Reply::Sse { pieces, pause }
    }

    /// The events of these texts, then silence.
    pub fn stall(texts: &[&str]) -> Reply {
        Reply::Stall {
            pieces: texts.iter().map(|t| Self::event(t).into()).collect(),
        }
    }

    pub fn status(status: u16) -> Reply {
        Reply::Status {
            status,
            body: json!({"error": {"message": format!("test error {status}")}}).to_string(),
        }
    }
}

#[derive(Debug)]
struct Shared {
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    requests: Mutex<Vec<Value>>,
    authorizations: Mutex<Vec<Option<String>>>,
    /// Streams the client stopped reading before they ended.
    abandoned: AtomicUsize,
    changed: Notify,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The running server; stops when dropped.
#[derive(Debug)]
pub struct FakeOpenAi {
    /// What `ai.base_url` should be: `http://127.0.0.1:PORT/v1`.
    pub base_url: String,
    shared: Arc<Shared>,
    task: JoinHandle<()>,
}

impl FakeOpenAi {
    /// Starts a server that answers every request with `default` unless a
    /// scripted reply is queued.
    pub async fn start(default: Reply) -> Self {
        let shared = Arc::new(Shared {
            script: Mutex::default(),
            default,
            requests: Mutex::default(),
            authorizations: Mutex::default(),
            abandoned: AtomicUsize::new(0),
            changed: Notify::new(),
        });
        let app = Router::new()
            .route("/v1/chat/completions", post(completions))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the fake model server");
        let addr = listener.local_addr().expect("address");
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self {
            base_url: format!("http://{addr}/v1"),
            shared,
            task,
        }
    }

    /// Queues the answer to a coming request (first in, first used).
    pub fn push(&self, reply: Reply) {
        lock(&self.shared.script).push_back(reply);
    }

    /// The JSON bodies of the requests so far.
    pub fn requests(&self) -> Vec<Value> {
        lock(&self.shared.requests).clone()
    }

    /// The `Authorization` header of each request so far.
    pub fn authorizations(&self) -> Vec<Option<String>> {
        lock(&self.shared.authorizations).clone()
    }

    /// How many streams the client stopped reading before they ended.
    pub fn abandoned(&self) -> usize {
        self.shared.abandoned.load(Ordering::SeqCst)
    }

    /// Waits until `n` streams were abandoned.
    pub async fn wait_abandoned(&self, n: usize) {
        loop {
            let changed = self.shared.changed.notified();
            if self.abandoned() >= n {
                return;
            }
            changed.await;
        }
    }

    /// Waits until `n` requests arrived.
    pub async fn wait_requests(&self, n: usize) {
        loop {
            let changed = self.shared.changed.notified();
            if lock(&self.shared.requests).len() >= n {
                return;
            }
            changed.await;
        }
    }
}

impl Drop for FakeOpenAi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn completions(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    lock(&shared.requests).push(request);
    lock(&shared.authorizations).push(
        headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
    );
    shared.changed.notify_waiters();
    let reply = lock(&shared.script)
        .pop_front()
        .unwrap_or_else(|| shared.default.clone());
    let (pieces, pause, endless) = match reply {
        Reply::Status { status, body } => {
            return Response::builder()
                .status(StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR))
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(body))
                .unwrap_or_default();
        }
        Reply::Sse { pieces, pause } => (pieces, pause, false),
        Reply::Stall { pieces } => (pieces, Duration::ZERO, true),
    };
    let guard = Watch {
        shared: shared.clone(),
        ended: false,
    };
    let state = (pieces.into_iter(), true, guard);
    let stream = futures::stream::unfold(state, move |(mut pieces, first, guard)| async move {
        let Some(piece) = pieces.next() else {
            if endless {
                std::future::pending::<()>().await;
            }
            guard.end();
            return None;
        };
        if !first && !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
        Some((Ok::<_, Infallible>(piece), (pieces, false, guard)))
    });
    Response::builder()
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .body(Body::from_stream(stream))
        .unwrap_or_default()
}

/// Counts a stream dropped before its end as abandoned.
struct Watch {
    shared: Arc<Shared>,
    ended: bool,
}

impl Watch {
    /// The stream was written to its end.
    fn end(mut self) {
        self.ended = true;
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if !self.ended {
            self.shared.abandoned.fetch_add(1, Ordering::SeqCst);
            self.shared.changed.notify_waiters();
        }
    }
}
