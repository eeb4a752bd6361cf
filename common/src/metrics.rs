//! Prometheus metrics: one [`Metrics`] registry per process (the
//! one-process suite shares one between its components), the metric
//! families of every component, the gRPC metrics layer and the `/metrics`
//! endpoint (OpenMetrics text when the scraper asks for it, the Prometheus
//! text format otherwise).
//!
//! Components hold clones of their own family group and record into it;
//! nothing here is global, so tests that run many suites in one process
//! read exact counts from their own registry.

mod families;
pub mod grpc;
mod http;
mod process;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

pub use families::{
    AiMetrics, AuthMetrics, ChatMetrics, EdgeMetrics, PresenceMetrics, TraceExemplar,
    trace_exemplar,
};
pub use grpc::GrpcMetrics;
pub use http::HttpMetrics;

use crate::shutdown::ShutdownSignal;

/// Latency buckets (seconds) of every duration histogram, the Prometheus
/// client defaults that existing gRPC dashboards assume.
pub const LATENCY_BUCKETS: [f64; 11] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// Content type of the OpenMetrics text format.
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
/// Content type of the classic Prometheus text format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The registry and every family of the components one process runs.
/// Families of components the process does not run exist (so code records
/// unconditionally) but are not registered, so they are never exported.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    pub grpc: GrpcMetrics,
    /// Requests of the HTTP routes (edge and metrics listeners).
    pub http: HttpMetrics,
    pub edge: EdgeMetrics,
    pub chat: ChatMetrics,
    pub ai: AiMetrics,
    pub presence: PresenceMetrics,
    pub auth: AuthMetrics,
    /// Bus payloads this process's subscribers dropped because they did not
    /// verify (unsigned, another key, another channel, too old).
    pub bus_refused_payloads: prometheus_client::metrics::counter::Counter,
}

impl Metrics {
    /// A registry exporting the gRPC and process metrics plus the families
    /// of `components` (names as in [`crate::telemetry::COMPONENTS`]).
    pub fn new(components: &[&str]) -> Arc<Self> {
        let mut registry = Registry::default();
        let grpc = GrpcMetrics::default();
        grpc.register(&mut registry);
        let http = HttpMetrics::default();
        http.register(&mut registry);
        registry.register_collector(Box::new(process::ProcessCollector));
        let bus_refused_payloads = prometheus_client::metrics::counter::Counter::default();
        registry.register(
            "parley_bus_refused_payloads",
            "Bus payloads dropped because their signature did not verify",
            bus_refused_payloads.clone(),
        );
        let runs = |name: &str| components.contains(&name);
        let edge = EdgeMetrics::default();
        if runs("edge") {
            edge.register(&mut registry);
        }
        let chat = ChatMetrics::default();
        if runs("chat") {
            chat.register(&mut registry);
        }
        let ai = AiMetrics::default();
        if runs("ai") {
            ai.register(&mut registry);
        }
        let presence = PresenceMetrics::default();
        if runs("presence") {
            presence.register(&mut registry);
        }
        let auth = AuthMetrics::default();
        if runs("auth") {
            auth.register(&mut registry);
        }
        Arc::new(Self {
            registry,
            grpc,
            http,
            edge,
            chat,
            ai,
            presence,
            auth,
            bus_refused_payloads,
        })
    }

    /// Every exported metric in the OpenMetrics text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut text, &self.registry);
        text
    }

    /// The current value of one sample, e.g. `parley_edge_commands_total`
    /// with labels `{command="ping",outcome="ok"}`, read from the text
    /// export (tests and `/status`); `None` when it was never recorded.
    pub fn sample(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        find_sample(&self.encode(), name, labels)
    }
}

/// The value of the sample `name{labels}` in an exported text; labels the
/// sample has beyond `labels` are ignored.
pub fn find_sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((n, rest)) => (n, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if series_name != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| series_labels.contains(&format!("{k}=\"{v}\"")));
            if all { value.parse().ok() } else { None }
        })
}

/// The text without OpenMetrics exemplars (` # {trace_id="…"} value` after
/// a bucket's value), which the classic Prometheus text format lacks.
fn without_exemplars(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for line in text.lines() {
        out.push_str(line.split_once(" # {").map_or(line, |(sample, _)| sample));
        out.push('\n');
    }
    out
}

/// The `/metrics` route over `metrics`, for any axum router.
pub fn router(metrics: Arc<Metrics>) -> Router {
    let http = metrics.http.clone();
    with_http_metrics(
        Router::new()
            .route("/metrics", get(scrape))
            .with_state(metrics),
        http,
    )
}

/// `router` with its requests recorded in `metrics` (a route layer: the
/// matched route pattern is the label).
pub fn with_http_metrics(router: Router, metrics: HttpMetrics) -> Router {
    router.route_layer(axum::middleware::from_fn_with_state(
        metrics,
        HttpMetrics::record,
    ))
}

