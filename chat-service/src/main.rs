//! `parley-chat`: the chat service as its own process.

use std::process::ExitCode;

use chat_service::ChatApp;
use common::cli::Failure;
use common::clients::Clients;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["chat"], true);
    let result = async {
        let bus = common::bus::connect(&config.bus).await?;
        let clients = Clients::from_config(&config)?;
        let app = ChatApp::build(&config, &clients, bus).await?;
        let listener = common::cli::bind("chat.listen", config.chat.listen).await?;
        println!("parley-chat listening on grpc {}", listener.local_addr()?);
        app.run_until_stopped(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Failure>(())
    }
    .await;
    common::cli::finish("parley-chat", telemetry, result)
}
