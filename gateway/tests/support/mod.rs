//! Test support: a real nats-server per test, real gateway processes, and a raw HTTP/SSE client
//! that parses the wire format itself (so the tests check bytes, not a library's reading of them).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use herald_testkit::{spawn_nats, spawn_nats_on_free_ports};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub mod cluster;
pub mod delivery;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef0123";
pub const PUBLISH_KEY: &str = "test-publisher-key-0123456789";
pub const DASHBOARD_KEY: &str = "test-dashboard-key-0123456789";

/// Subscribes `client` to `subject` and waits until the server has the subscription: a
/// message the client sends itself after the SUB comes back only once the server has processed
/// both (`flush` only writes them to the socket).
pub async fn subscribe_confirmed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    use futures_util::StreamExt;
    let subscription = client.subscribe(subject.to_owned()).await.unwrap();
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, bytes::Bytes::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), probe.next())
        .await
        .expect("the server answers its own client within 10 s")
        .expect("the probe's subscription is open");
    subscription
}

/// Waits for `cond` to hold, polling, until `deadline` passes.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

// Not every test binary uses each of these.
#[allow(unused_imports)]
pub use herald_testkit::{free_port, nats_server_bin, workspace_root};

/// A nats-server with JetStream on free ports, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub monitor_port: u16,
    dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let (child, port, monitor_port) = Self::spawn_on_free_ports(Some(dir.path()), dir.path());
        Nats { child, port, monitor_port, dir }
    }

    /// A server on `port` (e.g. one a gateway was already pointed at).
    pub fn start_on(port: u16) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let monitor_port = free_port();
        let child = spawn_nats(port, Some(monitor_port), Some(dir.path()), &dir.path().join("nats.log"))
            .unwrap_or_else(|log| panic!("nats-server did not start on port {port}:\n{log}"));
        Nats { child, port, monitor_port, dir }
    }

    /// A server without JetStream.
    pub fn start_without_jetstream() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let (child, port, monitor_port) = Self::spawn_on_free_ports(None, dir.path());
        Nats { child, port, monitor_port, dir }
    }

    /// On fresh free ports, with its monitoring port.
    fn spawn_on_free_ports(jetstream_dir: Option<&Path>, log_dir: &Path) -> (Child, u16, u16) {
        let (child, port, monitor_port) = spawn_nats_on_free_ports(true, jetstream_dir, &log_dir.join("nats.log"));
        (child, port, monitor_port.expect("a monitoring port"))
    }

    /// Stops the server (SIGTERM, then SIGKILL if it lingers), keeping its JetStream directory.
    pub fn stop(&mut self) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts the server again on the same ports and JetStream directory.
    pub fn restart(&mut self) {
        self.stop();
        self.child =
            spawn_nats(self.port, Some(self.monitor_port), Some(self.dir.path()), &self.dir.path().join("nats.log"))
                .unwrap_or_else(|log| panic!("nats-server did not restart:\n{log}"));
    }

    /// Describes a server on `port` without starting one: for pointing a gateway at nothing.
    pub fn on_port_unstarted(port: u16) -> Nats {
        let child = Command::new("true").spawn().unwrap();
        Nats { child, port, monitor_port: 0, dir: tempfile::tempdir().unwrap() }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }

    /// `/connz?subs=detail` from the server's monitoring port.
    pub async fn connz(&self) -> serde_json::Value {
        let addr: SocketAddr = format!("127.0.0.1:{}", self.monitor_port).parse().unwrap();
        let res = http(addr, "GET", "/connz?subs=detail", &[], None).await;
        serde_json::from_slice(&res.body).unwrap()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A `herald-gateway` process on a free port, killed on drop. Its log is kept for assertions.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    _files: tempfile::TempDir,
}

impl Gateway {
    /// `herald-gateway serve` against `nats`, with the test secret and publisher key.
    pub fn serve(nats: &Nats, extra: &[&str]) -> Gateway {
        Self::serve_logging(nats, extra, "info")
    }

    /// `serve` with a given `RUST_LOG` filter.
    pub fn serve_logging(nats: &Nats, extra: &[&str], rust_log: &str) -> Gateway {
        Self::serve_url(&nats.url(), extra, rust_log)
    }

