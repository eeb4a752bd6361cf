//! Security tests of verification: each fails if its check is removed.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use common::config::{JwksConfig, KeyConfig};
use jsonwebtoken::EncodingKey;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const SECRET: &str = "unit-test-signing-secret-0123456789abcdef";
const RSA_PRIVATE: &str = include_str!("../../testdata/rsa_private.pem");
const RSA_PUBLIC: &str = include_str!("../../testdata/rsa_public.pem");
const EC_PRIVATE: &str = include_str!("../../testdata/ec_private.pem");
const EC_PUBLIC: &str = include_str!("../../testdata/ec_public.pem");
const ED_PRIVATE: &str = include_str!("../../testdata/ed_private.pem");
const ED_PUBLIC: &str = include_str!("../../testdata/ed_public.pem");
const JWKS: &str = include_str!("../../testdata/jwks.json");

fn now() -> i64 {
    common::ids::now_ms() / 1000
}

fn config() -> AuthConfig {
    AuthConfig {
        hs256_secret: Secret::new(SECRET),
        issuer: "parley".into(),
        keys: vec![
            KeyConfig {
                kid: "rsa".into(),
                algorithms: vec!["RS256".into(), "PS256".into()],
                public_key: RSA_PUBLIC.into(),
                ..KeyConfig::default()
            },
            KeyConfig {
                kid: "ec".into(),
                algorithms: vec!["ES256".into()],
                public_key: EC_PUBLIC.into(),
                ..KeyConfig::default()
            },
            KeyConfig {
                kid: "ed".into(),
                algorithms: vec!["EdDSA".into()],
                public_key: ED_PUBLIC.into(),
                ..KeyConfig::default()
            },
            KeyConfig {
                kid: "hs-partner".into(),
                algorithms: vec!["HS512".into()],
                secret: Secret::new("partner-secret-0123456789abcdef0123456789"),
                ..KeyConfig::default()
            },
        ],
        ..AuthConfig::default()
    }
}

fn tokens() -> Tokens {
    Tokens::new(&config()).expect("tokens")
}

fn claims(sub: &str) -> Value {
    json!({"sub": sub, "iss": "parley", "exp": now() + 600, "iat": now()})
}

fn with(mut claims: Value, key: &str, value: Value) -> Value {
    claims[key] = value;
    claims
}

fn header(alg: Algorithm, kid: Option<&str>) -> Header {
    let mut header = Header::new(alg);
    header.kid = kid.map(str::to_string);
    header
}

fn hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign")
}

fn signed(header: &Header, claims: &Value, key: &EncodingKey) -> String {
    jsonwebtoken::encode(header, claims, key).expect("sign")
}

fn b64(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A token with a hand-made header, signed (HS256) over what it says.
fn with_raw_header(raw_header: &Value, claims: &Value, secret: &[u8]) -> String {
    let message = format!("{}.{}", b64(raw_header), b64(claims));
    let signature = jsonwebtoken::crypto::sign(
        message.as_bytes(),
        &EncodingKey::from_secret(secret),
        Algorithm::HS256,
    )
    .expect("sign");
    format!("{message}.{signature}")
}

async fn reason(tokens: &Tokens, token: &str) -> &'static str {
    match tokens.verify(token).await {
        Ok(v) => panic!("token must be refused, got {:?}", v.identity),
        Err(e) => e.reason().expect("a token refusal has a reason").as_str(),
    }
}

#[tokio::test]
async fn every_configured_key_type_verifies_its_own_tokens() {
    let tokens = tokens();
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa");
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec");
    let ed = EncodingKey::from_ed_pem(ED_PRIVATE.as_bytes()).expect("ed");
    let partner = EncodingKey::from_secret(b"partner-secret-0123456789abcdef0123456789");
    for (alg, kid, key) in [
        (Algorithm::RS256, "rsa", &rsa),
        (Algorithm::PS256, "rsa", &rsa),
        (Algorithm::ES256, "ec", &ec),
        (Algorithm::EdDSA, "ed", &ed),
        (Algorithm::HS512, "hs-partner", &partner),
    ] {
        let token = signed(&header(alg, Some(kid)), &claims("u_1"), key);
        let verified = tokens
            .verify(&token)
            .await
            .unwrap_or_else(|e| panic!("{alg:?}: {e}"));
        assert_eq!(verified.identity.user_id, "u_1");
    }
    // An algorithm the key's allowlist does not name.
    let rs512 = signed(&header(Algorithm::RS512, Some("rsa")), &claims("u_1"), &rsa);
    assert_eq!(reason(&tokens, &rs512).await, "alg_not_allowed");
    // The first-party key is HS256 only.
    let hs384 = jsonwebtoken::encode(
        &Header::new(Algorithm::HS384),
        &claims("u_1"),
        &EncodingKey::from_secret(SECRET.as_bytes()),
    )
    .expect("sign");
    assert_eq!(reason(&tokens, &hs384).await, "alg_not_allowed");
}

