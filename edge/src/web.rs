//! The web app (clients/web) at `/` when `edge.web_app` is on: its built
//! files are compiled into the binary, served under a strict
//! Content-Security-Policy, and pages it serves may open `/ws` from the
//! edge's own origin.

use axum::Router;
use axum::extract::Path;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

/// Scripts, styles and connections only from this origin; nothing inline,
/// no plugins, no framing, no forms posted elsewhere.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
    connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; \
    frame-ancestors 'none'";

/// The built app (`npm run build` in clients/web; committed, so building
/// the edge needs no npm).
const FILES: &[(&str, &str, &str)] = &[
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../clients/web/dist/index.html"),
    ),
    (
        "app.css",
        "text/css; charset=utf-8",
        include_str!("../../clients/web/dist/app.css"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/app.js"),
    ),
    (
        "sdk/index.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/sdk/index.js"),
    ),
    (
        "sdk/client.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/sdk/client.js"),
    ),
    (
        "sdk/close.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/sdk/close.js"),
    ),
    (
        "sdk/emitter.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/sdk/emitter.js"),
    ),
    (
        "sdk/protocol.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/sdk/protocol.js"),
    ),
    (
        "sdk/validate.js",
        "text/javascript; charset=utf-8",
        include_str!("../../clients/web/dist/sdk/validate.js"),
    ),
];

/// The app's routes, to merge into the edge's router.
pub(crate) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { file("index.html") }))
        .route(
            "/{*path}",
            get(|Path(path): Path<String>| async move { file(&path) }),
        )
}

fn file(path: &str) -> Response {
    let Some((_, content_type, body)) = FILES.iter().find(|(name, _, _)| *name == path) else {
        return (StatusCode::NOT_FOUND, "not found").into_response();
    };
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    (headers, *body).into_response()
}

/// Whether the upgrade comes from a page of this edge's own origin
/// (`Origin` is `http://` or `https://` followed by the `Host` header).
pub(crate) fn same_origin(headers: &HeaderMap) -> bool {
    let (Some(origin), Some(host)) = (headers.get(header::ORIGIN), headers.get(header::HOST))
    else {
        return false;
    };
    let (Ok(origin), Ok(host)) = (origin.to_str(), host.to_str()) else {
        return false;
    };
    let rest = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    rest == Some(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: &str, host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::ORIGIN, origin.parse().expect("origin"));
        h.insert(header::HOST, host.parse().expect("host"));
        h
    }

    #[test]
    fn only_the_edges_own_origin_counts_as_same_origin() {
        assert!(same_origin(&headers(
            "http://127.0.0.1:8080",
            "127.0.0.1:8080"
        )));
        assert!(same_origin(&headers(
            "https://chat.example.com",
            "chat.example.com"
        )));
        assert!(!same_origin(&headers("http://evil.io", "127.0.0.1:8080")));
        assert!(!same_origin(&headers(
            "http://127.0.0.1:8080.evil.io",
            "127.0.0.1:8080"
        )));
        assert!(!same_origin(&headers("null", "127.0.0.1:8080")));
    }

    #[test]
    fn files_carry_the_csp_and_unknown_paths_are_404() {
        let r = file("index.html");
        assert_eq!(r.status(), StatusCode::OK);
        let csp = r.headers()[header::CONTENT_SECURITY_POLICY]
            .to_str()
            .expect("ascii");
        assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe"));
        assert_eq!(file("../Cargo.toml").status(), StatusCode::NOT_FOUND);
        assert_eq!(file("sdk/client.js").status(), StatusCode::OK);
    }

    /// A module added to the SDK or the app must be embedded too, or the
    /// page fails to load it.
    #[test]
    fn every_built_file_is_embedded() {
        fn walk(dir: &std::path::Path, base: &std::path::Path, out: &mut Vec<String>) {
            for entry in std::fs::read_dir(dir).expect("clients/web/dist") {
                let path = entry.expect("entry").path();
                if path.is_dir() {
                    walk(&path, base, out);
                } else {
                    let rel = path.strip_prefix(base).expect("inside dist");
                    out.push(rel.to_string_lossy().replace('\\', "/"));
                }
            }
        }
        let dist = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/web/dist");
        let mut built = Vec::new();
        walk(&dist, &dist, &mut built);
        built.sort();
        let mut embedded: Vec<String> = FILES.iter().map(|(name, _, _)| name.to_string()).collect();
        embedded.sort();
        assert_eq!(
            built, embedded,
            "edge/src/web.rs FILES must list clients/web/dist"
        );
    }
}
