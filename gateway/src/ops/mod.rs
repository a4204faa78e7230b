//! What running a gateway needs beyond delivery: metrics, logs and traces, the fleet dashboard
//! and graceful shutdown.

pub(crate) mod dashboard;
pub(crate) mod drain;
pub mod metrics;
pub mod telemetry;
pub(crate) mod trace;
pub(crate) mod trace_context;
