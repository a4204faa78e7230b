//! Traces over OTLP, checked with a real OTLP receiver (rotel, whose debug log prints every span
//! it receives): one publish is one trace, from the publisher's `traceparent` through the
//! `publish` span and the NATS message headers to the `deliver` span of every gateway that
//! hands the event to its sessions. Without an OTLP endpoint nothing of it runs.

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use herald_testkit::gateway::GatewayBuilder;
use herald_testkit::ports::on_free_ports;
use herald_testkit::process::Process;
use herald_testkit::wait::poll;
use herald_testkit::{Gateway, Nats, PUBLISH_KEY, Sse, eventually, http, subscribe_confirmed, token, workspace_root};
use serde_json::json;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const PUBLISHER_SPAN: &str = "00f067aa0ba902b7";
const DIRECT_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const DIRECT_SPAN: &str = "b7ad6b7169203331";

/// One span as the receiver printed it.
#[derive(Clone, Debug)]
struct Span {
    trace_id: String,
    parent_id: String,
    span_id: String,
    name: String,
    attributes: HashMap<String, String>,
    resource: HashMap<String, String>,
    /// When the receiver last printed a line of it.
    updated: Instant,
}

impl Default for Span {
    fn default() -> Self {
        Span {
            trace_id: String::new(),
            parent_id: String::new(),
            span_id: String::new(),
            name: String::new(),
            attributes: HashMap::new(),
            resource: HashMap::new(),
            updated: Instant::now(),
        }
    }
}

impl Span {
    fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The pinned rotel collector (`scripts/requirements-test.txt`), installed by `scripts/test`.
fn rotel_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_ROTEL") {
        return PathBuf::from(p);
    }
    let lib = workspace_root().join(".venv/lib");
    let found = std::fs::read_dir(&lib).ok().and_then(|dirs| {
        dirs.filter_map(Result::ok).map(|d| d.path().join("site-packages/rotel/rotel-agent")).find(|p| p.exists())
    });
    found.unwrap_or_else(|| {
        panic!(
            "rotel not found: run ./scripts/test (it installs the pinned rotel into .venv), or set HERALD_TEST_ROTEL"
        )
    })
}

/// A rotel OTLP receiver that prints what it receives; the spans are parsed from its output as
/// they arrive. It cannot listen on a port of its own choosing, so the test chooses its ports.
struct Rotel {
    _process: Process,
    port: u16,
    spans: Arc<Mutex<Vec<Span>>>,
    _dir: tempfile::TempDir,
}

impl Rotel {
    fn start() -> Rotel {
        on_free_ports(2, |ports| Self::start_on(ports[0], ports[1]))
    }

