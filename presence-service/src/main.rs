//! `parley-presence`: the presence service as its own process.

use std::process::ExitCode;

use common::cli::Failure;
use common::clients::Clients;
use common::metrics::Metrics;
use presence_service::PresenceApp;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["presence"], true);
    let result = async {
        let metrics = Metrics::new(&["presence"]);
        let shutdown = common::shutdown::on_os_signal();
        // Metrics and `/healthz` first: the process is alive while it waits
        // for its backends.
        common::metrics::spawn_listener(
            "presence.metrics_listen",
            config.presence.metrics_listen,
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        let Some(app) = common::cli::until_ready("parley-presence", &shutdown, || async {
            let bus = common::bus::connect(&config.bus, &metrics).await?;
            let clients = Clients::from_config(&config, &metrics)?;
            Ok::<_, Failure>(PresenceApp::build(&config, &clients, bus, &metrics).await?)
        })
        .await?
        else {
            return Ok(());
        };
        let listener = common::cli::bind("presence.listen", config.presence.listen).await?;
        println!(
            "parley-presence listening on grpc {}",
            listener.local_addr()?
        );
        app.run_until_stopped(listener, shutdown).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-presence", telemetry, result)
}
