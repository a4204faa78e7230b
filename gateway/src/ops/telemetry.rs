//! Logs and traces: `tracing` with `RUST_LOG`-style filters, as text or JSON lines, and, when an
//! OTLP endpoint is configured, OpenTelemetry traces exported over OTLP/HTTP (protobuf).
//!
//! Traces follow the standard `OTEL_*` variables: they are on only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; the exporter also
//! reads `OTEL_EXPORTER_OTLP_HEADERS`/`_TIMEOUT`, the SDK `OTEL_SERVICE_NAME`,
//! `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]` and `OTEL_BSP_*`. Without an endpoint
//! nothing of OpenTelemetry is set up: no thread, no span, no header parsing (`trace::on`).
//!
//! Runtimes: the SDK's batch processor exports from a thread of its own, with reqwest's blocking
//! client (which runs its I/O on one more thread). Neither touches actix's single-threaded
//! workers or the hub runtime; a span ending there only hands its data to a bounded channel.
//!
//! Only spans of [`trace::TARGET`] are exported, whatever `RUST_LOG` says, and log events never
//! become span events (they may name users; span attributes never do). With traces on, JSON log
//! lines written inside a span carry its `trace_id` and `span_id`.

use std::fmt;
use std::io::IsTerminal;
use std::sync::OnceLock;

use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::{Protocol, WithExportConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::dispatcher::WeakDispatch;
use tracing::{Event, Subscriber};
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields, JsonFields, Writer};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

use crate::config::LogFormat;
use crate::ops::trace;

const DEFAULT_FILTER: &str = "info,async_nats=warn,actix_server=warn,actix_web=warn,opentelemetry=warn,opentelemetry_sdk=warn,opentelemetry_otlp=warn";
const DEFAULT_SERVICE_NAME: &str = "herald-gateway";
const ENDPOINT_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"];
const PROTOCOL_VARS: [&str; 2] = ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"];

/// What must outlive the gateway: the trace pipeline, flushed by [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Exports the spans still queued and stops the exporter. Call it outside any async runtime
    /// (it blocks until the export thread is done).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "could not flush the last spans");
        }
    }
}

/// Installs the global subscriber, and the trace exporter when an OTLP endpoint is configured.
/// Default filter: `info` (quiet dependencies). Must run outside any async runtime.
pub fn init(format: LogFormat) -> Telemetry {
    let filter = || EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(DEFAULT_FILTER));
    let endpoint = ENDPOINT_VARS.iter().find_map(|v| std::env::var(v).ok().filter(|e| !e.trim().is_empty()));
    let ansi = std::io::stderr().is_terminal();

    let Some(endpoint) = endpoint else {
        let builder = tracing_subscriber::fmt().with_env_filter(filter()).with_writer(std::io::stderr).with_ansi(ansi);
        let _ = match format {
            LogFormat::Json => builder.json().flatten_event(true).try_init(),
            LogFormat::Text => builder.try_init(),
        };
        return Telemetry { provider: None };
    };

    // Checked before the subscriber exists: what it finds is logged once it does.
    let protocol = PROTOCOL_VARS.iter().find_map(|v| std::env::var(v).ok()).filter(|p| p != "http/protobuf");
    let (provider, problem) = match exporter(&endpoint) {
        Ok(provider) => (Some(provider), None),
        Err(problem) => (None, Some(problem)),
    };
    let exported = || filter_fn(|meta| meta.is_span() && meta.target() == trace::TARGET);
    let otel = provider.as_ref().map(|provider| {
        tracing_opentelemetry::layer()
            .with_tracer(provider.tracer("herald-gateway"))
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_target(false)
            .with_filter(exported())
    });
    // The log layer also sees the exported spans, so that lines written inside them can name
    // their trace even when `RUST_LOG` is stricter than `info`.
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(ansi);
    let logs = match format {
        LogFormat::Json => fmt
            .fmt_fields(JsonFields::new())
            .event_format(WithTraceIds(format::format().json().flatten_event(true)))
            .with_filter(filter().or(exported()))
            .boxed(),
        LogFormat::Text => fmt.with_filter(filter().or(exported())).boxed(),
    };
    if tracing_subscriber::registry().with(otel).with(logs).try_init().is_ok() {
        let _ = DISPATCH.set(tracing::dispatcher::get_default(|d| d.downgrade()));
    }
    if let Some(protocol) = protocol {
        tracing::warn!(protocol, "OTEL_EXPORTER_OTLP_PROTOCOL is not supported; exporting http/protobuf");
    }
    match problem {
        None => {
            trace::enable();
            tracing::info!(endpoint = %endpoint, "exporting traces over OTLP/HTTP");
        }
        Some(problem) => tracing::error!("traces are off: {problem}"),
    }
    Telemetry { provider }
}

/// The batch exporter and its provider, configured from the `OTEL_*` variables.
fn exporter(endpoint: &str) -> Result<SdkTracerProvider, String> {
    if !endpoint.trim_start().starts_with("http://") {
        return Err(format!(
            "the OTLP endpoint {endpoint:?} is not an http:// URL; this gateway exports OTLP/HTTP without TLS, \
             to a collector next to it"
        ));
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(Protocol::HttpBinary)
        .build()
        .map_err(|e| e.to_string())?;
    Ok(SdkTracerProvider::builder().with_resource(resource()).with_batch_exporter(exporter).build())
}

/// The SDK's resource (`OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`), named `herald-gateway`
/// unless those name it otherwise.
fn resource() -> Resource {
    let named = std::env::var("OTEL_SERVICE_NAME").is_ok_and(|s| !s.is_empty())
        || std::env::var("OTEL_RESOURCE_ATTRIBUTES")
            .is_ok_and(|a| a.split(',').any(|kv| kv.trim().starts_with("service.name=")));
    let builder =
        Resource::builder().with_attribute(opentelemetry::KeyValue::new("service.version", env!("CARGO_PKG_VERSION")));
    if named { builder.build() } else { builder.with_service_name(DEFAULT_SERVICE_NAME).build() }
}

/// The installed subscriber, to read a span's trace context while formatting a log line.
static DISPATCH: OnceLock<WeakDispatch> = OnceLock::new();

/// JSON log lines with the `trace_id` and `span_id` of the span they were written in.
struct WithTraceIds<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(&self, ctx: &FmtContext<'_, S, N>, mut writer: Writer<'_>, event: &Event<'_>) -> fmt::Result {
        let Some((trace_id, span_id)) = trace_ids(ctx) else {
            return self.0.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        match line.trim_end().strip_suffix('}') {
            Some(object) => {
                let sep = if object.trim_end().ends_with('{') { "" } else { "," };
                writeln!(writer, "{object}{sep}\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\"}}")
            }
            None => writer.write_str(&line),
        }
    }
}

/// The ids of the exported span an event was written in (its own, or its nearest ancestor's).
fn trace_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let dispatch = DISPATCH.get()?.upgrade()?;
    let id = ctx.event_scope()?.find(|s| s.metadata().target() == trace::TARGET)?.id();
    let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid().then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}
