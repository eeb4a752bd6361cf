//! Presence leases of this edge's authenticated connections: registered on
//! auth and released on close (the connections that sign in, or close,
//! while such a call is in flight go together in the next one), renewed for
//! all connections with one batched call per interval; and the edge's
//! presence lookups (`room.join`'s `online[]`), batched the same way, each
//! user asked about once at a time (joins of a room arriving together
//! share the next lookup of a user, begun after they asked).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::coalesce::Coalesce;
use common::grpc::ServiceChannel;
use common::shutdown::ShutdownSignal;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use proto::presence::v1::{
    GetPresenceRequest, Lease, MAX_CONNS_PER_CALL, MAX_LEASES_PER_CALL, MAX_USERS_PER_CALL,
    RegisterRequest, ReleaseRequest, RenewRequest,
};
use tokio::sync::{mpsc, oneshot};

/// An item queued for the next batched call, and who waits for its answer.
type Queued<T, R = ()> = (T, oneshot::Sender<R>);

#[derive(Clone)]
pub struct Leases {
    remote: Remote,
    /// conn id → user id of every live authenticated connection.
    live: Arc<Mutex<HashMap<String, String>>>,
    /// Leases to register, and connections to release: each sent by a
    /// task of its own, everything waiting in one call.
    registering: mpsc::UnboundedSender<Queued<Lease>>,
    releasing: mpsc::UnboundedSender<Queued<String>>,
    /// Users whose presence is looked up; the answer is whether they are
    /// online (`None`: the lookup failed).
    looking_up: mpsc::UnboundedSender<Queued<String, Option<bool>>>,
    /// Lookups by user: a user asked about by many joins at once is in
    /// one call, not in one item per join.
    lookups: Arc<Coalesce<String, Option<Option<bool>>>>,
}

