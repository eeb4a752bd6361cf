//! `parley-ai`: the AI service as its own process.

use std::process::ExitCode;
use std::time::Duration;

use ai_service::AiApp;
use common::grpc::{ClientSettings, channel};

/// Deadline of each chat-service call (storing a prompt or a reply, reading history).
const CHAT_TIMEOUT: Duration = Duration::from_secs(10);

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["ai"], true);
    let result = async {
        let settings = ClientSettings {
            credential: config.services.credential.clone(),
            connect_timeout: Duration::from_millis(config.services.connect_timeout_ms),
            timeout: CHAT_TIMEOUT,
        };
        let chat = channel(&config.services.chat_url, &settings)?;
        let bus = common::bus::connect(&config.bus).await?;
        let app = AiApp::new(&config.ai, bus, chat, &config.services.credential)?;
        let listener = tokio::net::TcpListener::bind(config.ai.listen).await?;
        println!("parley-ai listening on grpc {}", listener.local_addr()?);
        app.serve(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    common::cli::finish("parley-ai", telemetry, result)
}
