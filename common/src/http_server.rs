//! Parley's HTTP server (the edge and the metrics listeners): hyper's
//! connection builder with a header-read timeout (which also bounds idle
//! keep-alives), a cap on open non-WebSocket connections per address checked
//! at accept (before any HTTP work), and a graceful stop. `axum::serve`
//! offers neither limit, hence hyper-util here.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::extract::{ConnectInfo, Request};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tower::ServiceExt;

/// How long in-flight HTTP requests may finish after the stop.
const REQUEST_GRACE: Duration = Duration::from_secs(5);

/// What the server enforces.
pub struct HttpLimits {
    pub header_timeout: Duration,
    /// Open non-WebSocket connections per address; 0 is unlimited.
    pub max_per_ip: usize,
    /// Addresses exempt from `max_per_ip` (trusted proxies).
    pub exempt: Vec<crate::cidr::Cidr>,
}

impl HttpLimits {
    /// The limits of a metrics listener: scrapers send small requests from
    /// few addresses.
    pub fn metrics() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            max_per_ip: 20,
            exempt: Vec::new(),
        }
    }
}

/// Open connections per address, until each is upgraded or closed.
#[derive(Default)]
struct Open(Mutex<HashMap<IpAddr, usize>>);

/// One connection's place in [`Open`]; given back on drop.
struct Held(Arc<Open>, IpAddr);

impl Open {
    fn take(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Held> {
        let mut open = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let n = open.entry(ip).or_default();
        if *n >= max {
            return None;
        }
        *n += 1;
        Some(Held(self.clone(), ip))
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut open = self.0.0.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = open.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.1);
            }
        }
    }
}

/// Sets an accepted socket up: small frames leave at once. Without
/// `TCP_NODELAY`, Nagle's algorithm holds a frame while an earlier one is
/// unacknowledged, and a client that only reads acknowledges late (delayed
/// ACK), which put a floor of several milliseconds under delivery latency.
fn configure(stream: &tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "TCP_NODELAY not set");
    }
}

/// Serves `router` on `listener` until `stop` resolves; then stops
/// accepting and lets requests in flight finish (upgraded WebSockets are
/// not HTTP connections any more: their tasks drain on their own).
pub async fn serve(
    listener: &TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: impl Future<Output = ()>,
) {
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    let graceful = GracefulShutdown::new();
    let open = Arc::new(Open::default());
    tokio::pin!(stop);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors and the like: pause, go on.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut stop => break,
        };
        configure(&stream);
        let ip = crate::cidr::canonical(peer.ip());
        let held = if limits.max_per_ip == 0 || limits.exempt.iter().any(|c| c.contains(ip)) {
            None
        } else {
            match open.take(ip, limits.max_per_ip) {
                Some(held) => Some(held),
                None => {
                    crate::security::log(
                        crate::security::SecurityEvent::ConnLimited,
                        Some(ip),
                        None,
                        "http_connections",
                    );
                    continue;
                }
            }
        };
        let router = router.clone();
        let service = hyper::service::service_fn(move |mut request: Request<Incoming>| {
            request
                .extensions_mut()
                .insert(ConnectInfo::<SocketAddr>(peer));
            router.clone().oneshot(request.map(axum::body::Body::new))
        });
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), service)
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            let _held = held;
            let _ = connection.await;
        });
    }
    let _ = tokio::time::timeout(REQUEST_GRACE, graceful.shutdown()).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn accepted_sockets_send_small_frames_at_once() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let _client = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let (stream, _) = listener.accept().await.expect("accept");
        assert!(!stream.nodelay().expect("nodelay"), "the kernel's default");
        configure(&stream);
        assert!(stream.nodelay().expect("nodelay"), "Nagle off");
    }
}
