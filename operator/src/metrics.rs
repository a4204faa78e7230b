//! The operator's own metrics, on its `/metrics`, and the tiny HTTP server that serves them with
//! `/healthz`.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    pub reconciles: IntCounterVec,
    pub failures: IntCounterVec,
    pub duration: HistogramVec,
    pub desired: IntGaugeVec,
    pub connections: IntGaugeVec,
    pub scale_events: IntCounterVec,
    pub leader: IntGauge,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let reconciles =
            IntCounterVec::new(Opts::new("herald_operator_reconciles_total", "Reconciles run"), &["resource"]).unwrap();
        let failures = IntCounterVec::new(
            Opts::new("herald_operator_reconcile_errors_total", "Reconciles that failed, by error"),
            &["resource", "error"],
        )
        .unwrap();
        let duration = HistogramVec::new(
            HistogramOpts::new("herald_operator_reconcile_duration_seconds", "Time spent in one reconcile")
                .buckets(vec![0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0]),
            &["resource"],
        )
        .unwrap();
        let desired = IntGaugeVec::new(
            Opts::new("herald_operator_desired_replicas", "Last decided replica count"),
            &["resource"],
        )
        .unwrap();
        let connections = IntGaugeVec::new(
            Opts::new("herald_operator_connections", "Connections reported by the ready gateways"),
            &["resource"],
        )
        .unwrap();
        let scale_events = IntCounterVec::new(
            Opts::new("herald_operator_scale_events_total", "Replica changes, by direction"),
            &["resource", "direction"],
        )
        .unwrap();
        let leader = IntGauge::new("herald_operator_leader", "1 while this replica holds the leader lease").unwrap();
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(desired.clone()),
            Box::new(connections.clone()),
            Box::new(scale_events.clone()),
            Box::new(leader.clone()),
        ] {
            registry.register(c).unwrap();
        }
        Metrics { registry, reconciles, failures, duration, desired, connections, scale_events, leader }
    }
}

impl Metrics {
    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics` and `/healthz` until the process ends.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let mut stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let mut buf = [0u8; 2048];
            let Ok(n) =
                tokio::time::timeout(std::time::Duration::from_secs(5), stream.read(&mut buf)).await.unwrap_or(Ok(0))
            else {
                return;
            };
            let request = String::from_utf8_lossy(&buf[..n]);
            let path = request.split_whitespace().nth(1).unwrap_or("/");
            let (status, content_type, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", metrics.render()),
                "/healthz" => ("200 OK", "application/json", "{\"status\":\"ok\"}".to_owned()),
                _ => ("404 Not Found", "application/json", "{\"error\":\"not_found\"}".to_owned()),
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}
