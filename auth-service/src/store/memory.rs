//! The in-process store (one-process deployments and tests).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;

use async_trait::async_trait;

use super::{AuthStore, Family, Rotation, StoreError, Target, TokenRef};

/// Entries past this many in one map trigger a sweep of the expired ones.
const SWEEP_AT: usize = 10_000;

#[derive(Debug, Default)]
pub(crate) struct MemoryStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// `jti` → kept until (Unix ms).
    tokens: HashMap<String, i64>,
    sessions: HashMap<String, i64>,
    /// user → (revoked at ms, kept until ms).
    users: HashMap<String, (i64, i64)>,
    families: HashMap<String, Family>,
    /// IP → times of failures within the window.
    failures: HashMap<String, VecDeque<i64>>,
    /// IP → block end.
    blocks: HashMap<String, i64>,
}

impl MemoryStore {
    pub(crate) fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn sweep<V>(map: &mut HashMap<String, V>, alive: impl Fn(&V) -> bool) {
    if map.len() >= SWEEP_AT {
        map.retain(|_, v| alive(v));
    }
}

#[async_trait]
impl AuthStore for MemoryStore {
    async fn revoke(
        &self,
        target: &Target,
        at_ms: i64,
        keep_until_ms: i64,
    ) -> Result<(), StoreError> {
        let now = common::ids::now_ms();
        let mut inner = self.lock();
        match target {
            Target::Token(jti) => {
                sweep(&mut inner.tokens, |until| *until > now);
                inner.tokens.insert(jti.clone(), keep_until_ms);
            }
            Target::Session(sid) => {
                sweep(&mut inner.sessions, |until| *until > now);
                inner.sessions.insert(sid.clone(), keep_until_ms);
                inner.families.remove(sid);
            }
            Target::User(user) => {
                sweep(&mut inner.users, |(_, until)| *until > now);
                inner.users.insert(user.clone(), (at_ms, keep_until_ms));
                inner.families.retain(|_, f| &f.user != user);
            }
        }
        Ok(())
    }

    async fn is_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError> {
        let now = common::ids::now_ms();
        let inner = self.lock();
        let live = |until: Option<&i64>| until.is_some_and(|u| *u > now);
        if !token.jti.is_empty() && live(inner.tokens.get(token.jti)) {
            return Ok(true);
        }
        if !token.session.is_empty() && live(inner.sessions.get(token.session)) {
            return Ok(true);
        }
        Ok(inner
            .users
            .get(token.user)
            .is_some_and(|(at, until)| *until > now && token.issued_at_s <= at / 1000))
    }

    async fn create_family(&self, family: &Family) -> Result<(), StoreError> {
        let now = common::ids::now_ms();
        let mut inner = self.lock();
        sweep(&mut inner.families, |f| f.expires_at > now);
        inner
            .families
            .insert(family.session.clone(), family.clone());
        Ok(())
    }

    async fn rotate(
        &self,
        session: &str,
        jti: &str,
        next: &str,
        now_ms: i64,
    ) -> Result<Rotation, StoreError> {
        let mut inner = self.lock();
        let Some(family) = inner.families.get_mut(session) else {
            return Ok(Rotation::Unknown);
        };
        if family.expires_at <= now_ms {
            inner.families.remove(session);
            return Ok(Rotation::Unknown);
        }
        if family.current != jti {
            return Ok(Rotation::Reused(family.clone()));
        }
        family.current = next.to_string();
        Ok(Rotation::Rotated(family.clone()))
    }

    async fn record_failure(
        &self,
        ip: &str,
        now_ms: i64,
        window_ms: i64,
        max: u32,
        block_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let mut inner = self.lock();
        sweep(&mut inner.failures, |times| {
            times.back().is_some_and(|t| *t > now_ms - window_ms)
        });
        let times = inner.failures.entry(ip.to_string()).or_default();
        while times.front().is_some_and(|t| *t <= now_ms - window_ms) {
            times.pop_front();
        }
        times.push_back(now_ms);
        if times.len() < max as usize {
            return Ok(None);
        }
        inner.failures.remove(ip);
        sweep(&mut inner.blocks, |until| *until > now_ms);
        let until = now_ms + block_ms;
        inner.blocks.insert(ip.to_string(), until);
        Ok(Some(until))
    }

    async fn blocked_until(&self, ip: &str, now_ms: i64) -> Result<Option<i64>, StoreError> {
        Ok(self
            .lock()
            .blocks
            .get(ip)
            .copied()
            .filter(|until| *until > now_ms))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_memory_store_keeps_the_contract() {
        super::super::contract::run(&MemoryStore::new()).await;
    }
}
