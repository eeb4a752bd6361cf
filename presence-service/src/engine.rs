//! What presence changes mean for everyone else: the store says what
//! happened, the engine announces it. Clients hear `presence` events on each
//! user's presence channel (status as others may see it: `invisible` looks
//! offline), backends hear watch events, call parties hear `call.*` on their
//! user channels. A sweep loop finds expired leases, grace periods that
//! passed, and calls nobody answered.

use std::sync::Arc;
use std::time::Duration;

use common::bus::{Bus, PRESENCE_WATCH_CHANNEL, envelope, presence_channel, user_channel};
use common::grpc::ServiceChannel;
use common::shutdown::ShutdownSignal;
use proto::chat::v1::CreateNotificationRequest;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::presence::v1::watch_event::Kind;
use protocol::{CallEvent, CallIncoming, PresenceState, ServerFrame, UserRef};
use serde_json::{Value, json};

use crate::error::PresenceError;
use crate::guard::{CallGuard, CallLimits};
use crate::store::{Call, CallAction, Ended, PresenceStore, WentOffline};

/// Statuses a user may set.
pub const STATUSES: &[&str] = &["online", "away", "busy", "invisible"];
/// Longest status text, in characters.
pub const MAX_STATUS_TEXT_CHARS: usize = 100;
/// Largest call payload, in bytes of JSON.
pub const MAX_CALL_PAYLOAD_BYTES: usize = 16 * 1024;

/// Timings from configuration.
#[derive(Debug, Clone, Copy)]
pub struct Timings {
    /// Lease lifetime when a request asks for 0.
    pub lease_ttl: Duration,
    /// How long a user whose last lease ended still counts as online.
    pub grace: Duration,
    /// How often the sweep runs.
    pub sweep_every: Duration,
    /// How long a call rings before it is missed.
    pub call_ring: Duration,
    /// Limits that protect callees.
    pub calls: CallLimits,
}

impl Timings {
    pub fn from_config(config: &common::config::PresenceConfig) -> Self {
        Self {
            lease_ttl: Duration::from_millis(config.lease_ttl_ms),
            grace: Duration::from_millis(config.grace_ms),
            sweep_every: Duration::from_millis(config.sweep_ms),
            call_ring: Duration::from_millis(config.call_ring_ms),
            calls: CallLimits::from_config(config),
        }
    }
}

/// The status others see: `invisible` looks offline.
pub fn visible_status(status: &str) -> &str {
    if status == "invisible" {
        "offline"
    } else {
        status
    }
}

/// A `presence` event as clients receive it.
pub fn presence_event(user_id: &str, status: &str, text: &str, last_seen: i64) -> ServerFrame {
    ServerFrame::Presence(PresenceState {
        user: user_id.to_string(),
        status: status.to_string(),
        text: text.to_string(),
        last_seen,
    })
}

/// A watch event as it travels on the bus (JSON of the proto fields).
pub fn watch_json(kind: Kind, user_id: &str, fields: Value) -> String {
    let mut event = json!({
        "kind": kind as i32,
        "user_id": user_id,
        "at": common::ids::now_ms(),
    });
    if let (Value::Object(event), Value::Object(fields)) = (&mut event, fields) {
        event.extend(fields);
    }
    event.to_string()
}

/// Announces presence changes; shared by the gRPC handler and the sweep.
pub(crate) struct Engine {
    pub(crate) store: Arc<dyn PresenceStore>,
    pub(crate) bus: Arc<dyn Bus>,
    /// Where missed-call notifications are stored; none in tests that do
    /// not need them.
    chat: Option<ChatBackendServiceClient<ServiceChannel>>,
    pub(crate) timings: Timings,
    /// Lease and online-user gauges, refreshed by each sweep.
    pub(crate) metrics: common::metrics::PresenceMetrics,
    /// Invitations per callee and ICE before the answer.
    calls: CallGuard,
}

