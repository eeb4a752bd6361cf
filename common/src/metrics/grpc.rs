//! gRPC server and client metrics under the names of go-grpc-prometheus
//! (`grpc_server_started_total`, `grpc_server_handled_total{grpc_service,
//! grpc_method,grpc_code}`, `grpc_server_handling_seconds`, and the
//! `grpc_client_*` counterparts), recorded by one tower layer that
//! [`crate::grpc`] composes into every server and every client channel.
//!
//! An RPC is handled when its status is known: in the response headers
//! (trailers-only answers), in the trailers at the end of the body, or —
//! when the body is dropped before either — `Canceled`.

use std::collections::HashSet;
use std::future::Future;
use std::pin::Pin;
use std::sync::OnceLock;
use std::task::{Context, Poll};
use std::time::Instant;

use bytes::Bytes;
use http_body::{Body, Frame};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tonic::Code;

use super::families::{ExemplarHistogramFamily, TraceExemplar, exemplar_family, trace_exemplar};

/// Which end of an RPC a layer measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    Server,
    Client,
}

/// `grpc_service`, `grpc_method`: a method Parley serves or calls, or
/// `unknown` for any other path (so a caller cannot grow the label set).
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabels {
    pub grpc_service: String,
    pub grpc_method: String,
}

/// [`MethodLabels`] plus `grpc_code`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HandledLabels {
    pub grpc_service: String,
    pub grpc_method: String,
    pub grpc_code: &'static str,
}

/// The counters and histograms of one side.
#[derive(Debug, Clone)]
struct SideMetrics {
    started: Family<MethodLabels, Counter>,
    handled: Family<HandledLabels, Counter>,
    /// With the trace id of a recent call as an exemplar.
    handling: ExemplarHistogramFamily<MethodLabels>,
}

impl Default for SideMetrics {
    fn default() -> Self {
        Self {
            started: Family::default(),
            handled: Family::default(),
            handling: exemplar_family(),
        }
    }
}

/// gRPC metrics of both sides.
#[derive(Debug, Clone, Default)]
pub struct GrpcMetrics {
    server: SideMetrics,
    client: SideMetrics,
}

impl GrpcMetrics {
    pub(super) fn register(&self, r: &mut Registry) {
        for (prefix, side, m) in [
            ("grpc_server", "server", self.server.clone()),
            ("grpc_client", "client", self.client.clone()),
        ] {
            r.register(
                format!("{prefix}_started"),
                format!("RPCs started on the {side}"),
                m.started,
            );
            r.register(
                format!("{prefix}_handled"),
                format!("RPCs completed on the {side}, by status code"),
                m.handled,
            );
            let histogram_name = match side {
                "server" => "grpc_server_handling_seconds",
                _ => "grpc_client_handling_seconds",
            };
            r.register(
                histogram_name,
                format!("Time from an RPC's start to its status on the {side}"),
                m.handling,
            );
        }
    }

    /// The tower layer recording `side` into these metrics.
    pub fn layer(&self, side: Side) -> GrpcMetricsLayer {
        GrpcMetricsLayer {
            side,
            metrics: self.clone(),
        }
    }

    fn side(&self, side: Side) -> &SideMetrics {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }
}

