//! An OpenAI-compatible provider: `POST {base_url}/chat/completions` with
//! `stream: true`, read as server-sent events (`data: {json}` chunks whose
//! `choices[0].delta.content` is the next piece of text, then
//! `data: [DONE]`). OpenAI, Ollama, vLLM and the llama.cpp server all speak
//! it.

use std::collections::VecDeque;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use common::Secret;
use futures::stream::BoxStream;
use futures::{Stream, StreamExt};
use serde_json::{Value, json};

use super::{ChunkStream, Prompt, Provider, ProviderError, Role};

/// Longest line of the event stream; a provider sending more without a
/// newline is not speaking SSE.
const MAX_LINE_BYTES: usize = 1024 * 1024;
/// How much of an error body is kept for the log.
const MAX_ERROR_BODY_CHARS: usize = 500;

/// A provider behind an OpenAI-compatible `/chat/completions` endpoint.
pub struct OpenAiProvider {
    client: reqwest::Client,
    /// `{base_url}/chat/completions`.
    endpoint: String,
    /// Sent as `Authorization: Bearer …` when not empty.
    api_key: Secret,
    /// Name in logs and traces (`openai`, `fallback`).
    name: &'static str,
}

impl std::fmt::Debug for OpenAiProvider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiProvider")
            .field("endpoint", &self.endpoint)
            .field("api_key", &self.api_key)
            .field("name", &self.name)
            .finish()
    }
}

impl OpenAiProvider {
    /// A provider for the API at `base_url` (e.g. `https://api.openai.com/v1`
    /// or `http://127.0.0.1:11434/v1` for Ollama).
    pub fn new(
        name: &'static str,
        base_url: &str,
        api_key: Secret,
        connect_timeout: Duration,
    ) -> Result<Self, ProviderError> {
        let client = reqwest::Client::builder()
            .connect_timeout(connect_timeout)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| ProviderError::Connect(e.to_string()))?;
        Ok(Self {
            client,
            endpoint: format!("{}/chat/completions", base_url.trim_end_matches('/')),
            api_key,
            name,
        })
    }

    fn body(prompt: &Prompt) -> Value {
        let messages: Vec<Value> = prompt
            .messages
            .iter()
            .map(|turn| {
                let mut message = json!({"role": turn.role.as_str(), "content": turn.content});
                if turn.role == Role::User
                    && let Some(name) = turn.name.as_deref().and_then(wire_name)
                {
                    message["name"] = json!(name);
                }
                message
            })
            .collect();
        json!({"model": prompt.model, "messages": messages, "stream": true})
    }
}

/// A name as OpenAI accepts it in `messages[].name` (`[A-Za-z0-9_-]{1,64}`).
fn wire_name(name: &str) -> Option<String> {
    let cleaned: String = name
        .trim()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect();
    (!cleaned.trim_matches('_').is_empty()).then_some(cleaned)
}

