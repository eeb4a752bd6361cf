//! Failure handling around providers: a first-token deadline per attempt,
//! retries with exponential backoff for connection errors, 429 and 5xx
//! (before the first token only — a reply already streaming is never
//! restarted), a circuit breaker per provider, and an optional fallback
//! provider tried when the main one fails or its circuit is open.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use common::metrics::AiMetrics;
use futures::StreamExt;
use tokio::time::Instant;

use super::{ChunkStream, Prompt, Provider, ProviderError};

/// How attempts are made.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// The first text must arrive within this time of the request.
    pub first_token_timeout: Duration,
    /// Further attempts after a retryable failure.
    pub retries: u32,
    /// Pause before the first retry; doubles for each further one.
    pub backoff: Duration,
}

/// A circuit breaker: after `threshold` consecutive failures it opens and
/// refuses calls for `cooldown`; then it lets one probe through (half-open),
/// which closes it on success or opens it again on failure.
#[derive(Debug)]
pub struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: Mutex<State>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Closed {
        failures: u32,
    },
    Open {
        until: Instant,
    },
    /// A probe is out; another is allowed only if it has not reported within
    /// a cool-down (its caller went away).
    HalfOpen {
        since: Instant,
    },
}

impl Breaker {
    pub fn new(threshold: u32, cooldown: Duration) -> Self {
        Self {
            threshold: threshold.max(1),
            cooldown,
            state: Mutex::new(State::Closed { failures: 0 }),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a call may go out now.
    pub fn allow(&self) -> bool {
        let now = Instant::now();
        let mut state = self.state();
        match *state {
            State::Closed { .. } => true,
            State::Open { until } | State::HalfOpen { since: until } if now < until => false,
            State::Open { .. } | State::HalfOpen { .. } => {
                *state = State::HalfOpen {
                    since: now + self.cooldown,
                };
                true
            }
        }
    }

    pub fn success(&self) {
        *self.state() = State::Closed { failures: 0 };
    }

    pub fn failure(&self) {
        let mut state = self.state();
        let failures = match *state {
            State::Closed { failures } => failures + 1,
            State::Open { .. } | State::HalfOpen { .. } => self.threshold,
        };
        *state = if failures >= self.threshold {
            State::Open {
                until: Instant::now() + self.cooldown,
            }
        } else {
            State::Closed { failures }
        };
    }

    /// Whether calls are being refused (open, or half-open with its probe out).
    pub fn is_open(&self) -> bool {
        !matches!(*self.state(), State::Closed { .. })
    }
}

/// A provider with its breaker, and the model to ask it for when it is a
/// fallback (whose models differ from the main provider's).
struct Candidate {
    provider: Arc<dyn Provider>,
    breaker: Arc<Breaker>,
    model: Option<String>,
}

/// The main provider (and the fallback) with deadlines, retries and breakers.
pub struct Resilient {
    candidates: Vec<Candidate>,
    policy: Policy,
    /// Provider errors and breaker states (unexported until
    /// [`Resilient::with_metrics`]).
    metrics: AiMetrics,
}

impl Resilient {
    pub fn new(provider: Arc<dyn Provider>, breaker: Breaker, policy: Policy) -> Self {
        Self {
            candidates: vec![Candidate {
                provider,
                breaker: Arc::new(breaker),
                model: None,
            }],
            policy,
            metrics: AiMetrics::default(),
        }
    }

    /// Records provider errors and breaker states into `metrics`.
    pub fn with_metrics(mut self, metrics: AiMetrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// Adds a provider tried when the ones before it fail; `model` replaces
    /// the requested one.
    pub fn with_fallback(
        mut self,
        provider: Arc<dyn Provider>,
        breaker: Breaker,
        model: Option<String>,
    ) -> Self {
        self.candidates.push(Candidate {
            provider,
            breaker: Arc::new(breaker),
            model,
        });
        self
    }

    /// Counts a failed attempt of `candidate` and publishes its breaker.
    fn failed(&self, candidate: &Candidate, error: &ProviderError) {
        record_failure(&self.metrics, candidate.provider.name(), error);
        publish_breaker(&self.metrics, candidate);
    }

    /// The breaker of the main provider (0) or the fallback (1).
    pub fn breaker(&self, index: usize) -> Option<&Breaker> {
        self.candidates.get(index).map(|c| c.breaker.as_ref())
    }

    /// One attempt: the request, then the wait for the first text, both
    /// within the first-token deadline.
    async fn attempt(
        &self,
        provider: &dyn Provider,
        prompt: &Prompt,
    ) -> Result<ChunkStream, ProviderError> {
        let first = async {
            let mut stream = provider.generate(prompt).await?;
            loop {
                match stream.next().await {
                    Some(Ok(text)) if text.is_empty() => continue,
                    Some(Ok(text)) => {
                        let rest: ChunkStream =
                            Box::pin(futures::stream::once(async { Ok(text) }).chain(stream));
                        return Ok(rest);
                    }
                    Some(Err(e)) => return Err(e),
                    None => return Ok(Box::pin(futures::stream::empty()) as ChunkStream),
                }
            }
        };
        tokio::time::timeout(self.policy.first_token_timeout, first)
            .await
            .unwrap_or(Err(ProviderError::Timeout))
    }
}

fn record_failure(metrics: &AiMetrics, provider: &'static str, error: &ProviderError) {
    metrics
        .provider_errors
        .get_or_create(&[("provider", provider), ("kind", error.kind())])
        .inc();
}

fn publish_breaker(metrics: &AiMetrics, candidate: &Candidate) {
    metrics
        .breaker_open
        .get_or_create(&[("provider", candidate.provider.name())])
        .set(i64::from(candidate.breaker.is_open()));
}

#[async_trait]
impl Provider for Resilient {
    fn name(&self) -> &'static str {
        self.candidates
            .first()
            .map(|c| c.provider.name())
            .unwrap_or("none")
    }

    async fn generate(&self, prompt: &Prompt) -> Result<ChunkStream, ProviderError> {
        let mut last = ProviderError::CircuitOpen;
        for candidate in &self.candidates {
            if !candidate.breaker.allow() {
                tracing::debug!(
                    provider = candidate.provider.name(),
                    "circuit open; skipped"
                );
                continue;
            }
            let prompt = match &candidate.model {
                Some(model) => Prompt {
                    model: model.clone(),
                    ..prompt.clone()
                },
                None => prompt.clone(),
            };
            let mut backoff = self.policy.backoff;
            let mut retries = 0;
            loop {
                match self.attempt(candidate.provider.as_ref(), &prompt).await {
                    Ok(stream) => {
                        candidate.breaker.success();
                        publish_breaker(&self.metrics, candidate);
                        let breaker = candidate.breaker.clone();
                        let metrics = self.metrics.clone();
                        let name = candidate.provider.name();
                        // A failure after the first token ends the reply and counts against the provider.
                        let stream = stream.inspect(move |item| {
                            if let Err(error) = item {
                                record_failure(&metrics, name, error);
                                if error.is_outage() {
                                    breaker.failure();
                                    metrics
                                        .breaker_open
                                        .get_or_create(&[("provider", name)])
                                        .set(i64::from(breaker.is_open()));
                                }
                            }
                        });
                        return Ok(Box::pin(stream));
                    }
                    Err(error) if !error.is_outage() => {
                        // The provider is up; the request itself is wrong.
                        candidate.breaker.success();
                        self.failed(candidate, &error);
                        return Err(error);
                    }
                    Err(error) => {
                        candidate.breaker.failure();
                        self.failed(candidate, &error);
                        tracing::warn!(provider = candidate.provider.name(), %error, retries, "model provider attempt failed");
                        if error.retryable()
                            && retries < self.policy.retries
                            && candidate.breaker.allow()
                        {
                            tokio::time::sleep(backoff).await;
                            backoff = backoff.saturating_mul(2);
                            retries += 1;
                            continue;
                        }
                        last = error;
                        break;
                    }
                }
            }
        }
        Err(last)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_breaker_opens_after_consecutive_failures_and_probes_after_the_cooldown() {
        let breaker = Breaker::new(3, Duration::from_secs(10));
        breaker.failure();
        breaker.failure();
        breaker.success();
        breaker.failure();
        breaker.failure();
        assert!(breaker.allow(), "a success resets the count");
        breaker.failure();
        assert!(!breaker.allow(), "third consecutive failure opens");
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(!breaker.allow());
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(breaker.allow(), "one probe after the cool-down");
        assert!(!breaker.allow(), "only one probe at a time");
        breaker.failure();
        assert!(!breaker.allow(), "a failed probe opens again");
        tokio::time::advance(Duration::from_secs(10)).await;
        assert!(breaker.allow());
        breaker.success();
        assert!(breaker.allow() && breaker.allow(), "a good probe closes it");
        assert!(!breaker.is_open());
    }

    #[tokio::test(start_paused = true)]
    async fn a_probe_whose_caller_vanished_is_replaced_after_a_cooldown() {
        let breaker = Breaker::new(1, Duration::from_secs(5));
        breaker.failure();
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(breaker.allow());
        tokio::time::advance(Duration::from_secs(5)).await;
        assert!(breaker.allow());
    }
}
