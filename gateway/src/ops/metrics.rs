//! The gateway's Prometheus metrics (`/metrics`, docs/observability.md), in one registry.
//!
//! Hot paths only touch atomics: every labelled series is resolved once, here, into a plain
//! counter (so no label lookup, lock or allocation happens per event or per frame), and every
//! label value exists at 0 before any traffic. Labels carry kinds and reasons only, never a user
//! id or a channel name. Values that belong to the pod as a whole (connections, subjects, queue
//! sizes) are gauges read at scrape time from the structures that own them.
//!
//! `docs/observability.md` describes every metric.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::core::Metric as _;
use prometheus::{Encoder, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry, TextEncoder};

use crate::broker::resume::ResetReason;
use crate::delivery::close_reason::CloseReason;
use crate::event::Target;

/// Bucket bounds (seconds) of `herald_delivery_latency_seconds`: from sub-millisecond loopback
/// deliveries to a client stuck behind a full queue.
pub const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// Bucket bounds (seconds) of `herald_publish_duration_seconds`.
const PUBLISH_BUCKETS: &[f64] = &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// The statuses `POST /v1/publish` answers with, pre-created at 0.
const PUBLISH_STATUSES: &[&str] = &["200", "400", "401", "413", "503"];
/// Statuses of `POST /v1/client-events`, present from the start so that rates work at once.
const CLIENT_EVENT_STATUSES: &[&str] = &["202", "400", "401", "403", "413", "429", "503"];

/// Every close reason, in the order of [`close_index`].
const CLOSE_REASONS: [CloseReason; 7] = [
    CloseReason::Client,
    CloseReason::Slow,
    CloseReason::Drain,
    CloseReason::TokenExpired,
    CloseReason::Overload,
    CloseReason::Error,
    CloseReason::Throttled,
];

/// How a resume went: replayed, one of the reset reasons, or failed (the history could not be
/// read; the client was told to come back later).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResumeResult {
    Replayed,
    Reset(ResetReason),
    Failed,
}

impl ResumeResult {
    const ALL: [ResumeResult; 5] = [
        ResumeResult::Replayed,
        ResumeResult::Reset(ResetReason::HistoryExpired),
        ResumeResult::Reset(ResetReason::EpochChanged),
        ResumeResult::Reset(ResetReason::TooMany),
        ResumeResult::Failed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ResumeResult::Replayed => "replayed",
            ResumeResult::Reset(reason) => reason.as_str(),
            ResumeResult::Failed => "failed",
        }
    }

    fn index(self) -> usize {
        match self {
            ResumeResult::Replayed => 0,
            ResumeResult::Reset(ResetReason::HistoryExpired) => 1,
            ResumeResult::Reset(ResetReason::EpochChanged) => 2,
            ResumeResult::Reset(ResetReason::TooMany) => 3,
            ResumeResult::Failed => 4,
        }
    }
}

/// What showed a gap in a gateway's live delivery, which its hub then refilled from the history
/// or, for a subject quiet for long, sent that subject's streams to resume over (see
/// `delivery/hub/mod.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gap {
    /// The NATS connection dropped, or the history's stream stopped reaching it for a while.
    Reconnect,
    /// A subscription's queue filled up and NATS dropped what followed (its slow consumer).
    FellBehind,
    /// A subject's events stopped arriving while the connection held (a route inside the NATS
    /// cluster dropped for a moment).
    BrokenChain,
    /// A live sequence went back (a new stream leader repeating events, or a history that
    /// started over).
    SequenceBack,
}

impl Gap {
    /// In declaration order: a cause's index is its discriminant.
    const ALL: [Gap; 4] = [Gap::Reconnect, Gap::FellBehind, Gap::BrokenChain, Gap::SequenceBack];

    pub fn as_str(self) -> &'static str {
        match self {
            Gap::Reconnect => "reconnect",
            Gap::FellBehind => "fell_behind",
            Gap::BrokenChain => "broken_chain",
            Gap::SequenceBack => "sequence_back",
        }
    }
}

fn close_index(reason: CloseReason) -> usize {
    match reason {
        CloseReason::Client => 0,
        CloseReason::Slow => 1,
        CloseReason::Drain => 2,
        CloseReason::TokenExpired => 3,
        CloseReason::Overload => 4,
        CloseReason::Error => 5,
        CloseReason::Throttled => 6,
    }
}

