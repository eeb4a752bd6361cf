//! Start-up shared by every binary: parse `--config`, load the layered
//! configuration (exit 64 naming the bad key), install telemetry.

use std::path::PathBuf;

use clap::{CommandFactory, FromArgMatches, Parser};

use crate::config::Config;
use crate::telemetry::{self, OtelSettings, Telemetry};

/// Exit status for an unusable configuration (EX_CONFIG-style, as sysexits' EX_USAGE).
pub const EXIT_CONFIG: i32 = 64;

#[derive(Debug, Parser)]
#[command(
    version,
    after_help = "Every key can also be set as PARLEY_<SECTION>_<KEY>, e.g. PARLEY_EDGE_LISTEN=0.0.0.0:8080.\n\
                  Keys and defaults: docs/configuration.md. Traces: OTEL_EXPORTER_OTLP_ENDPOINT, OTEL_SERVICE_NAME."
)]
pub struct Args {
    /// TOML config file (layered over the defaults, under PARLEY_* variables).
    #[arg(long, short, env = "PARLEY_CONFIG")]
    pub config: Option<PathBuf>,
}

/// Parses arguments, loads config and installs telemetry for `components`.
/// Exits the process with [`EXIT_CONFIG`] when the configuration is invalid.
pub fn bootstrap(components: &[&str], split_mode: bool) -> (Config, Telemetry) {
    let about = match components {
        [one] => format!("Parley's {one} component, as its own process"),
        _ => "Parley: the whole suite (edge + auth, chat, ai and presence services) in one process"
            .to_string(),
    };
    let matches = Args::command().about(about).get_matches();
    let args = Args::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    // The one-process binary is for development: its defaults say so.
    let defaults = if split_mode {
        Config::default()
    } else {
        Config::one_process_defaults()
    };
    let config = match Config::load_over(defaults, args.config.as_deref(), std::env::vars()) {
        Ok(config) => config,
        Err(e) => exit_config(&e.to_string()),
    };
    if let Err(e) = config.check_components(components, split_mode) {
        exit_config(&e.to_string());
    }
    let otel = match OtelSettings::from_env(std::env::vars()) {
        Ok(otel) => otel,
        Err(e) => exit_config(&e.to_string()),
    };
    let telemetry = match telemetry::init(&config.log, &otel, components) {
        Ok(t) => t,
        Err(e) => exit_config(&e.to_string()),
    };
    (config, telemetry)
}

/// Why a binary stopped with an error.
#[derive(Debug)]
pub enum Failure {
    /// A value only the component itself could check (e.g. a PEM key):
    /// exits with [`EXIT_CONFIG`], like an invalid config file.
    Config(String),
    /// Anything else: exits with status 1.
    Other(Box<dyn std::error::Error>),
}

impl<E: std::error::Error + 'static> From<E> for Failure {
    fn from(error: E) -> Self {
        Self::Other(Box::new(error))
    }
}

/// Ends a binary on every path: flushes telemetry, reports an error under
/// the binary's name, and turns the outcome into the exit status.
pub fn finish(
    binary: &str,
    telemetry: Telemetry,
    result: Result<(), Failure>,
) -> std::process::ExitCode {
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(Failure::Config(message)) => {
            eprintln!("{binary}: invalid configuration: {message}");
            std::process::ExitCode::from(EXIT_CONFIG as u8)
        }
        Err(Failure::Other(e)) => {
            eprintln!("{binary}: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Binds a component's listener; the error names the config key.
pub async fn bind(
    key: &'static str,
    addr: std::net::SocketAddr,
) -> Result<tokio::net::TcpListener, BindError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| BindError { key, addr, source })
}

/// A listen address that cannot be bound.
#[derive(Debug, thiserror::Error)]
#[error("cannot listen on {addr} (key `{key}`): {source}")]
pub struct BindError {
    pub key: &'static str,
    pub addr: std::net::SocketAddr,
    pub source: std::io::Error,
}

fn exit_config(message: &str) -> ! {
    eprintln!("{message}");
    std::process::exit(EXIT_CONFIG)
}

/// First wait after a failed start-up attempt; it doubles up to
/// [`START_RETRY_MAX`].
pub const START_RETRY_FIRST: std::time::Duration = std::time::Duration::from_millis(250);
/// Longest wait between two start-up attempts.
pub const START_RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(5);

/// Runs `attempt` (connecting a component to its backends and building it)
/// until it succeeds, so a component started before its Redis or database
/// answers waits for them, not ready, instead of exiting and being
/// restarted. Each failure is logged with the wait before the next try. A
/// configuration error ends it at once; `shutdown` ends it with `None`.
pub async fn until_ready<T, F, Fut>(
    what: &'static str,
    shutdown: &crate::shutdown::ShutdownSignal,
    mut attempt: F,
) -> Result<Option<T>, Failure>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, Failure>>,
{
    let mut wait = START_RETRY_FIRST;
    loop {
        match attempt().await {
            Ok(ready) => return Ok(Some(ready)),
            Err(Failure::Config(message)) => return Err(Failure::Config(message)),
            Err(Failure::Other(error)) => {
                tracing::warn!(
                    component = what,
                    %error,
                    retry_in_ms = wait.as_millis() as u64,
                    "backends not reachable yet: waiting"
                );
                tokio::select! {
                    () = shutdown.clone().wait() => return Ok(None),
                    () = tokio::time::sleep(wait) => {}
                }
                wait = (wait * 2).min(START_RETRY_MAX);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::time::Duration;

    use super::*;
    use crate::shutdown::Shutdown;

    fn unreachable() -> Failure {
        Failure::Other(Box::new(std::io::Error::from(
            std::io::ErrorKind::ConnectionRefused,
        )))
    }

    #[tokio::test(start_paused = true)]
    async fn start_up_waits_for_backends_with_growing_pauses() {
        let stop = Shutdown::new();
        let tries = AtomicU32::new(0);
        let started = tokio::time::Instant::now();
        let ready = until_ready("test", &stop.signal(), || async {
            match tries.fetch_add(1, Ordering::SeqCst) {
                0..=3 => Err(unreachable()),
                _ => Ok("built"),
            }
        })
        .await;
        assert!(matches!(ready, Ok(Some("built"))));
        assert_eq!(tries.load(Ordering::SeqCst), 5);
        // 250 + 500 + 1000 + 2000 ms of pauses.
        assert_eq!(started.elapsed(), Duration::from_millis(3750));
    }

    #[tokio::test(start_paused = true)]
    async fn a_config_error_ends_start_up_and_a_stop_ends_the_wait() {
        let stop = Shutdown::new();
        let config = until_ready::<(), _, _>("test", &stop.signal(), || async {
            Err(Failure::Config("key `x`: bad".into()))
        })
        .await;
        assert!(matches!(config, Err(Failure::Config(_))));
        let signal = stop.signal();
        let waiting = until_ready::<(), _, _>("test", &signal, || async { Err(unreachable()) });
        stop.trigger();
        assert!(matches!(waiting.await, Ok(None)), "stopped while waiting");
    }
}