    /// `serve` against the NATS at `url`.
    pub fn serve_url(url: &str, extra: &[&str], rust_log: &str) -> Gateway {
        Self::serve_env(url, extra, rust_log, &[])
    }

    /// `serve` against the NATS at `url`, with extra environment variables (`OTEL_*`, …).
    pub fn serve_env(url: &str, extra: &[&str], rust_log: &str, env: &[(&str, &str)]) -> Gateway {
        let files = tempfile::tempdir().unwrap();
        let secret = files.path().join("jwt.secret");
        std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
        let keys = files.path().join("publish.keys");
        std::fs::write(&keys, format!("# test\ntests:{PUBLISH_KEY}\n")).unwrap();
        let dashboard_keys = files.path().join("dashboard.keys");
        std::fs::write(&dashboard_keys, format!("ops:{DASHBOARD_KEY}\n")).unwrap();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--nats-url".into(),
            url.to_owned(),
            "--jwt-secret-file".into(),
            secret.display().to_string(),
            "--publish-keys-file".into(),
            keys.display().to_string(),
            "--dashboard-keys-file".into(),
            dashboard_keys.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, files, rust_log, env)
    }

    /// `herald-gateway dev`.
    pub fn dev(extra: &[&str]) -> Gateway {
        let mut args: Vec<String> = vec!["dev".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, tempfile::tempdir().unwrap(), "info", &[])
    }

    fn spawn(args: &[String], files: tempfile::TempDir, rust_log: &str, env: &[(&str, &str)]) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", rust_log)
            .env_remove("HERALD_LISTEN")
            // Traces only where a test asks for them, whatever the developer's shell exports.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald-gateway");
        let stderr = child.stderr.take().unwrap();
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
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start: {:#?}", log.lock().unwrap());
            }
        };
        Gateway { child, addr, log, _files: files }
    }

    pub async fn stats(&self) -> serde_json::Value {
        let res = http(self.addr, "GET", "/stats", &[], None).await;
        serde_json::from_slice(&res.body).unwrap()
    }

    /// Waits until the gateway reports ready (NATS connected).
    pub async fn ready(&self) {
        eventually("gateway ready", Duration::from_secs(15), || async {
            http(self.addr, "GET", "/readyz", &[], None).await.status == 200
        })
        .await;
    }

    pub async fn publish(&self, body: serde_json::Value) -> Response {
        let auth = format!("Bearer {PUBLISH_KEY}");
        http(
            self.addr,
            "POST",
            "/v1/publish",
            &[("Authorization", &auth), ("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .await
    }

    /// Publishes through the HTTP API, expecting 200; returns the ids.
    pub async fn publish_ids(&self, body: serde_json::Value) -> Vec<String> {
        let res = self.publish(body).await;
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        res.json()["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect()
    }

    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        String::from_utf8(http(self.addr, "GET", "/metrics", &[], None).await.body).unwrap()
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The names of the process's threads.
    pub fn threads(&self) -> Vec<String> {
        let tasks = std::fs::read_dir(format!("/proc/{}/task", self.child.id())).unwrap();
        tasks
            .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("comm")).ok())
            .map(|name| name.trim().to_owned())
            .collect()
    }

    /// Resident memory of the process, in bytes.
    pub fn rss(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kb: u64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap();
        kb * 1024
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits for the process to exit, up to `wait`; returns its exit code.
    pub fn wait_exit(&mut self, wait: Duration) -> Option<i32> {
        let end = Instant::now() + wait;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return status.code();
            }
            if Instant::now() > end {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A signed HS256 client token.
pub fn token(user: &str, channels: &[&str], exp_in_secs: i64) -> String {
    let exp = jsonwebtoken::get_current_timestamp() as i64 + exp_in_secs;
    let claims = serde_json::json!({"sub": user, "exp": exp, "channels": channels});
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET))
        .unwrap()
}

/// A signed HS256 client token with these claims (`exp` is added when missing).
pub fn token_with(mut claims: serde_json::Value) -> String {
    if claims.get("exp").is_none() {
        claims["exp"] = serde_json::json!(jsonwebtoken::get_current_timestamp() + 600);
    }
    jsonwebtoken::encode(&jsonwebtoken::Header::default(), &claims, &jsonwebtoken::EncodingKey::from_secret(SECRET))
        .unwrap()
}

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }
}

