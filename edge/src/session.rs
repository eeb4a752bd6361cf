//! A connection's session: who it is signed in as, the rooms it joined,
//! whose presence it follows, its typing task, its rate windows, its token's
//! schedule and its signed-frame state. Commands receive the session; the
//! socket loop in `conn` owns it.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use common::ErrorCode;
use common::auth_reason::AuthReason;
use common::grpc::{Actor, ServiceChannel};
use proto::ai::v1::ai_service_client::AiServiceClient;
use proto::auth::v1::{Identity, VerifyTokenRequest};
use proto::chat::v1::chat_service_client::ChatServiceClient;
use proto::presence::v1::presence_service_client::PresenceServiceClient;
use protocol::CloseCode;
use tokio::sync::mpsc;

use crate::Shared;
use crate::admission::UserSlot;
use crate::follows::Follows;
use crate::frames::{CommandError, Reason};
use crate::limits::ConnLimits;
use crate::link::Link;
use crate::outbox::Outbox;
use crate::signed::Signed;
use crate::token_life::Life;
use crate::typing::{Typing, start_typing};

pub(crate) struct Session {
    /// The connection this session lives on.
    pub link: Link,
    /// Set by `auth` (or an upgrade-time token); `None` before.
    pub identity: Option<Identity>,
    /// Rooms joined on this connection (left again on close).
    pub rooms: HashSet<String>,
    /// Trace context from the upgrade request's `traceparent`, if any.
    pub parent: opentelemetry::Context,
    /// Whose presence this connection follows.
    pub follows: Follows,
    /// The typing task, started by the first `typing.start`.
    typing: Option<mpsc::UnboundedSender<Typing>>,
    /// This connection's command window and rate-limit violations.
    pub limits: ConnLimits,
    /// The signed-in user's connection slot (given back on close).
    user_slot: Option<UserSlot>,
    /// The session's frame secret and seen nonces (`edge.signed_frames`).
    pub signed: Option<Box<Signed>>,
    /// When the token warns and expires.
    pub life: Life,
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        key: u64,
        peer: SocketAddr,
        outbox: Outbox,
        parent: opentelemetry::Context,
    ) -> Self {
        Self {
            link: Link {
                shared,
                key,
                id: common::ids::new_id("c"),
                peer,
                outbox,
            },
            identity: None,
            rooms: HashSet::new(),
            parent,
            follows: Follows::default(),
            typing: None,
            limits: ConnLimits::new(),
            user_slot: None,
            signed: None,
            life: Life::default(),
        }
    }

    pub(crate) fn shared(&self) -> &Shared {
        &self.link.shared
    }

    pub(crate) fn outbox(&self) -> &Outbox {
        &self.link.outbox
    }

    /// The signed-in user's id and whether they are anonymous.
    pub(crate) fn user(&self) -> Option<(&str, bool)> {
        self.identity
            .as_ref()
            .map(|i| (i.user_id.as_str(), i.anonymous))
    }

    /// The signed-in user, as gRPC calls name their caller.
    pub(crate) fn actor(&self) -> Result<Actor, CommandError> {
        let identity = self.identity.as_ref().ok_or_else(|| {
            CommandError::new(ErrorCode::Unauthorized, "authenticate first (send `auth`)")
        })?;
        Ok(Actor {
            user_id: identity.user_id.clone(),
            name: identity.name.clone(),
            anonymous: identity.anonymous,
        })
    }

    /// Starts signed frames for this session when the edge asks for them.
    pub(crate) fn start_signed_frames(&mut self) {
        if self.shared().config.signed_frames && self.signed.is_none() {
            self.signed = Some(Box::new(Signed::new()));
        }
    }

    /// Keeps the verified identity (refused past the per-user connection
    /// limit), registers the presence lease, subscribes the user's own
    /// channel, and follows the token's expiry and revocations.
    pub(crate) async fn authenticated(&mut self, identity: Identity) -> Result<(), CommandError> {
        let shared = self.link.shared.clone();
        let slot = shared
            .admission
            .sign_in(&identity.user_id, identity.anonymous)
            .map_err(|refused| {
                common::security::log(
                    common::security::SecurityEvent::ConnLimited,
                    Some(self.link.peer.ip()),
                    Some(&identity.user_id),
                    refused.as_str(),
                );
                let mut error =
                    CommandError::new(ErrorCode::Forbidden, "too many connections for this user");
                error.reason = Some(Reason::TooManyConnections);
                error.close = Some(CloseCode::TooManyConnections);
                error
            })?;
        self.user_slot = Some(slot);
        self.start_signed_frames();
        shared
            .sessions
            .set(self.link.key, &identity, &self.link.outbox);
        self.life.set(
            identity.expires_at,
            Duration::from_millis(shared.config.token_expiring_lead_ms),
        );
        shared
            .leases
            .register(&self.link.id, &identity.user_id)
            .await;
        let channel = common::bus::user_channel(&identity.user_id);
        if let Err(e) = shared
            .hub
            .join(
                &channel,
                self.link.key,
                &identity.user_id,
                self.link.outbox.clone(),
                false,
            )
            .await
        {
            tracing::warn!(conn_id = %self.link.id, error = %e, "user channel subscribe failed");
        }
        self.identity = Some(identity);
        Ok(())
    }

    /// `refresh`: swaps in a newer token's identity.
    pub(crate) fn refreshed(&mut self, identity: Identity) {
        self.follow_token(&identity);
        self.identity = Some(identity);
    }

    /// Watches the token: revocations close the connection, and its expiry
    /// is scheduled (`token.expiring`, then 4003).
    fn follow_token(&mut self, identity: &Identity) {
        let shared = &self.link.shared;
        shared
            .sessions
            .set(self.link.key, identity, &self.link.outbox);
        self.life.set(
            identity.expires_at,
            Duration::from_millis(shared.config.token_expiring_lead_ms),
        );
    }

    /// A client of chat-service.
    pub(crate) fn chat(&self) -> ChatServiceClient<ServiceChannel> {
        self.link.shared.backends.chat.clone()
    }

    /// A client of presence-service.
    pub(crate) fn presence(&self) -> PresenceServiceClient<ServiceChannel> {
        self.link.shared.backends.presence.clone()
    }

    /// A client of ai-service.
    pub(crate) fn ai(&self) -> AiServiceClient<ServiceChannel> {
        self.link.shared.backends.ai.clone()
    }

    /// Starts or renews (`start`) or stops a typing indicator in `room`.
    pub(crate) fn typing(&mut self, room: String, start: bool) -> Result<(), CommandError> {
        let user = self.actor()?.user_id;
        let shared = &self.link.shared;
        let typing = self.typing.get_or_insert_with(|| {
            let timeout = Duration::from_millis(shared.config.typing_timeout_ms);
            start_typing(shared.bus.clone(), user, timeout)
        });
        let order = if start {
            Typing::Start(room)
        } else {
            Typing::Stop(room)
        };
        let _ = typing.send(order);
        Ok(())
    }

    /// Ends the session: stops typing, leaves every room, presence and user
    /// channel, and releases the presence lease.
    pub(crate) async fn close(&mut self) {
        let shared = self.link.shared.clone();
        shared.sessions.remove(self.link.key);
        self.typing = None;
        self.follows.close(&self.link).await;
        for room in std::mem::take(&mut self.rooms) {
            shared
                .hub
                .leave(&common::bus::room_channel(&room), self.link.key)
                .await;
        }
        if let Some(identity) = &self.identity {
            shared
                .hub
                .leave(&common::bus::user_channel(&identity.user_id), self.link.key)
                .await;
            shared.leases.release(&self.link.id).await;
        }
        tracing::debug!(conn_id = %self.link.id, "connection closed");
    }
}

