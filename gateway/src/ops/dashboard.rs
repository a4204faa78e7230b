//! The fleet view behind `/dashboard`: every gateway reports its stats once a second on the
//! internal subject `<prefix>.internal.stats.<pod>`, and every gateway collects every report, so
//! any pod's dashboard shows the whole fleet.
//!
//! A report carries rates over its own interval (deliveries/s, slow closes) and the delivery
//! latency histogram of that interval, so the fleet's p99 is computed from the merged buckets,
//! not averaged from per-pod p99s. A gateway also feeds its own report straight to its own view:
//! a pod cut off from NATS still shows itself, as disconnected. A pod that stops reporting is
//! marked stale after [`STALE_AFTER`] and dropped after [`FORGET_AFTER`].
//!
//! The view is rendered to an SSE frame once per interval and shared by every open dashboard
//! through a `watch` channel: a viewer costs one clone of the frame per second.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::access::admission::Admission;
use crate::broker::Broker;
use crate::delivery::hub::Hub;
use crate::delivery::sse;
use crate::ops::metrics::{self, Metrics, Totals};

/// How often each gateway reports.
pub const INTERVAL: Duration = Duration::from_secs(1);
/// A pod silent for this long is shown as stale and left out of the fleet totals.
pub const STALE_AFTER: Duration = Duration::from_secs(3);
/// A pod silent for this long is dropped from the view.
pub const FORGET_AFTER: Duration = Duration::from_secs(10);
/// Largest report accepted from the internal subject.
const MAX_REPORT_BYTES: usize = 16 * 1024;

/// One gateway's report, the JSON published on `<prefix>.internal.stats.<pod>`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    pub pod: String,
    pub connections: usize,
    pub max_connections: usize,
    pub subjects: usize,
    pub nats_connected: bool,
    pub draining: bool,
    /// Live event frames handed to sockets per second, over the last interval.
    pub deliveries_per_sec: f64,
    /// Streams closed as slow during the last interval, and since the gateway started.
    pub slow_closes: u64,
    pub slow_closes_total: u64,
    /// p99 delivery latency over the last interval (seconds), if anything was delivered.
    pub p99_seconds: Option<f64>,
    /// Deliveries per latency bucket during the last interval (see `metrics::LATENCY_BUCKETS`).
    pub latency_buckets: Vec<u64>,
    pub interval_ms: u64,
}

/// A pod as the dashboard shows it.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PodView {
    #[serde(flatten)]
    pub report: PodReport,
    /// Milliseconds since its last report.
    pub age_ms: u64,
    pub stale: bool,
}

/// The fleet's totals, over the pods that are not stale.
#[derive(Clone, Debug, Default, Serialize, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FleetTotals {
    pub pods: usize,
    pub connections: usize,
    pub max_connections: usize,
    pub deliveries_per_sec: f64,
    pub slow_closes: u64,
    pub p99_seconds: Option<f64>,
    /// Deliveries per latency bucket, summed over the pods.
    pub latency_buckets: Vec<u64>,
    /// Pods connected to NATS, out of `pods`.
    pub nats_connected: usize,
    pub draining: usize,
}

/// What a dashboard receives every interval (`event: stats`).
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FleetView {
    /// The pod serving this dashboard.
    pub this_pod: String,
    pub interval_ms: u64,
    /// Upper bounds (seconds) of the latency buckets; the last bucket is above them all.
    pub latency_bounds: &'static [f64],
    pub fleet: FleetTotals,
    pub pods: Vec<PodView>,
}

/// Every pod's latest report, and the rendered view shared by the open dashboards.
pub struct Fleet {
    /// Set once the listening port is known (the default name includes it).
    this_pod: OnceLock<String>,
    pods: Mutex<HashMap<String, (Instant, PodReport)>>,
    frame: watch::Sender<Bytes>,
}

impl Fleet {
    pub fn new() -> Arc<Fleet> {
        Arc::new(Fleet {
            this_pod: OnceLock::new(),
            pods: Mutex::new(HashMap::new()),
            frame: watch::Sender::new(Bytes::new()),
        })
    }

    /// Names this pod (once; later calls are ignored).
    pub fn set_this_pod(&self, pod: String) {
        let _ = self.this_pod.set(pod);
    }

    pub fn this_pod(&self) -> &str {
        self.this_pod.get().map_or("", String::as_str)
    }

    /// Takes in a report (this pod's, or one from the internal subject).
    pub fn record(&self, report: PodReport, at: Instant) {
        self.pods.lock().insert(report.pod.clone(), (at, report));
    }

