//! Presence leases of this edge's authenticated connections: registered on
//! auth (the connections that sign in while a registration call is in
//! flight go together in the next one), renewed for all connections with
//! one batched call per interval, released on close.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::grpc::ServiceChannel;
use common::shutdown::ShutdownSignal;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::{
    Lease, MAX_CONNS_PER_CALL, MAX_LEASES_PER_CALL, RegisterRequest, ReleaseRequest, RenewRequest,
};
use tokio::sync::{mpsc, oneshot};

/// A lease waiting for the next registration call, and who waits for it.
type Pending = (Lease, oneshot::Sender<()>);

#[derive(Clone)]
pub struct Leases {
    edge_id: Arc<String>,
    client: PresenceServiceClient<ServiceChannel>,
    /// conn id → user id of every live authenticated connection.
    live: Arc<Mutex<HashMap<String, String>>>,
    /// Leases for the registering task.
    pending: mpsc::UnboundedSender<Pending>,
}

impl Leases {
    pub fn start(
        client: PresenceServiceClient<ServiceChannel>,
        every: Duration,
        shutdown: ShutdownSignal,
    ) -> Self {
        let (pending, queued) = mpsc::unbounded_channel();
        let leases = Self {
            edge_id: Arc::new(common::ids::new_id("e")),
            client,
            live: Arc::default(),
            pending,
        };
        tokio::spawn(leases.clone().register_batches(queued));
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

    /// Registers a connection's lease; returns once presence-service has
    /// it (or the call failed: the renew loop registers it again then).
    pub async fn register(&self, conn_id: &str, user_id: &str) {
        self.lock().insert(conn_id.to_string(), user_id.to_string());
        let (done, registered) = oneshot::channel();
        let lease = Lease {
            conn_id: conn_id.to_string(),
            user_id: user_id.to_string(),
        };
        if self.pending.send((lease, done)).is_ok() {
            let _ = registered.await;
        }
    }

    /// Sends the queued leases, all that are waiting in one call: under a
    /// burst of sign-ins, one call per round trip instead of one per
    /// connection.
    async fn register_batches(self, mut queued: mpsc::UnboundedReceiver<Pending>) {
        let mut batch = Vec::new();
        while queued.recv_many(&mut batch, MAX_LEASES_PER_CALL).await > 0 {
            let (leases, waiting): (Vec<Lease>, Vec<oneshot::Sender<()>>) =
                std::mem::take(&mut batch).into_iter().unzip();
            self.register_remote(leases).await;
            for done in waiting {
                let _ = done.send(());
            }
        }
    }

    async fn register_remote(&self, leases: Vec<Lease>) {
        let count = leases.len();
        let request = RegisterRequest {
            edge_id: self.edge_id.to_string(),
            leases,
            ..RegisterRequest::default()
        };
        if let Err(e) = self.client.clone().register(request).await {
            tracing::warn!(leases = count, error = %e.message(), "presence register failed; the renew loop retries");
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

    /// Renews every live lease: one call per interval, or a few when the
    /// edge holds more connections than one call may name.
    async fn renew(&self) {
        let conn_ids: Vec<String> = self.lock().keys().cloned().collect();
        for chunk in conn_ids.chunks(MAX_CONNS_PER_CALL) {
            self.renew_some(chunk.to_vec()).await;
        }
    }

    async fn renew_some(&self, conn_ids: Vec<String>) {
        let request = RenewRequest {
            edge_id: self.edge_id.to_string(),
            conn_ids,
            ttl_ms: 0,
        };
        match self.client.clone().renew(request).await {
            Ok(response) => {
                let unknown = response.into_inner().unknown_conn_ids;
                let leases: Vec<Lease> = {
                    let live = self.lock();
                    unknown
                        .into_iter()
                        .filter_map(|conn_id| {
                            let user_id = live.get(&conn_id)?.clone();
                            Some(Lease { conn_id, user_id })
                        })
                        .collect()
                };
                for chunk in leases.chunks(MAX_LEASES_PER_CALL) {
                    self.register_remote(chunk.to_vec()).await;
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

    /// A real presence-service on `store`, and the edge's leases talking
    /// to it (their own renew interval far away: tests renew by hand).
    async fn leases_on(
        store: Arc<NotingStore>,
    ) -> (
        Leases,
        Arc<common::metrics::Metrics>,
        common::testing::TestServer,
    ) {
        let credential = Secret::new(common::ids::random_secret(32));
        let metrics = common::metrics::Metrics::new(&["presence"]);
        let app = PresenceApp::with_store(
            store,
            Timings::from_config(&PresenceConfig::default()),
            Arc::new(MemoryBus::new()),
            None,
            &credential,
            &metrics,
        );
        let server =
            common::testing::serve_grpc(|listener, signal| app.run_until_stopped(listener, signal))
                .await;
        let settings = ClientSettings {
            credential,
            connect_timeout: Duration::from_secs(2),
            timeout: Duration::from_secs(5),
        };
        let client = PresenceServiceClient::new(channel(&server.url, &settings).expect("channel"));
        let leases = Leases::start(client, Duration::from_secs(3600), server.shutdown.signal());
        (leases, metrics, server)
    }

    fn register_calls(metrics: &common::metrics::Metrics) -> f64 {
        metrics
            .sample("grpc_server_started_total", &[("grpc_method", "Register")])
            .unwrap_or(0.0)
    }

    #[tokio::test]
    async fn one_renew_call_covers_every_live_connection() {
        let store = Arc::new(NotingStore::default());
        let (leases, _metrics, _server) = leases_on(store.clone()).await;

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

    #[tokio::test]
    async fn connections_that_sign_in_together_share_registration_calls() {
        let store = Arc::new(NotingStore::default());
        let (leases, metrics, _server) = leases_on(store.clone()).await;
        let signing_in: Vec<_> = (0..200)
            .map(|n| {
                let leases = leases.clone();
                tokio::spawn(
                    async move { leases.register(&format!("c{n}"), &format!("u{n}")).await },
                )
            })
            .collect();
        for task in signing_in {
            task.await.expect("registered");
        }
        // Each one returned once its lease was in: all 200 are online.
        let users: Vec<String> = (0..200).map(|n| format!("u{n}")).collect();
        let online = store.presence(&users).await.expect("presence");
        assert!(online.iter().all(|p| p.online), "every lease registered");
        let calls = register_calls(&metrics);
        assert!(
            (1.0..200.0).contains(&calls),
            "200 sign-ins at once took {calls} Register calls"
        );
    }

    #[tokio::test]
    async fn an_edge_with_more_connections_than_one_call_may_name_renews_them_all() {
        let store = Arc::new(NotingStore::default());
        let (leases, _metrics, _server) = leases_on(store.clone()).await;
        let n = MAX_CONNS_PER_CALL + 5;
        leases
            .lock()
            .extend((0..n).map(|i| (format!("c{i}"), format!("u{i}"))));
        leases.renew().await;
        let renewals = store.renewals.lock().expect("lock").clone();
        let sizes: Vec<usize> = renewals.iter().map(Vec::len).collect();
        assert_eq!(
            sizes,
            [MAX_CONNS_PER_CALL, 5],
            "every lease, within the call limit"
        );
    }
}
