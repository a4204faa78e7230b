//! `/metrics` counts what happened: a scripted workload (streams, publishes to a user, a channel
//! and everyone, a stalled client cut off as slow, a resume, a reset, a SIGTERM drain) against a
//! real gateway and NATS, with every counter checked against the script, and every scrape
//! checked to be valid Prometheus text exposition.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_testkit::{Gateway, Nats, Sse, eventually, http, token};
use prometheus_parse::{LineInfo, Scrape, Value};

/// One parsed scrape.
struct Metrics(Scrape);

impl Metrics {
    /// The value of the series `name` with exactly `labels`; panics when it is missing.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        let sample = self
            .0
            .samples
            .iter()
            .find(|s| {
                s.metric == name
                    && s.labels.len() == labels.len()
                    && labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v))
            })
            .unwrap_or_else(|| panic!("no series {name}{labels:?}"));
        match &sample.value {
            Value::Counter(v) | Value::Gauge(v) | Value::Untyped(v) => *v,
            other => panic!("{name} is not a single value: {other:?}"),
        }
    }

    fn one(&self, name: &str) -> f64 {
        self.get(name, &[])
    }

    /// `herald_connections_closed_total{reason}`.
    fn closed(&self, reason: &str) -> f64 {
        self.get("herald_connections_closed_total", &[("reason", reason)])
    }

    fn received(&self, target: &str) -> f64 {
        self.get("herald_events_received_total", &[("target", target)])
    }

    fn resumed(&self, result: &str) -> f64 {
        self.get("herald_resume_total", &[("result", result)])
    }

    fn publishes(&self, status: &str) -> f64 {
        self.get("herald_publish_requests_total", &[("status", status)])
    }
}

/// Scrapes `/metrics` and checks that it is valid text exposition: the content type, every
/// line a `# HELP`, a `# TYPE` or a sample whose value is a number, every sample of a family
/// declared by a `# TYPE` line before it, and no series twice.
async fn scrape(addr: SocketAddr) -> Metrics {
    let res = http(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("content-type"), Some("text/plain; version=0.0.4; charset=utf-8"));
    let text = String::from_utf8(res.body).expect("UTF-8 exposition");
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut typed: HashSet<String> = HashSet::new();
    let mut series = HashSet::new();
    for line in text.lines() {
        match LineInfo::parse(line) {
            LineInfo::Doc { .. } | LineInfo::Empty => {}
            LineInfo::Type { metric_name, metric_alias, .. } => {
                typed.insert(metric_alias.unwrap_or(metric_name));
            }
            LineInfo::Sample { metric_name, labels, value, timestamp } => {
                assert!(timestamp.is_none(), "no timestamps: {line}");
                assert!(
                    value.parse::<f64>().is_ok() || ["+Inf", "-Inf", "NaN"].contains(&value),
                    "not a number: {line}"
                );
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|s| metric_name.strip_suffix(s).filter(|f| typed.contains(*f)))
                    .unwrap_or(metric_name);
                assert!(typed.contains(family), "sample before its # TYPE line: {line}");
                assert!(series.insert(format!("{metric_name}{{{}}}", labels.unwrap_or(""))), "duplicate: {line}");
            }
            LineInfo::Ignored => panic!("not valid exposition: {line:?}"),
        }
    }
    let parsed = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    for family in [
        "herald_connections",
        "herald_connections_opened_total",
        "herald_connections_closed_total",
        "herald_events_received_total",
        "herald_frames_sent_total",
        "herald_bytes_sent_total",
        "herald_delivery_latency_seconds",
        "herald_resume_total",
        "herald_replayed_events_total",
        "herald_live_gaps_total",
        "herald_missed_resets_total",
        "herald_refills_given_up_total",
        "herald_publish_requests_total",
        "herald_publish_duration_seconds",
        "herald_nats_connected",
        "herald_subjects",
        "herald_session_queue_bytes",
    ] {
        assert!(parsed.docs.get(family).is_some_and(|d| !d.is_empty()), "{family} has a HELP line");
    }
    Metrics(parsed)
}

