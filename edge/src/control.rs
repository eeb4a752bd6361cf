//! What auth-service tells every edge on the bus's control channel:
//! revocations (live connections using a revoked token, session or user
//! close with 4003 at once) and blocked addresses (their upgrades get 429
//! before any WebSocket work).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use common::bus::{Bus, BusError, BusEvent, EDGE_CONTROL_CHANNEL, Subscriber};
use common::grpc::ServiceChannel;
use proto::auth::v1::auth_service_client::AuthServiceClient;
use proto::auth::v1::{CheckRevokedRequest, Identity, TokenRef};
use protocol::CloseCode;
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::outbox::Outbox;

/// Bus kinds auth-service publishes (see auth-service's `REVOKED_KIND`).
const REVOKED_KIND: &str = "auth.revoked";
const BLOCKED_KIND: &str = "auth.blocked";
/// Blocked addresses past this many trigger a sweep of the expired ones.
const SWEEP_AT: usize = 10_000;
/// Tokens asked about per `CheckRevoked` call after a bus reconnect.
const RECHECK_BATCH: usize = 1_000;

type AuthClient = AuthServiceClient<ServiceChannel>;

/// One authenticated connection, as revocations see it.
struct Live {
    user: String,
    session: String,
    token: String,
    /// The token's `iat` (Unix seconds): a user's revocation covers tokens
    /// issued up to its second.
    issued_at: i64,
    outbox: Outbox,
}

/// The authenticated connections of this edge, by connection key.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<u64, Live>>,
}

/// Addresses auth-service blocked, with the end of each block (Unix ms).
#[derive(Default)]
pub(crate) struct Blocks {
    until: Mutex<HashMap<IpAddr, i64>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Sessions {
    /// Records (or updates, after a `refresh`) the token a connection uses.
    pub(crate) fn set(&self, key: u64, identity: &Identity, outbox: &Outbox) {
        lock(&self.live).insert(
            key,
            Live {
                user: identity.user_id.clone(),
                session: identity.session_id.clone(),
                token: identity.token_id.clone(),
                issued_at: identity.issued_at,
                outbox: outbox.clone(),
            },
        );
    }

    pub(crate) fn remove(&self, key: u64) {
        lock(&self.live).remove(&key);
    }

    /// Closes every connection the revocation covers with 4003; returns how many.
    fn revoke(&self, revoked: &Revoked) -> usize {
        let matches = |live: &Live| {
            (!revoked.token_id.is_empty() && live.token == revoked.token_id)
                || (!revoked.session_id.is_empty() && live.session == revoked.session_id)
                || (!revoked.user_id.is_empty() && live.user == revoked.user_id)
        };
        let mut live = lock(&self.live);
        let keys: Vec<u64> = live
            .iter()
            .filter(|(_, l)| matches(l))
            .map(|(k, _)| *k)
            .collect();
        for key in &keys {
            if let Some(conn) = live.remove(key) {
                conn.outbox.close(CloseCode::TokenRevoked);
            }
        }
        keys.len()
    }

    /// Asks auth-service which live connections' tokens are revoked and
    /// closes those with 4003: after the bus was lost, announcements made
    /// meanwhile may never have arrived. Returns how many it closed.
    async fn recheck(&self, mut auth: AuthClient) -> Result<usize, tonic::Status> {
        let snapshot: Vec<(u64, TokenRef)> = lock(&self.live)
            .iter()
            .map(|(key, live)| {
                let token = TokenRef {
                    token_id: live.token.clone(),
                    session_id: live.session.clone(),
                    user_id: live.user.clone(),
                    issued_at: live.issued_at,
                };
                (*key, token)
            })
            .collect();
        let mut closed = 0;
        for chunk in snapshot.chunks(RECHECK_BATCH) {
            let request = CheckRevokedRequest {
                tokens: chunk.iter().map(|(_, token)| token.clone()).collect(),
            };
            let revoked = auth.check_revoked(request).await?.into_inner().revoked;
            let mut live = lock(&self.live);
            for index in revoked {
                let Some((key, token)) = usize::try_from(index).ok().and_then(|i| chunk.get(i))
                else {
                    continue;
                };
                // Unless it refreshed to another token meanwhile.
                if live.get(key).is_some_and(|l| l.token == token.token_id)
                    && let Some(conn) = live.remove(key)
                {
                    conn.outbox.close(CloseCode::TokenRevoked);
                    closed += 1;
                }
            }
        }
        Ok(closed)
    }
}

impl Blocks {
    pub(crate) fn block(&self, ip: IpAddr, until_ms: i64) {
        let now = common::ids::now_ms();
        let mut blocks = lock(&self.until);
        if blocks.len() >= SWEEP_AT {
            blocks.retain(|_, until| *until > now);
        }
        let entry = blocks.entry(ip).or_default();
        *entry = (*entry).max(until_ms);
    }

