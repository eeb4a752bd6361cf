//! The OpenAI-compatible provider against a real HTTP server streaming
//! server-sent events: chunk boundaries anywhere, errors before and during
//! the stream, the request it sends.

use std::time::Duration;

use ai_service::{OpenAiProvider, Prompt, Provider, ProviderError, Role, Turn};
use common::Secret;
use common::testing::{FakeOpenAi, Reply};
use futures::StreamExt;
use serde_json::json;

fn provider(server: &FakeOpenAi, key: &str) -> OpenAiProvider {
    OpenAiProvider::new(
        "openai",
        &server.base_url,
        Secret::new(key),
        Duration::from_secs(2),
    )
    .expect("provider")
}

fn prompt() -> Prompt {
    Prompt {
        messages: vec![
            Turn::new(Role::System, None, "be brief"),
            Turn::new(Role::User, Some("Alice".into()), "hi"),
        ],
        model: "test-model".into(),
    }
}

/// Every chunk of the reply, or the error that ended it.
async fn collect(provider: &OpenAiProvider) -> Result<Vec<String>, ProviderError> {
    let mut stream = provider.generate(&prompt()).await?;
    let mut chunks = Vec::new();
    while let Some(chunk) = stream.next().await {
        chunks.push(chunk?);
    }
    Ok(chunks)
}

#[tokio::test]
async fn a_streamed_completion_arrives_chunk_by_chunk() {
    let server = FakeOpenAi::start(Reply::chunks(&["Hel", "lo, ", "wörld"])).await;
    let chunks = collect(&provider(&server, "sk-test")).await.expect("reply");
    assert_eq!(chunks, ["Hel", "lo, ", "wörld"]);

    let requests = server.requests();
    assert_eq!(
        requests,
        [json!({"model": "test-model", "stream": true, "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi", "name": "Alice"},
        ]})]
    );
    assert_eq!(
        server.authorizations(),
        [Some("Bearer sk-test".to_string())]
    );
}

#[tokio::test]
async fn no_key_sends_no_authorization() {
    let server = FakeOpenAi::start(Reply::chunks(&["ok"])).await;
    collect(&provider(&server, "")).await.expect("reply");
    assert_eq!(server.authorizations(), [None]);
}

#[tokio::test]
async fn lines_split_across_network_writes_are_reassembled() {
    let whole = [
        Reply::event("Hé"),
        ": keep-alive comment\r\n\r\n".into(),
        Reply::event("llo"),
        Reply::end(),
    ]
    .concat()
    .replace("\n\n", "\r\n\r\n");
    for size in [1, 2, 3, 7, 64] {
        let server = FakeOpenAi::start(Reply::split(&whole, size)).await;
        let chunks = collect(&provider(&server, "")).await.expect("reply");
        assert_eq!(chunks, ["Hé", "llo"], "pieces of {size} bytes");
    }
}

#[tokio::test]
async fn http_errors_before_the_stream_carry_their_status() {
    for status in [400, 401, 429, 500, 503] {
        let server = FakeOpenAi::start(Reply::status(status)).await;
        let error = collect(&provider(&server, ""))
            .await
            .expect_err("an error status");
        match error {
            ProviderError::Status {
                status: got,
                message,
            } => {
                assert_eq!(got, status);
                assert_eq!(message, format!("test error {status}"));
            }
            other => panic!("expected a status error, got {other:?}"),
        }
        assert_eq!(
            ProviderError::Status {
                status,
                message: String::new()
            }
            .retryable(),
            status == 429 || status >= 500
        );
    }
}

#[tokio::test]
async fn an_error_event_mid_stream_ends_the_reply_with_an_error() {
    let server = FakeOpenAi::start(Reply::Sse {
        pieces: vec![
            Reply::event("half ").into(),
            "data: {\"error\":{\"message\":\"overloaded\"}}\n\n".into(),
            Reply::event("never").into(),
        ],
        pause: Duration::ZERO,
    })
    .await;
    let mut stream = provider(&server, "")
        .generate(&prompt())
        .await
        .expect("stream");
    assert_eq!(stream.next().await.expect("chunk").expect("text"), "half ");
    assert!(matches!(
        stream.next().await,
        Some(Err(ProviderError::Failed(m))) if m == "overloaded"
    ));
    assert!(stream.next().await.is_none(), "nothing after the error");
}

#[tokio::test]
async fn a_stream_cut_before_done_is_an_error_but_a_finished_one_is_not() {
    let server = FakeOpenAi::start(Reply::Sse {
        pieces: vec![Reply::event("cut").into()],
        pause: Duration::ZERO,
    })
    .await;
    let error = collect(&provider(&server, ""))
        .await
        .expect_err("cut short");
    assert!(matches!(error, ProviderError::Protocol(_)), "{error:?}");

    // Older llama.cpp servers end with a finish_reason and no [DONE].
    let finish = Reply::end().replace("data: [DONE]\n\n", "");
    let server = FakeOpenAi::start(Reply::Sse {
        pieces: vec![Reply::event("whole").into(), finish.into()],
        pause: Duration::ZERO,
    })
    .await;
    assert_eq!(
        collect(&provider(&server, "")).await.expect("reply"),
        ["whole"]
    );
}

#[tokio::test]
async fn an_unreachable_endpoint_is_a_retryable_connection_error() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!("http://{}/v1", listener.local_addr().expect("addr"));
    drop(listener);
    let provider = OpenAiProvider::new(
        "openai",
        &url,
        Secret::new("sk-secret"),
        Duration::from_secs(1),
    )
    .expect("provider");
    let error = collect(&provider).await.expect_err("refused");
    assert!(matches!(error, ProviderError::Connect(_)), "{error:?}");
    assert!(error.retryable());
    assert!(
        !format!("{provider:?}").contains("sk-secret"),
        "the key is never printed"
    );
}