/// A stream that is read to its `connected` frame.
async fn connect(addr: SocketAddr, user: &str, channels: &[&str]) -> Sse {
    let mut s = Sse::with_token(addr, &token(user, &["*"], 3600), channels).await;
    assert_eq!(s.next().await.event, "connected");
    s
}

const PAD: usize = 4 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_a_scripted_workload() {
    let nats = Nats::start();
    let mut gw = Gateway::serve(&nats)
        .args(&["--heartbeat-secs", "1", "--client-queue-bytes", "262144", "--drain-secs", "6", "--retry-ms", "500"])
        .start();
    gw.ready().await;

    // What the process is and holds: its build, and its open files (every stream is a socket).
    let text = gw.metrics_text().await;
    let value = |name: &str| {
        let line = text.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name}"));
        line.rsplit_once(' ').unwrap().1.parse::<f64>().unwrap()
    };
    let info = text.lines().find(|l| l.starts_with("herald_build_info{")).expect("herald_build_info");
    assert!(info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))), "{info}");
    assert!(info.contains("commit=\"") && !info.contains("commit=\"\""), "{info}");
    assert_eq!(value("herald_build_info{"), 1.0);
    assert!(value("process_open_fds ") >= 5.0, "a listener, NATS, its own files");
    assert!(value("process_max_fds ") >= value("process_open_fds "));
    assert!(value("process_resident_memory_bytes ") > 1e6);
    assert!(value("process_cpu_seconds_total ") >= 0.0);

    // Before any traffic: every series exists, at 0.
    let m = scrape(gw.addr).await;
    for reason in ["client", "slow", "drain", "token_expired", "overload", "error", "throttled"] {
        assert_eq!(m.closed(reason), 0.0, "{reason}");
    }
    for target in ["user", "channel", "broadcast"] {
        assert_eq!(m.received(target), 0.0, "{target}");
    }
    for result in ["replayed", "history_expired", "epoch_changed", "too_many", "failed"] {
        assert_eq!(m.resumed(result), 0.0, "{result}");
    }
    for status in ["200", "400", "401", "413", "503"] {
        assert_eq!(m.publishes(status), 0.0, "{status}");
    }
    for name in [
        "herald_connections",
        "herald_connections_opened_total",
        "herald_frames_sent_total",
        "herald_bytes_sent_total",
        "herald_replayed_events_total",
        "herald_delivery_latency_seconds_count",
        "herald_publish_duration_seconds_count",
        "herald_subjects",
        "herald_session_queue_bytes",
    ] {
        assert_eq!(m.one(name), 0.0, "{name}");
    }
    assert_eq!(m.one("herald_nats_connected"), 1.0);

    // Three streams; one event each to a user, a channel and everyone.
    let mut u1 = connect(gw.addr, "u1", &["room:1"]).await;
    let mut u2 = connect(gw.addr, "u2", &["room:1"]).await;
    let mut u3 = connect(gw.addr, "u3", &[]).await;
    let mut ids = Vec::new();
    for target in [
        serde_json::json!({"users": ["u1"]}),
        serde_json::json!({"channels": ["room:1"]}),
        serde_json::json!({"broadcast": true}),
    ] {
        let mut body = serde_json::json!({"type": "tick", "data": {"n": ids.len()}});
        body.as_object_mut().unwrap().extend(target.as_object().unwrap().clone());
        let res = gw.publish(body).await;
        assert_eq!(res.status, 200);
        ids.push(res.json()["ids"][0].as_str().unwrap().to_owned());
    }
    assert_eq!(gw.publish(serde_json::json!({"data": 1})).await.status, 400);
    let unauthorized =
        http(gw.addr, "POST", "/v1/publish", &[("Authorization", "Bearer wrong-key-0123456789")], Some(b"{}")).await;
    assert_eq!(unauthorized.status, 401);
    // Each stream reads what it should get: u1 three events, u2 two, u3 one.
    for (s, n) in [(&mut u1, 3), (&mut u2, 2), (&mut u3, 1)] {
        for _ in 0..n {
            assert_eq!(s.next_event().await.event, "tick");
        }
    }
    let m = scrape(gw.addr).await;
    assert_eq!(m.one("herald_connections"), 3.0);
    assert_eq!(m.one("herald_connections_opened_total"), 3.0);
    assert_eq!((m.received("user"), m.received("channel"), m.received("broadcast")), (1.0, 1.0, 1.0));
    assert_eq!(m.one("herald_frames_sent_total"), 6.0, "one frame per event per stream");
    assert_eq!(m.one("herald_delivery_latency_seconds_count"), 6.0, "every delivery was stamped and timed");
    assert!(m.one("herald_delivery_latency_seconds_sum") > 0.0);
    assert!(m.one("herald_bytes_sent_total") > 0.0);
    assert_eq!((m.publishes("200"), m.publishes("400"), m.publishes("401")), (3.0, 1.0, 1.0));
    assert_eq!(m.one("herald_publish_duration_seconds_count"), 5.0);
    // u1, u2, u3, room:1, broadcast: one subscription each, shared.
    assert_eq!(m.one("herald_subjects"), 5.0);
    assert_eq!(m.one("herald_subjects"), gw.stats().await["subjects"].as_f64().unwrap());

    // A stalled client on a firehose channel, next to a reader that keeps up: the stalled one
    // is cut off as slow, and only what reached its socket counts as sent.
    let mut reader = connect(gw.addr, "reader", &["firehose"]).await;
    let stalled = herald_testkit::sse::firehose_client(gw.addr, "stalled", herald_testkit::sse::SMALL_WINDOW).await;
    let before = scrape(gw.addr).await;
    let publisher = nats.client().await;
    let payload = Bytes::from(format!("{{\"pad\":\"{}\"}}", "x".repeat(PAD)));
    let mut published = 0u64;
    let started = Instant::now();
    let mut read = 0u64;
    while scrape(gw.addr).await.closed("slow") < 1.0 {
        assert!(started.elapsed() < Duration::from_secs(30), "the stalled client was never cut off");
        // 50 events a batch (200 KiB: the reader's queue holds them even if it lags), as fast
        // as the reader takes them.
        for _ in 0..50 {
            publisher.publish("herald.live.channel.firehose", payload.clone()).await.unwrap();
        }
        publisher.flush().await.unwrap();
        published += 50;
        while read < published {
            assert_eq!(reader.next_event().await.event, "message");
            read += 1;
        }
    }
    drop(stalled);
    let m = scrape(gw.addr).await;
    assert_eq!(m.closed("slow"), 1.0);
    assert_eq!(m.one("herald_connections"), 4.0, "the stalled client is gone");
    assert_eq!(m.received("channel") - before.received("channel"), published as f64, "every firehose event arrived");
    let to_stalled = m.one("herald_frames_sent_total") - before.one("herald_frames_sent_total") - published as f64;
    assert!(
        (0.0..published as f64).contains(&to_stalled),
        "the stalled client got {to_stalled} of {published} frames: those dropped with its queue are not counted"
    );
    assert!(
        m.one("herald_bytes_sent_total") - before.one("herald_bytes_sent_total")
            >= (published as f64 + to_stalled) * PAD as f64,
        "bytes follow the frames"
    );
    assert_eq!(m.one("herald_delivery_latency_seconds_count"), 6.0, "raw NATS events without a stamp are not timed");
    drop(reader);

    // A resume: two events for u5 while it is away, then it comes back after the broadcast.
    for n in 0..2 {
        assert_eq!(gw.publish(serde_json::json!({"users": ["u5"], "data": {"n": n}})).await.status, 200);
    }
    let mut u5 = Sse::resume(gw.addr, &token("u5", &[], 3600), &[], &ids[2]).await;
    assert_eq!(u5.next().await.json()["resumed"], true);
    for _ in 0..2 {
        assert!(u5.next().await.id.is_some(), "a replayed event");
    }
    // A reset: an id this gateway never issued.
    let mut u4 = Sse::resume(gw.addr, &token("u4", &[], 3600), &[], "not-an-id").await;
    assert_eq!(u4.next().await.json()["resumed"], false);
    assert_eq!(u4.next().await.event, "reset");
    drop(u4);
    eventually("the reader and the reset stream are closed", Duration::from_secs(10), || async {
        scrape(gw.addr).await.closed("client") == 2.0
    })
    .await;
    let m = scrape(gw.addr).await;
    assert_eq!((m.resumed("replayed"), m.resumed("epoch_changed")), (1.0, 1.0));
    assert_eq!(m.one("herald_replayed_events_total"), 2.0);
    assert_eq!(m.received("user"), 1.0, "u5's events were never live on this gateway");
    assert_eq!(m.one("herald_connections"), 4.0, "u1, u2, u3, u5");

    // Drain: four streams are closed over 6 s (one every 1.5 s); a stream that arrives now is
    // turned away. With three closed and one left, the counts add up.
    gw.signal(libc::SIGTERM);
    eventually("draining", Duration::from_secs(5), || async { scrape(gw.addr).await.one("herald_draining") == 1.0 })
        .await;
    let turned_away =
        Sse::open(gw.addr, "/events", &[("Authorization", &format!("Bearer {}", token("late", &[], 60)))])
            .await
            .expect("a 200 with a retry hint");
    drop(turned_away);
    eventually("three streams drained and one turned away", Duration::from_secs(6), || async {
        let m = scrape(gw.addr).await;
        m.closed("drain") == 4.0 && m.one("herald_connections") == 1.0
    })
    .await;
    let m = scrape(gw.addr).await;
    let closed: f64 = ["client", "slow", "drain", "token_expired", "overload", "error", "throttled"]
        .iter()
        .map(|r| m.closed(r))
        .sum();
    assert_eq!(m.one("herald_connections_opened_total"), 8.0, "u1 to u5, the reader, the stalled one, the late one");
    assert_eq!(m.one("herald_connections_opened_total") - closed, m.one("herald_connections"));
    assert_eq!((m.closed("overload"), m.closed("error"), m.closed("token_expired")), (0.0, 0.0, 0.0));
    assert_eq!(gw.wait_exit(Duration::from_secs(15)), Some(0), "the drain finishes and the gateway exits");
    drop((u1, u2, u3, u5));
}

