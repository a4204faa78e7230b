//! The operator's own HTTP endpoint: `/metrics` in Prometheus text format and `/healthz`.

use std::sync::Arc;

use herald_operator::metrics::{self, Metrics};
use herald_testkit::http;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The samples of a text exposition: `name{labels}` → value. Panics on a line that is neither a
/// comment nor a sample, or on a sample whose family has no `# TYPE`.
fn samples(text: &str) -> Vec<(String, f64)> {
    let mut typed = Vec::new();
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            typed.push(parts.next().unwrap().to_owned());
            assert!(matches!(parts.next(), Some("counter" | "gauge" | "histogram")), "{line}");
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        let (series, value) = line.rsplit_once(' ').unwrap_or_else(|| panic!("not a sample: {line}"));
        let name = series.split('{').next().unwrap();
        let family = ["_bucket", "_sum", "_count"].iter().fold(name, |n, s| n.strip_suffix(s).unwrap_or(n));
        assert!(typed.iter().any(|t| t == name || t == family), "no # TYPE for {name}");
        out.push((series.to_owned(), value.parse().unwrap_or_else(|_| panic!("bad value in {line}"))));
    }
    out
}

#[tokio::test]
async fn metrics_and_health_are_served() {
    let metrics = Arc::new(Metrics::default());
    metrics.leader.set(1);
    metrics.reconciles.with_label_values(&["default/demo"]).inc_by(3);
    metrics.failures.with_label_values(&["default/demo", "kube"]).inc();
    metrics.duration.with_label_values(&["default/demo"]).observe(0.02);
    metrics.desired.with_label_values(&["default/demo"]).set(4);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(metrics::serve(listener, metrics.clone()));

    let res = http(addr, "GET", "/metrics", &[], None).await;
    assert_eq!(res.status, 200, "{res:?}");
    let content_type = res.header("content-type").unwrap_or_default();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    let samples = samples(&res.text());
    let value = |series: &str| samples.iter().find(|(s, _)| s == series).map(|(_, v)| *v);
    assert_eq!(value("herald_operator_leader"), Some(1.0));
    assert_eq!(value("herald_operator_reconciles_total{resource=\"default/demo\"}"), Some(3.0));
    assert_eq!(value("herald_operator_reconcile_errors_total{error=\"kube\",resource=\"default/demo\"}"), Some(1.0));
    assert_eq!(value("herald_operator_reconcile_duration_seconds_count{resource=\"default/demo\"}"), Some(1.0));
    assert_eq!(value("herald_operator_desired_replicas{resource=\"default/demo\"}"), Some(4.0));
    // What the process is and holds: its build, its open files, its memory.
    let (info, one) = samples.iter().find(|(s, _)| s.starts_with("herald_build_info{")).expect("herald_build_info");
    assert!(
        info.contains(&format!("version=\"{}\"", env!("CARGO_PKG_VERSION"))) && info.contains("commit=\""),
        "{info}"
    );
    assert_eq!(*one, 1.0);
    assert!(value("process_open_fds").is_some_and(|n| n >= 3.0));
    assert!(value("process_resident_memory_bytes").is_some_and(|n| n > 0.0));

    let res = http(addr, "GET", "/healthz", &[], None).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.text(), "{\"status\":\"ok\"}");
    let res = http(addr, "GET", "/nope", &[], None).await;
    assert_eq!(res.status, 404, "{res:?}");

    // Keep-alive: two scrapes on one connection.
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut answered = String::new();
    for _ in 0..2 {
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost: operator\r\n\r\n").await.unwrap();
        let mut buf = [0u8; 1024];
        let n = stream.read(&mut buf).await.unwrap();
        answered.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(answered.matches("HTTP/1.1 200").count(), 2, "{answered}");
}

/// Every `herald_operator_*` name the chart's alerts and Grafana dashboard use is one the
/// operator exports.
#[test]
fn the_charts_alerts_and_dashboard_name_only_metrics_the_operator_exports() {
    let metrics = Metrics::default();
    let r = "default/demo";
    metrics.reconciles.with_label_values(&[r]).inc();
    metrics.failures.with_label_values(&[r, "kube"]).inc();
    metrics.duration.with_label_values(&[r]).observe(0.1);
    metrics.desired.with_label_values(&[r]).set(2);
    metrics.connections.with_label_values(&[r]).set(10);
    metrics.scale_events.with_label_values(&[r, "up"]).inc();
    let text = metrics.render();
    let files = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../charts/herald/files");
    let mut checked = 0;
    for file in ["prometheus-rules.yaml", "grafana-dashboard.json"] {
        let body = std::fs::read_to_string(files.join(file)).unwrap();
        for (at, _) in body.match_indices("herald_operator_") {
            let name: String =
                body[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} ({file}) is not a metric the operator exports");
            checked += 1;
        }
    }
    assert!(checked >= 4, "{checked} names");
}
