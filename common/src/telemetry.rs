//! Logs and traces: a `tracing` subscriber with a text or JSON log layer and,
//! when `OTEL_EXPORTER_OTLP_ENDPOINT` is set, an OTLP trace exporter.
//!
//! In one-process mode each component's spans are exported under its own
//! `service.name` (`<OTEL_SERVICE_NAME or parley>-<component>`), so the
//! tracing UI shows edge, chat, auth, ai and presence as separate services.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use opentelemetry::KeyValue;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::{LogConfig, LogFormat};

/// The components, with the crate (tracing target) each one's code lives in.
pub const COMPONENTS: &[(&str, &str)] = &[
    ("edge", "edge"),
    ("auth", "auth_service"),
    ("chat", "chat_service"),
    ("ai", "ai_service"),
    ("presence", "presence_service"),
];

/// Where and as what traces are exported.
#[derive(Debug, Clone, Default)]
pub struct OtelSettings {
    /// OTLP endpoint, e.g. `http://127.0.0.1:4317` (gRPC) or
    /// `http://127.0.0.1:4318/v1/traces` (HTTP); `None` disables export.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`, if set.
    pub service_name: Option<String>,
    /// `OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL`.
    pub protocol: OtlpProtocol,
}

/// How spans travel to the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OtlpProtocol {
    /// `grpc` (Parley's default, port 4317).
    #[default]
    Grpc,
    /// `http/protobuf` (port 4318, path `/v1/traces`).
    HttpProtobuf,
}

impl OtelSettings {
    /// Reads the standard `OTEL_*` variables from the given environment. An
    /// unsupported protocol (`http/json`) is an error naming the variable.
    pub fn from_env<I: IntoIterator<Item = (String, String)>>(
        env: I,
    ) -> Result<Self, TelemetryError> {
        let vars: HashMap<String, String> = env.into_iter().collect();
        let get = |key: &str| vars.get(key).filter(|v| !v.is_empty()).cloned();
        let (protocol_key, protocol) = [
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_PROTOCOL",
        ]
        .into_iter()
        .find_map(|key| get(key).map(|value| (key, value)))
        .unwrap_or(("", "grpc".into()));
        let protocol = match protocol.as_str() {
            "grpc" => OtlpProtocol::Grpc,
            "http/protobuf" => OtlpProtocol::HttpProtobuf,
            other => {
                return Err(TelemetryError::Exporter(format!(
                    "{protocol_key}: `{other}` is not supported (use grpc or http/protobuf)"
                )));
            }
        };
        // The signal-specific endpoint is used as it is; the general one is
        // a base URL to which OTLP/HTTP appends `/v1/traces`.
        let endpoint = match (get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"), protocol) {
            (Some(traces), _) => Some(traces),
            (None, OtlpProtocol::HttpProtobuf) => get("OTEL_EXPORTER_OTLP_ENDPOINT")
                .map(|base| format!("{}/v1/traces", base.trim_end_matches('/'))),
            (None, OtlpProtocol::Grpc) => get("OTEL_EXPORTER_OTLP_ENDPOINT"),
        };
        Ok(Self {
            endpoint,
            service_name: get("OTEL_SERVICE_NAME"),
            protocol,
        })
    }
}

/// Keeps the exporter alive; flushes and shuts it down on [`Telemetry::shutdown`].
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports every finished span now.
    pub fn flush(&self) {
        if let Some(p) = &self.provider {
            let _ = p.force_flush();
        }
    }

    pub fn shutdown(self) {
        if let Some(p) = self.provider {
            let _ = p.shutdown();
        }
    }

    pub fn tracing_enabled(&self) -> bool {
        self.provider.is_some()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("otlp exporter: {0}")]
    Exporter(String),
    #[error("log filter: {0}")]
    Filter(String),
}

/// Installs the global subscriber. `components` are the components this
/// process runs (one name for a single-service binary, all five for the
/// one-process suite).
///
/// Whatever `log.level` says, libraries whose TRACE output carries frame
/// payloads are capped (see [`log_filter`]), so no token reaches a log.
pub fn init(
    log: &LogConfig,
    otel: &OtelSettings,
    components: &[&str],
) -> Result<Telemetry, TelemetryError> {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());

    let log_filter = log_filter(&log.level)?;
    let fmt_layer = match log.format {
        LogFormat::Text => tracing_subscriber::fmt::layer().with_target(true).boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .boxed(),
    }
    .with_filter(log_filter);

    let mut telemetry = Telemetry::default();
    let otel_layer = match &otel.endpoint {
        Some(endpoint) => {
            let exporter = RoutingExporter::new(
                endpoint,
                otel.protocol,
                otel.service_name.as_deref(),
                components,
            )?;
            let provider = SdkTracerProvider::builder()
                .with_batch_exporter(exporter)
                .build();
            let tracer = provider.tracer("parley");
            telemetry.provider = Some(provider);
            let mut directives = String::from("off");
            for (_, target) in COMPONENTS {
                directives.push_str(&format!(",{target}=info"));
            }
            directives.push_str(",common=info");
            let filter = EnvFilter::try_new(directives)
                .map_err(|e| TelemetryError::Filter(e.to_string()))?;
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(tracer)
                    .with_filter(filter),
            )
        }
        None => None,
    };

    let _ = tracing_subscriber::registry()
        .with(fmt_layer)
        .with(otel_layer)
        .try_init();
    Ok(telemetry)
}

