//! gRPC plumbing shared by every component: the servers' common stack (trace
//! extraction, metrics, health, reflection, service credential) and the
//! clients' (trace injection, credential, metrics, deadlines), plus the
//! end-user identity ("actor") that travels in metadata.

use std::sync::Arc;
use std::time::Duration;

pub mod balance;
pub mod callers;
pub mod tls;

pub use callers::{CallerLayer, CallerName, Callers};

use tokio::net::TcpListener;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ErrorCode;
use crate::metrics::grpc::{GrpcMetrics, GrpcMetricsService, Side};
use crate::secret::Secret;
use crate::shutdown::ShutdownSignal;
use crate::trace;

const USER_ID: &str = "x-parley-user-id";
const USER_NAME: &str = "x-parley-user-name";
const USER_ANONYMOUS: &str = "x-parley-user-anonymous";

/// The end user a call acts for, verified by whoever holds the service
/// credential (normally the edge) and passed along in metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Actor {
    pub user_id: String,
    pub name: String,
    pub anonymous: bool,
}

impl Actor {
    /// The AI assistant, as the sender of its replies.
    pub fn assistant() -> Self {
        Self {
            user_id: "assistant".into(),
            name: "Assistant".into(),
            anonymous: false,
        }
    }

    /// Puts the actor into outgoing metadata.
    pub fn apply(&self, metadata: &mut MetadataMap) {
        // Ids and names may be any UTF-8 (`zoë`): both travel percent-encoded.
        if let Ok(v) = AsciiMetadataValue::try_from(percent_encode(&self.user_id)) {
            metadata.insert(USER_ID, v);
        }
        if let Ok(v) = AsciiMetadataValue::try_from(percent_encode(&self.name)) {
            metadata.insert(USER_NAME, v);
        }
        metadata.insert(
            USER_ANONYMOUS,
            AsciiMetadataValue::from_static(if self.anonymous { "1" } else { "0" }),
        );
    }

    /// A request carrying this actor.
    pub fn request<T>(&self, message: T) -> Request<T> {
        let mut request = Request::new(message);
        self.apply(request.metadata_mut());
        request
    }

    /// Reads the actor from incoming metadata.
    pub fn from_metadata(metadata: &MetadataMap) -> Option<Self> {
        let user_id = percent_decode(metadata.get(USER_ID)?.to_str().ok()?);
        if user_id.is_empty() {
            return None;
        }
        let name = metadata
            .get(USER_NAME)
            .and_then(|v| v.to_str().ok())
            .map(percent_decode)
            .unwrap_or_else(|| user_id.clone());
        let anonymous = metadata.get(USER_ANONYMOUS).and_then(|v| v.to_str().ok()) == Some("1");
        Some(Self {
            user_id,
            name,
            anonymous,
        })
    }

    /// The actor of a request, or `unauthorized`.
    pub fn of<T>(request: &Request<T>) -> Result<Self, Status> {
        Self::from_metadata(request.metadata())
            .ok_or_else(|| ErrorCode::Unauthorized.status("missing end-user identity"))
    }
}

fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b' ') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|hex| u8::from_str_radix(hex, 16).ok())
        {
            out.push(b);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A status as the trailers a unary call would have ended with
/// (`grpc-status`, `grpc-message`, its metadata): how a stream answers one
/// item with the error the item's own call would have got.
pub fn status_to_headers(status: &Status) -> std::collections::HashMap<String, String> {
    let mut map = http::HeaderMap::new();
    if status.add_header(&mut map).is_err() {
        // Only metadata that cannot be a header gets here: keep the code.
        map.clear();
        let _ = Status::new(status.code(), status.message()).add_header(&mut map);
    }
    map.iter()
        .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
        .collect()
}

/// The status [`status_to_headers`] wrote; `internal` when `headers` hold none.
pub fn status_from_headers(headers: &std::collections::HashMap<String, String>) -> Status {
    let map: http::HeaderMap = headers
        .iter()
        .filter_map(|(k, v)| {
            Some((
                http::HeaderName::try_from(k.as_str()).ok()?,
                http::HeaderValue::try_from(v.as_str()).ok()?,
            ))
        })
        .collect();
    Status::from_header_map(&map).unwrap_or_else(|| Status::internal("an answer without a status"))
}

/// Client-side stack: injects trace context and the service credential.
#[derive(Clone)]
pub struct ClientInterceptor {
    authorization: AsciiMetadataValue,
}

impl tonic::service::Interceptor for ClientInterceptor {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        trace::inject_current(request.metadata_mut());
        request
            .metadata_mut()
            .insert("authorization", self.authorization.clone());
        Ok(request)
    }
}