/// Verifies a token through auth-service. Expired and revoked tokens close
/// with 4003, other refusals with 4002; a blocked address is `rate_limited`
/// and remembered, so its next upgrade is refused before any WebSocket work.
pub(crate) async fn verify(
    shared: &Shared,
    token: &str,
    peer: SocketAddr,
) -> Result<Identity, CommandError> {
    let request = VerifyTokenRequest {
        token: token.to_string(),
        client_ip: peer.ip().to_string(),
    };
    match shared.backends.auth.clone().verify_token(request).await {
        Ok(response) => response.into_inner().identity.ok_or_else(|| {
            CommandError::new(ErrorCode::Internal, "auth service returned no identity")
        }),
        Err(status) => {
            let mut error = CommandError::from_status("auth", &status);
            let reason = AuthReason::decode(&status);
            if error.code == ErrorCode::Unauthorized {
                // auth-service wrote the `auth_failed` security event, with
                // the client's address the edge passed along.
                error.close = Some(match reason {
                    Some(AuthReason::Expired) => CloseCode::TokenExpired,
                    Some(AuthReason::Revoked) => CloseCode::TokenRevoked,
                    _ => CloseCode::InvalidToken,
                });
            }
            if reason == Some(AuthReason::Blocked) {
                let retry = error.retry_after_ms.unwrap_or(0);
                let until = common::ids::now_ms() + i64::try_from(retry).unwrap_or(0);
                shared.blocks.block(peer.ip(), until);
            }
            Err(error)
        }
    }
}
