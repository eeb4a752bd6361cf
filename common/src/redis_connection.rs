//! The shared Redis connection of a store: one auto-reconnecting,
//! multiplexed connection with the timeouts every component uses. `rediss://`
//! URLs connect over TLS (rustls; see docs/configuration.md).

use std::time::Duration;

use redis::RedisResult;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// Longest wait for a TCP connection and handshake to Redis.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the reply to one command.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Connects to `url` and checks the connection with `PING`.
///
/// One connection attempt per reconnect: while Redis is down a call fails
/// within the connect timeout instead of waiting out the library's backoff,
/// and the next call tries again.
pub async fn connect(url: &str) -> RedisResult<ConnectionManager> {
    let client = redis::Client::open(url)?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(CONNECT_TIMEOUT)
        .set_response_timeout(RESPONSE_TIMEOUT)
        .set_number_of_retries(0);
    let mut connection = client.get_connection_manager_with_config(config).await?;
    redis::cmd("PING").exec_async(&mut connection).await?;
    Ok(connection)
}