/// `POST /v1/publish` with the test publisher key, answering rather than panicking when the
/// gateway cannot be reached.
pub async fn try_publish(addr: SocketAddr, body: &serde_json::Value) -> Result<Response, String> {
    let auth = format!("Bearer {PUBLISH_KEY}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    try_http(addr, "POST", "/v1/publish", &headers, Some(body.to_string().as_bytes())).await
}

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    request(addr, method, target, headers, body, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// [`http`], answering what went wrong instead of panicking (the connection refused, no
/// complete response), and waiting up to 30 s for the response.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    request(addr, method, target, headers, body, Duration::from_secs(30)).await
}

async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    wait: Duration,
) -> Result<Response, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let (mut rd, mut wr) = stream.into_split();
    let body = body.map(<[u8]>::to_vec);
    // Written concurrently: the server may answer (413) before reading the whole body.
    let writer = tokio::spawn(async move {
        wr.write_all(req.as_bytes()).await?;
        if let Some(b) = body {
            wr.write_all(&b).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(wait, rd.read_to_end(&mut raw)).await;
    writer.abort();
    let (status, headers, rest) =
        parse_head(&raw).ok_or_else(|| format!("bad response: {}", String::from_utf8_lossy(&raw)))?;
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut d = Dechunker::default();
        d.feed(rest);
        d.out
    } else {
        rest.to_vec()
    };
    Ok(Response { status, headers, body })
}

pub type Headers = Vec<(String, String)>;

/// An HTTP/1 response's status and headers, and the bytes after its head; None while incomplete.
pub fn parse_head(raw: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Some((status, headers, &raw[end + 4..]))
}

/// Incremental chunked transfer-encoding decoder.
#[derive(Default)]
struct Dechunker {
    buf: Vec<u8>,
    out: Vec<u8>,
    remaining: usize,
    done: bool,
}

impl Dechunker {
    fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        loop {
            if self.done {
                return;
            }
            if self.remaining > 0 {
                let n = self.remaining.min(self.buf.len());
                if n == 0 {
                    return;
                }
                self.out.extend_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                self.remaining -= n;
                if self.remaining > 0 {
                    return;
                }
                continue;
            }
            // Expect [CRLF] size CRLF.
            let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") else { return };
            let line = String::from_utf8_lossy(&self.buf[..pos]).to_string();
            self.buf.drain(..pos + 2);
            if line.is_empty() {
                continue; // the CRLF after a chunk
            }
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("chunk size");
            if size == 0 {
                self.done = true;
                return;
            }
            self.remaining = size;
        }
    }
}

/// One parsed SSE event.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    pub id: Option<String>,
    pub event: String,
    pub data: String,
    pub retry: Option<u64>,
}

impl Event {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).unwrap_or_else(|_| panic!("data is not JSON: {}", self.data))
    }
}

/// A streaming SSE client over a raw socket.
pub struct Sse {
    stream: TcpStream,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    dechunk: Dechunker,
    text: String,
    pub comments: usize,
    pub ended: bool,
    pending_retry: Option<u64>,
}