    /// Rotel on `port` (OTLP/HTTP) and `grpc_port`, once it answers there; an error when it
    /// exits first (a port was taken) or does not answer within 10 s.
    fn start_on(port: u16, grpc_port: u16) -> Result<Rotel, String> {
        let dir = tempfile::tempdir().unwrap();
        let mut command = Command::new(rotel_bin());
        command
            .arg("start")
            .args(["--exporter", "blackhole", "--debug-log", "traces", "--debug-log-verbosity", "detailed"])
            .args(["--otlp-http-endpoint", &format!("127.0.0.1:{port}")])
            .args(["--otlp-grpc-endpoint", &format!("127.0.0.1:{grpc_port}")])
            .arg("--pid-file")
            .arg(dir.path().join("rotel.pid"))
            .arg("--log-file")
            .arg(dir.path().join("rotel.log"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        let mut process = Process::spawn(&mut command, "rotel");
        let spans = Arc::new(Mutex::new(Vec::new()));
        let sink = spans.clone();
        let stdout = process.child().stdout.take().unwrap();
        std::thread::spawn(move || parse(BufReader::new(stdout), &sink));
        let answers = || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
        match poll(Duration::from_secs(10), || (answers() || process.exited()).then_some(())) {
            // Answering, and still running: not another process that holds the port.
            Some(()) if !process.exited() => Ok(Rotel { _process: process, port, spans, _dir: dir }),
            Some(()) => Err(format!("rotel exited (ports {port}, {grpc_port})")),
            None => Err(format!("rotel did not answer on port {port} within 10 s")),
        }
    }

    fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn spans(&self) -> Vec<Span> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits for a span named `name` that satisfies `cond`, printed in full (the receiver prints
    /// a batch at once: nothing more of it came for a while).
    async fn wait_for(&self, what: &str, name: &str, cond: impl Fn(&Span) -> bool) -> Span {
        let found = || {
            self.spans()
                .into_iter()
                .find(|s| s.name == name && cond(s) && s.updated.elapsed() > Duration::from_millis(200))
        };
        eventually(what, Duration::from_secs(20), || async { found().is_some() }).await;
        found().unwrap()
    }
}

/// Reads rotel's detailed debug log: `Resource attributes:` then `-> key: Type(value)` lines,
/// then per span `Span #n`, `Trace ID : …`, `Parent ID : …`, `ID : …`, `Name : …`, and its
/// `Attributes:`. Spans are shared as soon as they start and filled in as lines arrive.
fn parse(out: impl BufRead, sink: &Mutex<Vec<Span>>) {
    #[derive(PartialEq)]
    enum In {
        Resource,
        Span,
        Attributes,
        Other,
    }
    let mut resource = HashMap::new();
    let mut section = In::Other;
    for line in out.lines().map_while(Result::ok) {
        let trimmed = line.trim();
        let mut spans = sink.lock().unwrap();
        if trimmed.starts_with("ResourceSpans #") {
            resource = HashMap::new();
            section = In::Other;
        } else if trimmed == "Resource attributes:" {
            section = In::Resource;
        } else if trimmed.starts_with("ScopeSpans") {
            section = In::Other;
        } else if trimmed.starts_with("Span #") {
            spans.push(Span { resource: resource.clone(), ..Span::default() });
            section = In::Span;
        } else if trimmed == "Attributes:" && section == In::Span {
            section = In::Attributes;
        } else if let Some(kv) = trimmed.strip_prefix("-> ") {
            let Some((key, value)) = kv.split_once(": ") else { continue };
            // `Str(x)`, `Int(1)`, `Bool(true)`: keep what is inside the parentheses.
            let value = value.split_once('(').map_or(value, |(_, v)| v.strip_suffix(')').unwrap_or(v));
            match (&section, spans.last_mut()) {
                (In::Resource, _) => {
                    resource.insert(key.to_owned(), value.to_owned());
                }
                (In::Attributes, Some(span)) => {
                    span.attributes.insert(key.to_owned(), value.to_owned());
                }
                _ => {}
            }
        } else if section == In::Span
            && let Some(span) = spans.last_mut()
            && let Some((field, value)) = trimmed.split_once(':')
        {
            let value = value.trim().to_owned();
            match field.trim() {
                "Trace ID" => span.trace_id = value,
                "Parent ID" => span.parent_id = value,
                "ID" => span.span_id = value,
                "Name" => span.name = value,
                _ => {}
            }
        } else if section == In::Attributes {
            section = In::Other;
        }
        if let Some(span) = spans.last_mut() {
            span.updated = Instant::now();
        }
    }
}

/// A gateway exporting its spans to `rotel` every `delay_ms`, as pod `pod`.
fn traced(nats: &Nats, rotel: &str, pod: &str, delay_ms: &str) -> GatewayBuilder {
    Gateway::serve(nats)
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", rotel)
        .env("OTEL_BSP_SCHEDULE_DELAY", delay_ms)
        .env("OTEL_RESOURCE_ATTRIBUTES", pod)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_publish_is_one_trace_through_nats_to_every_delivering_gateway() {
    let rotel = Rotel::start();
    let nats = Nats::start();
    let endpoint = rotel.endpoint();
    // Pod A takes the publish and exports only when it stops (its batch delay is a minute):
    // its spans arriving at all shows the flush after the SIGTERM drain. Pod B streams to the
    // client and exports every 100 ms, logging JSON lines.
    let mut pod_a = traced(&nats, &endpoint, "k8s.pod.name=pod-a", "60000").start();
    let pod_b = traced(&nats, &endpoint, "k8s.pod.name=pod-b", "100")
        .args(&["--heartbeat-secs", "1", "--log-format", "json"])
        .start();
    pod_a.ready().await;
    pod_b.ready().await;
    eventually("the exporter's thread runs", Duration::from_secs(10), || async {
        pod_b.threads().iter().any(|t| t.starts_with("OpenTelemetry"))
    })
    .await;

    let user_token = token("u1", &[], 600);
    let mut on_b = Sse::with_token(pod_b.addr, &user_token, &[]).await;
    assert_eq!(on_b.next().await.event, "connected");
    let mut on_a = Sse::with_token(pod_a.addr, &user_token, &[]).await;
    assert_eq!(on_a.next().await.event, "connected");
    let observer = nats.client().await;
    let mut live = subscribe_confirmed(&observer, "herald.live.user.u1").await;

    // A publisher inside a trace publishes through pod A.
    let traceparent = format!("00-{TRACE}-{PUBLISHER_SPAN}-01");
    let auth = format!("Bearer {PUBLISH_KEY}");
    let body = json!({"type":"booking_update","data":{"bookingId":"42"},"users":["u1"]}).to_string();
    let res = http(
        pod_a.addr,
        "POST",
        "/v1/publish",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("traceparent", &traceparent),
            ("tracestate", "vendor=opaque"),
        ],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    let first_id = res.json()["ids"][0].as_str().unwrap().to_owned();
    assert_eq!(on_b.next_event().await.event, "booking_update");
    assert_eq!(on_a.next_event().await.event, "booking_update");

    // The NATS message carries the publish span's context (same trace, a new span id).
    let msg = tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap();
    let headers = msg.headers.expect("headers on the event");
    let carried = headers.get("traceparent").expect("a traceparent header on the NATS message").as_str().to_owned();
    let parts: Vec<&str> = carried.split('-').collect();
    assert_eq!((parts.len(), parts[0], parts[1], parts[3]), (4, "00", TRACE, "01"), "{carried}");
    assert_ne!(parts[2], PUBLISHER_SPAN, "the NATS header names the publish span, not the publisher's");
    assert_eq!(headers.get("tracestate").map(|v| v.as_str()), Some("vendor=opaque"));
    let publish_span_id = parts[2].to_owned();

    // Pod B's deliver span is a child of the publish span, in the publisher's trace.
    let deliver_b = rotel
        .wait_for("deliver span from pod B", "deliver", |s| {
            s.trace_id == TRACE && s.resource.get("k8s.pod.name").map(String::as_str) == Some("pod-b")
        })
        .await;
    assert_eq!(deliver_b.parent_id, publish_span_id, "{deliver_b:?}");
    assert_eq!(deliver_b.attr("herald.target"), Some("user"));
    assert_eq!(deliver_b.attr("herald.sessions"), Some("1"));
    assert_eq!(deliver_b.attr("herald.event_id"), Some(first_id.as_str()));
    assert_eq!(deliver_b.resource.get("service.name").map(String::as_str), Some("herald-gateway"));

    // A publisher writing straight to NATS with its own traceparent gets the same.
    let js = async_nats::jetstream::new(observer.clone());
    let mut direct = async_nats::HeaderMap::new();
    direct.insert("Herald-Type", "direct");
    direct.insert("traceparent", format!("00-{DIRECT_TRACE}-{DIRECT_SPAN}-01").as_str());
    js.publish_with_headers("herald.events.user.u1", direct, Bytes::from_static(b"{\"n\":2}"))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(on_b.next_event().await.event, "direct");
    let deliver_direct = rotel
        .wait_for("deliver span of the direct publish", "deliver", |s| {
            s.trace_id == DIRECT_TRACE && s.resource.get("k8s.pod.name").map(String::as_str) == Some("pod-b")
        })
        .await;
    assert_eq!(deliver_direct.parent_id, DIRECT_SPAN);

    // A client resuming from before both events gets them replayed: a `resume` span inside its
    // `connection` span.
    let (epoch, seq) = first_id.rsplit_once('-').unwrap();
    let before = format!("{epoch}-{}", seq.parse::<u64>().unwrap() - 1);
    let auth_u1 = format!("Bearer {user_token}");
    let mut resumed =
        Sse::open(pod_b.addr, "/events", &[("Authorization", &auth_u1), ("Last-Event-ID", &before)]).await.unwrap();
    assert_eq!(resumed.next().await.json()["resumed"], true);
    assert_eq!(resumed.next().await.event, "booking_update");
    assert_eq!(resumed.next().await.event, "direct");
    let resume = rotel.wait_for("resume span", "resume", |_| true).await;
    assert_eq!(resume.attr("herald.resume.result"), Some("replayed"));
    assert_eq!(resume.attr("herald.replayed"), Some("2"));

    // Closing a stream ends its `connection` span with the reason; the JSON close line names
    // that span's trace.
    resumed.vanish();
    let connection =
        rotel.wait_for("connection span of the resumed stream", "connection", |s| s.span_id == resume.parent_id).await;
    assert_eq!(connection.trace_id, resume.trace_id);
    assert_eq!(connection.attr("herald.close_reason"), Some("client"));
    assert_eq!(connection.attr("http.response.status_code"), Some("200"));
    assert_eq!(connection.attr("herald.events"), Some("2"));
    assert!(connection.attr("herald.duration_ms").is_some() && connection.attr("herald.bytes").is_some());
    let close_line = pod_b
        .log_text()
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|l| l["message"] == "connection closed")
        .expect("a JSON close line");
    assert_eq!(close_line["trace_id"], connection.trace_id.as_str(), "{close_line}");
    assert_eq!(close_line["span_id"], connection.span_id.as_str(), "{close_line}");
    assert_eq!(close_line["reason"], "client", "{close_line}");
    assert_eq!(close_line["events"], 2, "{close_line}");

    // Pod A exports on SIGTERM, after its drain: its publish span (child of the publisher's
    // span, parent of the NATS header's) and its own deliver span.
    drop(on_a);
    pod_a.signal(libc::SIGTERM);
    assert_eq!(pod_a.wait_exit(Duration::from_secs(20)), Some(0), "{}", pod_a.log_text());
    let publish = rotel.wait_for("publish span from pod A", "publish", |s| s.trace_id == TRACE).await;
    assert_eq!(publish.parent_id, PUBLISHER_SPAN);
    assert_eq!(publish.span_id, publish_span_id);
    assert_eq!(publish.resource.get("k8s.pod.name").map(String::as_str), Some("pod-a"));
    assert_eq!(publish.attr("herald.targets"), Some("user"));
    assert_eq!(publish.attr("herald.target_count"), Some("1"));
    assert_eq!(publish.attr("herald.durable"), Some("true"));
    assert_eq!(publish.attr("http.response.status_code"), Some("200"));
    let deliver_a = rotel
        .wait_for("deliver span from pod A", "deliver", |s| {
            s.trace_id == TRACE && s.resource.get("k8s.pod.name").map(String::as_str) == Some("pod-a")
        })
        .await;
    assert_eq!(deliver_a.parent_id, publish_span_id);

    // No attribute names the user or carries a secret.
    for span in rotel.spans() {
        for value in span.attributes.values() {
            assert!(value != "u1" && !value.contains(PUBLISH_KEY) && !value.contains(&user_token), "{span:?}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_an_otlp_endpoint_nothing_is_traced() {
    // The default OTLP/HTTP port, where an exporter would go if it ran unconfigured.
    let default_receiver = TcpListener::bind("127.0.0.1:4318").ok();
    let nats = Nats::start();
    let gw = Gateway::serve(&nats)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .env("OTEL_SERVICE_NAME", "herald-test")
        .env("OTEL_TRACES_SAMPLER", "always_on")
        .start();
    gw.ready().await;

    let mut sse = Sse::with_token(gw.addr, &token("u1", &[], 600), &[]).await;
    assert_eq!(sse.next().await.event, "connected");
    let observer = nats.client().await;
    let mut live = subscribe_confirmed(&observer, "herald.live.user.u1").await;
    let auth = format!("Bearer {PUBLISH_KEY}");
    let res = http(
        gw.addr,
        "POST",
        "/v1/publish",
        &[
            ("Authorization", &auth),
            ("Content-Type", "application/json"),
            ("traceparent", &format!("00-{TRACE}-{PUBLISHER_SPAN}-01")),
        ],
        Some(json!({"data":1,"users":["u1"]}).to_string().as_bytes()),
    )
    .await;
    assert_eq!(res.status, 200);
    assert_eq!(sse.next_event().await.event, "message");

    // No exporter thread, no HTTP client thread, no trace header written to NATS.
    let threads = gw.threads();
    assert!(!threads.iter().any(|t| t.starts_with("OpenTelemetry") || t.starts_with("reqwest")), "{threads:?}");
    let msg = tokio::time::timeout(Duration::from_secs(10), live.next()).await.unwrap().unwrap();
    assert!(msg.headers.as_ref().is_some_and(|h| h.get("traceparent").is_none()), "{:?}", msg.headers);
    assert!(!gw.log_text().contains("exporting traces"), "{}", gw.log_text());

    // Nothing connects to the default OTLP port, well past several batch delays.
    if let Some(listener) = default_receiver {
        listener.set_nonblocking(true).unwrap();
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(listener.accept().is_err(), "something connected to the default OTLP/HTTP port");
    }
}
