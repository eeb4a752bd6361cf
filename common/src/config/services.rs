//! The `[services]` section: how components reach each other when they run
//! as separate processes, and the credentials internal calls carry: one per
//! caller (edge, ai, presence, chat, each named backend), or the single
//! shared one of earlier versions ([`crate::grpc::callers`]).

use serde::{Deserialize, Serialize};

use super::ConfigError;
use crate::secret::Secret;

/// How components reach each other.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServicesConfig {
    pub auth_url: String,
    pub chat_url: String,
    pub ai_url: String,
    pub presence_url: String,
    /// The shared credential (`authorization: Bearer …`): accepted for
    /// every method, acting for anyone, and presented by every component
    /// that has no credential of its own. Empty: generated at start in
    /// one-process mode when no per-caller credential is set either.
    pub credential: Secret,
    /// The edge's own credential: presented by the edge, accepted by every
    /// service for the edge's methods, acting for WebSocket users. A
    /// service that only checks it may be given `sha256:<hex>` instead.
    pub edge_credential: Secret,
    /// The AI service's credential (its calls to chat).
    pub ai_credential: Secret,
    /// Presence's credential (its calls to chat).
    pub presence_credential: Secret,
    /// Chat's credential (its calls to presence).
    pub chat_credential: Secret,
    /// Other backends, each with its credential and allowed methods.
    pub backends: Vec<BackendCaller>,
    /// This component's certificate (PEM): its server certificate, and the
    /// client certificate it presents (mutual TLS; with the two below).
    pub tls_cert_file: String,
    /// The certificate's private key (PEM).
    pub tls_key_file: String,
    /// The CA (PEM) that signs every component's certificate: servers
    /// require client certificates from it, clients trust only it.
    pub tls_ca_file: String,
    /// Timeout for establishing a gRPC connection.
    pub connect_timeout_ms: u64,
    /// Every Postgres and Redis URL a component uses must be TLS (managed
    /// backends reached over networks you do not control).
    pub require_backend_tls: bool,
}

impl Default for ServicesConfig {
    fn default() -> Self {
        Self {
            auth_url: "http://127.0.0.1:50051".into(),
            chat_url: "http://127.0.0.1:50052".into(),
            ai_url: "http://127.0.0.1:50053".into(),
            presence_url: "http://127.0.0.1:50054".into(),
            credential: Secret::default(),
            edge_credential: Secret::default(),
            ai_credential: Secret::default(),
            presence_credential: Secret::default(),
            chat_credential: Secret::default(),
            backends: Vec::new(),
            tls_cert_file: String::new(),
            tls_key_file: String::new(),
            tls_ca_file: String::new(),
            connect_timeout_ms: 2_000,
            require_backend_tls: false,
        }
    }
}

/// A backend that calls Parley's gRPC API (`[[services.backends]]`).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BackendCaller {
    /// Its name in errors and logs: a-z, 0-9, `-`, `_`.
    pub name: String,
    /// What it presents (32+ bytes, or `sha256:<hex>`; `credential_file`
    /// reads it from a file).
    pub credential: Secret,
    /// What it may call: `<package.Service>/<Method>`, `<package.Service>/*`
    /// or `*`. No wildcard covers `parley.auth.v1.AuthService/IssueTokens`.
    pub methods: Vec<String>,
}

/// Which component presents which credential key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presenter {
    Edge,
    Ai,
    Presence,
    Chat,
}

impl ServicesConfig {
    /// Whether any per-caller credential is set.
    pub fn per_caller(&self) -> bool {
        !(self.edge_credential.is_empty()
            && self.ai_credential.is_empty()
            && self.presence_credential.is_empty()
            && self.chat_credential.is_empty()
            && self.backends.is_empty())
    }

    /// The credential `presenter` puts on its calls, with its key: its own,
    /// else the shared one.
    pub fn presented(&self, presenter: Presenter) -> (&'static str, &Secret) {
        let own = match presenter {
            Presenter::Edge => ("services.edge_credential", &self.edge_credential),
            Presenter::Ai => ("services.ai_credential", &self.ai_credential),
            Presenter::Presence => ("services.presence_credential", &self.presence_credential),
            Presenter::Chat => ("services.chat_credential", &self.chat_credential),
        };
        if own.1.is_empty() {
            ("services.credential", &self.credential)
        } else {
            own
        }
    }

    /// Checks what types alone cannot; errors name the key.
    pub fn validate(&self) -> Result<(), ConfigError> {
        crate::grpc::Callers::from_config(self)?;
        for (key, url) in [
            ("services.auth_url", &self.auth_url),
            ("services.chat_url", &self.chat_url),
            ("services.ai_url", &self.ai_url),
            ("services.presence_url", &self.presence_url),
        ] {
            if url
                .parse::<http::Uri>()
                .map(|u| u.scheme().is_none())
                .unwrap_or(true)
            {
                return Err(ConfigError(format!(
                    "key `{key}`: `{url}` is not an http(s) URL"
                )));
            }
            if !self.tls_cert_file.is_empty() && !url.starts_with("https://") {
                return Err(ConfigError(format!(
                    "key `{key}`: mutual TLS is on (services.tls_cert_file), so it must be https://"
                )));
            }
        }
        Ok(())
    }
}
