//! Authentication through the edge: revocation reaching live connections on
//! every edge, token expiry and in-place refresh, development login, and
//! blocking an address after failed attempts.

use std::time::{Duration, Instant};

use proto::auth::v1::{IssueTokensRequest, RevokeRequest, TokenPair};
use serde_json::json;

use crate::helpers::{Client, TestApp, assert_no_task_panicked, spawn_app, spawn_app_with, token};

async fn issue(app: &TestApp, subject: &str) -> TokenPair {
    app.auth_client()
        .issue_tokens(IssueTokensRequest {
            subject: subject.into(),
            name: subject.into(),
            roles: vec![],
        })
        .await
        .expect("issue")
        .into_inner()
}

/// A client of the edge at `url` authenticated with `token`.
async fn signed_in(url: &str, token: &str) -> Client {
    let mut client = Client::connect(url, &[]).await.expect("connect");
    client.ok("auth", json!({"token": token})).await;
    client
}

#[tokio::test]
async fn a_revoked_session_is_closed_on_every_edge_within_a_second() {
    let app = spawn_app().await;
    let other_edge = app.second_edge().await;
    let pair = issue(&app, "u_revoked").await;
    let session = pair.identity.clone().expect("identity").session_id;
    let mut here = signed_in(&app.ws_url(), &pair.access_token).await;
    let mut there = signed_in(&other_edge, &pair.access_token).await;
    let bystander_pair = issue(&app, "u_bystander").await;
    let mut bystander = signed_in(&other_edge, &bystander_pair.access_token).await;

    let started = Instant::now();
    app.auth_client()
        .revoke(RevokeRequest {
            session_id: session,
            ..Default::default()
        })
        .await
        .expect("revoke");
    let (a, b) = tokio::join!(here.close_code(), there.close_code());
    let elapsed = started.elapsed();
    assert_eq!((a, b), (Some(4003), Some(4003)));
    assert!(elapsed < Duration::from_secs(1), "closed after {elapsed:?}");

    bystander.ok("ping", json!({})).await;
    // The revoked token cannot come back.
    let mut again = app.connect().await;
    let error = again
        .err("auth", json!({"token": pair.access_token}), "unauthorized")
        .await;
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("revoked"),
        "{error}"
    );
    assert_eq!(again.close_code().await, Some(4003));
    assert_no_task_panicked();
}

#[tokio::test]
async fn revoking_a_user_closes_all_their_connections() {
    let app = spawn_app().await;
    let other_edge = app.second_edge().await;
    let mut phone = signed_in(&app.ws_url(), &token("u_all", "All", 600)).await;
    let mut laptop = signed_in(&other_edge, &token("u_all", "All", 600)).await;
    app.auth_client()
        .revoke(RevokeRequest {
            user_id: "u_all".into(),
            ..Default::default()
        })
        .await
        .expect("revoke");
    assert_eq!(phone.close_code().await, Some(4003));
    assert_eq!(laptop.close_code().await, Some(4003));
}

