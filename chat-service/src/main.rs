//! `parley-chat`: the chat service as its own process.

use std::process::ExitCode;

use chat_service::ChatApp;
use common::cli::Failure;
use common::clients::Clients;
use common::metrics::Metrics;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["chat"], true);
    let result = async {
        let metrics = Metrics::new(&["chat"]);
        let shutdown = common::shutdown::on_os_signal();
        // Metrics and `/healthz` first: the process is alive while it waits
        // for its backends.
        common::metrics::spawn_listener(
            "chat.metrics_listen",
            config.chat.metrics_listen,
            metrics.clone(),
            shutdown.clone(),
        )
        .await?;
        let Some(app) = common::cli::until_ready("parley-chat", &shutdown, || async {
            let bus = common::bus::connect(&config.bus, &metrics).await?;
            let clients = Clients::from_config(&config, &metrics)?;
            Ok::<_, Failure>(ChatApp::build(&config, &clients, bus, &metrics).await?)
        })
        .await?
        else {
            return Ok(());
        };
        let listener = common::cli::bind("chat.listen", config.chat.listen).await?;
        println!("parley-chat listening on grpc {}", listener.local_addr()?);
        app.run_until_stopped(listener, shutdown).await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-chat", telemetry, result)
}
