//! Readiness: `/readyz` is true while the edge is not draining, the services
//! chat cannot work without (auth and chat) answer the standard health
//! check as serving, and an envelope published on the bus comes back
//! through this edge's own subscription. The AI and presence services are
//! checked too but do not decide readiness: without them chat goes on
//! (`ai.ask` answers `unavailable`), and `/status` and
//! `parley_edge_service_up` show the degradation.
//! The probe runs on demand and its answer is kept for a moment, so load
//! balancers polling `/readyz` cost one probe per [`FRESH`] at most.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use common::config::Config;
use common::grpc::{ClientSettings, ServiceChannel};
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
    services: OnceLock<Vec<Checked>>,
    /// What each service answered last, for `/status`.
    seen: std::sync::Mutex<Vec<(&'static str, &'static str)>>,
}

/// A service `/readyz` health-checks.
struct Checked {
    name: &'static str,
    /// The gRPC service name asked about.
    service: &'static str,
    channel: ServiceChannel,
    /// Whether the edge is unready without it.
    required: bool,
}

impl Readiness {
    pub fn new() -> Self {
        Self {
            last: tokio::sync::Mutex::new(None),
            channel: format!("edge:probe:{}", common::ids::new_id("e")),
            probe: tokio::sync::Mutex::new(None),
            services: OnceLock::new(),
            seen: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// Each checked service and what it answered last (`serving`,
    /// `not_serving` or `unreachable`).
    pub fn services(&self) -> Vec<(&'static str, &'static str)> {
        self.seen.lock().unwrap_or_else(|p| p.into_inner()).clone()
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
            ("auth", "parley.auth.v1.AuthService", &s.auth_url, true),
            ("chat", "parley.chat.v1.ChatService", &s.chat_url, true),
            ("ai", "parley.ai.v1.AiService", &s.ai_url, false),
            (
                "presence",
                "parley.presence.v1.PresenceService",
                &s.presence_url,
                false,
            ),
        ];
        // Over mutual TLS when it is on (validated at start-up).
        let tls = common::grpc::tls::MutualTls::from_config(s)
            .ok()
            .flatten()
            .map(|tls| tls.client());
        let mut channels = Vec::new();
        for (name, service, url, required) in services {
            let channel =
                tonic::transport::Endpoint::from_shared(url.to_string()).map(|endpoint| {
                    common::grpc::metered_tls_channel_to(
                        &endpoint,
                        &settings,
                        &common::metrics::GrpcMetrics::default(),
                        tls.as_ref(),
                    )
                });
            match channel {
                Ok(channel) => channels.push(Checked {
                    name,
                    service,
                    channel,
                    required,
                }),
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
    shared.metrics.ready.set(i64::from(answer.is_ok()));
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
    let checks = services.iter().map(|checked| async move {
        let request = HealthCheckRequest {
            service: checked.service.to_string(),
        };
        match HealthClient::new(checked.channel.clone())
            .check(request)
            .await
        {
            Ok(r) if r.get_ref().status == ServingStatus::Serving as i32 => "serving",
            Ok(_) => "not_serving",
            Err(_) => "unreachable",
        }
    });
    let answers = futures::future::join_all(checks).await;
    let mut seen = Vec::with_capacity(answers.len());
    let mut missing = None;
    for (checked, answer) in services.iter().zip(answers) {
        shared
            .metrics
            .service_up
            .get_or_create(&[("service", checked.name)])
            .set(i64::from(answer == "serving"));
        if answer != "serving" && checked.required && missing.is_none() {
            let what = answer.replace('_', " ");
            missing = Some(format!("{} service {what}", checked.name));
        }
        seen.push((checked.name, answer));
    }
    *shared
        .readiness
        .seen
        .lock()
        .unwrap_or_else(|p| p.into_inner()) = seen;
    if let Some(missing) = missing {
        return Err(missing);
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

    /// A gRPC server answering health checks for `names` only.
    async fn health_server(names: &[&'static str]) -> (String, Shutdown) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let url = format!("http://{}", listener.local_addr().expect("addr"));
        let stop = Shutdown::new();
        tokio::spawn(common::grpc::serve(
            "test",
            listener,
            tonic::service::Routes::default(),
            common::grpc::Health::new(names),
            common::metrics::GrpcMetrics::default(),
            std::sync::Arc::new(common::grpc::Callers::default()),
            stop.signal(),
        ));
        (url, stop)
    }

    /// An edge whose auth and chat are one server answering health for
    /// `names`, with ai and presence unreachable.
    async fn edge_behind(names: &[&'static str]) -> (EdgeApp, Shutdown) {
        let (url, stop) = health_server(names).await;
        let mut config = common::config::Config::default();
        config.services.auth_url = url.clone();
        config.services.chat_url = url;
        config.services.ai_url = "http://127.0.0.1:9".into();
        config.services.presence_url = "http://127.0.0.1:9".into();
        config.services.connect_timeout_ms = 200;
        let app = edge(Arc::new(MemoryBus::new()))
            .await
            .with_suite_config(&config);
        (app, stop)
    }

    #[tokio::test]
    async fn ai_and_presence_down_leave_the_edge_ready_and_show_in_status_and_metrics() {
        let (app, _stop) =
            edge_behind(&["parley.auth.v1.AuthService", "parley.chat.v1.ChatService"]).await;
        check(&app.shared)
            .await
            .expect("ready without ai and presence");
        let seen = app.shared.readiness.services();
        assert!(seen.contains(&("chat", "serving")), "{seen:?}");
        assert!(seen.contains(&("ai", "unreachable")), "{seen:?}");
        let text = app.shared.registry.encode();
        let up = |service| {
            common::metrics::find_sample(&text, "parley_edge_service_up", &[("service", service)])
        };
        assert_eq!(up("auth"), Some(1.0), "{text}");
        assert_eq!(up("ai"), Some(0.0), "{text}");
        assert_eq!(up("presence"), Some(0.0), "{text}");
        assert_eq!(
            common::metrics::find_sample(&text, "parley_edge_ready", &[]),
            Some(1.0)
        );
    }

    #[tokio::test]
    async fn a_chat_service_that_is_not_serving_makes_the_edge_unready() {
        // Answers for auth only: chat's health is unknown, as good as down.
        let (app, _stop) = edge_behind(&["parley.auth.v1.AuthService"]).await;
        let answer = check(&app.shared).await;
        assert!(
            answer.as_ref().is_err_and(|e| e.contains("chat service")),
            "{answer:?}"
        );
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
