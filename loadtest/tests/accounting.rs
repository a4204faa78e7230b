//! The harness's accounting against a server that misbehaves on purpose: an in-test SSE server
//! (generic mode, Nchan's URL shape) that drops, duplicates and reorders known events and holds
//! every delivery back by a known delay. The summary must say exactly that.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use herald_testkit::loadtest;

const DELAY: Duration = Duration::from_millis(40);
/// How long a publish to `/slowpub/…` takes to be answered.
const SLOW_PUBLISH: Duration = Duration::from_millis(150);

/// Per channel, the frame held back to be sent after the next one.
type Held = Arc<Mutex<HashMap<String, Vec<u8>>>>;
type Subscribers = Arc<Mutex<HashMap<String, Vec<mpsc::UnboundedSender<(Instant, Vec<u8>)>>>>>;

/// Starts the server on a free port in its own thread; returns its base URL.
fn start_server() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    listener.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let listener = TcpListener::from_std(listener).unwrap();
            let subs: Subscribers = Arc::default();
            let held: Held = Arc::default();
            while let Ok((sock, _)) = listener.accept().await {
                tokio::spawn(serve(sock, subs.clone(), held.clone()));
            }
        });
    });
    format!("http://{addr}")
}

async fn read_head(sock: &mut TcpStream, buf: &mut Vec<u8>) -> Option<(String, String, usize)> {
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_string();
            buf.drain(..end + 4);
            let mut parts = head.split(' ');
            let (method, path) = (parts.next()?.to_owned(), parts.next()?.to_owned());
            let len = head
                .lines()
                .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().parse().unwrap()))
                .unwrap_or(0);
            return Some((method, path, len));
        }
        let mut chunk = [0u8; 4096];
        let n = sock.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn serve(mut sock: TcpStream, subs: Subscribers, held: Held) {
    let mut buf = Vec::new();
    while let Some((method, path, len)) = read_head(&mut sock, &mut buf).await {
        if method == "GET" {
            let channel = path.trim_start_matches("/sub/").to_owned();
            let (tx, mut rx) = mpsc::unbounded_channel::<(Instant, Vec<u8>)>();
            subs.lock().unwrap().entry(channel).or_default().push(tx);
            let head = "HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n";
            let _ = sock.write_all(head.as_bytes()).await;
            let _ = sock.write_all(&chunk(b": hi\r\n\r\n")).await;
            while let Some((at, frame)) = rx.recv().await {
                tokio::time::sleep_until((at + DELAY).into()).await;
                if sock.write_all(&chunk(&frame)).await.is_err() {
                    return;
                }
            }
            return;
        }
        while buf.len() < len {
            let mut c = [0u8; 4096];
            match sock.read(&mut c).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&c[..n]),
            }
        }
        let body: Vec<u8> = buf.drain(..len).collect();
        if path.starts_with("/slowpub/") {
            // A server that can take only so many publishes per second.
            tokio::time::sleep(SLOW_PUBLISH).await;
        }
        let _ = sock.write_all(b"HTTP/1.1 202 Accepted\r\nContent-Length: 0\r\n\r\n").await;
        let channel = path.trim_start_matches("/pub/").trim_start_matches("/slowpub/").to_owned();
        let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
        let seq = v["s"].as_u64().unwrap();
        // CRLF endings, the payload split over two data lines, an id.
        let text = String::from_utf8(body).unwrap();
        let (head, tail) = text.split_at(text.len() - 1);
        let frame = format!("id: {seq}\r\nevent: update\r\ndata: {head}\r\ndata: {tail}\r\n\r\n").into_bytes();
        let mut frames = Vec::new();
        match seq % 10 {
            3 => {}                                                         // dropped
            5 => frames.extend([frame.clone(), frame]),                     // sent twice
            7 => drop(held.lock().unwrap().insert(channel.clone(), frame)), // sent after the next one
            8 => {
                frames.push(frame);
                frames.extend(held.lock().unwrap().remove(&channel));
            }
            _ => frames.push(frame),
        }
        let now = Instant::now();
        for tx in subs.lock().unwrap().get(&channel).into_iter().flatten() {
            for f in &frames {
                let _ = tx.send((now, f.clone()));
            }
        }
    }
}

