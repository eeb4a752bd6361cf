//! HS256 access tokens: verification of presented tokens and issuance of
//! anonymous ones, independent of the gRPC layer.

use common::Secret;
use common::config::AuthConfig;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use proto::auth::v1::Identity;
use serde::{Deserialize, Serialize};

use crate::error::AuthError;

/// User id of the AI assistant; no token may claim it.
const RESERVED_SUBJECT: &str = "assistant";
/// Longest accepted `sub`, in characters.
const MAX_SUBJECT_CHARS: usize = 128;
/// Longest anonymous display name, in characters.
const MAX_NAME_CHARS: usize = 64;
/// Largest tolerated clock skew; beyond it `exp` would mean little.
const MAX_LEEWAY_S: u64 = 3600;
/// Shortest accepted HS256 secret.
const MIN_SECRET_BYTES: usize = 32;
/// Role carried by anonymous users.
const ANONYMOUS_ROLE: &str = "anonymous";

/// Signs and verifies tokens with one HS256 secret.
pub(crate) struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    /// What a presented token must satisfy (algorithm, required claims, leeway).
    validation: Validation,
    /// `iss` of issued tokens (omitted when empty).
    issuer: String,
    /// `aud` of issued tokens (omitted when empty), so they pass verification.
    audience: String,
    /// Tokens larger than this are refused before any parsing.
    max_token_bytes: usize,
    anonymous_ttl_s: u64,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("issuer", &self.issuer)
            .field("audience", &self.audience)
            .field("max_token_bytes", &self.max_token_bytes)
            .field("anonymous_ttl_s", &self.anonymous_ttl_s)
            .finish_non_exhaustive()
    }
}

/// Claims read from a presented token. Validation of `exp`, `nbf`, `iss` and
/// `aud` happens in [`Validation`]; these are the ones the identity is made of.
#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: f64,
    /// Read only so that a non-numeric `nbf` makes the token malformed
    /// instead of being skipped by the time check.
    #[serde(default, rename = "nbf")]
    _nbf: Option<f64>,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    anon: Option<bool>,
    #[serde(default)]
    roles: Option<Vec<String>>,
    #[serde(default)]
    sid: Option<String>,
    #[serde(default)]
    jti: Option<String>,
}

/// Claims of an issued anonymous token.
#[derive(Serialize)]
struct IssuedClaims<'a> {
    sub: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    iss: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    aud: &'a str,
    iat: u64,
    exp: u64,
    jti: &'a str,
    anon: bool,
    roles: [&'a str; 1],
}

impl Tokens {
    /// Builds the keys from `config`; an empty secret is replaced by a random one.
    pub(crate) fn new(config: &AuthConfig) -> Result<Self, AuthError> {
        let secret = if config.hs256_secret.is_empty() {
            tracing::warn!(
                "no auth.hs256_secret configured; using a random one, so tokens will not survive a restart"
            );
            Secret::new(common::ids::random_secret(MIN_SECRET_BYTES))
        } else {
            config.hs256_secret.clone()
        };
        if secret.expose().len() < MIN_SECRET_BYTES {
            return Err(AuthError::Config(
                "key `auth.hs256_secret`: must be at least 32 bytes",
            ));
        }
        if config.leeway_s > MAX_LEEWAY_S {
            return Err(AuthError::Config(
                "key `auth.leeway_s`: must be at most 3600",
            ));
        }
        if config.max_token_bytes == 0 {
            return Err(AuthError::Config(
                "key `auth.max_token_bytes`: must be positive",
            ));
        }

        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = config.leeway_s;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        let mut required = vec!["exp", "sub"];
        if !config.issuer.is_empty() {
            validation.set_issuer(&[&config.issuer]);
            required.push("iss");
        }
        if config.audience.is_empty() {
            validation.validate_aud = false;
        } else {
            validation.set_audience(&[&config.audience]);
            required.push("aud");
        }
        validation.set_required_spec_claims(&required);

        Ok(Self {
            encoding: EncodingKey::from_secret(secret.expose().as_bytes()),
            decoding: DecodingKey::from_secret(secret.expose().as_bytes()),
            validation,
            issuer: config.issuer.clone(),
            audience: config.audience.clone(),
            max_token_bytes: config.max_token_bytes,
            anonymous_ttl_s: config.anonymous_ttl_s,
        })
    }

    /// Verifies a presented token and returns the identity it carries.
    pub(crate) fn verify(&self, token: &str) -> Result<Identity, AuthError> {
        if token.len() > self.max_token_bytes {
            return Err(AuthError::Invalid {
                reason: "token too large",
            });
        }
        if token.is_empty() {
            return Err(AuthError::Invalid {
                reason: "empty token",
            });
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                ErrorKind::ExpiredSignature => AuthError::Expired,
                other => AuthError::Invalid {
                    reason: rejection_reason(other),
                },
            })?
            .claims;

