//! The dispatcher: claims due deliveries (never more per endpoint than it
//! has free slots of `max_in_flight`), POSTs each signed, and records the
//! outcome — done, a retry after exponential backoff, or a dead letter.

use std::sync::Arc;
use std::time::Duration;

use common::shutdown::ShutdownSignal;
use tokio::sync::OwnedSemaphorePermit;

use super::sign::{
    EVENT_HEADER, IDEMPOTENCY_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, signature,
};
use super::{Endpoint, Shared};
use crate::store::webhooks::{Claimed, Outcome};

/// How long past its POST deadline a claimed delivery stays claimed: a
/// dispatcher that died mid-attempt has it retried after that.
const CLAIM_MARGIN_MS: i64 = 30_000;

pub(super) async fn run(shared: Arc<Shared>, shutdown: ShutdownSignal) {
    let stopped = shutdown.wait();
    tokio::pin!(stopped);
    loop {
        let now = shared.clock.now_ms();
        let mut next_due: Option<i64> = None;
        for (index, endpoint) in shared.endpoints.iter().enumerate() {
            claim(&shared, index, endpoint, now).await;
            match shared.store.next_webhook_due(&endpoint.config.name).await {
                Ok(Some(due)) => next_due = Some(next_due.map_or(due, |d| d.min(due))),
                Ok(None) => {}
                Err(error) => tracing::warn!(%error, "cannot read the webhook queue"),
            }
        }
        let wait = next_due.map_or(shared.poll, |due| {
            Duration::from_millis(u64::try_from(due - now).unwrap_or(0)).min(shared.poll)
        });
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = shared.wake.notified() => {}
            () = &mut stopped => return,
        }
    }
}

/// Claims as many due deliveries as the endpoint has free slots and starts
/// an attempt for each.
async fn claim(shared: &Arc<Shared>, index: usize, endpoint: &Endpoint, now: i64) {
    let free = endpoint.slots.available_permits();
    if free == 0 {
        return;
    }
    let config = &endpoint.config;
    let lease = now + config.timeout_ms as i64 + CLAIM_MARGIN_MS;
    let claimed = match shared
        .store
        .claim_webhooks(&config.name, now, lease, free as u32)
        .await
    {
        Ok(claimed) => claimed,
        Err(error) => {
            tracing::warn!(%error, endpoint = %config.name, "cannot claim webhooks");
            return;
        }
    };
    for delivery in claimed {
        let Ok(permit) = endpoint.slots.clone().try_acquire_owned() else {
            break;
        };
        tokio::spawn(attempt(shared.clone(), index, delivery, permit));
    }
}

/// One attempt, its outcome stored; frees the slot and wakes the dispatcher.
async fn attempt(
    shared: Arc<Shared>,
    index: usize,
    delivery: Claimed,
    permit: OwnedSemaphorePermit,
) {
    let endpoint = &shared.endpoints[index];
    let outcome = post(&shared, endpoint, &delivery).await;
    match &outcome {
        Outcome::Done => tracing::debug!(id = %delivery.id, "webhook delivered"),
        Outcome::Retry { error, .. } => {
            tracing::info!(id = %delivery.id, %error, "webhook attempt failed; will retry");
        }
        Outcome::Dead { error, .. } => {
            tracing::warn!(id = %delivery.id, %error, "webhook is a dead letter");
        }
    }
    if let Err(error) = shared.store.finish_webhook(&delivery.id, &outcome).await {
        tracing::warn!(%error, id = %delivery.id, "cannot record a webhook attempt");
    }
    drop(permit);
    shared.recorded.send_modify(|n| *n += 1);
    shared.wake.notify_one();
}

/// Makes the attempt: first, for an offline notification, whether its user
/// is still offline; then the signed POST.
async fn post(shared: &Shared, endpoint: &Endpoint, delivery: &Claimed) -> Outcome {
    let config = &endpoint.config;
    if delivery.attempts == 0
        && let Some(user) = &delivery.user_id
    {
        match shared
            .connections
            .connected(std::slice::from_ref(user))
            .await
        {
            Ok(connected) if connected.contains(user) => {
                tracing::debug!(id = %delivery.id, "user is connected; notification not sent");
                return Outcome::Done;
            }
            Ok(_) => {}
            Err(error) => return failed(shared, config, delivery, error),
        }
    }
    let timestamp = shared.clock.now_ms().div_euclid(1000);
    let sent = shared
        .http
        .post(&config.url)
        .timeout(Duration::from_millis(config.timeout_ms))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header(IDEMPOTENCY_HEADER, &delivery.id)
        .header(EVENT_HEADER, &delivery.kind)
        .header(TIMESTAMP_HEADER, timestamp.to_string())
        .header(
            SIGNATURE_HEADER,
            signature(config.secret.expose().as_bytes(), timestamp, &delivery.body),
        )
        .body(delivery.body.clone())
        .send()
        .await;
    match sent {
        Ok(response) if response.status().is_success() => Outcome::Done,
        Ok(response) => failed(
            shared,
            config,
            delivery,
            format!("HTTP {}", response.status().as_u16()),
        ),
        Err(error) => failed(shared, config, delivery, error.without_url().to_string()),
    }
}

/// A failed attempt: retry after the backoff, or a dead letter once the
/// attempts are used up.
fn failed(
    shared: &Shared,
    config: &common::config::WebhookConfig,
    delivery: &Claimed,
    error: String,
) -> Outcome {
    let now = shared.clock.now_ms();
    let made = delivery.attempts.saturating_add(1);
    if made >= config.max_attempts {
        return Outcome::Dead { at: now, error };
    }
    Outcome::Retry {
        next_at: now + backoff_ms(config, made) as i64,
        error,
    }
}

/// The pause after the `made`-th failed attempt: `retry_base_ms`, doubling
/// with each further one, at most `retry_max_ms`.
pub(super) fn backoff_ms(config: &common::config::WebhookConfig, made: u32) -> u64 {
    let doublings = made.saturating_sub(1).min(40);
    config
        .retry_base_ms
        .saturating_mul(1u64 << doublings)
        .min(config.retry_max_ms)
}