    /// Takes in a report as published on the internal subject; anything else is ignored.
    pub fn record_raw(&self, payload: &[u8], at: Instant) {
        if payload.len() > MAX_REPORT_BYTES {
            return;
        }
        match serde_json::from_slice::<PodReport>(payload) {
            Ok(report) if !report.pod.is_empty() && report.pod.len() <= 253 => self.record(report, at),
            Ok(_) => tracing::debug!("ignored a stats report without a valid pod name"),
            Err(e) => tracing::debug!(error = %e, "ignored a malformed stats report"),
        }
    }

    /// The view at `now`; forgets pods silent for [`FORGET_AFTER`].
    pub fn view(&self, now: Instant) -> FleetView {
        let mut pods = self.pods.lock();
        pods.retain(|_, (at, _)| now.saturating_duration_since(*at) < FORGET_AFTER);
        let mut views: Vec<PodView> = pods
            .values()
            .map(|(at, report)| {
                let age = now.saturating_duration_since(*at);
                PodView { report: report.clone(), age_ms: age.as_millis() as u64, stale: age >= STALE_AFTER }
            })
            .collect();
        drop(pods);
        views.sort_by(|a, b| a.report.pod.cmp(&b.report.pod));

        let mut fleet = FleetTotals::default();
        let mut buckets = vec![0u64; metrics::LATENCY_BUCKETS.len() + 1];
        for v in views.iter().filter(|v| !v.stale) {
            let r = &v.report;
            // Saturating: a report is whatever was published on the internal subject, and a
            // forged one must not wrap (or, in a debug build, panic) the sums of the real ones.
            fleet.pods += 1;
            fleet.connections = fleet.connections.saturating_add(r.connections);
            fleet.max_connections = fleet.max_connections.saturating_add(r.max_connections);
            fleet.deliveries_per_sec += r.deliveries_per_sec;
            fleet.slow_closes = fleet.slow_closes.saturating_add(r.slow_closes);
            fleet.nats_connected += usize::from(r.nats_connected);
            fleet.draining += usize::from(r.draining);
            for (sum, n) in buckets.iter_mut().zip(&r.latency_buckets) {
                *sum = sum.saturating_add(*n);
            }
        }
        fleet.p99_seconds = metrics::quantile(0.99, &buckets);
        fleet.latency_buckets = buckets;
        FleetView {
            this_pod: self.this_pod().to_owned(),
            interval_ms: INTERVAL.as_millis() as u64,
            latency_bounds: metrics::LATENCY_BUCKETS,
            fleet,
            pods: views,
        }
    }

    /// Renders the view and hands it to every open dashboard.
    pub fn publish_view(&self, now: Instant) {
        self.frame.send_replace(sse::control_frame("stats", &self.view(now)));
    }

    /// The latest rendered view (empty before the first), and a receiver for the next ones.
    pub fn subscribe(&self) -> watch::Receiver<Bytes> {
        self.frame.subscribe()
    }
}

/// What a gateway reads to build its report.
pub struct Sources {
    pub fleet: Arc<Fleet>,
    pub broker: Arc<dyn Broker>,
    pub hub: Arc<Hub>,
    pub admission: Arc<Admission>,
    pub metrics: Arc<Metrics>,
}

/// Builds a report from this interval's totals and the previous ones.
pub fn report(pod: &str, src: &Sources, now: &Totals, before: &Totals, elapsed: Duration) -> PodReport {
    let secs = elapsed.as_secs_f64().max(1e-3);
    let latency_buckets: Vec<u64> = now
        .latency_buckets
        .iter()
        .zip(before.latency_buckets.iter().chain(std::iter::repeat(&0)))
        .map(|(n, b)| n.saturating_sub(*b))
        .collect();
    PodReport {
        pod: pod.to_owned(),
        connections: src.admission.connections(),
        max_connections: src.admission.max_connections(),
        subjects: src.hub.subjects(),
        nats_connected: src.broker.is_connected(),
        draining: src.admission.draining(),
        deliveries_per_sec: now.frames_sent.saturating_sub(before.frames_sent) as f64 / secs,
        slow_closes: now.slow_closes.saturating_sub(before.slow_closes),
        slow_closes_total: now.slow_closes,
        p99_seconds: metrics::quantile(0.99, &latency_buckets),
        latency_buckets,
        interval_ms: elapsed.as_millis() as u64,
    }
}

