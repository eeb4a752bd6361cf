//! `parley-presence`: the presence service as its own process.

use std::process::ExitCode;

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
        app.serve(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    common::cli::finish("parley-presence", telemetry, result)
}
