//! The opening handshake: checks the upgrade request (RFC 6455 §4.2.1),
//! picks the subprotocol, answers 101 and hands the upgraded connection to a
//! task.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use hyper::upgrade::OnUpgrade;

use super::Io;

/// A valid WebSocket upgrade request, as an axum extractor.
pub(crate) struct Upgrade {
    key: HeaderValue,
    on_upgrade: OnUpgrade,
    /// The client's `Sec-WebSocket-Protocol` offers.
    offered: Option<HeaderValue>,
}

impl<S: Send + Sync> FromRequestParts<S> for Upgrade {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        if parts.method != Method::GET {
            return Err(reject(
                StatusCode::METHOD_NOT_ALLOWED,
                "websocket upgrades use GET",
            ));
        }
        let headers = &parts.headers;
        if !has_token(headers, header::CONNECTION, "upgrade") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Connection` header must include `upgrade`",
            ));
        }
        if !has_token(headers, header::UPGRADE, "websocket") {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Upgrade` header must be `websocket`",
            ));
        }
        if headers
            .get(header::SEC_WEBSOCKET_VERSION)
            .map(HeaderValue::as_bytes)
            != Some(b"13")
        {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Version` must be 13",
            ));
        }
        let Some(key) = headers.get(header::SEC_WEBSOCKET_KEY).cloned() else {
            return Err(reject(
                StatusCode::BAD_REQUEST,
                "`Sec-WebSocket-Key` is missing",
            ));
        };
        let offered = headers.get(header::SEC_WEBSOCKET_PROTOCOL).cloned();
        let Some(on_upgrade) = parts.extensions.remove::<OnUpgrade>() else {
            return Err(reject(
                StatusCode::UPGRADE_REQUIRED,
                "connection cannot be upgraded",
            ));
        };
        Ok(Self {
            key,
            on_upgrade,
            offered,
        })
    }
}

impl Upgrade {
    /// Answers 101 (naming `protocol` when the client offered it) and runs
    /// `callback` on the upgraded connection in a task of its own. When the
    /// upgrade fails, `callback` is dropped unrun.
    pub(crate) fn respond<F, Fut>(self, protocol: &'static str, callback: F) -> Response
    where
        F: FnOnce(Io) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let chosen = self
            .offered
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .is_some_and(|offers| offers.split(',').any(|p| p.trim() == protocol));
        let accept = tungstenite::handshake::derive_accept_key(self.key.as_bytes());
        let on_upgrade = self.on_upgrade;
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => callback(hyper_util::rt::TokioIo::new(upgraded)).await,
                Err(error) => tracing::debug!(%error, "websocket upgrade failed"),
            }
        });
        let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        if chosen {
            headers.insert(
                header::SEC_WEBSOCKET_PROTOCOL,
                HeaderValue::from_static(protocol),
            );
        }
        response
    }
}

/// Whether a comma-separated header holds `token` (any case).
fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    })
}

fn reject(status: StatusCode, message: &'static str) -> Response {
    (status, message).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::Request;

    async fn extract(request: Request<()>) -> Result<Upgrade, StatusCode> {
        let (mut parts, ()) = request.into_parts();
        Upgrade::from_request_parts(&mut parts, &())
            .await
            .map_err(|r| r.status())
    }

    fn request() -> axum::http::request::Builder {
        Request::get("/ws")
            .header("connection", "keep-alive, Upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
    }

    #[tokio::test]
    async fn requests_that_are_not_upgrades_are_refused() {
        let no_upgrade = request().body(()).expect("request");
        // No hyper connection behind it: not upgradable.
        assert_eq!(
            extract(no_upgrade).await.err(),
            Some(StatusCode::UPGRADE_REQUIRED)
        );
        let post = Request::post("/ws").body(()).expect("request");
        assert_eq!(
            extract(post).await.err(),
            Some(StatusCode::METHOD_NOT_ALLOWED)
        );
        let old = Request::get("/ws")
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "8")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .expect("request");
        assert_eq!(extract(old).await.err(), Some(StatusCode::BAD_REQUEST));
        let plain = Request::get("/ws").body(()).expect("request");
        assert_eq!(extract(plain).await.err(), Some(StatusCode::BAD_REQUEST));
    }

    #[test]
    fn connection_tokens_match_in_any_case() {
        let mut headers = HeaderMap::new();
        headers.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, Upgrade"),
        );
        assert!(has_token(&headers, header::CONNECTION, "upgrade"));
        assert!(!has_token(&headers, header::CONNECTION, "close"));
    }
}
