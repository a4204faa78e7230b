//! The run's summary: the merged counters, histograms and samples as the JSON report, and
//! whether the load generator itself was the limit.

use std::collections::BTreeMap;

use serde_json::{Value, json};

use super::Second;
use crate::cli::{RunArgs, via_name};
use crate::proto::{Counters, Hist, Scenario, ShareReport};
use crate::publish;

pub(super) struct SummaryIn<'a> {
    pub scenario: Scenario,
    pub args: &'a RunArgs,
    pub links_processes: usize,
    pub links_local: bool,
    pub reports: &'a [ShareReport],
    pub published: &'a publish::Published,
    pub timeline: &'a BTreeMap<u64, Second>,
    pub started_ms: u64,
    pub connected_ms: u64,
    /// (pid, before, after connecting, at the end)
    pub rss: (Option<u32>, Option<u64>, Option<u64>, Option<u64>),
    pub churn: Option<Value>,
    pub kill_info: Option<(u64, u64)>,
    pub cpu_self: f64,
    pub wall: f64,
}

/// A client process at or above this share of one core was the bottleneck, not the server.
const SATURATED: f64 = 0.9;

/// Whether the load generator, not the server, set the numbers: a process at `SATURATED` of its
/// core over the run, or, for a run that measures connecting, the processes at `SATURATED` of
/// their CPUs while connecting. A run that measures deliveries is not judged by its connect
/// phase: a generator that connects as fast as it can (and so saturates) before publishing still
/// measures the deliveries that follow.
pub(super) fn client_saturated(scenario: Scenario, max_process_ratio: f64, connect_ratio: f64) -> bool {
    let ratio = if scenario.delivers() { max_process_ratio } else { max_process_ratio.max(connect_ratio) };
    ratio >= SATURATED
}

/// Seconds from `start_ms` to `end_ms`, when the span is not empty.
fn span_secs(start_ms: u64, end_ms: u64) -> Option<f64> {
    (end_ms > start_ms).then(|| (end_ms - start_ms) as f64 / 1000.0)
}