/// Sends each span to the exporter of the component that produced it, each
/// exporter carrying that component's `service.name`.
///
/// The OTLP/gRPC exporters need a Tokio reactor, while the SDK's batch
/// processor exports from its own thread; so the exporters live on a small
/// runtime of their own.
#[derive(Debug)]
struct RoutingExporter {
    /// (component, exporter); the first one is the fallback.
    routes: Vec<(String, Arc<opentelemetry_otlp::SpanExporter>)>,
    runtime: tokio::runtime::Runtime,
}

impl RoutingExporter {
    fn new(
        endpoint: &str,
        protocol: OtlpProtocol,
        service_name: Option<&str>,
        components: &[&str],
    ) -> Result<Self, TelemetryError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .thread_name("otlp-export")
            .enable_all()
            .build()
            .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
        let _entered = runtime.enter();
        let mut routes = Vec::new();
        for component in components {
            let name = match (service_name, components.len()) {
                (Some(name), 1) => name.to_string(),
                (Some(name), _) => format!("{name}-{component}"),
                (None, _) => format!("parley-{component}"),
            };
            let builder = opentelemetry_otlp::SpanExporter::builder();
            let built = match protocol {
                OtlpProtocol::Grpc => builder
                    .with_tonic()
                    .with_endpoint(endpoint)
                    .with_timeout(Duration::from_secs(5))
                    .build(),
                OtlpProtocol::HttpProtobuf => builder
                    .with_http()
                    .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                    .with_endpoint(endpoint)
                    .with_timeout(Duration::from_secs(5))
                    .build(),
            };
            let mut exporter = built.map_err(|e| TelemetryError::Exporter(e.to_string()))?;
            SpanExporter::set_resource(
                &mut exporter,
                &Resource::builder()
                    .with_service_name(name)
                    .with_attribute(KeyValue::new("parley.component", component.to_string()))
                    .build(),
            );
            routes.push((component.to_string(), Arc::new(exporter)));
        }
        drop(_entered);
        Ok(Self { routes, runtime })
    }

    fn component_of(span: &SpanData) -> Option<String> {
        let mut namespace = None;
        for kv in &span.attributes {
            match kv.key.as_str() {
                "parley.component" => return Some(kv.value.as_str().into_owned()),
                "code.namespace" | "code.module.name" | "target" => {
                    namespace = Some(kv.value.as_str().into_owned());
                }
                _ => {}
            }
        }
        let namespace = namespace?;
        let krate = namespace.split("::").next().unwrap_or_default();
        COMPONENTS
            .iter()
            .find(|(_, target)| *target == krate)
            .map(|(component, _)| component.to_string())
    }
}

impl SpanExporter for RoutingExporter {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let mut parts: Vec<Vec<SpanData>> = self.routes.iter().map(|_| Vec::new()).collect();
        for span in batch {
            let index = Self::component_of(&span)
                .and_then(|c| self.routes.iter().position(|(name, _)| *name == c))
                .unwrap_or(0);
            parts[index].push(span);
        }
        let mut result = Ok(());
        for ((_, exporter), part) in self.routes.iter().zip(parts) {
            if part.is_empty() {
                continue;
            }
            let exporter = exporter.clone();
            let exported = self
                .runtime
                .spawn(async move { exporter.export(part).await })
                .await;
            match exported {
                Ok(Ok(())) => {}
                Ok(Err(e)) => result = Err(e),
                Err(e) => result = Err(OTelSdkError::InternalFailure(e.to_string())),
            }
        }
        result
    }
}

/// Targets whose output at TRACE carries WebSocket frame payloads and
/// upgrade headers (tokens among them): never below `debug`, whatever the
/// configured level says.
const PAYLOAD_LOGGING_TARGETS: &[&str] = &["tungstenite", "tokio_tungstenite"];