fn target_index(target: &Target) -> usize {
    match target {
        Target::User(_) => 0,
        Target::Channel(_) => 1,
        Target::Broadcast => 2,
    }
}

/// Values read at scrape time from the parts of the gateway that own them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub connections: usize,
    pub max_connections: usize,
    pub subjects: usize,
    pub broker_connected: bool,
    pub draining: bool,
    /// The fullest session queue, in bytes.
    pub queue_max: usize,
    /// Bytes queued across every session.
    pub queue_total: usize,
}

/// Every metric of a gateway. Shared (`Arc`) by the hub, the outboxes and the HTTP handlers.
pub struct Metrics {
    registry: Registry,
    connections: IntGauge,
    max_connections: IntGauge,
    subjects: IntGauge,
    nats_connected: IntGauge,
    draining: IntGauge,
    queue_max: IntGauge,
    queue_total: IntGauge,
    opened: IntCounter,
    closed: [IntCounter; 7],
    received: [IntCounter; 3],
    invalid: IntCounter,
    frames_sent: IntCounter,
    bytes_sent: IntCounter,
    delivery_latency: Histogram,
    resume: [IntCounter; 5],
    replayed: IntCounter,
    gaps: [IntCounter; 4],
    missed_resets: IntCounter,
    refills_given_up: IntCounter,
    publish_requests: IntCounterVec,
    publish_duration: Histogram,
    presence_writes: IntCounter,
    presence_changes: IntCounter,
    client_events: IntCounterVec,
    /// JWKS fetches that succeeded, and failed.
    jwks_fetches: [IntCounter; 2],
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry.register(Box::new(g.clone())).expect("unique metric");
            g
        };
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry.register(Box::new(c.clone())).expect("unique metric");
            c
        };
        let labelled = |name: &str, help: &str, label: &str| {
            let v = IntCounterVec::new(Opts::new(name, help), &[label]).expect("valid metric");
            registry.register(Box::new(v.clone())).expect("unique metric");
            v
        };
        let histogram = |name: &str, help: &str, buckets: &[f64]| {
            let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec())).expect("valid");
            registry.register(Box::new(h.clone())).expect("unique metric");
            h
        };

        let connections = gauge("herald_connections", "Open SSE streams on this gateway");
        let max_connections = gauge("herald_max_connections", "The --max-connections limit of this gateway");
        let subjects = gauge("herald_subjects", "NATS subscriptions held (one per subject, shared by its streams)");
        let nats_connected =
            gauge("herald_nats_connected", "1 while the gateway is connected to NATS (and its stream is set up)");
        let draining = gauge("herald_draining", "1 once the gateway is draining (SIGTERM)");
        let queue_max = gauge(
            "herald_session_queue_bytes",
            "Bytes waiting in the fullest session queue (not yet handed to its socket)",
        );
        let queue_total = gauge("herald_queued_bytes", "Bytes waiting in all session queues together");
        let opened = counter(
            "herald_connections_opened_total",
            "SSE streams answered 200, including those ended at once with a retry hint (overload, drain, throttled)",
        );
        let closed_vec = labelled("herald_connections_closed_total", "SSE streams ended, by reason", "reason");
        let closed = CLOSE_REASONS.map(|r| closed_vec.with_label_values(&[r.as_str()]));
        let received_vec = labelled(
            "herald_events_received_total",
            "Events this gateway received from NATS, by target kind (user, channel, broadcast)",
            "target",
        );
        let received = ["user", "channel", "broadcast"].map(|t| received_vec.with_label_values(&[t]));
        let invalid = counter(
            "herald_events_invalid_total",
            "Events received from NATS and dropped: reserved or malformed Herald-Type, or a payload that is not UTF-8 JSON",
        );
        let frames_sent = counter(
            "herald_frames_sent_total",
            "Live event frames handed to client sockets (one per event per stream)",
        );
        let bytes_sent = counter(
            "herald_bytes_sent_total",
            "Bytes handed to client sockets on SSE streams (events, replays, control frames, heartbeats)",
        );
        let delivery_latency = histogram(
            "herald_delivery_latency_seconds",
            "From an event's Herald-Published-At stamp to its frame handed to a client socket (stamped live events only)",
            LATENCY_BUCKETS,
        );
        let resume_vec = labelled(
            "herald_resume_total",
            "Streams opened with a Last-Event-ID, by result: replayed, a reset reason, or failed",
            "result",
        );
        let resume = ResumeResult::ALL.map(|r| resume_vec.with_label_values(&[r.as_str()]));
        let replayed = counter("herald_replayed_events_total", "Events replayed from the history to resuming streams");
        let gaps_vec = labelled(
            "herald_live_gaps_total",
            "Gaps in live delivery the hub acted on (a refill from the history, or a quiet subject's streams sent to resume), by what showed them",
            "cause",
        );
        let gaps = Gap::ALL.map(|g| gaps_vec.with_label_values(&[g.as_str()]));
        let missed_resets = counter(
            "herald_missed_resets_total",
            "Streams sent a `missed` reset: an event lost in transit came back after the stream had a newer one",
        );
        let refills_given_up = counter(
            "herald_refills_given_up_total",
            "Refills of a gap given up as the live events held meanwhile passed their bound: every stream of the pod resumed",
        );
        let publish_requests =
            labelled("herald_publish_requests_total", "POST /v1/publish requests, by HTTP status", "status");
        for status in PUBLISH_STATUSES {
            publish_requests.with_label_values(&[status]);
        }
        let publish_duration = histogram(
            "herald_publish_duration_seconds",
            "Time to answer POST /v1/publish, through the JetStream acknowledgement",
            PUBLISH_BUCKETS,
        );
        let presence_writes = counter(
            "herald_presence_writes_total",
            "Presence entries this gateway wrote to the store (one per channel per flush, batched)",
        );
        let presence_changes = counter(
            "herald_presence_changes_total",
            "Presence join and leave frames this gateway sent out, counted once per channel (not per stream)",
        );
        let client_events =
            labelled("herald_client_events_total", "POST /v1/client-events requests, by HTTP status", "status");
        for status in CLIENT_EVENT_STATUSES {
            client_events.with_label_values(&[status]);
        }

        let jwks_vec = labelled(
            "herald_jwks_fetches_total",
            "Fetches of the --jwks-url key sets, by result (ok, error: the last good keys are kept)",
            "result",
        );
        let jwks_fetches = ["ok", "error"].map(|r| jwks_vec.with_label_values(&[r]));

        let build_info = prometheus::IntGaugeVec::new(
            Opts::new("herald_build_info", "Always 1: the version and commit this gateway was built from"),
            &["version", "commit"],
        )
        .expect("valid metric");
        build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), env!("HERALD_COMMIT")]).set(1);
        registry.register(Box::new(build_info)).expect("unique metric");
        // process_open_fds above all: every SSE stream holds a socket.
        registry
            .register(Box::new(prometheus::process_collector::ProcessCollector::for_self()))
            .expect("unique metric");

        Metrics {
            registry,
            connections,
            max_connections,
            subjects,
            nats_connected,
            draining,
            queue_max,
            queue_total,
            opened,
            closed,
            received,
            invalid,
            frames_sent,
            bytes_sent,
            delivery_latency,
            resume,
            replayed,
            gaps,
            missed_resets,
            refills_given_up,
            publish_requests,
            publish_duration,
            presence_writes,
            presence_changes,
            client_events,
            jwks_fetches,
        }
    }

    /// A fetch of a JWKS URL, and whether it gave usable keys.
    pub fn jwks_fetched(&self, ok: bool) {
        self.jwks_fetches[usize::from(!ok)].inc();
    }

    /// `n` presence entries written in one batch.
    pub fn presence_written(&self, n: usize) {
        self.presence_writes.inc_by(n as u64);
    }

    /// One join or leave sent to a channel's streams on this gateway.
    pub fn presence_change(&self) {
        self.presence_changes.inc();
    }

    /// A client event request answered with `status`.
    pub fn client_event(&self, status: u16) {
        let status = status.to_string();
        self.client_events.with_label_values(&[status.as_str()]).inc();
    }

    pub fn opened(&self) {
        self.opened.inc();
    }

    pub fn closed(&self, reason: CloseReason) {
        self.closed[close_index(reason)].inc();
    }

    /// An event arrived from the broker for `target`.
    pub fn received(&self, target: &Target) {
        self.received[target_index(target)].inc();
    }

    pub fn invalid(&self) {
        self.invalid.inc();
    }

    /// A chunk of `bytes` handed to a socket, carrying `events` live event frames.
    pub fn sent(&self, events: u64, bytes: u64) {
        if events > 0 {
            self.frames_sent.inc_by(events);
        }
        self.bytes_sent.inc_by(bytes);
    }

    /// A live event stamped at `published_at` (Unix nanoseconds) reached a socket at `now`. A
    /// stamp from the future (the publisher's clock is ahead) counts as 0.
    pub fn delivered(&self, published_at: u64, now: u64) {
        self.delivery_latency.observe(now.saturating_sub(published_at) as f64 / 1e9);
    }

    pub fn resumed(&self, result: ResumeResult, replayed_events: usize) {
        self.resume[result.index()].inc();
        if replayed_events > 0 {
            self.replayed.inc_by(replayed_events as u64);
        }
    }

    /// The hub found a gap in live delivery, opened by `cause`.
    pub fn live_gap(&self, cause: Gap) {
        self.gaps[cause as usize].inc();
    }

    /// `streams` streams were sent a `missed` reset.
    pub fn missed_resets(&self, streams: u64) {
        self.missed_resets.inc_by(streams);
    }

    /// A refill was given up: what it held passed its bound.
    pub fn refill_given_up(&self) {
        self.refills_given_up.inc();
    }

    /// A publish request answered with `status` after `took`.
    pub fn published(&self, status: u16, took: Duration) {
        // Statuses come from this gateway's own handler: a small, fixed set.
        let status = status.to_string();
        self.publish_requests.with_label_values(&[status.as_str()]).inc();
        self.publish_duration.observe(took.as_secs_f64());
    }

    /// Totals for the dashboard's stats reports.
    pub fn totals(&self) -> Totals {
        let mut latency_buckets = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        let proto = self.delivery_latency.metric();
        let h = proto.get_histogram();
        let mut below = 0;
        for b in h.get_bucket() {
            latency_buckets.push(b.cumulative_count() - below);
            below = b.cumulative_count();
        }
        latency_buckets.push(h.get_sample_count() - below);
        Totals {
            frames_sent: self.frames_sent.get(),
            slow_closes: self.closed[close_index(CloseReason::Slow)].get(),
            latency_buckets,
        }
    }

    /// The text exposition of every metric, after setting the scrape-time gauges.
    pub fn render(&self, now: &Snapshot) -> String {
        let as_i64 = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.connections.set(as_i64(now.connections));
        self.max_connections.set(as_i64(now.max_connections));
        self.subjects.set(as_i64(now.subjects));
        self.nats_connected.set(i64::from(now.broker_connected));
        self.draining.set(i64::from(now.draining));
        self.queue_max.set(as_i64(now.queue_max));
        self.queue_total.set(as_i64(now.queue_total));
        let mut out = Vec::with_capacity(8 * 1024);
        // Encoding into a Vec fails only on a malformed metric family, which the registry rejects.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

/// Running totals of one gateway, for the dashboard.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Totals {
    pub frames_sent: u64,
    pub slow_closes: u64,
    /// Deliveries per latency bucket (not cumulative), the last one above the largest bound.
    pub latency_buckets: Vec<u64>,
}

