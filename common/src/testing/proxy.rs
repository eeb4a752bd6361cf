//! A TCP proxy in front of a test's Redis or Postgres that the test can
//! cut (every connection dropped, new ones refused) and restore: the
//! dependency becomes unreachable for the code under test only, while other
//! tests keep using the real server.

use std::net::SocketAddr;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// See the module docs.
#[derive(Debug)]
pub struct TcpProxy {
    /// Where the code under test connects.
    pub addr: SocketAddr,
    up: watch::Sender<bool>,
}

impl TcpProxy {
    /// Forwards `127.0.0.1:<free port>` to `target`.
    pub async fn start(target: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let addr = listener.local_addr().expect("proxy addr");
        let (up, watch) = watch::channel(true);
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !*watch.borrow() {
                    continue;
                }
                let mut cut = watch.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut client, mut server) = (client, server);
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                        _ = cut.wait_for(|up| !*up) => {}
                    }
                });
            }
        });
        Self { addr, up }
    }

    /// In front of the server `url` names (`scheme://[user@]host:port/…`);
    /// returns the proxy and `url` pointing at it.
    pub async fn in_front_of(url: &str) -> (Self, String) {
        let target = tokio::net::lookup_host(authority(url).1)
            .await
            .expect("resolve")
            .next()
            .expect("an address");
        let proxy = Self::start(target).await;
        let url = proxy.reroute(url);
        (proxy, url)
    }

    /// `url` (`scheme://[user@]host:port/…`) pointing at the proxy instead.
    pub fn reroute(&self, url: &str) -> String {
        let (start, host) = authority(url);
        format!(
            "{}{}{}",
            &url[..start],
            self.addr,
            &url[start + host.len()..]
        )
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.send_replace(false);
    }

    /// Accepts connections again.
    pub fn restore(&self) {
        self.up.send_replace(true);
    }
}

/// The gRPC health of `service` at `url` is SERVING, turns NOT_SERVING
/// once `proxy` (in front of the service's dependency) is cut, and SERVING
/// again once it is restored.
pub async fn health_follows(url: &str, service: &str, proxy: &TcpProxy) {
    health_becomes(url, service, true).await;
    proxy.cut();
    health_becomes(url, service, false).await;
    proxy.restore();
    health_becomes(url, service, true).await;
}

/// Where the `host:port` of `url` starts, and what it is.
fn authority(url: &str) -> (usize, &str) {
    let start = url.find("://").map_or(0, |i| i + 3);
    let rest = &url[start..];
    let end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..end].rfind('@') {
        Some(at) => (start + at + 1, &rest[at + 1..end]),
        None => (start, &rest[..end]),
    }
}

/// Waits (at most 20 s) until the gRPC health of `service` at `url`
/// reports `serving`, watching it with the standard `Watch` call.
pub async fn health_becomes(url: &str, service: &str, serving: bool) {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;
    let want = if serving {
        ServingStatus::Serving
    } else {
        ServingStatus::NotServing
    } as i32;
    let wait = async {
        let channel = tonic::transport::Endpoint::from_shared(url.to_string())
            .expect("url")
            .connect()
            .await
            .expect("connect");
        let mut updates = HealthClient::new(channel)
            .watch(HealthCheckRequest {
                service: service.to_string(),
            })
            .await
            .expect("watch")
            .into_inner();
        while let Some(update) = updates.message().await.expect("health update") {
            if update.status == want {
                return;
            }
        }
        panic!("health stream of {service} ended");
    };
    tokio::time::timeout(std::time::Duration::from_secs(20), wait)
        .await
        .unwrap_or_else(|_| panic!("{service} never became serving={serving}"));
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_authority_is_found_after_any_user() {
        assert_eq!(
            super::authority("postgres://postgres@127.0.0.1:5432/test?x=1"),
            (20, "127.0.0.1:5432")
        );
        assert_eq!(
            super::authority("redis://127.0.0.1:6379"),
            (8, "127.0.0.1:6379")
        );
    }
}