#[tokio::test]
async fn an_expiring_token_warns_then_closes_with_4003() {
    let app = spawn_app_with(|c| c.edge.token_expiring_lead_ms = 1_000).await;
    let started = Instant::now();
    let mut client = signed_in(&app.ws_url(), &token("u_short", "Short", 2)).await;
    let warning = client.event("token.expiring").await;
    let left = warning["expires_in_ms"].as_i64().expect("expires_in_ms");
    assert!((0..=1_000).contains(&left), "{warning}");
    assert!(warning["expires_at"].as_i64().expect("expires_at") > 0);
    assert_eq!(client.close_code().await, Some(4003));
    assert!(started.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn refresh_swaps_the_token_in_place_for_the_same_user_only() {
    let app = spawn_app_with(|c| c.edge.token_expiring_lead_ms = 1_000).await;
    let mut client = signed_in(&app.ws_url(), &token("u_refresh", "R", 2)).await;
    let warning = client.event("token.expiring").await;
    let old_exp = warning["expires_at"].as_i64().expect("expires_at");

    let error = client
        .err(
            "refresh",
            json!({"token": token("u_other", "O", 600)}),
            "forbidden",
        )
        .await;
    assert!(
        error["message"]
            .as_str()
            .expect("message")
            .contains("another user")
    );
    client
        .err("refresh", json!({"token": "not-a-jwt"}), "unauthorized")
        .await;
    let reply = client
        .ok("refresh", json!({"token": token("u_refresh", "R", 600)}))
        .await;
    assert!(reply["expires_at"].as_i64().expect("expires_at") > old_exp + 500_000);

    // Past the old token's exp the connection lives on.
    let wait = old_exp - common::ids::now_ms() + 300;
    if wait > 0 {
        tokio::time::sleep(Duration::from_millis(wait as u64)).await;
    }
    client.ok("ping", json!({})).await;
    assert!(
        client
            .take_pending()
            .iter()
            .all(|f| f["type"] != "token.expiring"),
        "no warning for the new token yet"
    );
}

#[tokio::test]
async fn refresh_needs_an_authenticated_connection() {
    let app = spawn_app().await;
    let mut client = app.connect().await;
    client
        .err(
            "refresh",
            json!({"token": token("u", "U", 600)}),
            "unauthorized",
        )
        .await;
}

#[tokio::test]
async fn dev_login_is_off_unless_enabled() {
    let app = spawn_app().await;
    let mut client = app.connect().await;
    client
        .err("auth", json!({"dev_user": "alice"}), "disabled")
        .await;

    let dev = spawn_app_with(|c| c.auth.dev_login = true).await;
    let mut client = dev.connect().await;
    let reply = client.ok("auth", json!({"dev_user": "alice"})).await;
    assert_eq!(reply["user"]["id"], "alice");
    assert_eq!(reply["user"]["anonymous"], false);
    let issued = reply["token"].as_str().expect("token").to_string();
    // The issued token works on a new connection too.
    let mut again = signed_in(&dev.ws_url(), &issued).await;
    again.ok("ping", json!({})).await;
}

#[tokio::test]
async fn failed_attempts_block_the_address_on_every_edge() {
    let app = spawn_app_with(|c| c.auth.failed_attempts_max = 3).await;
    let other_edge = app.second_edge().await;
    for _ in 0..3 {
        let mut client = app.connect().await;
        client
            .err("auth", json!({"token": "not-a-jwt"}), "unauthorized")
            .await;
        assert_eq!(client.close_code().await, Some(4002));
    }
    for url in [app.ws_url(), other_edge] {
        // The announcement may still be on its way to the other edge.
        let deadline = Instant::now() + Duration::from_secs(1);
        loop {
            match Client::connect(&url, &[]).await {
                Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                    assert_eq!(response.status(), 429, "{url}");
                    break;
                }
                Ok(_) if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                other => panic!("{url}: expected 429, got {:?}", other.map(|c| c.hello)),
            }
        }
    }
    // A valid token from the blocked address is refused too.
    let status = app
        .auth_client()
        .verify_token(proto::auth::v1::VerifyTokenRequest {
            token: token("u_1", "U", 600),
            client_ip: "127.0.0.1".into(),
        })
        .await
        .expect_err("blocked");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
}

#[tokio::test]
async fn no_token_appears_in_the_logs_of_a_full_auth_flow() {
    let logs = crate::helpers::capture_logs();
    let app = spawn_app_with(|c| {
        c.auth.dev_login = true;
        c.auth.failed_attempts_max = 5;
        c.edge.token_expiring_lead_ms = 3_600_000;
    })
    .await;
    let mut tokens = Vec::new();

    // Frame and header sign-in, anonymous and dev login, refresh.
    let first = token("u_log", "Log", 600);
    let mut client = signed_in(&app.ws_url(), &first).await;
    client.event("token.expiring").await;
    let second = token("u_log", "Log", 900);
    client.ok("refresh", json!({"token": second})).await;
    client
        .err(
            "refresh",
            json!({"token": token("u_else", "E", 600)}),
            "forbidden",
        )
        .await;
    tokens.extend([first, second]);
    let bearer = token("u_header", "H", 600);
    let mut by_header = Client::connect(
        &app.ws_url(),
        &[("authorization", &format!("Bearer {bearer}"))],
    )
    .await
    .expect("connect");
    by_header.ok("ping", json!({})).await;
    tokens.push(bearer);
    let mut anonymous = app.connect().await;
    let reply = anonymous.ok("auth", json!({"anonymous": true})).await;
    tokens.push(reply["token"].as_str().expect("token").to_string());
    let mut dev = app.connect().await;
    let reply = dev.ok("auth", json!({"dev_user": "dev"})).await;
    tokens.push(reply["token"].as_str().expect("token").to_string());

    // An issued pair, revoked while connected.
    let pair = issue(&app, "u_pair").await;
    let mut paired = signed_in(&app.ws_url(), &pair.access_token).await;
    app.auth_client()
        .revoke(RevokeRequest {
            session_id: pair.identity.clone().expect("identity").session_id,
            ..Default::default()
        })
        .await
        .expect("revoke");
    assert_eq!(paired.close_code().await, Some(4003));
    tokens.extend([pair.access_token.clone(), pair.refresh_token.clone()]);

    // Refusals, until the address is blocked.
    let forged = format!("{}x", token("mallory", "M", 600));
    let refused = [
        token("old", "Old", -3600),
        forged,
        "garbage-that-is-no-jwt".to_string(),
        pair.access_token.clone(),
        pair.refresh_token.clone(),
        "eyJhbGciOiJub25lIn0.eyJzdWIiOiJhZG1pbiJ9.".to_string(),
        token("late", "L", 600),
    ];
    for token in &refused {
        let Ok(mut client) = Client::connect(&app.ws_url(), &[]).await else {
            break; // blocked: 429
        };
        let reply = client.request("auth", json!({"token": token})).await;
        assert_eq!(reply["ok"], false, "{reply}");
        tokens.push(token.clone());
    }

    let text = logs.text();
    assert!(text.contains("security event"), "the flow was captured");
    assert!(
        text.contains("token_revoked") && text.contains("ip_blocked"),
        "{text}"
    );
    for token in &tokens {
        assert!(!text.contains(token.as_str()), "a token appears in the log");
        if let Some(signature) = token.rsplit('.').next().filter(|s| s.len() >= 16) {
            assert!(
                !text.contains(signature),
                "a token signature appears in the log"
            );
        }
    }
}