#[tokio::test]
async fn claims_map_to_the_identity() {
    let tokens = tokens();
    let exp = now() + 600;
    let token = hs256(&json!({
        "sub": "u_alice", "iss": "parley", "exp": exp, "iat": now(), "name": "Alice",
        "roles": ["member", "admin"], "scope": "read write", "sid": "sess_1", "jti": "jti_1",
    }));
    let identity = tokens.verify(&token).await.expect("valid").identity;
    assert_eq!(identity.user_id, "u_alice");
    assert_eq!(identity.name, "Alice");
    assert_eq!(identity.roles, ["member", "admin"]);
    assert_eq!(identity.scopes, ["read", "write"]);
    assert_eq!(identity.session_id, "sess_1");
    assert_eq!(identity.token_id, "jti_1");
    assert_eq!(identity.expires_at, exp * 1000);
    let token = hs256(&with(claims("u_bob"), "preferred_username", json!("bobby")));
    assert_eq!(
        tokens.verify(&token).await.expect("valid").identity.name,
        "bobby"
    );
    let token = hs256(&with(claims("u_bob"), "scp", json!(["chat:write"])));
    assert_eq!(
        tokens.verify(&token).await.expect("valid").identity.scopes,
        ["chat:write"]
    );
}

#[tokio::test]
async fn alg_none_is_refused() {
    let tokens = tokens();
    let payload = b64(&claims("u_1"));
    for alg in ["none", "None", "NONE"] {
        let head = b64(&json!({"alg": alg, "typ": "JWT"}));
        assert_eq!(
            reason(&tokens, &format!("{head}.{payload}.")).await,
            "alg_not_allowed"
        );
    }
    let head = b64(&json!({"alg": "none"}));
    assert_eq!(
        reason(&tokens, &format!("{head}.{payload}")).await,
        "malformed"
    );
}

#[tokio::test]
async fn an_rsa_public_key_used_as_an_hmac_secret_is_refused() {
    let tokens = tokens();
    // The classic confusion: HS256 "signed" with the public key's PEM bytes,
    // naming the RSA key.
    let forged = signed(
        &header(Algorithm::HS256, Some("rsa")),
        &claims("u_1"),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    );
    assert_eq!(reason(&tokens, &forged).await, "alg_not_allowed");
    // Without a kid it meets the first-party secret, which it does not match.
    let forged = signed(
        &header(Algorithm::HS256, None),
        &claims("u_1"),
        &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
    );
    assert_eq!(reason(&tokens, &forged).await, "bad_signature");
}

#[tokio::test]
async fn time_claims_are_enforced_with_the_leeway() {
    let tokens = tokens();
    assert!(matches!(
        tokens
            .verify(&hs256(&with(claims("u_1"), "exp", json!(now() - 3600))))
            .await,
        Err(AuthError::Expired)
    ));
    tokens
        .verify(&hs256(&with(claims("u_1"), "exp", json!(now() - 5))))
        .await
        .expect("within leeway");
    let no_exp = {
        let mut c = claims("u_1");
        c.as_object_mut().expect("object").remove("exp");
        c
    };
    assert_eq!(reason(&tokens, &hs256(&no_exp)).await, "missing_claim");
    assert_eq!(
        reason(
            &tokens,
            &hs256(&with(claims("u_1"), "nbf", json!(now() + 3600)))
        )
        .await,
        "not_yet_valid"
    );
    assert_eq!(
        reason(&tokens, &hs256(&with(claims("u_1"), "nbf", json!("soon")))).await,
        "malformed"
    );
}

#[tokio::test]
async fn issuer_and_audience_are_checked() {
    let tokens = tokens();
    assert_eq!(
        reason(&tokens, &hs256(&with(claims("u_1"), "iss", json!("evil")))).await,
        "wrong_issuer"
    );
    let with_audience = Tokens::new(&AuthConfig {
        audience: "parley-clients".into(),
        ..config()
    })
    .expect("tokens");
    assert_eq!(
        reason(
            &with_audience,
            &hs256(&with(claims("u_1"), "aud", json!("other")))
        )
        .await,
        "wrong_audience"
    );
    assert_eq!(
        reason(&with_audience, &hs256(&claims("u_1"))).await,
        "missing_claim"
    );
    with_audience
        .verify(&hs256(&with(
            claims("u_1"),
            "aud",
            json!(["x", "parley-clients"]),
        )))
        .await
        .expect("one of the audiences");
}

