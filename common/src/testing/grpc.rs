//! A gRPC service served for a test on `127.0.0.1:0`, and channels to it.

use std::future::Future;

use tokio::net::TcpListener;
use tokio::task::JoinHandle;

use crate::grpc::{ClientSettings, ServiceChannel, channel};
use crate::shutdown::{Shutdown, ShutdownSignal};

/// A gRPC server a test started on a free port of `127.0.0.1`. Servers that
/// watch the shutdown signal stop when [`TestServer::shutdown`] is dropped
/// or triggered.
#[derive(Debug)]
pub struct TestServer {
    /// `http://127.0.0.1:<port>`.
    pub url: String,
    /// Stops the server.
    pub shutdown: Shutdown,
    /// The serving task.
    pub task: JoinHandle<Result<(), tonic::transport::Error>>,
}

/// Binds `127.0.0.1:0` and spawns `serve` on the listener with a shutdown
/// signal of its own, e.g. `serve_grpc(|l, s| app.run_until_stopped(l, s))`.
pub async fn serve_grpc<S, F>(serve: S) -> TestServer
where
    S: FnOnce(TcpListener, ShutdownSignal) -> F,
    F: Future<Output = Result<(), tonic::transport::Error>> + Send + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let url = format!("http://{}", listener.local_addr().expect("addr"));
    let shutdown = Shutdown::new();
    let task = tokio::spawn(serve(listener, shutdown.signal()));
    TestServer {
        url,
        shutdown,
        task,
    }
}

impl TestServer {
    /// A channel to the server presenting `settings`' credential; wrap it in
    /// the generated client, e.g. `ChatServiceClient::new(server.channel(&s))`.
    pub fn channel(&self, settings: &ClientSettings) -> ServiceChannel {
        channel(&self.url, settings).expect("channel")
    }
}
