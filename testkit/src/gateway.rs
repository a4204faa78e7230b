//! `herald-gateway` processes on a port of their own choosing (`--listen 127.0.0.1:0`, read back
//! from the line the gateway logs), killed on drop, their log kept for assertions. Every test
//! starts one through one builder:
//!
//! ```no_run
//! # use herald_testkit::{Gateway, Nats};
//! let nats = Nats::start();
//! let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).rust_log("debug").start();
//! let dev = Gateway::dev().start();
//! ```

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::bins;
use crate::http::{Response, get_blocking, http};
use crate::nats::NatsUrl;
use crate::process::Process;
use crate::sse::MARKER;
use crate::tokens::{KeyFiles, PUBLISH_KEY};
use crate::wait::{eventually, until};

/// How long a gateway may take to log the address it listens on, and to become ready.
const START_DEADLINE: Duration = Duration::from_secs(20);
const READY_DEADLINE: Duration = Duration::from_secs(15);

/// A gateway to be started: [`Gateway::serve`] or [`Gateway::dev`], then any of
/// [`args`](GatewayBuilder::args), [`env`](GatewayBuilder::env) and
/// [`rust_log`](GatewayBuilder::rust_log), then [`start`](GatewayBuilder::start).
#[must_use = "a gateway starts only with .start()"]
pub struct GatewayBuilder {
    /// `serve` against this NATS, or `dev` when `None`.
    nats_url: Option<String>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    rust_log: String,
}

impl GatewayBuilder {
    /// More command-line arguments, after the subcommand's own.
    pub fn args(mut self, args: &[&str]) -> Self {
        self.args.extend(args.iter().map(|a| a.to_string()));
        self
    }

    /// An environment variable (`OTEL_*`, `HOSTNAME`, …).
    pub fn env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.to_owned(), value.to_owned()));
        self
    }

    /// The `RUST_LOG` filter (`info` unless set).
    pub fn rust_log(mut self, filter: &str) -> Self {
        self.rust_log = filter.to_owned();
        self
    }

    /// Starts the gateway and waits until it listens (not until it is ready: see
    /// [`Gateway::ready`]); panics with its log when it does not.
    pub fn start(self) -> Gateway {
        let keys = KeyFiles::new();
        let mut command = Command::new(bins::gateway());
        match &self.nats_url {
            Some(url) => command
                .args(["serve", "--nats-url", url])
                .args(["--jwt-secret-file", &keys.jwt_secret()])
                .args(["--publish-keys-file", &keys.publish_keys()])
                .args(["--dashboard-keys-file", &keys.dashboard_keys()]),
            None => command.arg("dev"),
        };
        command
            .args(&self.args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", &self.rust_log)
            .env_remove("HERALD_LISTEN")
            // Traces only where a test asks for them, whatever the developer's shell exports.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut process = Process::spawn(&mut command, "herald-gateway");
        let stderr = process.child().stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    // Text or JSON lines: the address ends at a quote or a space.
                    let addr = addr.split(['"', ' ']).next().unwrap_or_default();
                    let _ = tx.send(addr.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(START_DEADLINE) {
            Ok(addr) => addr.parse().unwrap(),
            Err(_) => {
                process.kill();
                panic!("gateway did not start: {:#?}", log.lock().unwrap());
            }
        };
        Gateway { process, addr, log, keys }
    }
}

/// A running `herald-gateway`, killed on drop.
pub struct Gateway {
    process: Process,
    pub addr: SocketAddr,
    /// Its stderr, line by line, as read so far.
    pub log: Arc<Mutex<Vec<String>>>,
    keys: KeyFiles,
}

impl Gateway {
    /// `herald-gateway serve` against `nats`, with the test secret, publisher key and
    /// dashboard key.
    pub fn serve(nats: &(impl NatsUrl + ?Sized)) -> GatewayBuilder {
        Self::builder(Some(nats.nats_url()))
    }

    /// `herald-gateway dev`: no NATS, no keys.
    pub fn dev() -> GatewayBuilder {
        Self::builder(None)
    }

    fn builder(nats_url: Option<String>) -> GatewayBuilder {
        GatewayBuilder { nats_url, args: Vec::new(), env: Vec::new(), rust_log: "info".into() }
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The files of the secret and keys it was started with (also for the load tester).
    pub fn keys(&self) -> &KeyFiles {
        &self.keys
    }

    /// Waits until the gateway reports ready (NATS connected).
    pub async fn ready(&self) {
        eventually("gateway ready", READY_DEADLINE, || async {
            http(self.addr, "GET", "/readyz", &[], None).await.status == 200
        })
        .await;
    }

    /// [`Gateway::ready`] for a test outside an async runtime.
    pub fn wait_ready(&self) {
        until("gateway ready", READY_DEADLINE, || get_blocking(self.addr, "/readyz").is_some_and(|r| r.status == 200));
    }

    pub async fn stats(&self) -> serde_json::Value {
        http(self.addr, "GET", "/stats", &[], None).await.json()
    }

    /// `POST /v1/publish` with the test publisher key.
    pub async fn publish(&self, body: serde_json::Value) -> Response {
        let auth = format!("Bearer {PUBLISH_KEY}");
        let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
        http(self.addr, "POST", "/v1/publish", &headers, Some(body.to_string().as_bytes())).await
    }

    /// Publishes through the HTTP API, expecting 200; returns the ids.
    pub async fn publish_ids(&self, body: serde_json::Value) -> Vec<String> {
        let res = self.publish(body).await;
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        res.json()["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    /// Publishes a durable [`MARKER`] event to `user`; returns its id. Published after
    /// everything a test expects on `user`'s streams, it shows that nothing else arrived (see
    /// [`crate::Sse::assert_next_is_marker`]).
    pub async fn publish_marker(&self, user: &str) -> String {
        let ids = self.publish_ids(serde_json::json!({"type": MARKER, "data": 0, "users": [user]})).await;
        ids.into_iter().next().expect("the marker's id")
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        http(self.addr, "GET", "/metrics", &[], None).await.text()
    }

    /// The value of the series `series` (a name, with its labels if it has any, e.g.
    /// `herald_connections_closed_total{reason="slow"}`) in `/metrics`; `None` when it is not there.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let text = self.metrics_text().await;
        text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')).and_then(|v| v.trim().parse().ok())
    }

    /// Its log so far.
    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until its log holds `text`, and panics with the log after 10 s. A thread of its
    /// own reads the log, so a line the gateway has written may not be in [`Self::log_text`]
    /// yet when the test looks.
    pub async fn wait_for_log(&self, text: &str) {
        let seen = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.log_text().contains(text) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        assert!(seen.is_ok(), "the log never said {text:?}:\n{}", self.log_text());
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// The names of the process's threads.
    pub fn threads(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.pid())).unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// Resident memory of the process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: i32) {
        self.process.signal(sig);
    }

    /// Waits up to `wait` for the process to exit; returns its exit code.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<i32> {
        self.process.wait_exit(wait)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.process.kill();
    }
}

/// How many of its last log lines a gateway prints when a test fails while it runs.
const LOG_TAIL_ON_FAILURE: usize = 80;

impl Drop for Gateway {
    /// A failing test shows what the gateway said last: a failure seen only in CI can be read
    /// from its output.
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log.lock().unwrap_or_else(|e| e.into_inner());
            let tail = &log[log.len().saturating_sub(LOG_TAIL_ON_FAILURE)..];
            eprintln!("--- the last {} lines of gateway {} ---\n{}", tail.len(), self.addr, tail.join("\n"));
        }
    }
}
