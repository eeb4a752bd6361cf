//! Tokens presented to auth-service. First byte 0: the rest is a token,
//! checked as an access and as a refresh token against keys the input does
//! not know. 1 to 4: the rest is `header JSON\nclaims JSON`, made into a
//! compact JWS signed with the first-party HS256 secret (1), the partner's
//! HS512 key (2), the EC key (3, ES256) or the Ed25519 key (4) — whatever
//! algorithm and `kid` the header claims. 5: the rest is a JWKS document.
//! A token that verifies never names a reserved or disguised user.
#![no_main]

use std::sync::LazyLock;
use std::task::{Context, Poll, Waker};

use auth_service::fuzzing::{self, FIRST_PARTY_SECRET, PARTNER_SECRET, Verifier};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::{Algorithm, EncodingKey};
use libfuzzer_sys::fuzz_target;

static VERIFIER: LazyLock<Verifier> =
    LazyLock::new(|| Verifier::new().expect("the fuzzing key set is valid"));

static SIGNERS: LazyLock<[(Algorithm, EncodingKey); 4]> = LazyLock::new(|| {
    [
        (
            Algorithm::HS256,
            EncodingKey::from_secret(FIRST_PARTY_SECRET.as_bytes()),
        ),
        (
            Algorithm::HS512,
            EncodingKey::from_secret(PARTNER_SECRET.as_bytes()),
        ),
        (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(include_bytes!("../../auth-service/testdata/ec_private.pem"))
                .expect("ec key"),
        ),
        (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(include_bytes!("../../auth-service/testdata/ed_private.pem"))
                .expect("ed key"),
        ),
    ]
});

/// Runs a future that must not wait: with no JWKS URL configured, key
/// lookup and verification never do I/O.
fn at_once<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future
        .as_mut()
        .poll(&mut Context::from_waker(Waker::noop()))
    {
        Poll::Ready(output) => output,
        Poll::Pending => panic!("token verification waited"),
    }
}

fn check(token: &str) {
    if let Ok(user) = at_once(VERIFIER.verify(token)) {
        assert!(
            !common::ids::is_reserved_user_id(&user) && !common::ids::has_disguising_chars(&user),
            "a verified token named {user:?}"
        );
    }
    let _ = VERIFIER.verify_refresh(token);
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 6 {
        0 => {
            if let Ok(token) = std::str::from_utf8(rest) {
                check(token);
            }
        }
        5 => {
            let _ = fuzzing::jwks(rest);
        }
        signer => {
            let Some(newline) = rest.iter().position(|b| *b == b'\n') else {
                return;
            };
            let (header, claims) = (&rest[..newline], &rest[newline + 1..]);
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let (alg, key) = &SIGNERS[usize::from(signer - 1)];
            let signature =
                jsonwebtoken::crypto::sign(input.as_bytes(), key, *alg).expect("signing");
            check(&format!("{input}.{signature}"));
        }
    }
});
