//! `parley-edge`: the WebSocket edge as its own process.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use common::grpc::{ClientSettings, channel};
use common::shutdown::Shutdown;
use edge::{Backends, EdgeApp};
use proto::ai::v1::ai_service_client::AiServiceClient;
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::chat::v1::chat_backend_service_client::ChatBackendServiceClient;
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::presence::v1::presence_service_client::PresenceServiceClient;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["edge"], true);
    let result = async {
        let settings = ClientSettings {
            credential: config.services.credential.clone(),
            connect_timeout: Duration::from_millis(config.services.connect_timeout_ms),
            timeout: Duration::from_millis(config.edge.call_timeout_ms),
        };
        let backends = Backends {
            auth: AuthServiceClient::new(channel(&config.services.auth_url, &settings)?),
            chat: ChatServiceClient::new(channel(&config.services.chat_url, &settings)?),
            chat_backend: ChatBackendServiceClient::new(channel(&config.services.chat_url, &settings)?),
            ai: AiServiceClient::new(channel(&config.services.ai_url, &settings)?),
            presence: PresenceServiceClient::new(channel(&config.services.presence_url, &settings)?),
        };
        let bus: Arc<dyn common::bus::Bus> = common::bus::connect(&config.bus).await?;
        let shutdown = Shutdown::new();
        let app = EdgeApp::new(&config.edge, backends, bus, telemetry.tracing_enabled(), shutdown.signal()).await?.with_suite_config(&config);
        let listener = tokio::net::TcpListener::bind(config.edge.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "edge listening (ws://…/ws, /healthz, /readyz)");
        tokio::spawn(async move {
            common::shutdown::os_signal().await;
            shutdown.trigger();
        });
        app.serve(listener).await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    common::cli::finish("parley-edge", telemetry, result)
}
