//! The Redis store, shared by every ai-service replica. Keys live under a
//! prefix and carry TTLs: quota windows expire with the window, reply slots
//! and streams with their lease unless the replica running them renews it.
//! Read-modify-write steps are Lua scripts, so replicas never race.
//!
//! Keys: `qm:<user>` (questions of the window, a sorted set scored by when
//! they were asked), `qc:<user>` (reply slots, scored by the end of their
//! lease), `s:<stream>` (a hash: room, asker, text, next, cancel) and
//! `r:<room>` (the set of the room's stream ids).

use async_trait::async_trait;
use proto::ai::v1::StreamState;
use redis::aio::ConnectionManager;
use redis::{AsyncCommands, Script};

use super::{AiStore, LEASE, SlotRef, StoreError, StreamInfo, Take, WINDOW, millis};
use crate::quota::Limit;

/// Drops questions older than the window (`ARGV[2]`) and expired slots, then
/// counts question `ARGV[5]` at `ARGV[1]` and holds its slot for `ARGV[6]`
/// ms: `{0}` granted, `{1}` busy, `{2, retry_after_ms}` too many.
const TAKE: &str = r"
local now = tonumber(ARGV[1])
local window = tonumber(ARGV[2])
local lease = tonumber(ARGV[6])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', now)
if redis.call('ZCARD', KEYS[2]) >= tonumber(ARGV[4]) then
  return {1, 0}
end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {2, tonumber(oldest[2]) + window - now}
end
redis.call('ZADD', KEYS[1], now, ARGV[5])
redis.call('PEXPIRE', KEYS[1], window)
redis.call('ZADD', KEYS[2], now + lease, ARGV[5])
redis.call('PEXPIRE', KEYS[2], lease)
return {0, 0}
";

/// Lists stream `ARGV[1]` of room `ARGV[2]` unless it is listed: 1, else 0.
const OPEN: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'room', ARGV[2], 'asker', ARGV[3], 'text', '', 'next', 0)
redis.call('PEXPIRE', KEYS[1], ARGV[4])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[4])
return 1
";

/// Appends `ARGV[2]` when the stream's next delta is `ARGV[1]`: 1, else 0.
const RECORD: &str = r"
local next = redis.call('HGET', KEYS[1], 'next')
if not next or tonumber(next) ~= tonumber(ARGV[1]) then
  return 0
end
local text = redis.call('HGET', KEYS[1], 'text') or ''
redis.call('HSET', KEYS[1], 'text', text .. ARGV[2], 'next', tonumber(ARGV[1]) + 1)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
";

/// Sets the whole state of stream `ARGV[1]`, listing it again if it was lost.
const SYNC: &str = r"
redis.call('HSET', KEYS[1], 'room', ARGV[2], 'asker', ARGV[3], 'text', ARGV[4], 'next', ARGV[5])
redis.call('PEXPIRE', KEYS[1], ARGV[6])
redis.call('SADD', KEYS[2], ARGV[1])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
return 1
";

/// Flags a listed stream for cancelling: 1, or 0 when it is not listed.
const FLAG_CANCEL: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HSET', KEYS[1], 'cancel', 1)
return 1
";