/// The metric names the chart's alerts and Grafana dashboard use, outside the operator's own
/// (`herald_operator_*`, checked by the operator's tests).
fn names_in_the_chart_files(prefixes: &[&str]) -> std::collections::BTreeSet<String> {
    let files = herald_testkit::workspace_root().join("charts/herald/files");
    let mut names = std::collections::BTreeSet::new();
    for file in ["prometheus-rules.yaml", "grafana-dashboard.json"] {
        let text = std::fs::read_to_string(files.join(file)).unwrap();
        let mut rest = text.as_str();
        while let Some(at) = prefixes.iter().filter_map(|p| rest.find(p)).min() {
            let word: String =
                rest[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            rest = &rest[at + word.len().max(1)..];
            let family =
                ["_bucket", "_sum", "_count"].iter().fold(word.as_str(), |w, s| w.strip_suffix(s).unwrap_or(w));
            names.insert(family.to_owned());
        }
    }
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_alerts_and_dashboard_name_only_metrics_a_gateway_exports() {
    let gw = Gateway::dev().start();
    let text = gw.metrics_text().await;
    let names = names_in_the_chart_files(&["herald_", "process_"]);
    let gateway_names: Vec<&String> = names.iter().filter(|n| !n.starts_with("herald_operator_")).collect();
    assert!(gateway_names.len() >= 10, "{gateway_names:?}");
    for name in gateway_names {
        assert!(text.contains(&format!("# TYPE {name} ")), "{name} is not a metric this gateway exports");
    }
}
