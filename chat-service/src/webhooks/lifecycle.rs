//! Connection events for webhooks: follows presence-service's `Watch`
//! (every user) and queues `connection.connected` / `connection.disconnected`
//! for the endpoints whose filters name them. Presence's stream is at most
//! once — what happens while this task is disconnected from it is not
//! replayed — but once queued a delivery is durable like any other. Every
//! replica follows the stream; a delivery's id (endpoint, connection, kind)
//! stores it once.

use std::sync::Arc;

use common::grpc::ServiceChannel;
use common::shutdown::ShutdownSignal;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::watch_event::Kind;
use proto::presence::v1::{WatchEvent, WatchRequest};
use serde_json::json;

use super::Shared;
use crate::store::webhooks::NewDelivery;

/// The payload type of a connection event.
pub(crate) fn connection_kind(event: &WatchEvent) -> Option<&'static str> {
    match event.kind() {
        Kind::Connected => Some("connection.connected"),
        Kind::Disconnected => Some("connection.disconnected"),
        _ => None,
    }
}

/// Queues one presence event for every endpoint that takes it.
pub(super) async fn queue(shared: &Shared, event: &WatchEvent) {
    let Some(kind) = connection_kind(event) else {
        return;
    };
    let now = shared.clock.now_ms();
    let mut queued = false;
    for endpoint in &shared.endpoints {
        if !endpoint.config.wants_connection(kind) {
            continue;
        }
        let id = format!("{}:{}:{}", endpoint.config.name, kind, event.conn_id);
        let body = json!({
            "type": kind,
            "id": id,
            "user": event.user_id,
            "conn_id": event.conn_id,
            "edge": event.edge_id,
            "at": event.at,
        });
        let delivery = NewDelivery {
            id,
            kind: kind.into(),
            user_id: None,
            body: body.to_string(),
        };
        match shared
            .store
            .enqueue_webhooks(&endpoint.config.name, &[delivery], None, now)
            .await
        {
            Ok(()) => queued = true,
            Err(error) => {
                tracing::warn!(%error, endpoint = %endpoint.config.name, "cannot queue webhook");
            }
        }
    }
    if queued {
        shared.wake.notify_one();
    }
}

/// Follows presence's `Watch` until `shutdown`, watching again after
/// `shared.poll` when the stream fails or ends.
pub(super) async fn follow(
    shared: Arc<Shared>,
    presence: PresenceServiceClient<ServiceChannel>,
    shutdown: ShutdownSignal,
) {
    let stopped = shutdown.wait();
    tokio::pin!(stopped);
    loop {
        let watched = async {
            let mut stream = presence
                .clone()
                .watch(WatchRequest {
                    user_ids: Vec::new(),
                })
                .await?
                .into_inner();
            while let Some(event) = stream.message().await? {
                queue(&shared, &event).await;
            }
            Ok::<(), tonic::Status>(())
        };
        tokio::select! {
            result = watched => {
                if let Err(status) = result {
                    tracing::info!(code = ?status.code(), "presence watch for webhooks ended; watching again");
                }
            }
            () = &mut stopped => return,
        }
        tokio::select! {
            () = tokio::time::sleep(shared.poll) => {}
            () = &mut stopped => return,
        }
    }
}