pub(super) fn summary(s: SummaryIn<'_>) -> Value {
    let args = s.args;
    let mut c = Counters::default();
    let mut latency = Hist::default();
    let mut connect_latency = Hist::default();
    let mut catch_up = Hist::default();
    let (mut cpu_shares, mut max_ratio, mut connect_cpu) = (0.0f64, 0.0f64, 0.0f64);
    let mut missing_examples = Vec::new();
    let mut share_connect_ratio = 0.0f64;
    let (mut connect_start, mut connect_end) = (u64::MAX, 0u64);
    for r in s.reports {
        c.add(&r.counters);
        latency.merge(&r.latency);
        connect_latency.merge(&r.connect_latency);
        catch_up.merge(&r.catch_up);
        cpu_shares += r.cpu_seconds;
        connect_cpu += r.connect_cpu_seconds;
        if let Some(secs) = span_secs(r.connect_start_ms, r.connect_end_ms) {
            // One share is one single-threaded process: its own ratio is against one core.
            share_connect_ratio = share_connect_ratio.max(r.connect_cpu_seconds / secs);
        }
        let room = crate::proto::MISSING_EXAMPLES.saturating_sub(missing_examples.len());
        missing_examples.extend(r.missing_examples.iter().take(room).cloned());
        if r.wall_seconds > 0.0 {
            max_ratio = max_ratio.max(r.cpu_seconds / r.wall_seconds);
        }
        if r.connect_start_ms > 0 {
            connect_start = connect_start.min(r.connect_start_ms);
        }
        connect_end = connect_end.max(r.connect_end_ms);
    }
    let in_process = s.links_processes <= 1 && args.processes <= 1 && s.reports.len() == 1;
    // In-process, the share's CPU is the process's CPU: count it once.
    let cpu_total = if in_process { s.cpu_self } else { s.cpu_self + cpu_shares };
    let coordinator_ratio = if s.wall > 0.0 { s.cpu_self / s.wall } else { 0.0 };
    max_ratio = max_ratio.max(coordinator_ratio);
    let connect_secs = span_secs(connect_start, connect_end).unwrap_or(f64::NAN);
    // While connecting, local load-generator processes share the CPUs they may run on (remote
    // workers have their own): a ratio near 1 means the generator, not the server, set the
    // connect rate.
    let connect_cpu_ratio = if s.links_local && connect_secs.is_finite() && connect_secs > 0.0 {
        share_connect_ratio.max(connect_cpu / (connect_secs * crate::sys::allowed_cpus() as f64))
    } else {
        share_connect_ratio
    };
    let publish_secs = args.duration as f64;
    let (pid, before, connected, end) = s.rss;
    let per_conn = match (before, connected) {
        (Some(b), Some(a)) if c.connected > 0 => Some((a as f64 - b as f64) / c.connected as f64),
        _ => None,
    };
    let timeline: Vec<Value> = s
        .timeline
        .iter()
        .map(|(sec, x)| {
            let h = &x.latency.0;
            let q = |p: f64| if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(p) as f64 / 1000.0) };
            json!({
                "t": sec,
                "connections": x.connections,
                "deliveries": x.deliveries,
                "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                "max_ms": if h.is_empty() { Value::Null } else { json!(h.max() as f64 / 1000.0) },
                "gateway_rss_bytes": x.rss,
            })
        })
        .collect();
    let mut out = json!({
        "scenario": s.scenario.name(),
        "mode": if args.sse_url_template.is_some() { "generic" } else { "herald" },
        "targets": args.target,
        "connections": args.connections,
        "rate": args.rate,
        "duration_secs": args.duration,
        "started_unix_ms": s.started_ms,
        "delivered": c.delivered,
        "expected": c.expected,
        "missing": c.missing,
        "missing_examples": missing_examples,
        "duplicates": c.duplicates,
        "out_of_order": c.out_of_order,
        "received": c.received,
        "deliveries_per_sec": if s.scenario.delivers() { json!((c.received as f64 / publish_secs).round()) } else { Value::Null },
        "latency_ms": latency.summary_ms(),
        "connect": {
            "attempts": c.connect_attempts,
            "connected": c.connected,
            "failed": c.connect_failed,
            "seconds": if connect_secs.is_finite() { json!(connect_secs) } else { Value::Null },
            "rate_per_sec": if connect_secs.is_finite() && connect_secs > 0.0 { json!((c.connected as f64 / connect_secs).round()) } else { Value::Null },
            "latency_ms": connect_latency.summary_ms(),
            "all_connected_after_ms": s.connected_ms.saturating_sub(s.started_ms),
            "client_cpu_ratio": (connect_cpu_ratio * 1000.0).round() / 1000.0,
        },
        "disconnects": c.disconnects,
        "reconnects": c.reconnects,
        "resets": c.resets,
        "client": {
            "processes": s.reports.len(),
            "cpu_seconds": (cpu_total * 1000.0).round() / 1000.0,
            "wall_seconds": (s.wall * 1000.0).round() / 1000.0,
            "max_process_cpu_ratio": (max_ratio * 1000.0).round() / 1000.0,
        },
        "client_saturated": client_saturated(s.scenario, max_ratio, connect_cpu_ratio),
        "gateway": {
            "pid": pid,
            "rss_before_bytes": before,
            "rss_connected_bytes": connected,
            "rss_end_bytes": end,
            "rss_per_connection_bytes": per_conn.map(|v| v.round()),
        },
        "timeline": timeline,
    });
    let o = out.as_object_mut().expect("object");
    if s.scenario.delivers() {
        o.insert(
            "publish".into(),
            json!({
                "via": via_name(args.via(s.scenario)),
                "published": s.published.published,
                "errors": s.published.errors,
                "behind_max_ms": (s.published.behind_max_ms * 10.0).round() / 10.0,
            }),
        );
    }
    if let Some(ch) = s.churn {
        o.insert("churn".into(), json!({"cycles": args.cycles, "gateway": ch}));
    }
    if let Some((p, at)) = s.kill_info {
        o.insert(
            "resume".into(),
            json!({
                "killed_after_publishes": p,
                "killed_unix_ms": at / 1_000_000,
                "caught_up": c.caught_up,
                "not_caught_up": c.not_caught_up,
                "catch_up_ms": catch_up.summary_ms(),
            }),
        );
    }
    if s.scenario == Scenario::Soak {
        let rss: Vec<u64> = s.timeline.values().filter_map(|x| x.rss).collect();
        let minute_p99 = |first: bool| {
            let secs: Vec<&Second> = if first {
                s.timeline.values().take(60).collect()
            } else {
                s.timeline.values().rev().take(60).collect()
            };
            let mut h = Hist::default();
            for x in secs {
                h.merge(&x.latency);
            }
            if h.0.is_empty() { Value::Null } else { json!(h.0.value_at_quantile(0.99) as f64 / 1000.0) }
        };
        o.insert(
            "soak".into(),
            json!({
                "rss_first_bytes": rss.first(),
                "rss_last_bytes": rss.last(),
                "rss_max_bytes": rss.iter().max(),
                "p99_first_minute_ms": minute_p99(true),
                "p99_last_minute_ms": minute_p99(false),
            }),
        );
    }
    out
}
