//! The event bus: services publish room and user events, edges subscribe to
//! the channels their live connections need. The database stays the source
//! of truth; the bus is only the fast path, so subscribers must tolerate loss
//! (edges repair gaps from chat-service).

mod memory;
mod redis;
mod seal;

use async_trait::async_trait;
use prost::Message;
use tokio::sync::mpsc;

pub use self::memory::MemoryBus;
pub use self::redis::RedisBus;
pub use self::seal::{BusKeys, Refused};
pub use proto::bus::v1::Envelope;

/// Channel of one room's events.
pub fn room_channel(room_id: &str) -> String {
    format!("room:{room_id}")
}

/// Channel of events addressed to all connections of one user.
pub fn user_channel(user_id: &str) -> String {
    format!("user:{user_id}")
}

/// Channel of one user's `presence` events (status as others see it).
pub fn presence_channel(user_id: &str) -> String {
    format!("presence:{user_id}")
}

/// Channel of presence-service's watch events (connects, disconnects,
/// status changes, went-offline), which every replica streams to backends.
pub const PRESENCE_WATCH_CHANNEL: &str = "presence.watch";

/// Channel of control messages for every edge (e.g. revocations).
pub const EDGE_CONTROL_CHANNEL: &str = "edge:control";

/// Channel of control messages for every ai-service replica (e.g. a cancel
/// of a reply another replica is writing).
pub const AI_CONTROL_CHANNEL: &str = "ai:control";

#[derive(Debug, thiserror::Error)]
pub enum BusError {
    #[error("bus unavailable: {0}")]
    Unavailable(String),
    #[error("undecodable envelope: {0}")]
    Decode(#[from] prost::DecodeError),
}

/// What a subscriber receives.
#[derive(Debug, Clone)]
pub enum BusEvent {
    /// An envelope published on a channel this subscriber holds.
    Message { channel: String, envelope: Envelope },
    /// The subscriber lost its connection and is subscribed again; anything
    /// published meanwhile may be lost and must be backfilled.
    Resubscribed,
}

/// Publish/subscribe transport between components.
#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes to a channel (logical name, e.g. [`room_channel`]).
    async fn publish(&self, channel: &str, envelope: &Envelope) -> Result<(), BusError>;

    /// A new subscriber with its own channel set; events arrive on the receiver.
    async fn subscriber(
        &self,
    ) -> Result<(Box<dyn Subscriber>, mpsc::UnboundedReceiver<BusEvent>), BusError>;
}

/// A set of channel subscriptions feeding one receiver.
#[async_trait]
pub trait Subscriber: Send + Sync {
    async fn subscribe(&self, channel: &str) -> Result<(), BusError>;
    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError>;
}

/// Encodes an envelope for transports that carry bytes.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    envelope.encode_to_vec()
}

/// Decodes an envelope from transport bytes.
pub fn decode(bytes: &[u8]) -> Result<Envelope, BusError> {
    Ok(Envelope::decode(bytes)?)
}

/// An envelope for a protocol event, carrying the current trace context.
pub fn envelope(room_id: &str, seq: i64, kind: &str, json: String) -> Envelope {
    Envelope {
        room_id: room_id.to_string(),
        seq,
        kind: kind.to_string(),
        json,
        trace_context: crate::trace::current_context_map(),
        except_user: String::new(),
        published_at_us: now_us(),
    }
}

/// Unix time in microseconds.
fn now_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
}

/// Seconds from the envelope's publication until now; `None` when the
/// publisher did not say when, or the clocks disagree.
pub fn lag_seconds(envelope: &Envelope) -> Option<f64> {
    if envelope.published_at_us <= 0 {
        return None;
    }
    let lag = now_us().checked_sub(envelope.published_at_us)?;
    (lag >= 0).then(|| lag as f64 / 1e6)
}

/// The bus a [`crate::config::BusConfig`] asks for; a Redis bus counts the
/// payloads it refuses in `metrics` (`parley_bus_refused_payloads_total`).
pub async fn connect(
    config: &crate::config::BusConfig,
    metrics: &crate::metrics::Metrics,
) -> Result<std::sync::Arc<dyn Bus>, BusError> {
    Ok(match config.backend {
        crate::config::Backend::Memory => std::sync::Arc::new(MemoryBus::new()),
        crate::config::Backend::Redis => std::sync::Arc::new(
            RedisBus::connect(
                &config.redis_url,
                crate::redis_client::ca_path(&config.redis_ca_file),
                &config.channel_prefix,
                BusKeys::new(
                    config.signing_key.clone(),
                    config.previous_signing_key.clone(),
                ),
            )
            .await?
            .count_refused_in(metrics.bus_refused_payloads.clone()),
        ),
    })
}
