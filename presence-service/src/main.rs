//! `parley-presence`: the presence service as its own process.

use std::process::ExitCode;

use common::shutdown::Shutdown;
use presence_service::PresenceApp;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["presence"], true);
    let result = async {
        let app = PresenceApp::connect(&config.presence, &config.services.credential).await?;
        let listener = tokio::net::TcpListener::bind(config.presence.listen).await?;
        println!(
            "parley-presence listening on grpc {}",
            listener.local_addr()?
        );
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
            eprintln!("parley-presence: {e}");
            ExitCode::FAILURE
        }
    }
}
