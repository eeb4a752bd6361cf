//! One `message.send` produces one trace holding the edge's frame span, the
//! chat-service server span and its SQL span, correctly parented and each
//! exported under its component's service name — checked with an in-process
//! OTLP receiver. A separate test binary: it installs the global subscriber.

#[allow(dead_code)]
#[path = "e2e/helpers.rs"]
mod helpers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::Span;
use serde_json::json;
use tokio::sync::Notify;

/// Spans received, with the `service.name` of their resource.
#[derive(Clone, Default)]
struct Receiver {
    spans: Arc<Mutex<Vec<(String, Span)>>>,
    arrived: Arc<Notify>,
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        let mut spans = self.spans.lock().expect("lock");
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref())
                .and_then(|v| match &v.value {
                    Some(AnyValue::StringValue(s)) => Some(s.clone()),
                    _ => None,
                })
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    spans.push((service.clone(), span));
                }
            }
        }
        self.arrived.notify_waiters();
        Ok(tonic::Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A span's string attribute.
fn string_attr(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::StringValue(s)) => Some(s.clone()),
            _ => None,
        })
}

/// Chat's span of one `message.send`: an item of the edge's
/// `SendMessages` stream, named after the stream's method.
const CHAT_SEND: &str = "/parley.chat.v1.ChatService/SendMessages";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The first SQL span whose chain of parents (all present) reaches chat's
/// server span, once `spans` also hold the edge's frame span.
fn sql_under_server(spans: &[(String, Span)]) -> Option<&(String, Span)> {
    let named = |name: &str| spans.iter().find(|(_, s)| s.name == name);
    let (Some(_), Some((_, server))) = (named("ws message.send"), named(CHAT_SEND)) else {
        return None;
    };
    spans
        .iter()
        .filter(|(_, s)| s.name.starts_with("sql"))
        .find(|(_, sql)| {
            let mut parent = sql.parent_span_id.clone();
            for _ in 0..10 {
                if parent == server.span_id {
                    return true;
                }
                match spans.iter().find(|(_, s)| s.span_id == parent) {
                    Some((_, s)) => parent = s.parent_span_id.clone(),
                    None => return false,
                }
            }
            false
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_message_send_is_one_trace_across_edge_chat_and_sql() {
    let receiver = Receiver::default();
    // The receiver ignores the shutdown signal: it serves until the test ends.
    let otlp = common::testing::serve_grpc(|listener, _| {
        tonic::transport::Server::builder()
            .add_service(TraceServiceServer::new(receiver.clone()))
            .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
    })
    .await;
    let settings = common::telemetry::OtelSettings {
        endpoint: Some(otlp.url.clone()),
        service_name: None,
        protocol: common::telemetry::OtlpProtocol::Grpc,
    };
    let telemetry = common::telemetry::init(
        &common::config::LogConfig::default(),
        &settings,
        parley::COMPONENTS,
    )
    .expect("telemetry");
    let telemetry = Arc::new(telemetry);

    let app = helpers::spawn_app_traced(|_| {}, true).await;
    let mut alice = app.anonymous("alice").await;
    let room = alice
        .ok(
            "room.create",
            json!({"name": "traced", "visibility": "public"}),
        )
        .await["room"]["id"]
        .as_str()
        .expect("room")
        .to_string();
    alice.ok("room.join", json!({"room": room})).await;

    // The client starts the trace.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let sent = alice
        .ok(
            "message.send",
            json!({"room": room, "text": "traced hello", "client_msg_id": "t1",
                   "traceparent": format!("00-{trace_id}-{client_span}-01")}),
        )
        .await;
    assert_eq!(sent["message"]["text"], "traced hello");

    let spans = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let flushing = telemetry.clone();
            tokio::task::spawn_blocking(move || flushing.flush())
                .await
                .expect("flush");
            let spans: Vec<(String, Span)> = receiver
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == trace_id)
                .cloned()
                .collect();
            // Spans end, and are exported, in any order (the reply can reach
            // the client before chat's server span closes): wait for the
            // frame, the server span and an SQL span whose parents lead up
            // to it.
            if sql_under_server(&spans).is_some() {
                return spans;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(200), receiver.arrived.notified()).await;
        }
    })
    .await
    .expect("spans of the message.send trace arrive");

    let by_id: HashMap<String, &(String, Span)> = spans
        .iter()
        .map(|entry| (hex(&entry.1.span_id), entry))
        .collect();
    let find = |pred: &dyn Fn(&(String, Span)) -> bool| spans.iter().find(|e| pred(e)).cloned();

    let (edge_service, frame) =
        find(&|(_, s)| s.name == "ws message.send").expect("edge frame span");
    assert_eq!(edge_service, "parley-edge");
    assert_eq!(
        hex(&frame.parent_span_id),
        client_span,
        "the frame span continues the client's trace"
    );

    let (chat_service, server) = find(&|(_, s)| s.name == CHAT_SEND).expect("chat server span");
    assert_eq!(chat_service, "parley-chat");
    assert_eq!(
        hex(&server.parent_span_id),
        hex(&frame.span_id),
        "chat's span is a child of the edge's frame span"
    );

    let (sql_service, sql) = sql_under_server(&spans).cloned().expect("sql span");
    assert_eq!(sql_service, "parley-chat");
    // The SQL span descends from chat's server span.
    let mut parent = hex(&sql.parent_span_id);
    let mut reached = false;
    for _ in 0..10 {
        if parent == hex(&server.span_id) {
            reached = true;
            break;
        }
        match by_id.get(&parent) {
            Some((_, s)) => parent = hex(&s.parent_span_id),
            None => break,
        }
    }
    assert!(reached, "sql span descends from the chat server span");
    // Semantic conventions: the frame span names its room, the SQL span its
    // database operation and table.
    assert_eq!(
        string_attr(&frame, "parley.room").as_deref(),
        Some(room.as_str())
    );
    assert!(string_attr(&sql, "db.system").is_some(), "db.system");
    assert!(string_attr(&sql, "db.operation.name").is_some_and(|op| !op.is_empty()));

    // A failing command: its frame span has error status, chat's server
    // span the gRPC status code, and the command-duration histogram an
    // exemplar pointing at the trace.
    let failed_trace = "5bf92f3577b34da6a3ce929d0e0e4737";
    alice
        .err(
            "message.send",
            json!({"room": "r_nowhere", "text": "x", "client_msg_id": "t2",
                   "traceparent": format!("00-{failed_trace}-{client_span}-01")}),
            "not_found",
        )
        .await;
    let failed = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            let flushing = telemetry.clone();
            tokio::task::spawn_blocking(move || flushing.flush())
                .await
                .expect("flush");
            let spans: Vec<Span> = receiver
                .spans
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, s)| hex(&s.trace_id) == failed_trace)
                .map(|(_, s)| s.clone())
                .collect();
            let names = |name: &str| spans.iter().any(|s| s.name == name);
            if names("ws message.send") && names(CHAT_SEND) {
                return spans;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(200), receiver.arrived.notified()).await;
        }
    })
    .await
    .expect("spans of the failed command arrive");
    let frame = failed
        .iter()
        .find(|s| s.name == "ws message.send")
        .expect("frame span");
    let status = frame.status.as_ref().map(|s| s.code);
    assert_eq!(
        status,
        Some(2),
        "the failed command's span has error status"
    );
    let server = failed
        .iter()
        .find(|s| s.name == CHAT_SEND)
        .expect("server span");
    let grpc_code = server
        .attributes
        .iter()
        .find(|kv| kv.key == "rpc.grpc.status_code")
        .and_then(|kv| kv.value.as_ref())
        .and_then(|v| match &v.value {
            Some(AnyValue::IntValue(code)) => Some(*code),
            _ => None,
        });
    assert_eq!(grpc_code, Some(5), "NOT_FOUND on chat's server span");

    let (_, scrape) = helpers::http_get(
        app.addrs.edge,
        "/metrics",
        &[("accept", "application/openmetrics-text")],
    )
    .await;
    assert!(
        scrape.contains(&format!("trace_id=\"{failed_trace}\"")),
        "the command histogram carries the trace as an exemplar: {scrape}"
    );
}
