//! HTTP request metrics of the edge's and the metrics listeners' routes,
//! recorded by one axum route layer ([`HttpMetrics::record`]). The route
//! label is the matched route pattern (`/ws`, `/readyz`, `/metrics`, …), so
//! it stays bounded whatever paths clients ask for.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

use super::LATENCY_BUCKETS;

type RouteCode = [(&'static str, String); 2];
type Route = [(&'static str, String); 1];

/// `parley_http_requests_total{route,code}` and
/// `parley_http_request_duration_seconds{route}`.
#[derive(Debug, Clone)]
pub struct HttpMetrics {
    requests: Family<RouteCode, Counter>,
    duration: Family<Route, Histogram, fn() -> Histogram>,
}

impl Default for HttpMetrics {
    fn default() -> Self {
        Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(|| Histogram::new(LATENCY_BUCKETS)),
        }
    }
}

impl HttpMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        r.register(
            "parley_http_requests",
            "HTTP requests answered, by route pattern and status code",
            self.requests.clone(),
        );
        r.register(
            "parley_http_request_duration_seconds",
            "Time to answer an HTTP request (for /ws: to the upgrade), by route pattern",
            self.duration.clone(),
        );
    }

    /// The middleware: use as
    /// `router.route_layer(axum::middleware::from_fn_with_state(metrics, HttpMetrics::record))`.
    pub async fn record(
        State(metrics): State<HttpMetrics>,
        request: Request,
        next: Next,
    ) -> Response {
        let route = request
            .extensions()
            .get::<MatchedPath>()
            .map_or_else(|| "unmatched".to_string(), |p| p.as_str().to_string());
        let started = Instant::now();
        let response = next.run(request).await;
        metrics
            .requests
            .get_or_create(&[
                ("route", route.clone()),
                ("code", response.status().as_u16().to_string()),
            ])
            .inc();
        metrics
            .duration
            .get_or_create(&[("route", route)])
            .observe(started.elapsed().as_secs_f64());
        response
    }
}