    pub(crate) fn is_blocked(&self, ip: IpAddr) -> bool {
        let now = common::ids::now_ms();
        lock(&self.until).get(&ip).is_some_and(|until| *until > now)
    }
}

/// A revocation announcement: one of the three ids is set.
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
struct Revoked {
    token_id: String,
    session_id: String,
    user_id: String,
}

#[derive(Debug, Deserialize)]
struct Blocked {
    ip: IpAddr,
    until: i64,
}

/// Subscribes the control channel and applies what arrives until the bus
/// closes. Revocations announced while the bus was away are caught up by
/// asking `auth` about every live connection when the bus is back; missed
/// address blocks are not (auth-service refuses those addresses anyway,
/// and the edge learns the block from the next refusal).
pub(crate) async fn start(
    bus: &dyn Bus,
    sessions: Arc<Sessions>,
    blocks: Arc<Blocks>,
    auth: AuthClient,
) -> Result<(), BusError> {
    let (subscriber, events) = bus.subscriber().await?;
    subscriber.subscribe(EDGE_CONTROL_CHANNEL).await?;
    tokio::spawn(listen(subscriber, events, sessions, blocks, auth));
    Ok(())
}

async fn listen(
    // Held so the subscription lives as long as this task.
    _subscriber: Box<dyn Subscriber>,
    mut events: mpsc::UnboundedReceiver<BusEvent>,
    sessions: Arc<Sessions>,
    blocks: Arc<Blocks>,
    auth: AuthClient,
) {
    while let Some(event) = events.recv().await {
        let envelope = match event {
            BusEvent::Message { envelope, .. } => envelope,
            BusEvent::Resubscribed => {
                // Revocations announced while the bus was away are lost:
                // ask auth-service about every live connection instead.
                let (sessions, auth) = (sessions.clone(), auth.clone());
                tokio::spawn(async move {
                    match sessions.recheck(auth).await {
                        Ok(closed) => tracing::info!(
                            closed,
                            "live connections rechecked for revocations after a bus reconnect"
                        ),
                        Err(status) => {
                            tracing::warn!(code = ?status.code(), message = status.message(), "revocation recheck after a bus reconnect failed")
                        }
                    }
                });
                continue;
            }
        };
        match envelope.kind.as_str() {
            REVOKED_KIND => match serde_json::from_str::<Revoked>(&envelope.json) {
                Ok(revoked) => {
                    let closed = sessions.revoke(&revoked);
                    tracing::info!(closed, "revocation applied to live connections");
                }
                Err(error) => tracing::warn!(%error, "undecodable revocation"),
            },
            BLOCKED_KIND => match serde_json::from_str::<Blocked>(&envelope.json) {
                Ok(blocked) => blocks.block(blocked.ip, blocked.until),
                Err(error) => tracing::warn!(%error, "undecodable address block"),
            },
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use common::bus::MemoryBus;

    use super::*;
    use crate::outbox::{Outbound, outbox};

    fn identity(user: &str, session: &str, token: &str) -> Identity {
        Identity {
            user_id: user.into(),
            session_id: session.into(),
            token_id: token.into(),
            ..Identity::default()
        }
    }

    fn settings(credential: &common::Secret) -> common::grpc::ClientSettings {
        common::grpc::ClientSettings {
            credential: credential.clone(),
            connect_timeout: std::time::Duration::from_secs(2),
            timeout: std::time::Duration::from_secs(5),
        }
    }

    /// A client of an auth-service the test never asks.
    fn unused_auth() -> AuthClient {
        let credential = common::Secret::new(common::ids::random_secret(32));
        AuthServiceClient::new(
            common::grpc::channel("http://127.0.0.1:9", &settings(&credential)).expect("channel"),
        )
    }

    /// A real auth-service (memory store, its own bus) and a client of it.
    async fn auth() -> (AuthClient, common::shutdown::Shutdown) {
        let credential = common::Secret::new(common::ids::random_secret(32));
        let config = common::config::AuthConfig {
            hs256_secret: common::Secret::new(common::ids::random_secret(32)),
            ..Default::default()
        };
        let app = auth_service::AuthApp::connect(
            &config,
            &credential,
            Arc::new(MemoryBus::new()),
            &common::metrics::Metrics::new(&["auth"]),
        )
        .await
        .expect("auth app");
        let server =
            common::testing::serve_grpc(|listener, signal| app.run_until_stopped(listener, signal))
                .await;
        let (url, shutdown) = (server.url, server.shutdown);
        let client = AuthServiceClient::new(
            common::grpc::channel(&url, &settings(&credential)).expect("channel"),
        );
        (client, shutdown)
    }

    #[tokio::test]
    async fn after_a_bus_reconnect_revocations_it_missed_still_close_connections() {
        let (mut auth_client, _auth) = auth().await;
        let bus = MemoryBus::new();
        let (subscriber, _unused) = bus.subscriber().await.expect("subscriber");
        let (events_tx, events) = mpsc::unbounded_channel();
        let sessions = Arc::new(Sessions::default());
        tokio::spawn(listen(
            subscriber,
            events,
            sessions.clone(),
            Arc::new(Blocks::default()),
            auth_client.clone(),
        ));
        let now_s = common::ids::now_ms() / 1000;
        let issued = |user: &str, session: &str, token: &str, iat: i64| Identity {
            issued_at: iat,
            ..identity(user, session, token)
        };
        let (a, a_rx) = outbox(1 << 16);
        let (b, _b_rx) = outbox(1 << 16);
        let (c, c_rx) = outbox(1 << 16);
        sessions.set(1, &issued("u1", "s1", "t1", now_s), &a);
        sessions.set(2, &issued("u2", "s2", "t2", now_s), &b);
        sessions.set(3, &issued("u3", "s3", "t3", now_s - 100), &c);

        // Revoked while this edge was not listening: nothing reached it.
        for request in [
            proto::auth::v1::RevokeRequest {
                session_id: "s1".into(),
                ..Default::default()
            },
            proto::auth::v1::RevokeRequest {
                user_id: "u3".into(),
                ..Default::default()
            },
        ] {
            auth_client.revoke(request).await.expect("revoke");
        }
        assert_eq!(lock(&sessions.live).len(), 3);

        events_tx.send(BusEvent::Resubscribed).expect("listening");
        assert_eq!(closed_with(&a_rx).await, Some(4003), "revoked session");
        assert_eq!(closed_with(&c_rx).await, Some(4003), "revoked user");
        let live: Vec<u64> = lock(&sessions.live).keys().copied().collect();
        assert_eq!(live, [2], "the connection nobody revoked stays");
    }

    async fn closed_with(rx: &crate::outbox::OutboxReceiver) -> Option<u16> {
        let batch = tokio::time::timeout(std::time::Duration::from_secs(5), rx.next_batch())
            .await
            .ok()??;
        batch.into_iter().find_map(|item| match item {
            Outbound::Close(close) => Some(close.code()),
            _ => None,
        })
    }

    #[tokio::test]
    async fn revocations_close_exactly_the_connections_they_cover() {
        let bus = MemoryBus::new();
        let sessions = Arc::new(Sessions::default());
        let blocks = Arc::new(Blocks::default());
        start(&bus, sessions.clone(), blocks.clone(), unused_auth())
            .await
            .expect("start");
        let (a, a_rx) = outbox(1 << 16);
        let (b, b_rx) = outbox(1 << 16);
        let (c, c_rx) = outbox(1 << 16);
        sessions.set(1, &identity("u1", "s1", "t1"), &a);
        sessions.set(2, &identity("u1", "s2", "t2"), &b);
        sessions.set(3, &identity("u2", "s3", "t3"), &c);

        let announce = |json: &str| common::bus::envelope("", 0, REVOKED_KIND, json.to_string());
        bus.publish(
            EDGE_CONTROL_CHANNEL,
            &announce(r#"{"token_id":"t1","at":1}"#),
        )
        .await
        .expect("publish");
        assert_eq!(closed_with(&a_rx).await, Some(4003));
        bus.publish(
            EDGE_CONTROL_CHANNEL,
            &announce(r#"{"session_id":"s2","at":1}"#),
        )
        .await
        .expect("publish");
        assert_eq!(closed_with(&b_rx).await, Some(4003));
        bus.publish(
            EDGE_CONTROL_CHANNEL,
            &announce(r#"{"user_id":"u2","at":1}"#),
        )
        .await
        .expect("publish");
        assert_eq!(closed_with(&c_rx).await, Some(4003));
        assert!(lock(&sessions.live).is_empty());
    }

    #[tokio::test]
    async fn a_revocation_leaves_other_connections_alone() {
        let sessions = Sessions::default();
        let (a, _a_rx) = outbox(1 << 16);
        sessions.set(1, &identity("u1", "s1", "t1"), &a);
        let revoked = Revoked {
            token_id: "t9".into(),
            session_id: "s9".into(),
            user_id: "u9".into(),
        };
        assert_eq!(sessions.revoke(&revoked), 0);
        // Empty ids match nothing, not every connection without a session.
        sessions.set(2, &identity("u2", "", ""), &a);
        assert_eq!(sessions.revoke(&Revoked::default()), 0);
        assert_eq!(lock(&sessions.live).len(), 2);
    }

    #[tokio::test]
    async fn announced_blocks_hold_until_they_end() {
        let bus = MemoryBus::new();
        let sessions = Arc::new(Sessions::default());
        let blocks = Arc::new(Blocks::default());
        start(&bus, sessions, blocks.clone(), unused_auth())
            .await
            .expect("start");
        let ip: IpAddr = "192.0.2.7".parse().expect("ip");
        let until = common::ids::now_ms() + 60_000;
        let json = format!(r#"{{"ip":"192.0.2.7","until":{until}}}"#);
        bus.publish(
            EDGE_CONTROL_CHANNEL,
            &common::bus::envelope("", 0, BLOCKED_KIND, json),
        )
        .await
        .expect("publish");
        while !blocks.is_blocked(ip) {
            tokio::task::yield_now().await;
        }
        assert!(!blocks.is_blocked("192.0.2.8".parse().expect("ip")));
        let past: IpAddr = "192.0.2.9".parse().expect("ip");
        blocks.block(past, common::ids::now_ms() - 1);
        assert!(!blocks.is_blocked(past), "an ended block");
    }
}
