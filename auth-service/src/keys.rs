//! Verification keys: the first-party secret, configured secrets and PEM
//! public keys (by `kid`), and the keys of external providers' JWKS URLs,
//! cached and refetched on an unknown `kid` at most once per interval.
//!
//! A `kid` is only ever a map key: it is never part of a path or a URL, and
//! the `jku` / `x5u` / `jwk` headers are never read.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::config::{AuthConfig, JwksConfig};
use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use tokio::time::Instant;

use crate::error::AuthError;

/// Largest JWKS document read.
const MAX_JWKS_BYTES: usize = 1024 * 1024;

/// The kind of key an algorithm needs; a key only ever verifies its own kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Family {
    Hmac,
    Rsa,
    Ec,
    Ed,
}

impl Family {
    pub(crate) fn of(alg: Algorithm) -> Family {
        match alg {
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => Family::Hmac,
            Algorithm::RS256
            | Algorithm::RS384
            | Algorithm::RS512
            | Algorithm::PS256
            | Algorithm::PS384
            | Algorithm::PS512 => Family::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => Family::Ec,
            Algorithm::EdDSA => Family::Ed,
        }
    }
}

/// The algorithm a header's `alg` names, if it is one we could ever accept
/// (`none` and unknown names are not).
pub(crate) fn algorithm(name: &str) -> Option<Algorithm> {
    Some(match name {
        "HS256" => Algorithm::HS256,
        "HS384" => Algorithm::HS384,
        "HS512" => Algorithm::HS512,
        "RS256" => Algorithm::RS256,
        "RS384" => Algorithm::RS384,
        "RS512" => Algorithm::RS512,
        "PS256" => Algorithm::PS256,
        "PS384" => Algorithm::PS384,
        "PS512" => Algorithm::PS512,
        "ES256" => Algorithm::ES256,
        "ES384" => Algorithm::ES384,
        "EdDSA" => Algorithm::EdDSA,
        _ => return None,
    })
}

/// One verification key and the algorithms it may be used with.
pub(crate) struct Key {
    pub(crate) decoding: DecodingKey,
    pub(crate) family: Family,
    /// Explicit allowlist; every entry is of `family`.
    pub(crate) algorithms: Vec<Algorithm>,
    /// Claims required of this key's tokens (the provider's own); `None`:
    /// the service-wide `auth.issuer` / `auth.audience`.
    pub(crate) issuer: Option<String>,
    pub(crate) audience: Option<String>,
}

impl Key {
    pub(crate) fn allows(&self, alg: Algorithm) -> bool {
        Family::of(alg) == self.family && self.algorithms.contains(&alg)
    }
}

/// Every key tokens may be verified with.
pub(crate) struct KeyRing {
    /// The first-party HS256 key: verifies tokens without a `kid`.
    first_party: Arc<Key>,
    by_kid: HashMap<String, Arc<Key>>,
    jwks: Vec<JwksSource>,
}

