//! herald-loadtest: Herald's load generator.
//!
//! One process holds thousands of SSE connections on one core: raw HTTP/1.1 over tokio sockets
//! ([`http`]), a spec-exact incremental SSE parser ([`sse`]), per-client sequence accounting
//! ([`track`]) and per-delivery latency from a send timestamp in the payload ([`payload`]) into
//! HDR histograms ([`proto::Hist`]). A run is split into shares ([`share`]) held in this process,
//! in child processes, or by workers over NATS ([`dist`]); the coordinator ([`run`]) publishes
//! ([`publish`]), merges and reports (JSON, and HTML with charts: [`report`]). [`chaos`] is a run
//! of its own: a NATS cluster and gateways it starts, kills and restarts under durable traffic.

pub mod chaos;
pub mod cli;
pub mod dist;
pub mod gateways;
pub mod http;
pub mod names;
pub mod payload;
pub mod proto;
pub mod publish;
pub mod report;
pub mod run;
pub mod share;
pub mod sse;
pub mod sys;
pub mod track;
