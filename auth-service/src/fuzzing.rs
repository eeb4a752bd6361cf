//! Entry points for the fuzz targets (`fuzz/`, feature `fuzzing`): token
//! verification as `VerifyToken` and `RefreshToken` run it, and the JWKS
//! parser, over keys the fuzz target can sign with (the test keys in
//! `testdata/`). See docs/security.md#fuzzing.

use common::Secret;
use common::config::{AuthConfig, KeyConfig};
use jsonwebtoken::Algorithm;

use crate::error::AuthError;
use crate::tokens::Tokens;

/// The first-party HS256 secret.
pub const FIRST_PARTY_SECRET: &str = "fuzzing-first-party-secret-0123456789";
/// `kid` and secret of a partner's HS512 key.
pub const PARTNER_KID: &str = "partner";
pub const PARTNER_SECRET: &str = "fuzzing-partner-secret-0123456789abcdef";
/// `kid`s of the EC (ES256) and Ed25519 (EdDSA) keys of `testdata/`.
pub const EC_KID: &str = "ec";
pub const ED_KID: &str = "ed";
/// `iss` and `aud` every token must carry.
pub const ISSUER: &str = "parley";
pub const AUDIENCE: &str = "parley-fuzz";

/// Verifies presented tokens with a fixed key set.
#[derive(Debug)]
pub struct Verifier(Tokens);

impl Verifier {
    /// The keys above; tokens may live up to 200 years, so that a signed
    /// input reaches the claim checks whatever the clock says.
    pub fn new() -> Result<Self, AuthError> {
        let config = AuthConfig {
            hs256_secret: Secret::new(FIRST_PARTY_SECRET.to_string()),
            issuer: ISSUER.into(),
            audience: AUDIENCE.into(),
            max_token_lifetime_s: 200 * 365 * 24 * 3600,
            keys: vec![
                KeyConfig {
                    kid: PARTNER_KID.into(),
                    algorithms: vec!["HS512".into()],
                    secret: Secret::new(PARTNER_SECRET.to_string()),
                    ..KeyConfig::default()
                },
                KeyConfig {
                    kid: EC_KID.into(),
                    algorithms: vec!["ES256".into()],
                    public_key: include_str!("../testdata/ec_public.pem").into(),
                    ..KeyConfig::default()
                },
                KeyConfig {
                    kid: ED_KID.into(),
                    algorithms: vec!["EdDSA".into()],
                    public_key: include_str!("../testdata/ed_public.pem").into(),
                    ..KeyConfig::default()
                },
            ],
            ..AuthConfig::default()
        };
        Tokens::new(&config).map(Self)
    }

    /// An access token's user id, as `VerifyToken` checks it.
    pub async fn verify(&self, token: &str) -> Result<String, AuthError> {
        self.0.verify(token).await.map(|v| v.identity.user_id)
    }

    /// A refresh token's session, as `RefreshToken` checks it.
    pub fn verify_refresh(&self, token: &str) -> Result<String, AuthError> {
        self.0.verify_refresh(token).map(|claims| claims.session)
    }
}

/// The `kid`s of the usable keys of a JWKS document, as a provider's key
/// set is read.
pub fn jwks(body: &[u8]) -> Vec<String> {
    let algorithms = [
        Algorithm::RS256,
        Algorithm::RS384,
        Algorithm::RS512,
        Algorithm::PS256,
        Algorithm::ES256,
        Algorithm::ES384,
        Algorithm::EdDSA,
    ];
    crate::keys::parse_jwks(body, &algorithms)
        .into_keys()
        .collect()
}
