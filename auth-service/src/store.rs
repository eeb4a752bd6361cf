//! The auth service's state behind one trait: revocations, refresh-token
//! families and failed-attempt counters. [`MemoryStore`] serves one process;
//! [`RedisStore`] is shared by every replica. Every entry expires by itself
//! once it can no longer matter.

mod memory;
mod redis;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

pub(crate) use self::memory::MemoryStore;
pub(crate) use self::redis::RedisStore;

#[derive(Debug, thiserror::Error)]
#[error("auth store unavailable: {0}")]
pub struct StoreError(pub String);

/// What a revocation covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One token, by `jti`.
    Token(String),
    /// Every token of a session (`sid`), including its refresh family.
    Session(String),
    /// Every token of a user issued at or before the revocation.
    User(String),
}

/// What revocation checks need to know of a token.
#[derive(Debug, Clone, Copy)]
pub(crate) struct TokenRef<'a> {
    pub jti: &'a str,
    pub session: &'a str,
    pub user: &'a str,
    /// `iat` in Unix seconds; a token without one counts as issued at 0.
    pub issued_at_s: i64,
}

/// A refresh-token family: one sign-in's chain of refresh tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Family {
    /// The session id (`sid` of every token of the family).
    pub session: String,
    pub user: String,
    pub name: String,
    pub roles: Vec<String>,
    /// `jti` of the only refresh token that may be presented next.
    pub current: String,
    /// Unix ms after which the family is gone.
    pub expires_at: i64,
}

/// The outcome of presenting a refresh token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rotation {
    /// It was the current one; `next` is current now.
    Rotated(Family),
    /// It was spent already: someone holds a copy. The family must go.
    Reused(Family),
    /// No such family (expired, revoked, or never issued here).
    Unknown,
}

