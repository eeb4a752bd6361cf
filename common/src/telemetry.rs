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
    /// OTLP/gRPC endpoint, e.g. `http://127.0.0.1:4317`; `None` disables export.
    pub endpoint: Option<String>,
    /// `OTEL_SERVICE_NAME`, if set.
    pub service_name: Option<String>,
}

impl OtelSettings {
    /// Reads the standard `OTEL_*` variables from the given environment.
    pub fn from_env<I: IntoIterator<Item = (String, String)>>(env: I) -> Self {
        let vars: HashMap<String, String> = env.into_iter().collect();
        Self {
            endpoint: vars
                .get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .or_else(|| vars.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
                .filter(|v| !v.is_empty())
                .cloned(),
            service_name: vars
                .get("OTEL_SERVICE_NAME")
                .filter(|v| !v.is_empty())
                .cloned(),
        }
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
            let exporter =
                RoutingExporter::new(endpoint, otel.service_name.as_deref(), components)?;
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
            let mut exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .with_timeout(Duration::from_secs(5))
                .build()
                .map_err(|e| TelemetryError::Exporter(e.to_string()))?;
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