/// A channel to another Parley service with the client stack applied:
/// the interceptor (trace context, credential) outside, the metrics layer
/// next to the connection.
pub type ServiceChannel = InterceptedService<GrpcMetricsService<Channel>, ClientInterceptor>;

/// Settings for clients of Parley services.
#[derive(Debug, Clone)]
pub struct ClientSettings {
    pub credential: Secret,
    pub connect_timeout: Duration,
    /// Deadline for each call.
    pub timeout: Duration,
}

/// A lazily connecting channel: start-up never waits for the other service,
/// and a service that is down turns into `unavailable` within the deadlines.
pub fn channel(
    url: &str,
    settings: &ClientSettings,
) -> Result<ServiceChannel, tonic::transport::Error> {
    let endpoint = Endpoint::from_shared(url.to_string())?;
    Ok(channel_to(&endpoint, settings))
}

/// Like [`channel`], on an already parsed endpoint (which cannot fail).
/// Its calls are recorded in metrics no registry exports; components use
/// [`metered_channel_to`].
pub fn channel_to(endpoint: &Endpoint, settings: &ClientSettings) -> ServiceChannel {
    metered_channel_to(endpoint, settings, &GrpcMetrics::default())
}

/// Like [`channel_to`], recording `grpc_client_*` metrics into `metrics`.
pub fn metered_channel_to(
    endpoint: &Endpoint,
    settings: &ClientSettings,
    metrics: &GrpcMetrics,
) -> ServiceChannel {
    metered_tls_channel_to(endpoint, settings, metrics, None)
}

/// Like [`metered_channel_to`], over TLS with `tls` when given (the
/// endpoint's host is the name the server's certificate must carry).
pub fn metered_tls_channel_to(
    endpoint: &Endpoint,
    settings: &ClientSettings,
    metrics: &GrpcMetrics,
    tls: Option<&tonic::transport::ClientTlsConfig>,
) -> ServiceChannel {
    use tower::Layer;
    let (connect_timeout, timeout) = (settings.connect_timeout, settings.timeout);
    let host = endpoint.uri().host().unwrap_or_default().to_string();
    let tls = tls.map(|tls| tls.clone().domain_name(host));
    let configure = move |endpoint: Endpoint| {
        let endpoint = match &tls {
            // Only a URI without a host fails here, and those never parse.
            Some(tls) => endpoint.clone().tls_config(tls.clone()).unwrap_or(endpoint),
            None => endpoint,
        };
        endpoint
            .connect_timeout(connect_timeout)
            .timeout(timeout)
            .tcp_nodelay(true)
    };
    // A DNS name (a headless Service) is balanced across its replicas.
    let channel = if balance::is_balanced(endpoint) {
        balance::balanced(endpoint, configure, balance::dns())
    } else {
        configure(endpoint.clone()).connect_lazy()
    };
    let authorization =
        AsciiMetadataValue::try_from(format!("Bearer {}", settings.credential.expose()))
            .unwrap_or_else(|_| AsciiMetadataValue::from_static(""));
    let metered = metrics.layer(Side::Client).layer(channel);
    InterceptedService::new(metered, ClientInterceptor { authorization })
}

