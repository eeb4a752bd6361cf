//! The chat service over real gRPC, on SQLite (or Postgres with
//! `PARLEY_TEST_DATABASE_URL`), as one test binary:
//!
//! - `rooms`: creating rooms (direct pairs, public names), the service
//!   credential and actor, private-room visibility, joining and log replay,
//!   leaving, and unread counts;
//! - `messages`: sending (seqs, retries, limits, threads), history paging,
//!   publishing on the bus, byte-exact storage, and seqs that refused writes
//!   do not consume;
//! - `membership`: invites and removal by the owner;
//! - `edits`: editing and deleting messages;
//! - `reactions`, `receipts` and `notifications` (mentions);
//! - `backend`: the `ChatBackendService` API for other backends;
//! - `health`: gRPC health following the database;
//! - `replicas`: two chat-services appending to the same rooms of one
//!   Postgres database (seqs taken once, without gaps, in order);
//! - `retention`: the clean-up job at an injected time, in small batches
//!   while sends go on.
//! - `recent`: rejoins answered from the cache of recent events, exactly as
//!   the log answers them;
//! - `send_stream`: the edge's sends over one `SendMessages` stream,
//!   ordered per lane and answered by id;
//! - `watch`: the backend event stream, resumed across a restart;
//! - `webhooks`: dead letters listed and redriven through the backend API.

mod backend;
mod edits;
mod health;
mod helpers;
mod membership;
mod messages;
mod notifications;
mod reactions;
mod receipts;
mod recent;
mod replicas;
mod retention;
mod rooms;
mod send_stream;
mod watch;
mod webhooks;