impl Sse {
    /// Opens `GET target`; returns the error response instead when the status is not 200.
    pub async fn open(addr: SocketAddr, target: &str, headers: &[(&str, &str)]) -> Result<Sse, Response> {
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nAccept: text/event-stream\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        stream.write_all(req.as_bytes()).await.unwrap();
        let mut raw = Vec::new();
        let mut buf = [0u8; 8192];
        let (status, headers, rest) = loop {
            let n = tokio::time::timeout(Duration::from_secs(15), stream.read(&mut buf))
                .await
                .expect("response head")
                .unwrap();
            assert!(n > 0, "connection closed before the response head");
            raw.extend_from_slice(&buf[..n]);
            if let Some((s, h, rest)) = parse_head(&raw) {
                break (s, h, rest.to_vec());
            }
        };
        if status != 200 {
            // Read the body by its length (the connection stays open: keep-alive).
            let length: Option<usize> = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .and_then(|(_, v)| v.parse().ok());
            let mut all = rest;
            while length.is_none_or(|l| all.len() < l) {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let chunked =
                headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
            let body = if chunked {
                let mut d = Dechunker::default();
                d.feed(&all);
                d.out
            } else {
                all
            };
            return Err(Response { status, headers, body });
        }
        let mut sse = Sse {
            stream,
            status,
            headers,
            dechunk: Dechunker::default(),
            text: String::new(),
            comments: 0,
            ended: false,
            pending_retry: None,
        };
        sse.dechunk.feed(&rest);
        Ok(sse)
    }

    /// Opens a stream for a token, resuming after `last_id`.
    pub async fn resume(addr: SocketAddr, token: &str, channels: &[&str], last_id: &str) -> Sse {
        let target = format!("/events?channels={}", channels.join(","));
        let auth = format!("Bearer {token}");
        match Sse::open(addr, &target, &[("Authorization", &auth), ("Last-Event-ID", last_id)]).await {
            Ok(s) => s,
            Err(r) => panic!("stream refused: {} {}", r.status, String::from_utf8_lossy(&r.body)),
        }
    }

    /// Opens a stream for a token (as `Authorization: Bearer`).
    pub async fn with_token(addr: SocketAddr, token: &str, channels: &[&str]) -> Sse {
        let target = format!("/events?channels={}", channels.join(","));
        let auth = format!("Bearer {token}");
        match Sse::open(addr, &target, &[("Authorization", &auth)]).await {
            Ok(s) => s,
            Err(r) => panic!("stream refused: {} {}", r.status, String::from_utf8_lossy(&r.body)),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn take_event(&mut self) -> Option<Event> {
        self.text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.dechunk.out)));
        loop {
            let end = self.text.find("\n\n")?;
            let block: String = self.text.drain(..end + 2).collect();
            let mut ev = Event { id: None, event: "message".into(), data: String::new(), retry: None };
            let mut data_lines = Vec::new();
            let mut any = false;
            for line in block.lines() {
                if line.starts_with(':') {
                    self.comments += 1;
                    continue;
                }
                let (field, value) =
                    line.split_once(':').map(|(f, v)| (f, v.strip_prefix(' ').unwrap_or(v))).unwrap_or((line, ""));
                match field {
                    "id" => ev.id = Some(value.to_owned()),
                    "event" => ev.event = value.to_owned(),
                    "data" => data_lines.push(value.to_owned()),
                    "retry" => self.pending_retry = value.parse().ok(),
                    _ => {}
                }
                any = true;
            }
            if !data_lines.is_empty() {
                ev.data = data_lines.join("\n");
                ev.retry = self.pending_retry.take();
                return Some(ev);
            }
            let _ = any;
        }
    }

    async fn read_more(&mut self, deadline: Instant) -> bool {
        let mut buf = [0u8; 16384];
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                self.ended = true;
                false
            }
            Ok(Ok(n)) => {
                self.dechunk.feed(&buf[..n]);
                if self.dechunk.done {
                    self.ended = true;
                }
                true
            }
            Err(_) => false,
        }
    }

    /// The next event, or `None` if none arrives within `wait` (or the stream ended).
    pub async fn next_within(&mut self, wait: Duration) -> Option<Event> {
        let deadline = Instant::now() + wait;
        loop {
            if let Some(ev) = self.take_event() {
                return Some(ev);
            }
            if self.ended || !self.read_more(deadline).await {
                return self.take_event();
            }
        }
    }

    /// The next event; panics if none arrives within 10 s.
    pub async fn next(&mut self) -> Event {
        self.next_within(Duration::from_secs(10)).await.expect("an event within 10 s")
    }

    /// The next event that is not a control event.
    pub async fn next_event(&mut self) -> Event {
        loop {
            let ev = self.next().await;
            if ev.event != "connected" {
                return ev;
            }
        }
    }

    /// Reads until `count` comments (heartbeats) have been seen in total.
    pub async fn wait_comments(&mut self, count: usize, wait: Duration) -> bool {
        let deadline = Instant::now() + wait;
        loop {
            while self.take_event().is_some() {}
            if self.comments >= count {
                return true;
            }
            if self.ended || !self.read_more(deadline).await {
                return self.comments >= count;
            }
        }
    }

    /// Reads until the server ends the stream; returns the events seen on the way.
    pub async fn read_to_end(&mut self, wait: Duration) -> Vec<Event> {
        let deadline = Instant::now() + wait;
        let mut events = Vec::new();
        loop {
            while let Some(ev) = self.take_event() {
                events.push(ev);
            }
            if self.ended {
                return events;
            }
            if !self.read_more(deadline).await && Instant::now() >= deadline {
                return events;
            }
        }
    }

    /// Drops the socket with an RST, as a crashed client or a vanished network would.
    pub fn vanish(self) {
        let std = self.stream.into_std().unwrap();
        let sock = socket2::SockRef::from(&std);
        let _ = sock.set_linger(Some(Duration::ZERO));
        drop(std);
    }
}

