//! What a connection is to the rest of the edge: the shared state, its key
//! in the hub, its id, its peer and its outbox. Fixed for the connection's
//! life; the session's parts borrow it to act on the connection's behalf.

use std::net::SocketAddr;
use std::sync::Arc;

use crate::Shared;
use crate::outbox::Outbox;

pub(crate) struct Link {
    pub shared: Arc<Shared>,
    /// Key of this connection in the hub and in revocation tracking.
    pub key: u64,
    /// `conn_id` of `hello`, in logs and presence leases.
    pub id: String,
    /// The client's address (behind a trusted proxy: the forwarded one).
    pub peer: SocketAddr,
    pub outbox: Outbox,
}