/// A log filter of `level` (an `EnvFilter` directive string) that never lets
/// the payload-logging targets through below `debug`, however specific the
/// directive asking for them; tests capture through the same filter as
/// production.
pub fn log_filter<S>(
    level: &str,
) -> Result<tracing_subscriber::filter::combinator::And<EnvFilter, Targets, S>, TelemetryError>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    use tracing_subscriber::filter::FilterExt;
    let configured =
        EnvFilter::try_new(level).map_err(|e| TelemetryError::Filter(e.to_string()))?;
    let mut cap = Targets::new().with_default(LevelFilter::TRACE);
    for target in PAYLOAD_LOGGING_TARGETS {
        cap = cap.with_target(*target, LevelFilter::DEBUG);
    }
    Ok(configured.and(cap))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    use super::*;

    #[test]
    fn the_otlp_protocol_and_endpoint_follow_the_standard_variables() {
        let env = |pairs: &[(&str, &str)]| {
            OtelSettings::from_env(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())))
        };
        let grpc = env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4317")]).expect("valid");
        assert_eq!(grpc.protocol, OtlpProtocol::Grpc);
        assert_eq!(grpc.endpoint.as_deref(), Some("http://c:4317"));
        let http = env(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318/"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ])
        .expect("valid");
        assert_eq!(http.protocol, OtlpProtocol::HttpProtobuf);
        assert_eq!(http.endpoint.as_deref(), Some("http://c:4318/v1/traces"));
        let traces = env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://t/custom"),
            ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/protobuf"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ])
        .expect("valid");
        assert_eq!(
            traces.protocol,
            OtlpProtocol::HttpProtobuf,
            "the signal's own wins"
        );
        assert_eq!(traces.endpoint.as_deref(), Some("http://t/custom"));
        let e = env(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).expect_err("unsupported");
        assert!(e.to_string().contains("OTEL_EXPORTER_OTLP_PROTOCOL"), "{e}");
    }

    /// One request's head and body, answered with 200.
    fn receive_one(listener: std::net::TcpListener) -> (String, Vec<u8>) {
        use std::io::{Read, Write};
        let (mut stream, _) = listener.accept().expect("accept");
        let mut data = Vec::new();
        let mut buf = [0u8; 4096];
        let head_end = loop {
            let n = stream.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed before the headers ended");
            data.extend_from_slice(&buf[..n]);
            if let Some(i) = data.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
        };
        let head = String::from_utf8_lossy(&data[..head_end]).to_string();
        let length: usize = head
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("content-length:")
                    .map(|v| v.trim().to_string())
            })
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        while data.len() < head_end + length {
            let n = stream.read(&mut buf).expect("read");
            assert!(n > 0, "connection closed before the body ended");
            data.extend_from_slice(&buf[..n]);
        }
        stream
            .write_all(b"HTTP/1.1 200 OK\r\ncontent-type: application/x-protobuf\r\ncontent-length: 0\r\n\r\n")
            .expect("answer");
        (head, data[head_end..head_end + length].to_vec())
    }

    #[test]
    fn spans_go_out_over_otlp_http_when_asked() {
        use opentelemetry::trace::{Span as _, Tracer as _};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let receiver = std::thread::spawn(move || receive_one(listener));
        let settings = OtelSettings::from_env([
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
                format!("http://{addr}"),
            ),
            (
                "OTEL_EXPORTER_OTLP_PROTOCOL".to_string(),
                "http/protobuf".to_string(),
            ),
        ])
        .expect("valid");
        let endpoint = settings.endpoint.clone().expect("endpoint");
        let exporter =
            RoutingExporter::new(&endpoint, settings.protocol, None, &["edge"]).expect("exporter");
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter)
            .build();
        provider.tracer("test").start("http-export-check").end();
        let _ = provider.force_flush();
        let (head, body) = receiver.join().expect("receiver");
        assert!(head.starts_with("POST /v1/traces "), "{head}");
        assert!(
            head.to_ascii_lowercase()
                .contains("content-type: application/x-protobuf"),
            "{head}"
        );
        assert!(
            body.windows(17).any(|w| w == b"http-export-check"),
            "the span is in the protobuf body"
        );
        let _ = provider.shutdown();
    }

    #[derive(Clone, Default)]
    struct Lines(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Lines {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn frame_payload_logging_stays_off_at_any_level() {
        for level in [
            "trace",
            "trace,tungstenite=trace",
            "tungstenite::protocol=trace",
        ] {
            let lines = Lines::default();
            let writer = lines.clone();
            let layer = tracing_subscriber::fmt::layer()
                .with_writer(move || writer.clone())
                .with_filter(log_filter(level).expect("filter"));
            let subscriber = tracing_subscriber::registry().with(layer);
            tracing::subscriber::with_default(subscriber, || {
                tracing::trace!(target: "tungstenite::protocol", "payload-of-a-frame");
                tracing::trace!(target: "tokio_tungstenite", "payload-of-a-frame");
                tracing::debug!(target: "tungstenite::protocol", "close-frame-seen");
                tracing::trace!(target: "parley_other", "other-trace-line");
            });
            let text = String::from_utf8_lossy(&lines.0.lock().expect("lines")).into_owned();
            assert!(!text.contains("payload-of-a-frame"), "{level}: {text}");
            assert!(text.contains("close-frame-seen"), "{level}: {text}");
            if level.starts_with("trace") {
                assert!(text.contains("other-trace-line"), "{level}: {text}");
            }
        }
    }
}
