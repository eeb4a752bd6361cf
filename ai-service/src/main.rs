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
        let shutdown = common::shutdown::on_os_signal();
        // Metrics and `/healthz` first: the process is alive while it waits
        // for its backends.
        common::metrics::spawn_listener(
            "ai.metrics_listen",
            config.ai.metrics_listen,
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        let Some(app) = common::cli::until_ready("parley-ai", &shutdown, || async {
            let bus = common::bus::connect(&config.bus, &metrics).await?;
            let clients = Clients::from_config(&config, &metrics)?;
            Ok::<_, Failure>(AiApp::build(&config, &clients, bus, &metrics).await?)
        })
        .await?
        else {
            return Ok(());
        };
        let listener = common::cli::bind("ai.listen", config.ai.listen).await?;
        println!("parley-ai listening on grpc {}", listener.local_addr()?);
        app.run_until_stopped(listener, shutdown).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-ai", telemetry, result)
}
