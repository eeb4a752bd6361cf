//! What every Parley component shares: configuration, telemetry, W3C trace
//! propagation over gRPC, gRPC server/client plumbing, the event bus, the
//! error-code table, ids, shutdown, and opening Redis.

pub mod attachments;
pub mod auth_reason;
pub mod bus;
pub mod cidr;
pub mod cli;
pub mod clients;
pub mod coalesce;
pub mod config;
pub mod denial;
pub mod error;
pub mod grpc;
pub mod http_server;
pub mod ids;
pub mod metrics;
pub mod redis_client;
pub mod secret;
pub mod security;
pub mod shutdown;
pub mod telemetry;
pub mod trace;

pub use error::ErrorCode;
pub use secret::Secret;
#[cfg(feature = "testing")]
pub mod testing;