async fn scrape(State(metrics): State<Arc<Metrics>>, headers: HeaderMap) -> Response {
    let wants_openmetrics = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|accept| accept.contains("application/openmetrics-text"));
    let text = metrics.encode();
    let (content_type, body) = if wants_openmetrics {
        (OPENMETRICS, text)
    } else {
        (PROMETHEUS_TEXT, without_exemplars(&text))
    };
    (StatusCode::OK, [(header::CONTENT_TYPE, content_type)], body).into_response()
}

/// Serves `/metrics` and `/healthz` on an already-bound listener until
/// `shutdown` fires (the service binaries' `<section>.metrics_listen`).
pub async fn serve(
    metrics: Arc<Metrics>,
    listener: TcpListener,
    shutdown: ShutdownSignal,
) -> std::io::Result<()> {
    // `/healthz`: the process runs (liveness), whether or not its backends
    // answer yet (readiness is the gRPC health check).
    let routes = router(metrics).route("/healthz", get(|| async { "ok" }));
    crate::http_server::serve(
        &listener,
        routes,
        crate::http_server::HttpLimits::metrics(),
        shutdown.wait(),
    )
    .await;
    Ok(())
}

/// Binds `<key>` and serves `/metrics` there in the background, logging
/// the address; the binaries call this next to their main listener.
pub async fn spawn_listener(
    key: &'static str,
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: ShutdownSignal,
) -> Result<SocketAddr, crate::cli::BindError> {
    let listener = crate::cli::bind(key, addr).await?;
    let bound = listener.local_addr().unwrap_or(addr);
    tracing::info!(addr = %bound, "metrics listening (/metrics)");
    tokio::spawn(async move {
        if let Err(error) = serve(metrics, listener, shutdown).await {
            tracing::error!(%error, "metrics listener stopped");
        }
    });
    Ok(bound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_components_run_are_exported() {
        let metrics = Metrics::new(&["chat"]);
        metrics.chat.writer_queue_depth.set(3);
        metrics.edge.connections.set(5);
        let text = metrics.encode();
        assert!(text.contains("parley_chat_writer_queue_depth 3"), "{text}");
        assert!(!text.contains("parley_edge_"), "{text}");
        assert!(text.contains("process_open_fds"), "{text}");
        assert!(text.ends_with("# EOF\n"), "{text}");
        assert_eq!(
            metrics.sample("parley_chat_writer_queue_depth", &[]),
            Some(3.0)
        );
    }

    #[test]
    fn exemplars_carry_the_trace_id_in_openmetrics_only() {
        let metrics = Metrics::new(&["edge"]);
        metrics
            .edge
            .command_duration
            .get_or_create(&[("command", "ping")])
            .observe(
                0.003,
                Some([("trace_id", "4bf92f3577b34da6a3ce929d0e0e4736".into())]),
                None,
            );
        let text = metrics.encode();
        assert!(
            text.contains("# {trace_id=\"4bf92f3577b34da6a3ce929d0e0e4736\"} 0.003"),
            "{text}"
        );
        let plain = without_exemplars(&text);
        assert!(!plain.contains("trace_id"), "{plain}");
        assert!(
            plain.contains("parley_edge_command_duration_seconds_count{command=\"ping\"} 1"),
            "{plain}"
        );
    }

    #[test]
    fn samples_are_found_by_name_and_labels() {
        let text =
            "# TYPE a counter\na_total{x=\"1\",y=\"2\"} 4\na_total{x=\"2\",y=\"2\"} 5\nb 1.5\n";
        assert_eq!(find_sample(text, "a_total", &[("x", "2")]), Some(5.0));
        assert_eq!(find_sample(text, "b", &[]), Some(1.5));
        assert_eq!(find_sample(text, "a_total", &[("x", "3")]), None);
    }

    #[tokio::test]
    async fn the_endpoint_negotiates_the_format() {
        let metrics = Metrics::new(&["auth"]);
        let get = |accept: &'static str| {
            let metrics = metrics.clone();
            async move {
                let mut headers = HeaderMap::new();
                headers.insert(header::ACCEPT, accept.parse().expect("header"));
                let response = scrape(State(metrics), headers).await;
                let content_type = response.headers()[header::CONTENT_TYPE].clone();
                let body = axum::body::to_bytes(response.into_body(), usize::MAX)
                    .await
                    .expect("body");
                (content_type, String::from_utf8_lossy(&body).into_owned())
            }
        };
        let (plain, body) = get("text/plain").await;
        assert_eq!(plain, PROMETHEUS_TEXT);
        assert!(body.contains("parley_auth_tokens_issued_total 0"), "{body}");
        let (open, _) = get("application/openmetrics-text; version=1.0.0").await;
        assert_eq!(open, OPENMETRICS);
    }
}
