//! The operator's own metrics, on its `/metrics`, and the HTTP server (hyper) that serves them
//! with `/healthz`.

use std::sync::Arc;

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{CONTENT_TYPE, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
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
        let build_info = IntGaugeVec::new(
            Opts::new("herald_build_info", "Always 1: the version and commit this operator was built from"),
            &["version", "commit"],
        )
        .unwrap();
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("HERALD_COMMIT")]).set(1);
        for c in [
            Box::new(reconciles.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(failures.clone()),
            Box::new(duration.clone()),
            Box::new(desired.clone()),
            Box::new(connections.clone()),
            Box::new(scale_events.clone()),
            Box::new(leader.clone()),
            Box::new(build_info),
            Box::new(prometheus::process_collector::ProcessCollector::for_self()),
        ] {
            registry.register(c).unwrap();
        }
        Metrics { registry, reconciles, failures, duration, desired, connections, scale_events, leader }
    }
}

impl Metrics {
    /// Drops the series of a deleted resource (`namespace/name`).
    pub fn forget(&self, resource: &str) {
        let _ = self.reconciles.remove_label_values(&[resource]);
        let _ = self.desired.remove_label_values(&[resource]);
        let _ = self.connections.remove_label_values(&[resource]);
        for error in crate::Error::LABELS {
            let _ = self.failures.remove_label_values(&[resource, error]);
        }
        for direction in ["up", "down"] {
            let _ = self.scale_events.remove_label_values(&[resource, direction]);
        }
        let _ = self.duration.remove_label_values(&[resource]);
    }

    pub fn render(&self) -> String {
        let mut out = Vec::new();
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Serves `/metrics` and `/healthz` until the process ends (HTTP/1.1, keep-alive, through
/// hyper).
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, typically: back off instead of spinning.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let service = service_fn(move |req: Request<Incoming>| {
                let response = respond(&req, &metrics);
                async move { Ok::<_, Infallible>(response) }
            });
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                // A scraper that connects and says nothing is dropped.
                .header_read_timeout(Duration::from_secs(5))
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "metrics connection ended");
            }
        });
    }
}

fn respond(req: &Request<Incoming>, metrics: &Metrics) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, "text/plain; version=0.0.4", metrics.render()),
        (&Method::GET, "/healthz") => (StatusCode::OK, "application/json", "{\"status\":\"ok\"}".to_owned()),
        (_, "/metrics" | "/healthz") => {
            (StatusCode::METHOD_NOT_ALLOWED, "application/json", "{\"error\":\"method_not_allowed\"}".to_owned())
        }
        _ => (StatusCode::NOT_FOUND, "application/json", "{\"error\":\"not_found\"}".to_owned()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
