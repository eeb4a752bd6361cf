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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use async_trait::async_trait;
    use common::Secret;
    use common::bus::MemoryBus;
    use common::config::PresenceConfig;
    use common::grpc::{ClientSettings, channel};
    use presence_service::{
        Call, CallAction, Ended, MemoryStore, Presence, PresenceApp, PresenceError, PresenceStore,
        Sweep, Timings,
    };

    use super::*;

    /// The real memory store, noting the connections of every renewal.
    #[derive(Default)]
    struct NotingStore {
        inner: MemoryStore,
        renewals: Mutex<Vec<Vec<String>>>,
    }

    #[async_trait]
    impl PresenceStore for NotingStore {
        async fn register(
            &self,
            edge_id: &str,
            conn_id: &str,
            user_id: &str,
            ttl: Duration,
        ) -> Result<bool, PresenceError> {
            self.inner.register(edge_id, conn_id, user_id, ttl).await
        }
        async fn renew(
            &self,
            edge_id: &str,
            conn_ids: &[String],
            ttl: Duration,
        ) -> Result<Vec<String>, PresenceError> {
            let mut noted = conn_ids.to_vec();
            noted.sort();
            self.renewals.lock().expect("lock").push(noted);
            self.inner.renew(edge_id, conn_ids, ttl).await
        }
        async fn release(&self, conn_ids: &[String]) -> Result<Vec<Ended>, PresenceError> {
            self.inner.release(conn_ids).await
        }
        async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError> {
            self.inner.presence(user_ids).await
        }
        async fn set_status(
            &self,
            user_id: &str,
            status: &str,
            text: &str,
        ) -> Result<(String, String), PresenceError> {
            self.inner.set_status(user_id, status, text).await
        }
        async fn sweep(&self, grace: Duration) -> Result<Sweep, PresenceError> {
            self.inner.sweep(grace).await
        }
        async fn forget(&self, user_id: &str) -> Result<(), PresenceError> {
            self.inner.forget(user_id).await
        }
        async fn create_call(&self, call: &Call, ring: Duration) -> Result<(), PresenceError> {
            self.inner.create_call(call, ring).await
        }
        async fn act_on_call(
            &self,
            call_id: &str,
            user_id: &str,
            action: CallAction,
        ) -> Result<Call, PresenceError> {
            self.inner.act_on_call(call_id, user_id, action).await
        }

        async fn counts(&self) -> Result<presence_service::Counts, PresenceError> {
            self.inner.counts().await
        }
    }

    #[tokio::test]
    async fn one_renew_call_covers_every_live_connection() {
        let store = Arc::new(NotingStore::default());
        let credential = Secret::new(common::ids::random_secret(32));
        let app = PresenceApp::with_store(
            store.clone(),
            Timings::from_config(&PresenceConfig::default()),
            Arc::new(MemoryBus::new()),
            None,
            &credential,
            &common::metrics::Metrics::new(&["presence"]),
        );
        let server =
            common::testing::serve_grpc(|listener, signal| app.run_until_stopped(listener, signal))
                .await;
        let (url, shutdown) = (server.url, server.shutdown);
        let settings = ClientSettings {
            credential,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        };
        let client = PresenceServiceClient::new(channel(&url, &settings).expect("channel"));
        // The loop's own interval is far away; the test renews by hand.
        let leases = Leases::start(client, Duration::from_secs(3600), shutdown.signal());

        leases.register("c1", "alice").await;
        leases.register("c2", "alice").await;
        leases.register("c3", "bob").await;
        leases.renew().await;
        leases.release("c2").await;
        leases.renew().await;

        let renewals = store.renewals.lock().expect("lock").clone();
        assert_eq!(
            renewals,
            [vec!["c1", "c2", "c3"], vec!["c1", "c3"]],
            "one call per round, holding every live connection and no released one"
        );
    }
}
