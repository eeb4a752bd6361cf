//! The planner: follows the log from each endpoint's stored cursor and
//! turns the events its filter takes into deliveries, storing them and the
//! moved cursor in one transaction.

use std::sync::Arc;

use common::config::WebhookConfig;
use common::shutdown::ShutdownSignal;
use proto::chat::v1::WatchEvent;
use serde_json::{Value, json};

use super::{Endpoint, OFFLINE_NOTIFICATION, ROOM_EVENT, Shared, parse};
use crate::error::ChatError;
use crate::store::webhooks::NewDelivery;

/// Log events read at a time.
const PAGE: u32 = 256;

pub(super) async fn run(shared: Arc<Shared>, shutdown: ShutdownSignal) {
    let mut appended = shared.store.appended.subscribe();
    let stopped = shutdown.wait();
    tokio::pin!(stopped);
    loop {
        appended.mark_unchanged();
        for endpoint in &shared.endpoints {
            if let Err(error) = plan(&shared, endpoint).await {
                tracing::warn!(%error, endpoint = %endpoint.config.name, "cannot plan webhooks");
            }
        }
        tokio::select! {
            _ = appended.changed() => {}
            () = tokio::time::sleep(shared.poll) => {}
            () = &mut stopped => return,
        }
    }
}

/// Plans everything after the endpoint's cursor.
async fn plan(shared: &Shared, endpoint: &Endpoint) -> Result<(), ChatError> {
    let name = &endpoint.config.name;
    loop {
        let cursor = shared.store.webhook_cursor(name).await?;
        let events = shared.store.log_after(cursor, &[], PAGE).await?;
        let Some(last) = events.last().map(|e| e.position) else {
            return Ok(());
        };
        let mut deliveries = Vec::new();
        for event in &events {
            deliveries.extend(deliveries_of(shared, &endpoint.config, event).await?);
        }
        let now = shared.clock.now_ms();
        shared
            .store
            .enqueue_webhooks(name, &deliveries, Some(last), now)
            .await?;
        if !deliveries.is_empty() {
            shared.wake.notify_one();
        }
        if events.len() < PAGE as usize {
            return Ok(());
        }
    }
}

/// What one log event becomes for one endpoint.
pub(super) async fn deliveries_of(
    shared: &Shared,
    config: &WebhookConfig,
    event: &WatchEvent,
) -> Result<Vec<NewDelivery>, ChatError> {
    let mut deliveries = Vec::new();
    let parsed = parse(&event.json);
    if config.wants_kind(&event.kind) {
        let id = format!("{}:{}", config.name, event.position);
        let body = json!({
            "type": ROOM_EVENT,
            "id": id,
            "position": event.position,
            "room": event.room_id,
            "seq": event.seq,
            "kind": event.kind,
            "created_at": event.created_at,
            "event": parsed,
        });
        deliveries.push(NewDelivery {
            id,
            kind: ROOM_EVENT.into(),
            user_id: None,
            body: body.to_string(),
        });
    }
    if config.wants_offline_notifications() && event.kind == "message.new" {
        let message = &parsed["message"];
        let (Some(message_id), Some(sender)) =
            (message["id"].as_str(), message["sender"]["id"].as_str())
        else {
            return Ok(deliveries);
        };
        let recipients = shared
            .store
            .message_recipients(&event.room_id, message_id, sender)
            .await?;
        for (user, reason, notification) in recipients {
            let id = format!("{}:{}:{}", config.name, event.position, user);
            let body = json!({
                "type": OFFLINE_NOTIFICATION,
                "id": id,
                "user": user,
                "reason": reason,
                "room": event.room_id,
                "position": event.position,
                "created_at": event.created_at,
                "message": message,
                "notification": notification.as_deref().map_or(Value::Null, parse),
            });
            deliveries.push(NewDelivery {
                id,
                kind: OFFLINE_NOTIFICATION.into(),
                user_id: Some(user),
                body: body.to_string(),
            });
        }
    }
    Ok(deliveries)
}
