//! The production topology, rolled while it carries traffic: the five
//! binaries as separate processes, two of each, configured only by what
//! the production overlay renders (its ConfigMap, its environment, its
//! mounted Secrets), on a Postgres and a Redis that demand TLS. While
//! clients on both edges send a steady stream, every component is replaced
//! pod by pod the way a rolling update does it (new pod ready, endpoints
//! updated, preStop, SIGTERM, drain). Every client must end with exactly
//! the stored log, and the clients of a draining edge must reconnect spread
//! over its drain period.
//!
//! Pods: each gets its own loopback address (127.0.<component>.<n>) and the
//! ports its manifest gives; the headless Services are an `/etc/hosts` of
//! the test's own, bind-mounted into each process's mount namespace
//! (`unshare`), listing the ready pods as Kubernetes' DNS would. So it needs
//! root, the built binaries (`cargo build --workspace --bins`), kubectl,
//! Postgres's programs, redis-server and openssl. It runs when
//! `PARLEY_TEST_TOPOLOGY` is set (CI sets it) and then fails loudly when any
//! of these is missing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::testing::deploy::{Deployment, Rendered};
use common::testing::tls::{TestCerts, free_port, run_ok};
use serde_json::json;

use crate::helpers::{Client, PrivateRedis, SECRET, http_get, token};
use crate::resilient::{Resilient, SignIn};

/// Rooms the stream is spread over.
const ROOMS: usize = 10;
/// Members of each room; each sends and receives the whole room.
const MEMBERS: usize = 10;
/// Each sender's pace: steady, and within the production overlay's
/// per-user message limit (60 a minute).
const SEND_EVERY: Duration = Duration::from_millis(1_100);
/// The stream carries at least this many messages.
const AT_LEAST: usize = 5_000;
/// The order of the roll: services first, edges last.
const ROLL_ORDER: [&str; 5] = ["auth", "presence", "chat", "ai", "edge"];
/// How long a new pod may take to become ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// The test's own certificate authority, a server certificate for
/// `localhost` signed by it, and the backends that serve it.
struct Backends {
    /// The CA and server files; Postgres's data lives beside them.
    certs: TestCerts,
    postgres: Child,
    postgres_port: u16,
    /// Stopped on drop.
    _redis: PrivateRedis,
    redis_port: u16,
}

const REDIS_USER: &str = "parley";
const REDIS_PASSWORD: &str = "topology-redis-password-0123456789";

impl Backends {
    async fn start() -> Backends {
        let certs = TestCerts::new("topology-backends");
        let dir = certs.dir().to_path_buf();

        // Postgres refuses to run as root: its files belong to `postgres`.
        run_ok(
            Command::new("chown")
                .args(["-R", "postgres", "."])
                .current_dir(&dir),
        );
        run_ok(
            Command::new("chmod")
                .args(["600", "server.key"])
                .current_dir(&dir),
        );
        let as_postgres = |program: &str| {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--", program]).current_dir(&dir);
            c
        };
        run_ok(as_postgres("initdb").args(["-D", "pg", "-U", "postgres", "--auth=trust"]));
        let postgres_port = free_port();
        let postgres = as_postgres("postgres")
            .args([
                "-D",
                "pg",
                "-k",
                ".",
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
            ])
            .arg("-p")
            .arg(postgres_port.to_string())
            .arg("-c")
            .arg(format!("ssl_cert_file={}", certs.server_cert().display()))
            .arg("-c")
            .arg(format!("ssl_key_file={}", certs.server_key().display()))
            .arg("-c")
            .arg("max_connections=200")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("postgres starts");

        let redis_port = free_port();
        let redis = PrivateRedis::start_with(&[
            "--tls-port".into(),
            redis_port.to_string(),
            "--tls-cert-file".into(),
            certs.server_cert().display().to_string(),
            "--tls-key-file".into(),
            certs.server_key().display().to_string(),
            "--tls-ca-cert-file".into(),
            certs.ca().display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
            "--user".into(),
            "default".into(),
            "off".into(),
            "--user".into(),
            REDIS_USER.into(),
            "on".into(),
            format!(">{REDIS_PASSWORD}"),
            "~*".into(),
            "&*".into(),
            "+@all".into(),
        ])
        .await;

        let backends = Backends {
            certs,
            postgres,
            postgres_port,
            _redis: redis,
            redis_port,
        };
        backends.wait_for_postgres().await;
        backends
    }

