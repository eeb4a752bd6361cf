//! The `parley.presence.v1.PresenceService` gRPC handlers: validation, the
//! default lease lifetime, and the mapping to and from the store.

use std::sync::Arc;
use std::time::Duration;

use proto::presence::v1::presence_service_server::PresenceService;
use proto::presence::v1::{
    GetPresenceRequest, GetPresenceResponse, RegisterRequest, RegisterResponse, ReleaseRequest,
    ReleaseResponse, RenewRequest, RenewResponse, UserPresence,
};
use tonic::{Request, Response, Status};

use crate::error::PresenceError;
use crate::store::PresenceStore;

/// Most connections one Renew or Release may name.
pub const MAX_CONNS_PER_CALL: usize = 10_000;
/// Most users one GetPresence may ask about.
pub const MAX_USERS_PER_CALL: usize = 1_000;
/// Longest accepted id (edge, connection or user), in bytes.
pub const MAX_ID_BYTES: usize = 256;

/// Handles presence calls; cheap to clone.
#[derive(Clone)]
pub(crate) struct PresenceHandler {
    pub(crate) store: Arc<dyn PresenceStore>,
    /// Lease lifetime when a request asks for 0.
    pub(crate) default_ttl: Duration,
}

impl PresenceHandler {
    fn ttl(&self, ttl_ms: u32) -> Duration {
        if ttl_ms == 0 {
            self.default_ttl
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

/// Logs failures of the store before they become a status.
fn failed(operation: &'static str) -> impl FnOnce(PresenceError) -> Status {
    move |error| {
        if !matches!(error, PresenceError::BadRequest(_)) {
            tracing::error!(operation, %error, "presence store call failed");
        }
        error.into()
    }
}

#[tonic::async_trait]
impl PresenceService for PresenceHandler {
    async fn register(
        &self,
        request: Request<RegisterRequest>,
    ) -> Result<Response<RegisterResponse>, Status> {
        let request = request.into_inner();
        check_id("edge_id", &request.edge_id)?;
        check_id("conn_id", &request.conn_id)?;
        check_id("user_id", &request.user_id)?;
        self.store
            .register(
                &request.edge_id,
                &request.conn_id,
                &request.user_id,
                self.ttl(request.ttl_ms),
            )
            .await
            .map_err(failed("register"))?;
        tracing::debug!(
            edge_id = %request.edge_id,
            conn_id = %request.conn_id,
            user_id = %request.user_id,
            "lease registered"
        );
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
        self.store
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
        let presence = self
            .store
            .presence(&request.user_ids)
            .await
            .map_err(failed("get_presence"))?
            .into_iter()
            .map(|p| UserPresence {
                user_id: p.user_id,
                online: p.online,
                status: if p.online { "online" } else { "offline" }.to_string(),
                last_seen: p.last_seen_ms,
            })
            .collect();
        Ok(Response::new(GetPresenceResponse { presence }))
    }
}
