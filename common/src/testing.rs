//! Test helpers shared by every crate's tests (feature `testing`): a fresh
//! database per test, the Redis URL to test against, an
//! OpenAI-compatible model server ([`FakeOpenAi`]), log capture
//! ([`logs`]), a gRPC service served on `127.0.0.1:0` ([`serve_grpc`]), and
//! a TCP proxy that cuts a dependency off ([`TcpProxy`]), certificates for
//! TLS tests ([`tls`]), and the rendered Kubernetes manifests ([`deploy`]).
//!
//! Without environment variables a test gets a new SQLite file and no Redis,
//! so `cargo test` passes on a fresh machine. With
//! `PARLEY_TEST_DATABASE_URL` a test gets its own Postgres schema, dropped
//! when the [`TestDatabase`] is; with `PARLEY_TEST_REDIS_URL` the Redis
//! paths run. A variable that is set but whose service cannot be reached
//! fails the test loudly: CI never skips them silently.

pub mod deploy;
mod fake_openai;
mod grpc;
pub mod logs;
mod proxy;
pub mod tls;

use std::path::PathBuf;

use sqlx::Connection;

pub use self::fake_openai::{FakeOpenAi, Reply};
pub use self::grpc::{TestServer, serve_grpc};
pub use self::proxy::{TcpProxy, health_becomes, health_follows};

/// Names the Postgres server tests run against (e.g. `postgres://postgres@127.0.0.1:5432/test`).
pub const DATABASE_URL_VAR: &str = "PARLEY_TEST_DATABASE_URL";
/// Names the Redis server tests run against (e.g. `redis://127.0.0.1:6379`).
pub const REDIS_URL_VAR: &str = "PARLEY_TEST_REDIS_URL";

/// A database of one test's own; removed on drop.
#[derive(Debug)]
pub struct TestDatabase {
    /// What `chat.database_url` should be set to.
    pub url: String,
    cleanup: Cleanup,
}

#[derive(Debug)]
enum Cleanup {
    /// A temporary directory holding the SQLite file.
    SqliteDir(PathBuf),
    /// A schema in the shared Postgres database.
    PostgresSchema {
        server_url: String,
        schema: String,
    },
    Done,
}

/// A fresh, empty database: a Postgres schema when `PARLEY_TEST_DATABASE_URL`
/// is set (panics if it cannot be created), a temporary SQLite file otherwise.
pub async fn test_database() -> TestDatabase {
    match non_empty_var(DATABASE_URL_VAR) {
        Some(url) => postgres_schema(url).await,
        None => sqlite_file(),
    }
}

/// Whether tests run on Postgres.
pub fn uses_postgres() -> bool {
    non_empty_var(DATABASE_URL_VAR).is_some()
}

/// The Redis URL from `PARLEY_TEST_REDIS_URL`, if set.
pub fn test_redis_url() -> Option<String> {
    non_empty_var(REDIS_URL_VAR)
}

fn non_empty_var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

fn sqlite_file() -> TestDatabase {
    let dir = std::env::temp_dir().join(crate::ids::new_id("parley-test"));
    std::fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    let url = format!("sqlite://{}?mode=rwc", dir.join("chat.db").display());
    TestDatabase {
        url,
        cleanup: Cleanup::SqliteDir(dir),
    }
}

async fn postgres_schema(server_url: String) -> TestDatabase {
    let schema = crate::ids::new_id("t");
    let mut conn = sqlx::PgConnection::connect(&server_url)
        .await
        .unwrap_or_else(|e| panic!("{DATABASE_URL_VAR} is set but Postgres is unusable: {e}"));
    sqlx::query(&format!("CREATE SCHEMA \"{schema}\""))
        .execute(&mut conn)
        .await
        .unwrap_or_else(|e| panic!("cannot create test schema {schema}: {e}"));
    let _ = conn.close().await;
    // Every connection of the test's pool works inside the schema.
    let separator = if server_url.contains('?') { '&' } else { '?' };
    let url = format!("{server_url}{separator}options=-c%20search_path%3D{schema}");
    TestDatabase {
        url,
        cleanup: Cleanup::PostgresSchema { server_url, schema },
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match std::mem::replace(&mut self.cleanup, Cleanup::Done) {
            Cleanup::SqliteDir(dir) => {
                let _ = std::fs::remove_dir_all(dir);
            }
            Cleanup::PostgresSchema { server_url, schema } => {
                // Drop may run inside a runtime, which cannot block: use a
                // thread with a runtime of its own.
                let dropped = std::thread::spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .ok()?;
                    runtime.block_on(async {
                        let mut conn = sqlx::PgConnection::connect(&server_url).await.ok()?;
                        sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"))
                            .execute(&mut conn)
                            .await
                            .ok()?;
                        let _ = conn.close().await;
                        Some(())
                    })
                })
                .join();
                if !matches!(dropped, Ok(Some(()))) {
                    eprintln!("note: could not drop a test schema; it is left behind");
                }
            }
            Cleanup::Done => {}
        }
    }
}
