//! The metric families of each component. Label values are always from a
//! closed set (command kinds, close codes, error codes, reasons), never a
//! user, room or connection id.

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::LATENCY_BUCKETS;

/// One label with a value from a closed set.
pub type Label1 = [(&'static str, &'static str); 1];
/// Two labels with values from closed sets.
pub type Label2 = [(&'static str, &'static str); 2];

/// The exemplar of a latency observation: the trace it belongs to, so a
/// dashboard jumps from a latency spike to the trace.
pub type TraceExemplar = [(&'static str, String); 1];

/// The current span's trace as an exemplar; `None` when spans are not
/// exported (no valid trace id).
pub fn trace_exemplar() -> Option<TraceExemplar> {
    crate::trace::current_trace_id().map(|id| [("trace_id", id)])
}

/// A latency histogram family whose buckets keep the trace id of their
/// latest observation.
pub type ExemplarHistogramFamily<L> =
    Family<L, HistogramWithExemplars<TraceExemplar>, fn() -> HistogramWithExemplars<TraceExemplar>>;

fn exemplar_histogram() -> HistogramWithExemplars<TraceExemplar> {
    HistogramWithExemplars::new(LATENCY_BUCKETS.into_iter())
}

pub(super) fn exemplar_family<L: Clone + std::hash::Hash + Eq>() -> ExemplarHistogramFamily<L> {
    Family::new_with_constructor(exemplar_histogram)
}

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The WebSocket edge.
#[derive(Debug, Clone)]
pub struct EdgeMetrics {
    pub connections: Gauge,
    pub connections_accepted: Counter,
    /// `reason`: why an upgrade was refused before it became a connection.
    pub upgrades_refused: Family<Label1, Counter>,
    /// `code`: the WebSocket close code the edge sent or received.
    pub disconnects: Family<[(&'static str, u16); 1], Counter>,
    /// `command` (a protocol command kind or `unknown`), `outcome` (`ok` or
    /// an error code).
    pub commands: Family<Label2, Counter>,
    /// With the trace id of a recent observation as an exemplar.
    pub command_duration: ExemplarHistogramFamily<Label1>,
    pub frames_received: Counter,
    pub frames_sent: Counter,
    pub deliveries: Counter,
    pub bytes_sent: Counter,
    pub slow_consumer_disconnects: Counter,
    pub bus_lag: Histogram,
    pub gap_repairs: Counter,
    pub events_dropped_beyond_log: Counter,
    pub events_backfilled: Counter,
    pub bus_reconnects: Counter,
    pub recoveries: Counter,
    pub events_replayed: Counter,
    /// `tier`: the rate-limit window that refused.
    pub rate_limited: Family<Label1, Counter>,
    pub room_subscriptions: Gauge,
    /// `service`: 1 while the service answered the edge's last health
    /// check as serving.
    pub service_up: Family<Label1, Gauge>,
    /// 1 while `/readyz` last answered ready.
    pub ready: Gauge,
}

impl Default for EdgeMetrics {
    fn default() -> Self {
        Self {
            connections: Gauge::default(),
            connections_accepted: Counter::default(),
            upgrades_refused: Family::default(),
            disconnects: Family::default(),
            commands: Family::default(),
            command_duration: exemplar_family(),
            frames_received: Counter::default(),
            frames_sent: Counter::default(),
            deliveries: Counter::default(),
            bytes_sent: Counter::default(),
            slow_consumer_disconnects: Counter::default(),
            bus_lag: latency_histogram(),
            gap_repairs: Counter::default(),
            events_dropped_beyond_log: Counter::default(),
            events_backfilled: Counter::default(),
            bus_reconnects: Counter::default(),
            recoveries: Counter::default(),
            events_replayed: Counter::default(),
            rate_limited: Family::default(),
            room_subscriptions: Gauge::default(),
            service_up: Family::default(),
            ready: Gauge::default(),
        }
    }
}

impl EdgeMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let m = self.clone();
        r.register(
            "parley_edge_connections",
            "Open WebSocket connections",
            m.connections,
        );
        r.register(
            "parley_edge_connections_accepted",
            "WebSocket upgrades accepted",
            m.connections_accepted,
        );
        r.register(
            "parley_edge_upgrades_refused",
            "Upgrades refused before a connection existed, by reason",
            m.upgrades_refused,
        );
        r.register(
            "parley_edge_disconnects",
            "Connections ended, by WebSocket close code",
            m.disconnects,
        );
        r.register(
            "parley_edge_commands",
            "Commands handled, by command and outcome (ok or an error code)",
            m.commands,
        );
        r.register(
            "parley_edge_command_duration_seconds",
            "Time from a command frame's arrival to its reply, by command",
            m.command_duration,
        );
        r.register(
            "parley_edge_frames_received",
            "Text frames received from clients",
            m.frames_received,
        );
        r.register(
            "parley_edge_frames_sent",
            "Text frames written to clients",
            m.frames_sent,
        );
        r.register(
            "parley_edge_deliveries",
            "Room events queued to a connection (one per receiving connection)",
            m.deliveries,
        );
        r.register(
            "parley_edge_bytes_sent",
            "Bytes of text frames written to clients",
            m.bytes_sent,
        );
        r.register(
            "parley_edge_slow_consumer_disconnects",
            "Connections closed because their outbound queue overflowed (4008)",
            m.slow_consumer_disconnects,
        );
        r.register(
            "parley_edge_bus_lag_seconds",
            "Time from an event's publication to this edge receiving it from the bus",
            m.bus_lag,
        );
        r.register(
            "parley_edge_gap_repairs",
            "Sequence gaps in a room's bus stream repaired from chat's room log",
            m.gap_repairs,
        );
        r.register(
            "parley_edge_events_dropped_beyond_log",
            "Held room events dropped because the room's log never reached them (forged or corrupt envelopes)",
            m.events_dropped_beyond_log,
        );
        r.register(
            "parley_edge_events_backfilled",
            "Events read from the room log to repair gaps",
            m.events_backfilled,
        );
        r.register(
            "parley_edge_bus_reconnects",
            "Times the bus subscription was re-established",
            m.bus_reconnects,
        );
        r.register(
            "parley_edge_recoveries",
            "Joins that resumed from a client's last sequence number",
            m.recoveries,
        );
        r.register(
            "parley_edge_events_replayed",
            "Events replayed to clients recovering after a reconnect",
            m.events_replayed,
        );
        r.register(
            "parley_edge_rate_limited",
            "Commands and connections refused by a rate limit, by tier",
            m.rate_limited,
        );
        r.register(
            "parley_edge_room_subscriptions",
            "Rooms this edge is subscribed to on the bus",
            m.room_subscriptions,
        );
        r.register(
            "parley_edge_service_up",
            "1 while the service answered the edge's last health check as serving",
            m.service_up,
        );
        r.register(
            "parley_edge_ready",
            "1 while the last readiness probe passed",
            m.ready,
        );
    }
}

/// The chat service.
#[derive(Debug, Clone)]
pub struct ChatMetrics {
    pub commit_batch_size: Histogram,
    pub commit_duration: Histogram,
    pub writer_queue_depth: Gauge,
    /// Committed events and notifications waiting to be published.
    pub publish_queue_depth: Gauge,
    /// Publications dropped because the publish queue was full (the bus
    /// stalled); edges repair the gaps from the log.
    pub publish_dropped: Counter,
    /// `kind`: the room-log event kind.
    pub events_appended: Family<Label1, Counter>,
    /// 1 while the database answers, 0 while it does not.
    pub database_up: Gauge,
    /// `result`: `hit` when the cache of recent events answered a
    /// `room.join{since}`, `miss` when it was read from the log.
    pub recent_events_reads: Family<Label1, Counter>,
    /// `code`: `ok` or the error code of each send answered on a
    /// `SendMessages` stream (the gRPC metrics count the stream once).
    pub stream_sends: Family<Label1, Counter>,
}

impl Default for ChatMetrics {
    fn default() -> Self {
        Self {
            commit_batch_size: Histogram::new([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            commit_duration: latency_histogram(),
            writer_queue_depth: Gauge::default(),
            publish_queue_depth: Gauge::default(),
            publish_dropped: Counter::default(),
            events_appended: Family::default(),
            database_up: Gauge::default(),
            recent_events_reads: Family::default(),
            stream_sends: Family::default(),
        }
    }
}

impl ChatMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let m = self.clone();
        r.register(
            "parley_chat_commit_batch_size",
            "Writes committed in one database transaction by the writer",
            m.commit_batch_size,
        );
        r.register(
            "parley_chat_commit_duration_seconds",
            "Duration of one writer transaction",
            m.commit_duration,
        );
        r.register(
            "parley_chat_writer_queue_depth",
            "Writes waiting for the writer",
            m.writer_queue_depth,
        );
        r.register(
            "parley_chat_publish_queue_depth",
            "Committed events waiting to be published on the bus",
            m.publish_queue_depth,
        );
        r.register(
            "parley_chat_publish_dropped",
            "Committed events dropped from a full publish queue (edges repair them from the log)",
            m.publish_dropped,
        );
        r.register(
            "parley_chat_events_appended",
            "Events appended to room logs, by kind",
            m.events_appended,
        );
        r.register(
            "parley_chat_database_up",
            "1 while the database answers the health probe, else 0",
            m.database_up,
        );
        r.register(
            "parley_chat_stream_sends",
            "Sends answered on SendMessages streams, by outcome (ok or the error code)",
            m.stream_sends,
        );
        r.register(
            "parley_chat_recent_events_reads",
            "Rejoins with `since` answered from the cache of recent events (hit) or the log (miss)",
            m.recent_events_reads,
        );
    }
}

/// The AI service.
#[derive(Debug, Clone)]
pub struct AiMetrics {
    pub streams_active: Gauge,
    pub time_to_first_delta: Histogram,
    pub deltas: Counter,
    /// `provider`, `kind`: the provider and a closed error class.
    pub provider_errors: Family<Label2, Counter>,
    /// `provider`: 1 while its circuit breaker is open.
    pub breaker_open: Family<Label1, Gauge>,
}

impl Default for AiMetrics {
    fn default() -> Self {
        Self {
            streams_active: Gauge::default(),
            time_to_first_delta: latency_histogram(),
            deltas: Counter::default(),
            provider_errors: Family::default(),
            breaker_open: Family::default(),
        }
    }
}

impl AiMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let m = self.clone();
        r.register(
            "parley_ai_streams_active",
            "Replies being generated",
            m.streams_active,
        );
        r.register(
            "parley_ai_time_to_first_delta_seconds",
            "Time from a question to the first streamed piece of its answer",
            m.time_to_first_delta,
        );
        r.register("parley_ai_deltas", "Answer pieces streamed", m.deltas);
        r.register(
            "parley_ai_provider_errors",
            "Failed provider calls, by provider and error kind",
            m.provider_errors,
        );
        r.register(
            "parley_ai_breaker_open",
            "1 while the provider's circuit breaker is open",
            m.breaker_open,
        );
    }
}