impl Engine {
    pub(crate) fn new(
        store: Arc<dyn PresenceStore>,
        bus: Arc<dyn Bus>,
        chat: Option<ChatBackendServiceClient<ServiceChannel>>,
        timings: Timings,
        metrics: common::metrics::PresenceMetrics,
    ) -> Self {
        Self {
            calls: CallGuard::new(timings.calls, timings.call_ring),
            store,
            bus,
            chat,
            timings,
            metrics,
        }
    }

    /// Publishes at most once; the bus may lose it and nothing retries.
    async fn publish(&self, channel: &str, kind: &str, json: String) {
        if let Err(error) = self
            .bus
            .publish(channel, &envelope("", 0, kind, json))
            .await
        {
            tracing::warn!(channel, %error, "cannot publish presence event");
        }
    }

    async fn watch(&self, kind: Kind, user_id: &str, fields: Value) {
        self.publish(
            PRESENCE_WATCH_CHANNEL,
            "presence.watch",
            watch_json(kind, user_id, fields),
        )
        .await;
    }

    async fn announce(&self, user_id: &str, status: &str, text: &str, last_seen: i64) {
        let event = presence_event(user_id, status, text, last_seen);
        self.publish(&presence_channel(user_id), event.kind(), event.to_json())
            .await;
    }