        let subject_chars = claims.sub.chars().count();
        if subject_chars == 0 || subject_chars > MAX_SUBJECT_CHARS {
            return Err(AuthError::Invalid {
                reason: "subject length out of range",
            });
        }
        if claims.sub == RESERVED_SUBJECT {
            return Err(AuthError::Invalid {
                reason: "reserved subject",
            });
        }

        let roles = claims.roles.unwrap_or_default();
        let anonymous = claims.anon.unwrap_or(false) || roles.iter().any(|r| r == ANONYMOUS_ROLE);
        let name = claims
            .name
            .map(|n| n.trim().to_string())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| claims.sub.clone());
        let session_id = claims
            .sid
            .filter(|s| !s.is_empty())
            .or(claims.jti)
            .unwrap_or_default();
        Ok(Identity {
            user_id: claims.sub,
            name,
            anonymous,
            roles,
            session_id,
            expires_at: (claims.exp * 1000.0) as i64,
        })
    }

    /// Issues a token for a new anonymous user with display name `name`
    /// (trimmed; a `guest-xxxx` name is picked when empty).
    pub(crate) fn issue_anonymous(&self, name: &str) -> Result<(Identity, String), AuthError> {
        let name = anonymous_name(name)?;
        let user_id = common::ids::new_id("anon");
        let session_id = common::ids::new_id("sess");
        let now_s = u64::try_from(common::ids::now_ms() / 1000).unwrap_or_default();
        let exp = now_s.saturating_add(self.anonymous_ttl_s);
        let claims = IssuedClaims {
            sub: &user_id,
            name: &name,
            iss: &self.issuer,
            aud: &self.audience,
            iat: now_s,
            exp,
            jti: &session_id,
            anon: true,
            roles: [ANONYMOUS_ROLE],
        };
        let token = jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .map_err(AuthError::Signing)?;
        let identity = Identity {
            user_id,
            name,
            anonymous: true,
            roles: vec![ANONYMOUS_ROLE.to_string()],
            session_id,
            expires_at: i64::try_from(exp.saturating_mul(1000)).unwrap_or(i64::MAX),
        };
        Ok((identity, token))
    }
}

/// A short, log-friendly cause of a refused token (never shown to callers).
fn rejection_reason(kind: &ErrorKind) -> &'static str {
    match kind {
        ErrorKind::InvalidSignature => "bad signature",
        ErrorKind::InvalidAlgorithm | ErrorKind::InvalidAlgorithmName => "algorithm not accepted",
        ErrorKind::MissingRequiredClaim(_) => "missing required claim",
        ErrorKind::ImmatureSignature => "not yet valid",
        ErrorKind::InvalidIssuer => "wrong issuer",
        ErrorKind::InvalidAudience => "wrong audience",
        ErrorKind::Json(_) => "malformed claims or header",
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) | ErrorKind::InvalidToken => "malformed token",
        _ => "rejected",
    }
}

/// The display name of an anonymous user.
fn anonymous_name(requested: &str) -> Result<String, AuthError> {
    let name = requested.trim();
    if name.is_empty() {
        return Ok(format!("guest-{}", common::ids::random_secret(2)));
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(AuthError::BadRequest("name must be at most 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(AuthError::BadRequest(
            "name must not contain control characters",
        ));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_names_become_guests_and_long_ones_are_refused() {
        let guest = anonymous_name("   ").expect("guest name");
        assert!(guest.starts_with("guest-"), "{guest}");
        assert_eq!(guest.len(), "guest-".len() + 4);
        assert!(
            guest["guest-".len()..]
                .chars()
                .all(|c| c.is_ascii_hexdigit()),
            "{guest}"
        );
        assert_eq!(anonymous_name("  zoë  ").expect("trimmed"), "zoë");
        assert!(anonymous_name(&"é".repeat(64)).is_ok());
        assert!(matches!(
            anonymous_name(&"é".repeat(65)),
            Err(AuthError::BadRequest(_))
        ));
        assert!(matches!(
            anonymous_name("a\u{7}b"),
            Err(AuthError::BadRequest(_))
        ));
    }

    #[test]
    fn a_short_configured_secret_is_refused() {
        let config = AuthConfig {
            hs256_secret: Secret::new("short"),
            ..AuthConfig::default()
        };
        assert!(matches!(Tokens::new(&config), Err(AuthError::Config(_))));
    }

    #[test]
    fn issued_tokens_verify_with_the_same_identity() {
        let config = AuthConfig {
            audience: "parley-clients".into(),
            ..AuthConfig::default()
        };
        let tokens = Tokens::new(&config).expect("tokens");
        let (issued, token) = tokens.issue_anonymous("ada").expect("issue");
        let verified = tokens.verify(&token).expect("verify");
        assert_eq!(verified, issued);
        assert!(verified.user_id.starts_with("anon_"));
    }
}
