//! `parley-auth`: the auth service as its own process.

use std::process::ExitCode;

use auth_service::{AuthApp, AuthError};
use common::cli::Failure;
use common::metrics::Metrics;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["auth"], true);
    let result = async {
        let metrics = Metrics::new(&["auth"]);
        let shutdown = common::shutdown::on_os_signal();
        // Metrics and `/healthz` first: the process is alive while it waits
        // for its backends.
        common::metrics::spawn_listener(
            "auth.metrics_listen",
            config.auth.metrics_listen,
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        let Some(app) = common::cli::until_ready("parley-auth", &shutdown, || async {
            let bus = common::bus::connect(&config.bus, &metrics).await?;
            AuthApp::build(&config, bus, &metrics)
                .await
                .map_err(AuthError::into_failure)
        })
        .await?
        else {
            return Ok(());
        };
        let listener = common::cli::bind("auth.listen", config.auth.listen).await?;
        println!("parley-auth listening on grpc {}", listener.local_addr()?);
        app.run_until_stopped(listener, shutdown).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-auth", telemetry, result)
}
