//! Who may call what between components: every caller (the edge, the AI
//! service, presence, chat, each named backend) presents its own service
//! credential, and the server's [`CallerLayer`] finds the caller by it,
//! then checks the method against the caller's allowlist and whether the
//! caller may name an end user (`x-parley-user-*`) for it. Only the edge
//! acts for WebSocket users; the AI service may relay the asker the edge
//! named to it when it stores the question, and otherwise acts as the
//! assistant; backends never act for users, and issue tokens only when
//! their allowlist names `IssueTokens`.
//!
//! The single shared credential (`services.credential`) keeps working as a
//! caller that may do everything, so a deployment can move to per-caller
//! credentials one step at a time (docs/security.md).

use std::sync::Arc;
use std::task::{Context, Poll};

use sha2::{Digest, Sha256};
use tonic::Status;

use crate::config::{ConfigError, ServicesConfig};
use crate::error::ErrorCode;
use crate::grpc::tls::MutualTls;
use crate::security::SecurityEvent;

/// `IssueTokens`: no wildcard covers it; an allowlist must name it.
pub const ISSUE_TOKENS: &str = "/parley.auth.v1.AuthService/IssueTokens";

/// Services a backend's allowlist may name.
pub const SERVICES: &[&str] = &[
    "parley.auth.v1.AuthService",
    "parley.chat.v1.ChatService",
    "parley.chat.v1.ChatBackendService",
    "parley.ai.v1.AiService",
    "parley.presence.v1.PresenceService",
];

/// Paths every caller may reach without a credential: the standard health
/// and reflection services.
const OPEN_PREFIXES: &[&str] = &["/grpc.health.v1.", "/grpc.reflection."];

/// What the edge calls: everything its clients' commands need.
const EDGE_METHODS: &[&str] = &[
    "parley.auth.v1.AuthService/VerifyToken",
    "parley.auth.v1.AuthService/SignInAnonymous",
    "parley.auth.v1.AuthService/DevLogin",
    "parley.auth.v1.AuthService/CheckRevoked",
    "parley.chat.v1.ChatService/*",
    "parley.chat.v1.ChatBackendService/GetEvents",
    "parley.ai.v1.AiService/Ask",
    "parley.ai.v1.AiService/Cancel",
    "parley.ai.v1.AiService/ListStreams",
    "parley.presence.v1.PresenceService/Register",
    "parley.presence.v1.PresenceService/Renew",
    "parley.presence.v1.PresenceService/Release",
    "parley.presence.v1.PresenceService/GetPresence",
    "parley.presence.v1.PresenceService/SetStatus",
    "parley.presence.v1.PresenceService/InviteCall",
    "parley.presence.v1.PresenceService/ActOnCall",
];

/// What the AI service calls on chat: storing questions and replies, and
/// reading a room and its history for context.
const AI_METHODS: &[&str] = &[
    "parley.chat.v1.ChatService/SendMessage",
    "parley.chat.v1.ChatBackendService/GetHistory",
    "parley.chat.v1.ChatBackendService/GetRoom",
];

/// Where the AI service may name a user: storing the asker's question
/// (`Ask` relays the user the edge named).
const AI_RELAYS: &[&str] = &["parley.chat.v1.ChatService/SendMessage"];

/// Methods whose messages name the end user of each item (paths): only a
/// caller that may act for any user may call them, as if it named a user
/// in metadata.
const ACTS_IN_BODY: &[&str] = &["/parley.chat.v1.ChatService/SendMessages"];

/// What presence calls on chat: missed-call notifications.
const PRESENCE_METHODS: &[&str] = &["parley.chat.v1.ChatBackendService/CreateNotification"];

/// What chat calls: who is online (on join and for webhooks), and, to
/// erase a user, presence's memory of them and their tokens.
const CHAT_METHODS: &[&str] = &[
    "parley.presence.v1.PresenceService/GetPresence",
    "parley.presence.v1.PresenceService/Watch",
    "parley.presence.v1.PresenceService/ForgetUser",
    "parley.auth.v1.AuthService/Revoke",
];

/// Which end users a caller may name in `x-parley-user-*`.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Acting {
    /// Any user (the edge, and the shared credential).
    AnyUser,
    /// Only the assistant, and on these methods (paths) the user it relays.
    Relay(Vec<String>),
    /// No one: an actor in the metadata is refused.
    NoOne,
}

