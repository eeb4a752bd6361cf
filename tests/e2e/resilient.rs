//! A client that survives faults: it reconnects to whichever edge answers,
//! rejoins its room from the last seq it saw, and retries a send with the
//! same `client_msg_id` until it is answered. The fault and topology tests
//! check what it received against the stored log.

use serde_json::{Value, json};

use crate::helpers::{Client, TestApp};

/// Signs a client in at an edge: `None` when that edge refuses (stopped
/// or draining).
pub trait SignIn {
    async fn user_at(&self, url: &str, sub: &str) -> Option<Client>;

    /// The edges a reconnecting client tries now, when they change over
    /// time (an ingress's endpoints); `None` keeps the client's own list.
    fn edges(&self) -> Option<Vec<String>> {
        None
    }
}

impl SignIn for TestApp {
    async fn user_at(&self, url: &str, sub: &str) -> Option<Client> {
        TestApp::user_at(self, url, sub).await
    }
}

/// A client that reconnects (to whichever edge answers) with `since`, and
/// retries a send with the same `client_msg_id` until it is answered.
pub struct Resilient {
    pub sub: String,
    urls: Vec<String>,
    pub room: String,
    client: Client,
    /// The edge the client is connected to.
    url: String,
    /// Each edge the client lost its connection to, and when it noticed.
    pub left: Vec<(String, std::time::Instant)>,
    /// Seqs of the room-log events received, in arrival order.
    pub seqs: Vec<i64>,
    /// `message.new` events received.
    pub messages: usize,
    pub reconnects: usize,
    /// Sends and joins answered with a temporary error and tried again.
    pub retries: usize,
}

impl Resilient {
    pub async fn connect(
        app: &impl SignIn,
        sub: String,
        urls: Vec<String>,
        room: String,
    ) -> Resilient {
        let client = app
            .user_at(&urls[0], &sub)
            .await
            .expect("first edge answers");
        let mut this = Resilient {
            sub,
            url: urls[0].clone(),
            left: Vec::new(),
            urls,
            room,
            client,
            seqs: Vec::new(),
            messages: 0,
            reconnects: 0,
            retries: 0,
        };
        assert!(this.join().await, "first join");
        this
    }

    pub fn last(&self) -> i64 {
        self.seqs.last().copied().unwrap_or(0)
    }

    fn take(&mut self, frame: &Value) {
        if let Some(seq) = frame["seq"].as_i64()
            && frame["room"] == self.room.as_str()
        {
            self.seqs.push(seq);
            if frame["type"] == "message.new" {
                self.messages += 1;
            }
        }
    }

    fn take_pending(&mut self) {
        for frame in self.client.take_pending() {
            self.take(&frame);
        }
    }

    /// Joins (again) from the last seq seen, page by page.
    pub async fn join(&mut self) -> bool {
        let mut later_page = false;
        let mut held = Vec::new();
        loop {
            let since = self.last();
            let Some(reply) = self
                .client
                .try_request("room.join", json!({"room": self.room, "since": since}))
                .await
            else {
                return false;
            };
            if reply["ok"] != true {
                // chat-service restarting: ask again.
                assert_eq!(reply["error"]["temporary"], true, "join: {reply}");
                self.retries += 1;
                tokio::task::yield_now().await;
                continue;
            }
            for event in reply["events"].as_array().expect("events") {
                self.take(event);
            }
            // Frames read while waiting for this reply. After a first page
            // the room is joined and live: its live events may come before
            // the next page's reply, which then holds some of them again
            // (the client asked for them with `since`). Like the SDK, the
            // client keeps them until the last page, then takes those past
            // it, each seq once.
            for frame in self.client.take_pending() {
                let live_here = frame["room"] == self.room.as_str() && frame["seq"].is_i64();
                if later_page && live_here {
                    held.push(frame);
                } else {
                    self.take(&frame);
                }
            }
            if reply["has_more"] != true {
                for frame in std::mem::take(&mut held) {
                    if frame["seq"].as_i64() > Some(self.last()) {
                        self.take(&frame);
                    }
                }
                return true;
            }
            later_page = true;
        }
    }

    /// Connects to the first edge that answers and rejoins.
    pub async fn reconnect(&mut self, app: &impl SignIn) {
        self.left
            .push((std::mem::take(&mut self.url), std::time::Instant::now()));
        loop {
            let mut urls = app.edges().unwrap_or_else(|| self.urls.clone());
            // Spread reconnecting clients over the edges.
            let len = urls.len().max(1);
            let seed: usize = self.sub.bytes().map(usize::from).sum();
            urls.rotate_left((self.reconnects + seed) % len);
            for url in urls {
                if let Some(client) = app.user_at(&url, &self.sub).await {
                    self.client = client;
                    self.url = url;
                    self.reconnects += 1;
                    if self.join().await {
                        return;
                    }
                }
            }
            tokio::task::yield_now().await;
        }
    }

    pub async fn send(&mut self, app: &impl SignIn, i: usize) {
        let id = format!("{}-{i}", self.sub);
        loop {
            let reply = self
                .client
                .try_request(
                    "message.send",
                    json!({"room": self.room, "text": id, "client_msg_id": id}),
                )
                .await;
            self.take_pending();
            match reply {
                Some(reply) if reply["ok"] == true => return,
                // chat-service restarting: retry with the same client_msg_id.
                Some(reply) if reply["error"]["temporary"] == true => {
                    self.retries += 1;
                    tokio::task::yield_now().await;
                }
                Some(reply) => panic!("send {id} refused: {reply}"),
                None => self.reconnect(app).await,
            }
        }
    }

    /// Reads until the log's last seq has arrived.
    pub async fn catch_up(&mut self, app: &impl SignIn, last: i64) {
        while self.last() < last {
            match self.client.next_frame_or_close().await {
                Ok(frame) => self.take(&frame),
                Err(_) => self.reconnect(app).await,
            }
        }
    }
}
