//! Traces: the spans Herald records and the W3C trace context that links them across pods.
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

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::{EventId, Target};
use crate::outbox::Totals;

/// The `tracing` target of every span meant for export (the exporter takes these only).
pub const TARGET: &str = "herald_gateway::trace";

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest `traceparent` accepted (version 00 is 55 characters; later versions may append).
const MAX_TRACEPARENT: usize = 128;
/// Longest `tracestate` carried on (the W3C minimum that must be propagated).
const MAX_TRACESTATE: usize = 512;
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

/// The W3C trace context of an event, as its headers carry it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TraceContext {
    pub traceparent: String,
    pub tracestate: Option<String>,
}

impl TraceContext {
    /// Reads `traceparent` (and `tracestate`) through `get`; `None` without a usable
    /// `traceparent`. Oversized values are ignored, never copied.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        let traceparent = get(TRACEPARENT).filter(|v| v.len() <= MAX_TRACEPARENT)?;
        let tracestate = get(TRACESTATE).filter(|v| !v.is_empty() && v.len() <= MAX_TRACESTATE);
        Some(TraceContext { traceparent: traceparent.to_owned(), tracestate: tracestate.map(str::to_owned) })
    }

    /// The context of `span`, to hand to the next hop; `None` when the span is not recorded.
    pub fn of(span: &Span) -> Option<Self> {
        let cx = span.context();
        if !cx.span().span_context().is_valid() {
            return None;
        }
        let mut carrier = TraceContext::default();
        TraceContextPropagator::new().inject_context(&cx, &mut carrier);
        (!carrier.traceparent.is_empty()).then_some(carrier)
    }

    /// The OpenTelemetry context this names (invalid when the header is malformed).
    fn otel(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }

    /// The span this names, for links.
    pub fn span_context(&self) -> SpanContext {
        self.otel().span().span_context().clone()
    }
}

impl Extractor for TraceContext {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            TRACEPARENT => Some(&self.traceparent),
            TRACESTATE => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![TRACEPARENT, TRACESTATE]
    }
}

impl Injector for TraceContext {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE if !value.is_empty() => self.tracestate = Some(value),
            _ => {}
        }
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_trace_headers() {
        let tp = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let got = TraceContext::from_headers(|k| match k {
            TRACEPARENT => Some(tp),
            TRACESTATE => Some("congo=t61rcWkgMzE"),
            _ => None,
        })
        .unwrap();
        assert_eq!(got.traceparent, tp);
        assert_eq!(got.tracestate.as_deref(), Some("congo=t61rcWkgMzE"));
        let sc = got.span_context();
        assert!(sc.is_valid() && sc.is_remote() && sc.is_sampled());
        assert_eq!(sc.trace_id().to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");

        assert_eq!(TraceContext::from_headers(|_| None), None);
        let long = "x".repeat(MAX_TRACEPARENT + 1);
        assert_eq!(TraceContext::from_headers(|k| (k == TRACEPARENT).then_some(long.as_str())), None);
        let state = "a=b,".repeat(MAX_TRACESTATE);
        let got = TraceContext::from_headers(|k| match k {
            TRACEPARENT => Some(tp),
            _ => Some(state.as_str()),
        })
        .unwrap();
        assert_eq!(got.tracestate, None, "an oversized tracestate is dropped");
    }

    #[test]
    fn malformed_traceparents_name_no_span() {
        for bad in [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "zz-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
        ] {
            let tc = TraceContext { traceparent: bad.into(), tracestate: None };
            assert!(!tc.span_context().is_valid(), "{bad:?}");
        }
    }

    #[test]
    fn no_span_means_no_context() {
        // Without the exporter's layer, a span has no OpenTelemetry context to pass on.
        assert_eq!(TraceContext::of(&Span::none()), None);
    }
}