/// How often a component probes the dependency its health follows.
pub const HEALTH_PROBE_INTERVAL: Duration = Duration::from_secs(1);

/// A component's standard gRPC health (`grpc.health.v1`): every service
/// name it serves reports SERVING while the dependency it cannot work
/// without answers, and NOT_SERVING while it does not ([`Health::watch`]).
#[derive(Clone)]
pub struct Health {
    reporter: tonic_health::server::HealthReporter,
    names: Arc<[&'static str]>,
    /// The last status set, so a restarted server starts with it.
    serving: Arc<std::sync::atomic::AtomicBool>,
}

impl Health {
    /// Health for `names`, serving until a probe says otherwise.
    pub fn new(names: &[&'static str]) -> Self {
        Self {
            reporter: tonic_health::server::HealthReporter::new(),
            names: names.into(),
            serving: Arc::new(std::sync::atomic::AtomicBool::new(true)),
        }
    }

    /// Whether the names currently report SERVING.
    pub fn is_serving(&self) -> bool {
        self.serving.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sets every name to SERVING or NOT_SERVING.
    pub async fn set(&self, serving: bool) {
        self.serving
            .store(serving, std::sync::atomic::Ordering::Relaxed);
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        // "" is the whole server's health.
        for name in std::iter::once(&"").chain(self.names.iter()) {
            self.reporter.set_service_status(*name, status).await;
        }
    }

    /// Follows `dependency` with [`Health::watch`] at the usual interval
    /// ([`HEALTH_PROBE_INTERVAL`]): `probe` is asked about `target`.
    pub fn follow<T, F>(
        &self,
        dependency: &'static str,
        target: T,
        probe: fn(T) -> F,
        up: prometheus_client::metrics::gauge::Gauge,
        shutdown: ShutdownSignal,
    ) where
        T: Clone + Send + 'static,
        F: std::future::Future<Output = bool> + Send + 'static,
    {
        let every = HEALTH_PROBE_INTERVAL;
        self.watch(
            dependency,
            every,
            move || probe(target.clone()),
            up,
            shutdown,
        );
    }

    /// Runs `probe` every `every` until `shutdown`; a probe that fails or
    /// takes longer than `every` makes the names NOT_SERVING, the next one
    /// that succeeds SERVING again. `up` mirrors the answer (1 or 0).
    pub fn watch<P, F>(
        &self,
        dependency: &'static str,
        every: Duration,
        probe: P,
        up: prometheus_client::metrics::gauge::Gauge,
        shutdown: ShutdownSignal,
    ) where
        P: Fn() -> F + Send + 'static,
        F: std::future::Future<Output = bool> + Send,
    {
        let health = self.clone();
        up.set(1);
        tokio::spawn(async move {
            let mut ticks = tokio::time::interval(every);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let stop = shutdown.wait();
            tokio::pin!(stop);
            loop {
                tokio::select! {
                    _ = ticks.tick() => {}
                    () = &mut stop => return,
                }
                let ok = tokio::time::timeout(every, probe()).await.unwrap_or(false);
                up.set(i64::from(ok));
                if ok != health.is_serving() {
                    if ok {
                        tracing::info!(dependency, "dependency is back: serving");
                    } else {
                        tracing::warn!(dependency, "dependency unreachable: not serving");
                    }
                    health.set(ok).await;
                }
            }
        });
    }
}

/// How long calls in flight may go on once the server stops. Server streams
/// that never end by themselves (a health `Watch`) are cut after it, so a
/// stopping pod ends within its termination grace period.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// Serves `routes` plus the standard health and reflection services on an
/// already-bound listener until `shutdown` fires, then lets calls in flight
/// finish for at most [`SHUTDOWN_GRACE`]. Each request gets a server
/// span whose parent is the caller's trace context and is recorded in the
/// `grpc_server_*` metrics of `metrics`. `health` is the component's health
/// reporter (see [`Health`]); every call but health and reflection must come
/// from one of `callers` and be allowed to it ([`CallerLayer`]).
pub async fn serve(
    component: &'static str,
    listener: TcpListener,
    routes: Routes,
    health: Health,
    metrics: GrpcMetrics,
    callers: Arc<Callers>,
    shutdown: ShutdownSignal,
) -> Result<(), tonic::transport::Error> {
    health.set(health.is_serving()).await;
    let health_service = tonic_health::pb::health_server::HealthServer::new(
        tonic_health::server::HealthService::from_health_reporter(health.reporter.clone()),
    );
    let reflection_v1 = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .expect("bundled descriptors are valid");
    let reflection_v1alpha = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1alpha()
        .expect("bundled descriptors are valid");
    let routes = routes
        .add_service(health_service)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = callers.tls() {
        builder = builder.tls_config(tls.server())?;
    }
    // Refused callers are recorded in metrics too.
    let server = builder
        .layer(metrics.layer(Side::Server))
        .layer(CallerLayer::new(callers))
        .trace_fn(move |req: &http::Request<()>| {
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %req.uri().path(),
                otel.kind = "server",
                rpc.system = "grpc",
                parley.component = component,
                rpc.grpc.status_code = tracing::field::Empty,
                otel.status_code = tracing::field::Empty,
            );
            let _ = span.set_parent(trace::extract_headers(req.headers()));
            span
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(incoming(listener), shutdown.clone().wait());
    let cut_off = async {
        shutdown.wait().await;
        tokio::time::sleep(SHUTDOWN_GRACE).await;
    };
    tokio::select! {
        served = server => served,
        () = cut_off => {
            tracing::warn!(component, "calls still open after the shutdown grace: closing them");
            Ok(())
        }
    }
}

/// The server's accepted connections, with Nagle's algorithm off: a reply
/// is written in pieces (headers, message, trailers), and with Nagle on a
/// later piece waits for the caller's delayed ACK of the earlier one (up to
/// 40 ms on Linux), which put a floor of milliseconds under every call.
fn incoming(listener: TcpListener) -> tonic::transport::server::TcpIncoming {
    tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_connections_have_nagle_off() {
        use tokio_stream::StreamExt;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let mut accepted = incoming(listener);
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let stream = accepted
            .next()
            .await
            .expect("a connection")
            .expect("accepted");
        assert!(stream.nodelay().expect("nodelay"), "Nagle off");
    }

    #[tokio::test]
    async fn a_stopped_server_cuts_streams_that_never_end_after_the_grace() {
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = crate::shutdown::Shutdown::new();
        let metrics = crate::metrics::Metrics::new(&["test"]);
        let server = tokio::spawn(serve(
            "test",
            listener,
            Routes::default(),
            Health::new(&["x"]),
            metrics.grpc.clone(),
            Arc::new(Callers::default()),
            stop.signal(),
        ));
        let channel = Endpoint::from_shared(format!("http://{addr}"))
            .expect("url")
            .connect()
            .await
            .expect("connect");
        // A health watch never ends by itself.
        let mut watch = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: "x".into(),
            })
            .await
            .expect("watch")
            .into_inner();
        watch.message().await.expect("first status");
        tokio::time::pause();
        stop.trigger();
        let stopped = tokio::time::timeout(SHUTDOWN_GRACE * 3, server).await;
        assert!(
            matches!(stopped, Ok(Ok(Ok(())))),
            "the server stops within its grace despite the open stream"
        );
    }

    /// A health check over mutual TLS with `identity` (cert, key) as the
    /// client's certificate, or none.
    async fn health_over_tls(
        addr: std::net::SocketAddr,
        ca: &std::path::Path,
        identity: Option<(std::path::PathBuf, std::path::PathBuf)>,
    ) -> Result<(), String> {
        use tonic::transport::{Certificate, ClientTlsConfig, Identity};
        use tonic_health::pb::HealthCheckRequest;
        use tonic_health::pb::health_client::HealthClient;
        let read = |p: &std::path::Path| std::fs::read_to_string(p).expect("pem");
        let mut tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(ca)))
            .domain_name("localhost");
        if let Some((cert, key)) = identity {
            tls = tls.identity(Identity::from_pem(read(&cert), read(&key)));
        }
        let endpoint = Endpoint::from_shared(format!("https://{addr}"))
            .expect("url")
            .tls_config(tls)
            .expect("tls");
        let channel = endpoint.connect().await.map_err(|e| format!("{e:?}"))?;
        HealthClient::new(channel)
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .map(drop)
            .map_err(|e| format!("{e:?}"))
    }