/// Records every RPC passing through it; see the module docs.
#[derive(Debug, Clone)]
pub struct GrpcMetricsLayer {
    side: Side,
    metrics: GrpcMetrics,
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcMetricsService {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service [`GrpcMetricsLayer`] wraps around a channel or a server.
#[derive(Debug, Clone)]
pub struct GrpcMetricsService<S> {
    inner: S,
    layer: GrpcMetricsLayer,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetricsService<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
    ResBody: Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let labels = method_labels(request.uri().path());
        let side = self.layer.metrics.side(self.layer.side);
        side.started.get_or_create(&labels).inc();
        let metrics = side.clone();
        let started = Instant::now();
        let future = self.inner.call(request);
        Box::pin(async move {
            // Read when first polled: a server polls its handler inside the
            // request span, which the call's status is recorded on.
            let mut call = Call {
                metrics,
                labels: Some(labels),
                started,
                exemplar: trace_exemplar(),
                span: tracing::Span::current(),
            };
            match future.await {
                Ok(response) => {
                    if let Some(code) = status_in(response.headers()) {
                        call.finish(code);
                    }
                    Ok(response.map(|body| tonic::body::Body::new(ObservedBody { body, call })))
                }
                Err(error) => {
                    // The call never produced a response (client: could not
                    // connect or timed out).
                    call.finish(Code::Unavailable);
                    Err(error)
                }
            }
        })
    }
}

/// One RPC in flight; recorded once, at the first status seen.
struct Call {
    metrics: SideMetrics,
    /// `None` once recorded.
    labels: Option<MethodLabels>,
    started: Instant,
    /// The trace the call belongs to.
    exemplar: Option<TraceExemplar>,
    /// The span current when the call started (on a server, the request
    /// span), which gets the call's status.
    span: tracing::Span,
}

impl Call {
    fn finish(&mut self, code: Code) {
        let Some(labels) = self.labels.take() else {
            return;
        };
        self.metrics.handling.get_or_create(&labels).observe(
            self.started.elapsed().as_secs_f64(),
            self.exemplar.take(),
            None,
        );
        self.span.record("rpc.grpc.status_code", code as i32);
        if is_server_error(code) {
            self.span.record("otel.status_code", "ERROR");
        }
        self.metrics
            .handled
            .get_or_create(&HandledLabels {
                grpc_service: labels.grpc_service,
                grpc_method: labels.grpc_method,
                grpc_code: code_name(code),
            })
            .inc();
    }
}

impl Drop for Call {
    fn drop(&mut self) {
        self.finish(Code::Cancelled);
    }
}

pin_project_lite::pin_project! {
    /// A response body that records the RPC's status from its trailers.
    struct ObservedBody<B> {
        #[pin]
        body: B,
        call: Call,
    }
}

impl<B: Body<Data = Bytes>> Body for ObservedBody<B> {
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, B::Error>>> {
        let this = self.project();
        let polled = this.body.poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(code) = frame.trailers_ref().and_then(status_in) {
                    this.call.finish(code);
                }
            }
            Poll::Ready(Some(Err(_))) => this.call.finish(Code::Unknown),
            Poll::Ready(None) => this.call.finish(Code::Unknown),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// Whether a server span ends with error status for `code` (the
/// OpenTelemetry RPC conventions: codes that say the server failed).
fn is_server_error(code: Code) -> bool {
    matches!(
        code,
        Code::Unknown
            | Code::DeadlineExceeded
            | Code::Unimplemented
            | Code::Internal
            | Code::Unavailable
            | Code::DataLoss
    )
}

fn status_in(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.parse::<i32>().ok().map(Code::from_i32)
}

/// The go-grpc-prometheus spelling of a status code.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "Canceled",
        Code::Unknown => "Unknown",
        Code::InvalidArgument => "InvalidArgument",
        Code::DeadlineExceeded => "DeadlineExceeded",
        Code::NotFound => "NotFound",
        Code::AlreadyExists => "AlreadyExists",
        Code::PermissionDenied => "PermissionDenied",
        Code::ResourceExhausted => "ResourceExhausted",
        Code::FailedPrecondition => "FailedPrecondition",
        Code::Aborted => "Aborted",
        Code::OutOfRange => "OutOfRange",
        Code::Unimplemented => "Unimplemented",
        Code::Internal => "Internal",
        Code::Unavailable => "Unavailable",
        Code::DataLoss => "DataLoss",
        Code::Unauthenticated => "Unauthenticated",
    }
}

/// The labels of a request path `/package.Service/Method`.
fn method_labels(path: &str) -> MethodLabels {
    if known_methods().contains(path)
        && let Some((service, method)) = path.trim_start_matches('/').split_once('/')
    {
        return MethodLabels {
            grpc_service: service.to_string(),
            grpc_method: method.to_string(),
        };
    }
    MethodLabels {
        grpc_service: "unknown".into(),
        grpc_method: "unknown".into(),
    }
}

/// Every method path in Parley's descriptors, health and reflection.
fn known_methods() -> &'static HashSet<String> {
    static KNOWN: OnceLock<HashSet<String>> = OnceLock::new();
    KNOWN.get_or_init(|| {
        use prost::Message;
        let mut known: HashSet<String> = [
            "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
            "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        ]
        .into_iter()
        .map(String::from)
        .collect();
        for set in [
            proto::FILE_DESCRIPTOR_SET,
            tonic_health::pb::FILE_DESCRIPTOR_SET,
        ] {
            let Ok(set) = prost_types::FileDescriptorSet::decode(set) else {
                continue;
            };
            for file in set.file {
                let package = file.package();
                for service in &file.service {
                    for method in &service.method {
                        known.insert(format!("/{package}.{}/{}", service.name(), method.name()));
                    }
                }
            }
        }
        known
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_known_methods_become_labels() {
        let known = method_labels("/grpc.health.v1.Health/Check");
        assert_eq!(known.grpc_service, "grpc.health.v1.Health");
        assert_eq!(known.grpc_method, "Check");
        let chat = method_labels("/parley.chat.v1.ChatService/SendMessage");
        assert_eq!(chat.grpc_method, "SendMessage");
        let other = method_labels("/evil.Service/u_123");
        assert_eq!(other.grpc_service, "unknown");
        assert_eq!(other.grpc_method, "unknown");
    }
}
