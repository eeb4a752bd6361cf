//! The WebSocket edge: terminates client connections, authenticates them once
//! through auth-service, turns every command frame into one gRPC call, and
//! fans room events from the bus out to the connections that joined.

mod admission;
mod attachments;
mod commands;
mod conn;
mod control;
mod follows;
mod frames;
#[cfg(feature = "fuzzing")]
pub mod fuzzing;
mod hub;
mod inspect;
mod limits;
mod link;
mod outbox;
mod pipeline;
mod presence;
mod ready;
mod sends;
mod session;
mod signed;
mod socket;
mod status;
mod token_life;
mod typing;
mod web;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use common::bus::Bus;
use common::clients::{Clients, Link};
use common::config::EdgeConfig;
use common::grpc::ServiceChannel;
use common::metrics::Metrics;
use common::shutdown::ShutdownSignal;
use proto::ai::v1::ai_service_client::AiServiceClient;
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::hub::Hub;
use crate::presence::Leases;

/// gRPC clients of the four services.
#[derive(Clone)]
pub struct Backends {
    pub auth: AuthServiceClient<ServiceChannel>,
    pub chat: ChatServiceClient<ServiceChannel>,
    /// Chat's backend API, for reading room logs to repair gaps.
    pub chat_backend: ChatBackendServiceClient<ServiceChannel>,
    pub ai: AiServiceClient<ServiceChannel>,
    pub presence: PresenceServiceClient<ServiceChannel>,
}