    #[tokio::test]
    async fn with_mutual_tls_only_a_client_certificate_of_the_ca_gets_in() {
        let certs = crate::testing::tls::TestCerts::new("mtls");
        let read = |p: std::path::PathBuf| std::fs::read_to_string(p).expect("pem");
        let tls = tls::MutualTls::from_pem(
            &read(certs.server_cert()),
            &read(certs.server_key()),
            &read(certs.ca()),
        );
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let stop = crate::shutdown::Shutdown::new();
        tokio::spawn(serve(
            "test",
            listener,
            Routes::default(),
            Health::new(&["x"]),
            GrpcMetrics::default(),
            Arc::new(Callers::default().with_tls(tls)),
            stop.signal(),
        ));
        let good = certs.client_cert("ca");
        health_over_tls(addr, &certs.ca(), Some(good))
            .await
            .expect("a client certificate signed by the CA");
        let none = health_over_tls(addr, &certs.ca(), None).await;
        assert!(none.is_err(), "no client certificate: {none:?}");
        let foreign = health_over_tls(addr, &certs.ca(), Some(certs.client_cert("other-ca"))).await;
        assert!(foreign.is_err(), "a certificate of another CA: {foreign:?}");
        // A client that does not trust the server's CA does not talk either.
        let distrusted =
            health_over_tls(addr, &certs.other_ca(), Some(certs.client_cert("ca"))).await;
        assert!(distrusted.is_err(), "{distrusted:?}");
        stop.trigger();
    }

