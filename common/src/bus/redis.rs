//! Redis pub/sub bus (production): one publishing connection shared by all
//! callers, and per subscriber a dedicated pub/sub connection that reconnects
//! with backoff and resubscribes, reporting [`BusEvent::Resubscribed`].
//!
//! Subscriber connections speak RESP3 (Redis 6 or later): on RESP3 one
//! connection carries both commands and pushed messages, which lets the
//! subscriber name itself with `CLIENT SETNAME` (visible in `CLIENT LIST` as
//! `parley-sub-<prefix>-<n>`) and health-check itself with `PING` while
//! subscribed. Publishing uses whatever protocol the URL asks for.
//!
//! Every payload is signed with the bus key ([`BusKeys`]); subscribers drop
//! and count what does not verify, so publishing on Redis is not enough to
//! forge an event.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use prometheus_client::metrics::counter::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::{AsyncConnectionConfig, Client, ProtocolVersion, PushInfo, PushKind, RedisResult};
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{Bus, BusError, BusEvent, BusKeys, Envelope, Subscriber};

/// Longest wait for a TCP connection and handshake to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the reply to one command.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// First pause before a subscriber reconnects; doubles on each failure.
const BACKOFF_START: Duration = Duration::from_millis(100);
/// Longest pause between two reconnect attempts.
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How often an idle subscriber checks its connection with `PING`, so a
/// silently dead connection (no FIN/RST) is noticed and replaced.
const HEALTH_INTERVAL: Duration = Duration::from_secs(15);
/// Channels resubscribed per pipelined round trip after a reconnect.
const RESUBSCRIBE_BATCH: usize = 1_000;

/// Numbers subscriber connections across every bus of this process, so
/// connection names stay unique even when buses share a prefix.
static NEXT_SUBSCRIBER: AtomicU64 = AtomicU64::new(1);

/// A bus on Redis pub/sub. Channel names are prefixed (`<prefix>:room:<id>`).
#[derive(Clone)]
pub struct RedisBus {
    /// Shared publishing connection; reconnects by itself.
    publisher: ConnectionManager,
    /// Opens subscriber connections (the configured URL, forced to RESP3).
    subscriber_client: Client,
    prefix: String,
    /// Signs what this bus publishes and checks what it receives.
    keys: Arc<BusKeys>,
    /// Payloads dropped because they did not verify
    /// (`parley_bus_refused_payloads_total` once [`RedisBus::count_refused_in`]).
    refused: Counter,
}

impl RedisBus {
    /// Connects to `url` (a `rediss://` one verified against `ca_file`, see
    /// [`crate::redis_client::open`]) and checks the connection with `PING`;
    /// [`BusError::Unavailable`] when Redis cannot be reached.
    pub async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
        keys: BusKeys,
    ) -> Result<Self, BusError> {
        let client = crate::redis_client::open(url, ca_file).map_err(unavailable)?;
        // One connection attempt per reconnect: while Redis is down a publish
        // fails within the connect timeout instead of waiting out the
        // library's backoff (which starts at a second), and the next publish
        // tries again.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(0);
        let mut publisher = client
            .get_connection_manager_with_config(config)
            .await
            .map_err(unavailable)?;
        redis::cmd("PING")
            .exec_async(&mut publisher)
            .await
            .map_err(unavailable)?;
        // The connection info keeps the TLS settings (the CA) of `client`.
        let mut info = client.get_connection_info().clone();
        info.redis.protocol = ProtocolVersion::RESP3;
        let subscriber_client = Client::open(info).map_err(unavailable)?;
        Ok(Self {
            publisher,
            subscriber_client,
            prefix: prefix.to_string(),
            keys: Arc::new(keys),
            refused: Counter::default(),
        })
    }

    /// Counts refused payloads in `counter` (the process's metric).
    pub fn count_refused_in(mut self, counter: Counter) -> Self {
        self.refused = counter;
        self
    }

    /// Payloads this bus's subscribers dropped because they were unsigned,
    /// signed with another key, for another channel, or too old.
    pub fn refused_payloads(&self) -> u64 {
        self.refused.get()
    }

    /// The Redis channel of a logical channel.
    fn redis_channel(&self, channel: &str) -> String {
        format!("{}:{channel}", self.prefix)
    }
}

