//! `parley-presence`: the presence service as its own process.

use std::process::ExitCode;

use common::cli::Failure;
use common::clients::Clients;
use presence_service::PresenceApp;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["presence"], true);
    let result = async {
        let bus = common::bus::connect(&config.bus).await?;
        let clients = Clients::from_config(&config)?;
        let app = PresenceApp::build(&config, &clients, bus).await?;
        let listener = common::cli::bind("presence.listen", config.presence.listen).await?;
        println!(
            "parley-presence listening on grpc {}",
            listener.local_addr()?
        );
        app.run_until_stopped(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-presence", telemetry, result)
}
