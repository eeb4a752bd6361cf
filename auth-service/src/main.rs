//! `parley-auth`: the auth service as its own process.

use std::process::ExitCode;

use auth_service::AuthApp;
use common::shutdown::Shutdown;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["auth"], true);
    let result = async {
        let app = AuthApp::new(&config.auth, &config.services.credential)?;
        let listener = tokio::net::TcpListener::bind(config.auth.listen).await?;
        println!("parley-auth listening on grpc {}", listener.local_addr()?);
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        tokio::spawn(async move {
            common::shutdown::os_signal().await;
            shutdown.trigger();
        });
        app.serve(listener, signal).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("parley-auth: {e}");
            ExitCode::FAILURE
        }
    }
}
