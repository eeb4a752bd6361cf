//! Readiness: `/readyz` is true while the edge is not draining, every gRPC
//! service answers the standard health check as serving, and an envelope
//! published on the bus comes back through this edge's own subscription.
//! The probe runs on demand and its answer is kept for a moment, so load
//! balancers polling `/readyz` cost one probe per [`FRESH`] at most.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::config::Config;
use common::grpc::{ClientSettings, ServiceChannel, channel};
use tokio::time::Instant;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

use crate::Shared;
use crate::outbox::{OutboxReceiver, outbox};

/// How long a probe's answer is reused.
const FRESH: Duration = Duration::from_secs(2);
/// Bound on one probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);
/// Hub key of the probe's member (no connection uses it).
const PROBE_KEY: u64 = u64::MAX;

/// The last probe's answer: `Ok` or what is not ready.
pub(crate) struct Readiness {
    last: tokio::sync::Mutex<Option<(Instant, Result<(), String>)>>,
    /// The probe's subscription: its own bus channel and what arrives there.
    channel: String,
    probe: tokio::sync::Mutex<Option<OutboxReceiver>>,
    /// Health-check channels of the services (set from the suite's config).
    services: OnceLock<Vec<(&'static str, &'static str, ServiceChannel)>>,
}

impl Readiness {
    pub fn new() -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
            channel: format!("edge:probe:{}", common::ids::new_id("e")),
            probe: tokio::sync::Mutex::new(None),
            services: OnceLock::new(),
        }
    }

    /// Health-checks the services at `config.services`' addresses.
    pub fn watch_services(&self, config: &Config) {
        let s = &config.services;
        let settings = ClientSettings {
            credential: s.credential.clone(),
            connect_timeout: Duration::from_millis(s.connect_timeout_ms),
            timeout: PROBE_TIMEOUT,
        };
        let services = [
            ("auth", "parley.auth.v1.AuthService", &s.auth_url),
            ("chat", "parley.chat.v1.ChatService", &s.chat_url),
            ("ai", "parley.ai.v1.AiService", &s.ai_url),
            (
                "presence",
                "parley.presence.v1.PresenceService",
                &s.presence_url,
            ),
        ];
        let mut channels = Vec::new();
        for (name, service, url) in services {
            match channel(url, &settings) {
                Ok(ch) => channels.push((name, service, ch)),
                Err(e) => {
                    tracing::warn!(service = name, error = %e, "readiness cannot check a service")
                }
            }
        }
        let _ = self.services.set(channels);
    }
}

/// Whether the edge is ready, probing when the last answer is stale.
pub(crate) async fn check(shared: &Arc<Shared>) -> Result<(), String> {
    let readiness = &shared.readiness;
    let mut last = readiness.last.lock().await;
    if let Some((at, answer)) = last.as_ref()
        && at.elapsed() < FRESH
    {
        return answer.clone();
    }
    let answer = match tokio::time::timeout(PROBE_TIMEOUT, probe(shared)).await {
        Ok(answer) => answer,
        Err(_) => Err("probe timed out".to_string()),
    };
    *last = Some((Instant::now(), answer.clone()));
    answer
}

async fn probe(shared: &Arc<Shared>) -> Result<(), String> {
    let services = shared
        .readiness
        .services
        .get()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let checks = services.iter().map(|(name, service, channel)| async move {
        let request = HealthCheckRequest {
            service: service.to_string(),
        };
        match HealthClient::new(channel.clone()).check(request).await {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => Ok(()),
            Ok(_) => Err(format!("{name} service not serving")),
            Err(_) => Err(format!("{name} service unreachable")),
        }
    });
    for result in futures::future::join_all(checks).await {
        result?;
    }
    bus_round_trip(shared).await
}

