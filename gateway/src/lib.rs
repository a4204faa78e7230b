//! Herald gateway: pushes events from NATS to browsers over Server-Sent Events.
//!
//! How an event travels through a gateway pod:
//!
//! 1. A publisher emits an event on a NATS subject (`herald.live.user.u1`, …), directly or
//!    through `POST /v1/publish` ([`http::publish`] → [`broker::Broker::publish`]).
//! 2. The [`delivery::hub::Hub`] holds exactly one broker subscription per subject for the
//!    whole pod, refcounted by the sessions that want it. When a message arrives it renders the
//!    SSE frame once ([`delivery::sse`]) and hands the same bytes to every member's
//!    [`delivery::outbox::Outbox`] without waiting on anyone.
//! 3. Each SSE connection is one `delivery::session::Session` actor. It owns the connection's
//!    lifecycle (hub membership, heartbeats, token expiry) while its outbox feeds the HTTP
//!    response body.
//! 4. On presence-enabled channels, `presence::Presence` counts the pod's connections per user,
//!    shares them with the fleet through a key-value bucket, and sends `presence` frames;
//!    browsers send small ephemeral events through [`http::client_events`].
//!
//! Everything that parses untrusted input is a pure function with table tests: [`names`],
//! [`access::tokens`], [`access::publish_keys`], [`delivery::sse`].
//!
//! The modules are grouped by role, one folder each; docs/architecture.md has the map. The
//! modules nothing outside the crate uses are `pub(crate)`, so that the compiler reports what
//! in them has no caller; the rest are public for the binary, the tests, the examples, the
//! load tester and the fuzz targets.

/// Who may connect and publish: client tokens, their keys, publisher keys, admission, rates.
pub mod access;
/// Where events come from and go to (NATS, or memory in `dev` mode), and what a resume owes.
pub mod broker;
/// The subcommands: `serve` (and `dev`), `publish`, `selftest`.
pub mod commands;
/// Command-line flags and the validated configuration every part reads.
pub mod config;
/// From a broker message to the socket: the hub, outboxes, SSE frames, sessions.
pub mod delivery;
/// Events, their targets and subjects: the vocabulary every part shares.
pub mod event;
/// The HTTP routes.
pub mod http;
/// Names of users, channels and event types.
pub mod names;
/// Running it: metrics, logs and traces, the fleet dashboard, graceful drain.
pub mod ops;
/// Who is connected to a channel, fleet-wide.
pub(crate) mod presence;

/// How the gateway names itself in the requests it makes (key sets, `publish --url`).
pub(crate) const USER_AGENT: &str = concat!("herald-gateway/", env!("CARGO_PKG_VERSION"));