/// The presence service.
#[derive(Debug, Clone, Default)]
pub struct PresenceMetrics {
    pub leases: Gauge,
    pub online_users: Gauge,
    /// 1 while the presence store (Redis or memory) answers, else 0.
    pub store_up: Gauge,
}

impl PresenceMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let m = self.clone();
        r.register("parley_presence_leases", "Live connection leases", m.leases);
        r.register(
            "parley_presence_online_users",
            "Users with at least one live lease",
            m.online_users,
        );
        r.register(
            "parley_presence_store_up",
            "1 while the presence store answers the health probe, else 0",
            m.store_up,
        );
    }
}

/// The auth service.
#[derive(Debug, Clone, Default)]
pub struct AuthMetrics {
    /// `result`: `ok` or the refusal reason.
    pub verifications: Family<Label1, Counter>,
    pub tokens_issued: Counter,
    pub revocations: Counter,
    /// 1 while the auth store (Redis or memory) answers, else 0.
    pub store_up: Gauge,
}

impl AuthMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        let m = self.clone();
        r.register(
            "parley_auth_verifications",
            "Token verifications, by result (ok or the refusal reason)",
            m.verifications,
        );
        r.register(
            "parley_auth_tokens_issued",
            "Tokens issued",
            m.tokens_issued,
        );
        r.register(
            "parley_auth_revocations",
            "Tokens and sessions revoked",
            m.revocations,
        );
        r.register(
            "parley_auth_store_up",
            "1 while the auth store answers the health probe, else 0",
            m.store_up,
        );
    }
}
