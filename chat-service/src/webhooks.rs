//! Outgoing webhooks: signed POSTs of room-log events and of offline users'
//! notifications to configured endpoints (`[[chat.webhooks]]`).
//!
//! Nothing here is on the commit path. A planner follows the log like a
//! `Watch` consumer, with one cursor per endpoint stored in the database:
//! it turns each page of events into deliveries and moves the cursor in
//! the same transaction, so the queue (`webhook_deliveries`) is durable and
//! a restart loses nothing. A dispatcher claims due deliveries — at most
//! `max_in_flight` per endpoint — and POSTs them; a failed attempt is
//! retried with exponential backoff, and after `max_attempts` it becomes a
//! dead letter, listed and re-driven through the backend API. Every attempt
//! of a delivery carries the same `Idempotency-Key`: delivery is at least
//! once, and a receiver drops repeats by that key.
//!
//! `connection.*`: connects and disconnects, with user and edge, taken
//! from presence-service's `Watch` (`lifecycle.rs`).
//!
//! `notification.offline`: mentions and direct messages (from the log) and
//! backend notifications such as `missed_call` (`CreateNotification`), for
//! users with no live connection when the first attempt is made; presence
//! answers that (`UserPresence.connected`, which counts invisible users).

mod deliver;
mod lifecycle;
mod plan;
pub(crate) mod sign;
#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use common::config::WebhookConfig;
use common::grpc::ServiceChannel;
use common::shutdown::ShutdownSignal;
use proto::chat::v1::Notification;
use proto::presence::v1::GetPresenceRequest;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use crate::error::ChatError;
use crate::store::Store;
use crate::store::webhooks::NewDelivery;

/// The payload type of a room-log event.
pub(crate) const ROOM_EVENT: &str = "room.event";
/// The payload type of an offline user's notification.
pub(crate) const OFFLINE_NOTIFICATION: &str = common::config::OFFLINE_NOTIFICATIONS;

/// Wall-clock time in Unix milliseconds; tests drive their own.
pub(crate) trait Clock: Send + Sync {
    fn now_ms(&self) -> i64;
}

/// The system clock.
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        common::ids::now_ms()
    }
}

/// Who holds a live connection.
#[tonic::async_trait]
pub(crate) trait Connections: Send + Sync {
    /// Which of `users` hold a live connection now.
    async fn connected(&self, users: &[String]) -> Result<HashSet<String>, String>;
}

/// Without presence (tests of chat-service alone) nobody is connected.
pub(crate) struct NoPresence;

#[tonic::async_trait]
impl Connections for NoPresence {
    async fn connected(&self, _users: &[String]) -> Result<HashSet<String>, String> {
        Ok(HashSet::new())
    }
}

#[tonic::async_trait]
impl Connections for PresenceServiceClient<ServiceChannel> {
    async fn connected(&self, users: &[String]) -> Result<HashSet<String>, String> {
        let answer = self
            .clone()
            .get_presence(GetPresenceRequest {
                user_ids: users.to_vec(),
            })
            .await
            .map_err(|status| format!("presence: {}", status.code()))?;
        Ok(answer
            .into_inner()
            .presence
            .into_iter()
            .filter(|p| p.connected)
            .map(|p| p.user_id)
            .collect())
    }
}

/// Handle to the webhook tasks; cheap to clone. Without endpoints it does
/// nothing.
#[derive(Clone)]
pub(crate) struct Webhooks {
    shared: Option<Arc<Shared>>,
}

struct Shared {
    store: Store,
    endpoints: Vec<Endpoint>,
    clock: Arc<dyn Clock>,
    connections: Arc<dyn Connections>,
    /// Wakes the dispatcher: new deliveries, a finished attempt, a redrive.
    wake: Notify,
    /// How often the planner looks for other replicas' appends, and the
    /// longest the dispatcher sleeps between looks at the queue.
    poll: Duration,
    http: reqwest::Client,
    /// Where connection events come from (`connection.*` filters).
    presence: Option<PresenceServiceClient<ServiceChannel>>,
    /// Counts the attempts whose outcome is stored (tests wait on it).
    recorded: tokio::sync::watch::Sender<u64>,
}

struct Endpoint {
    config: WebhookConfig,
    /// `max_in_flight` permits: one per POST in flight.
    slots: Arc<Semaphore>,
}