/// One entry of an allowlist.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Allowed {
    /// Every method but `IssueTokens`.
    All,
    /// Every method of one service (`/pkg.Service/`) but `IssueTokens`.
    Service(String),
    /// One method (`/pkg.Service/Method`).
    Method(String),
}

impl Allowed {
    /// `*`, `pkg.Service/*` or `pkg.Service/Method` (a leading `/` is
    /// allowed); `None` for anything else or an unknown service.
    fn parse(entry: &str) -> Option<Self> {
        let entry = entry.trim().trim_start_matches('/');
        if entry == "*" {
            return Some(Self::All);
        }
        let (service, method) = entry.split_once('/')?;
        if !SERVICES.contains(&service) {
            return None;
        }
        if method == "*" {
            return Some(Self::Service(format!("/{service}/")));
        }
        let valid = method
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_uppercase())
            && method.chars().all(|c| c.is_ascii_alphanumeric());
        valid.then(|| Self::Method(format!("/{service}/{method}")))
    }

    fn covers(&self, path: &str) -> bool {
        match self {
            Self::Method(m) => m == path,
            // Wildcards never cover issuing tokens.
            _ if path == ISSUE_TOKENS => false,
            Self::All => true,
            Self::Service(prefix) => path.starts_with(prefix.as_str()),
        }
    }
}

/// A caller: its name (in errors and logs), the SHA-256 of its credential,
/// what it may call and for whom.
#[derive(Debug, Clone)]
struct Caller {
    name: String,
    digest: [u8; 32],
    allowed: Vec<Allowed>,
    acting: Acting,
}

/// The callers one server accepts; built from `[services]`. With mutual
/// TLS on, a caller must also present a client certificate of the CA.
#[derive(Debug, Clone, Default)]
pub struct Callers {
    callers: Vec<Caller>,
    tls: Option<MutualTls>,
}

/// The caller a request was accepted from (in the request's extensions).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CallerName(pub String);

