//! The gateway binary's subcommands.

/// `herald-gateway publish`: one event from a shell, through NATS or a gateway's HTTP API.
pub mod publish;
/// `herald-gateway selftest`: a real round trip against a running gateway.
pub mod selftest;
/// `herald-gateway serve` and `dev`: start-up and wiring.
pub mod serve;
