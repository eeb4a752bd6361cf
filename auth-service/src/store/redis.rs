//! The Redis store, shared by every auth-service replica. Keys live under a
//! prefix and carry TTLs, so nothing outlives the tokens it is about.
//! Read-modify-write steps (rotation, failure counting) are Lua scripts.

use std::path::Path;
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{AsyncCommands, Script};

use super::{AuthStore, Family, Rotation, StoreError, Target, TokenRef};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Makes `ARGV[2]` current if `ARGV[1]` is: 1 rotated, 0 reused, nil unknown.
const ROTATE: &str = r"
local current = redis.call('HGET', KEYS[1], 'current')
if not current then return nil end
if current ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'current', ARGV[2])
return 1
";

/// Adds a failure at `ARGV[1]` (member `ARGV[5]`), drops those older than
/// the window `ARGV[2]`; at `ARGV[3]` failures blocks for `ARGV[4]` ms and
/// returns the block's end.
const FAILURE: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  redis.call('DEL', KEYS[1])
  local untill = now + tonumber(ARGV[4])
  redis.call('SET', KEYS[2], untill, 'PX', ARGV[4])
  return untill
end
return nil
";

pub(crate) struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    rotate: Script,
    failure: Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisStore")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

impl From<redis::RedisError> for StoreError {
    fn from(e: redis::RedisError) -> Self {
        StoreError(e.to_string())
    }
}

impl RedisStore {
    /// Connects to `url` (checked with `PING`; a `rediss://` one verified
    /// against `ca_file`); keys go under `prefix`.
    pub(crate) async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        let client = common::redis_client::open(url, ca_file)?;
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(0);
        let mut connection = client.get_connection_manager_with_config(config).await?;
        redis::cmd("PING").exec_async(&mut connection).await?;
        Ok(Self {
            connection,
            prefix: prefix.to_string(),
            rotate: Script::new(ROTATE),
            failure: Script::new(FAILURE),
        })
    }

    fn key(&self, kind: &str, id: &str) -> String {
        format!("{}{kind}:{id}", self.prefix)
    }

    fn conn(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

#[async_trait]
impl AuthStore for RedisStore {
    async fn ping(&self) -> bool {
        let mut conn = self.conn();
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .is_ok()
    }

    async fn revoke(
        &self,
        target: &Target,
        at_ms: i64,
        keep_until_ms: i64,
    ) -> Result<(), StoreError> {
        let ttl = keep_until_ms - common::ids::now_ms();
        let mut conn = self.conn();
        if let Target::Session(sid) = target {
            let _: () = conn.del(self.key("fam", sid)).await?;
        }
        if ttl <= 0 {
            return Ok(());
        }
        let ttl = ttl as u64;
        let (key, value) = match target {
            Target::Token(jti) => (self.key("rt", jti), 1),
            Target::Session(sid) => (self.key("rs", sid), 1),
            Target::User(user) => (self.key("ru", user), at_ms),
        };
        let _: () = conn.pset_ex(key, value, ttl).await?;
        Ok(())
    }

    async fn is_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        let mut conn = self.conn();
        let keys = [
            self.key("rt", token.jti),
            self.key("rs", token.session),
            self.key("ru", token.user),
        ];
        let values: Vec<Option<i64>> = conn.mget(&keys).await?;
        let jti = !token.jti.is_empty() && values.first().is_some_and(Option::is_some);
        let session = !token.session.is_empty() && values.get(1).is_some_and(Option::is_some);
        let user = values
            .get(2)
            .copied()
            .flatten()
            .is_some_and(|at| token.issued_at_s <= at / 1000);
        Ok(jti || session || user)
    }

    async fn create_family(&self, family: &Family) -> Result<(), StoreError> {
        let ttl = family.expires_at - common::ids::now_ms();
        if ttl <= 0 {
            return Ok(());
        }
        let key = self.key("fam", &family.session);
        let roles = serde_json::to_string(&family.roles).unwrap_or_else(|_| "[]".into());
        let expires_at = family.expires_at.to_string();
        let fields = [
            ("user", family.user.as_str()),
            ("name", family.name.as_str()),
            ("roles", roles.as_str()),
            ("current", family.current.as_str()),
            ("expires_at", expires_at.as_str()),
        ];
        redis::pipe()
            .atomic()
            .hset_multiple(&key, &fields)
            .ignore()
            .pexpire(&key, ttl)
            .ignore()
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn rotate(
        &self,
        session: &str,
        jti: &str,
        next: &str,
        now_ms: i64,
    ) -> Result<Rotation, StoreError> {
        let key = self.key("fam", session);
        let mut conn = self.conn();
        let outcome: Option<i64> = self
            .rotate
            .key(&key)
            .arg(jti)
            .arg(next)
            .invoke_async(&mut conn)
            .await?;
        let Some(outcome) = outcome else {
            return Ok(Rotation::Unknown);
        };
        let fields: std::collections::HashMap<String, String> = conn.hgetall(&key).await?;
        let get = |name: &str| fields.get(name).cloned().unwrap_or_default();
        let family = Family {
            session: session.to_string(),
            user: get("user"),
            name: get("name"),
            roles: serde_json::from_str(&get("roles")).unwrap_or_default(),
            current: get("current"),
            expires_at: get("expires_at").parse().unwrap_or_default(),
        };
        if family.expires_at <= now_ms {
            return Ok(Rotation::Unknown);
        }
        Ok(if outcome == 1 {
            Rotation::Rotated(family)
        } else {
            Rotation::Reused(family)
        })
    }

    async fn record_failure(
        &self,
        ip: &str,
        now_ms: i64,
        window_ms: i64,
        max: u32,
        block_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        Ok(self
            .failure
            .key(self.key("fail", ip))
            .key(self.key("block", ip))
            .arg(now_ms)
            .arg(window_ms)
            .arg(max)
            .arg(block_ms)
            .arg(common::ids::new_id("f"))
            .invoke_async(&mut self.conn())
            .await?)
    }

    async fn blocked_until(&self, ip: &str, now_ms: i64) -> Result<Option<i64>, StoreError> {
        let until: Option<i64> = self.conn().get(self.key("block", ip)).await?;
        Ok(until.filter(|until| *until > now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs when `PARLEY_TEST_REDIS_URL` is set, and then fails loudly if
    /// Redis cannot be reached.
    #[tokio::test]
    async fn the_redis_store_keeps_the_contract() {
        let Some(url) = common::testing::test_redis_url() else {
            eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping the Redis store contract");
            return;
        };
        let prefix = format!("{}:", common::ids::new_id("auth-test"));
        let store = RedisStore::connect(&url, None, &prefix)
            .await
            .unwrap_or_else(|e| panic!("PARLEY_TEST_REDIS_URL is set but Redis is unusable: {e}"));
        super::super::contract::run(&store).await;
    }
}