impl Webhooks {
    /// The webhooks of `configs`, reading `store`; not started yet. An
    /// endpoint new to the database starts here, at the log's newest event.
    pub(crate) async fn new(
        store: Store,
        configs: &[WebhookConfig],
        clock: Arc<dyn Clock>,
        connections: Arc<dyn Connections>,
        poll: Duration,
    ) -> Result<Webhooks, ChatError> {
        if configs.is_empty() {
            return Ok(Webhooks { shared: None });
        }
        for config in configs {
            store.webhook_cursor(&config.name).await?;
        }
        let endpoints = configs
            .iter()
            .map(|config| Endpoint {
                slots: Arc::new(Semaphore::new(config.max_in_flight as usize)),
                config: config.clone(),
            })
            .collect();
        let http = reqwest::Client::builder()
            .user_agent(concat!("parley-webhooks/", env!("CARGO_PKG_VERSION")))
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap_or_default();
        Ok(Webhooks {
            shared: Some(Arc::new(Shared {
                store,
                endpoints,
                clock,
                connections,
                wake: Notify::new(),
                poll,
                http,
                presence: None,
                recorded: tokio::sync::watch::Sender::new(0),
            })),
        })
    }

    /// Takes connection events from `presence` (when an endpoint's filter
    /// names `connection.*`).
    pub(crate) fn with_presence(mut self, presence: PresenceServiceClient<ServiceChannel>) -> Self {
        if let Some(shared) = self.shared.as_mut().and_then(Arc::get_mut) {
            shared.presence = Some(presence);
        }
        self
    }

    /// Starts the planner, the dispatcher and, if an endpoint takes
    /// connection events, the follower of presence; all end at `shutdown`
    /// (attempts in flight are retried after their claim lapses).
    pub(crate) fn start(&self, shutdown: ShutdownSignal) {
        if let Some(shared) = &self.shared {
            tokio::spawn(plan::run(shared.clone(), shutdown.clone()));
            tokio::spawn(deliver::run(shared.clone(), shutdown.clone()));
            let lifecycle = shared.endpoints.iter().any(|e| {
                e.config.wants_connection("connection.connected")
                    || e.config.wants_connection("connection.disconnected")
            });
            if let (true, Some(presence)) = (lifecycle, shared.presence.clone()) {
                tokio::spawn(lifecycle::follow(shared.clone(), presence, shutdown));
            }
        }
    }

    /// Wakes the dispatcher (after a redrive).
    pub(crate) fn wake(&self) {
        if let Some(shared) = &self.shared {
            shared.wake.notify_one();
        }
    }

    /// Whether an endpoint of this name is configured.
    pub(crate) fn knows(&self, endpoint: &str) -> bool {
        self.shared
            .as_ref()
            .is_some_and(|s| s.endpoints.iter().any(|e| e.config.name == endpoint))
    }

    /// Queues a stored notification (e.g. `missed_call`) for every endpoint
    /// taking `notification.offline`; sent only if its user has no live
    /// connection at the first attempt. A failure is logged: the
    /// notification itself is stored either way.
    pub(crate) async fn notification(&self, notification: &Notification) {
        let Some(shared) = &self.shared else {
            return;
        };
        let now = shared.clock.now_ms();
        for endpoint in &shared.endpoints {
            if !endpoint.config.wants_offline_notifications() {
                continue;
            }
            let id = format!("{}:n:{}", endpoint.config.name, notification.id);
            let body = json!({
                "type": OFFLINE_NOTIFICATION,
                "id": id,
                "user": notification.user_id,
                "reason": notification.kind,
                "room": non_empty(&notification.room_id),
                "position": Value::Null,
                "created_at": notification.created_at,
                "message": Value::Null,
                "notification": parse(&notification.json),
            });
            let delivery = NewDelivery {
                id,
                kind: OFFLINE_NOTIFICATION.into(),
                user_id: Some(notification.user_id.clone()),
                body: body.to_string(),
            };
            let stored = shared
                .store
                .enqueue_webhooks(&endpoint.config.name, &[delivery], None, now)
                .await;
            if let Err(error) = stored {
                tracing::warn!(%error, endpoint = %endpoint.config.name, "cannot queue webhook");
            }
        }
        shared.wake.notify_one();
    }
}

/// A stored JSON text as a value (`null` if it is not JSON).
fn parse(json: &str) -> Value {
    serde_json::from_str(json).unwrap_or(Value::Null)
}

fn non_empty(s: &str) -> Value {
    if s.is_empty() {
        Value::Null
    } else {
        Value::String(s.to_string())
    }
}
