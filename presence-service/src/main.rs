//! `parley-presence`: the presence service as its own process.

use std::process::ExitCode;
use std::time::Duration;

use common::grpc::{ClientSettings, channel};
use presence_service::PresenceApp;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["presence"], true);
    let result = async {
        let bus = common::bus::connect(&config.bus).await?;
        let settings = ClientSettings {
            credential: config.services.credential.clone(),
            connect_timeout: Duration::from_millis(config.services.connect_timeout_ms),
            timeout: Duration::from_secs(10),
        };
        let chat = ChatBackendServiceClient::new(channel(&config.services.chat_url, &settings)?);
        let app = PresenceApp::connect(
            &config.presence,
            bus,
            Some(chat),
            &config.services.credential,
        )
        .await?;
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