#[async_trait]
impl Bus for RedisBus {
    async fn publish(&self, channel: &str, envelope: &Envelope) -> Result<(), BusError> {
        let redis_channel = self.redis_channel(channel);
        let span = tracing::info_span!(
            "redis.publish",
            otel.kind = "producer",
            messaging.system = "redis",
            messaging.operation.type = "publish",
            messaging.destination.name = %redis_channel,
        );
        let mut publisher = self.publisher.clone();
        redis::cmd("PUBLISH")
            .arg(&redis_channel)
            .arg(self.keys.seal(channel, envelope, crate::ids::now_ms()))
            .exec_async(&mut publisher)
            .instrument(span)
            .await
            .map_err(unavailable)
    }

    async fn subscriber(
        &self,
    ) -> Result<(Box<dyn Subscriber>, mpsc::UnboundedReceiver<BusEvent>), BusError> {
        let name = connection_name(
            &self.prefix,
            NEXT_SUBSCRIBER.fetch_add(1, Ordering::Relaxed),
        );
        let link = Link::open(&self.subscriber_client, &name)
            .await
            .map_err(unavailable)?;
        let (commands_tx, commands) = mpsc::unbounded_channel();
        let (events, events_rx) = mpsc::unbounded_channel();
        let driver = Driver {
            client: self.subscriber_client.clone(),
            name,
            channel_prefix: format!("{}:", self.prefix),
            held: HashSet::new(),
            commands,
            events,
            keys: self.keys.clone(),
            refused: self.refused.clone(),
        };
        tokio::spawn(driver.run(link));
        Ok((
            Box::new(RedisSubscriber {
                commands: commands_tx,
            }),
            events_rx,
        ))
    }
}

fn unavailable(error: impl std::fmt::Display) -> BusError {
    BusError::Unavailable(error.to_string())
}

/// `parley-sub-<prefix>-<n>`, with characters `CLIENT SETNAME` refuses
/// (spaces, control characters) replaced.
fn connection_name(prefix: &str, n: u64) -> String {
    let prefix: String = prefix
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .collect();
    format!("parley-sub-{prefix}-{n}")
}

/// A request from a [`RedisSubscriber`] handle to its driver task.
enum Command {
    Subscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
    Unsubscribe {
        channel: String,
        reply: oneshot::Sender<Result<(), BusError>>,
    },
}

/// The handle callers hold; dropping it stops the driver task, which closes
/// the connection.
struct RedisSubscriber {
    commands: mpsc::UnboundedSender<Command>,
}

impl RedisSubscriber {
    async fn request(
        &self,
        command: impl FnOnce(oneshot::Sender<Result<(), BusError>>) -> Command,
    ) -> Result<(), BusError> {
        let (reply, response) = oneshot::channel();
        let stopped = || BusError::Unavailable("bus subscriber stopped".into());
        self.commands.send(command(reply)).map_err(|_| stopped())?;
        response.await.map_err(|_| stopped())?
    }
}

#[async_trait]
impl Subscriber for RedisSubscriber {
    /// Resolves once Redis confirmed the subscription: anything published
    /// afterwards is delivered.
    async fn subscribe(&self, channel: &str) -> Result<(), BusError> {
        let channel = channel.to_string();
        self.request(|reply| Command::Subscribe { channel, reply })
            .await
    }

    /// After it resolves nothing more from `channel` is delivered.
    async fn unsubscribe(&self, channel: &str) -> Result<(), BusError> {
        let channel = channel.to_string();
        self.request(|reply| Command::Unsubscribe { channel, reply })
            .await
    }
}

/// One live subscriber connection and the messages Redis pushes on it.
struct Link {
    connection: MultiplexedConnection,
    /// Pushed messages, subscription confirmations and, from the library,
    /// a `Disconnection` when the connection ends.
    pushes: mpsc::UnboundedReceiver<PushInfo>,
}

