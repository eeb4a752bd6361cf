//! `GET /status`: this edge's connections, busiest users, rooms with local
//! subscribers and uptime, for operators holding `edge.admin_token`. With no
//! token configured the endpoint does not exist (404); a wrong or missing
//! token is 401.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use crate::Shared;

pub(crate) async fn status(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let expected = &shared.config.admin_token;
    if expected.is_empty() {
        return StatusCode::NOT_FOUND.into_response();
    }
    let given = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim);
    if !given.is_some_and(|given| same(given.as_bytes(), expected.expose().as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            [(http::header::WWW_AUTHENTICATE, "Bearer")],
        )
            .into_response();
    }
    let snapshot = shared.admission.snapshot();
    let mut rooms = shared.hub.rooms();
    rooms.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let body = json!({
        "connections": {
            "total": snapshot.total,
            "authenticated": snapshot.authenticated,
            "anonymous": snapshot.anonymous,
            "peak": snapshot.peak,
        },
        "top_users": snapshot
            .top_users
            .iter()
            .map(|(user, n)| json!({"user": user, "connections": n}))
            .collect::<Vec<_>>(),
        "rooms": rooms
            .iter()
            .map(|(room, n)| json!({"room": room, "subscribers": n}))
            .collect::<Vec<_>>(),
        "events_dropped_beyond_log": shared.hub.dropped_beyond_log(),
        "uptime_s": snapshot.uptime_s,
        "services": shared
            .readiness
            .services()
            .into_iter()
            .map(|(service, health)| (service.to_string(), json!(health)))
            .collect::<serde_json::Map<_, _>>(),
        "draining": shared.draining.load(std::sync::atomic::Ordering::Relaxed),
    });
    axum::Json(body).into_response()
}

/// Compares without stopping at the first difference, so response time
/// does not tell how much of a guess was right.
fn same(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn tokens_compare_exactly() {
        assert!(super::same(b"abc", b"abc"));
        assert!(!super::same(b"abc", b"abd"));
        assert!(!super::same(b"abc", b"abcd"));
        assert!(!super::same(b"", b"a"));
    }
}
