//! The metrics listener is served by the same HTTP server as the edge: idle
//! connections from one address are capped at accept.

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

#[tokio::test]
async fn idle_connections_to_the_metrics_listener_are_capped() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let shutdown = common::shutdown::Shutdown::new();
    tokio::spawn(common::metrics::serve(
        common::metrics::Metrics::new(&["chat"]),
        listener,
        shutdown.signal(),
    ));
    let max = common::http_server::HttpLimits::metrics().max_per_ip;
    let mut idle = Vec::new();
    for _ in 0..max {
        idle.push(TcpStream::connect(addr).await.expect("connect"));
    }
    let mut over = TcpStream::connect(addr).await.expect("the kernel accepts");
    let mut buf = [0u8; 16];
    let read = tokio::time::timeout(std::time::Duration::from_secs(10), over.read(&mut buf))
        .await
        .expect("closed at once, not left hanging");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
}