/// The current time in Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// The `q` quantile (0..=1) of deliveries counted per bucket of [`LATENCY_BUCKETS`] (plus the
/// overflow bucket), interpolated linearly within its bucket as PromQL's `histogram_quantile`
/// does. `None` without deliveries.
pub fn quantile(q: f64, buckets: &[u64]) -> Option<f64> {
    // Saturating: the fleet's buckets add up reports from the internal subject, which anything
    // allowed to publish there can forge.
    let total = buckets.iter().fold(0u64, |sum, &n| sum.saturating_add(n));
    if total == 0 {
        return None;
    }
    let rank = q.clamp(0.0, 1.0) * total as f64;
    let mut below = 0u64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && below.saturating_add(n) as f64 >= rank {
            let Some(&upper) = LATENCY_BUCKETS.get(i) else {
                // Above the largest bound: all we know is that it is at least that.
                return LATENCY_BUCKETS.last().copied();
            };
            let lower = if i == 0 { 0.0 } else { LATENCY_BUCKETS[i - 1] };
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(lower + (upper - lower) * within);
        }
        below = below.saturating_add(n);
    }
    LATENCY_BUCKETS.last().copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::names::Name;

    #[test]
    fn every_series_exists_at_zero_before_traffic() {
        let m = Metrics::new();
        let text = m.render(&Snapshot::default());
        for series in [
            "herald_connections 0",
            "herald_connections_opened_total 0",
            "herald_connections_closed_total{reason=\"client\"} 0",
            "herald_connections_closed_total{reason=\"slow\"} 0",
            "herald_connections_closed_total{reason=\"drain\"} 0",
            "herald_connections_closed_total{reason=\"token_expired\"} 0",
            "herald_connections_closed_total{reason=\"overload\"} 0",
            "herald_connections_closed_total{reason=\"error\"} 0",
            "herald_connections_closed_total{reason=\"throttled\"} 0",
            "herald_events_received_total{target=\"user\"} 0",
            "herald_events_received_total{target=\"channel\"} 0",
            "herald_events_received_total{target=\"broadcast\"} 0",
            "herald_frames_sent_total 0",
            "herald_bytes_sent_total 0",
            "herald_delivery_latency_seconds_count 0",
            "herald_resume_total{result=\"replayed\"} 0",
            "herald_resume_total{result=\"history_expired\"} 0",
            "herald_resume_total{result=\"epoch_changed\"} 0",
            "herald_resume_total{result=\"too_many\"} 0",
            "herald_resume_total{result=\"failed\"} 0",
            "herald_replayed_events_total 0",
            "herald_live_gaps_total{cause=\"reconnect\"} 0",
            "herald_live_gaps_total{cause=\"fell_behind\"} 0",
            "herald_live_gaps_total{cause=\"broken_chain\"} 0",
            "herald_live_gaps_total{cause=\"sequence_back\"} 0",
            "herald_missed_resets_total 0",
            "herald_refills_given_up_total 0",
            "herald_publish_requests_total{status=\"200\"} 0",
            "herald_publish_requests_total{status=\"503\"} 0",
            "herald_publish_duration_seconds_count 0",
            "herald_nats_connected 0",
            "herald_subjects 0",
            "herald_session_queue_bytes 0",
        ] {
            assert!(text.lines().any(|l| l == series), "missing {series:?} in\n{text}");
        }
    }

    #[test]
    fn counts_land_on_their_labels() {
        let m = Metrics::new();
        m.closed(CloseReason::Slow);
        m.received(&Target::Channel(Name::parse("secret-room").unwrap()));
        m.resumed(ResumeResult::Reset(ResetReason::TooMany), 0);
        m.resumed(ResumeResult::Replayed, 3);
        m.published(200, Duration::from_millis(2));
        m.published(418, Duration::from_millis(2));
        m.delivered(1_000_000_000, 1_003_000_000);
        m.delivered(2_000_000_000, 1_000_000_000);
        let text = m.render(&Snapshot { connections: 3, broker_connected: true, ..Snapshot::default() });
        for series in [
            "herald_connections 3",
            "herald_nats_connected 1",
            "herald_connections_closed_total{reason=\"slow\"} 1",
            "herald_events_received_total{target=\"channel\"} 1",
            "herald_resume_total{result=\"too_many\"} 1",
            "herald_resume_total{result=\"replayed\"} 1",
            "herald_replayed_events_total 3",
            "herald_publish_requests_total{status=\"200\"} 1",
            "herald_publish_requests_total{status=\"418\"} 1",
            "herald_delivery_latency_seconds_bucket{le=\"0.0005\"} 1",
            "herald_delivery_latency_seconds_bucket{le=\"0.005\"} 2",
            "herald_delivery_latency_seconds_count 2",
        ] {
            assert!(text.lines().any(|l| l == series), "missing {series:?} in\n{text}");
        }
        assert!(!text.contains("secret-room"), "no channel names in labels");
        assert_eq!(m.totals().slow_closes, 1);
        assert_eq!(m.totals().latency_buckets.iter().sum::<u64>(), 2);
    }

    #[test]
    fn quantiles_interpolate_within_buckets() {
        let mut buckets = vec![0; LATENCY_BUCKETS.len() + 1];
        assert_eq!(quantile(0.99, &buckets), None);
        buckets[4] = 100; // (0.005, 0.01]
        let p50 = quantile(0.5, &buckets).unwrap();
        assert!((p50 - 0.0075).abs() < 1e-9, "{p50}");
        buckets[LATENCY_BUCKETS.len()] = 100; // above 30 s
        assert_eq!(quantile(0.99, &buckets), Some(30.0));
        assert!(quantile(0.25, &buckets).unwrap() <= 0.01);
    }
}
