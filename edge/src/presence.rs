//! Presence leases of this edge's authenticated connections: registered on
//! auth, renewed for all connections with one batched call per interval,
//! released on close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::grpc::ServiceChannel;
use common::shutdown::ShutdownSignal;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::{RegisterRequest, ReleaseRequest, RenewRequest};

#[derive(Clone)]
pub struct Leases {
    edge_id: Arc<String>,
    client: PresenceServiceClient<ServiceChannel>,
    /// conn id → user id of every live authenticated connection.
    live: Arc<Mutex<HashMap<String, String>>>,
}

impl Leases {
    pub fn start(
        client: PresenceServiceClient<ServiceChannel>,
        every: Duration,
        shutdown: ShutdownSignal,
    ) -> Self {
        let leases = Self {
            edge_id: Arc::new(common::ids::new_id("e")),
            client,
            live: Arc::default(),
        };
        let renewer = leases.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tokio::select! {
                    _ = tick.tick() => renewer.renew().await,
                    _ = shutdown.clone().wait() => break,
                }
            }
        });
        leases
    }

    pub async fn register(&self, conn_id: &str, user_id: &str) {
        self.lock().insert(conn_id.to_string(), user_id.to_string());
        self.register_remote(conn_id, user_id).await;
    }

    async fn register_remote(&self, conn_id: &str, user_id: &str) {
        let request = RegisterRequest {
            edge_id: self.edge_id.to_string(),
            conn_id: conn_id.to_string(),
            user_id: user_id.to_string(),
            ttl_ms: 0,
        };
        if let Err(e) = self.client.clone().register(request).await {
            tracing::warn!(conn_id, error = %e.message(), "presence register failed; the renew loop retries");
        }
    }

    pub async fn release(&self, conn_id: &str) {
        if self.lock().remove(conn_id).is_none() {
            return;
        }
        let request = ReleaseRequest {
            conn_ids: vec![conn_id.to_string()],
        };
        if let Err(e) = self.client.clone().release(request).await {
            tracing::warn!(conn_id, error = %e.message(), "presence release failed; the lease will expire");
        }
    }

    async fn renew(&self) {
        let conn_ids: Vec<String> = self.lock().keys().cloned().collect();
        if conn_ids.is_empty() {
            return;
        }
        let request = RenewRequest {
            edge_id: self.edge_id.to_string(),
            conn_ids,
            ttl_ms: 0,
        };
        match self.client.clone().renew(request).await {
            Ok(response) => {
                for conn_id in response.into_inner().unknown_conn_ids {
                    let user = self.lock().get(&conn_id).cloned();
                    if let Some(user_id) = user {
                        self.register_remote(&conn_id, &user_id).await;
                    }
                }
            }
            Err(e) => tracing::warn!(error = %e.message(), "presence renew failed"),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}