impl std::fmt::Debug for KeyRing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyRing")
            .field("kids", &self.by_kid.keys().collect::<Vec<_>>())
            .field(
                "jwks",
                &self.jwks.iter().map(|s| s.url.as_str()).collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl KeyRing {
    /// Builds the keys of `config`; `first_party_secret` is the (possibly
    /// generated) secret of first-party tokens. A bad key names its config key.
    pub(crate) fn new(config: &AuthConfig, first_party_secret: &[u8]) -> Result<Self, AuthError> {
        let first_party = Arc::new(Key {
            decoding: DecodingKey::from_secret(first_party_secret),
            family: Family::Hmac,
            algorithms: vec![Algorithm::HS256],
            issuer: None,
            audience: None,
        });
        let mut by_kid = HashMap::new();
        for (i, key) in config.keys.iter().enumerate() {
            let at = format!("auth.keys[{i}]");
            let algorithms = parse_algorithms(&format!("{at}.algorithms"), &key.algorithms)?;
            let (decoding, family) = if !key.secret.is_empty() {
                if key.secret.expose().len() < common::config::MIN_SECRET_BYTES {
                    return Err(AuthError::Config(format!(
                        "key `{at}.secret`: must be at least 32 bytes"
                    )));
                }
                (
                    DecodingKey::from_secret(key.secret.expose().as_bytes()),
                    Family::Hmac,
                )
            } else {
                public_key(&format!("{at}.public_key"), key.public_key.as_bytes())?
            };
            if let Some(alg) = algorithms.iter().find(|a| Family::of(**a) != family) {
                return Err(AuthError::Config(format!(
                    "key `{at}.algorithms`: {alg:?} does not fit this {family:?} key"
                )));
            }
            by_kid.insert(
                key.kid.clone(),
                Arc::new(Key {
                    decoding,
                    family,
                    algorithms,
                    issuer: non_empty(&key.issuer),
                    audience: non_empty(&key.audience),
                }),
            );
        }
        let client = reqwest::Client::builder()
            .timeout(Duration::from_millis(config.jwks_timeout_ms))
            .redirect(reqwest::redirect::Policy::limited(3))
            .build()
            .map_err(|e| AuthError::Config(format!("key `auth.jwks`: http client: {e}")))?;
        let jwks = config
            .jwks
            .iter()
            .enumerate()
            .map(|(i, source)| JwksSource::new(i, source, config, client.clone()))
            .collect::<Result<_, _>>()?;
        Ok(Self {
            first_party,
            by_kid,
            jwks,
        })
    }

    /// The first-party key (tokens this service issues).
    pub(crate) fn first_party(&self) -> &Arc<Key> {
        &self.first_party
    }

    /// The key a token's `kid` names (none: the first-party key). An unknown
    /// `kid` refetches the JWKS sources that may be refetched now.
    pub(crate) async fn find(&self, kid: Option<&str>) -> Option<Arc<Key>> {
        let Some(kid) = kid else {
            return Some(self.first_party.clone());
        };
        if let Some(key) = self.by_kid.get(kid) {
            return Some(key.clone());
        }
        for source in &self.jwks {
            if let Some(key) = source.find(kid).await {
                return Some(key);
            }
        }
        None
    }
}

fn non_empty(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

/// A PEM public key: RSA, EC or Ed25519, whichever parses.
fn public_key(at: &str, pem: &[u8]) -> Result<(DecodingKey, Family), AuthError> {
    if let Ok(key) = DecodingKey::from_rsa_pem(pem) {
        return Ok((key, Family::Rsa));
    }
    if let Ok(key) = DecodingKey::from_ec_pem(pem) {
        return Ok((key, Family::Ec));
    }
    if let Ok(key) = DecodingKey::from_ed_pem(pem) {
        return Ok((key, Family::Ed));
    }
    Err(AuthError::Config(format!(
        "key `{at}`: not a PEM RSA, EC or Ed25519 public key"
    )))
}

fn parse_algorithms(at: &str, names: &[String]) -> Result<Vec<Algorithm>, AuthError> {
    if names.is_empty() {
        return Err(AuthError::Config(format!(
            "key `{at}`: list the accepted algorithms"
        )));
    }
    names
        .iter()
        .map(|name| {
            algorithm(name)
                .ok_or_else(|| AuthError::Config(format!("key `{at}`: unknown algorithm `{name}`")))
        })
        .collect()
}

/// One provider's JWKS URL and what was last fetched from it.
struct JwksSource {
    url: String,
    algorithms: Vec<Algorithm>,
    issuer: Option<String>,
    audience: Option<String>,
    client: reqwest::Client,
    /// Least time between two fetches caused by unknown `kid`s.
    refetch: Duration,
    /// Longest a fetched set is used before it is fetched again.
    max_age: Duration,
    /// Held while fetching, so concurrent lookups wait for one fetch.
    state: tokio::sync::Mutex<JwksState>,
}

#[derive(Default)]
struct JwksState {
    keys: HashMap<String, Arc<Key>>,
    /// When the current keys were fetched.
    fetched_at: Option<Instant>,
    /// When a fetch was last attempted (successful or not).
    attempted_at: Option<Instant>,
}

impl JwksSource {
    fn new(
        i: usize,
        source: &JwksConfig,
        config: &AuthConfig,
        client: reqwest::Client,
    ) -> Result<Self, AuthError> {
        Ok(Self {
            url: source.url.clone(),
            algorithms: parse_algorithms(
                &format!("auth.jwks[{i}].algorithms"),
                &source.algorithms,
            )?,
            issuer: non_empty(&source.issuer),
            audience: non_empty(&source.audience),
            client,
            refetch: Duration::from_secs(config.jwks_refetch_s),
            max_age: Duration::from_secs(config.jwks_cache_s),
            state: tokio::sync::Mutex::new(JwksState::default()),
        })
    }

    async fn find(&self, kid: &str) -> Option<Arc<Key>> {
        let mut state = self.state.lock().await;
        let stale = state
            .fetched_at
            .is_none_or(|at| at.elapsed() >= self.max_age);
        if !stale && let Some(key) = state.keys.get(kid) {
            return Some(key.clone());
        }
        let may_fetch = state
            .attempted_at
            .is_none_or(|at| at.elapsed() >= self.refetch);
        if may_fetch {
            state.attempted_at = Some(Instant::now());
            match self.fetch().await {
                Ok(keys) => {
                    tracing::info!(url = %self.url, keys = keys.len(), "jwks fetched");
                    state.keys = keys;
                    state.fetched_at = Some(Instant::now());
                }
                Err(error) => {
                    tracing::warn!(url = %self.url, %error, "jwks fetch failed; keeping the keys fetched before");
                }
            }
        }
        state.keys.get(kid).cloned()
    }

    async fn fetch(&self) -> Result<HashMap<String, Arc<Key>>, String> {
        let response = self
            .client
            .get(&self.url)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .error_for_status()
            .map_err(|e| e.to_string())?;
        if response
            .content_length()
            .is_some_and(|len| len > MAX_JWKS_BYTES as u64)
        {
            return Err("jwks document too large".into());
        }
        let body = response.bytes().await.map_err(|e| e.to_string())?;
        if body.len() > MAX_JWKS_BYTES {
            return Err("jwks document too large".into());
        }
        let mut keys = parse_jwks(&body, &self.algorithms);
        for key in keys.values_mut() {
            if let Some(key) = Arc::get_mut(key) {
                key.issuer.clone_from(&self.issuer);
                key.audience.clone_from(&self.audience);
            }
        }
        Ok(keys)
    }
}

/// The usable signature keys of a JWKS document, by `kid`. Keys without a
/// `kid`, for encryption, symmetric, or of a kind none of `algorithms`
/// fits, are skipped (one odd key does not spoil the set).
pub(crate) fn parse_jwks(body: &[u8], algorithms: &[Algorithm]) -> HashMap<String, Arc<Key>> {
    #[derive(serde::Deserialize)]
    struct Set {
        keys: Vec<serde_json::Value>,
    }
    let Ok(set) = serde_json::from_slice::<Set>(body) else {
        return HashMap::new();
    };
    let mut keys = HashMap::new();
    for value in set.keys {
        let Ok(jwk) = serde_json::from_value::<Jwk>(value) else {
            continue;
        };
        let Some(kid) = jwk.common.key_id.clone() else {
            continue;
        };
        if matches!(jwk.common.public_key_use, Some(ref u) if *u != PublicKeyUse::Signature) {
            continue;
        }
        let family = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Family::Rsa,
            AlgorithmParameters::EllipticCurve(_) => Family::Ec,
            AlgorithmParameters::OctetKeyPair(_) => Family::Ed,
            // A shared secret published in a key set is nobody's secret.
            AlgorithmParameters::OctetKey(_) => continue,
        };
        let mut allowed: Vec<Algorithm> = algorithms
            .iter()
            .copied()
            .filter(|alg| Family::of(*alg) == family)
            .collect();
        if let Some(named) = jwk.common.key_algorithm {
            allowed.retain(|alg| key_algorithm(named) == Some(*alg));
        }
        if allowed.is_empty() {
            continue;
        }
        let Ok(decoding) = DecodingKey::from_jwk(&jwk) else {
            continue;
        };
        keys.insert(
            kid,
            Arc::new(Key {
                decoding,
                family,
                algorithms: allowed,
                issuer: None,
                audience: None,
            }),
        );
    }
    keys
}

fn key_algorithm(named: KeyAlgorithm) -> Option<Algorithm> {
    Some(match named {
        KeyAlgorithm::HS256 => Algorithm::HS256,
        KeyAlgorithm::HS384 => Algorithm::HS384,
        KeyAlgorithm::HS512 => Algorithm::HS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}
