//! Client-side balancing across every replica behind a DNS name (a
//! Kubernetes headless Service): HTTP/2 pins all calls of one connection to
//! one pod, so a plain ClusterIP Service would send everything to whichever
//! replica a client happened to connect to. A resolver task looks the name up
//! every [`RESOLVE_EVERY`] and tells tonic's balanced channel which replica
//! addresses came and went; calls are spread across the ready ones.

use std::collections::HashSet;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use tonic::transport::channel::Change;
use tonic::transport::{Channel, Endpoint};

/// How often a balanced channel resolves its name again.
pub const RESOLVE_EVERY: Duration = Duration::from_secs(5);

/// Looks a host and port up; the real one asks DNS, tests pass their own.
pub type Resolve =
    Box<dyn Fn(String, u16) -> Pin<Box<dyn Future<Output = Vec<SocketAddr>> + Send>> + Send + Sync>;

/// DNS, through the system resolver.
pub fn dns() -> Resolve {
    Box::new(|host, port| {
        Box::pin(async move {
            tokio::net::lookup_host((host.as_str(), port))
                .await
                .map(|addrs| addrs.collect())
                .unwrap_or_default()
        })
    })
}

/// Whether `endpoint` names its server by a DNS name that may stand for
/// several replicas (not an IP address, not `localhost`), and a runtime is
/// there to keep resolving it.
pub fn is_balanced(endpoint: &Endpoint) -> bool {
    let Some(host) = endpoint.uri().host() else {
        return false;
    };
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    bare.parse::<std::net::IpAddr>().is_err()
        && bare != "localhost"
        && tokio::runtime::Handle::try_current().is_ok()
}

/// A channel spreading calls over every address `resolve` finds for
/// `template`'s host, kept current by a task that ends with the channel.
/// `configure` gives each replica's endpoint the caller's timeouts.
pub fn balanced(
    template: &Endpoint,
    configure: impl Fn(Endpoint) -> Endpoint + Send + 'static,
    resolve: Resolve,
) -> Channel {
    let (channel, changes) = Channel::balance_channel::<SocketAddr>(64);
    let uri = template.uri().clone();
    let scheme = uri.scheme_str().unwrap_or("http").to_string();
    let host = uri.host().unwrap_or_default().to_string();
    let port = uri
        .port_u16()
        .unwrap_or(if scheme == "https" { 443 } else { 80 });
    tokio::spawn(async move {
        let mut known: HashSet<SocketAddr> = HashSet::new();
        loop {
            let found: HashSet<SocketAddr> =
                resolve(host.clone(), port).await.into_iter().collect();
            let gone: Vec<SocketAddr> = known.difference(&found).copied().collect();
            for addr in gone {
                known.remove(&addr);
                if changes.send(Change::Remove(addr)).await.is_err() {
                    return;
                }
            }
            let new: Vec<SocketAddr> = found.difference(&known).copied().collect();
            for addr in new {
                let Ok(endpoint) = Endpoint::from_shared(format!("{scheme}://{addr}")) else {
                    continue;
                };
                known.insert(addr);
                if changes
                    .send(Change::Insert(addr, configure(endpoint)))
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if found.is_empty() {
                tracing::warn!(host, port, "no replica address resolved; retrying");
            }
            tokio::time::sleep(RESOLVE_EVERY).await;
            if changes.is_closed() {
                return;
            }
        }
    });
    channel
}
