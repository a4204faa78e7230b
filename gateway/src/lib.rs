//! Herald gateway: pushes events from NATS to browsers over Server-Sent Events.
//!
//! How an event travels through a gateway pod:
//!
//! 1. A publisher emits an event on a NATS subject (`herald.live.user.u1`, …), directly or
//!    through `POST /v1/publish` ([`http::publish`] → [`broker::Broker::publish`]).
//! 2. The [`hub::Hub`] holds exactly one broker subscription per subject for the whole pod,
//!    refcounted by the sessions that want it. When a message arrives it renders the SSE frame
//!    once ([`sse`]) and hands the same bytes to every member's [`outbox::Outbox`] without
//!    waiting on anyone.
//! 3. Each SSE connection is one [`session::Session`] actor. It owns the connection's lifecycle
//!    (hub membership, heartbeats, token expiry) while its outbox feeds the HTTP response body.
//! 4. On presence-enabled channels, [`presence::Presence`] counts the pod's connections per
//!    user, shares them with the fleet through a key-value bucket, and sends `presence` frames;
//!    browsers send small ephemeral events through [`http::client_events`].
//!
//! Everything that parses untrusted input is a pure function with table tests: [`names`],
//! [`auth`], [`publish_keys`], [`sse`].
//!
//! The modules nothing outside the crate uses are `pub(crate)`, so that the compiler reports
//! what in them has no caller; the rest are public for the binary, the tests, the examples, the
//! load tester and the fuzz targets.

pub mod auth;
pub mod broker;
pub(crate) mod close_reason;
pub mod config;
pub(crate) mod dashboard;
pub(crate) mod drain;
pub mod event;
pub mod http;
pub mod hub;
pub mod jwks;
pub(crate) mod limits;
pub mod metrics;
pub mod names;
pub mod outbox;
pub(crate) mod peer;
pub(crate) mod presence;
pub mod publish_command;
pub mod publish_keys;
pub(crate) mod rate;
pub(crate) mod resume;
pub mod selftest;
pub mod server;
pub(crate) mod session;
pub mod sse;
pub mod telemetry;
pub(crate) mod trace;
pub(crate) mod trace_context;