impl Link {
    /// Opens a RESP3 connection named `name`.
    async fn open(client: &Client, name: &str) -> RedisResult<Link> {
        let (push_sender, pushes) = mpsc::unbounded_channel();
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_push_sender(push_sender);
        let mut connection = client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        redis::cmd("CLIENT")
            .arg("SETNAME")
            .arg(name)
            .exec_async(&mut connection)
            .await?;
        Ok(Link { connection, pushes })
    }

    /// Subscribes to every channel, one `SUBSCRIBE` per channel (each gets
    /// exactly one confirmation), pipelined in batches.
    async fn subscribe_all(&mut self, channels: &[String]) -> RedisResult<()> {
        for batch in channels.chunks(RESUBSCRIBE_BATCH) {
            let mut pipeline = redis::pipe();
            for channel in batch {
                pipeline.cmd("SUBSCRIBE").arg(channel);
            }
            pipeline.exec_async(&mut self.connection).await?;
        }
        Ok(())
    }
}

/// What the driver does after a connection ended.
enum Flow {
    /// The connection was lost: reconnect.
    Lost,
    /// The handle or the receiver was dropped: end the task.
    Stop,
}

/// What woke the driver while connected.
enum Wake {
    Command(Option<Command>),
    Push(Option<PushInfo>),
    HealthCheck,
    ReceiverGone,
}

/// The task that owns a subscriber's connection.
struct Driver {
    /// Opens replacement connections.
    client: Client,
    /// `CLIENT SETNAME` of every connection of this subscriber.
    name: String,
    /// `<prefix>:`, stripped from incoming channel names.
    channel_prefix: String,
    /// Logical channels currently subscribed: resubscribed after a
    /// reconnect, and the filter for delivery (nothing from a channel is
    /// delivered once `unsubscribe` returned).
    held: HashSet<String>,
    commands: mpsc::UnboundedReceiver<Command>,
    events: mpsc::UnboundedSender<BusEvent>,
    /// Checks each payload's signature.
    keys: Arc<BusKeys>,
    /// Counts payloads that did not verify.
    refused: Counter,
}

impl Driver {
    async fn run(mut self, first: Link) {
        let mut link = first;
        loop {
            if let Flow::Stop = self.serve(link).await {
                break;
            }
            link = match self.reconnect().await {
                Some(link) => link,
                None => break,
            };
            if self.events.send(BusEvent::Resubscribed).is_err() {
                break;
            }
        }
        tracing::debug!(connection = %self.name, "bus subscriber stopped");
    }

    /// Serves commands and forwards messages until the connection is lost
    /// or the subscriber is dropped.
    async fn serve(&mut self, mut link: Link) -> Flow {
        let mut health = tokio::time::interval(HEALTH_INTERVAL);
        health.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        health.tick().await;
        loop {
            let wake = tokio::select! {
                command = self.commands.recv() => Wake::Command(command),
                push = link.pushes.recv() => Wake::Push(push),
                _ = health.tick() => Wake::HealthCheck,
                _ = self.events.closed() => Wake::ReceiverGone,
            };
            match wake {
                Wake::Command(None) | Wake::ReceiverGone => return Flow::Stop,
                Wake::Command(Some(command)) => {
                    if !self.apply(&mut link, command).await {
                        return Flow::Lost;
                    }
                }
                Wake::Push(None) => return Flow::Lost,
                Wake::Push(Some(push)) if push.kind == PushKind::Disconnection => {
                    tracing::warn!(connection = %self.name, "bus subscriber connection lost");
                    return Flow::Lost;
                }
                Wake::Push(Some(push)) => {
                    if !self.forward(push) {
                        return Flow::Stop;
                    }
                }
                Wake::HealthCheck => {
                    if let Err(error) = redis::cmd("PING").exec_async(&mut link.connection).await {
                        tracing::warn!(connection = %self.name, %error, "bus subscriber health check failed");
                        return Flow::Lost;
                    }
                }
            }
        }
    }

