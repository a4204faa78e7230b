//! The W3C trace context an event carries (`traceparent`, `tracestate`): read from a publish
//! request's or a NATS message's headers, written into the headers of the next hop. The spans
//! that use it are in `trace.rs`.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";
pub const TRACESTATE: &str = "tracestate";

/// Longest `traceparent` accepted (version 00 is 55 characters; later versions may append).
const MAX_TRACEPARENT: usize = 128;
/// Longest `tracestate` carried on (the W3C minimum that must be propagated).
const MAX_TRACESTATE: usize = 512;

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
    pub(crate) fn otel(&self) -> opentelemetry::Context {
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
