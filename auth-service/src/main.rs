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
        let bus = common::bus::connect(&config.bus, &metrics).await?;
        // Drift fixed: a key only this service can parse used to end the
        // process with `std::process::exit(64)` here, before telemetry was
        // flushed; it now goes through `finish` like every other error.
        let app = AuthApp::build(&config, bus, &metrics)
            .await
            .map_err(AuthError::into_failure)?;
        let listener = common::cli::bind("auth.listen", config.auth.listen).await?;
        println!("parley-auth listening on grpc {}", listener.local_addr()?);
        let shutdown = common::shutdown::on_os_signal();
        common::metrics::spawn_listener(
            "auth.metrics_listen",
            config.auth.metrics_listen,
            metrics,
            shutdown.clone(),
        )
        .await?;
        app.run_until_stopped(listener, shutdown).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-auth", telemetry, result)
}
