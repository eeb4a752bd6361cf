//! Leases in Redis, shared by every presence replica. Each operation is one
//! Lua script, so it is atomic and costs one round trip however many
//! connections an edge renews.
//!
//! Keys, under a prefix (`presence:` by default):
//! - `<prefix>user:<user_id>`: sorted set of the user's conn ids, scored by
//!   lease expiry (Unix ms). Expired members are dropped whenever the user is
//!   looked at, which is also when their expiry becomes `last_seen`.
//! - `<prefix>conn:<conn_id>`: hash `user`, `edge`, `exp` of one lease, with
//!   a Redis TTL of the lease plus [`GARBAGE_GRACE`] so leases of dead edges
//!   disappear on their own.
//! - `<prefix>last_seen`: hash user id → Unix ms their last lease ended.
//!
//! Expiry is decided by comparing scores with the store's [`Clock`], never by
//! Redis TTLs, so tests move time by moving the clock. Scripts build key
//! names from the prefix, so the store needs a single Redis node (or a
//! primary with replicas), not Redis Cluster.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{Clock, Presence, PresenceStore};
use crate::error::PresenceError;

/// Longest wait for a TCP connection and handshake to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the reply to one call.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lease's hash outlives its expiry before Redis deletes it.
const GARBAGE_GRACE: Duration = Duration::from_secs(3600);

/// Shared by every script. `ARGV[1]` is the key prefix, `ARGV[2]` the
/// current time in Unix ms (kept as a string when written, so no precision
/// is lost to Lua numbers).
const HELPERS: &str = r#"
local prefix = ARGV[1]
local now_ms = ARGV[2]
local now = tonumber(now_ms)

local function conn_key(conn)
  return prefix .. 'conn:' .. conn
end

local function user_key(user)
  return prefix .. 'user:' .. user
end

local function mark_seen(user, at_ms)
  local key = prefix .. 'last_seen'
  local seen = redis.call('HGET', key, user)
  if (not seen) or tonumber(seen) < tonumber(at_ms) then
    redis.call('HSET', key, user, at_ms)
  end
end

