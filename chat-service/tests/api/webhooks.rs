//! Webhook dead letters through the backend API: an endpoint that fails
//! every attempt leaves a dead letter, listed by `ListWebhookDeadLetters`
//! and delivered by `RedriveWebhookDeadLetters` once the endpoint recovers.
//! (Signatures, backoff and the concurrency bound are tested beside the
//! dispatcher, on a clock the tests move: `webhooks::tests`.)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::Secret;
use common::config::WebhookConfig;
use proto::chat::v1::{
    ListWebhookDeadLettersRequest, RedriveWebhookDeadLettersRequest, WebhookDelivery,
};
use tokio::sync::mpsc;
use tonic::Code;

use crate::helpers::*;

struct Endpoint {
    up: AtomicBool,
    keys: mpsc::UnboundedSender<(String, StatusCode)>,
}

async fn receive(State(endpoint): State<Arc<Endpoint>>, headers: HeaderMap) -> StatusCode {
    let status = if endpoint.up.load(Ordering::SeqCst) {
        StatusCode::NO_CONTENT
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let key = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let _ = endpoint.keys.send((key, status));
    status
}

async fn dead_letters(
    app: &TestApp,
    endpoint: Option<&str>,
) -> Result<Vec<WebhookDelivery>, tonic::Status> {
    Ok(app
        .backend
        .clone()
        .list_webhook_dead_letters(ListWebhookDeadLettersRequest {
            endpoint: endpoint.map(str::to_string),
            limit: 0,
            after: None,
        })
        .await?
        .into_inner()
        .deliveries)
}

#[tokio::test]
async fn dead_letters_are_listed_and_redriven_through_the_backend_api() {
    let (keys, mut attempts) = mpsc::unbounded_channel();
    let endpoint = Arc::new(Endpoint {
        up: AtomicBool::new(false),
        keys,
    });
    let router = axum::Router::new()
        .route("/hook", axum::routing::post(receive))
        .with_state(endpoint.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/hook", listener.local_addr().expect("addr"));
    let server = tokio::spawn(async move {
        let _ = axum::serve(listener, router).await;
    });
    let app = spawn_app_with(|config| {
        config.webhooks = vec![WebhookConfig {
            name: "ops".into(),
            url,
            secret: Secret::new("0123456789abcdef0123456789abcdef"),
            events: vec!["message.new".into()],
            max_attempts: 1,
            ..WebhookConfig::default()
        }];
    })
    .await;
    let room = app.public_room(ALICE, "hooked", &[]).await;
    let message = app
        .send(ALICE, &room.id, "for the hook")
        .await
        .expect("send");

    let (key, status) = tokio::time::timeout(RECEIVE_TIMEOUT, attempts.recv())
        .await
        .expect("an attempt")
        .expect("open");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    // The outcome is stored right after the answer.
    let dead = tokio::time::timeout(RECEIVE_TIMEOUT, async {
        loop {
            let dead = dead_letters(&app, Some("ops")).await.expect("list");
            if !dead.is_empty() {
                return dead;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("a dead letter");
    assert_eq!(dead.len(), 1);
    let letter = &dead[0];
    assert_eq!(
        (
            letter.id.as_str(),
            letter.endpoint.as_str(),
            letter.kind.as_str()
        ),
        (key.as_str(), "ops", "room.event")
    );
    assert_eq!(
        (letter.attempts, letter.last_error.as_str()),
        (1, "HTTP 503")
    );
    assert!(letter.body.contains(&message.id), "{}", letter.body);
    assert!(letter.dead_at > 0);
    assert!(
        attempts.try_recv().is_err(),
        "no retry after the last attempt"
    );

    let status = dead_letters(&app, Some("nope")).await.expect_err("unknown");
    assert_eq!(status.code(), Code::NotFound);

    endpoint.up.store(true, Ordering::SeqCst);
    let redriven = app
        .backend
        .clone()
        .redrive_webhook_dead_letters(RedriveWebhookDeadLettersRequest {
            ids: vec![key.clone()],
            endpoint: None,
        })
        .await
        .expect("redrive")
        .into_inner()
        .redriven;
    assert_eq!(redriven, 1);
    let (again, status) = tokio::time::timeout(RECEIVE_TIMEOUT, attempts.recv())
        .await
        .expect("a new attempt")
        .expect("open");
    assert_eq!(
        (again.as_str(), status),
        (key.as_str(), StatusCode::NO_CONTENT)
    );
    assert!(dead_letters(&app, None).await.expect("list").is_empty());
    server.abort();
}
