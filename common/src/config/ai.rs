//! The `[ai]` section: which model provider answers, how the prompt's
//! context is built, the deadlines and failure handling of a reply, the
//! per-user quotas, and where replies in progress and quotas are kept.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use super::{Backend, ConfigError, redis_ca_file, redis_url, string_or_list};
use crate::secret::Secret;

/// Which model provider the AI service uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AiProvider {
    /// The built-in offline development stand-in (not a language model).
    Offline,
    /// Any OpenAI-compatible `/chat/completions` endpoint (OpenAI, Ollama,
    /// vLLM, the llama.cpp server).
    Openai,
}

/// The provider tried when the main one fails or its circuit is open.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AiFallback {
    None,
    /// The offline development stand-in.
    Offline,
    /// A second OpenAI-compatible endpoint (`fallback_base_url`, …).
    Openai,
}

/// The AI service.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AiConfig {
    pub listen: SocketAddr,
    /// HTTP address of `/metrics` when the service runs as its own process
    /// (the one-process suite serves every metric on the edge's `/metrics`).
    pub metrics_listen: SocketAddr,
    /// Switches `ai.ask` on or off.
    pub enabled: bool,
    pub provider: AiProvider,
    /// Pause between chunks of the offline provider, to look like streaming.
    pub offline_chunk_delay_ms: u64,
    /// OpenAI-compatible API root; `/chat/completions` is appended.
    pub base_url: String,
    /// Bearer key for `base_url`; empty sends none (Ollama, llama.cpp).
    pub api_key: Secret,
    /// Model asked for when the caller names none.
    pub model: String,
    /// Further models callers may name besides `model`.
    #[serde(deserialize_with = "string_or_list")]
    pub models: Vec<String>,
    pub fallback: AiFallback,
    pub fallback_base_url: String,
    pub fallback_api_key: Secret,
    /// Model of the fallback endpoint (whatever model the caller asked for).
    pub fallback_model: String,
    /// First message of every prompt, as the `system` role.
    pub system_prompt: String,
    /// Budget of the prompt (system prompt, history and question), in
    /// approximate tokens of four characters.
    pub context_tokens: usize,
    /// Longest question, in characters.
    pub max_prompt_chars: usize,
    /// A reply stops (and is stored with `metadata.truncated`) at this many
    /// characters, so it fits in one chat message.
    pub max_reply_chars: usize,
    /// The provider must send its first text within this time.
    pub first_token_timeout_ms: u64,
    /// A whole reply must be complete within this time.
    pub total_timeout_ms: u64,
    /// Further attempts after a connection error, 429 or 5xx before the first token.
    pub retries: u32,
    /// Pause before the first retry; doubles for each further one.
    pub retry_backoff_ms: u64,
    /// Consecutive failures that open a provider's circuit.
    pub breaker_failures: u32,
    /// How long an open circuit refuses calls before one probe is let through.
    pub breaker_cooldown_ms: u64,
    /// Questions one signed-in user may ask per minute.
    pub requests_per_minute: u32,
    /// Replies one signed-in user may have streaming at once.
    pub concurrent_streams: u32,
    /// The same two limits for anonymous users; 0 requests keeps them from asking.
    pub anonymous_requests_per_minute: u32,
    pub anonymous_concurrent_streams: u32,
    /// Where replies in progress (for late joiners and cancels) and quota
    /// counters live: `memory` (one process) or `redis` (shared by every
    /// replica).
    pub backend: Backend,
    pub redis_url: String,
    /// PEM CA certificates a `rediss://` `redis_url` must chain to; empty:
    /// the system's roots.
    pub redis_ca_file: String,
    /// Prefix of every Redis key.
    pub redis_prefix: String,
}

