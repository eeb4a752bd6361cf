//! Deadlines, retries, circuit breakers and the fallback, on paused tokio
//! time against the model server: no test sleeps for real.

use std::sync::Arc;
use std::time::Duration;

use ai_service::{
    Breaker, OpenAiProvider, Policy, Prompt, Provider, ProviderError, Resilient, Role, Turn,
};
use common::Secret;
use common::testing::{FakeOpenAi, Reply};
use futures::StreamExt;
use proto::ai::v1::GenerateRequest;
use proto::ai::v1::generate_event::Event;
use tokio::time::Instant;

use crate::helpers::*;

const FIRST_TOKEN: Duration = Duration::from_secs(30);
const COOLDOWN: Duration = Duration::from_secs(60);

fn openai(server: &FakeOpenAi) -> Arc<dyn Provider> {
    Arc::new(
        OpenAiProvider::new(
            "openai",
            &server.base_url,
            Secret::default(),
            Duration::from_secs(5),
        )
        .expect("provider"),
    )
}

fn policy(retries: u32) -> Policy {
    Policy {
        first_token_timeout: FIRST_TOKEN,
        retries,
        backoff: Duration::from_millis(500),
    }
}

fn prompt() -> Prompt {
    Prompt {
        messages: vec![Turn::new(Role::User, None, "hi")],
        model: "main-model".into(),
    }
}

async fn text(provider: &Resilient) -> Result<String, ProviderError> {
    let mut stream = provider.generate(&prompt()).await?;
    let mut text = String::new();
    while let Some(chunk) = stream.next().await {
        text.push_str(&chunk?);
    }
    Ok(text)
}

/// A stream whose first text comes after `wait` (a comment keeps it open).
fn slow_first_token(wait: Duration) -> Reply {
    Reply::Sse {
        pieces: vec![
            ": warming up\n\n".into(),
            Reply::event("late").into(),
            Reply::end().into(),
        ],
        pause: wait,
    }
}

#[tokio::test(start_paused = true)]
async fn a_first_token_slower_than_the_deadline_is_a_timeout_and_is_not_retried() {
    let server = FakeOpenAi::start(slow_first_token(Duration::from_secs(31))).await;
    let provider = Resilient::new(openai(&server), Breaker::new(5, COOLDOWN), policy(2));
    let started = Instant::now();
    let error = text(&provider).await.expect_err("too slow");
    assert!(matches!(error, ProviderError::Timeout), "{error:?}");
    assert_eq!(started.elapsed(), FIRST_TOKEN);
    assert_eq!(server.requests().len(), 1);
    server.wait_abandoned(1).await;

    let server = FakeOpenAi::start(slow_first_token(Duration::from_secs(29))).await;
    let provider = Resilient::new(openai(&server), Breaker::new(5, COOLDOWN), policy(2));
    assert_eq!(text(&provider).await.expect("in time"), "late");
}

#[tokio::test(start_paused = true)]
async fn retries_back_off_exponentially_for_429_and_5xx() {
    let server = FakeOpenAi::start(Reply::chunks(&["finally"])).await;
    server.push(Reply::status(429));
    server.push(Reply::status(502));
    let provider = Resilient::new(openai(&server), Breaker::new(5, COOLDOWN), policy(2));
    let started = Instant::now();
    assert_eq!(text(&provider).await.expect("third time"), "finally");
    assert_eq!(started.elapsed(), Duration::from_millis(500 + 1000));
    assert_eq!(server.requests().len(), 3);

    server.push(Reply::status(500));
    server.push(Reply::status(500));
    server.push(Reply::status(500));
    let error = text(&provider).await.expect_err("out of retries");
    assert!(
        matches!(error, ProviderError::Status { status: 500, .. }),
        "{error:?}"
    );
    assert_eq!(server.requests().len(), 6);
}

#[tokio::test(start_paused = true)]
async fn the_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() {
    let server = FakeOpenAi::start(Reply::status(503)).await;
    let provider = Resilient::new(openai(&server), Breaker::new(3, COOLDOWN), policy(0));
    for _ in 0..3 {
        assert!(matches!(
            text(&provider).await,
            Err(ProviderError::Status { status: 503, .. })
        ));
    }
    assert!(provider.breaker(0).expect("breaker").is_open());
    let error = text(&provider).await.expect_err("open");
    assert!(matches!(error, ProviderError::CircuitOpen), "{error:?}");
    assert_eq!(server.requests().len(), 3, "an open circuit sends nothing");

    // After the cool-down one probe goes out; it fails, so the circuit opens again.
    tokio::time::advance(COOLDOWN).await;
    assert!(matches!(
        text(&provider).await,
        Err(ProviderError::Status { status: 503, .. })
    ));
    assert!(matches!(
        text(&provider).await,
        Err(ProviderError::CircuitOpen)
    ));
    assert_eq!(server.requests().len(), 4);

    // The next probe succeeds and closes it.
    tokio::time::advance(COOLDOWN).await;
    server.push(Reply::chunks(&["back"]));
    assert_eq!(text(&provider).await.expect("probe"), "back");
    assert!(!provider.breaker(0).expect("breaker").is_open());
    server.push(Reply::chunks(&["again"]));
    assert_eq!(text(&provider).await.expect("closed"), "again");
}

#[tokio::test(start_paused = true)]
async fn the_fallback_answers_when_the_main_provider_fails_or_its_circuit_is_open() {
    let main = FakeOpenAi::start(Reply::status(500)).await;
    let fallback = FakeOpenAi::start(Reply::chunks(&["from the fallback"])).await;
    let provider = Resilient::new(openai(&main), Breaker::new(2, COOLDOWN), policy(0))
        .with_fallback(
            openai(&fallback),
            Breaker::new(2, COOLDOWN),
            Some("small-model".into()),
        );
    for _ in 0..3 {
        assert_eq!(
            text(&provider).await.expect("fallback"),
            "from the fallback"
        );
    }
    assert_eq!(main.requests().len(), 2, "then its circuit opened");
    assert_eq!(fallback.requests().len(), 3);
    assert_eq!(fallback.requests()[0]["model"], "small-model");
}

#[tokio::test(start_paused = true)]
async fn a_reply_past_the_total_deadline_ends_with_a_timeout_error() {
    let model =
        FakeOpenAi::start(Reply::paced(&["a", "b", "c", "d"], Duration::from_secs(50))).await;
    let mut config = config(&model);
    config.total_timeout_ms = 120_000;
    let credential = Secret::new(common::ids::random_secret(32));
    let app = start_ai(
        config,
        &closed_url().await,
        Arc::new(common::bus::MemoryBus::new()),
        &credential,
        model,
    )
    .await;
    let started = Instant::now();
    let mut events = app
        .client
        .clone()
        .generate(GenerateRequest {
            room_id: String::new(),
            prompt: "long story".into(),
            model: None,
            thread_id: None,
            system_prompt: None,
        })
        .await
        .expect("generate")
        .into_inner();
    let mut deltas = Vec::new();
    let error = loop {
        match events.next().await.expect("event").expect("ok").event {
            Some(Event::Delta(delta)) => deltas.push(delta.text),
            Some(Event::Error(error)) => break error,
            other => panic!("unexpected {other:?}"),
        }
    };
    assert_eq!(deltas, ["a", "b", "c"]);
    assert_eq!(error.code, "timeout");
    let elapsed = started.elapsed();
    assert!(
        elapsed >= Duration::from_secs(120) && elapsed < Duration::from_secs(150),
        "{elapsed:?}"
    );
    app.model.wait_abandoned(1).await;
}
