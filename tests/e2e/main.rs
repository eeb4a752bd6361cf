//! End-to-end suite: the whole Parley suite started in-process on random
//! ports, driven by real WebSocket clients. Runs on SQLite + in-process bus,
//! or on Postgres + Redis when `PARLEY_TEST_DATABASE_URL` /
//! `PARLEY_TEST_REDIS_URL` are set.

mod helpers;

mod ai;
mod attachments;
mod auth;
mod bad_input;
mod chat;
mod cli;
mod connection;
mod dashboards;
mod delivery;
mod erasure;
mod faults;
mod hardening;
mod invitations;
mod messages;
mod metrics;
mod pipelining;
mod presence;
mod protection;
mod replies;
mod resilient;
mod retention;
mod rooms_admin;
mod rooms_many;
mod service_credentials;
mod topology;