/// The epoch of an `<epoch>-<seq>` id.
pub fn epoch_of(id: &str) -> &str {
    id.rsplit_once('-').unwrap_or_else(|| panic!("not an event id: {id}")).0
}

/// The sequence of an `<epoch>-<seq>` id.
pub fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, s)| s.parse().ok()).unwrap_or_else(|| panic!("not an event id: {id}"))
}

/// What a [`Follower`] has seen.
#[derive(Default, Debug)]
pub struct Seen {
    /// Sequences of the durable events received, in arrival order.
    pub seqs: Vec<u64>,
    pub connects: usize,
    /// When each stream that had been connected ended.
    pub ends: Vec<Instant>,
    pub resets: Vec<String>,
    pub last_id: Option<String>,
    /// The cursor its first stream opened with (`connected`'s id): it is owed every event
    /// after it.
    pub first_cursor: Option<u64>,
}

/// A client that follows its stream like the browser client does: on any end or error it
/// reconnects (to the next gateway when one is unreachable) with `Last-Event-ID`.
pub struct Follower {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn start(gateways: Vec<SocketAddr>, token: String, channels: Vec<String>) -> Follower {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        let task = tokio::spawn(async move {
            let mut at = 0usize;
            loop {
                let addr = gateways[at % gateways.len()];
                let last = state.lock().unwrap().last_id.clone();
                let target = format!("/events?channels={}", channels.join(","));
                let auth = format!("Bearer {token}");
                let mut headers = vec![("Authorization", auth.as_str())];
                if let Some(last) = &last {
                    headers.push(("Last-Event-ID", last.as_str()));
                }
                let opened = match TcpStream::connect(addr).await {
                    Ok(probe) => {
                        drop(probe);
                        Sse::open(addr, &target, &headers).await.ok()
                    }
                    Err(_) => None,
                };
                let Some(mut sse) = opened else {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut was_connected = false;
                while let Some(ev) = sse.next_within(Duration::from_secs(3600)).await {
                    was_connected |= ev.event == "connected";
                    let mut s = state.lock().unwrap();
                    match ev.event.as_str() {
                        "connected" => {
                            s.connects += 1;
                            if s.connects == 1 {
                                s.first_cursor = ev.id.as_deref().map(seq_of);
                            }
                        }
                        "reset" => s.resets.push(ev.json()["reason"].as_str().unwrap_or("").to_owned()),
                        _ => {
                            if let Some(id) = &ev.id {
                                s.seqs.push(seq_of(id));
                            }
                        }
                    }
                    // As EventSource does: any id moves the cursor (a new stream's `connected`
                    // carries its first one, a `reset` the history's head).
                    if let Some(id) = &ev.id {
                        s.last_id = Some(id.clone());
                    }
                }
                if was_connected {
                    state.lock().unwrap().ends.push(Instant::now());
                }
                // The stream ended: come back after a short, jittered pause, through the "load
                // balancer" (the next gateway), as a draining or dead pod takes no new streams.
                at += 1;
                tokio::time::sleep(Duration::from_millis(20 + rand_below(80))).await;
            }
        });
        Follower { seen, task }
    }

