//! Client-side balancing: a channel to a DNS name spreads its calls over
//! every address the name resolves to (here two real gRPC servers, told
//! apart by the health status each reports).

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::Duration;

use common::grpc::balance::{Resolve, balanced, is_balanced};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::transport::Endpoint;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

/// A health server on a free port reporting `status` for service `x`.
async fn replica(status: ServingStatus) -> SocketAddr {
    let (reporter, service) = tonic_health::server::health_reporter();
    reporter.set_service_status("x", status).await;
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(service)
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

#[tokio::test]
async fn calls_are_spread_over_every_resolved_replica() {
    let a = replica(ServingStatus::Serving).await;
    let b = replica(ServingStatus::NotServing).await;
    let resolve: Resolve = Box::new(move |host, _port| {
        assert_eq!(host, "chat.parley.svc");
        Box::pin(async move { vec![a, b] })
    });
    let template = Endpoint::from_static("http://chat.parley.svc:50052");
    assert!(is_balanced(&template));
    let channel = balanced(&template, |e| e.timeout(Duration::from_secs(5)), resolve);
    let mut client = HealthClient::new(channel);
    let mut answered_by = HashSet::new();
    for _ in 0..200 {
        let status = tokio::time::timeout(
            Duration::from_secs(10),
            client.check(HealthCheckRequest {
                service: "x".into(),
            }),
        )
        .await
        .expect("an answer in time")
        .expect("check")
        .into_inner()
        .status;
        answered_by.insert(status);
        if answered_by.len() == 2 {
            break;
        }
    }
    assert_eq!(answered_by.len(), 2, "both replicas answered");
}

#[tokio::test]
async fn addresses_and_localhost_are_not_balanced() {
    for url in [
        "http://127.0.0.1:50052",
        "http://[::1]:50052",
        "http://localhost:50052",
    ] {
        assert!(!is_balanced(&Endpoint::from_static(url)), "{url}");
    }
    assert!(is_balanced(&Endpoint::from_static("http://chat:50052")));
}