#[async_trait]
impl Provider for OpenAiProvider {
    fn name(&self) -> &'static str {
        self.name
    }

    async fn generate(&self, prompt: &Prompt) -> Result<ChunkStream, ProviderError> {
        let mut request = self
            .client
            .post(&self.endpoint)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header(reqwest::header::ACCEPT, "text/event-stream")
            .body(Self::body(prompt).to_string());
        if !self.api_key.is_empty() {
            request = request.bearer_auth(self.api_key.expose());
        }
        let response = request
            .send()
            .await
            .map_err(|e| ProviderError::Connect(without_url(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let body = response.text().await.unwrap_or_default();
            let message = error_message(&body);
            tracing::warn!(provider = self.name, status = status.as_u16(), %message, "model provider refused the request");
            return Err(ProviderError::Status {
                status: status.as_u16(),
                message,
            });
        }
        Ok(Box::pin(events(response.bytes_stream().boxed())))
    }
}

/// A transport error without the URL (which may carry credentials).
fn without_url(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    if let Some(url) = error.url() {
        message = message.replace(url.as_str(), "the endpoint");
    }
    message
}

/// The message of an OpenAI-style error body (`{"error":{"message":..}}`),
/// or the start of the body.
fn error_message(body: &str) -> String {
    let parsed: Option<Value> = serde_json::from_str(body).ok();
    let message = parsed.as_ref().and_then(|v| {
        v["error"]["message"]
            .as_str()
            .or_else(|| v["error"].as_str())
            .map(str::to_string)
    });
    message
        .unwrap_or_else(|| body.to_string())
        .chars()
        .take(MAX_ERROR_BODY_CHARS)
        .collect()
}

/// Turns the response body into reply text chunks.
fn events(
    body: BoxStream<'static, reqwest::Result<Bytes>>,
) -> impl Stream<Item = Result<String, ProviderError>> + Send {
    let state = Reader {
        body,
        decoder: SseDecoder::default(),
        texts: VecDeque::new(),
        finished: false,
        ended: false,
    };
    futures::stream::unfold(state, |mut state| async move {
        let item = state.next().await?;
        Some((item, state))
    })
}

struct Reader {
    body: BoxStream<'static, reqwest::Result<Bytes>>,
    decoder: SseDecoder,
    /// Texts decoded but not yet handed on.
    texts: VecDeque<String>,
    /// A chunk carried a `finish_reason`: the reply is complete even if the
    /// server closes without `[DONE]` (older llama.cpp servers do).
    finished: bool,
    /// Nothing more will be read.
    ended: bool,
}

impl Reader {
    async fn next(&mut self) -> Option<Result<String, ProviderError>> {
        loop {
            if let Some(text) = self.texts.pop_front() {
                return Some(Ok(text));
            }
            if self.ended {
                return None;
            }
            let payloads = match self.body.next().await {
                Some(Ok(bytes)) => self.decoder.feed(&bytes),
                Some(Err(e)) => {
                    self.ended = true;
                    return Some(Err(ProviderError::Connect(without_url(&e))));
                }
                None => {
                    self.ended = true;
                    let last = self.decoder.finish().map(|p| vec![p]).unwrap_or_default();
                    match self.interpret(last) {
                        Err(e) => return Some(Err(e)),
                        Ok(true) => continue,
                        Ok(false) if self.finished => continue,
                        Ok(false) => {
                            return Some(Err(ProviderError::Protocol(
                                "the stream ended before [DONE]".into(),
                            )));
                        }
                    }
                }
            };
            match payloads.and_then(|payloads| self.interpret(payloads)) {
                Ok(done) => self.ended |= done,
                Err(e) => {
                    self.ended = true;
                    self.texts.clear();
                    return Some(Err(e));
                }
            }
        }
    }

    /// Queues the texts of `payloads`; true once `[DONE]` was seen.
    fn interpret(&mut self, payloads: Vec<String>) -> Result<bool, ProviderError> {
        for payload in payloads {
            match parse_payload(&payload)? {
                Payload::Done => return Ok(true),
                Payload::Chunk { text, finished } => {
                    self.finished |= finished;
                    if let Some(text) = text.filter(|t| !t.is_empty()) {
                        self.texts.push_back(text);
                    }
                }
            }
        }
        Ok(false)
    }
}

/// One `data:` payload of the stream, understood.
#[derive(Debug, PartialEq, Eq)]
enum Payload {
    /// `[DONE]`: the reply is complete.
    Done,
    /// A completion chunk: its text, and whether it says the reply ended.
    Chunk {
        text: Option<String>,
        finished: bool,
    },
}

fn parse_payload(payload: &str) -> Result<Payload, ProviderError> {
    let payload = payload.trim();
    if payload == "[DONE]" {
        return Ok(Payload::Done);
    }
    let value: Value = serde_json::from_str(payload)
        .map_err(|e| ProviderError::Protocol(format!("a chunk is not JSON: {e}")))?;
    if !value["error"].is_null() {
        let message = value["error"]["message"]
            .as_str()
            .or_else(|| value["error"].as_str())
            .unwrap_or("unknown error");
        return Err(ProviderError::Failed(message.to_string()));
    }
    let choice = &value["choices"][0];
    Ok(Payload::Chunk {
        text: choice["delta"]["content"].as_str().map(str::to_string),
        finished: !choice["finish_reason"].is_null(),
    })
}

/// Server-sent events decoder: bytes in, the `data` of each complete event
/// out. Lines may be split anywhere between reads (even inside a UTF-8
/// character) and end with `\n` or `\r\n`.
#[derive(Debug, Default)]
struct SseDecoder {
    /// Bytes of the line being read.
    line: Vec<u8>,
    /// `data` lines of the event being read, joined with `\n`.
    data: Option<String>,
}

impl SseDecoder {
    /// Consumes `bytes`; returns the data of every event they completed.
    fn feed(&mut self, bytes: &[u8]) -> Result<Vec<String>, ProviderError> {
        let mut events = Vec::new();
        for part in bytes.split_inclusive(|b| *b == b'\n') {
            self.line.extend_from_slice(part);
            if self.line.last() != Some(&b'\n') {
                if self.line.len() > MAX_LINE_BYTES {
                    return Err(ProviderError::Protocol("an event line is too long".into()));
                }
                continue;
            }
            let line = std::mem::take(&mut self.line);
            let line = std::str::from_utf8(&line)
                .map_err(|_| ProviderError::Protocol("the stream is not UTF-8".into()))?;
            let line = line.trim_end_matches('\n').trim_end_matches('\r');
            if let Some(event) = self.line_done(line) {
                events.push(event);
            }
        }
        Ok(events)
    }

    /// The data of an event left open when the stream ended.
    fn finish(&mut self) -> Option<String> {
        let line = std::mem::take(&mut self.line);
        if let Ok(line) = std::str::from_utf8(&line) {
            let line = line.trim_end_matches('\r');
            if !line.is_empty() {
                self.line_done(line);
            }
        }
        self.data.take()
    }

    fn line_done(&mut self, line: &str) -> Option<String> {
        if line.is_empty() {
            return self.data.take();
        }
        if line.starts_with(':') {
            return None;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        if field == "data" {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(data) => {
                    data.push('\n');
                    data.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::provider::Turn;

    fn decode_in_pieces(stream: &[u8], piece: usize) -> Vec<String> {
        let mut decoder = SseDecoder::default();
        let mut events = Vec::new();
        for chunk in stream.chunks(piece) {
            events.extend(decoder.feed(chunk).expect("valid"));
        }
        events.extend(decoder.finish());
        events
    }

    #[test]
    fn events_survive_any_split_of_the_bytes() {
        let stream = "data: {\"a\":\"é€😀\"}\r\n\r\n: keep-alive\n\nevent: x\ndata: one\ndata: two\n\ndata:[DONE]\n\n";
        let expected = ["{\"a\":\"é€😀\"}", "one\ntwo", "[DONE]"];
        for piece in 1..stream.len() {
            assert_eq!(
                decode_in_pieces(stream.as_bytes(), piece),
                expected,
                "pieces of {piece} bytes"
            );
        }
    }

    #[test]
    fn an_event_without_a_final_blank_line_is_still_read() {
        assert_eq!(decode_in_pieces(b"data: last", 4), ["last"]);
    }

    #[test]
    fn payloads_are_text_done_or_errors() {
        assert_eq!(
            parse_payload(r#"{"choices":[{"delta":{"content":"Hi"},"finish_reason":null}]}"#)
                .expect("chunk"),
            Payload::Chunk {
                text: Some("Hi".into()),
                finished: false
            }
        );
        assert_eq!(
            parse_payload(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).expect("end"),
            Payload::Chunk {
                text: None,
                finished: true
            }
        );
        assert_eq!(parse_payload(" [DONE] ").expect("done"), Payload::Done);
        assert!(matches!(
            parse_payload(r#"{"error":{"message":"overloaded"}}"#),
            Err(ProviderError::Failed(m)) if m == "overloaded"
        ));
        assert!(matches!(
            parse_payload("{not json"),
            Err(ProviderError::Protocol(_))
        ));
    }

    #[test]
    fn the_request_names_users_the_way_openai_accepts() {
        let prompt = Prompt {
            messages: vec![
                Turn::new(Role::System, None, "be brief"),
                Turn::new(Role::User, Some("Zoë Smith".into()), "hi"),
                Turn::new(Role::Assistant, None, "hello"),
                Turn::new(Role::User, Some("???".into()), "and?"),
            ],
            model: "m".into(),
        };
        let body = OpenAiProvider::body(&prompt);
        assert_eq!(
            body,
            json!({"model": "m", "stream": true, "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi", "name": "Zo__Smith"},
                {"role": "assistant", "content": "hello"},
                {"role": "user", "content": "and?"},
            ]})
        );
    }

    #[test]
    fn error_bodies_are_summarised() {
        assert_eq!(
            error_message(r#"{"error":{"message":"model not found"}}"#),
            "model not found"
        );
        assert_eq!(error_message("plain"), "plain");
        assert_eq!(error_message(&"x".repeat(2000)).len(), MAX_ERROR_BODY_CHARS);
    }
}
