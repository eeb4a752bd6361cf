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
use common::config::Config;
use common::grpc::{ClientSettings, channel};
use common::shutdown::Shutdown;
use edge::{Backends, EdgeApp};
use proto::ai::v1::ai_service_client::AiServiceClient;
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
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
        async fn bind(key: &'static str, addr: SocketAddr) -> Result<TcpListener, SuiteError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| SuiteError::Bind { key, addr, source })
        }
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
    #[error("cannot listen on {addr} (key `{key}`): {source}")]
    Bind {
        key: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    /// A configured value only a component could check (e.g. a PEM key).
    #[error("invalid configuration: {0}")]
    Config(String),
    #[error("{component}: {source}")]
    Component {
        component: &'static str,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
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
    shutdown: Shutdown,
    tasks: JoinSet<()>,
    grace: Duration,
    /// Asks chat-service's supervisor to restart it (fault tests).
    chat_restarts: mpsc::Sender<oneshot::Sender<()>>,
}

/// What it takes to (re)build chat-service.
struct ChatParts {
    config: common::config::ChatConfig,
    bus: Arc<dyn Bus>,
    presence: PresenceServiceClient<common::grpc::ServiceChannel>,
    credential: Secret,
}

impl ChatParts {
    async fn connect(&self) -> Result<chat_service::ChatApp, chat_service::ChatError> {
        chat_service::ChatApp::connect(
            &self.config,
            self.bus.clone(),
            Some(self.presence.clone()),
            &self.credential,
        )
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
        let serve = app.serve(listener, stop.signal());
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
        let (Some(addr), Ok(next)) = (addr, parts.connect().await) else {
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

/// Builds and starts every component on the given listeners.
pub async fn start(
    mut config: Config,
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
    // In one process the services are found where they were actually bound.
    config.services.auth_url = format!("http://{}", addrs.auth);
    config.services.chat_url = format!("http://{}", addrs.chat);
    config.services.ai_url = format!("http://{}", addrs.ai);
    config.services.presence_url = format!("http://{}", addrs.presence);
    if config.services.credential.is_empty() {
        config.services.credential = Secret::new(common::ids::random_secret(32));
    }
    let credential = config.services.credential.clone();
    let settings = |timeout_ms: u64| ClientSettings {
        credential: credential.clone(),
        connect_timeout: Duration::from_millis(config.services.connect_timeout_ms),
        timeout: Duration::from_millis(timeout_ms),
    };
    let call_timeout = config.edge.call_timeout_ms;
    let chan = |url: &str, timeout_ms: u64| {
        channel(url, &settings(timeout_ms)).map_err(component("grpc client"))
    };

    let bus = common::bus::connect(&config.bus)
        .await
        .map_err(component("bus"))?;
    let shutdown = Shutdown::new();
    let mut tasks = JoinSet::new();

    let auth = auth_service::AuthApp::connect(&config.auth, &credential, bus.clone())
        .await
        .map_err(|e| match e {
            auth_service::AuthError::Config(message) => SuiteError::Config(message),
            other => component("auth")(other),
        })?;
    let presence = presence_service::PresenceApp::connect(
        &config.presence,
        bus.clone(),
        Some(ChatBackendServiceClient::new(chan(
            &config.services.chat_url,
            call_timeout,
        )?)),
        &credential,
    )
    .await
    .map_err(component("presence"))?;
    let chat_parts = ChatParts {
        config: config.chat.clone(),
        bus: bus.clone(),
        presence: PresenceServiceClient::new(chan(&config.services.presence_url, 5_000)?),
        credential: credential.clone(),
    };
    let chat = chat_parts.connect().await.map_err(component("chat"))?;
    let ai = ai_service::AiApp::new(
        &config.ai,
        bus.clone(),
        chan(&config.services.chat_url, call_timeout)?,
        &credential,
    )
    .map_err(component("ai"))?;
    let backends = Backends {
        auth: AuthServiceClient::new(chan(&config.services.auth_url, call_timeout)?),
        chat: ChatServiceClient::new(chan(&config.services.chat_url, call_timeout)?),
        chat_backend: ChatBackendServiceClient::new(chan(&config.services.chat_url, call_timeout)?),
        ai: AiServiceClient::new(chan(&config.services.ai_url, call_timeout)?),
        presence: PresenceServiceClient::new(chan(&config.services.presence_url, call_timeout)?),
    };
    let suite_bus = bus.clone();
    let edge = EdgeApp::new(&config.edge, backends, bus, tracing, shutdown.signal())
        .await
        .map_err(component("edge"))?
        .with_suite_config(&config);

    let Listeners {
        edge: edge_l,
        auth: auth_l,
        chat: chat_l,
        ai: ai_l,
        presence: presence_l,
    } = listeners;
    let signal = shutdown.signal();
    tasks.spawn(report("auth", auth.serve(auth_l, signal.clone())));
    tasks.spawn(report(
        "presence",
        presence.serve(presence_l, signal.clone()),
    ));
    let (chat_restarts, restarts) = mpsc::channel(1);
    tasks.spawn(supervise_chat(
        chat_parts,
        chat,
        chat_l,
        signal.clone(),
        restarts,
    ));
    tasks.spawn(report("ai", ai.serve(ai_l, signal.clone())));
    tasks.spawn(report("edge", edge.serve(edge_l)));

    Ok(Suite {
        addrs,
        credential,
        bus: suite_bus,
        shutdown,
        tasks,
        grace: Duration::from_millis(config.edge.shutdown_grace_ms),
        chat_restarts,
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