/// Publishes on the probe channel and waits for it to come back.
async fn bus_round_trip(shared: &Arc<Shared>) -> Result<(), String> {
    let readiness = &shared.readiness;
    let mut probe = readiness.probe.lock().await;
    if probe.is_none() {
        let (tx, rx) = outbox(64 * 1024);
        shared
            .hub
            .join(&readiness.channel, PROBE_KEY, "edge", tx, false)
            .await
            .map_err(|_| "bus subscription failed".to_string())?;
        *probe = Some(rx);
    }
    let Some(rx) = probe.as_ref() else {
        return Err("bus subscription failed".into());
    };
    let nonce = common::ids::new_id("p");
    let envelope = common::bus::envelope("", 0, "probe", format!("\"{nonce}\""));
    shared
        .bus
        .publish(&readiness.channel, &envelope)
        .await
        .map_err(|_| "bus unavailable".to_string())?;
    loop {
        let Some(batch) = rx.next_batch().await else {
            return Err("bus subscription closed".into());
        };
        for item in batch {
            if let crate::outbox::Outbound::Text(text) = item {
                rx.sent(text.len());
                if text.as_str().contains(&nonce) {
                    return Ok(());
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use common::bus::{Bus, BusError, BusEvent, Envelope, MemoryBus, Subscriber};
    use common::config::EdgeConfig;
    use common::grpc::{ClientSettings, channel};
    use common::shutdown::Shutdown;
    use tokio::sync::mpsc;

    use super::*;
    use crate::{Backends, EdgeApp};

    /// A bus that accepts everything and delivers nothing (a subscriber
    /// that lost its subscription without noticing).
    struct DeafBus;

    struct DeafSubscriber;

    #[async_trait::async_trait]
    impl Bus for DeafBus {
        async fn publish(&self, _: &str, _: &Envelope) -> Result<(), BusError> {
            Ok(())
        }

        async fn subscriber(
            &self,
        ) -> Result<(Box<dyn Subscriber>, mpsc::UnboundedReceiver<BusEvent>), BusError> {
            let (_tx, rx) = mpsc::unbounded_channel();
            Ok((Box::new(DeafSubscriber), rx))
        }
    }

    #[async_trait::async_trait]
    impl Subscriber for DeafSubscriber {
        async fn subscribe(&self, _: &str) -> Result<(), BusError> {
            Ok(())
        }

        async fn unsubscribe(&self, _: &str) -> Result<(), BusError> {
            Ok(())
        }
    }

    async fn edge(bus: Arc<dyn Bus>) -> EdgeApp {
        let settings = ClientSettings {
            credential: common::Secret::new("x".repeat(32)),
            connect_timeout: Duration::from_millis(200),
            timeout: Duration::from_secs(1),
        };
        // Nothing listens here; the bus probe does not need the services.
        let dead = || channel("http://127.0.0.1:9", &settings).expect("channel");
        let backends = Backends {
            auth: proto::auth::v1::auth_service_client::AuthServiceClient::new(dead()),
            chat: proto::chat::v1::chat_service_client::ChatServiceClient::new(dead()),
            chat_backend:
                proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient::new(dead()),
            ai: proto::ai::v1::ai_service_client::AiServiceClient::new(dead()),
            presence: proto::presence::v1::presence_service_client::PresenceServiceClient::new(
                dead(),
            ),
        };
        EdgeApp::new(
            &EdgeConfig::default(),
            backends,
            bus,
            false,
            Shutdown::new().signal(),
            &common::metrics::Metrics::new(&["edge"]),
        )
        .await
        .expect("edge")
    }

    #[tokio::test]
    async fn the_bus_is_ready_only_when_a_probe_comes_back() {
        let live = edge(Arc::new(MemoryBus::new())).await;
        bus_round_trip(&live.shared).await.expect("round trip");
        bus_round_trip(&live.shared).await.expect("and again");

        let deaf = edge(Arc::new(DeafBus)).await;
        let probe = tokio::time::timeout(Duration::from_millis(500), bus_round_trip(&deaf.shared));
        assert!(probe.await.is_err(), "published but never received");
    }

    #[tokio::test]
    async fn unreachable_services_make_the_edge_unready() {
        let app = edge(Arc::new(MemoryBus::new())).await;
        check(&app.shared).await.expect("no services to check yet");
        let mut config = common::config::Config::default();
        config.services.auth_url = "http://127.0.0.1:9".into();
        config.services.connect_timeout_ms = 200;
        let app = edge(Arc::new(MemoryBus::new()))
            .await
            .with_suite_config(&config);
        let answer = check(&app.shared).await;
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("unreachable")),
            "{answer:?}"
        );
    }
}
