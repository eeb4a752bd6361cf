//! The `parley.presence.v1.PresenceService` gRPC handlers: validation, the
//! default lease lifetime, the mapping to and from the engine, and the
//! watch stream.

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::bus::{BusEvent, PRESENCE_WATCH_CHANNEL};
use common::grpc::Actor;
use common::shutdown::ShutdownSignal;
use futures::Stream;
use proto::presence::v1::presence_service_server::PresenceService;
use proto::presence::v1::{
    ActOnCallRequest, ActOnCallResponse, ForgetUserRequest, ForgetUserResponse, GetPresenceRequest,
    GetPresenceResponse, InviteCallRequest, InviteCallResponse, Lease, RegisterRequest,
    RegisterResponse, ReleaseRequest, ReleaseResponse, RenewRequest, RenewResponse,
    SetStatusRequest, SetStatusResponse, UserPresence, WatchEvent, WatchRequest,
};
use serde_json::Value;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

use crate::engine::{
    Engine, MAX_CALL_PAYLOAD_BYTES, MAX_STATUS_TEXT_CHARS, STATUSES, visible_status,
};
use crate::error::PresenceError;
use crate::store::CallAction;

pub use proto::presence::v1::{MAX_CONNS_PER_CALL, MAX_LEASES_PER_CALL, MAX_USERS_PER_CALL};
/// Longest accepted id (edge, connection or user), in bytes.
pub const MAX_ID_BYTES: usize = 256;
/// Watch events queued for one slow watcher before it is cut off.
const WATCH_QUEUE: usize = 4_096;

/// Handles presence calls; cheap to clone.
#[derive(Clone)]
pub(crate) struct PresenceHandler {
    pub(crate) engine: Arc<Engine>,
    /// Ends watch streams when the server stops.
    pub(crate) shutdown: ShutdownSignal,
}

impl PresenceHandler {
    fn ttl(&self, ttl_ms: u32) -> Duration {
        if ttl_ms == 0 {
            self.engine.timings.lease_ttl
        } else {
            Duration::from_millis(u64::from(ttl_ms))
        }
    }
}

fn check_id(field: &str, value: &str) -> Result<(), PresenceError> {
    if value.is_empty() {
        return Err(PresenceError::BadRequest(format!(
            "{field} must not be empty"
        )));
    }
    if value.len() > MAX_ID_BYTES {
        return Err(PresenceError::BadRequest(format!(
            "{field} is longer than {MAX_ID_BYTES} bytes"
        )));
    }
    Ok(())
}

fn check_ids(field: &str, values: &[String], max: usize) -> Result<(), PresenceError> {
    if values.len() > max {
        return Err(PresenceError::BadRequest(format!(
            "at most {max} {field} per call, got {}",
            values.len()
        )));
    }
    values.iter().try_for_each(|value| check_id(field, value))
}

/// A call payload: JSON of at most [`MAX_CALL_PAYLOAD_BYTES`]; `None` when
/// empty.
fn payload(json: &str) -> Result<Option<Value>, PresenceError> {
    if json.is_empty() {
        return Ok(None);
    }
    if json.len() > MAX_CALL_PAYLOAD_BYTES {
        return Err(PresenceError::TooLarge(format!(
            "payload is larger than {MAX_CALL_PAYLOAD_BYTES} bytes"
        )));
    }
    serde_json::from_str(json)
        .map(Some)
        .map_err(|_| PresenceError::BadRequest("payload must be JSON".into()))
}

