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
        let shutdown = common::shutdown::on_os_signal();
        let listener = common::cli::bind("edge.listen", config.edge.listen).await?;
        tracing::info!(addr = %listener.local_addr()?, "edge listening (ws://…/ws, /healthz, /readyz, /metrics)");
        // Until the bus answers, the listener serves `/healthz` only: the
        // process is alive, not ready.
        let started = common::shutdown::Shutdown::new();
        let starting = common::http_server::serve(
            &listener,
            axum::Router::new().route("/healthz", axum::routing::get(|| async { "ok" })),
            common::http_server::HttpLimits::metrics(),
            started.signal().wait(),
        );
        let build = async {
            let app = common::cli::until_ready("parley-edge", &shutdown, || async {
                let bus = common::bus::connect(&config.bus, &metrics).await?;
                let clients = Clients::from_config(&config, &metrics)?;
                Ok::<_, Failure>(
                    EdgeApp::build(
                        &config,
                        &clients,
                        bus,
                        telemetry.tracing_enabled(),
                        shutdown.clone(),
                        &metrics,
                    )
                    .await?,
                )
            })
            .await;
            started.trigger();
            app
        };
        let (app, ()) = tokio::join!(build, starting);
        if let Some(app) = app? {
            app.run_until_stopped(listener).await?;
        }
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-edge", telemetry, result)
}