pub(crate) struct RedisStore {
    connection: ConnectionManager,
    prefix: String,
    take: Script,
    open: Script,
    record: Script,
    sync: Script,
    flag_cancel: Script,
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
    /// Connects to `url` (checked with `PING`); keys go under `prefix`.
    pub(crate) async fn connect(
        url: &str,
        ca_file: Option<&std::path::Path>,
        prefix: &str,
    ) -> Result<Self, StoreError> {
        Ok(Self {
            connection: common::redis_client::connect(url, ca_file).await?,
            prefix: prefix.to_string(),
            take: Script::new(TAKE),
            open: Script::new(OPEN),
            record: Script::new(RECORD),
            sync: Script::new(SYNC),
            flag_cancel: Script::new(FLAG_CANCEL),
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
impl AiStore for RedisStore {
    async fn take(&self, slot: &SlotRef, limit: Limit, now_ms: i64) -> Result<Take, StoreError> {
        let (outcome, retry_after_ms): (i64, i64) = self
            .take
            .key(self.key("qm", &slot.user))
            .key(self.key("qc", &slot.user))
            .arg(now_ms)
            .arg(millis(WINDOW))
            .arg(limit.per_minute)
            .arg(limit.concurrent)
            .arg(&slot.ticket)
            .arg(millis(LEASE))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(match outcome {
            0 => Take::Granted,
            1 => Take::Busy,
            _ => Take::TooMany { retry_after_ms },
        })
    }

    async fn release(&self, slot: &SlotRef) -> Result<(), StoreError> {
        let _: () = self
            .conn()
            .zrem(self.key("qc", &slot.user), &slot.ticket)
            .await?;
        Ok(())
    }

    async fn refund(&self, slot: &SlotRef) -> Result<(), StoreError> {
        redis::pipe()
            .zrem(self.key("qc", &slot.user), &slot.ticket)
            .ignore()
            .zrem(self.key("qm", &slot.user), &slot.ticket)
            .ignore()
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn open(&self, stream: &StreamInfo) -> Result<bool, StoreError> {
        let opened: i64 = self
            .open
            .key(self.key("s", &stream.id))
            .key(self.key("r", &stream.room_id))
            .arg(&stream.id)
            .arg(&stream.room_id)
            .arg(stream.asker.as_deref().unwrap_or_default())
            .arg(millis(LEASE))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(opened == 1)
    }

    async fn record(&self, id: &str, index: u64, chunk: &str) -> Result<bool, StoreError> {
        let recorded: i64 = self
            .record
            .key(self.key("s", id))
            .arg(index)
            .arg(chunk)
            .arg(millis(LEASE))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(recorded == 1)
    }

    async fn sync(&self, stream: &StreamInfo, text: &str, next: u64) -> Result<(), StoreError> {
        let _: i64 = self
            .sync
            .key(self.key("s", &stream.id))
            .key(self.key("r", &stream.room_id))
            .arg(&stream.id)
            .arg(&stream.room_id)
            .arg(stream.asker.as_deref().unwrap_or_default())
            .arg(text)
            .arg(next)
            .arg(millis(LEASE))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn close(&self, stream: &StreamInfo) -> Result<(), StoreError> {
        redis::pipe()
            .del(self.key("s", &stream.id))
            .ignore()
            .srem(self.key("r", &stream.room_id), &stream.id)
            .ignore()
            .exec_async(&mut self.conn())
            .await?;
        Ok(())
    }

    async fn in_room(&self, room_id: &str) -> Result<Vec<StreamState>, StoreError> {
        let room_key = self.key("r", room_id);
        let mut conn = self.conn();
        let mut ids: Vec<String> = conn.smembers(&room_key).await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        ids.sort();
        let mut pipe = redis::pipe();
        for id in &ids {
            // Text and next index come from one hash, written together.
            pipe.hget(self.key("s", id), &["text", "next"]);
        }
        let states: Vec<(Option<String>, Option<u64>)> = pipe.query_async(&mut conn).await?;
        let mut listed = Vec::with_capacity(ids.len());
        let mut gone = Vec::new();
        for (id, state) in ids.into_iter().zip(states) {
            match state {
                (Some(text), Some(next)) => listed.push(StreamState {
                    stream_id: id,
                    room_id: room_id.to_string(),
                    text_so_far: text,
                    index: next,
                }),
                // Its replica stopped renewing it (or it ended meanwhile).
                _ => gone.push(id),
            }
        }
        if !gone.is_empty() {
            let _: () = conn.srem(&room_key, &gone).await?;
        }
        Ok(listed)
    }

    async fn find(&self, id: &str) -> Result<Option<StreamInfo>, StoreError> {
        let (room, asker): (Option<String>, Option<String>) = self
            .conn()
            .hget(self.key("s", id), &["room", "asker"])
            .await?;
        Ok(room.map(|room_id| StreamInfo {
            id: id.to_string(),
            room_id,
            asker: asker.filter(|a| !a.is_empty()),
        }))
    }

    async fn flag_cancel(&self, id: &str) -> Result<bool, StoreError> {
        let flagged: i64 = self
            .flag_cancel
            .key(self.key("s", id))
            .invoke_async(&mut self.conn())
            .await?;
        Ok(flagged == 1)
    }

    async fn renew(
        &self,
        streams: &[StreamInfo],
        slots: &[SlotRef],
        now_ms: i64,
    ) -> Result<Vec<String>, StoreError> {
        if streams.is_empty() && slots.is_empty() {
            return Ok(Vec::new());
        }
        let lease = millis(LEASE);
        let mut pipe = redis::pipe();
        for slot in slots {
            let key = self.key("qc", &slot.user);
            pipe.cmd("ZADD")
                .arg(&key)
                .arg("XX")
                .arg(now_ms + lease)
                .arg(&slot.ticket)
                .ignore()
                .pexpire(&key, lease)
                .ignore();
        }
        for stream in streams {
            let key = self.key("s", &stream.id);
            pipe.pexpire(&key, lease)
                .ignore()
                .pexpire(self.key("r", &stream.room_id), lease)
                .ignore()
                .hget(&key, "cancel");
        }
        let flags: Vec<Option<String>> = pipe.query_async(&mut self.conn()).await?;
        Ok(streams
            .iter()
            .zip(flags)
            .filter(|(_, flag)| flag.is_some())
            .map(|(stream, _)| stream.id.clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The store on `PARLEY_TEST_REDIS_URL` under a prefix of the test's own.
    async fn store() -> Option<RedisStore> {
        let url = common::testing::test_redis_url()?;
        let prefix = format!("{}:", common::ids::new_id("ai-test"));
        Some(
            RedisStore::connect(&url, None, &prefix)
                .await
                .unwrap_or_else(|e| {
                    panic!("PARLEY_TEST_REDIS_URL is set but Redis is unusable: {e}")
                }),
        )
    }

    #[tokio::test]
    async fn the_redis_store_keeps_the_contract() {
        let Some(store) = store().await else {
            eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping");
            return;
        };
        super::super::contract::run(&store).await;
    }

    #[tokio::test]
    async fn everything_a_replica_holds_expires_with_its_lease() {
        let Some(store) = store().await else {
            eprintln!("note: PARLEY_TEST_REDIS_URL is not set; skipping");
            return;
        };
        let stream = StreamInfo {
            id: common::ids::new_id("s"),
            room_id: common::ids::new_id("r"),
            asker: None,
        };
        store.open(&stream).await.expect("open");
        store.record(&stream.id, 0, "x").await.expect("record");
        let slot = SlotRef {
            user: "u".into(),
            ticket: "t".into(),
        };
        let limit = Limit {
            per_minute: 1,
            concurrent: 1,
        };
        store
            .take(&slot, limit, common::ids::now_ms())
            .await
            .expect("take");
        let mut conn = store.conn();
        for (kind, id, most) in [
            ("s", stream.id.as_str(), LEASE),
            ("r", stream.room_id.as_str(), LEASE),
            ("qc", "u", LEASE),
            ("qm", "u", WINDOW),
        ] {
            let ttl: i64 = conn.pttl(store.key(kind, id)).await.expect("pttl");
            assert!(
                ttl > 0 && ttl <= millis(most),
                "{kind}:{id} expires within its lease, has {ttl} ms"
            );
        }
    }
}