    pub fn seqs(&self) -> Vec<u64> {
        self.seen.lock().unwrap().seqs.clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % n
}

/// Missing and duplicated sequences of `got` against `expected`.
pub fn diff(expected: &[u64], got: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let have: std::collections::HashSet<u64> = got.iter().copied().collect();
    let missing = expected.iter().copied().filter(|s| !have.contains(s)).collect();
    let mut counts = std::collections::HashMap::new();
    for s in got {
        *counts.entry(*s).or_insert(0) += 1;
    }
    let mut dups: Vec<u64> = counts.into_iter().filter(|(_, n)| *n > 1).map(|(s, _)| s).collect();
    dups.sort();
    (missing, dups)
}

/// A TCP proxy on 127.0.0.1 that can cut every connection through it and refuse new ones,
/// to take a gateway's link to NATS down while NATS itself stays up; and that can hold back
/// what it passes on, to slow a NATS route down.
pub struct Proxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds each chunk waits before it is passed on (0: none).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    links: Arc<Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

/// How a NATS server opens the route that carries only its system account (in its `INFO`),
/// which [`Proxy::delay`] leaves alone.
const SYSTEM_ACCOUNT_ROUTE: &[u8] = br#""route_account":"$SYS""#;

impl Proxy {
    pub async fn start(target_port: u16) -> Proxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let delay_ms = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let links = Arc::new(Mutex::new(Vec::new()));
        let (up2, links2, delay2) = (up.clone(), links.clone(), delay_ms.clone());
        let accept = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: refused
                }
                let delay = delay2.clone();
                let link = tokio::spawn(async move {
                    if let Ok(outbound) = TcpStream::connect(("127.0.0.1", target_port)).await {
                        let exempt = Arc::new(std::sync::atomic::AtomicBool::new(false));
                        let (from_in, to_in) = inbound.into_split();
                        let (from_out, to_out) = outbound.into_split();
                        tokio::join!(
                            pass_on(from_in, to_out, delay.clone(), exempt.clone(), true),
                            pass_on(from_out, to_in, delay, exempt, false),
                        );
                    }
                });
                links2.lock().unwrap().push(link);
            }
        });
        Proxy { port, up, delay_ms, links, accept }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Cuts every open connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self.links.lock().unwrap().drain(..) {
            link.abort();
        }
    }

    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Holds back everything passed on, both ways, by `delay` (in order; zero ends it), except
    /// on a NATS route of the system account alone: JetStream's API requests and answers
    /// travel there at full speed while the interest and messages of the other accounts lag.
    pub fn delay(&self, delay: Duration) {
        self.delay_ms.store(delay.as_millis() as u64, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Copies `from` to `to`, each chunk held back by the proxy's delay at the time it was read.
/// `sniff`: this is the opener's side, whose first bytes tell a system account route.
async fn pass_on(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
    exempt: Arc<std::sync::atomic::AtomicBool>,
    sniff: bool,
) {
    use std::sync::atomic::Ordering::SeqCst;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(tokio::time::Instant, Vec<u8>)>();
    let read = async move {
        let mut opening = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        while let Ok(n) = from.read(&mut buf).await {
            if n == 0 {
                break;
            }
            if sniff && opening.len() < 8192 {
                opening.extend_from_slice(&buf[..n]);
                if opening.windows(SYSTEM_ACCOUNT_ROUTE.len()).any(|w| w == SYSTEM_ACCOUNT_ROUTE) {
                    exempt.store(true, SeqCst);
                }
            }
            let held = if exempt.load(SeqCst) { 0 } else { delay_ms.load(SeqCst) };
            let due = tokio::time::Instant::now() + Duration::from_millis(held);
            if tx.send((due, buf[..n].to_vec())).is_err() {
                break;
            }
        }
    };
    let write = async move {
        while let Some((due, chunk)) = rx.recv().await {
            tokio::time::sleep_until(due).await;
            if to.write_all(&chunk).await.is_err() {
                return;
            }
        }
        let _ = to.shutdown().await;
    };
    tokio::join!(read, write);
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

/// Opens a firehose stream on a raw socket with a small receive window (as on a slow mobile
/// link; on loopback the kernel would otherwise buffer tens of megabytes) and reads until the
/// stream is open.
pub async fn firehose_client(addr: SocketAddr, user: &str) -> tokio::net::TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(16 * 1024).unwrap();
    let mut tcp = socket.connect(addr).await.unwrap();
    let t = token(user, &["firehose"], 3600);
    let req = format!("GET /events?channels=firehose HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {t}\r\n\r\n");
    tcp.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains("event: connected") {
        let mut buf = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(10), tcp.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "stream closed: {}", String::from_utf8_lossy(&head));
        head.extend_from_slice(&buf[..n]);
    }
    tcp
}