/// Reports this gateway's stats every [`INTERVAL`] (to itself and to the fleet), collects the
/// other pods' reports, and refreshes the view. Runs until the process ends.
pub async fn run(src: Sources) {
    let src = Arc::new(src);
    let collect = {
        let src = src.clone();
        async move {
            // Retried: NATS may not be reachable yet.
            loop {
                match src.broker.fleet_stats().await {
                    Ok(None) => return, // no fleet (dev mode): only this pod
                    Ok(Some(mut reports)) => {
                        while let Some(payload) = reports.next().await {
                            src.fleet.record_raw(&payload, Instant::now());
                        }
                    }
                    Err(e) => tracing::debug!(error = %e, "cannot subscribe to the fleet's stats yet"),
                }
                tokio::time::sleep(INTERVAL).await;
            }
        }
    };
    tokio::spawn(collect);

    let pod = src.fleet.this_pod().to_owned();
    let mut before = src.metrics.totals();
    let mut last = Instant::now();
    let mut ticks = tokio::time::interval(INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let totals = src.metrics.totals();
        let report = report(&pod, &src, &totals, &before, now - last);
        (before, last) = (totals, now);
        match serde_json::to_vec(&report) {
            Ok(payload) => src.broker.publish_stats(&pod, Bytes::from(payload)).await,
            Err(e) => tracing::debug!(error = %e, "cannot encode the stats report"),
        }
        src.fleet.record(report, now);
        src.fleet.publish_view(now);
    }
}

/// The subject token for a pod name: NATS subjects can't hold `.`, `*`, `>` or whitespace.
pub fn subject_token(pod: &str) -> String {
    pod.chars().map(|c| if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':') { c } else { '_' }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(pod: &str, connections: usize, buckets: &[(usize, u64)]) -> PodReport {
        let mut latency_buckets = vec![0; metrics::LATENCY_BUCKETS.len() + 1];
        for &(i, n) in buckets {
            latency_buckets[i] = n;
        }
        PodReport {
            pod: pod.into(),
            connections,
            max_connections: 100,
            subjects: 1,
            nats_connected: true,
            draining: false,
            deliveries_per_sec: 10.0,
            slow_closes: 1,
            slow_closes_total: 5,
            p99_seconds: None,
            latency_buckets,
            interval_ms: 1000,
        }
    }

    #[test]
    fn the_view_sums_live_pods_merges_latency_and_ages_out_the_silent() {
        let fleet = Fleet::new();
        fleet.set_this_pod("a".into());
        let t0 = Instant::now();
        fleet.record(report("b", 7, &[(9, 1)]), t0);
        fleet.record(report("a", 3, &[(2, 99)]), t0 + Duration::from_secs(2));
        let raw = serde_json::to_vec(&report("c", 11, &[])).unwrap();
        fleet.record_raw(&raw, t0 + Duration::from_secs(4));
        fleet.record_raw(b"{\"pod\":\"x\"}", t0);
        fleet.record_raw(b"not json", t0);

        let v = fleet.view(t0 + Duration::from_secs(4));
        let names: Vec<&str> = v.pods.iter().map(|p| p.report.pod.as_str()).collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert!(v.pods[1].stale, "b has been silent for 4 s");
        assert_eq!((v.fleet.pods, v.fleet.connections, v.fleet.max_connections), (2, 14, 200));
        assert_eq!(v.fleet.deliveries_per_sec, 20.0);
        // a's 99 deliveries all fell in (0.001, 0.0025]: the fleet p99 is there, b's slow
        // delivery is left out with b.
        let p99 = v.fleet.p99_seconds.unwrap();
        assert!(p99 > 0.001 && p99 <= 0.0025, "{p99}");

        let later = fleet.view(t0 + Duration::from_millis(11_500));
        let names: Vec<&str> = later.pods.iter().map(|p| p.report.pod.as_str()).collect();
        assert_eq!(names, ["a", "c"], "b was forgotten");
    }

    #[test]
    fn subject_tokens_are_single_tokens() {
        assert_eq!(subject_token("gw-7d9f.ns.svc:8080"), "gw-7d9f_ns_svc:8080");
        assert_eq!(subject_token("a b*>"), "a_b__");
    }

    /// Reports come from the internal NATS subject, which anything allowed to publish to NATS
    /// can write: a forged report's counts must not break the view for the real pods.
    #[test]
    fn a_forged_report_does_not_break_the_view() {
        let fleet = Fleet::new();
        let t0 = Instant::now();
        let mut forged = report("forged", usize::MAX, &[(0, u64::MAX), (3, u64::MAX)]);
        forged.max_connections = usize::MAX;
        fleet.record_raw(&serde_json::to_vec(&forged).unwrap(), t0);
        fleet.record(report("real", 3, &[(0, 5)]), t0);
        let view = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fleet.view(t0)));
        assert!(view.is_ok(), "a forged report panics the view (and the task that renders it)");
        assert!(view.unwrap().fleet.connections >= 3, "the fleet's connections wrapped around");
    }
}