/// `sha256:<64 hex>`: a credential given only as its digest, enough to
/// check it but not to present it.
pub fn digest_of(value: &str) -> Option<[u8; 32]> {
    let hex = value.strip_prefix("sha256:")?;
    if hex.len() != 64 {
        return None;
    }
    let mut digest = [0u8; 32];
    for (i, byte) in digest.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(digest)
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

impl Callers {
    /// The callers `[services]` configures: the shared credential (if set,
    /// allowed everything), the edge, ai, presence and chat credentials
    /// with their built-in allowlists, and each `[[services.backends]]`.
    pub fn from_config(services: &ServicesConfig) -> Result<Self, ConfigError> {
        let mut callers = Callers {
            tls: MutualTls::from_config(services)?,
            ..Callers::default()
        };
        let builtin = |list: &[&str]| -> Vec<Allowed> {
            list.iter().filter_map(|m| Allowed::parse(m)).collect()
        };
        let fixed = [
            (
                "shared",
                "services.credential",
                &services.credential,
                vec![Allowed::All, Allowed::Method(ISSUE_TOKENS.into())],
                Acting::AnyUser,
            ),
            (
                "edge",
                "services.edge_credential",
                &services.edge_credential,
                builtin(EDGE_METHODS),
                Acting::AnyUser,
            ),
            (
                "ai",
                "services.ai_credential",
                &services.ai_credential,
                builtin(AI_METHODS),
                Acting::Relay(AI_RELAYS.iter().map(|m| format!("/{m}")).collect()),
            ),
            (
                "presence",
                "services.presence_credential",
                &services.presence_credential,
                builtin(PRESENCE_METHODS),
                Acting::NoOne,
            ),
            (
                "chat",
                "services.chat_credential",
                &services.chat_credential,
                builtin(CHAT_METHODS),
                Acting::NoOne,
            ),
        ];
        for (name, key, secret, allowed, acting) in fixed {
            if secret.is_empty() {
                continue;
            }
            let digest = credential_digest(key, secret.expose())?;
            callers.add(key, name, digest, allowed, acting)?;
        }
        for (i, backend) in services.backends.iter().enumerate() {
            let at = format!("services.backends[{i}]");
            if !valid_name(&backend.name) {
                return Err(ConfigError::new(format!(
                    "key `{at}.name`: `{}` must be 1–64 of a-z, 0-9, `-`, `_`, and not edge, ai, \
                     presence, chat or shared",
                    backend.name
                )));
            }
            let digest =
                credential_digest(&format!("{at}.credential"), backend.credential.expose())?;
            let mut allowed = Vec::new();
            for method in &backend.methods {
                allowed.push(Allowed::parse(method).ok_or_else(|| {
                    ConfigError::new(format!(
                        "key `{at}.methods`: `{method}` is not `*`, `<service>/*` or \
                         `<service>/<Method>` of a Parley service ({})",
                        SERVICES.join(", ")
                    ))
                })?);
            }
            callers.add(&at, &backend.name, digest, allowed, Acting::NoOne)?;
        }
        Ok(callers)
    }

    /// Only the shared `credential` (allowed everything), as components
    /// built without a full configuration (tests) use; empty: no caller.
    pub fn shared(credential: &crate::secret::Secret) -> Self {
        let services = ServicesConfig {
            credential: credential.clone(),
            ..ServicesConfig::default()
        };
        Self::of_config(&services)
    }

    /// [`Callers::from_config`] of an already validated configuration; a
    /// configuration that does not validate accepts no caller (and says so).
    pub fn of_config(services: &ServicesConfig) -> Self {
        Self::from_config(services).unwrap_or_else(|error| {
            tracing::error!(%error, "service credentials unusable: refusing every call");
            Self::default()
        })
    }

    fn add(
        &mut self,
        key: &str,
        name: &str,
        digest: [u8; 32],
        allowed: Vec<Allowed>,
        acting: Acting,
    ) -> Result<(), ConfigError> {
        if let Some(other) = self.callers.iter().find(|c| c.name == name) {
            return Err(ConfigError::new(format!(
                "key `{key}`: a caller named `{}` is configured twice",
                other.name
            )));
        }
        if let Some(other) = self.callers.iter().find(|c| c.digest == digest) {
            return Err(ConfigError::new(format!(
                "key `{key}`: the same credential as caller `{}`; every caller needs its own",
                other.name
            )));
        }
        self.callers.push(Caller {
            name: name.to_string(),
            digest,
            allowed,
            acting,
        });
        Ok(())
    }

    /// The server's mutual TLS, when on.
    pub fn tls(&self) -> Option<&MutualTls> {
        self.tls.as_ref()
    }

    /// These callers over `tls` (tests).
    pub fn with_tls(mut self, tls: MutualTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Whether no caller is configured (every call would be refused).
    pub fn is_empty(&self) -> bool {
        self.callers.is_empty()
    }

    /// Checks one call: the caller presenting `authorization`, allowed
    /// `path`, naming `actor` (the `x-parley-user-id`, if any).
    pub fn check(
        &self,
        path: &str,
        authorization: Option<&[u8]>,
        actor: Option<&str>,
    ) -> Result<&str, Status> {
        let unauthenticated =
            || ErrorCode::Unauthorized.status("missing or invalid service credential");
        let token = authorization
            .and_then(|v| v.strip_prefix(b"Bearer "))
            .ok_or_else(unauthenticated)?;
        let presented = sha256(token);
        // Every digest is compared in full, so timing says nothing of which matched.
        let mut found = None;
        for caller in &self.callers {
            if constant_time_eq(&caller.digest, &presented) {
                found = Some(caller);
            }
        }
        let caller = found.ok_or_else(unauthenticated)?;
        if !caller.allowed.iter().any(|a| a.covers(path)) {
            return Err(
                ErrorCode::Forbidden.status(format!("caller {} may not call {path}", caller.name))
            );
        }
        // The empty id is no user's, so only `AnyUser` passes with it.
        let actor = actor.or(ACTS_IN_BODY.contains(&path).then_some(""));
        if let Some(user) = actor {
            let may = match &caller.acting {
                Acting::AnyUser => true,
                Acting::Relay(paths) => {
                    user == crate::grpc::Actor::assistant().user_id
                        || paths.iter().any(|p| p == path)
                }
                Acting::NoOne => false,
            };
            if !may {
                return Err(ErrorCode::Forbidden.status(format!(
                    "caller {} may not act for users on {path}",
                    caller.name
                )));
            }
        }
        Ok(&caller.name)
    }
}

fn valid_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && !matches!(name, "edge" | "ai" | "presence" | "chat" | "shared")
}

/// The digest a server compares with: of the secret (32+ bytes), or given
/// as `sha256:<hex>`.
fn credential_digest(key: &str, value: &str) -> Result<[u8; 32], ConfigError> {
    if value.starts_with("sha256:") {
        return digest_of(value).ok_or_else(|| {
            ConfigError::new(format!(
                "key `{key}`: `sha256:` must be followed by 64 hex digits"
            ))
        });
    }
    if value.len() < 32 {
        return Err(ConfigError::new(format!(
            "key `{key}`: must be at least 32 bytes"
        )));
    }
    Ok(sha256(value.as_bytes()))
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server layer: refuses calls whose credential, method or actor the
/// [`Callers`] do not allow (`UNAUTHENTICATED`, `PERMISSION_DENIED`) before
/// they reach a service; health and reflection stay open.
#[derive(Clone)]
pub struct CallerLayer {
    callers: Arc<Callers>,
}

impl CallerLayer {
    pub fn new(callers: Arc<Callers>) -> Self {
        Self { callers }
    }
}

impl<S> tower::Layer<S> for CallerLayer {
    type Service = CallerService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CallerService {
            inner,
            callers: self.callers.clone(),
        }
    }
}

/// The service [`CallerLayer`] makes.
#[derive(Clone)]
pub struct CallerService<S> {
    inner: S,
    callers: Arc<Callers>,
}

impl<S, B, R> tower::Service<http::Request<B>> for CallerService<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    R: Default + Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future =
        futures::future::Either<S::Future, std::future::Ready<Result<Self::Response, Self::Error>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<B>) -> Self::Future {
        let path = request.uri().path();
        if OPEN_PREFIXES.iter().any(|p| path.starts_with(p)) {
            return futures::future::Either::Left(self.inner.call(request));
        }
        let headers = request.headers();
        let actor = headers
            .get("x-parley-user-id")
            .and_then(|v| v.to_str().ok())
            .map(crate::grpc::percent_decode);
        let checked = self.callers.check(
            path,
            headers.get("authorization").map(|v| v.as_bytes()),
            actor.as_deref(),
        );
        match checked {
            Ok(name) => {
                let name = CallerName(name.to_string());
                request.extensions_mut().insert(name);
                futures::future::Either::Left(self.inner.call(request))
            }
            Err(status) => {
                let reason = match status.code() {
                    tonic::Code::Unauthenticated => "unknown_credential",
                    _ if status.message().contains("act for users") => "may_not_act",
                    _ => "method_not_allowed",
                };
                crate::security::log(SecurityEvent::CallerRefused, None, None, reason);
                tracing::debug!(path, message = status.message(), "service call refused");
                futures::future::Either::Right(std::future::ready(Ok(status.into_http())))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::BackendCaller;
    use crate::secret::Secret;

    const EDGE: &str = "edge-credential-0123456789abcdef0123456789";
    const AI: &str = "ai-credential-0123456789abcdef0123456789abc";
    const OPS: &str = "ops-credential-0123456789abcdef0123456789ab";
    const ISSUER: &str = "issuer-credential-0123456789abcdef01234567";

    fn bearer(secret: &str) -> Vec<u8> {
        format!("Bearer {secret}").into_bytes()
    }

    fn callers() -> Callers {
        let services = ServicesConfig {
            edge_credential: Secret::new(EDGE),
            ai_credential: Secret::new(AI),
            backends: vec![
                BackendCaller {
                    name: "ops".into(),
                    credential: Secret::new(OPS),
                    methods: vec!["*".into()],
                },
                BackendCaller {
                    name: "issuer".into(),
                    credential: Secret::new(format!(
                        "sha256:{}",
                        sha256(ISSUER.as_bytes())
                            .iter()
                            .map(|b| format!("{b:02x}"))
                            .collect::<String>()
                    )),
                    methods: vec!["parley.auth.v1.AuthService/IssueTokens".into()],
                },
            ],
            ..ServicesConfig::default()
        };
        Callers::from_config(&services).expect("valid")
    }

    const SEND: &str = "/parley.chat.v1.ChatService/SendMessage";
    const JOIN: &str = "/parley.chat.v1.ChatService/JoinRoom";

    #[test]
    fn each_caller_reaches_only_its_methods() {
        let callers = callers();
        let check = |path, secret: &str| {
            callers
                .check(path, Some(&bearer(secret)), None)
                .map(str::to_owned)
        };
        assert_eq!(check(JOIN, EDGE).ok().as_deref(), Some("edge"));
        assert_eq!(check(SEND, AI).ok().as_deref(), Some("ai"));
        let refused = check(JOIN, AI).expect_err("ai may not join rooms");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert_eq!(
            check("/parley.chat.v1.ChatBackendService/PostMessage", OPS)
                .ok()
                .as_deref(),
            Some("ops")
        );
        assert_eq!(
            check(
                "/parley.chat.v1.ChatBackendService/PostMessage",
                "unknown-credential-0123456789abcdef0123"
            )
            .expect_err("unknown")
            .code(),
            tonic::Code::Unauthenticated
        );
        assert_eq!(
            callers.check(JOIN, None, None).expect_err("none").code(),
            tonic::Code::Unauthenticated
        );
    }

    #[test]
    fn only_a_scope_that_names_issue_tokens_issues_tokens() {
        let callers = callers();
        for secret in [EDGE, AI, OPS] {
            let refused = callers
                .check(ISSUE_TOKENS, Some(&bearer(secret)), None)
                .expect_err("a wildcard does not cover IssueTokens");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        }
        assert_eq!(
            callers
                .check(ISSUE_TOKENS, Some(&bearer(ISSUER)), None)
                .ok(),
            Some("issuer"),
            "a digest checks the credential"
        );
    }

    #[test]
    fn only_the_edge_acts_for_users_and_ai_only_relays_the_asker() {
        let callers = callers();
        assert!(
            callers
                .check(JOIN, Some(&bearer(EDGE)), Some("alice"))
                .is_ok()
        );
        assert!(
            callers
                .check(SEND, Some(&bearer(AI)), Some("alice"))
                .is_ok()
        );
        assert!(
            callers
                .check(SEND, Some(&bearer(AI)), Some("assistant"))
                .is_ok()
        );
        let backend = callers
            .check(SEND, Some(&bearer(OPS)), Some("alice"))
            .expect_err("a backend acts for no user");
        assert_eq!(backend.code(), tonic::Code::PermissionDenied);
        assert!(backend.message().contains("act for users"), "{backend:?}");
        let history = "/parley.chat.v1.ChatBackendService/GetHistory";
        assert!(callers.check(history, Some(&bearer(AI)), None).is_ok());
        assert!(
            callers
                .check(history, Some(&bearer(AI)), Some("alice"))
                .is_err()
        );
    }

    #[test]
    fn only_a_caller_acting_for_any_user_opens_the_send_stream() {
        // Its items name their users in the body, so no actor in metadata.
        let stream = "/parley.chat.v1.ChatService/SendMessages";
        let callers = callers();
        assert_eq!(
            callers.check(stream, Some(&bearer(EDGE)), None).ok(),
            Some("edge")
        );
        for secret in [OPS, AI] {
            let refused = callers
                .check(stream, Some(&bearer(secret)), None)
                .expect_err("acts for users in its items");
            assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        }
    }

    #[test]
    fn the_shared_credential_may_do_everything() {
        let services = ServicesConfig {
            credential: Secret::new(EDGE),
            ..ServicesConfig::default()
        };
        let callers = Callers::from_config(&services).expect("valid");
        for path in [
            ISSUE_TOKENS,
            JOIN,
            "/parley.presence.v1.PresenceService/Watch",
        ] {
            assert_eq!(
                callers.check(path, Some(&bearer(EDGE)), Some("alice")).ok(),
                Some("shared")
            );
        }
    }

    #[test]
    fn bad_scopes_and_reused_credentials_name_the_key() {
        let bad = |backend: BackendCaller| {
            let services = ServicesConfig {
                edge_credential: Secret::new(EDGE),
                backends: vec![backend],
                ..ServicesConfig::default()
            };
            Callers::from_config(&services)
                .expect_err("invalid")
                .to_string()
        };
        let backend = |name: &str, credential: &str, method: &str| BackendCaller {
            name: name.into(),
            credential: Secret::new(credential),
            methods: vec![method.into()],
        };
        let e = bad(backend("ops", OPS, "parley.chat.v1.Nope/*"));
        assert!(e.contains("services.backends[0].methods"), "{e}");
        let e = bad(backend("ops", OPS, "parley.chat.v1.ChatService/lower"));
        assert!(e.contains("services.backends[0].methods"), "{e}");
        let e = bad(backend("edge", OPS, "*"));
        assert!(e.contains("services.backends[0].name"), "{e}");
        let e = bad(backend("ops", EDGE, "*"));
        assert!(e.contains("its own"), "{e}");
        let e = bad(backend("ops", "short", "*"));
        assert!(e.contains("services.backends[0].credential"), "{e}");
        let e = bad(backend("ops", "sha256:abc", "*"));
        assert!(e.contains("64 hex"), "{e}");
    }
}
