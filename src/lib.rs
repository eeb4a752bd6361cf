//! The whole Parley suite in one process: edge + auth, chat, AI and presence
//! services, each on its own listener, talking real gRPC over loopback.
//!
//! `main.rs` and the end-to-end tests build the suite through [`start`], so
//! tests run exactly what `cargo run` runs, on listeners they bound themselves.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::Secret;
use common::bus::Bus;
use common::cli::{BindError, Failure};
use common::clients::Clients;
use common::config::Config;
use common::metrics::Metrics;
use common::shutdown::Shutdown;
use edge::EdgeApp;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinSet;

/// The component names, as used for telemetry.
pub const COMPONENTS: &[&str] = &["edge", "auth", "chat", "ai", "presence"];

/// One bound listener per component.
#[derive(Debug)]
pub struct Listeners {
    pub edge: TcpListener,
    pub auth: TcpListener,
    pub chat: TcpListener,
    pub ai: TcpListener,
    pub presence: TcpListener,
}

impl Listeners {
    /// Binds the configured addresses; the error names the address.
    pub async fn bind(config: &Config) -> Result<Self, SuiteError> {
        use common::cli::bind;
        Ok(Self {
            edge: bind("edge.listen", config.edge.listen).await?,
            auth: bind("auth.listen", config.auth.listen).await?,
            chat: bind("chat.listen", config.chat.listen).await?,
            ai: bind("ai.listen", config.ai.listen).await?,
            presence: bind("presence.listen", config.presence.listen).await?,
        })
    }

    /// Binds every component to a free port on 127.0.0.1 (tests).
    pub async fn ephemeral() -> Result<Self, SuiteError> {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        let mut config = Config::default();
        config.edge.listen = any;
        config.auth.listen = any;
        config.chat.listen = any;
        config.ai.listen = any;
        config.presence.listen = any;
        Self::bind(&config).await
    }
}

/// Where the running suite listens.
#[derive(Debug, Clone, Copy)]
pub struct Addrs {
    pub edge: SocketAddr,
    pub auth: SocketAddr,
    pub chat: SocketAddr,
    pub ai: SocketAddr,
    pub presence: SocketAddr,
}

