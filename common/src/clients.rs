//! Every gRPC client one component holds of another, with its deadline,
//! built in one place. The separate binaries (services at `services.*_url`)
//! and the one-process suite (services on the loopback listeners it bound,
//! written into the same keys) both build their clients through
//! [`Clients::from_config`], so the two modes cannot drift apart.

use std::time::Duration;

use tonic::transport::{ClientTlsConfig, Endpoint};

use crate::config::{Config, Presenter};
use crate::grpc::tls::MutualTls;
use crate::grpc::{ClientSettings, ServiceChannel, metered_tls_channel_to};
use crate::metrics::{GrpcMetrics, Metrics};
use crate::secret::Secret;

/// Deadline of each chat-service call the AI service makes (storing a
/// prompt or a reply, reading history).
pub const AI_TO_CHAT: Duration = Duration::from_secs(10);
/// Deadline of each chat-service call presence makes (missed-call
/// notifications).
pub const PRESENCE_TO_CHAT: Duration = Duration::from_secs(10);
/// Deadline of each presence call chat makes (who is online, on join).
pub const CHAT_TO_PRESENCE: Duration = Duration::from_secs(5);
/// Deadline of each auth call chat makes (revoking an erased user's tokens).
pub const CHAT_TO_AUTH: Duration = Duration::from_secs(10);

/// Who calls whom; each link has its own deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Link {
    EdgeToAuth,
    EdgeToChat,
    EdgeToAi,
    EdgeToPresence,
    AiToChat,
    PresenceToChat,
    ChatToPresence,
    ChatToAuth,
}

impl Link {
    /// Every link, for tests that compare the two modes.
    pub const ALL: [Link; 8] = [
        Link::EdgeToAuth,
        Link::EdgeToChat,
        Link::EdgeToAi,
        Link::EdgeToPresence,
        Link::AiToChat,
        Link::PresenceToChat,
        Link::ChatToPresence,
        Link::ChatToAuth,
    ];
}

/// A `services.*_url` that is not a usable gRPC endpoint, or TLS files
/// that cannot be used; the message names the key.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ClientError(String);

/// The credential each calling component presents.
#[derive(Debug, Clone)]
struct Credentials {
    edge: Secret,
    ai: Secret,
    presence: Secret,
    chat: Secret,
}

/// The endpoints of the four services and what every client of them
/// shares; hands out a lazily connecting channel per [`Link`].
#[derive(Debug, Clone)]
pub struct Clients {
    auth: Endpoint,
    chat: Endpoint,
    ai: Endpoint,
    presence: Endpoint,
    /// What each caller presents: its own credential, else the shared one.
    credentials: Credentials,
    /// `services.connect_timeout_ms`.
    connect_timeout: Duration,
    /// `edge.call_timeout_ms`: the deadline of every call the edge makes.
    edge_deadline: Duration,
    /// Where every channel records its `grpc_client_*` metrics.
    metrics: GrpcMetrics,
    /// Mutual TLS to every service (`services.tls_*`), when on.
    tls: Option<ClientTlsConfig>,
}