impl Leases {
    pub fn start(
        client: PresenceServiceClient<ServiceChannel>,
        every: Duration,
        shutdown: ShutdownSignal,
    ) -> Self {
        let remote = Remote {
            edge_id: Arc::new(common::ids::new_id("e")),
            client,
        };
        let registrar = remote.clone();
        let releaser = remote.clone();
        let looker = remote.clone();
        let leases = Self {
            registering: batched(MAX_LEASES_PER_CALL, move |leases| {
                let remote = registrar.clone();
                async move {
                    let answers = vec![(); leases.len()];
                    remote.register(leases).await;
                    answers
                }
            }),
            releasing: batched(MAX_CONNS_PER_CALL, move |conn_ids| {
                let remote = releaser.clone();
                async move {
                    let answers = vec![(); conn_ids.len()];
                    remote.release(conn_ids).await;
                    answers
                }
            }),
            looking_up: batched(MAX_USERS_PER_CALL, move |users| {
                let remote = looker.clone();
                async move { remote.online(users).await }
            }),
            remote,
            live: Arc::default(),
            lookups: Arc::default(),
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

    /// Registers a connection's lease; returns once presence-service has
    /// it (or the call failed: the renew loop registers it again then).
    pub async fn register(&self, conn_id: &str, user_id: &str) {
        self.lock().insert(conn_id.to_string(), user_id.to_string());
        let lease = Lease {
            conn_id: conn_id.to_string(),
            user_id: user_id.to_string(),
        };
        enqueue(&self.registering, lease).await;
    }

    /// Ends a connection's lease; returns once the call is answered (a
    /// lease whose release failed expires on its own).
    pub async fn release(&self, conn_id: &str) {
        if self.lock().remove(conn_id).is_none() {
            return;
        }
        enqueue(&self.releasing, conn_id.to_string()).await;
    }

    /// Which of `users` are online (seen as others see them: invisible
    /// users are not); users whose lookup failed are left out. Lookups of
    /// many joins at once share calls.
    pub async fn online(&self, users: &[String]) -> HashMap<String, bool> {
        let asked = users.iter().map(|user| async move {
            let lookup = || enqueue(&self.looking_up, user.clone());
            let online = self.lookups.get(user.clone(), lookup).await??;
            Some((user.clone(), online))
        });
        futures::future::join_all(asked)
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    /// Renews every live lease: one call per interval, or a few when the
    /// edge holds more connections than one call may name.
    async fn renew(&self) {
        let conn_ids: Vec<String> = self.lock().keys().cloned().collect();
        for chunk in conn_ids.chunks(MAX_CONNS_PER_CALL) {
            let unknown = self.remote.renew(chunk.to_vec()).await;
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
                self.remote.register(chunk.to_vec()).await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, String>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// presence-service, as this edge calls it.
#[derive(Clone)]
struct Remote {
    edge_id: Arc<String>,
    client: PresenceServiceClient<ServiceChannel>,
}

impl Remote {
    /// Whether each of `users` (at most a call's worth) is online, in order.
    async fn online(&self, users: Vec<String>) -> Vec<Option<bool>> {
        let unique: HashSet<&String> = users.iter().collect();
        let request = GetPresenceRequest {
            user_ids: unique.into_iter().cloned().collect(),
        };
        let seen: HashMap<String, bool> = match self.client.clone().get_presence(request).await {
            Ok(response) => response
                .into_inner()
                .presence
                .into_iter()
                .map(|p| (p.user_id, p.online))
                .collect(),
            Err(e) => {
                tracing::warn!(users = users.len(), error = %e.message(), "presence lookup failed");
                HashMap::new()
            }
        };
        users.iter().map(|user| seen.get(user).copied()).collect()
    }

    async fn register(&self, leases: Vec<Lease>) {
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

    async fn release(&self, conn_ids: Vec<String>) {
        let count = conn_ids.len();
        if let Err(e) = self
            .client
            .clone()
            .release(ReleaseRequest { conn_ids })
            .await
        {
            tracing::warn!(leases = count, error = %e.message(), "presence release failed; the leases will expire");
        }
    }

    /// Renews the leases; returns those presence-service no longer knew.
    async fn renew(&self, conn_ids: Vec<String>) -> Vec<String> {
        let request = RenewRequest {
            edge_id: self.edge_id.to_string(),
            conn_ids,
            ttl_ms: 0,
        };
        match self.client.clone().renew(request).await {
            Ok(response) => response.into_inner().unknown_conn_ids,
            Err(e) => {
                tracing::warn!(error = %e.message(), "presence renew failed");
                Vec::new()
            }
        }
    }
}

/// A task sending what callers queue, at most `max` items a call and all
/// that are waiting: under a burst (sign-ins, a reconnect storm) one call
/// per round trip instead of one per connection. `send` answers each item,
/// in order.
fn batched<T, R, F, Fut>(max: usize, send: F) -> mpsc::UnboundedSender<Queued<T, R>>
where
    T: Send + 'static,
    R: Send + 'static,
    F: Fn(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Vec<R>> + Send,
{
    let (queue, mut queued) = mpsc::unbounded_channel::<Queued<T, R>>();
    tokio::spawn(async move {
        let mut batch = Vec::new();
        while queued.recv_many(&mut batch, max).await > 0 {
            let (items, waiting): (Vec<T>, Vec<oneshot::Sender<R>>) =
                std::mem::take(&mut batch).into_iter().unzip();
            for (done, answer) in waiting.into_iter().zip(send(items).await) {
                let _ = done.send(answer);
            }
        }
    });
    queue
}

/// Queues `item` and waits until the call carrying it is answered
/// (`None`: the batching task is gone).
async fn enqueue<T, R>(queue: &mpsc::UnboundedSender<Queued<T, R>>, item: T) -> Option<R> {
    let (done, answer) = oneshot::channel();
    queue.send((item, done)).ok()?;
    answer.await.ok()
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

    /// gRPC calls of `method` presence-service has taken.
    fn calls(metrics: &common::metrics::Metrics, method: &str) -> f64 {
        metrics
            .sample("grpc_server_started_total", &[("grpc_method", method)])
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
    async fn connections_that_sign_in_close_or_look_up_together_share_calls() {
        let store = Arc::new(NotingStore::default());
        let (leases, metrics, _server) = leases_on(store.clone()).await;
        let all = |release: bool| {
            let tasks: Vec<_> = (0..200)
                .map(|n| {
                    let leases = leases.clone();
                    tokio::spawn(async move {
                        let conn = format!("c{n}");
                        match release {
                            false => leases.register(&conn, &format!("u{n}")).await,
                            true => leases.release(&conn).await,
                        }
                    })
                })
                .collect();
            async move {
                for task in tasks {
                    task.await.expect("answered");
                }
            }
        };
        let users: Vec<String> = (0..200).map(|n| format!("u{n}")).collect();

        all(false).await;
        // Each returned once its lease was in: all 200 are online.
        let seen = store.presence(&users).await.expect("presence");
        assert!(seen.iter().all(|p| p.online), "every lease registered");
        let registers = calls(&metrics, "Register");
        assert!(
            (1.0..200.0).contains(&registers),
            "200 sign-ins at once took {registers} Register calls"
        );

        // 200 joins asking at once who is online share lookups too.
        let asked: Vec<_> = (0..200)
            .map(|n| {
                let leases = leases.clone();
                tokio::spawn(async move {
                    let users = [format!("u{n}"), "nobody".to_string()];
                    leases.online(&users).await
                })
            })
            .collect();
        for (n, answer) in asked.into_iter().enumerate() {
            let answer = answer.await.expect("answered");
            let expected = HashMap::from([(format!("u{n}"), true), ("nobody".into(), false)]);
            assert_eq!(answer, expected);
        }
        let lookups = calls(&metrics, "GetPresence");
        assert!(
            (1.0..200.0).contains(&lookups),
            "200 lookups at once took {lookups} GetPresence calls"
        );

        all(true).await;
        let seen = store.presence(&users).await.expect("presence");
        assert!(seen.iter().all(|p| !p.online), "every lease released");
        let releases = calls(&metrics, "Release");
        assert!(
            (1.0..200.0).contains(&releases),
            "200 closes at once took {releases} Release calls"
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
