//! Tokens independent of the gRPC layer: verification of presented access
//! tokens (RFC 8725: explicit algorithm allowlists per key, `exp` required,
//! size cap before parsing), and signing of first-party access and refresh
//! tokens with the first-party HS256 secret.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use common::Secret;
use common::auth_reason::AuthReason;
use common::config::AuthConfig;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, EncodingKey, Header, Validation};
use proto::auth::v1::Identity;
use serde::{Deserialize, Serialize};

use crate::error::AuthError;
use crate::keys::{self, Key, KeyRing};

/// Longest accepted `sub`, in characters.
const MAX_SUBJECT_CHARS: usize = 128;
/// Longest display name, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Most roles an issued token carries, and the longest one.
const MAX_ROLES: usize = 32;
const MAX_ROLE_CHARS: usize = 64;
/// Role carried by anonymous users.
pub(crate) const ANONYMOUS_ROLE: &str = "anonymous";
/// `token_use` of refresh tokens; they are never access tokens.
const REFRESH_USE: &str = "refresh";

/// Signs first-party tokens and verifies every presented one.
pub(crate) struct Tokens {
    keys: KeyRing,
    encoding: EncodingKey,
    /// `iss` of issued tokens, required on presented ones (when non-empty).
    issuer: String,
    /// `aud` of issued tokens, required on presented ones (when non-empty).
    audience: String,
    leeway_s: u64,
    /// Access tokens valid for longer than this from now are refused.
    max_lifetime_s: u64,
    /// Tokens larger than this are refused before any parsing.
    max_token_bytes: usize,
    pub(crate) anonymous_ttl_s: u64,
    pub(crate) access_ttl_s: u64,
    pub(crate) refresh_ttl_s: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("keys", &self.keys)
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_token_bytes", &self.max_token_bytes)
            .finish_non_exhaustive()
    }
}

/// A list claim that may also be a single string (`"a b"` splits on spaces).
#[derive(Deserialize)]
#[serde(untagged)]
enum StringList {
    One(String),
    Many(Vec<String>),
}

impl StringList {
    fn into_vec(self) -> Vec<String> {
        match self {
            StringList::One(s) => s.split_whitespace().map(str::to_string).collect(),
            StringList::Many(v) => v,
        }
    }
}

/// Claims read from a presented token. `exp`, `nbf`, `iss` and `aud` are
/// validated by [`Validation`]; these are the ones the identity is made of.
#[derive(Deserialize)]
struct Claims {
    /// Optional here so that a missing one is `missing_claim` (the
    /// validation requires both), not a parse error.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    exp: Option<f64>,
    /// Read only so that a non-numeric `nbf` makes the token malformed
    /// instead of being skipped by the time check.
    #[serde(default, rename = "nbf")]
    _nbf: Option<f64>,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    preferred_username: Option<String>,
    #[serde(default)]
    anon: Option<bool>,
    #[serde(default)]
    roles: Option<StringList>,
    #[serde(default)]
    scope: Option<StringList>,
    #[serde(default)]
    scp: Option<StringList>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    token_use: Option<String>,
}

/// A verified access token.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Verified {
    pub identity: Identity,
    /// `iat` in Unix seconds (0 when absent), for user-wide revocations.
    pub issued_at_s: i64,
}

/// A verified refresh token.
#[derive(Debug, Clone)]
pub(crate) struct RefreshClaims {
    pub subject: String,
    pub session: String,
    pub jti: String,
    pub issued_at_s: i64,
}

/// Claims of an issued token.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    iat: i64,
    exp: i64,
    jti: &'a str,
    sid: &'a str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    anon: bool,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    roles: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    token_use: Option<&'a str>,
}

/// What an issued access token is for.
#[derive(Debug, Clone)]
pub(crate) struct Grant {
    pub subject: String,
    pub name: String,
    pub roles: Vec<String>,
    pub session: String,
    pub ttl_s: u64,
}

/// The header fields verification reads (nothing else of it is trusted).
struct JoseHeader {
    alg: String,
    kid: Option<String>,
}