    /// Runs one command on a live connection; `false` when the connection
    /// broke while doing so.
    async fn apply(&mut self, link: &mut Link, command: Command) -> bool {
        match command {
            Command::Subscribe { channel, reply } => {
                let redis_channel = format!("{}{channel}", self.channel_prefix);
                match link.connection.subscribe(&redis_channel).await {
                    Ok(()) => {
                        self.held.insert(channel);
                        let _ = reply.send(Ok(()));
                        true
                    }
                    Err(error) => {
                        let _ = reply.send(Err(unavailable(&error)));
                        !error.is_unrecoverable_error()
                    }
                }
            }
            Command::Unsubscribe { channel, reply } => {
                let redis_channel = format!("{}{channel}", self.channel_prefix);
                self.held.remove(&channel);
                // Delivery stops either way (`held` filters), so a failed
                // UNSUBSCRIBE only costs bandwidth until the next reconnect.
                let result = link.connection.unsubscribe(&redis_channel).await;
                let _ = reply.send(Ok(()));
                match result {
                    Ok(()) => true,
                    Err(error) => {
                        tracing::warn!(connection = %self.name, channel, %error, "bus unsubscribe failed");
                        !error.is_unrecoverable_error()
                    }
                }
            }
        }
    }

    /// Hands a pushed message to the receiver; `false` once the receiver is
    /// gone. Confirmations, foreign and unsubscribed channels and
    /// undecodable payloads are skipped.
    fn forward(&self, push: PushInfo) -> bool {
        let Some(message) = redis::Msg::from_push_info(push) else {
            return true;
        };
        let Some(channel) = message
            .get_channel_name()
            .strip_prefix(self.channel_prefix.as_str())
            .filter(|channel| self.held.contains(*channel))
        else {
            return true;
        };
        match self
            .keys
            .open(channel, message.get_payload_bytes(), crate::ids::now_ms())
        {
            Ok(envelope) => self
                .events
                .send(BusEvent::Message {
                    channel: channel.to_string(),
                    envelope,
                })
                .is_ok(),
            Err(refused) => {
                let n = self.refused.inc();
                // The first, then one in a thousand: a flood must not flood the log.
                if n.is_multiple_of(1000) {
                    tracing::warn!(connection = %self.name, channel, reason = ?refused, refused_so_far = n + 1, "bus payload refused");
                }
                true
            }
        }
    }

    /// Reconnects with exponential backoff and resubscribes every held
    /// channel; `None` when the subscriber was dropped meanwhile.
    async fn reconnect(&mut self) -> Option<Link> {
        let mut delay = BACKOFF_START;
        loop {
            if !self.pause(delay).await {
                return None;
            }
            match self.resume().await {
                Ok(link) => {
                    tracing::info!(
                        connection = %self.name,
                        channels = self.held.len(),
                        "bus subscriber reconnected and resubscribed"
                    );
                    return Some(link);
                }
                Err(error) => {
                    delay = (delay * 2).min(BACKOFF_MAX);
                    tracing::warn!(
                        connection = %self.name,
                        %error,
                        retry_in_ms = delay.as_millis() as u64,
                        "bus subscriber reconnect failed"
                    );
                }
            }
        }
    }

    /// Waits `delay` while answering commands (subscribing fails, being
    /// disconnected; unsubscribing just forgets the channel); `false` when
    /// the subscriber was dropped.
    async fn pause(&mut self, delay: Duration) -> bool {
        let sleep = tokio::time::sleep(delay);
        tokio::pin!(sleep);
        loop {
            let command = tokio::select! {
                _ = &mut sleep => return true,
                _ = self.events.closed() => return false,
                command = self.commands.recv() => command,
            };
            match command {
                None => return false,
                Some(Command::Subscribe { reply, .. }) => {
                    let _ = reply.send(Err(BusError::Unavailable(
                        "bus subscriber is reconnecting".into(),
                    )));
                }
                Some(Command::Unsubscribe { channel, reply }) => {
                    self.held.remove(&channel);
                    let _ = reply.send(Ok(()));
                }
            }
        }
    }

    /// A new connection subscribed to every held channel.
    async fn resume(&self) -> RedisResult<Link> {
        let mut link = Link::open(&self.client, &self.name).await?;
        let channels: Vec<String> = self
            .held
            .iter()
            .map(|channel| format!("{}{channel}", self.channel_prefix))
            .collect();
        link.subscribe_all(&channels).await?;
        Ok(link)
    }
}
