//! `parley`: the whole suite in one process on embedded defaults (SQLite,
//! in-process bus, in-memory presence, the offline AI stand-in).

use std::process::ExitCode;

#[tokio::main]
async fn main() -> ExitCode {
    let (config, telemetry) = common::cli::bootstrap(parley::COMPONENTS, false);
    let web_app = config.edge.web_app;
    let result = async {
        let listeners = parley::Listeners::bind(&config).await?;
        let mut suite = parley::start(config, listeners, telemetry.tracing_enabled()).await?;
        let a = suite.addrs;
        println!("parley is running (one process; Ctrl-C to stop)");
        if web_app {
            println!("  web app   http://{}/", a.edge);
        }
        println!("  edge      ws://{}/ws   http://{}/healthz", a.edge, a.edge);
        println!("  auth      grpc {}", a.auth);
        println!("  chat      grpc {}", a.chat);
        println!(
            "  ai        grpc {}   (offline development provider, not a language model)",
            a.ai
        );
        println!("  presence  grpc {}", a.presence);
        tokio::select! {
            _ = common::shutdown::os_signal() => {
                println!("parley: shutting down");
            }
            _ = suite.stopped() => {
                eprintln!("parley: a component stopped unexpectedly; shutting down");
            }
        }
        suite.shutdown().await;
        Ok::<(), parley::SuiteError>(())
    }
    .await;
    common::cli::finish(
        "parley",
        telemetry,
        result.map_err(parley::SuiteError::into_failure),
    )
}