impl Tokens {
    /// Builds the keys from `config`; an empty first-party secret is
    /// replaced by a random one.
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let secret = if config.hs256_secret.is_empty() {
            tracing::warn!(
                "no auth.hs256_secret configured; using a random one, so tokens will not survive a restart"
            );
            Secret::new(common::ids::random_secret(common::config::MIN_SECRET_BYTES))
        } else {
            config.hs256_secret.clone()
        };
        if secret.expose().len() < common::config::MIN_SECRET_BYTES {
            return Err(AuthError::Config(
                "key `auth.hs256_secret`: must be at least 32 bytes".into(),
            ));
        }
        if config.leeway_s > 3600 {
            return Err(AuthError::Config(
                "key `auth.leeway_s`: must be at most 3600".into(),
            ));
        }
        if config.max_token_bytes == 0 {
            return Err(AuthError::Config(
                "key `auth.max_token_bytes`: must be positive".into(),
            ));
        }
        Ok(Self {
            keys: KeyRing::new(config, secret.expose().as_bytes())?,
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            leeway_s: config.leeway_s,
            max_lifetime_s: config.max_token_lifetime_s,
            max_token_bytes: config.max_token_bytes,
            anonymous_ttl_s: config.anonymous_ttl_s,
            access_ttl_s: config.access_ttl_s,
            refresh_ttl_s: config.refresh_ttl_s,
        })
    }

    /// The checks every token gets, with `alg` as the only algorithm and
    /// the key's own `iss` / `aud` where it has them.
    fn validation(&self, alg: Algorithm, key: &Key) -> Validation {
        let issuer = key.issuer.as_deref().unwrap_or(&self.issuer);
        let audience = key.audience.as_deref().unwrap_or(&self.audience);
        let mut validation = Validation::new(alg);
        validation.leeway = self.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !issuer.is_empty() {
            validation.set_issuer(&[issuer]);
            required.push("iss");
        }
        if audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);
        validation
    }

    /// Size cap, header, key lookup and signature + claims, in that order.
    async fn decode(&self, token: &str) -> Result<(Claims, bool), AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::invalid(AuthReason::TooLarge));
        }
        let header = jose_header(token)?;
        let alg =
            keys::algorithm(&header.alg).ok_or(AuthError::invalid(AuthReason::AlgNotAllowed))?;
        let key = self
            .keys
            .find(header.kid.as_deref())
            .await
            .ok_or(AuthError::invalid(AuthReason::UnknownKey))?;
        let claims = decode_with(token, &key, alg, &self.validation(alg, &key))?;
        let first_party = header.kid.is_none();
        Ok((claims, first_party))
    }

    /// Verifies a presented access token and returns the identity it carries.
    pub(crate) async fn verify(&self, token: &str) -> Result<Verified, AuthError> {
        let (claims, _) = self.decode(token).await?;
        if claims.token_use.as_deref() == Some(REFRESH_USE) {
            return Err(AuthError::invalid(AuthReason::WrongTokenType));
        }
        let (Some(sub), Some(exp)) = (claims.sub, claims.exp) else {
            return Err(AuthError::invalid(AuthReason::MissingClaim));
        };
        let now_s = common::ids::now_ms() as f64 / 1000.0;
        if exp - now_s > (self.max_lifetime_s + self.leeway_s) as f64 {
            return Err(AuthError::invalid(AuthReason::LifetimeTooLong));
        }
        check_subject(&sub)?;
        let roles = claims.roles.map(StringList::into_vec).unwrap_or_default();
        let scopes = claims
            .scope
            .or(claims.scp)
            .map(StringList::into_vec)
            .unwrap_or_default();
        let anonymous = claims.anon.unwrap_or(false) || roles.iter().any(|r| r == ANONYMOUS_ROLE);
        let name = claims
            .name
            .or(claims.preferred_username)
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| sub.clone());
        let token_id = claims.jti.unwrap_or_default();
        let session_id = claims
            .sid
            .filter(|s| !s.is_empty())
            .unwrap_or_else(|| token_id.clone());
        Ok(Verified {
            identity: Identity {
                user_id: sub,
                name,
                anonymous,
                roles,
                session_id,
                expires_at: (exp * 1000.0) as i64,
                token_id,
                scopes,
                issued_at: claims.iat.unwrap_or(0.0) as i64,
            },
            issued_at_s: claims.iat.unwrap_or(0.0) as i64,
        })
    }

    /// Verifies a refresh token: first-party (no `kid`), `token_use:
    /// refresh`, with a session and an id.
    pub(crate) fn verify_refresh(&self, token: &str) -> Result<RefreshClaims, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::invalid(AuthReason::TooLarge));
        }
        let header = jose_header(token)?;
        if header.kid.is_some() || header.alg != "HS256" {
            return Err(AuthError::invalid(AuthReason::WrongTokenType));
        }
        let key = self.keys.first_party();
        let claims = decode_with(
            token,
            key,
            Algorithm::HS256,
            &self.validation(Algorithm::HS256, key),
        )?;
        if claims.token_use.as_deref() != Some(REFRESH_USE) {
            return Err(AuthError::invalid(AuthReason::WrongTokenType));
        }
        let (Some(subject), Some(session), Some(jti)) = (claims.sub, claims.sid, claims.jti) else {
            return Err(AuthError::invalid(AuthReason::MissingClaim));
        };
        Ok(RefreshClaims {
            subject,
            session,
            jti,
            issued_at_s: claims.iat.unwrap_or(0.0) as i64,
        })
    }

    /// Signs an access token for `grant`; returns it with its identity.
    pub(crate) fn issue_access(&self, grant: &Grant) -> Result<(String, Identity), AuthError> {
        let now_s = common::ids::now_ms() / 1000;
        let exp = now_s.saturating_add(i64::try_from(grant.ttl_s).unwrap_or(i64::MAX / 2));
        let jti = common::ids::new_id("at");
        let anonymous = grant.roles.iter().any(|r| r == ANONYMOUS_ROLE);
        let claims = IssuedClaims {
            sub: &grant.subject,
            name: &grant.name,
            iss: &self.issuer,
            aud: &self.audience,
            iat: now_s,
            exp,
            jti: &jti,
            sid: &grant.session,
            anon: anonymous,
            roles: &grant.roles,
            token_use: None,
        };
        let token = self.sign(&claims)?;
        let identity = Identity {
            user_id: grant.subject.clone(),
            name: if grant.name.is_empty() {
                grant.subject.clone()
            } else {
                grant.name.clone()
            },
            anonymous,
            roles: grant.roles.clone(),
            session_id: grant.session.clone(),
            expires_at: exp.saturating_mul(1000),
            token_id: jti,
            scopes: Vec::new(),
            issued_at: now_s,
        };
        Ok((token, identity))
    }

    /// Signs refresh token `jti` of `session`, valid until `expires_at_ms`.
    pub(crate) fn issue_refresh(
        &self,
        subject: &str,
        session: &str,
        jti: &str,
        expires_at_ms: i64,
    ) -> Result<String, AuthError> {
        let claims = IssuedClaims {
            sub: subject,
            name: "",
            iss: &self.issuer,
            aud: &self.audience,
            iat: common::ids::now_ms() / 1000,
            exp: expires_at_ms / 1000,
            jti,
            sid: session,
            anon: false,
            roles: &[],
            token_use: Some(REFRESH_USE),
        };
        self.sign(&claims)
    }

    fn sign(&self, claims: &IssuedClaims<'_>) -> Result<String, AuthError> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.encoding)
            .map_err(AuthError::Signing)
    }
}