fn chunk(data: &[u8]) -> Vec<u8> {
    let mut out = format!("{:x}\r\n", data.len()).into_bytes();
    out.extend_from_slice(data);
    out.extend_from_slice(b"\r\n");
    out
}

/// Runs `scenario` in generic mode against a fresh server, subscribing at `/sub/{channel}` and
/// publishing at `/<publish>/{channel}`, with `flags` for the rest; returns the summary.
fn run_generic(scenario: &str, publish: &str, flags: &[&str]) -> serde_json::Value {
    let base = start_server();
    let publish = format!("{{target}}/{publish}/{{channel}}");
    let mut args = vec![scenario, "--target", &base, "--sse-url-template", "{target}/sub/{channel}"];
    args.extend(["--publish-url-template", &publish, "--grace", "1"]);
    args.extend_from_slice(flags);
    loadtest::run_ok(&args, Duration::from_secs(60))
}

#[test]
fn drops_duplicates_and_reorderings_are_counted_exactly() {
    let s = run_generic("fanout", "pub", &["--connections", "5", "--rate", "50", "--duration", "2"]);
    assert_eq!(s["mode"], "generic");
    assert_eq!(s["publish"]["published"], 100, "{s:#}");
    // Per client: sequences ending in 3 never arrive, in 5 arrive twice, in 7 after the 8.
    assert_eq!(s["expected"], 500, "{s:#}");
    assert_eq!(s["missing"], 50, "{s:#}");
    assert_eq!(s["delivered"], 450, "{s:#}");
    assert_eq!(s["duplicates"], 50, "{s:#}");
    assert_eq!(s["out_of_order"], 50, "{s:#}");
    assert_eq!(s["received"], 500, "{s:#}");
    // The report names the first 20 lost events: client 0's sequences 3, 13, …, 93, then client 1's.
    let examples = s["missing_examples"].as_array().expect("missing_examples");
    assert_eq!(examples.len(), 20, "{s:#}");
    assert_eq!(
        (&examples[0]["client"], &examples[0]["seq"], &examples[0]["expected"]),
        (&0.into(), &3.into(), &100.into())
    );
    assert_eq!((&examples[10]["client"], &examples[10]["seq"]), (&1.into(), &3.into()), "{s:#}");

    // Latency: the server holds everything back by 40 ms (the reordered ones one publish
    // interval longer), and duplicates are not measured twice.
    let lat = &s["latency_ms"];
    assert_eq!(lat["count"], 450, "{s:#}");
    let p50 = lat["p50"].as_f64().unwrap();
    assert!((40.0..100.0).contains(&p50), "p50 {p50} should be just above the 40 ms delay: {s:#}");
    assert!(lat["p90"].as_f64().unwrap() >= 40.0);
    assert!(lat["max"].as_f64().unwrap() < 1000.0, "{s:#}");
    assert_eq!(s["connect"]["connected"], 5, "a generic stream counts as connected on its 200");
}

#[test]
fn publishes_waiting_for_a_slow_server_count_their_wait_in_the_latency() {
    // 40 publishes issued over 2 s, one lane, a server that answers one every 150 ms: the last
    // goes out 4 s after it was issued. Timed from when the lane sent it, every delivery would
    // look 40 ms late (the server's hold), and the server's queue would hide in the generator.
    let flags = ["--publish-concurrency", "1", "--connections", "2", "--rate", "20", "--duration", "2"];
    let s = run_generic("fanout", "slowpub", &flags);
    assert_eq!(s["publish"]["published"], 40, "{s:#}");
    let lat = &s["latency_ms"];
    let (p50, max) = (lat["p50"].as_f64().unwrap(), lat["max"].as_f64().unwrap());
    assert!(p50 > 1000.0, "p50 {p50} ms should include the wait for the slow server: {s:#}");
    assert!((3000.0..8000.0).contains(&max), "max {max} ms should be about 4 s: {s:#}");
}