impl Clients {
    /// Parses `services.*_url`; the error names the key. Calls are recorded
    /// in `metrics`.
    pub fn from_config(config: &Config, metrics: &Metrics) -> Result<Self, ClientError> {
        let endpoint = |key: &'static str, url: &str| {
            Endpoint::from_shared(url.to_string())
                .map_err(|source| ClientError(format!("key `{key}`: {source}")))
        };
        let services = &config.services;
        Ok(Self {
            auth: endpoint("services.auth_url", &services.auth_url)?,
            chat: endpoint("services.chat_url", &services.chat_url)?,
            ai: endpoint("services.ai_url", &services.ai_url)?,
            presence: endpoint("services.presence_url", &services.presence_url)?,
            credentials: Credentials {
                edge: services.presented(Presenter::Edge).1.clone(),
                ai: services.presented(Presenter::Ai).1.clone(),
                presence: services.presented(Presenter::Presence).1.clone(),
                chat: services.presented(Presenter::Chat).1.clone(),
            },
            connect_timeout: Duration::from_millis(services.connect_timeout_ms),
            edge_deadline: Duration::from_millis(config.edge.call_timeout_ms),
            metrics: metrics.grpc.clone(),
            tls: MutualTls::from_config(services)
                .map_err(|e| ClientError(e.to_string()))?
                .map(|tls| tls.client()),
        })
    }

    /// The deadline of each call on `link`.
    pub fn deadline(&self, link: Link) -> Duration {
        match link {
            Link::EdgeToAuth | Link::EdgeToChat | Link::EdgeToAi | Link::EdgeToPresence => {
                self.edge_deadline
            }
            Link::AiToChat => AI_TO_CHAT,
            Link::PresenceToChat => PRESENCE_TO_CHAT,
            Link::ChatToPresence => CHAT_TO_PRESENCE,
            Link::ChatToAuth => CHAT_TO_AUTH,
        }
    }

    /// The endpoint `link` calls.
    pub fn endpoint(&self, link: Link) -> &Endpoint {
        match link {
            Link::EdgeToAuth | Link::ChatToAuth => &self.auth,
            Link::EdgeToChat | Link::AiToChat | Link::PresenceToChat => &self.chat,
            Link::EdgeToAi => &self.ai,
            Link::EdgeToPresence | Link::ChatToPresence => &self.presence,
        }
    }

    /// The credential the caller of `link` presents.
    pub fn credential(&self, link: Link) -> &Secret {
        let c = &self.credentials;
        match link {
            Link::EdgeToAuth | Link::EdgeToChat | Link::EdgeToAi | Link::EdgeToPresence => &c.edge,
            Link::AiToChat => &c.ai,
            Link::PresenceToChat => &c.presence,
            Link::ChatToPresence | Link::ChatToAuth => &c.chat,
        }
    }

    /// A new lazily connecting channel for `link`, with its deadline and
    /// its caller's credential.
    pub fn channel(&self, link: Link) -> ServiceChannel {
        metered_tls_channel_to(
            self.endpoint(link),
            &ClientSettings {
                credential: self.credential(link).clone(),
                connect_timeout: self.connect_timeout,
                timeout: self.deadline(link),
            },
            &self.metrics,
            self.tls.as_ref(),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_links_keep_their_deadlines_whatever_the_edge_is_configured_with() {
        let mut config = Config::default();
        config.edge.call_timeout_ms = 250;
        let clients = Clients::from_config(&config, &Metrics::new(&[])).expect("valid urls");
        assert_eq!(
            clients.deadline(Link::EdgeToChat),
            Duration::from_millis(250)
        );
        assert_eq!(clients.deadline(Link::AiToChat), AI_TO_CHAT);
        assert_eq!(clients.deadline(Link::PresenceToChat), PRESENCE_TO_CHAT);
        assert_eq!(clients.deadline(Link::ChatToPresence), CHAT_TO_PRESENCE);
    }

    #[test]
    fn links_call_the_configured_services() {
        let mut config = Config::default();
        config.services.chat_url = "http://chat.internal:7000".into();
        let clients = Clients::from_config(&config, &Metrics::new(&[])).expect("valid urls");
        for link in [Link::EdgeToChat, Link::AiToChat, Link::PresenceToChat] {
            assert_eq!(
                clients.endpoint(link).uri().to_string(),
                "http://chat.internal:7000/"
            );
        }
    }

    #[test]
    fn a_bad_url_names_its_key() {
        let mut config = Config::default();
        config.services.ai_url = "http://bad host".into();
        let e = Clients::from_config(&config, &Metrics::new(&[])).expect_err("not a url");
        assert!(e.to_string().contains("services.ai_url"), "{e}");
    }
}