/// Logs failures of the store before they become a status.
fn failed(operation: &'static str) -> impl FnOnce(PresenceError) -> Status {
    move |error| {
        if !error.is_caller_error() {
            tracing::error!(operation, %error, "presence store call failed");
        }
        error.into()
    }
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<WatchEvent, Status>> + Send>>;

#[tonic::async_trait]
impl PresenceService for PresenceHandler {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        check_id("edge_id", &request.edge_id)?;
        if request.leases.len() > MAX_LEASES_PER_CALL {
            return Err(PresenceError::BadRequest(format!(
                "at most {MAX_LEASES_PER_CALL} leases per call"
            ))
            .into());
        }
        let single = (!request.conn_id.is_empty() || request.leases.is_empty()).then(|| Lease {
            conn_id: request.conn_id.clone(),
            user_id: request.user_id.clone(),
        });
        let leases: Vec<Lease> = single.into_iter().chain(request.leases).collect();
        for lease in &leases {
            check_id("conn_id", &lease.conn_id)?;
            check_id("user_id", &lease.user_id)?;
        }
        let ttl = self.ttl(request.ttl_ms);
        for lease in &leases {
            self.engine
                .register(&request.edge_id, &lease.conn_id, &lease.user_id, ttl)
                .await
                .map_err(failed("register"))?;
            tracing::debug!(
                edge_id = %request.edge_id,
                conn_id = %lease.conn_id,
                user_id = %lease.user_id,
                "lease registered"
            );
        }
        Ok(Response::new(RegisterResponse {}))
    }

    async fn renew(
        &self,
        request: Request<RenewRequest>,
    ) -> Result<Response<RenewResponse>, Status> {
        let request = request.into_inner();
        check_id("edge_id", &request.edge_id)?;
        check_ids("conn_ids", &request.conn_ids, MAX_CONNS_PER_CALL)?;
        let unknown_conn_ids = self
            .engine
            .store
            .renew(
                &request.edge_id,
                &request.conn_ids,
                self.ttl(request.ttl_ms),
            )
            .await
            .map_err(failed("renew"))?;
        tracing::debug!(
            edge_id = %request.edge_id,
            renewed = request.conn_ids.len() - unknown_conn_ids.len(),
            unknown = unknown_conn_ids.len(),
            "leases renewed"
        );
        Ok(Response::new(RenewResponse { unknown_conn_ids }))
    }

    async fn release(
        &self,
        request: Request<ReleaseRequest>,
    ) -> Result<Response<ReleaseResponse>, Status> {
        let request = request.into_inner();
        check_ids("conn_ids", &request.conn_ids, MAX_CONNS_PER_CALL)?;
        self.engine
            .release(&request.conn_ids)
            .await
            .map_err(failed("release"))?;
        tracing::debug!(released = request.conn_ids.len(), "leases released");
        Ok(Response::new(ReleaseResponse {}))
    }

    async fn get_presence(
        &self,
        request: Request<GetPresenceRequest>,
    ) -> Result<Response<GetPresenceResponse>, Status> {
        let request = request.into_inner();
        check_ids("user_ids", &request.user_ids, MAX_USERS_PER_CALL)?;
        let now = common::ids::now_ms();
        let grace = self.engine.timings.grace.as_millis() as i64;
        let presence = self
            .engine
            .store
            .presence(&request.user_ids)
            .await
            .map_err(failed("get_presence"))?
            .into_iter()
            .map(|p| {
                // Within the grace period a user still counts as online.
                let connected = p.online || (p.in_grace && now - p.last_seen_ms < grace);
                let status = if connected {
                    visible_status(&p.status)
                } else {
                    "offline"
                };
                let online = status != "offline";
                UserPresence {
                    user_id: p.user_id,
                    online,
                    status: status.to_string(),
                    last_seen: p.last_seen_ms,
                    text: if online { p.text } else { String::new() },
                    connected: p.online,
                }
            })
            .collect();
        Ok(Response::new(GetPresenceResponse { presence }))
    }

    async fn set_status(
        &self,
        request: Request<SetStatusRequest>,
    ) -> Result<Response<SetStatusResponse>, Status> {
        let actor = Actor::of(&request)?;
        let request = request.into_inner();
        if !STATUSES.contains(&request.status.as_str()) {
            return Err(PresenceError::BadRequest(format!(
                "status must be one of {}",
                STATUSES.join(", ")
            ))
            .into());
        }
        if request.text.chars().count() > MAX_STATUS_TEXT_CHARS {
            return Err(PresenceError::TooLarge(format!(
                "text is longer than {MAX_STATUS_TEXT_CHARS} characters"
            ))
            .into());
        }
        if request.text.chars().any(char::is_control) {
            return Err(PresenceError::BadRequest(
                "text must not contain control characters".into(),
            )
            .into());
        }
        self.engine
            .set_status(&actor.user_id, &request.status, &request.text)
            .await
            .map_err(failed("set_status"))?;
        Ok(Response::new(SetStatusResponse {}))
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: Request<WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        let request = request.into_inner();
        check_ids("user_ids", &request.user_ids, MAX_USERS_PER_CALL)?;
        let filter: HashSet<String> = request.user_ids.into_iter().collect();
        let (subscriber, mut events) = self
            .engine
            .bus
            .subscriber()
            .await
            .map_err(|_| Status::unavailable("event bus unavailable"))?;
        subscriber
            .subscribe(PRESENCE_WATCH_CHANNEL)
            .await
            .map_err(|_| Status::unavailable("event bus unavailable"))?;
        let (tx, rx) = mpsc::channel(WATCH_QUEUE);
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            // Keeps the subscription for as long as the stream lives.
            let _subscriber = subscriber;
            let stopped = shutdown.wait();
            tokio::pin!(stopped);
            loop {
                let event = tokio::select! {
                    event = events.recv() => event,
                    () = tx.closed() => return,
                    () = &mut stopped => return,
                };
                let Some(BusEvent::Message { envelope, .. }) = event else {
                    if event.is_none() {
                        return;
                    }
                    continue;
                };
                let Some(event) = watch_event(&envelope.json) else {
                    continue;
                };
                if !filter.is_empty() && !filter.contains(&event.user_id) {
                    continue;
                }
                if tx.try_send(Ok(event)).is_err() {
                    // Full (a watcher that stopped reading) or gone.
                    let _ = tx.try_send(Err(Status::resource_exhausted(
                        "watcher fell behind; watch again",
                    )));
                    return;
                }
            }
        });
        let stream = tokio_stream::wrappers::ReceiverStream::new(rx);
        Ok(Response::new(Box::pin(stream)))
    }

    async fn invite_call(
        &self,
        request: Request<InviteCallRequest>,
    ) -> Result<Response<InviteCallResponse>, Status> {
        let actor = Actor::of(&request)?;
        let request = request.into_inner();
        check_id("to", &request.to)?;
        if request.to == actor.user_id {
            return Err(PresenceError::BadRequest("you cannot call yourself".into()).into());
        }
        if !request.room_id.is_empty() {
            check_id("room_id", &request.room_id)?;
        }
        let payload = payload(&request.payload_json)?.unwrap_or(Value::Null);
        let call_id = self
            .engine
            .invite(&actor, &request.to, &request.room_id, payload)
            .await
            .map_err(failed("invite_call"))?;
        Ok(Response::new(InviteCallResponse { call_id }))
    }

    async fn act_on_call(
        &self,
        request: Request<ActOnCallRequest>,
    ) -> Result<Response<ActOnCallResponse>, Status> {
        let actor = Actor::of(&request)?;
        let request = request.into_inner();
        let action = CallAction::parse(&request.action).ok_or_else(|| {
            PresenceError::BadRequest("action must be answer, reject, end or ice".into())
        })?;
        check_id("call_id", &request.call_id)?;
        let payload = payload(&request.payload_json)?;
        self.engine
            .act(&actor, action, &request.call_id, payload)
            .await
            .map_err(failed("act_on_call"))?;
        Ok(Response::new(ActOnCallResponse {}))
    }

    async fn forget_user(
        &self,
        request: Request<ForgetUserRequest>,
    ) -> Result<Response<ForgetUserResponse>, Status> {
        let request = request.into_inner();
        check_id("user_id", &request.user_id)?;
        self.engine
            .store
            .forget(&request.user_id)
            .await
            .map_err(failed("forget_user"))?;
        Ok(Response::new(ForgetUserResponse {}))
    }
}

/// A watch event from its bus JSON.
fn watch_event(json: &str) -> Option<WatchEvent> {
    let value: Value = serde_json::from_str(json).ok()?;
    let text = |field: &str| value[field].as_str().unwrap_or_default().to_string();
    Some(WatchEvent {
        kind: i32::try_from(value["kind"].as_i64()?).ok()?,
        user_id: text("user_id"),
        conn_id: text("conn_id"),
        edge_id: text("edge_id"),
        status: text("status"),
        text: text("text"),
        at: value["at"].as_i64().unwrap_or_default(),
    })
}