impl Default for AiConfig {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 50053)),
            metrics_listen: SocketAddr::from(([127, 0, 0, 1], 9453)),
            enabled: true,
            provider: AiProvider::Offline,
            offline_chunk_delay_ms: 40,
            base_url: "http://127.0.0.1:11434/v1".into(),
            api_key: Secret::default(),
            model: "llama3.2".into(),
            models: Vec::new(),
            fallback: AiFallback::None,
            fallback_base_url: String::new(),
            fallback_api_key: Secret::default(),
            fallback_model: String::new(),
            system_prompt: "You are the assistant of a group chat. Several people talk in it; \
                            each user message carries its author's name. Answer the last \
                            message briefly and helpfully."
                .into(),
            context_tokens: 3000,
            max_prompt_chars: 8000,
            max_reply_chars: 4000,
            first_token_timeout_ms: 30_000,
            total_timeout_ms: 120_000,
            retries: 2,
            retry_backoff_ms: 500,
            breaker_failures: 5,
            breaker_cooldown_ms: 30_000,
            requests_per_minute: 5,
            concurrent_streams: 2,
            anonymous_requests_per_minute: 2,
            anonymous_concurrent_streams: 1,
            backend: Backend::Memory,
            redis_url: "redis://127.0.0.1:6379".into(),
            redis_ca_file: String::new(),
            redis_prefix: "ai:".into(),
        }
    }
}

impl AiConfig {
    /// Every model a caller may name: `model` first, then `models`.
    pub fn allowed_models(&self) -> Vec<String> {
        let mut all = vec![self.model.clone()];
        for model in &self.models {
            if !all.contains(model) {
                all.push(model.clone());
            }
        }
        all
    }

    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        super::metrics_listen("ai", self.listen, self.metrics_listen)?;
        let positive = [
            ("ai.first_token_timeout_ms", self.first_token_timeout_ms),
            ("ai.total_timeout_ms", self.total_timeout_ms),
            ("ai.breaker_failures", u64::from(self.breaker_failures)),
            ("ai.context_tokens", self.context_tokens as u64),
            ("ai.max_prompt_chars", self.max_prompt_chars as u64),
            ("ai.max_reply_chars", self.max_reply_chars as u64),
            (
                "ai.requests_per_minute",
                u64::from(self.requests_per_minute),
            ),
            ("ai.concurrent_streams", u64::from(self.concurrent_streams)),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(ConfigError(format!("key `{key}`: must be at least 1")));
            }
        }
        if self.first_token_timeout_ms > self.total_timeout_ms {
            return Err(ConfigError(format!(
                "key `ai.first_token_timeout_ms`: must not exceed ai.total_timeout_ms ({})",
                self.total_timeout_ms
            )));
        }
        if self.retries > 10 {
            return Err(ConfigError("key `ai.retries`: must be at most 10".into()));
        }
        if self.anonymous_requests_per_minute > 0 && self.anonymous_concurrent_streams == 0 {
            return Err(ConfigError(
                "key `ai.anonymous_concurrent_streams`: must be at least 1 while anonymous users may ask"
                    .into(),
            ));
        }
        if self.model.trim().is_empty() {
            return Err(ConfigError("key `ai.model`: must not be empty".into()));
        }
        if self.models.iter().any(|m| m.trim().is_empty()) {
            return Err(ConfigError(
                "key `ai.models`: model names must not be empty".into(),
            ));
        }
        if self.redis_prefix.is_empty() {
            return Err(ConfigError::new("key `ai.redis_prefix`: must not be empty"));
        }
        redis_url("ai.redis_url", &self.redis_url)?;
        redis_ca_file("ai.redis_ca_file", &self.redis_ca_file)?;
        if self.provider == AiProvider::Openai {
            http_url("ai.base_url", &self.base_url)?;
        }
        if self.fallback == AiFallback::Openai {
            http_url("ai.fallback_base_url", &self.fallback_base_url)?;
            if self.fallback_model.trim().is_empty() {
                return Err(ConfigError(
                    "key `ai.fallback_model`: required when ai.fallback is openai".into(),
                ));
            }
        }
        Ok(())
    }
}

