//! `parley-auth`: the auth service as its own process.

use std::process::ExitCode;

use auth_service::AuthApp;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(&["auth"], true);
    let result = async {
        let bus = common::bus::connect(&config.bus).await?;
        let app = match AuthApp::connect(&config.auth, &config.services.credential, bus).await {
            Ok(app) => app,
            Err(auth_service::AuthError::Config(message)) => {
                // A key only this service can parse: a configuration error.
                eprintln!("invalid configuration: {message}");
                std::process::exit(common::cli::EXIT_CONFIG);
            }
            Err(other) => return Err(other.into()),
        };
        let listener = tokio::net::TcpListener::bind(config.auth.listen).await?;
        println!("parley-auth listening on grpc {}", listener.local_addr()?);
        app.serve(listener, common::shutdown::on_os_signal())
            .await?;
        Ok::<(), Box<dyn std::error::Error>>(())
    }
    .await;
    common::cli::finish("parley-auth", telemetry, result)
}
