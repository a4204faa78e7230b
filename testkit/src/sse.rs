//! A streaming SSE client over a raw socket, which parses the event stream itself; and the
//! marker that shows nothing more arrived: a test publishes a `marker` event after everything
//! it expects, and whatever the stream holds before the marker arrived (unexpectedly or not).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::http::{Dechunker, Headers, Response, body_of, header, parse_head};
use crate::tokens::token;

/// The type of the event a test publishes last, after everything it expects on a stream.
pub const MARKER: &str = "marker";

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

/// The epoch of an `<epoch>-<seq>` id.
pub fn epoch_of(id: &str) -> &str {
    id.rsplit_once('-').unwrap_or_else(|| panic!("not an event id: {id}")).0
}

/// The sequence of an `<epoch>-<seq>` id.
pub fn seq_of(id: &str) -> u64 {
    id.rsplit_once('-').and_then(|(_, s)| s.parse().ok()).unwrap_or_else(|| panic!("not an event id: {id}"))
}

/// A streaming SSE client over a raw socket.
pub struct Sse {
    stream: TcpStream,
    pub status: u16,
    pub headers: Headers,
    dechunk: Dechunker,
    text: String,
    /// Comments (heartbeats) seen so far.
    pub comments: usize,
    /// The server ended the stream.
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
            let length: Option<usize> = header(&headers, "content-length").and_then(|v| v.parse().ok());
            let mut all = rest;
            while length.is_none_or(|l| all.len() < l) {
                match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
                    Ok(Ok(n)) if n > 0 => all.extend_from_slice(&buf[..n]),
                    _ => break,
                }
            }
            let body = body_of(&headers, all);
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

    /// Opens a stream for a token (as `Authorization: Bearer`), resuming after `last_id`.
    pub async fn resume(addr: SocketAddr, token: &str, channels: &[&str], last_id: &str) -> Sse {
        Self::open_for(addr, token, channels, Some(last_id)).await
    }

    /// Opens a stream for a token (as `Authorization: Bearer`).
    pub async fn with_token(addr: SocketAddr, token: &str, channels: &[&str]) -> Sse {
        Self::open_for(addr, token, channels, None).await
    }

    async fn open_for(addr: SocketAddr, token: &str, channels: &[&str], last_id: Option<&str>) -> Sse {
        let target = format!("/events?channels={}", channels.join(","));
        let auth = format!("Bearer {token}");
        let mut headers = vec![("Authorization", auth.as_str())];
        headers.extend(last_id.map(|id| ("Last-Event-ID", id)));
        match Sse::open(addr, &target, &headers).await {
            Ok(s) => s,
            Err(r) => panic!("stream refused: {} {}", r.status, String::from_utf8_lossy(&r.body)),
        }
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    fn take_event(&mut self) -> Option<Event> {
        self.text.push_str(&String::from_utf8_lossy(&std::mem::take(&mut self.dechunk.out)));
        loop {
            let end = self.text.find("\n\n")?;
            let block: String = self.text.drain(..end + 2).collect();
            let mut ev = Event { id: None, event: "message".into(), data: String::new(), retry: None };
            let mut data_lines = Vec::new();
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
            }
            if !data_lines.is_empty() {
                ev.data = data_lines.join("\n");
                ev.retry = self.pending_retry.take();
                return Some(ev);
            }
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

    /// Asserts that the very next event is the [`MARKER`] with `id` (`None`: one without an
    /// id): nothing arrived between what the test has read and the marker it published last.
    pub async fn assert_next_is_marker(&mut self, id: Option<&str>) {
        let ev = self.next().await;
        assert_eq!((ev.event.as_str(), ev.id.as_deref()), (MARKER, id), "nothing before the marker, got {ev:?}");
    }

    /// Reads up to the next [`MARKER`], skipping control events; returns the events before it,
    /// in order, and the marker. Panics if the stream ends or nothing arrives for 10 s first.
    pub async fn read_to_marker(&mut self) -> (Vec<Event>, Event) {
        self.try_read_to_marker().await.unwrap_or_else(|_| panic!("an event within 10 s"))
    }

    /// [`Sse::read_to_marker`], or, when the stream ends or nothing arrives for 10 s before the
    /// marker, the events that came before.
    pub async fn try_read_to_marker(&mut self) -> Result<(Vec<Event>, Event), Vec<Event>> {
        self.read_to_marker_within(Duration::from_secs(10)).await
    }

    /// [`Sse::try_read_to_marker`] waiting up to `wait` for each event instead of 10 s.
    pub async fn read_to_marker_within(&mut self, wait: Duration) -> Result<(Vec<Event>, Event), Vec<Event>> {
        let mut before = Vec::new();
        loop {
            let Some(ev) = self.next_within(wait).await else { return Err(before) };
            match ev.event.as_str() {
                "connected" => {}
                MARKER => return Ok((before, ev)),
                _ => before.push(ev),
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

/// The receive buffer of a client on a slow mobile link: on loopback the kernel would otherwise
/// buffer megabytes before a client that stopped reading fills its queue.
pub const SMALL_WINDOW: Option<u32> = Some(16 * 1024);

/// A wide receive buffer: 4 MiB asked for, which the kernel caps at `net.core.rmem_max` and
/// then doubles (8 MiB where that is 4 MiB), so that a reader that keeps up rides out a pause of
/// its own process of a second at 8 MB/s without being cut as slow. Left to grow on its own,
/// the buffer did not: the same test, its reader paused for 1 s, cut it.
pub const WIDE_WINDOW: Option<u32> = Some(4 << 20);

/// Opens a firehose stream for `user` on a raw socket with a receive buffer of `window` bytes
/// (the kernel's own without one) and reads until the stream is open. What the caller then
/// reads, or never reads, is up to it.
pub async fn firehose_client(addr: SocketAddr, user: &str, window: Option<u32>) -> TcpStream {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    if let Some(window) = window {
        socket.set_recv_buffer_size(window).unwrap();
    }
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
