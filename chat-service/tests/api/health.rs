//! gRPC health follows the database: NOT_SERVING while it cannot be read,
//! SERVING again once it can.

use common::testing::{TcpProxy, health_becomes, health_follows};
use proto::chat::v1::chat_service_server::SERVICE_NAME;

use crate::helpers::spawn_app_with;

#[tokio::test]
async fn health_follows_the_database() {
    if common::testing::uses_postgres() {
        // Postgres through a proxy the test cuts and restores.
        let server = std::env::var(common::testing::DATABASE_URL_VAR).expect("postgres url");
        let (proxy, _) = TcpProxy::in_front_of(&server).await;
        let app = spawn_app_with(|c| c.database_url = proxy.reroute(&c.database_url)).await;
        health_follows(&app.url, SERVICE_NAME, &proxy).await;
        return;
    }
    // SQLite: the file's header is destroyed, then put back.
    let app = spawn_app_with(|_| {}).await;
    let path = sqlite_path(&app.database_url);
    let header = {
        let bytes = std::fs::read(&path).expect("database file");
        bytes[..100].to_vec()
    };
    health_becomes(&app.url, SERVICE_NAME, true).await;
    write_at_start(&path, &[0u8; 100]);
    health_becomes(&app.url, SERVICE_NAME, false).await;
    write_at_start(&path, &header);
    health_becomes(&app.url, SERVICE_NAME, true).await;
}

/// The file of a `sqlite://path?…` URL.
fn sqlite_path(url: &str) -> std::path::PathBuf {
    let path = url
        .trim_start_matches("sqlite://")
        .trim_start_matches("sqlite:");
    path.split('?').next().unwrap_or(path).into()
}

fn write_at_start(path: &std::path::Path, bytes: &[u8]) {
    use std::io::{Seek, SeekFrom, Write};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .expect("open database file");
    file.seek(SeekFrom::Start(0)).expect("seek");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("sync");
}
