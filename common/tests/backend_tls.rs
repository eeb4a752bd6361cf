//! TLS to Postgres: a Postgres of the test's own (`initdb` + `postgres` with
//! `ssl=on`, certificates from a CA made with the openssl CLI) accepts
//! `sslmode=verify-full` against the right CA, and the client refuses the
//! server when given another CA — the way chat-service connects (sqlx's
//! `Any` driver with rustls).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use sqlx::any::AnyPoolOptions;

/// Runs `program args` (as the `postgres` user when `as_postgres` and this
/// process is root, since Postgres refuses to run as root).
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

fn ok(mut command: Command) {
    let output = command.output().expect("command runs");
    assert!(
        output.status.success(),
        "{command:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA in `dir` named `name` (`name.crt`, `name.key`).
fn make_ca(dir: &Path, name: &str) {
    ok(run(
        dir,
        false,
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
        ],
    ));
}

/// A Postgres serving TLS with a certificate for `localhost` signed by `ca`.
struct TlsPostgres {
    dir: PathBuf,
    port: u16,
    server: Child,
}

impl TlsPostgres {
    fn start() -> Self {
        let dir = std::env::temp_dir().join(format!("parley-pg-tls-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("temp dir");
        make_ca(&dir, "ca");
        make_ca(&dir, "other-ca");
        std::fs::write(
            dir.join("san.ext"),
            "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
        )
        .expect("write");
        ok(run(
            &dir,
            false,
            "openssl",
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                "server.key",
                "-out",
                "server.csr",
            ],
        ));
        ok(run(
            &dir,
            false,
            "openssl",
            &[
                "x509",
                "-req",
                "-in",
                "server.csr",
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-days",
                "1",
                "-extfile",
                "san.ext",
                "-out",
                "server.crt",
            ],
        ));
        if is_root() {
            ok(run(&dir, false, "chown", &["-R", "postgres", "."]));
        }
        ok(run(&dir, false, "chmod", &["600", "server.key"]));
        ok(run(
            &dir,
            true,
            "initdb",
            &["-D", "data", "-U", "postgres", "--auth=trust"],
        ));
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port();
        let server = run(
            &dir,
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
                &format!("ssl_cert_file={}", dir.join("server.crt").display()),
                "-c",
                &format!("ssl_key_file={}", dir.join("server.key").display()),
            ],
        )
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("postgres starts");
        Self { dir, port, server }
    }

    fn url(&self, ca: &str) -> String {
        format!(
            "postgres://postgres@localhost:{}/postgres?sslmode=verify-full&sslrootcert={}",
            self.port,
            self.dir.join(ca).display()
        )
    }
}

impl Drop for TlsPostgres {
    fn drop(&mut self) {
        let _ = self.server.kill();
        let _ = self.server.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
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
    let mut result = connect(&postgres.url("ca.crt")).await;
    for _ in 0..100 {
        if result.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        result = connect(&postgres.url("ca.crt")).await;
    }
    assert!(
        result.expect("verify-full with the right CA connects"),
        "the session uses TLS"
    );
    let e = connect(&postgres.url("other-ca.crt"))
        .await
        .expect_err("a certificate from another CA is refused");
    let message = e.to_string().to_lowercase();
    assert!(
        message.contains("certificate") || message.contains("tls"),
        "{e}"
    );
}
