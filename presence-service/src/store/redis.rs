//! Presence state in Redis, shared by every presence replica. Each operation
//! is one Lua script, so it is atomic and costs one round trip however many
//! connections an edge renews.
//!
//! Keys, under a prefix (`presence:` by default); every one either expires
//! or is drained by the sweep, so nothing grows without bound:
//! - `<prefix>user:<user_id>`: sorted set of the user's conn ids, scored by
//!   lease expiry (Unix ms). Expired members are dropped whenever the user is
//!   looked at or swept, which is also when their expiry becomes `last_seen`.
//!   Empty sets vanish.
//! - `<prefix>conn:<conn_id>`: hash `user`, `edge`, `exp` of one lease, with
//!   a Redis TTL of the lease plus [`GARBAGE_GRACE`].
//! - `<prefix>leases`: sorted set of `<user>\x1f<conn>` by expiry, so a
//!   sweep finds expired leases without scanning users.
//! - `<prefix>ended`: list of expired leases (`conn\x1fuser\x1fedge`) not
//!   reported yet; drained by the sweep, trimmed to [`MAX_ENDED`].
//! - `<prefix>pending`: sorted set of users in their grace period, scored by
//!   when their last lease ended; drained by the sweep.
//! - `<prefix>seen:<user_id>`: Unix ms the user's last lease ended; expires
//!   after [`LAST_SEEN_KEEP`].
//! - `<prefix>status:<user_id>`: hash `status`, `text`; deleted when the
//!   user goes offline, and expires an hour after the last renewal anyway.
//! - `<prefix>call:<call_id>`: hash `caller`, `caller_name`, `callee`,
//!   `room`, `state` (ringing | active); expires.
//! - `<prefix>ringing`: sorted set of ringing call ids by deadline.
//!
//! Expiry is decided by comparing scores with the store's [`Clock`], never by
//! Redis TTLs (those only collect garbage), so tests move time by moving the
//! clock. Scripts build key names from the prefix, so the store needs a
//! single Redis node (or a primary with replicas), not Redis Cluster.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use redis::Script;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};

use super::{
    ACTIVE_CALL_KEEP, Call, CallAction, Clock, Counts, Ended, LAST_SEEN_KEEP, Presence,
    PresenceStore, SWEEP_LIMIT, Sweep, WentOffline,
};
use crate::error::PresenceError;

/// Longest wait for a TCP connection and handshake to Redis.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest wait for the reply to one call.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a lease's hash (and a user's status) outlives the lease's
/// expiry before Redis deletes it.
const GARBAGE_GRACE: Duration = Duration::from_secs(3600);
/// Most unreported expired leases kept when no sweep runs.
const MAX_ENDED: usize = 100_000;

/// Shared by every script. `ARGV[1]` is the key prefix, `ARGV[2]` the
/// current time in Unix ms (kept as a string when written, so no precision
/// is lost to Lua numbers).
const HELPERS: &str = r#"
local prefix = ARGV[1]
local now_ms = ARGV[2]
local now = tonumber(now_ms)
local SEP = '\31'
local leases_key = prefix .. 'leases'
local ended_key = prefix .. 'ended'
local pending_key = prefix .. 'pending'

local function conn_key(conn)
  return prefix .. 'conn:' .. conn
end

local function user_key(user)
  return prefix .. 'user:' .. user
end

local function status_key(user)
  return prefix .. 'status:' .. user
end

local function seen_key(user)
  return prefix .. 'seen:' .. user
end

local function mark_seen(user, at_ms)
  local key = seen_key(user)
  local seen = redis.call('GET', key)
  if (not seen) or tonumber(seen) < tonumber(at_ms) then
    redis.call('SET', key, at_ms, 'PX', LAST_SEEN_KEEP_MS)
  end
end