-- Drops the user's expired leases, recording the last expiry as last_seen
-- when none is left; true while a live lease remains.
local function prune(user)
  local zkey = user_key(user)
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', now_ms, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local ckey = conn_key(expired[i])
    if redis.call('HGET', ckey, 'user') == user then
      redis.call('DEL', ckey)
    end
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now_ms)
  end
  if redis.call('ZCARD', zkey) > 0 then
    return true
  end
  if #expired > 0 then
    mark_seen(user, expired[#expired])
  end
  return false
end

-- Ends one lease now (an already expired one ended at its expiry).
local function release(conn)
  local ckey = conn_key(conn)
  local user = redis.call('HGET', ckey, 'user')
  if not user then
    return
  end
  redis.call('DEL', ckey)
  local zkey = user_key(user)
  prune(user)
  if redis.call('ZREM', zkey, conn) == 1 and redis.call('ZCARD', zkey) == 0 then
    mark_seen(user, now_ms)
  end
end
"#;

/// ARGV: prefix, now, edge, conn, user, expiry ms, hash TTL ms.
const REGISTER: &str = r#"
local edge, conn, user, expires, keep = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ckey = conn_key(conn)
local holder = redis.call('HGET', ckey, 'user')
if holder and holder ~= user then
  release(conn)
end
-- A lease that ran out before this registration still ended the session.
prune(user)
redis.call('HSET', ckey, 'user', user, 'edge', edge, 'exp', expires)
redis.call('PEXPIRE', ckey, keep)
redis.call('ZADD', user_key(user), expires, conn)
return 1
"#;

/// ARGV: prefix, now, edge, expiry ms, hash TTL ms, conn ids…; returns the
/// unknown conn ids.
const RENEW: &str = r#"
local edge, expires, keep = ARGV[3], ARGV[4], ARGV[5]
local unknown = {}
for i = 6, #ARGV do
  local conn = ARGV[i]
  local ckey = conn_key(conn)
  local lease = redis.call('HMGET', ckey, 'user', 'edge', 'exp')
  local user = lease[1]
  local lease_expires = tonumber(lease[3]) or 0
  if user and lease_expires > now and lease[2] == edge then
    redis.call('HSET', ckey, 'exp', expires)
    redis.call('PEXPIRE', ckey, keep)
    redis.call('ZADD', user_key(user), expires, conn)
  else
    if user and lease_expires <= now then
      prune(user)
    end
    unknown[#unknown + 1] = conn
  end
end
return unknown
"#;

/// ARGV: prefix, now, conn ids….
const RELEASE: &str = r#"
for i = 3, #ARGV do
  release(ARGV[i])
end
return 1
"#;

/// ARGV: prefix, now, user ids…; returns online (0/1) and last_seen per user.
const PRESENCE: &str = r#"
local result = {}
for i = 3, #ARGV do
  local user = ARGV[i]
  result[#result + 1] = prune(user) and 1 or 0
  result[#result + 1] = tonumber(redis.call('HGET', prefix .. 'last_seen', user) or '0')
end
return result
"#;

/// A presence store in Redis.
pub struct RedisStore {
    /// Shared, auto-reconnecting connection.
    connection: ConnectionManager,
    prefix: String,
    clock: Arc<dyn Clock>,
    register: Script,
    renew: Script,
    release: Script,
    presence: Script,
}

impl RedisStore {
    /// The key prefix in production.
    pub const DEFAULT_PREFIX: &'static str = "presence:";

    /// Connects to `url` (checked with `PING`); keys go under `prefix`.
    pub async fn connect(
        url: &str,
        prefix: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PresenceError> {
        let client = redis::Client::open(url)?;
        // One attempt per reconnect: while Redis is down calls fail within the
        // connect timeout rather than waiting out the library's backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(0);
        let mut connection = client.get_connection_manager_with_config(config).await?;
        redis::cmd("PING").exec_async(&mut connection).await?;
        let script = |body: &str| Script::new(&format!("{HELPERS}\n{body}"));
        Ok(Self {
            connection,
            prefix: prefix.to_string(),
            clock,
            register: script(REGISTER),
            renew: script(RENEW),
            release: script(RELEASE),
            presence: script(PRESENCE),
        })
    }
}

/// Milliseconds of a duration, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<(), PresenceError> {
        let now = self.clock.now_ms();
        let _: i64 = self
            .register
            .arg(&self.prefix)
            .arg(now)
            .arg(edge_id)
            .arg(conn_id)
            .arg(user_id)
            .arg(now.saturating_add(millis(ttl)))
            .arg(millis(ttl + GARBAGE_GRACE))
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    async fn renew(
        &self,
        edge_id: &str,
        conn_ids: &[String],
        ttl: Duration,
    ) -> Result<Vec<String>, PresenceError> {
        if conn_ids.is_empty() {
            return Ok(Vec::new());
        }
        let now = self.clock.now_ms();
        Ok(self
            .renew
            .arg(&self.prefix)
            .arg(now)
            .arg(edge_id)
            .arg(now.saturating_add(millis(ttl)))
            .arg(millis(ttl + GARBAGE_GRACE))
            .arg(conn_ids)
            .invoke_async(&mut self.connection.clone())
            .await?)
    }

    async fn release(&self, conn_ids: &[String]) -> Result<(), PresenceError> {
        if conn_ids.is_empty() {
            return Ok(());
        }
        let _: i64 = self
            .release
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(conn_ids)
            .invoke_async(&mut self.connection.clone())
            .await?;
        Ok(())
    }

    async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<i64> = self
            .presence
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(user_ids)
            .invoke_async(&mut self.connection.clone())
            .await?;
        if flat.len() != user_ids.len() * 2 {
            return Err(PresenceError::Store(redis::RedisError::from((
                redis::ErrorKind::TypeError,
                "presence script returned a malformed reply",
            ))));
        }
        Ok(user_ids
            .iter()
            .zip(flat.chunks_exact(2))
            .map(|(user_id, pair)| Presence {
                user_id: user_id.clone(),
                online: pair[0] == 1,
                last_seen_ms: pair[1],
            })
            .collect())
    }
}
