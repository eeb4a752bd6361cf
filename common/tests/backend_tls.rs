//! TLS to Postgres: a Postgres of the test's own (`initdb` + `postgres` with
//! `ssl=on`, certificates from `common::testing::tls`) accepts
//! `sslmode=verify-full` against the right CA, and the client refuses the
//! server when given another CA — the way chat-service connects (sqlx's
//! `Any` driver with rustls).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::testing::tls::{TestCerts, free_port, run_ok};
use sqlx::any::AnyPoolOptions;

/// Runs `program args` in `dir` (as the `postgres` user when `as_postgres`
/// and this process is root, since Postgres refuses to run as root).
fn run(dir: &Path, as_postgres: bool, program: &str, args: &[&str]) -> Command {
    let root = is_root();
    let mut command = if as_postgres && root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--", program]);
        c
    } else {
        Command::new(program)
    };
    command.args(args).current_dir(dir);
    command
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.starts_with(b"0\n"))
        .unwrap_or(false)
}

/// A Postgres serving TLS with a certificate for `localhost` signed by the
/// test CA.
struct TlsPostgres {
    server: Child,
    port: u16,
    /// The certificates; Postgres's data directory lives among them.
    certs: TestCerts,
}

impl TlsPostgres {
    fn start() -> Self {
        let certs = TestCerts::new("parley-pg-tls");
        let dir = certs.dir();
        if is_root() {
            run_ok(&mut run(dir, false, "chown", &["-R", "postgres", "."]));
        }
        run_ok(&mut run(dir, false, "chmod", &["600", "server.key"]));
        run_ok(&mut run(
            dir,
            true,
            "initdb",
            &["-D", "data", "-U", "postgres", "--auth=trust"],
        ));
        let port = free_port();
        let server = run(
            dir,
            true,
            "postgres",
            &[
                "-D",
                "data",
                "-p",
                &port.to_string(),
                "-k",
                ".",
                "-c",
                "listen_addresses=127.0.0.1",
                "-c",
                "ssl=on",
                "-c",
                &format!("ssl_cert_file={}", certs.server_cert().display()),
                "-c",
                &format!("ssl_key_file={}", certs.server_key().display()),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
        Self {
            server,
            port,
            certs,
        }
    }

    fn url(&self, ca: &Path) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            ca.display()
        )
    }
}

impl Drop for TlsPostgres {
    /// Stops Postgres; then `certs` removes the directory.
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
    }
}

async fn connect(url: &str) -> Result<bool, sqlx::Error> {
    let pool = AnyPoolOptions::new()
        .max_connections(1)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await?;
    let row: (bool,) = sqlx::query_as("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        .fetch_one(&pool)
        .await?;
    Ok(row.0)
}

#[tokio::test]
async fn postgres_verify_full_connects_and_a_wrong_ca_is_refused() {
    // Needs Postgres's own programs (initdb, postgres) and openssl: it runs
    // where the Postgres tests run, and then fails loudly if they are missing.
    if std::env::var("PARLEY_TEST_DATABASE_URL").map_or(true, |v| v.is_empty()) {
        eprintln!("note: PARLEY_TEST_DATABASE_URL is not set; skipping the Postgres TLS test");
        return;
    }
    sqlx::any::install_default_drivers();
    let postgres = TlsPostgres::start();
    // Postgres starts in the background: retry until it accepts.
    let mut result = connect(&postgres.url(&postgres.certs.ca())).await;
    for _ in 0..100 {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = connect(&postgres.url(&postgres.certs.ca())).await;
    }
    assert!(
        result.expect("verify-full with the right CA connects"),
        "the session uses TLS"
    );
    let e = connect(&postgres.url(&postgres.certs.other_ca()))
        .await
        .expect_err("a certificate from another CA is refused");
    let message = e.to_string().to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("tls"),
        "{e}"
    );
}