#[tokio::test]
async fn tampering_with_payload_or_signature_is_detected() {
    let tokens = tokens();
    let token = hs256(&claims("u_1"));
    let parts: Vec<&str> = token.split('.').collect();
    let forged_payload = b64(&claims("u_admin"));
    let tampered = format!("{}.{}.{}", parts[0], forged_payload, parts[2]);
    assert_eq!(reason(&tokens, &tampered).await, "bad_signature");
    // Flip the first signature character to another valid base64url one.
    let mut signature = parts[2].to_string();
    let first = if signature.starts_with('A') { "B" } else { "A" };
    signature.replace_range(0..1, first);
    let tampered = format!("{}.{}.{}", parts[0], parts[1], signature);
    assert_eq!(reason(&tokens, &tampered).await, "bad_signature");
}

#[tokio::test]
async fn unknown_and_hostile_kids_are_only_looked_up() {
    let tokens = tokens();
    for kid in [
        "nope",
        "../../etc/passwd",
        "rsa\"",
        "' OR '1'='1",
        "rsa/../ec",
        "",
    ] {
        let token = with_raw_header(
            &json!({"alg": "HS256", "kid": kid}),
            &claims("u_1"),
            SECRET.as_bytes(),
        );
        assert_eq!(reason(&tokens, &token).await, "unknown_key", "kid {kid:?}");
    }
}

#[tokio::test]
async fn jku_x5u_and_jwk_headers_are_never_followed() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.set_nonblocking(true).expect("nonblocking");
    let url = format!("http://{}/jwks.json", listener.local_addr().expect("addr"));
    let tokens = tokens();
    // The attacker's key set would hold this "public key" as an HS secret.
    let attacker = b"attacker-secret-0123456789abcdef012345";
    for head in [
        json!({"alg": "HS256", "kid": "attacker", "jku": url}),
        json!({"alg": "HS256", "x5u": url}),
        json!({"alg": "HS256", "jwk": {"kty": "oct", "k": URL_SAFE_NO_PAD.encode(attacker)}}),
    ] {
        let token = with_raw_header(&head, &claims("u_1"), attacker);
        assert!(tokens.verify(&token).await.is_err(), "{head}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("the jku/x5u address was contacted: {other:?}"),
    }
}

#[tokio::test]
async fn oversized_tokens_are_refused_before_parsing() {
    let tokens = Tokens::new(&AuthConfig {
        max_token_bytes: 512,
        ..config()
    })
    .expect("tokens");
    let small = hs256(&claims("u_1"));
    assert!(small.len() <= 512);
    tokens.verify(&small).await.expect("small token");
    let big = hs256(&with(claims("u_1"), "padding", json!("x".repeat(600))));
    assert_eq!(reason(&tokens, &big).await, "too_large");
    // Not even valid base64: refused for its size, not its content.
    assert_eq!(reason(&tokens, &"!".repeat(513)).await, "too_large");
}

#[tokio::test]
async fn garbage_is_malformed_and_never_panics() {
    let tokens = tokens();
    let valid = hs256(&claims("u_1"));
    let parts: Vec<&str> = valid.split('.').collect();
    let inputs = [
        String::new(),
        "a".into(),
        "a.b".into(),
        "a.b.c.d".into(),
        "....".into(),
        "%%%.%%%.%%%".into(),
        format!("{}.%%%.{}", parts[0], parts[2]),
        format!("{}.{}.{}", b64(&json!([1, 2])), parts[1], parts[2]),
        format!("{}.{}.{}", b64(&json!({"alg": 7})), parts[1], parts[2]),
        format!(
            "{}.{}.{}",
            b64(&json!({"alg": "HS256", "kid": {"a": 1}})),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode("{\"alg\":"),
            parts[1],
            parts[2]
        ),
        format!(
            "{}.{}.{}",
            URL_SAFE_NO_PAD.encode([0xff, 0xfe]),
            parts[1],
            parts[2]
        ),
        with_raw_header(
            &json!({"alg": "HS256"}),
            &json!("just a string"),
            SECRET.as_bytes(),
        ),
        with_raw_header(
            &json!({"alg": "HS256"}),
            &json!({"sub": 1, "exp": now() + 60, "iss": "parley"}),
            SECRET.as_bytes(),
        ),
        format!("{}.{}.{}", parts[0], parts[1], "é"),
    ];
    for input in inputs {
        let result = tokens.verify(&input).await;
        assert!(
            matches!(result, Err(AuthError::Invalid { .. })),
            "{input:?}: {result:?}"
        );
    }
}