-- Drops the user's expired leases (queued for the sweep to report),
-- recording the last expiry as last_seen and starting the grace period
-- when none is left; true while a live lease remains.
local function prune(user)
  local zkey = user_key(user)
  local expired = redis.call('ZRANGEBYSCORE', zkey, '-inf', now_ms, 'WITHSCORES')
  for i = 1, #expired, 2 do
    local conn = expired[i]
    local ckey = conn_key(conn)
    local lease = redis.call('HMGET', ckey, 'user', 'edge')
    if lease[1] == user then
      redis.call('DEL', ckey)
    end
    redis.call('ZREM', leases_key, user .. SEP .. conn)
    redis.call('RPUSH', ended_key, conn .. SEP .. user .. SEP .. (lease[2] or ''))
  end
  if #expired > 0 then
    redis.call('ZREMRANGEBYSCORE', zkey, '-inf', now_ms)
    redis.call('LTRIM', ended_key, -MAX_ENDED, -1)
  end
  if redis.call('ZCARD', zkey) > 0 then
    return true
  end
  if #expired > 0 then
    mark_seen(user, expired[#expired])
    redis.call('ZADD', pending_key, expired[#expired], user)
  end
  return false
end

-- Ends one lease now; {conn, user, edge} when it was live (an already
-- expired one ended at its expiry and is reported by the sweep).
local function release(conn)
  local ckey = conn_key(conn)
  local lease = redis.call('HMGET', ckey, 'user', 'edge')
  local user = lease[1]
  if not user then
    return nil
  end
  prune(user)
  local zkey = user_key(user)
  if redis.call('ZREM', zkey, conn) == 0 then
    return nil
  end
  redis.call('DEL', ckey)
  redis.call('ZREM', leases_key, user .. SEP .. conn)
  if redis.call('ZCARD', zkey) == 0 then
    mark_seen(user, now_ms)
    redis.call('ZADD', pending_key, now_ms, user)
  end
  return {conn, user, lease[2] or ''}
end
"#;

/// ARGV: prefix, now, edge, conn, user, expiry ms, hash TTL ms; returns 1
/// when the user came online.
const REGISTER: &str = r#"
local edge, conn, user, expires, keep = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local ckey = conn_key(conn)
local holder = redis.call('HGET', ckey, 'user')
if holder and holder ~= user then
  release(conn)
end
-- A lease that ran out before this registration still ended the session.
local was_online = prune(user)
local was_pending = redis.call('ZREM', pending_key, user) == 1
redis.call('HSET', ckey, 'user', user, 'edge', edge, 'exp', expires)
redis.call('PEXPIRE', ckey, keep)
redis.call('ZADD', user_key(user), expires, conn)
redis.call('ZADD', leases_key, expires, user .. SEP .. conn)
if was_online or was_pending then
  return 0
end
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
    redis.call('ZADD', leases_key, expires, user .. SEP .. conn)
    redis.call('PEXPIRE', status_key(user), keep)
  else
    if user and lease_expires <= now then
      prune(user)
    end
    unknown[#unknown + 1] = conn
  end
end
return unknown
"#;

/// ARGV: prefix, now, conn ids…; returns the ended leases, flat.
const RELEASE: &str = r#"
local ended = {}
for i = 3, #ARGV do
  local lease = release(ARGV[i])
  if lease then
    ended[#ended + 1] = lease[1]
    ended[#ended + 1] = lease[2]
    ended[#ended + 1] = lease[3]
  end
end
return ended
"#;

/// ARGV: prefix, now, user ids…; returns online (0/1), in grace (0/1),
/// last_seen, status, text per user, as strings.
const PRESENCE: &str = r#"
local result = {}
for i = 3, #ARGV do
  local user = ARGV[i]
  result[#result + 1] = prune(user) and '1' or '0'
  result[#result + 1] = redis.call('ZSCORE', pending_key, user) and '1' or '0'
  result[#result + 1] = redis.call('GET', seen_key(user)) or '0'
  local status = redis.call('HMGET', status_key(user), 'status', 'text')
  result[#result + 1] = status[1] or 'online'
  result[#result + 1] = status[2] or ''
end
return result
"#;

/// ARGV: prefix, now, user, status, text, TTL ms; returns the previous
/// status and text.
const SET_STATUS: &str = r#"
local key = status_key(ARGV[3])
local previous = redis.call('HMGET', key, 'status', 'text')
redis.call('HSET', key, 'status', ARGV[4], 'text', ARGV[5])
redis.call('PEXPIRE', key, ARGV[6])
return {previous[1] or 'online', previous[2] or ''}
"#;

/// ARGV: prefix, now, grace ms, limit; returns {ended (conn, user, edge
/// flat), offline (user, last_seen, status flat), missed calls (id,
/// caller, caller_name, callee, room flat)}.
const SWEEP: &str = r#"
local grace, limit = tonumber(ARGV[3]), tonumber(ARGV[4])
local due = redis.call('ZRANGEBYSCORE', leases_key, '-inf', now_ms, 'LIMIT', 0, limit)
for _, member in ipairs(due) do
  local at = string.find(member, SEP, 1, true)
  redis.call('ZREM', leases_key, member)
  if at then
    prune(string.sub(member, 1, at - 1))
  end
end

local ended = {}
local items = redis.call('LRANGE', ended_key, 0, limit - 1)
redis.call('LTRIM', ended_key, #items, -1)
for _, item in ipairs(items) do
  local a = string.find(item, SEP, 1, true)
  local b = string.find(item, SEP, a + 1, true)
  ended[#ended + 1] = string.sub(item, 1, a - 1)
  ended[#ended + 1] = string.sub(item, a + 1, b - 1)
  ended[#ended + 1] = string.sub(item, b + 1)
end

local offline = {}
local cutoff = now - grace
local gone = redis.call('ZRANGEBYSCORE', pending_key, '-inf', cutoff, 'LIMIT', 0, limit)
for _, user in ipairs(gone) do
  if prune(user) then
    redis.call('ZREM', pending_key, user)
  else
    local ended_at = tonumber(redis.call('ZSCORE', pending_key, user) or '0')
    -- A later expiry may have restarted the grace period.
    if ended_at <= cutoff then
      redis.call('ZREM', pending_key, user)
      local key = status_key(user)
      offline[#offline + 1] = user
      offline[#offline + 1] = redis.call('GET', seen_key(user)) or tostring(ended_at)
      offline[#offline + 1] = redis.call('HGET', key, 'status') or 'online'
      redis.call('DEL', key)
    end
  end
end

local missed = {}
local ringing_key = prefix .. 'ringing'
local calls = redis.call('ZRANGEBYSCORE', ringing_key, '-inf', now_ms, 'LIMIT', 0, limit)
for _, id in ipairs(calls) do
  redis.call('ZREM', ringing_key, id)
  local key = prefix .. 'call:' .. id
  local call = redis.call('HMGET', key, 'caller', 'caller_name', 'callee', 'room', 'state')
  if call[1] and call[5] == 'ringing' then
    redis.call('DEL', key)
    missed[#missed + 1] = id
    missed[#missed + 1] = call[1]
    missed[#missed + 1] = call[2]
    missed[#missed + 1] = call[3]
    missed[#missed + 1] = call[4]
  end
end
return {ended, offline, missed}
"#;

/// ARGV: prefix, now, id, caller, caller_name, callee, room, deadline ms,
/// TTL ms.
const CREATE_CALL: &str = r#"
local key = prefix .. 'call:' .. ARGV[3]
redis.call('HSET', key, 'caller', ARGV[4], 'caller_name', ARGV[5], 'callee', ARGV[6],
  'room', ARGV[7], 'state', 'ringing')
redis.call('PEXPIRE', key, ARGV[9])
redis.call('ZADD', prefix .. 'ringing', ARGV[8], ARGV[3])
return 1
"#;

/// ARGV: prefix, now, id, user, action, TTL ms of an answered call; returns
/// {outcome, caller, caller_name, callee, room, state before}.
const ACT_ON_CALL: &str = r#"
local id, user, action, keep = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local key = prefix .. 'call:' .. id
local ringing_key = prefix .. 'ringing'
local call = redis.call('HMGET', key, 'caller', 'caller_name', 'callee', 'room', 'state')
if not call[1] then
  return {'not_found'}
end
local is_caller, is_callee = call[1] == user, call[3] == user
if not (is_caller or is_callee) then
  return {'not_found'}
end
local deadline = redis.call('ZSCORE', ringing_key, id)
if call[5] == 'ringing' and deadline and tonumber(deadline) <= now then
  return {'not_found'}
end
local result = {'ok', call[1], call[2], call[3], call[4], call[5]}
if action == 'answer' or action == 'reject' then
  if not is_callee then
    return {'forbidden'}
  end
  if call[5] ~= 'ringing' then
    return {'conflict'}
  end
  redis.call('ZREM', ringing_key, id)
  if action == 'answer' then
    redis.call('HSET', key, 'state', 'active')
    redis.call('PEXPIRE', key, keep)
  else
    redis.call('DEL', key)
  end
elseif action == 'end' then
  redis.call('ZREM', ringing_key, id)
  redis.call('DEL', key)
elseif call[5] == 'active' then
  redis.call('PEXPIRE', key, keep)
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
    set_status: Script,
    sweep: Script,
    create_call: Script,
    act_on_call: Script,
}

impl RedisStore {
    /// Connects to `url` (checked with `PING`; a `rediss://` one verified
    /// against `ca_file`); keys go under `prefix`.
    pub async fn connect(
        url: &str,
        ca_file: Option<&Path>,
        prefix: &str,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, PresenceError> {
        let client = common::redis_client::open(url, ca_file)?;
        // One attempt per reconnect: while Redis is down calls fail within the
        // connect timeout rather than waiting out the library's backoff.
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(RESPONSE_TIMEOUT)
            .set_number_of_retries(0);
        let mut connection = client.get_connection_manager_with_config(config).await?;
        redis::cmd("PING").exec_async(&mut connection).await?;
        let helpers = HELPERS
            .replace("LAST_SEEN_KEEP_MS", &millis(LAST_SEEN_KEEP).to_string())
            .replace("MAX_ENDED", &MAX_ENDED.to_string());
        let script = |body: &str| Script::new(&format!("{helpers}\n{body}"));
        Ok(Self {
            connection,
            prefix: prefix.to_string(),
            clock,
            register: script(REGISTER),
            renew: script(RENEW),
            release: script(RELEASE),
            presence: script(PRESENCE),
            set_status: script(SET_STATUS),
            sweep: script(SWEEP),
            create_call: script(CREATE_CALL),
            act_on_call: script(ACT_ON_CALL),
        })
    }

    fn connection(&self) -> ConnectionManager {
        self.connection.clone()
    }
}

/// Live leases (score past now) and the distinct users among them; members
/// are `<user>\x1f<conn>`.
const COUNTS: &str = r"
local live = redis.call('ZRANGEBYSCORE', KEYS[1], '(' .. ARGV[1], '+inf')
local users, n = {}, 0
for _, member in ipairs(live) do
  local user = string.match(member, '^(.-)\31')
  if user and not users[user] then
    users[user] = true
    n = n + 1
  end
end
return {#live, n}
";

/// Milliseconds of a duration, saturating.
fn millis(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

fn malformed(what: &'static str) -> PresenceError {
    PresenceError::Store(redis::RedisError::from((redis::ErrorKind::TypeError, what)))
}

fn ended(flat: Vec<String>) -> Vec<Ended> {
    flat.chunks_exact(3)
        .map(|lease| Ended {
            conn_id: lease[0].clone(),
            user_id: lease[1].clone(),
            edge_id: lease[2].clone(),
        })
        .collect()
}

#[async_trait]
impl PresenceStore for RedisStore {
    async fn counts(&self) -> Result<Counts, PresenceError> {
        let (leases, online_users): (u64, u64) = Script::new(COUNTS)
            .key(format!("{}leases", self.prefix))
            .arg(self.clock.now_ms())
            .invoke_async(&mut self.connection())
            .await?;
        Ok(Counts {
            leases,
            online_users,
        })
    }

    async fn ping(&self) -> bool {
        redis::cmd("PING")
            .query_async::<String>(&mut self.connection())
            .await
            .is_ok()
    }

    async fn register(
        &self,
        edge_id: &str,
        conn_id: &str,
        user_id: &str,
        ttl: Duration,
    ) -> Result<bool, PresenceError> {
        let now = self.clock.now_ms();
        let came_online: i64 = self
            .register
            .arg(&self.prefix)
            .arg(now)
            .arg(edge_id)
            .arg(conn_id)
            .arg(user_id)
            .arg(now.saturating_add(millis(ttl)))
            .arg(millis(ttl + GARBAGE_GRACE))
            .invoke_async(&mut self.connection())
            .await?;
        Ok(came_online == 1)
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
            .invoke_async(&mut self.connection())
            .await?)
    }

    async fn release(&self, conn_ids: &[String]) -> Result<Vec<Ended>, PresenceError> {
        if conn_ids.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<String> = self
            .release
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(conn_ids)
            .invoke_async(&mut self.connection())
            .await?;
        Ok(ended(flat))
    }

    async fn presence(&self, user_ids: &[String]) -> Result<Vec<Presence>, PresenceError> {
        if user_ids.is_empty() {
            return Ok(Vec::new());
        }
        let flat: Vec<String> = self
            .presence
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(user_ids)
            .invoke_async(&mut self.connection())
            .await?;
        if flat.len() != user_ids.len() * 5 {
            return Err(malformed("presence script returned a malformed reply"));
        }
        Ok(user_ids
            .iter()
            .zip(flat.chunks_exact(5))
            .map(|(user_id, fields)| Presence {
                user_id: user_id.clone(),
                online: fields[0] == "1",
                in_grace: fields[1] == "1",
                last_seen_ms: fields[2].parse().unwrap_or_default(),
                status: fields[3].clone(),
                text: fields[4].clone(),
            })
            .collect())
    }

    async fn forget(&self, user_id: &str) -> Result<(), PresenceError> {
        let prefix = &self.prefix;
        let mut connection = self.connection();
        redis::pipe()
            .del(format!("{prefix}status:{user_id}"))
            .del(format!("{prefix}seen:{user_id}"))
            .zrem(format!("{prefix}pending"), user_id)
            .query_async::<()>(&mut connection)
            .await?;
        Ok(())
    }

    async fn set_status(
        &self,
        user_id: &str,
        status: &str,
        text: &str,
    ) -> Result<(String, String), PresenceError> {
        let previous: (String, String) = self
            .set_status
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(user_id)
            .arg(status)
            .arg(text)
            .arg(millis(GARBAGE_GRACE))
            .invoke_async(&mut self.connection())
            .await?;
        Ok(previous)
    }

    async fn sweep(&self, grace: Duration) -> Result<Sweep, PresenceError> {
        let (ended_flat, offline_flat, missed_flat): (Vec<String>, Vec<String>, Vec<String>) = self
            .sweep
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(millis(grace))
            .arg(SWEEP_LIMIT)
            .invoke_async(&mut self.connection())
            .await?;
        let offline = offline_flat
            .chunks_exact(3)
            .map(|user| WentOffline {
                user_id: user[0].clone(),
                last_seen_ms: user[1].parse().unwrap_or_default(),
                status: user[2].clone(),
            })
            .collect();
        let missed_calls = missed_flat
            .chunks_exact(5)
            .map(|call| Call {
                id: call[0].clone(),
                caller: call[1].clone(),
                caller_name: call[2].clone(),
                callee: call[3].clone(),
                room_id: call[4].clone(),
                answered: false,
            })
            .collect();
        Ok(Sweep {
            ended: ended(ended_flat),
            offline,
            missed_calls,
        })
    }

    async fn create_call(&self, call: &Call, ring: Duration) -> Result<(), PresenceError> {
        let now = self.clock.now_ms();
        let _: i64 = self
            .create_call
            .arg(&self.prefix)
            .arg(now)
            .arg(&call.id)
            .arg(&call.caller)
            .arg(&call.caller_name)
            .arg(&call.callee)
            .arg(&call.room_id)
            .arg(now.saturating_add(millis(ring)))
            .arg(millis(ring + ACTIVE_CALL_KEEP))
            .invoke_async(&mut self.connection())
            .await?;
        Ok(())
    }

    async fn act_on_call(
        &self,
        call_id: &str,
        user_id: &str,
        action: CallAction,
    ) -> Result<Call, PresenceError> {
        let reply: Vec<String> = self
            .act_on_call
            .arg(&self.prefix)
            .arg(self.clock.now_ms())
            .arg(call_id)
            .arg(user_id)
            .arg(action.as_str())
            .arg(millis(ACTIVE_CALL_KEEP))
            .invoke_async(&mut self.connection())
            .await?;
        match reply.first().map(String::as_str) {
            Some("ok") if reply.len() == 6 => Ok(Call {
                id: call_id.to_string(),
                caller: reply[1].clone(),
                caller_name: reply[2].clone(),
                callee: reply[3].clone(),
                room_id: reply[4].clone(),
                answered: reply[5] == "active",
            }),
            Some("not_found") => Err(PresenceError::NotFound("call")),
            Some("forbidden") => Err(PresenceError::Forbidden(format!(
                "only the callee can {} a call",
                action.as_str()
            ))),
            Some("conflict") => Err(PresenceError::Conflict("the call was answered".into())),
            _ => Err(malformed("call script returned a malformed reply")),
        }
    }
}