#[async_trait]
pub(crate) trait AuthStore: Send + Sync + 'static {
    /// Records a revocation made at `at_ms`, kept until `keep_until_ms`.
    async fn revoke(
        &self,
        target: &Target,
        at_ms: i64,
        keep_until_ms: i64,
    ) -> Result<(), StoreError>;

    /// Whether any revocation covers the token.
    async fn is_revoked(&self, token: TokenRef<'_>) -> Result<bool, StoreError>;

    /// Stores a new family (its first refresh token is `family.current`).
    async fn create_family(&self, family: &Family) -> Result<(), StoreError>;

    /// Presents refresh token `jti` of `session`: when current, makes
    /// `next` current (atomically: two presentations cannot both win).
    async fn rotate(
        &self,
        session: &str,
        jti: &str,
        next: &str,
        now_ms: i64,
    ) -> Result<Rotation, StoreError>;

    /// Counts a failed attempt from `ip` in a sliding window of `window_ms`;
    /// at `max` failures the IP is blocked for `block_ms`. Returns the end
    /// of the block this failure started, if it started one.
    async fn record_failure(
        &self,
        ip: &str,
        now_ms: i64,
        window_ms: i64,
        max: u32,
        block_ms: i64,
    ) -> Result<Option<i64>, StoreError>;

    /// When the block of `ip` ends, if it is blocked.
    async fn blocked_until(&self, ip: &str, now_ms: i64) -> Result<Option<i64>, StoreError>;

    /// Whether the store answers (the service's health follows it); a store
    /// in this process always does.
    async fn ping(&self) -> bool {
        true
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! The behaviour every store must have; run against each implementation.

    use super::*;

    fn family(session: &str, user: &str, current: &str, now: i64) -> Family {
        Family {
            session: session.into(),
            user: user.into(),
            name: "Ada".into(),
            roles: vec!["member".into()],
            current: current.into(),
            expires_at: now + 60_000,
        }
    }

    fn token<'a>(jti: &'a str, session: &'a str, user: &'a str, iat: i64) -> TokenRef<'a> {
        TokenRef {
            jti,
            session,
            user,
            issued_at_s: iat,
        }
    }

    pub(crate) async fn run(store: &dyn AuthStore) {
        let now = common::ids::now_ms();
        let now_s = now / 1000;
        let id = common::ids::new_id("t");
        let (jti, sid, user) = (format!("j{id}"), format!("s{id}"), format!("u{id}"));

        // Revocations.
        assert!(
            !store
                .is_revoked(token(&jti, &sid, &user, now_s))
                .await
                .expect("check")
        );
        store
            .revoke(&Target::Token(jti.clone()), now, now + 60_000)
            .await
            .expect("revoke");
        assert!(
            store
                .is_revoked(token(&jti, "other", "other", now_s))
                .await
                .expect("check")
        );
        assert!(
            !store
                .is_revoked(token("other", &sid, &user, now_s))
                .await
                .expect("check")
        );
        store
            .revoke(&Target::Session(sid.clone()), now, now + 60_000)
            .await
            .expect("revoke");
        assert!(
            store
                .is_revoked(token("other", &sid, "other", now_s))
                .await
                .expect("check")
        );
        store
            .revoke(&Target::User(user.clone()), now, now + 60_000)
            .await
            .expect("revoke");
        assert!(
            store
                .is_revoked(token("x", "y", &user, now_s - 10))
                .await
                .expect("check"),
            "issued before the user revocation"
        );
        assert!(
            !store
                .is_revoked(token("x", "y", &user, now_s + 2))
                .await
                .expect("check"),
            "issued after the user revocation"
        );
        // A revocation kept until the past is gone.
        let old = format!("old{id}");
        store
            .revoke(&Target::Token(old.clone()), now - 2_000, now - 1_000)
            .await
            .expect("revoke");
        assert!(
            !store
                .is_revoked(token(&old, "", "", now_s))
                .await
                .expect("check")
        );

        // Refresh families.
        let fam = format!("f{id}");
        assert_eq!(
            store.rotate(&fam, "r1", "r2", now).await.expect("rotate"),
            Rotation::Unknown
        );
        store
            .create_family(&family(&fam, &user, "r1", now))
            .await
            .expect("create");
        let rotated = store.rotate(&fam, "r1", "r2", now).await.expect("rotate");
        assert_eq!(rotated, Rotation::Rotated(family(&fam, &user, "r2", now)));
        assert_eq!(
            store.rotate(&fam, "r1", "r3", now).await.expect("rotate"),
            Rotation::Reused(family(&fam, &user, "r2", now)),
            "a spent refresh token is reuse"
        );
        let expired = format!("e{id}");
        store
            .create_family(&Family {
                expires_at: now - 1,
                ..family(&expired, &user, "r1", now)
            })
            .await
            .expect("create");
        assert_eq!(
            store
                .rotate(&expired, "r1", "r2", now)
                .await
                .expect("rotate"),
            Rotation::Unknown
        );

        // Failed attempts: per IP, sliding window, then a block.
        let ip = format!("ip-{id}");
        let other = format!("other-{id}");
        for i in 0..2 {
            assert_eq!(
                store
                    .record_failure(&ip, now + i, 10_000, 3, 60_000)
                    .await
                    .expect("failure"),
                None
            );
        }
        assert_eq!(
            store
                .record_failure(&other, now, 10_000, 3, 60_000)
                .await
                .expect("failure"),
            None
        );
        assert_eq!(store.blocked_until(&ip, now).await.expect("blocked"), None);
        assert_eq!(
            store
                .record_failure(&ip, now + 5, 10_000, 3, 60_000)
                .await
                .expect("failure"),
            Some(now + 5 + 60_000),
            "the third failure in the window blocks"
        );
        assert_eq!(
            store.blocked_until(&ip, now + 10).await.expect("blocked"),
            Some(now + 5 + 60_000)
        );
        assert_eq!(
            store
                .blocked_until(&other, now + 10)
                .await
                .expect("blocked"),
            None
        );
        assert_eq!(
            store
                .blocked_until(&ip, now + 5 + 60_000)
                .await
                .expect("blocked"),
            None,
            "the block ends"
        );
        // Failures older than the window do not count.
        let slow = format!("slow-{id}");
        for i in 0..5 {
            assert_eq!(
                store
                    .record_failure(&slow, now + i * 6_000, 10_000, 3, 60_000)
                    .await
                    .expect("failure"),
                None,
                "failure {i} is alone in its window"
            );
        }
    }
}
