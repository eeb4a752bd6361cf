//! `parley-ai`: the AI service as its own process.

use std::process::ExitCode;

use ai_service::AiApp;
use common::cli::Failure;
use common::clients::Clients;
use common::metrics::Metrics;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["ai"], true);
    let result = async {
        let metrics = Metrics::new(&["ai"]);
        let bus = common::bus::connect(&config.bus, &metrics).await?;
        let clients = Clients::from_config(&config, &metrics)?;
        let app = AiApp::build(&config, &clients, bus, &metrics).await?;
        let listener = common::cli::bind("ai.listen", config.ai.listen).await?;
        println!("parley-ai listening on grpc {}", listener.local_addr()?);
        let shutdown = common::shutdown::on_os_signal();
        common::metrics::spawn_listener(
            "ai.metrics_listen",
            config.ai.metrics_listen,
            metrics,
            shutdown.clone(),
        )
        .await?;
        app.run_until_stopped(listener, shutdown).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-ai", telemetry, result)
}