    #[test]
    fn mutual_tls_keys_come_together_and_name_the_key() {
        let services = crate::config::ServicesConfig {
            tls_cert_file: "/nonexistent/cert.pem".into(),
            ..Default::default()
        };
        let e = tls::MutualTls::from_config(&services).expect_err("partial");
        assert!(e.to_string().contains("services.tls_key_file"), "{e}");
        let services = crate::config::ServicesConfig {
            tls_cert_file: "/nonexistent/cert.pem".into(),
            tls_key_file: "/nonexistent/key.pem".into(),
            tls_ca_file: "/nonexistent/ca.pem".into(),
            ..Default::default()
        };
        let e = tls::MutualTls::from_config(&services).expect_err("missing file");
        assert!(e.to_string().contains("services.tls_cert_file"), "{e}");
    }

    #[test]
    fn a_status_round_trips_through_headers_with_its_metadata() {
        let status = ErrorCode::RateLimited
            .status_retry_after("slow down: zoë", Duration::from_millis(1500));
        let back = status_from_headers(&status_to_headers(&status));
        assert_eq!(back.code(), status.code());
        assert_eq!(back.message(), "slow down: zoë");
        assert_eq!(
            ErrorCode::retry_after(&back),
            Some(Duration::from_millis(1500))
        );
        let none = status_from_headers(&Default::default());
        assert_eq!(none.code(), tonic::Code::Internal);
    }

    #[test]
    fn actor_round_trips_with_unicode_ids_and_names() {
        for (user_id, name) in [("u_1", "Zoë 100%"), ("zoë", "Zoë"), ("bot:x/y", "b")] {
            let actor = Actor {
                user_id: user_id.into(),
                name: name.into(),
                anonymous: true,
            };
            let mut md = MetadataMap::new();
            actor.apply(&mut md);
            assert_eq!(Actor::from_metadata(&md), Some(actor));
        }
    }
}
