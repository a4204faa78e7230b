//! What running a gateway needs beyond delivery: metrics, logs and traces, the fleet dashboard
//! and graceful shutdown.

/// The fleet view behind `/dashboard`: every gateway's stats, shared over NATS.
pub(crate) mod dashboard;
/// Graceful shutdown for long-lived streams, on SIGTERM or SIGINT.
pub(crate) mod drain;
/// Every Prometheus metric of the gateway, in one registry.
pub mod metrics;
/// Logs (text or JSON lines) and the OTLP trace exporter.
pub mod telemetry;
/// The spans Herald records.
pub(crate) mod trace;
/// The W3C trace context an event carries.
pub(crate) mod trace_context;
