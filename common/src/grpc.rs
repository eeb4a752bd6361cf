//! gRPC plumbing shared by every component: the servers' common stack (trace
//! extraction, health, reflection, service credential) and the clients'
//! (trace injection, credential, deadlines), plus the end-user identity
//! ("actor") that travels in metadata.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Routes;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};
use tonic::{Request, Status};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::error::ErrorCode;
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

fn percent_decode(s: &str) -> String {
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

/// Server-side check of the service credential; use with
/// `XServer::with_interceptor(service, CredentialCheck::new(..))`.
#[derive(Clone)]
pub struct CredentialCheck {
    expected: Arc<String>,
}

impl CredentialCheck {
    pub fn new(credential: &Secret) -> Self {
        Self {
            expected: Arc::new(format!("Bearer {}", credential.expose())),
        }
    }
}

impl tonic::service::Interceptor for CredentialCheck {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let given = request
            .metadata()
            .get("authorization")
            .map(|v| v.as_bytes())
            .unwrap_or_default();
        if constant_time_eq(given, self.expected.as_bytes()) {
            Ok(request)
        } else {
            Err(ErrorCode::Unauthorized.status("missing or invalid service credential"))
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
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

/// A channel to another Parley service with the client stack applied.
pub type ServiceChannel = InterceptedService<Channel, ClientInterceptor>;

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
pub fn channel_to(endpoint: &Endpoint, settings: &ClientSettings) -> ServiceChannel {
    let endpoint = endpoint
        .clone()
        .connect_timeout(settings.connect_timeout)
        .timeout(settings.timeout)
        .tcp_nodelay(true);
    let authorization =
        AsciiMetadataValue::try_from(format!("Bearer {}", settings.credential.expose()))
            .unwrap_or_else(|_| AsciiMetadataValue::from_static(""));
    InterceptedService::new(endpoint.connect_lazy(), ClientInterceptor { authorization })
}

/// Serves `routes` plus the standard health and reflection services on an
/// already-bound listener until `shutdown` fires. Each request gets a server
/// span whose parent is the caller's trace context.
pub async fn serve(
    component: &'static str,
    listener: TcpListener,
    routes: Routes,
    health_names: &[&'static str],
    shutdown: ShutdownSignal,
) -> Result<(), tonic::transport::Error> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for name in health_names {
        reporter
            .set_service_status(*name, tonic_health::ServingStatus::Serving)
            .await;
    }
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
        .add_service(health)
        .add_service(reflection_v1)
        .add_service(reflection_v1alpha);

    tonic::transport::Server::builder()
        .trace_fn(move |req: &http::Request<()>| {
            let span = tracing::info_span!(
                "grpc.server",
                otel.name = %req.uri().path(),
                otel.kind = "server",
                rpc.system = "grpc",
                parley.component = component,
            );
            let _ = span.set_parent(trace::extract_headers(req.headers()));
            span
        })
        .add_routes(routes)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown.wait())
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::service::Interceptor;

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

    #[test]
    fn credential_check_accepts_only_the_exact_credential() {
        let secret = Secret::new("s".repeat(32));
        let mut check = CredentialCheck::new(&secret);
        let mut ok = Request::new(());
        ok.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", "s".repeat(32)).parse().expect("ascii"),
        );
        assert!(check.call(ok).is_ok());
        let mut bad = Request::new(());
        bad.metadata_mut().insert(
            "authorization",
            format!("Bearer {}", "t".repeat(32)).parse().expect("ascii"),
        );
        assert_eq!(
            check.call(bad).expect_err("wrong").code(),
            tonic::Code::Unauthenticated
        );
        assert!(check.call(Request::new(())).is_err());
    }
}