/// Reads `alg` and `kid` of a compact JWS; anything unreadable is `malformed`.
fn jose_header(token: &str) -> Result<JoseHeader, AuthError> {
    let malformed = || AuthError::invalid(AuthReason::Malformed);
    if token.is_empty() {
        return Err(malformed());
    }
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    let bytes = URL_SAFE_NO_PAD.decode(header).map_err(|_| malformed())?;
    let value: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| malformed())?;
    let object = value.as_object().ok_or_else(malformed)?;
    if object.contains_key("crit") {
        // Extensions we would have to understand (RFC 7515 §4.1.11).
        return Err(AuthError::invalid(AuthReason::UnsupportedHeader));
    }
    let alg = match object.get("alg") {
        Some(serde_json::Value::String(alg)) => alg.clone(),
        _ => return Err(malformed()),
    };
    let kid = match object.get("kid") {
        None | Some(serde_json::Value::Null) => None,
        Some(serde_json::Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed()),
    };
    Ok(JoseHeader { alg, kid })
}

fn decode_with(
    token: &str,
    key: &Key,
    alg: Algorithm,
    validation: &Validation,
) -> Result<Claims, AuthError> {
    if !key.allows(alg) {
        return Err(AuthError::invalid(AuthReason::AlgNotAllowed));
    }
    jsonwebtoken::decode::<Claims>(token, &key.decoding, validation)
        .map(|data| data.claims)
        .map_err(|e| match e.kind() {
            ErrorKind::ExpiredSignature => AuthError::Expired,
            other => AuthError::invalid(rejection_reason(other)),
        })
}