#[tokio::test]
async fn refresh_tokens_are_not_access_tokens_and_vice_versa() {
    let tokens = tokens();
    let refresh = tokens
        .issue_refresh("u_1", "sess_1", "rt_1", (now() + 600) * 1000)
        .expect("issue");
    assert_eq!(reason(&tokens, &refresh).await, "wrong_token_type");
    let claims = tokens.verify_refresh(&refresh).expect("refresh verifies");
    assert_eq!(
        (claims.session.as_str(), claims.jti.as_str()),
        ("sess_1", "rt_1")
    );
    let grant = Grant {
        subject: "u_1".into(),
        name: "U".into(),
        roles: vec![],
        session: "sess_1".into(),
        ttl_s: 60,
    };
    let (access, identity) = tokens.issue_access(&grant).expect("issue");
    assert!(matches!(
        tokens.verify_refresh(&access),
        Err(AuthError::Invalid {
            reason: common::auth_reason::AuthReason::WrongTokenType
        })
    ));
    assert_eq!(
        tokens.verify(&access).await.expect("access").identity,
        identity
    );
}

#[test]
fn keys_that_do_not_fit_their_algorithms_stop_start_up() {
    let bad = |key: KeyConfig| {
        let config = AuthConfig {
            keys: vec![key],
            ..config()
        };
        match Tokens::new(&config) {
            Err(AuthError::Config(message)) => message,
            other => panic!("must be refused: {other:?}"),
        }
    };
    let message = bad(KeyConfig {
        kid: "k".into(),
        algorithms: vec!["ES256".into()],
        public_key: RSA_PUBLIC.into(),
        ..KeyConfig::default()
    });
    assert!(message.contains("auth.keys[0].algorithms"), "{message}");
    let message = bad(KeyConfig {
        kid: "k".into(),
        algorithms: vec!["RS256".into()],
        public_key: "-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n".into(),
        ..KeyConfig::default()
    });
    assert!(message.contains("auth.keys[0].public_key"), "{message}");
    let message = bad(KeyConfig {
        kid: "k".into(),
        algorithms: vec!["HS256".into()],
        secret: Secret::new("too-short"),
        ..KeyConfig::default()
    });
    assert!(message.contains("auth.keys[0].secret"), "{message}");
    assert!(!message.contains("too-short"));
}

/// A minimal HTTP server answering every request with `body`, counting them.
async fn jwks_server(body: &'static str) -> (String, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let url = format!(
        "http://{}/.well-known/jwks.json",
        listener.local_addr().expect("addr")
    );
    let hits = Arc::new(AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            counter.fetch_add(1, Ordering::SeqCst);
            let mut buf = [0u8; 4096];
            let _ = socket.read(&mut buf).await;
            let response = format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = socket.write_all(response.as_bytes()).await;
        }
    });
    (url, hits)
}

#[tokio::test]
async fn jwks_keys_verify_and_unknown_kids_refetch_at_most_once_per_interval() {
    let (url, hits) = jwks_server(JWKS).await;
    let tokens = Tokens::new(&AuthConfig {
        keys: Vec::new(),
        jwks: vec![JwksConfig {
            url,
            algorithms: vec!["RS256".into()],
            ..JwksConfig::default()
        }],
        jwks_refetch_s: 3600,
        ..config()
    })
    .expect("tokens");
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa");
    let token = signed(
        &header(Algorithm::RS256, Some("rsa-1")),
        &claims("u_jwks"),
        &rsa,
    );
    assert_eq!(
        tokens
            .verify(&token)
            .await
            .expect("jwks key")
            .identity
            .user_id,
        "u_jwks"
    );
    assert_eq!(hits.load(Ordering::SeqCst), 1, "fetched once");
    tokens.verify(&token).await.expect("cached");
    assert_eq!(hits.load(Ordering::SeqCst), 1, "served from the cache");

    let unknown = signed(
        &header(Algorithm::RS256, Some("rotated-2")),
        &claims("u_jwks"),
        &rsa,
    );
    for _ in 0..5 {
        assert_eq!(reason(&tokens, &unknown).await, "unknown_key");
    }
    assert_eq!(
        hits.load(Ordering::SeqCst),
        1,
        "within jwks_refetch_s an unknown kid does not refetch"
    );
    // A symmetric key published in the set is never used.
    let sym = signed(
        &header(Algorithm::HS256, Some("sym")),
        &claims("u_jwks"),
        &EncodingKey::from_secret(&[b'x'; 32]),
    );
    assert!(tokens.verify(&sym).await.is_err());
    // RS256 allowlisted, so PS256 with the same key is not.
    let ps = signed(
        &header(Algorithm::PS256, Some("rsa-1")),
        &claims("u_jwks"),
        &rsa,
    );
    assert_eq!(reason(&tokens, &ps).await, "alg_not_allowed");
}

