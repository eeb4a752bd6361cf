//! `parley-chat`: the chat service as its own process.

use std::process::ExitCode;
use std::time::Duration;

use chat_service::ChatApp;
use common::grpc::{ClientSettings, channel};
use proto::presence::v1::presence_service_client::PresenceServiceClient;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["chat"], true);
    let result = async {
        let bus = common::bus::connect(&config.bus).await?;
        let settings = ClientSettings {
            credential: config.services.credential.clone(),
            connect_timeout: Duration::from_millis(config.services.connect_timeout_ms),
            timeout: Duration::from_secs(5),
        };
        let presence =
            PresenceServiceClient::new(channel(&config.services.presence_url, &settings)?);
        let app = ChatApp::connect(
            &config.chat,
            bus,
            Some(presence),
            &config.services.credential,
        )
        .await?;
        let listener = tokio::net::TcpListener::bind(config.chat.listen).await?;
        println!("parley-chat listening on grpc {}", listener.local_addr()?);
        app.serve(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    common::cli::finish("parley-chat", telemetry, result)
}