    pub(crate) async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let came_online = self.store.register(edge_id, conn_id, user_id, ttl).await?;
        self.watch(
            Kind::Connected,
            user_id,
            json!({"conn_id": conn_id, "edge_id": edge_id}),
        )
        .await;
        if came_online {
            self.watch(Kind::CameOnline, user_id, json!({})).await;
            self.announce(user_id, "online", "", 0).await;
        }
        Ok(())
    }

    pub(crate) async fn release(&self, conn_ids: &[String]) -> Result<(), PresenceError> {
        let ended = self.store.release(conn_ids).await?;
        self.disconnected(&ended).await;
        Ok(())
    }

    async fn disconnected(&self, ended: &[Ended]) {
        for lease in ended {
            self.watch(
                Kind::Disconnected,
                &lease.user_id,
                json!({"conn_id": lease.conn_id, "edge_id": lease.edge_id}),
            )
            .await;
        }
    }

    async fn went_offline(&self, users: &[WentOffline]) {
        for user in users {
            self.watch(
                Kind::WentOffline,
                &user.user_id,
                json!({"at": user.last_seen_ms}),
            )
            .await;
            // Invisible users looked offline all along.
            if user.status != "invisible" {
                self.announce(&user.user_id, "offline", "", user.last_seen_ms)
                    .await;
            }
        }
    }

    /// Sets a status (validated by the caller) and tells whoever can see
    /// the difference.
    pub(crate) async fn set_status(
        &self,
        user_id: &str,
        status: &str,
        text: &str,
    ) -> Result<(), PresenceError> {
        let (previous, previous_text) = self.store.set_status(user_id, status, text).await?;
        self.watch(
            Kind::StatusChanged,
            user_id,
            json!({"status": status, "text": text}),
        )
        .await;
        let seen = |status: &str, text: &str| {
            let status = visible_status(status).to_string();
            let text = if status == "offline" { "" } else { text }.to_string();
            (status, text)
        };
        let (before, after) = (seen(&previous, &previous_text), seen(status, text));
        if before != after {
            let last_seen = if after.0 == "offline" {
                self.store
                    .presence(&[user_id.to_string()])
                    .await?
                    .first()
                    .map(|p| p.last_seen_ms)
                    .unwrap_or_default()
            } else {
                0
            };
            self.announce(user_id, &after.0, &after.1, last_seen).await;
        }
        Ok(())
    }

    /// One sweep: announces what it found.
    pub(crate) async fn sweep(&self) -> Result<(), PresenceError> {
        let sweep = self.store.sweep(self.timings.grace).await?;
        self.disconnected(&sweep.ended).await;
        self.went_offline(&sweep.offline).await;
        for call in &sweep.missed_calls {
            self.calls.forget_call(&call.id);
            self.missed(call).await;
        }
        self.calls.prune();
        let counts = self.store.counts().await?;
        self.metrics.leases.set(counts.leases as i64);
        self.metrics.online_users.set(counts.online_users as i64);
        Ok(())
    }

    /// Sweeps every `sweep_every` until `shutdown`.
    pub(crate) async fn run_sweeps(self: Arc<Self>, shutdown: ShutdownSignal) {
        let mut tick = tokio::time::interval(self.timings.sweep_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    if let Err(error) = self.sweep().await {
                        tracing::warn!(%error, "presence sweep failed; the next one retries");
                    }
                }
                () = shutdown.clone().wait() => return,
            }
        }
    }

    /// A call rang out: both parties hear `call.end`, the callee gets a
    /// missed-call notification.
    async fn missed(&self, call: &Call) {
        let event = ServerFrame::CallEnd(CallEvent {
            call_id: call.id.clone(),
            from: None,
            payload: None,
            reason: Some("missed".into()),
        })
        .to_json();
        for user in [&call.caller, &call.callee] {
            self.publish(&user_channel(user), "call.end", event.clone())
                .await;
        }
        let Some(chat) = self.chat.clone() else {
            return;
        };
        let data = json!({
            "call_id": call.id,
            "from": {"id": call.caller, "name": call.caller_name},
        });
        let request = CreateNotificationRequest {
            user_id: call.callee.clone(),
            kind: "missed_call".into(),
            room_id: call.room_id.clone(),
            data_json: data.to_string(),
        };
        if let Err(status) = chat.clone().create_notification(request).await {
            tracing::warn!(call_id = %call.id, code = ?status.code(), message = status.message(), "cannot store the missed-call notification");
        }
    }

    /// Starts a call from `caller` to `callee`; the callee's connections
    /// hear `call.incoming`.
    pub(crate) async fn invite(
        &self,
        caller: &common::grpc::Actor,
        callee: &str,
        room_id: &str,
        payload: Value,
    ) -> Result<String, PresenceError> {
        self.calls.invite(callee)?;
        let call = Call {
            id: common::ids::new_id("call"),
            caller: caller.user_id.clone(),
            caller_name: caller.name.clone(),
            callee: callee.to_string(),
            room_id: room_id.to_string(),
            answered: false,
        };
        self.store
            .create_call(&call, self.timings.call_ring)
            .await?;
        let event = ServerFrame::CallIncoming(CallIncoming {
            call_id: call.id.clone(),
            from: UserRef::new(&call.caller, &call.caller_name),
            room: Some(room_id.to_string()).filter(|r| !r.is_empty()),
            payload,
            expires_in_ms: self.timings.call_ring.as_millis() as u64,
        });
        self.publish(&user_channel(callee), event.kind(), event.to_json())
            .await;
        Ok(call.id)
    }

    /// Relays one party's action to the other party's connections.
    pub(crate) async fn act(
        &self,
        actor: &common::grpc::Actor,
        action: CallAction,
        call_id: &str,
        payload: Option<Value>,
    ) -> Result<(), PresenceError> {
        if action == CallAction::Ice {
            let bytes = payload.as_ref().map_or(0, |p| p.to_string().len());
            self.calls.ice_size(bytes)?;
        }
        let call = self
            .store
            .act_on_call(call_id, &actor.user_id, action)
            .await?;
        match action {
            CallAction::Ice if !call.answered => self.calls.ice_unanswered(&call.id)?,
            CallAction::Ice => {}
            _ => self.calls.forget_call(&call.id),
        }
        let relayed = CallEvent {
            call_id: call.id.clone(),
            from: Some(UserRef::new(&actor.user_id, &actor.name)),
            payload,
            reason: None,
        };
        let event = match action {
            CallAction::Answer => ServerFrame::CallAnswer(relayed),
            CallAction::Reject => ServerFrame::CallReject(relayed),
            CallAction::End => ServerFrame::CallEnd(relayed),
            CallAction::Ice => ServerFrame::CallIce(relayed),
        };
        self.publish(
            &user_channel(call.other_party(&actor.user_id)),
            event.kind(),
            event.to_json(),
        )
        .await;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    //! The engine's announcements on paused time: the grace period, lease
    //! expiry found by the sweep loop, and calls that ring out.

    use common::bus::{BusEvent, MemoryBus, Subscriber};
    use common::grpc::Actor;
    use common::shutdown::Shutdown;
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::store::MemoryStore;

    const TTL: Duration = Duration::from_secs(30);
    const GRACE: Duration = Duration::from_secs(5);
    const SWEEP: Duration = Duration::from_secs(1);
    const RING: Duration = Duration::from_secs(45);
    const MS: Duration = Duration::from_millis(1);

    struct Harness {
        engine: Arc<Engine>,
        events: UnboundedReceiver<BusEvent>,
        _subscriber: Box<dyn Subscriber>,
        _shutdown: Shutdown,
    }

    /// An engine on the memory store with its sweep loop running, and a
    /// subscriber to `channels`.
    async fn harness(channels: &[String]) -> Harness {
        let bus = Arc::new(MemoryBus::new());
        let timings = Timings {
            lease_ttl: TTL,
            grace: GRACE,
            sweep_every: SWEEP,
            call_ring: RING,
            calls: CallLimits::default(),
        };
        let engine = Arc::new(Engine::new(
            Arc::new(MemoryStore::new()),
            bus.clone(),
            None,
            timings,
            common::metrics::PresenceMetrics::default(),
        ));
        let (subscriber, events) = bus.subscriber().await.expect("subscriber");
        for channel in channels {
            subscriber.subscribe(channel).await.expect("subscribe");
        }
        let shutdown = Shutdown::new();
        tokio::spawn(engine.clone().run_sweeps(shutdown.signal()));
        Harness {
            engine,
            events,
            _subscriber: subscriber,
            _shutdown: shutdown,
        }
    }

    impl Harness {
        /// Moves time on and lets the sweep loop run.
        async fn advance(&self, by: Duration) {
            tokio::time::advance(by).await;
            for _ in 0..20 {
                tokio::task::yield_now().await;
            }
        }

        /// The events published so far, as (kind, JSON).
        fn published(&mut self) -> Vec<(String, Value)> {
            let mut out = Vec::new();
            while let Ok(event) = self.events.try_recv() {
                if let BusEvent::Message { envelope, .. } = event {
                    let json = serde_json::from_str(&envelope.json).expect("json");
                    out.push((envelope.kind, json));
                }
            }
            out
        }

        /// Statuses of the `presence` events published so far.
        fn statuses(&mut self) -> Vec<String> {
            self.published()
                .into_iter()
                .filter(|(kind, _)| kind == "presence")
                .map(|(_, json)| json["status"].as_str().unwrap_or_default().to_string())
                .collect()
        }
    }

    fn alice() -> Actor {
        Actor {
            user_id: "alice".into(),
            name: "Alice".into(),
            anonymous: false,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn offline_is_announced_only_after_the_grace_period() {
        let mut h = harness(&[presence_channel("alice")]).await;
        h.engine
            .register("e1", "c1", "alice", TTL)
            .await
            .expect("register");
        assert_eq!(h.statuses(), ["online"]);
        h.engine.release(&["c1".into()]).await.expect("release");
        h.advance(GRACE - MS).await;
        assert_eq!(
            h.statuses(),
            Vec::<String>::new(),
            "not within the grace period"
        );
        h.advance(SWEEP).await;
        let events = h.published();
        assert_eq!(events.len(), 1, "{events:?}");
        assert_eq!(events[0].1["status"], "offline");
        assert!(events[0].1["last_seen"].as_i64().unwrap_or_default() > 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_reconnect_within_the_grace_period_announces_nothing() {
        let mut h = harness(&[presence_channel("alice")]).await;
        h.engine
            .register("e1", "c1", "alice", TTL)
            .await
            .expect("register");
        assert_eq!(h.statuses(), ["online"]);
        // A rolling restart: the old edge releases, another registers.
        h.engine.release(&["c1".into()]).await.expect("release");
        h.advance(GRACE / 2).await;
        h.engine
            .register("e2", "c2", "alice", TTL)
            .await
            .expect("register");
        h.advance(GRACE * 4).await;
        assert_eq!(h.statuses(), Vec::<String>::new(), "no offline/online pair");
    }

    #[tokio::test(start_paused = true)]
    async fn leases_of_a_dead_edge_go_offline_within_the_ttl_plus_grace() {
        let mut h = harness(&[
            presence_channel("alice"),
            PRESENCE_WATCH_CHANNEL.to_string(),
        ])
        .await;
        h.engine
            .register("e1", "c1", "alice", TTL)
            .await
            .expect("register");
        h.published();
        // The edge dies: no renewals, no release.
        h.advance(TTL - MS).await;
        assert_eq!(h.published(), []);
        h.advance(SWEEP).await;
        let kinds: Vec<i64> = h
            .published()
            .iter()
            .map(|(_, json)| json["kind"].as_i64().unwrap_or_default())
            .collect();
        assert_eq!(kinds, [Kind::Disconnected as i64], "the expiry is noticed");
        h.advance(GRACE).await;
        let events = h.published();
        let kinds: Vec<&str> = events.iter().map(|(kind, _)| kind.as_str()).collect();
        assert_eq!(kinds, ["presence.watch", "presence"], "{events:?}");
        assert_eq!(events[0].1["kind"], Kind::WentOffline as i64);
        assert_eq!(events[1].1["status"], "offline");
    }

    #[tokio::test(start_paused = true)]
    async fn invisible_looks_offline_and_comes_back() {
        let mut h = harness(&[presence_channel("alice")]).await;
        h.engine
            .register("e1", "c1", "alice", TTL)
            .await
            .expect("register");
        h.published();
        let engine = h.engine.clone();
        let set = |status: &'static str, text: &'static str| {
            let engine = engine.clone();
            async move { engine.set_status("alice", status, text).await.expect("set") }
        };
        set("away", "lunch").await;
        set("invisible", "secret").await;
        set("invisible", "other secret").await;
        set("busy", "").await;
        let events = h.published();
        let seen: Vec<(&str, &str)> = events
            .iter()
            .map(|(_, e)| {
                (
                    e["status"].as_str().unwrap_or(""),
                    e["text"].as_str().unwrap_or(""),
                )
            })
            .collect();
        assert_eq!(
            seen,
            [("away", "lunch"), ("offline", ""), ("busy", "")],
            "invisible changes are not seen"
        );
        // An invisible user going offline for real announces nothing.
        set("invisible", "").await;
        h.published();
        h.engine.release(&["c1".into()]).await.expect("release");
        h.advance(GRACE + SWEEP).await;
        assert_eq!(h.published(), []);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unanswered_call_ends_for_both_after_the_ring_time() {
        let mut h = harness(&[user_channel("alice"), user_channel("bob")]).await;
        let call_id = h
            .engine
            .invite(&alice(), "bob", "", json!({"sdp": "offer"}))
            .await
            .expect("invite");
        let events = h.published();
        assert_eq!(events.len(), 1);
        assert_eq!(events[0].0, "call.incoming");
        assert_eq!(events[0].1["from"]["id"], "alice");
        assert_eq!(events[0].1["payload"]["sdp"], "offer");
        h.advance(RING - MS).await;
        assert_eq!(h.published(), []);
        h.advance(SWEEP).await;
        let events = h.published();
        assert_eq!(events.len(), 2, "both parties: {events:?}");
        for (kind, event) in events {
            assert_eq!(kind, "call.end");
            assert_eq!(event["call_id"], call_id.as_str());
            assert_eq!(event["reason"], "missed");
        }
    }
}