fn http_url(key: &str, url: &str) -> Result<(), ConfigError> {
    let valid = url
        .parse::<http::Uri>()
        .ok()
        .filter(|u| matches!(u.scheme_str(), Some("http" | "https")) && u.host().is_some())
        .is_some();
    if valid {
        Ok(())
    } else {
        Err(ConfigError(format!(
            "key `{key}`: `{url}` is not an http(s) URL"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::load;

    #[test]
    fn defaults_use_the_offline_provider_with_the_documented_limits() {
        let ai = load(&[]).expect("defaults").ai;
        assert_eq!(ai.provider, AiProvider::Offline);
        assert_eq!(ai.first_token_timeout_ms, 30_000);
        assert_eq!(ai.total_timeout_ms, 120_000);
        assert_eq!((ai.requests_per_minute, ai.concurrent_streams), (5, 2));
        assert_eq!(ai.max_prompt_chars, 8000);
        assert_eq!(ai.allowed_models(), ["llama3.2"]);
        assert_eq!(ai.backend, Backend::Memory, "one process needs no Redis");
    }

    #[test]
    fn replicas_share_streams_and_quotas_through_redis() {
        let ai = load(&[
            ("PARLEY_AI_BACKEND", "redis"),
            ("PARLEY_AI_REDIS_URL", "rediss://user:pw@redis.example:6380"),
            ("PARLEY_AI_REDIS_PREFIX", "ai2:"),
        ])
        .expect("valid")
        .ai;
        assert_eq!(ai.backend, Backend::Redis);
        assert_eq!(ai.redis_url, "rediss://user:pw@redis.example:6380");
        assert_eq!(ai.redis_prefix, "ai2:");
    }

    #[test]
    fn an_openai_compatible_endpoint_is_configured_from_the_environment() {
        let ai = load(&[
            ("PARLEY_AI_PROVIDER", "openai"),
            ("PARLEY_AI_BASE_URL", "https://api.openai.com/v1"),
            ("PARLEY_AI_API_KEY", "12345"),
            ("PARLEY_AI_MODEL", "gpt-4o-mini"),
            ("PARLEY_AI_MODELS", "gpt-4o, gpt-4o-mini"),
            ("PARLEY_AI_SYSTEM_PROMPT", "42"),
        ])
        .expect("valid")
        .ai;
        assert_eq!(ai.provider, AiProvider::Openai);
        assert_eq!(ai.api_key.expose(), "12345", "a numeric key stays a string");
        assert_eq!(ai.system_prompt, "42");
        assert_eq!(ai.allowed_models(), ["gpt-4o-mini", "gpt-4o"]);
        assert!(
            !format!("{ai:?}").contains("12345"),
            "the key is never printed"
        );
    }

    #[test]
    fn invalid_ai_values_name_the_key() {
        for (env, key) in [
            (("PARLEY_AI_PROVIDER", "bard"), "ai.provider"),
            (("PARLEY_AI_TOTAL_TIMEOUT_MS", "0"), "ai.total_timeout_ms"),
            (
                ("PARLEY_AI_FIRST_TOKEN_TIMEOUT_MS", "200000"),
                "ai.first_token_timeout_ms",
            ),
            (
                ("PARLEY_AI_CONCURRENT_STREAMS", "0"),
                "ai.concurrent_streams",
            ),
            (("PARLEY_AI_RETRIES", "50"), "ai.retries"),
            (("PARLEY_AI_MODEL", " "), "ai.model"),
            (("PARLEY_AI_FALLBACK", "openai"), "ai.fallback_base_url"),
            (("PARLEY_AI_BACKEND", "etcd"), "ai.backend"),
            (("PARLEY_AI_REDIS_URL", "127.0.0.1:6379"), "ai.redis_url"),
            (("PARLEY_AI_REDIS_PREFIX", ""), "ai.redis_prefix"),
        ] {
            let e = load(&[env]).expect_err(key);
            assert!(e.to_string().contains(key), "{key}: {e}");
        }
        let e = load(&[
            ("PARLEY_AI_PROVIDER", "openai"),
            ("PARLEY_AI_BASE_URL", "localhost:11434"),
        ])
        .expect_err("no scheme");
        assert!(e.to_string().contains("ai.base_url"), "{e}");
    }
}