    fn ca(&self) -> PathBuf {
        self.certs.ca()
    }

    fn database_url(&self) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.postgres_port,
            self.ca().display()
        )
    }

    fn redis_url(&self) -> String {
        format!(
            "rediss://{REDIS_USER}:{REDIS_PASSWORD}@localhost:{}",
            self.redis_port
        )
    }

    async fn wait_for_postgres(&self) {
        sqlx::any::install_default_drivers();
        let started = Instant::now();
        loop {
            let attempt = sqlx::any::AnyPoolOptions::new()
                .max_connections(1)
                .connect(&self.database_url())
                .await;
            match attempt {
                Ok(pool) => {
                    pool.close().await;
                    return;
                }
                Err(e) if started.elapsed() > READY_WITHIN => {
                    panic!("the TLS Postgres never accepted a verified connection: {e}")
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        // Before the certificates' directory, which holds its data, goes.
        let _ = self.postgres.kill();
        let _ = self.postgres.wait();
    }
}

/// One running pod.
struct Pod {
    name: String,
    ip: Ipv4Addr,
    child: Child,
}

/// The cluster: the rendered manifests, the pods of each Deployment, and
/// the hosts file that stands in for cluster DNS.
struct Cluster {
    root: PathBuf,
    bins: PathBuf,
    deployments: BTreeMap<String, Deployment>,
    secrets: BTreeMap<String, BTreeMap<String, String>>,
    hosts: PathBuf,
    pods: BTreeMap<String, Vec<Pod>>,
    /// The next pod number of each component (pods never reuse addresses).
    next: BTreeMap<String, u8>,
    /// What the clients' ingress balances over: the ready edges.
    ingress: Ingress,
}

/// Each component's third address octet.
fn octet(component: &str) -> u8 {
    match component {
        "edge" => 1,
        "auth" => 2,
        "chat" => 3,
        "ai" => 4,
        "presence" => 5,
        other => panic!("unknown component {other}"),
    }
}

impl Cluster {
    fn new(root: &Path, rendered: &Rendered, backends: &Backends) -> Cluster {
        let bins = bins_dir();
        let deployments: BTreeMap<String, Deployment> = rendered
            .deployments()
            .into_iter()
            .map(|d| (d.component.clone(), d))
            .collect();
        assert_eq!(deployments.len(), 5, "five Deployments");
        for d in deployments.values() {
            assert!(
                bins.join(&d.binary).exists(),
                "{} is not built: run `cargo build --workspace --bins` first",
                bins.join(&d.binary).display()
            );
            assert!(
                d.replicas >= 2,
                "{}: production runs ≥ 2 replicas",
                d.binary
            );
        }
        let secrets = BTreeMap::from([
            (
                "parley-secrets".to_string(),
                BTreeMap::from([
                    (
                        "edge-credential".into(),
                        "topology-edge-credential-0123456789abcdef".into(),
                    ),
                    (
                        // The SHA-256 of the line above.
                        "edge-credential-sha256".into(),
                        "sha256:635debee5b8c7eb073acd4fb76f3279f127025ab594a6fe9d876ff8bf17bbde6"
                            .into(),
                    ),
                    (
                        "ai-credential".into(),
                        "topology-ai-credential-0123456789abcdef".into(),
                    ),
                    (
                        // The SHA-256 of the line above.
                        "ai-credential-sha256".into(),
                        "sha256:5170d0dc3e049adf62c25c8b8f6068983276df996b0e3639a053f659e9858629"
                            .into(),
                    ),
                    (
                        "presence-credential".into(),
                        "topology-presence-credential-0123456789abcdef".into(),
                    ),
                    (
                        // The SHA-256 of the line above.
                        "presence-credential-sha256".into(),
                        "sha256:e61e36ae7f95b62cdb370924688560b2cd9e3e94a7b16df11e60885008af30fd"
                            .into(),
                    ),
                    (
                        "chat-credential".into(),
                        "topology-chat-credential-0123456789abcdef".into(),
                    ),
                    (
                        // The SHA-256 of the line above.
                        "chat-credential-sha256".into(),
                        "sha256:5cd3f1e8b3a39dae332429203ca79708e5757776eb87cf1fb545ea90096ef9bd"
                            .into(),
                    ),
                    (
                        "bus-signing-key".into(),
                        "topology-bus-signing-key-0123456789abcdef".into(),
                    ),
                    ("auth-hs256-secret".into(), SECRET.to_string()),
                    ("database-url".into(), backends.database_url()),
                    ("redis-url".into(), backends.redis_url()),
                ]),
            ),
            (
                "parley-backend-ca".to_string(),
                BTreeMap::from([(
                    "ca.crt".into(),
                    std::fs::read_to_string(backends.ca()).expect("ca"),
                )]),
            ),
        ]);
        let hosts = root.join("hosts");
        let cluster = Cluster {
            root: root.to_path_buf(),
            bins,
            deployments,
            secrets,
            hosts,
            pods: BTreeMap::new(),
            next: BTreeMap::new(),
            ingress: Ingress::default(),
        };
        cluster.write_hosts();
        cluster
    }

    /// Rewrites the hosts file in place (the bind mounts follow the inode):
    /// each component's Service name answers with its ready pods, and the
    /// ingress balances over the ready edges.
    fn write_hosts(&self) {
        *self.ingress.edges.lock().expect("ingress") = self
            .pods
            .get("edge")
            .map(|pods| {
                pods.iter()
                    .map(|p| format!("ws://{}/ws", self.addr("edge", p.ip)))
                    .collect()
            })
            .unwrap_or_default();
        let mut text = String::from("127.0.0.1 localhost\n");
        for (component, pods) in &self.pods {
            for pod in pods {
                text.push_str(&format!("{} parley-{component}\n", pod.ip));
            }
        }
        std::fs::write(&self.hosts, text).expect("hosts");
    }

    /// The configuration `component`'s pods run with.
    fn config(&self, component: &str) -> common::config::Config {
        let deployment = &self.deployments[component];
        let root = self.root.join("config-check");
        deployment
            .materialize(&root, &self.secrets)
            .expect("pod files");
        let secrets = &self.secrets["parley-secrets"];
        let env = deployment.localized_env(&root, |key| secrets.get(key).cloned());
        let args = deployment.localized_args(&root);
        let file = args
            .iter()
            .position(|a| a == "--config")
            .map(|i| PathBuf::from(&args[i + 1]));
        common::config::Config::load(file.as_deref(), env).expect("the overlay's config")
    }

    fn addr(&self, component: &str, ip: Ipv4Addr) -> SocketAddr {
        SocketAddr::from((ip, self.deployments[component].port))
    }

    /// Starts a new pod of `component` and waits until it is ready; it is
    /// not yet in the Service.
    async fn start_pod(&mut self, component: &str) -> Pod {
        let n = self.next.entry(component.to_string()).or_insert(1);
        let ip = Ipv4Addr::new(127, 0, octet(component), *n);
        *n += 1;
        let name = format!("parley-{component}-{}", ip.octets()[3]);
        let deployment = &self.deployments[component];
        let pod_root = self.root.join(&name);
        deployment
            .materialize(&pod_root, &self.secrets)
            .expect("pod files");
        let secrets = &self.secrets["parley-secrets"];
        let mut env = deployment.localized_env(&pod_root, |key| secrets.get(key).cloned());
        // The pod's own address (a pod's network namespace has its own).
        let section = component.to_ascii_uppercase();
        env.push((
            format!("PARLEY_{section}_LISTEN"),
            format!("{ip}:{}", deployment.port),
        ));
        if component == "edge" {
            // Clients come through the ingress, which here is 127.0.0.1,
            // and name themselves in X-Forwarded-For, as behind a real
            // ingress (whose pod address the overlay already trusts).
            env.push(("PARLEY_EDGE_TRUSTED_PROXIES".into(), "127.0.0.1/32".into()));
        } else {
            let metrics = deployment.metrics_port.expect("services expose metrics");
            env.push((
                format!("PARLEY_{section}_METRICS_LISTEN"),
                format!("{ip}:{metrics}"),
            ));
        }
        let log = std::fs::File::create(self.root.join(format!("{name}.log"))).expect("log");
        let child = Command::new("unshare")
            .args(["--mount", "--", "sh", "-c"])
            .arg(r#"mount --bind "$0" /etc/hosts && exec "$@""#)
            .arg(&self.hosts)
            .arg(self.bins.join(&deployment.binary))
            .args(deployment.localized_args(&pod_root))
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(env)
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("unshare starts the pod");
        let mut pod = Pod { name, ip, child };
        self.wait_ready(component, &mut pod).await;
        pod
    }

    async fn wait_ready(&self, component: &str, pod: &mut Pod) {
        let addr = self.addr(component, pod.ip);
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = pod.child.try_wait() {
                panic!(
                    "{} exited with {status}: {}",
                    pod.name,
                    self.log_tail(&pod.name)
                );
            }
            if started.elapsed() > READY_WITHIN {
                panic!(
                    "{} never became ready: {}",
                    pod.name,
                    self.log_tail(&pod.name)
                );
            }
            let ready = if component == "edge" {
                tokio::net::TcpStream::connect(addr).await.is_ok()
                    && http_get(addr, "/readyz", &[]).await.0 == 200
            } else {
                grpc_serving(addr).await
            };
            if ready {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text =
            std::fs::read_to_string(self.root.join(format!("{name}.log"))).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Brings every Deployment up to its replica count, services first.
    async fn deploy(&mut self) {
        for component in ROLL_ORDER {
            for _ in 0..self.deployments[component].replicas {
                let pod = self.start_pod(component).await;
                self.pods
                    .entry(component.to_string())
                    .or_default()
                    .push(pod);
                self.write_hosts();
            }
        }
    }

    /// Replaces every pod of `component` one by one as a rolling update
    /// with `maxSurge: 1, maxUnavailable: 0` does. Returns when each old
    /// pod got SIGTERM, for the edges' drain check.
    async fn roll(&mut self, component: &str) -> Vec<(Ipv4Addr, Instant)> {
        let deployment = self.deployments[component].clone();
        let mut terminated = Vec::new();
        for _ in 0..deployment.replicas {
            let new = self.start_pod(component).await;
            let pods = self.pods.get_mut(component).expect("pods");
            pods.push(new);
            let mut old = pods.remove(0);
            // Endpoints: the new pod is ready, the old one is terminating.
            self.write_hosts();
            // preStop, then SIGTERM; the pod must end within its grace.
            tokio::time::sleep(Duration::from_secs(deployment.pre_stop_s)).await;
            let status = Command::new("kill")
                .args(["-TERM", &old.child.id().to_string()])
                .status()
                .expect("kill");
            assert!(status.success(), "SIGTERM {}", old.name);
            terminated.push((old.ip, Instant::now()));
            let grace = Duration::from_secs(deployment.grace_s - deployment.pre_stop_s);
            let deadline = Instant::now() + grace;
            loop {
                if let Some(status) = old.child.try_wait().expect("wait") {
                    assert!(
                        status.success(),
                        "{} ended with {status} after SIGTERM: {}",
                        old.name,
                        self.log_tail(&old.name)
                    );
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "{} did not end within its grace period",
                    old.name
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
        terminated
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for pods in self.pods.values_mut() {
            for pod in pods {
                let _ = pod.child.kill();
                let _ = pod.child.wait();
            }
        }
    }
}

/// Whether the gRPC server at `addr` answers the standard health check
/// with SERVING.
async fn grpc_serving(addr: SocketAddr) -> bool {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let Ok(channel) = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .expect("url")
        .connect_timeout(Duration::from_secs(1))
        .connect()
        .await
    else {
        return false;
    };
    let mut client = HealthClient::new(channel);
    let check = client.check(HealthCheckRequest {
        service: String::new(),
    });
    matches!(
        tokio::time::timeout(Duration::from_secs(2), check).await,
        Ok(Ok(r)) if r.get_ref().status == ServingStatus::Serving as i32
    )
}

/// The clients' way in: an ingress over the ready edges that names each
/// client's own address in X-Forwarded-For, and tokens signed with the
/// Secret's HS256 key.
#[derive(Clone, Default)]
struct Ingress {
    edges: Arc<Mutex<Vec<String>>>,
}

/// A public address of the client's own for `sub` (TEST-NET-3).
fn client_addr(sub: &str) -> String {
    let n: usize = sub.bytes().map(usize::from).sum::<usize>() * 31 + sub.len();
    format!("203.0.113.{}", n % 250 + 1)
}

impl SignIn for Ingress {
    async fn user_at(&self, url: &str, sub: &str) -> Option<Client> {
        let forwarded = client_addr(sub);
        let mut client = Client::connect(url, &[("x-forwarded-for", &forwarded)])
            .await
            .ok()?;
        let reply = client
            .try_request("auth", json!({"token": token(sub, sub, 3600)}))
            .await?;
        client.user_id = reply["user"]["id"].as_str()?.to_string();
        Some(client)
    }

    fn edges(&self) -> Option<Vec<String>> {
        Some(self.edges.lock().expect("ingress").clone())
    }
}

/// `grpc_server_handled_total` summed over one service's metrics.
async fn calls_handled(addr: SocketAddr) -> f64 {
    let (status, body) = http_get(addr, "/metrics", &[]).await;
    assert_eq!(status, 200, "metrics at {addr}");
    body.lines()
        .filter(|l| l.starts_with("grpc_server_handled_total"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_of_every_component_loses_nothing() {
    if std::env::var_os("PARLEY_TEST_TOPOLOGY").is_none() {
        eprintln!("note: PARLEY_TEST_TOPOLOGY is not set; skipping the production topology test");
        return;
    }
    let root = std::env::temp_dir().join(common::ids::new_id("topology"));
    std::fs::create_dir_all(&root).expect("root");
    let rendered = Rendered::overlay("production");
    let backends = Backends::start().await;
    let mut cluster = Cluster::new(&root, &rendered, &backends);
    let drain = Duration::from_millis(cluster.config("edge").edge.drain_ms);
    cluster.deploy().await;
    let ingress = cluster.ingress.clone();
    let edges = ingress.edges().expect("edges");

    // ROOMS rooms of MEMBERS clients each, spread over both edges.
    let mut owner = ingress.user_at(&edges[0], "owner").await.expect("owner");
    let mut rooms = Vec::new();
    for r in 0..ROOMS {
        rooms.push(owner.public_room(&format!("rolling-{r}")).await);
    }
    let mut clients = Vec::new();
    for n in 0..ROOMS * MEMBERS {
        let mut order = edges.clone();
        order.rotate_left(n % edges.len());
        let room = rooms[n % ROOMS].clone();
        clients.push(Resilient::connect(&ingress, format!("u{n}"), order, room).await);
    }

    // Both replicas of a service take calls: the edges balance over the
    // headless Service's addresses.
    for component in ["auth", "chat"] {
        let port = cluster.deployments[component]
            .metrics_port
            .expect("metrics");
        for pod in &cluster.pods[component] {
            assert!(
                calls_handled(SocketAddr::from((pod.ip, port))).await > 0.0,
                "{} took no calls: the edges do not balance over its Service",
                pod.name
            );
        }
    }

    // The stream: every member sends at a steady pace until the roll is
    // over and at least AT_LEAST messages went out.
    let rolling = Arc::new(AtomicBool::new(true));
    let sent = Arc::new(AtomicUsize::new(0));
    let stream = clients.into_iter().map(|mut client| {
        let (rolling, sent, ingress) = (rolling.clone(), sent.clone(), ingress.clone());
        async move {
            let mut tick = tokio::time::interval(SEND_EVERY);
            let mut own = 0;
            while rolling.load(Ordering::Relaxed) || sent.load(Ordering::Relaxed) < AT_LEAST {
                tick.tick().await;
                client.send(&ingress, own).await;
                sent.fetch_add(1, Ordering::Relaxed);
                own += 1;
            }
            (client, own)
        }
    });
    let stream = tokio::spawn(futures::future::join_all(stream));

    let mut edge_terminations = Vec::new();
    for component in ROLL_ORDER {
        let terminated = cluster.roll(component).await;
        eprintln!(
            "rolled {component}; {} messages so far",
            sent.load(Ordering::Relaxed)
        );
        if component == "edge" {
            edge_terminations = terminated;
        }
    }
    rolling.store(false, Ordering::Relaxed);
    let senders = stream.await.expect("the stream ends");
    let total = sent.load(Ordering::Relaxed);
    assert!(total >= AT_LEAST, "{total} messages sent");

    // Each room's stored log, read after the roll through the new edges.
    let edges = ingress.edges().expect("edges");
    let mut owner = ingress.user_at(&edges[0], "owner").await.expect("owner");
    let mut last = BTreeMap::new();
    for room in &rooms {
        let reply = owner.ok("room.join", json!({"room": room})).await;
        last.insert(room.clone(), reply["last_seq"].as_i64().expect("last_seq"));
    }
    let mut per_room: BTreeMap<String, usize> = BTreeMap::new();
    for (client, own) in &senders {
        *per_room.entry(client.room.clone()).or_default() += own;
    }
    for room in &rooms {
        let joins = MEMBERS as i64 + 1;
        assert_eq!(
            last[room],
            joins + per_room[room] as i64,
            "{room}: every message stored exactly once"
        );
    }
    let mut clients = Vec::new();
    for (mut client, _) in senders {
        let room_last = last[&client.room];
        client.catch_up(&ingress, room_last).await;
        assert_eq!(
            client.seqs,
            (1..=room_last).collect::<Vec<_>>(),
            "{}: the whole log, every event once, in order",
            client.sub
        );
        assert_eq!(client.messages, per_room[&client.room], "{}", client.sub);
        clients.push(client);
    }

    // The clients of each old edge left it spread over its drain, not at
    // once.
    for (ip, at) in edge_terminations {
        let prefix = format!("ws://{ip}:");
        let mut moved: Vec<Duration> = clients
            .iter()
            .flat_map(|c| c.left.iter())
            .filter(|(url, _)| url.starts_with(&prefix))
            .map(|(_, t)| t.saturating_duration_since(at))
            .collect();
        moved.sort();
        assert!(moved.len() >= 10, "edge {ip} held clients: {moved:?}");
        let spread = *moved.last().expect("some") - moved[0];
        eprintln!(
            "edge {ip}: {} clients reconnected over {spread:?} after SIGTERM",
            moved.len()
        );
        assert!(
            spread >= drain / 2,
            "edge {ip}: its clients reconnected within {spread:?}, not spread over the {drain:?} drain"
        );
    }
    drop(cluster);
    drop(backends);
    let _ = std::fs::remove_dir_all(&root);
}

/// Where the workspace's binaries are built: beside this test's directory.
fn bins_dir() -> PathBuf {
    std::env::current_exe()
        .expect("test binary path")
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf()
}

/// A process of `binary` from the build, with only `env` (and PATH).
fn start_binary(binary: &str, env: &[(&str, String)], log: &Path) -> Child {
    let bins = bins_dir();
    let log = std::fs::File::create(log).expect("log");
    Command::new(bins.join(binary))
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdout(log.try_clone().expect("log"))
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| panic!("{binary} starts (cargo build --workspace --bins): {e}"))
}

/// Polls `check` until it holds or `READY_WITHIN` passes; `child` must stay
/// alive meanwhile.
async fn eventually<F: Future<Output = bool>>(
    what: &str,
    child: &mut Child,
    mut check: impl FnMut() -> F,
) {
    let started = Instant::now();
    loop {
        assert!(
            child.try_wait().expect("wait").is_none(),
            "{what}: the process exited"
        );
        if check().await {
            return;
        }
        assert!(started.elapsed() < READY_WITHIN, "{what}: not in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET path` at `addr`: the status, or 0 when nothing answers.
async fn status_of(addr: SocketAddr, path: &str) -> u16 {
    if tokio::net::TcpStream::connect(addr).await.is_err() {
        return 0;
    }
    http_get(addr, path, &[]).await.0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn components_started_before_redis_wait_alive_and_not_ready() {
    if std::env::var_os("PARLEY_TEST_TOPOLOGY").is_none() {
        eprintln!("note: PARLEY_TEST_TOPOLOGY is not set; skipping the start-up test");
        return;
    }
    let dir = std::env::temp_dir().join(common::ids::new_id("startup"));
    std::fs::create_dir_all(&dir).expect("dir");
    // Nothing listens on the Redis port yet.
    let redis_port = free_port();
    let redis_url = format!("redis://127.0.0.1:{redis_port}");
    let key = "startup-test-signing-key-0123456789abcdef".to_string();
    let credential = "startup-test-credential-0123456789abcdef".to_string();
    let (grpc, metrics, edge) = (free_port(), free_port(), free_port());
    let common_env = [
        ("PARLEY_SERVICES_CREDENTIAL", credential),
        ("PARLEY_BUS_BACKEND", "redis".to_string()),
        ("PARLEY_BUS_REDIS_URL", redis_url.clone()),
        ("PARLEY_BUS_SIGNING_KEY", key),
    ];
    let mut presence_env = common_env.to_vec();
    presence_env.extend([
        ("PARLEY_PRESENCE_BACKEND", "redis".to_string()),
        ("PARLEY_PRESENCE_REDIS_URL", redis_url.clone()),
        ("PARLEY_PRESENCE_LISTEN", format!("127.0.0.1:{grpc}")),
        (
            "PARLEY_PRESENCE_METRICS_LISTEN",
            format!("127.0.0.1:{metrics}"),
        ),
    ]);
    let mut edge_env = common_env.to_vec();
    edge_env.push(("PARLEY_EDGE_LISTEN", format!("127.0.0.1:{edge}")));
    let mut presence = start_binary("parley-presence", &presence_env, &dir.join("presence.log"));
    let mut edge_process = start_binary("parley-edge", &edge_env, &dir.join("edge.log"));
    let grpc = SocketAddr::from(([127, 0, 0, 1], grpc));
    let metrics = SocketAddr::from(([127, 0, 0, 1], metrics));
    let edge = SocketAddr::from(([127, 0, 0, 1], edge));

    // Alive (liveness answers) and not ready, for as long as Redis is away.
    eventually("presence is alive", &mut presence, || async {
        status_of(metrics, "/healthz").await == 200
    })
    .await;
    eventually("the edge is alive", &mut edge_process, || async {
        status_of(edge, "/healthz").await == 200
    })
    .await;
    assert!(
        !grpc_serving(grpc).await,
        "presence is not ready without Redis"
    );
    assert_ne!(
        status_of(edge, "/readyz").await,
        200,
        "the edge is not ready"
    );
    assert_ne!(status_of(edge, "/metrics").await, 200, "the edge waits");

    // Redis comes: both finish starting on their own.
    let _redis = PrivateRedis::start_with(&["--port".into(), redis_port.to_string()]).await;
    eventually("presence becomes ready", &mut presence, || {
        grpc_serving(grpc)
    })
    .await;
    eventually("the edge starts", &mut edge_process, || async {
        status_of(edge, "/metrics").await == 200
    })
    .await;
    for child in [&mut presence, &mut edge_process] {
        let _ = child.kill();
        let _ = child.wait();
    }
    let _ = std::fs::remove_dir_all(&dir);
}