#[tokio::test]
async fn an_unknown_kid_refetches_once_the_interval_has_passed() {
    let (url, hits) = jwks_server(JWKS).await;
    let tokens = Tokens::new(&AuthConfig {
        keys: Vec::new(),
        jwks: vec![JwksConfig {
            url,
            algorithms: vec!["RS256".into()],
            ..JwksConfig::default()
        }],
        jwks_refetch_s: 0,
        ..config()
    })
    .expect("tokens");
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa");
    let unknown = signed(
        &header(Algorithm::RS256, Some("rotated-2")),
        &claims("u"),
        &rsa,
    );
    assert_eq!(reason(&tokens, &unknown).await, "unknown_key");
    assert_eq!(reason(&tokens, &unknown).await, "unknown_key");
    assert_eq!(
        hits.load(Ordering::SeqCst),
        2,
        "each lookup may refetch with a zero interval"
    );
}

#[tokio::test]
async fn a_key_may_require_its_own_issuer_and_audience() {
    let mut config = config();
    config.keys[1].issuer = "https://idp.example".into();
    config.keys[1].audience = "parley-api".into();
    let tokens = Tokens::new(&config).expect("tokens");
    let ec = EncodingKey::from_ec_pem(EC_PRIVATE.as_bytes()).expect("ec");
    let provider = json!({"sub": "u_1", "iss": "https://idp.example", "aud": "parley-api", "exp": now() + 600});
    tokens
        .verify(&signed(
            &header(Algorithm::ES256, Some("ec")),
            &provider,
            &ec,
        ))
        .await
        .expect("the provider's own claims");
    let first_party_claims = with(claims("u_1"), "aud", json!("parley-api"));
    assert_eq!(
        reason(
            &tokens,
            &signed(
                &header(Algorithm::ES256, Some("ec")),
                &first_party_claims,
                &ec
            )
        )
        .await,
        "wrong_issuer"
    );
    let wrong_aud = with(provider.clone(), "aud", json!("elsewhere"));
    assert_eq!(
        reason(
            &tokens,
            &signed(&header(Algorithm::ES256, Some("ec")), &wrong_aud, &ec)
        )
        .await,
        "wrong_audience"
    );
    // Other keys keep the service-wide issuer.
    assert_eq!(
        reason(
            &tokens,
            &hs256(&with(claims("u_1"), "iss", json!("https://idp.example")))
        )
        .await,
        "wrong_issuer"
    );
}

#[tokio::test]
async fn a_jwks_source_may_require_its_own_issuer() {
    let (url, _hits) = jwks_server(JWKS).await;
    let tokens = Tokens::new(&AuthConfig {
        keys: Vec::new(),
        jwks: vec![JwksConfig {
            url,
            algorithms: vec!["RS256".into()],
            issuer: "https://clerk.example".into(),
            audience: String::new(),
        }],
        ..config()
    })
    .expect("tokens");
    let rsa = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).expect("rsa");
    let head = header(Algorithm::RS256, Some("rsa-1"));
    let theirs = with(claims("u_1"), "iss", json!("https://clerk.example"));
    tokens
        .verify(&signed(&head, &theirs, &rsa))
        .await
        .expect("provider issuer");
    assert_eq!(
        reason(&tokens, &signed(&head, &claims("u_1"), &rsa)).await,
        "wrong_issuer"
    );
}

#[tokio::test]
async fn every_single_character_change_is_refused_without_a_panic() {
    let tokens = tokens();
    let valid = hs256(&claims("u_1"));
    let original = tokens.verify(&valid).await.expect("valid").identity;
    for i in 0..valid.len() {
        for replacement in ['A', '_', '.', '=', 'é'] {
            let mut mutated = valid.clone();
            mutated.replace_range(i..=i, &replacement.to_string());
            if mutated == valid {
                continue;
            }
            // Some changes in a segment's final character only touch unused
            // bits; those decode to the same bytes and are the same token.
            if let Ok(v) = tokens.verify(&mutated).await {
                assert_eq!(v.identity, original, "{mutated}");
            }
        }
    }
}