#[derive(Debug, thiserror::Error)]
pub enum EdgeError {
    #[error("bus: {0}")]
    Bus(#[from] common::bus::BusError),
    #[error("http server: {0}")]
    Serve(#[from] std::io::Error),
    #[error(transparent)]
    Config(#[from] common::config::ConfigError),
}

/// Everything a connection task needs, shared by all of them.
pub(crate) struct Shared {
    pub config: EdgeConfig,
    pub backends: Backends,
    /// Every connection's `message.send`s, over one stream to chat.
    pub sends: sends::Sends,
    pub hub: Hub,
    pub leases: Leases,
    /// The bus, for what the edge publishes itself (typing).
    pub bus: Arc<dyn Bus>,
    /// Whether spans are exported (errors then carry `trace_id`).
    pub tracing: bool,
    /// Set when shutdown starts: `/readyz` fails and upgrades are refused.
    pub draining: AtomicBool,
    /// Fires when shutdown starts; connections close with 1001.
    pub shutdown: ShutdownSignal,
    /// Held by every connection task; closed when the last one ends.
    pub conns_alive: mpsc::Sender<()>,
    /// Concurrent connections per address, per user and in total.
    pub admission: Arc<admission::Admission>,
    /// Rate-limit windows (shared through Redis when configured).
    pub limiter: limits::Limiter,
    /// Whether `ai.*` commands are served (`ai.enabled`).
    pub ai_enabled: AtomicBool,
    /// The cached answer of `/readyz`.
    pub readiness: ready::Readiness,
    /// `edge.trusted_proxies`, parsed.
    pub trusted_proxies: Vec<common::cidr::Cidr>,
    /// Authenticated connections, for revocations announced on the bus.
    pub sessions: Arc<control::Sessions>,
    /// Addresses auth-service blocked after failed attempts.
    pub blocks: Arc<control::Blocks>,
    /// The edge's metric families.
    pub metrics: common::metrics::EdgeMetrics,
    /// The registry `/metrics` serves (in the one-process suite, every
    /// component's).
    pub registry: Arc<Metrics>,
    /// Attachment storage and URL signing, once configured
    /// ([`EdgeApp::with_attachments`]); unset, `/v1/attachments` is 404.
    pub(crate) attachments: std::sync::OnceLock<attachments::Attachments>,
}

impl Shared {
    pub fn ai_enabled(&self) -> bool {
        self.ai_enabled.load(Ordering::Relaxed)
    }
}

/// The edge, ready to serve.
pub struct EdgeApp {
    shared: Arc<Shared>,
    conns_done: mpsc::Receiver<()>,
}

impl EdgeApp {
    /// Builds the edge as both the `parley-edge` binary and the one-process
    /// suite run it: the four services through `clients`, then
    /// [`EdgeApp::with_suite_config`]. `shutdown` starts the drain;
    /// `metrics` is what `/metrics` serves.
    pub async fn build(
        config: &common::config::Config,
        clients: &Clients,
        bus: Arc<dyn Bus>,
        tracing: bool,
        shutdown: ShutdownSignal,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, EdgeError> {
        let backends = Backends {
            auth: AuthServiceClient::new(clients.channel(Link::EdgeToAuth)),
            chat: ChatServiceClient::new(clients.channel(Link::EdgeToChat)),
            chat_backend: ChatBackendServiceClient::new(clients.channel(Link::EdgeToChat)),
            ai: AiServiceClient::new(clients.channel(Link::EdgeToAi)),
            presence: PresenceServiceClient::new(clients.channel(Link::EdgeToPresence)),
        };
        let blobs = common::attachments::open(&config.attachments)?;
        let app = Self::new(&config.edge, backends, bus, tracing, shutdown, metrics).await?;
        Ok(app
            .with_suite_config(config)
            .with_attachments(&config.attachments, blobs))
    }

    /// Serves `POST /v1/attachments` and signed downloads, storing in
    /// `blobs` under the `[attachments]` limits.
    pub fn with_attachments(
        self,
        config: &common::config::AttachmentsConfig,
        blobs: common::attachments::Blobs,
    ) -> Self {
        let _ = self
            .shared
            .attachments
            .set(attachments::Attachments::new(config, blobs));
        self
    }

    /// Builds the edge; `shutdown` is the signal that starts the drain,
    /// `metrics` the registry it records into and serves.
    pub async fn new(
        config: &EdgeConfig,
        backends: Backends,
        bus: Arc<dyn Bus>,
        tracing: bool,
        shutdown: ShutdownSignal,
        metrics: &Arc<Metrics>,
    ) -> Result<Self, EdgeError> {
        let hub = Hub::start(
            bus.as_ref(),
            backends.chat_backend.clone(),
            config.room_presence_max_members,
            metrics.edge.clone(),
        )
        .await?;
        let bus_for_edge = bus.clone();
        let leases = Leases::start(
            backends.presence.clone(),
            Duration::from_millis(config.presence_renew_ms),
            shutdown.clone(),
        );
        let (conns_alive, conns_done) = mpsc::channel(1);
        let sessions = Arc::new(control::Sessions::default());
        let blocks = Arc::new(control::Blocks::default());
        control::start(
            bus.as_ref(),
            sessions.clone(),
            blocks.clone(),
            backends.auth.clone(),
        )
        .await?;
        let sends = sends::Sends::new(
            backends.chat.clone(),
            std::time::Duration::from_millis(config.call_timeout_ms),
        );
        let shared = Arc::new(Shared {
            config: config.clone(),
            backends,
            sends,
            hub,
            leases,
            bus: bus_for_edge,
            tracing,
            draining: AtomicBool::new(false),
            shutdown,
            conns_alive,
            admission: admission::Admission::new(
                config.max_conns,
                config.max_conns_per_ip,
                config.max_conns_per_user,
            ),
            limiter: limits::Limiter::new(),
            ai_enabled: AtomicBool::new(true),
            readiness: ready::Readiness::new(),
            // Validated with the config; an entry that does not parse is
            // not trusted.
            trusted_proxies: config
                .trusted_proxies
                .iter()
                .filter_map(|p| p.parse().ok())
                .collect(),
            sessions,
            blocks,
            metrics: metrics.edge.clone(),
            registry: metrics.clone(),
            attachments: std::sync::OnceLock::new(),
        });
        Ok(Self { shared, conns_done })
    }

    /// Takes what the edge needs from the rest of the suite's configuration:
    /// whether the assistant is on (`ai.enabled`), the services `/readyz`
    /// health-checks (`services.*_url`), and the bus's Redis for shared rate
    /// limits when `edge.rate_limit_redis_url` is empty.
    pub fn with_suite_config(self, config: &common::config::Config) -> Self {
        self.shared
            .ai_enabled
            .store(config.ai.enabled, Ordering::Relaxed);
        self.shared.readiness.watch_services(config);
        let prefix = format!("{}:rl:", config.bus.channel_prefix);
        let ca_path = common::redis_client::ca_path;
        if !config.edge.rate_limit_redis_url.is_empty() {
            self.shared.limiter.use_redis(
                &config.edge.rate_limit_redis_url,
                ca_path(&config.edge.rate_limit_redis_ca_file),
                &prefix,
            );
        } else if config.bus.backend == common::config::Backend::Redis {
            self.shared.limiter.use_redis(
                &config.bus.redis_url,
                ca_path(&config.bus.redis_ca_file),
                &prefix,
            );
        }
        self
    }

    /// Serves HTTP + WebSocket on `listener` until the shutdown signal, then
    /// drains: `/readyz` fails, new upgrades get 503, connections close with
    /// 1001, and the call returns once they are gone or the grace period ends.
    pub async fn run_until_stopped(self, listener: TcpListener) -> Result<(), EdgeError> {
        let Self {
            shared,
            mut conns_done,
        } = self;
        let mut router = Router::new()
            .route("/ws", get(upgrade))
            .route("/healthz", get(|| async { "ok" }))
            .route("/readyz", get(readyz))
            .route("/status", get(status::status))
            .merge(attachments::routes());
        if shared.config.web_app {
            router = router.merge(web::routes());
        }
        let router = common::metrics::with_http_metrics(
            router.with_state(shared.clone()),
            shared.registry.http.clone(),
        )
        .merge(common::metrics::router(shared.registry.clone()));
        let signal = shared.shutdown.clone();
        let drain_flag = shared.clone();
        let limits = common::http_server::HttpLimits {
            header_timeout: Duration::from_millis(shared.config.http_header_timeout_ms),
            max_per_ip: shared.config.max_http_conns_per_ip,
            exempt: shared.trusted_proxies.clone(),
        };
        common::http_server::serve(&listener, router, limits, async move {
            signal.wait().await;
            drain_flag.draining.store(true, Ordering::SeqCst);
        })
        .await;
        let grace = Duration::from_millis(shared.config.shutdown_grace_ms);
        drop(shared);
        let _ = tokio::time::timeout(grace, conns_done.recv()).await;
        Ok(())
    }
}

async fn readyz(State(shared): State<Arc<Shared>>) -> Response {
    if shared.draining.load(Ordering::SeqCst) || shared.shutdown.is_triggered() {
        return (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
    }
    match ready::check(&shared).await {
        Ok(()) => "ready".into_response(),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, reason).into_response(),
    }
}

/// `GET /ws`: checks Origin and upgrade-time credentials, then hands the
/// socket to a connection task.
async fn upgrade(
    State(shared): State<Arc<Shared>>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    uri: axum::http::Uri,
    ws: socket::Upgrade,
) -> Response {
    // From here on "peer" is the client, also behind a trusted proxy.
    let peer = client_addr(&shared.trusted_proxies, peer, &headers);
    let refuse = |reason: &'static str, response: Response| {
        shared
            .metrics
            .upgrades_refused
            .get_or_create(&[("reason", reason)])
            .inc();
        response
    };
    if shared.config.maintenance {
        let response = (StatusCode::SERVICE_UNAVAILABLE, "maintenance").into_response();
        return refuse("maintenance", response);
    }
    if shared.draining.load(Ordering::SeqCst) || shared.shutdown.is_triggered() {
        let response = (StatusCode::SERVICE_UNAVAILABLE, "draining").into_response();
        return refuse("draining", response);
    }
    // Before any WebSocket work: auth-service blocked this address.
    if shared.blocks.is_blocked(peer.ip()) {
        let response = (StatusCode::TOO_MANY_REQUESTS, "too many failed attempts").into_response();
        return refuse("blocked", response);
    }
    let same_origin_app = shared.config.web_app && web::same_origin(&headers);
    if let Err(status) = check_origin(&shared.config, &headers)
        .or_else(|status| if same_origin_app { Ok(()) } else { Err(status) })
    {
        common::security::log(
            common::security::SecurityEvent::OriginRejected,
            Some(peer.ip()),
            None,
            "origin_not_allowed",
        );
        return refuse("origin", (status, "origin not allowed").into_response());
    }
    let slot = match admit_connection(&shared, peer.ip()).await {
        Ok(slot) => slot,
        Err((reason, response)) => return refuse(reason, response),
    };
    let token = upgrade_token(&shared.config, &headers, &uri);
    let parent = common::trace::extract_headers(&headers);
    let identity = match token {
        Some(token) => match session::verify(&shared, &token, peer).await {
            Ok(identity) => Some(identity),
            Err(e) => {
                let status =
                    StatusCode::from_u16(e.code.http_status()).unwrap_or(StatusCode::UNAUTHORIZED);
                return refuse("auth", (status, e.message).into_response());
            }
        },
        None => None,
    };
    // The slot is given back when the connection ends (or the upgrade
    // never completes and this closure is dropped).
    ws.respond("parley.v1", move |socket| {
        conn::run(shared, socket, peer, identity, parent, slot)
    })
}

/// The new-connection rate of the address, then a concurrency slot; a
/// refusal is HTTP 429 (with `Retry-After` when a wait helps), with the
/// reason it is counted under.
async fn admit_connection(
    shared: &Arc<Shared>,
    ip: std::net::IpAddr,
) -> Result<admission::Slot, (&'static str, Response)> {
    use common::security::{SecurityEvent, log};
    let checks = limits::connect_checks(&shared.config, ip);
    if let Err(limited) = shared.limiter.check(&checks).await {
        log(SecurityEvent::RateLimited, Some(ip), None, limited.tier);
        shared
            .metrics
            .rate_limited
            .get_or_create(&[("tier", limited.tier)])
            .inc();
        let secs = limited
            .retry_after
            .as_secs_f64()
            .ceil()
            .max(1.0)
            .to_string();
        let response = (
            StatusCode::TOO_MANY_REQUESTS,
            [(http::header::RETRY_AFTER, secs)],
            "too many new connections",
        )
            .into_response();
        return Err(("rate_limited", response));
    }
    shared.admission.open(ip).map_err(|refused| {
        log(SecurityEvent::ConnLimited, Some(ip), None, refused.as_str());
        let response = (StatusCode::TOO_MANY_REQUESTS, "too many connections").into_response();
        ("conn_limit", response)
    })
}

/// The client's address: the TCP peer, unless the peer is a trusted proxy;
/// then the right-most `X-Forwarded-For` address that is not a trusted
/// proxy itself (addresses further left were written by the client and
/// prove nothing). An entry that is not an address ends the walk.
fn client_addr(
    trusted: &[common::cidr::Cidr],
    peer: SocketAddr,
    headers: &HeaderMap,
) -> SocketAddr {
    let is_trusted = |ip: std::net::IpAddr| trusted.iter().any(|range| range.contains(ip));
    if !is_trusted(peer.ip()) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer.ip();
    for hop in hops.iter().rev() {
        let parsed = hop
            .parse::<std::net::IpAddr>()
            .or_else(|_| hop.parse::<SocketAddr>().map(|a| a.ip()));
        let Ok(ip) = parsed else {
            break;
        };
        client = common::cidr::canonical(ip);
        if !is_trusted(client) {
            break;
        }
    }
    SocketAddr::new(client, peer.port())
}

/// Exact-match Origin allowlist; requests without Origin are non-browser
/// clients and pass unless configured otherwise.
fn check_origin(config: &EdgeConfig, headers: &HeaderMap) -> Result<(), StatusCode> {
    match headers.get(http::header::ORIGIN) {
        None if config.allow_missing_origin => Ok(()),
        None => Err(StatusCode::FORBIDDEN),
        Some(origin) => {
            let origin = origin.to_str().map_err(|_| StatusCode::FORBIDDEN)?;
            if config
                .allowed_origins
                .iter()
                .any(|allowed| allowed == origin)
            {
                Ok(())
            } else {
                Err(StatusCode::FORBIDDEN)
            }
        }
    }
}

/// `Authorization: Bearer …`, or `?token=` when explicitly enabled.
fn upgrade_token(
    config: &EdgeConfig,
    headers: &HeaderMap,
    uri: &axum::http::Uri,
) -> Option<String> {
    if let Some(value) = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        && let Some(token) = value.strip_prefix("Bearer ")
    {
        return Some(token.trim().to_string());
    }
    if config.query_token {
        let query = uri.query()?;
        return query
            .split('&')
            .find_map(|pair| pair.strip_prefix("token="))
            .map(str::to_string);
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(origins: &[&str], allow_missing: bool) -> EdgeConfig {
        EdgeConfig {
            allowed_origins: origins.iter().map(|s| s.to_string()).collect(),
            allow_missing_origin: allow_missing,
            ..EdgeConfig::default()
        }
    }

    fn headers(origin: Option<&str>) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(o) = origin {
            h.insert(http::header::ORIGIN, o.parse().expect("header"));
        }
        h
    }

    #[test]
    fn origin_must_match_exactly() {
        let c = config(&["https://app.example.com"], true);
        assert!(check_origin(&c, &headers(Some("https://app.example.com"))).is_ok());
        assert!(check_origin(&c, &headers(Some("https://app.example.com.evil.io"))).is_err());
        assert!(check_origin(&c, &headers(Some("https://evil.io"))).is_err());
        assert!(check_origin(&c, &headers(Some("http://app.example.com"))).is_err());
        assert!(check_origin(&c, &headers(None)).is_ok());
        assert!(check_origin(&config(&[], false), &headers(None)).is_err());
    }

    #[test]
    fn behind_a_trusted_proxy_the_client_is_the_last_untrusted_hop() {
        let trusted: Vec<common::cidr::Cidr> = ["10.0.0.0/8", "192.0.2.1"]
            .iter()
            .map(|s| s.parse().expect("range"))
            .collect();
        let xff = |values: &[&str]| {
            let mut h = HeaderMap::new();
            for v in values {
                h.append("x-forwarded-for", v.parse().expect("header"));
            }
            h
        };
        let proxy: SocketAddr = "10.1.2.3:4000".parse().expect("addr");
        let stranger: SocketAddr = "198.51.100.4:4000".parse().expect("addr");
        let ip = |a: SocketAddr| a.ip().to_string();

        // A client that is not a proxy cannot choose its address.
        assert_eq!(
            ip(client_addr(&trusted, stranger, &xff(&["203.0.113.9"]))),
            "198.51.100.4"
        );
        // Behind the proxy: the right-most untrusted hop, not what the client wrote.
        assert_eq!(
            ip(client_addr(
                &trusted,
                proxy,
                &xff(&["6.6.6.6, 203.0.113.9, 192.0.2.1"])
            )),
            "203.0.113.9"
        );
        assert_eq!(
            ip(client_addr(
                &trusted,
                proxy,
                &xff(&["6.6.6.6", "203.0.113.9:5555"])
            )),
            "203.0.113.9",
            "several headers are one list; a port is ignored"
        );
        assert_eq!(
            ip(client_addr(&trusted, proxy, &HeaderMap::new())),
            "10.1.2.3"
        );
        assert_eq!(
            ip(client_addr(&trusted, proxy, &xff(&["203.0.113.9, junk"]))),
            "10.1.2.3",
            "garbage ends the walk at the proxy"
        );
        assert_eq!(
            ip(client_addr(&[], proxy, &xff(&["203.0.113.9"]))),
            "10.1.2.3"
        );
    }

    #[test]
    fn query_token_only_when_enabled() {
        let uri: axum::http::Uri = "/ws?token=abc".parse().expect("uri");
        assert_eq!(
            upgrade_token(&EdgeConfig::default(), &HeaderMap::new(), &uri),
            None
        );
        let enabled = EdgeConfig {
            query_token: true,
            ..EdgeConfig::default()
        };
        assert_eq!(
            upgrade_token(&enabled, &HeaderMap::new(), &uri).as_deref(),
            Some("abc")
        );
    }
}
