//! `parley-edge`: the WebSocket edge as its own process.

use std::process::ExitCode;

use common::cli::Failure;
use common::clients::Clients;
use edge::EdgeApp;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["edge"], true);
    let result = async {
        let metrics = common::metrics::Metrics::new(&["edge"]);
        let bus = common::bus::connect(&config.bus, &metrics).await?;
        let clients = Clients::from_config(&config, &metrics)?;
        let shutdown = common::shutdown::on_os_signal();
        let app = EdgeApp::build(
            &config,
            &clients,
            bus,
            telemetry.tracing_enabled(),
            shutdown,
            &metrics,
        )
        .await?;
        let listener = common::cli::bind("edge.listen", config.edge.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "edge listening (ws://…/ws, /healthz, /readyz, /metrics)");
        app.run_until_stopped(listener).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-edge", telemetry, result)
}