/// The caller-visible cause of a refused token.
fn rejection_reason(kind: &ErrorKind) -> AuthReason {
    match kind {
        ErrorKind::InvalidSignature => AuthReason::BadSignature,
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => AuthReason::AlgNotAllowed,
        ErrorKind::MissingRequiredClaim(_) => AuthReason::MissingClaim,
        ErrorKind::ImmatureSignature => AuthReason::NotYetValid,
        ErrorKind::InvalidIssuer => AuthReason::WrongIssuer,
        ErrorKind::InvalidAudience => AuthReason::WrongAudience,
        ErrorKind::InvalidSubject => AuthReason::BadSubject,
        ErrorKind::Json(_)
        | ErrorKind::Base64(_)
        | ErrorKind::Utf8(_)
        | ErrorKind::InvalidToken => AuthReason::Malformed,
        _ => AuthReason::Rejected,
    }
}

/// A `sub` this service accepts: 1–128 characters without control or
/// text-direction characters, and none of the server's own identities
/// (`assistant`, `system`, `bot:…`).
pub(crate) fn check_subject(subject: &str) -> Result<(), AuthError> {
    let chars = subject.chars().count();
    if chars == 0 || chars > MAX_SUBJECT_CHARS || common::ids::has_disguising_chars(subject) {
        return Err(AuthError::invalid(AuthReason::BadSubject));
    }
    if common::ids::is_reserved_user_id(subject) {
        return Err(AuthError::invalid(AuthReason::ReservedSubject));
    }
    Ok(())
}

/// A display name: trimmed, at most 64 characters, no control characters;
/// `fallback` when empty.
pub(crate) fn display_name(
    requested: &str,
    fallback: impl FnOnce() -> String,
) -> Result<String, AuthError> {
    let name = requested.trim();
    if name.is_empty() {
        return Ok(fallback());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(AuthError::BadRequest("name must be at most 64 characters"));
    }
    if common::ids::has_disguising_chars(name) {
        return Err(AuthError::BadRequest(
            "name must not contain control or text-direction characters",
        ));
    }
    Ok(name.to_string())
}

/// Roles of an issued token: at most 32, each 1–64 characters.
pub(crate) fn check_roles(roles: &[String]) -> Result<(), AuthError> {
    if roles.len() > MAX_ROLES
        || roles.iter().any(|r| {
            r.is_empty() || r.chars().count() > MAX_ROLE_CHARS || r.chars().any(char::is_control)
        })
    {
        return Err(AuthError::BadRequest(
            "roles: at most 32, each 1 to 64 characters",
        ));
    }
    Ok(())
}

/// The display name of an anonymous user (a `guest-xxxx` name when empty).
pub(crate) fn anonymous_name(requested: &str) -> Result<String, AuthError> {
    display_name(requested, || {
        format!("guest-{}", common::ids::random_secret(2))
    })
}

#[cfg(test)]
mod tests;