#[derive(Debug, thiserror::Error)]
pub enum SuiteError {
    #[error(transparent)]
    Bind(#[from] BindError),
    /// A configured value only a component could check (e.g. a PEM key).
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{component}: {source}")]
    Component {
        component: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl SuiteError {
    /// How the `parley` binary ends on this error: exit 64 for a
    /// configuration only a component could check, 1 for the rest.
    pub fn into_failure(self) -> Failure {
        match self {
            SuiteError::Config(message) => Failure::Config(message),
            other => other.into(),
        }
    }
}

fn component<E: std::error::Error + Send + Sync + 'static>(
    component: &'static str,
) -> impl FnOnce(E) -> SuiteError {
    move |e| SuiteError::Component {
        component,
        source: Box::new(e),
    }
}

/// The running suite.
pub struct Suite {
    pub addrs: Addrs,
    /// The service credential in use (generated when not configured).
    pub credential: Secret,
    /// The bus every component uses (so a test can add another edge to it).
    pub bus: Arc<dyn Bus>,
    /// Every component's metrics, served on the edge's `/metrics`.
    pub metrics: Arc<Metrics>,
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    grace: Duration,
    /// Asks chat-service's supervisor to restart it (fault tests).
    chat_restarts: mpsc::Sender<oneshot::Sender<()>>,
    /// Chat-service's clean-up job (retention, deleted rooms, unwanted
    /// attachments), to run at a chosen time in tests.
    pub chat_cleanup: chat_service::Cleanup,
}

/// What it takes to (re)build chat-service.
struct ChatParts {
    config: Config,
    clients: Clients,
    bus: Arc<dyn Bus>,
    metrics: Arc<Metrics>,
}

impl ChatParts {
    async fn build(&self) -> Result<chat_service::ChatApp, chat_service::ChatError> {
        chat_service::ChatApp::build(&self.config, &self.clients, self.bus.clone(), &self.metrics)
            .await
    }
}

/// Runs chat-service until the suite stops; on request, stops it (in-flight
/// calls finish) and starts a new one on the same address.
async fn supervise_chat(
    parts: ChatParts,
    mut app: chat_service::ChatApp,
    mut listener: TcpListener,
    suite: common::shutdown::ShutdownSignal,
    mut restarts: mpsc::Receiver<oneshot::Sender<()>>,
) {
    loop {
        let addr = listener.local_addr().ok();
        let stop = Shutdown::new();
        let serve = app.run_until_stopped(listener, stop.signal());
        tokio::pin!(serve);
        let restart = tokio::select! {
            result = &mut serve => {
                if let Err(error) = result {
                    tracing::error!(component = "chat", %error, "component stopped with an error");
                }
                return;
            }
            () = suite.clone().wait() => None,
            Some(done) = restarts.recv() => Some(done),
        };
        stop.trigger();
        let _ = serve.await;
        let Some(done) = restart else { return };
        let (Some(addr), Ok(next)) = (addr, parts.build().await) else {
            tracing::error!("chat-service could not be restarted");
            return;
        };
        listener = match TcpListener::bind(addr).await {
            Ok(listener) => listener,
            Err(error) => {
                tracing::error!(%error, "chat-service could not listen again");
                return;
            }
        };
        app = next;
        let _ = done.send(());
    }
}

/// The configuration the one-process suite runs with: every
/// `services.*_url` points at the listener the suite bound for that service
/// (the separate binaries take them from the configuration instead), and an
/// empty service credential is replaced by a random one. Everything else,
/// clients and deadlines included, is built from it exactly as the separate
/// binaries build it from theirs.
pub fn one_process_config(mut config: Config, addrs: &Addrs) -> Config {
    // With mutual TLS every call is https (the certificate must name 127.0.0.1).
    let scheme = if config.services.tls_cert_file.is_empty() {
        "http"
    } else {
        "https"
    };
    config.services.auth_url = format!("{scheme}://{}", addrs.auth);
    config.services.chat_url = format!("{scheme}://{}", addrs.chat);
    config.services.ai_url = format!("{scheme}://{}", addrs.ai);
    config.services.presence_url = format!("{scheme}://{}", addrs.presence);
    let services = &mut config.services;
    if services.credential.is_empty() && !services.per_caller() {
        services.credential = Secret::new(common::ids::random_secret(32));
    } else if services.credential.is_empty() {
        // Per-caller credentials: the ones not given are made up (every
        // component of this process knows them).
        for own in [
            &mut services.edge_credential,
            &mut services.ai_credential,
            &mut services.presence_credential,
            &mut services.chat_credential,
        ] {
            if own.is_empty() {
                *own = Secret::new(common::ids::random_secret(32));
            }
        }
    }
    config
}

/// Builds and starts every component on the given listeners, each through
/// the same `build` its own binary uses.
pub async fn start(
    config: Config,
    listeners: Listeners,
    tracing: bool,
) -> Result<Suite, SuiteError> {
    let addr = |l: &TcpListener| l.local_addr().map_err(component("listener"));
    let addrs = Addrs {
        edge: addr(&listeners.edge)?,
        auth: addr(&listeners.auth)?,
        chat: addr(&listeners.chat)?,
        ai: addr(&listeners.ai)?,
        presence: addr(&listeners.presence)?,
    };
    let config = one_process_config(config, &addrs);
    let credential = config.services.credential.clone();
    // Drift fixed: the suite used to build its own clients here, and gave
    // ai→chat and presence→chat the edge's `edge.call_timeout_ms` where
    // `parley-ai` and `parley-presence` used 10 s. Both modes now take every
    // client and deadline from `Clients::from_config`.
    // One registry for every component: the edge's `/metrics` serves it all.
    let metrics = Metrics::new(COMPONENTS);
    let clients = Clients::from_config(&config, &metrics).map_err(component("grpc client"))?;

    let bus = common::bus::connect(&config.bus, &metrics)
        .await
        .map_err(component("bus"))?;
    let shutdown = Shutdown::new();
    let mut tasks = JoinSet::new();

    let auth = auth_service::AuthApp::build(&config, bus.clone(), &metrics)
        .await
        .map_err(|e| match e {
            auth_service::AuthError::Config(message) => SuiteError::Config(message),
            other => component("auth")(other),
        })?;
    let presence = presence_service::PresenceApp::build(&config, &clients, bus.clone(), &metrics)
        .await
        .map_err(component("presence"))?;
    let chat_parts = ChatParts {
        config: config.clone(),
        clients: clients.clone(),
        bus: bus.clone(),
        metrics: metrics.clone(),
    };
    let chat = chat_parts.build().await.map_err(component("chat"))?;
    let chat_cleanup = chat.cleanup();
    let ai = ai_service::AiApp::build(&config, &clients, bus.clone(), &metrics)
        .await
        .map_err(component("ai"))?;
    let suite_bus = bus.clone();
    let edge = EdgeApp::build(&config, &clients, bus, tracing, shutdown.signal(), &metrics)
        .await
        .map_err(component("edge"))?;

    let Listeners {
        edge: edge_l,
        auth: auth_l,
        chat: chat_l,
        ai: ai_l,
        presence: presence_l,
    } = listeners;
    let signal = shutdown.signal();
    tasks.spawn(report(
        "auth",
        auth.run_until_stopped(auth_l, signal.clone()),
    ));
    tasks.spawn(report(
        "presence",
        presence.run_until_stopped(presence_l, signal.clone()),
    ));
    let (chat_restarts, restarts) = mpsc::channel(1);
    tasks.spawn(supervise_chat(
        chat_parts,
        chat,
        chat_l,
        signal.clone(),
        restarts,
    ));
    tasks.spawn(report("ai", ai.run_until_stopped(ai_l, signal.clone())));
    tasks.spawn(report("edge", edge.run_until_stopped(edge_l)));

    Ok(Suite {
        addrs,
        credential,
        bus: suite_bus,
        metrics,
        shutdown,
        tasks,
        grace: Duration::from_millis(config.edge.shutdown_grace_ms),
        chat_restarts,
        chat_cleanup,
    })
}

async fn report<E: std::fmt::Display>(
    component: &'static str,
    serve: impl std::future::Future<Output = Result<(), E>>,
) {
    if let Err(e) = serve.await {
        tracing::error!(component, error = %e, "component stopped with an error");
    }
}

impl Suite {
    /// Stops chat-service (letting in-flight calls finish) and starts a new
    /// one on the same address and database; resolves once it listens.
    pub async fn restart_chat(&self) {
        let (done, restarted) = oneshot::channel();
        if self.chat_restarts.send(done).await.is_ok() {
            let _ = restarted.await;
        }
    }

    /// Stops every component: the edge drains (1001 to clients) and the
    /// services finish in-flight calls, bounded by the grace period.
    pub async fn shutdown(mut self) {
        self.shutdown.trigger();
        let all = async { while self.tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(self.grace + Duration::from_secs(1), all)
            .await
            .is_err()
        {
            tracing::warn!("grace period over; aborting what is left");
            self.tasks.abort_all();
        }
    }

    /// Resolves when any component stops on its own (an error).
    pub async fn stopped(&mut self) {
        let _ = self.tasks.join_next().await;
    }
}

#[cfg(test)]
mod tests {
    use common::clients::{AI_TO_CHAT, Link};

    use super::*;

    fn addrs() -> Addrs {
        let at = |port| SocketAddr::from(([127, 0, 0, 1], port));
        Addrs {
            edge: at(1),
            auth: at(2),
            chat: at(3),
            ai: at(4),
            presence: at(5),
        }
    }

    #[test]
    fn both_modes_give_every_link_the_same_deadline() {
        let mut separate = Config::default();
        separate.edge.call_timeout_ms = 250;
        let one_process = one_process_config(separate.clone(), &addrs());
        let separate = Clients::from_config(&separate, &Metrics::new(&[])).expect("valid");
        let one_process = Clients::from_config(&one_process, &Metrics::new(&[])).expect("valid");
        for link in Link::ALL {
            assert_eq!(
                separate.deadline(link),
                one_process.deadline(link),
                "{link:?}"
            );
        }
        assert_eq!(one_process.deadline(Link::AiToChat), AI_TO_CHAT);
    }

    #[test]
    fn in_one_process_the_services_are_reached_where_the_suite_bound_them() {
        let config = one_process_config(Config::default(), &addrs());
        assert_eq!(config.services.chat_url, "http://127.0.0.1:3");
        assert_eq!(config.services.presence_url, "http://127.0.0.1:5");
        assert!(
            config.services.credential.expose().len() >= 32,
            "a usable credential"
        );
        let clients = Clients::from_config(&config, &Metrics::new(&[])).expect("valid");
        assert_eq!(
            clients.endpoint(Link::AiToChat).uri().to_string(),
            "http://127.0.0.1:3/"
        );
    }
}