#[test]
fn targeted_generic_runs_spread_publishes_round_robin() {
    let s = run_generic("targeted", "pub", &["--connections", "4", "--rate", "100", "--duration", "2"]);
    // 200 publishes over 4 clients: 50 each, sequences 1..=50 per client.
    assert_eq!(s["expected"], 200, "{s:#}");
    assert_eq!(s["missing"], 4 * 5, "{s:#}");
    assert_eq!(s["duplicates"], 4 * 5, "{s:#}");
    assert_eq!(s["out_of_order"], 4 * 5, "{s:#}");
}

#[test]
fn bad_flags_are_reported_together_without_running() {
    let loadtest::Run { code, stderr, .. } = loadtest::run(
        &["fanout", "--target", "http://192.0.2.1:80", "--connections", "0", "--rate", "0"],
        Duration::from_secs(20),
    );
    assert_eq!(code, 2);
    assert!(stderr.contains("--connections"), "{stderr}");
    assert!(stderr.contains("--rate"), "{stderr}");
    assert!(stderr.contains("--allow-remote"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
}

/// Chromium: `HERALD_CHROMIUM_BIN`, else Debian's (`scripts/ensure-chromium` installs it).
fn chromium() -> std::path::PathBuf {
    let bin = std::env::var("HERALD_CHROMIUM_BIN").unwrap_or_else(|_| "/usr/bin/chromium".into());
    assert!(std::path::Path::new(&bin).exists(), "{bin} is missing: run ./scripts/ensure-chromium to install it");
    bin.into()
}

fn headless(profile: &std::path::Path) -> Vec<String> {
    [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--allow-file-access-from-files",
    ]
    .iter()
    .map(|s| s.to_string())
    .chain([format!("--user-data-dir={}", profile.display())])
    .collect()
}

#[test]
fn the_html_report_draws_its_charts_in_a_browser() {
    let dir = tempfile::tempdir().unwrap();
    let html = dir.path().join("report.html");
    let json = dir.path().join("report.json");
    let (html_arg, json_arg) = (html.display().to_string(), json.display().to_string());
    let flags = ["--connections", "5", "--rate", "50", "--duration", "3", "--html", &html_arg, "--json", &json_arg];
    run_generic("fanout", "pub", &flags);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(!page.contains("<script src") && !page.contains("<link"), "self-contained");
    let summary: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(summary["timeline"].as_array().unwrap().len() >= 2, "one sample a second: {summary:#}");

    let url = format!("file://{}", html.display());
    let profile = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(chromium())
        .args(headless(profile.path()))
        .args(["--virtual-time-budget=5000", "--dump-dom", &url])
        .output()
        .expect("run chromium");
    let dom = String::from_utf8_lossy(&out.stdout);
    // The script ran and drew one SVG path per series: p50/p90/p99/max, deliveries, connections.
    let drawn: usize = dom
        .split("data-drawn=\"")
        .nth(1)
        .and_then(|r| r.split('"').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("the report's script did not run: {}", String::from_utf8_lossy(&out.stderr)));
    assert!(drawn >= 6, "only {drawn} series drawn");
    let paths = dom.matches("<path d=\"M").count();
    assert!(paths >= 6, "{paths} SVG paths with data in the DOM");
    assert!(dom.contains("data-name=\"p99\""), "the p99 line is drawn");
    assert!(dom.contains("delivered / expected"), "the summary table is filled in");

    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("loadtest-report.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().unwrap();
    let status = std::process::Command::new(chromium())
        .args(headless(profile.path()))
        .args([
            "--virtual-time-budget=5000",
            "--window-size=1100,1500",
            &format!("--screenshot={}", shot.display()),
            &url,
        ])
        .output()
        .expect("run chromium");
    assert!(shot.exists(), "no screenshot: {}", String::from_utf8_lossy(&status.stderr));
}
