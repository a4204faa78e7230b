//! Traces: the spans Herald records, linked across pods by the W3C trace context
//! (`trace_context.rs`).
//!
//! One event's trace: a publisher's `traceparent` header on `POST /v1/publish` is the parent of
//! the `publish` span; the `publish` span's own context travels in the NATS message headers
//! (`traceparent`, `tracestate`), stored with the event by JetStream and republished to every
//! gateway; each gateway that hands the event to its sessions records a `deliver` span, a child
//! of it. Publishers that write to NATS directly put their own `traceparent` there.
//!
//! Everything here is behind [`on`]: without an OTLP endpoint (see `telemetry.rs`) no span is
//! created and no trace header is read, on any path. When on, the hot paths cost one span per
//! event per pod (`deliver`), never one per session or frame.
//!
//! Attributes never carry user ids, channel names or secrets: target kinds and counts only.

use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::trace::TraceContextExt;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::delivery::outbox::Totals;
use crate::event::{EventId, Target};
use crate::ops::trace_context::TraceContext;

/// The `tracing` target of every span meant for export (the exporter takes these only).
pub const TARGET: &str = "herald_gateway::trace";

/// Most replayed events a `resume` span links to.
const MAX_RESUME_LINKS: usize = 32;

static ON: AtomicBool = AtomicBool::new(false);

/// Whether traces are exported. Checked before creating any span or reading any trace header.
#[inline]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// Called once the exporter is installed.
pub(crate) fn enable() {
    ON.store(true, Ordering::Relaxed);
}

/// Makes `parent` (when it names a valid span) the parent of the not yet started `span`.
fn adopt(span: &Span, parent: Option<&TraceContext>) {
    if let Some(parent) = parent {
        let cx = parent.otel();
        if cx.span().span_context().is_valid() {
            let _ = span.set_parent(cx);
        }
    }
}

/// `publish`: one `POST /v1/publish`, from the request to the JetStream acknowledgement. Its
/// parent is the publisher's `traceparent`, when the request carries one.
pub fn publish_span(parent: Option<&TraceContext>) -> Span {
    let span = tracing::info_span!(target: TARGET, parent: None, "publish", otel.kind = "server");
    adopt(&span, parent);
    span
}

/// Records what a publish request asked for: target kinds and count, durability.
pub fn record_publish(span: &Span, targets: &[Target], durable: bool) {
    let mut kinds: Vec<&'static str> = Vec::with_capacity(3);
    for target in targets {
        if !kinds.contains(&target.kind()) {
            kinds.push(target.kind());
        }
    }
    span.set_attribute("herald.targets", kinds.join(","));
    span.set_attribute("herald.target_count", targets.len() as i64);
    span.set_attribute("herald.durable", durable);
}

/// Records the HTTP status a request ended with (an error status for 5xx).
pub fn record_status(span: &Span, status: u16, error: Option<&str>) {
    span.set_attribute("http.response.status_code", i64::from(status));
    if let Some(code) = error {
        span.set_attribute("herald.error", code.to_owned());
    }
    if status >= 500 {
        span.set_status(opentelemetry::trace::Status::error(error.unwrap_or("error").to_owned()));
    }
}

/// `deliver`: one event received from NATS and handed to this pod's sessions. Its parent is the
/// context in the event's headers (the `publish` span, or a direct NATS publisher's span).
pub fn deliver_span(parent: Option<&TraceContext>, target: &Target, id: Option<&EventId>) -> Span {
    let span = tracing::info_span!(target: TARGET, parent: None, "deliver", otel.kind = "consumer");
    adopt(&span, parent);
    span.set_attribute("herald.target", target.kind());
    span.set_attribute("messaging.system", "nats");
    if let Some(id) = id {
        span.set_attribute("herald.event_id", id.to_string());
    }
    span
}

/// Records how a delivery went: sessions that got the frame, sessions cut off as too slow for
/// it, or why the event was dropped.
pub fn record_delivery(span: &Span, sessions: u64, slow: u64, problem: Option<&'static str>) {
    span.set_attribute("herald.sessions", sessions as i64);
    if slow > 0 {
        span.set_attribute("herald.slow_closes", slow as i64);
    }
    if let Some(problem) = problem {
        span.set_status(opentelemetry::trace::Status::error(problem));
    }
}

/// `connection`: one `GET /events`, from the request until the stream closes. Its parent is the
/// request's `traceparent`, if a client sent one.
pub fn connection_span(parent: Option<&TraceContext>) -> Span {
    let span = tracing::info_span!(target: TARGET, parent: None, "connection", otel.kind = "server");
    adopt(&span, parent);
    span
}

/// Records how a connection ended (the span ends when the session drops it).
pub fn record_close(span: &Span, reason: &'static str, duration_ms: u64, totals: Totals) {
    span.set_attribute("herald.close_reason", reason);
    span.set_attribute("herald.duration_ms", duration_ms as i64);
    span.set_attribute("herald.events", totals.events as i64);
    span.set_attribute("herald.frames", totals.frames as i64);
    span.set_attribute("herald.bytes", totals.bytes as i64);
}

/// `resume`: the replay a reconnecting client asked for (a child of the current `connection`).
pub fn resume_span() -> Span {
    tracing::info_span!(target: TARGET, "resume")
}

/// Records how a resume went: `replayed` (with the count) or the reset reason, and links the
/// span to the traces of (the first of) the replayed events.
pub fn record_resume<'a>(span: &Span, result: &str, replayed: usize, traces: impl Iterator<Item = &'a TraceContext>) {
    span.set_attribute("herald.resume.result", result.to_owned());
    span.set_attribute("herald.replayed", replayed as i64);
    for trace in traces.take(MAX_RESUME_LINKS) {
        span.add_link(trace.span_context());
    }
}
