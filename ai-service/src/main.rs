//! `parley-ai`: the AI service as its own process.

use std::process::ExitCode;

use ai_service::AiApp;
use common::cli::Failure;
use common::clients::Clients;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["ai"], true);
    let result = async {
        let bus = common::bus::connect(&config.bus).await?;
        let clients = Clients::from_config(&config)?;
        let app = AiApp::build(&config, &clients, bus)?;
        let listener = common::cli::bind("ai.listen", config.ai.listen).await?;
        println!("parley-ai listening on grpc {}", listener.local_addr()?);
        app.run_until_stopped(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-ai", telemetry, result)
}
