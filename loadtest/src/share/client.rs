//! One client of a share: its attempts to open a stream, the stream's reading and accounting,
//! and its reconnections.

use std::rc::Rc;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;

use super::{Shared, TOKEN_SECS, expected_of};
use crate::http::{BodyReader, Target, parse_head, write_request};
use crate::payload;
use crate::proto::Job;
use crate::sse;
use crate::track::Arrival;

/// Counts a connection as live for as long as it is held (also when its task is aborted).
struct Live(Rc<Shared>, bool);

impl Live {
    fn up(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.live.set(self.0.live.get() + 1);
        }
    }
}

impl Drop for Live {
    fn drop(&mut self) {
        if self.1 {
            self.0.live.set(self.0.live.get() - 1);
        }
    }
}

/// Marks the client's first attempt as finished (connected or failed), exactly once.
struct Attempt(Rc<Shared>, bool);

impl Attempt {
    fn done(&mut self, ok: bool) {
        if !self.1 {
            self.1 = true;
            self.0.attempted.set(self.0.attempted.get() + 1);
            let mut c = self.0.counters.borrow_mut();
            if ok {
                c.connected += 1;
                self.0.connect_end_ms.set(payload::now_ns() / 1_000_000);
                self.0.connect_cpu.set(crate::sys::cpu_time().saturating_sub(self.0.cpu0));
            } else {
                c.connect_failed += 1;
            }
        }
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        if !self.1 {
            self.1 = true;
            self.0.attempted.set(self.0.attempted.get() + 1);
        }
    }
}

fn url_for(job: &Job, i: u64, target: &str) -> String {
    let mut url = job
        .sse_template
        .replace("{target}", target)
        .replace("{channel}", &job.channel_of(i))
        .replace("{user}", &job.user_of(i))
        .replace("{i}", &i.to_string());
    if job.herald && job.jwt_secret_file.is_none() && !url.contains("user=") {
        // A dev gateway takes the user from the query.
        url.push(if url.contains('?') { '&' } else { '?' });
        url.push_str("user=");
        url.push_str(&job.user_of(i));
    }
    url
}

fn token_for(sh: &Shared, i: u64) -> Option<String> {
    let secret = sh.secret.as_ref()?;
    let exp = payload::now_ns() / 1_000_000_000 + TOKEN_SECS;
    let claims = serde_json::json!({"sub": sh.job.user_of(i), "exp": exp, "channels": [sh.job.channel_of(i)]});
    jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(secret)).ok()
}

/// Why a stream did not open.
enum OpenError {
    Refused,
    Io,
}

pub(super) async fn client(sh: Rc<Shared>, k: usize, at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at.into()).await;
    }
    let i = sh.job.first + k as u64;
    let n = sh.job.targets.len().max(1);
    let mut target_at = if sh.job.start_on_first { 0 } else { i as usize % n };
    let mut attempt = Attempt(sh.clone(), false);
    let mut last_id: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        let started = Instant::now();
        let permit = sh.permits.clone().acquire_owned().await.ok();
        sh.counters.borrow_mut().connect_attempts += 1;
        let url = url_for(&sh.job, i, &sh.job.targets[target_at % n]);
        let timeout = Duration::from_secs(sh.job.connect_timeout_secs.max(1));
        let opened = tokio::time::timeout(timeout, open(&sh, i, &url, &last_id)).await;
        let (stream, body, rest) = match opened {
            Ok(Ok(x)) => x,
            Ok(Err(OpenError::Refused | OpenError::Io)) | Err(_) => {
                drop(permit);
                if first {
                    attempt.done(false);
                }
                if !sh.job.reconnect {
                    return;
                }
                target_at += 1;
                tokio::time::sleep(Duration::from_millis(50 + (i % 50))).await;
                continue;
            }
        };
        let mut conn = Conn {
            sh: sh.clone(),
            k,
            body,
            parser: sse::Parser::new(),
            live: Live(sh.clone(), false),
            started,
            first,
            permit,
            attempt: &mut attempt,
        };
        if !sh.job.herald {
            conn.connected(payload::now_ns());
        }
        conn.read(&rest);
        conn.pump(&stream).await;
        let connected = conn.live.1;
        if !conn.parser.last_id().is_empty() {
            last_id.clear();
            last_id.extend_from_slice(conn.parser.last_id());
        }
        drop(conn);
        if connected {
            sh.counters.borrow_mut().disconnects += 1;
            first = false;
        } else if first {
            attempt.done(false);
        }
        if !sh.job.reconnect {
            return;
        }
        sh.counters.borrow_mut().reconnects += 1;
        target_at += 1;
        tokio::time::sleep(Duration::from_millis(20 + (i % 80))).await;
    }
}

async fn open(sh: &Shared, i: u64, url: &str, last_id: &[u8]) -> Result<(TcpStream, BodyReader, Vec<u8>), OpenError> {
    let target = Target::parse(url).map_err(|_| OpenError::Io)?;
    let mut stream = crate::sys::connect(&target.authority, i).await.map_err(|_| OpenError::Io)?;
    let token = token_for(sh, i).map(|t| format!("Bearer {t}"));
    let last = String::from_utf8_lossy(last_id).into_owned();
    let mut headers: Vec<(&str, &str)> = vec![("Accept", "text/event-stream")];
    if let Some(t) = &token {
        headers.push(("Authorization", t));
    }
    if !last.is_empty() {
        headers.push(("Last-Event-ID", &last));
    }
    let mut req = Vec::with_capacity(512);
    write_request(&mut req, "GET", &target, &headers, b"");
    stream.write_all(&req).await.map_err(|_| OpenError::Io)?;
    let mut head = Vec::with_capacity(512);
    loop {
        stream.readable().await.map_err(|_| OpenError::Io)?;
        let mut chunk = [0u8; 2048];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(OpenError::Io),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(_) => return Err(OpenError::Io),
        }
        match parse_head(&head) {
            Ok(None) => continue,
            Ok(Some((h, used))) => {
                if h.status != 200 {
                    return Err(OpenError::Refused);
                }
                let rest = head[used..].to_vec();
                return Ok((stream, BodyReader::new(h.framing), rest));
            }
            Err(_) => return Err(OpenError::Io),
        }
    }
}

/// One open stream.
struct Conn<'a> {
    sh: Rc<Shared>,
    k: usize,
    body: BodyReader,
    parser: sse::Parser,
    live: Live,
    started: Instant,
    first: bool,
    permit: Option<OwnedSemaphorePermit>,
    attempt: &'a mut Attempt,
}

impl Conn<'_> {
    fn connected(&mut self, now_ns: u64) {
        if self.live.1 {
            return;
        }
        self.live.up();
        self.permit = None;
        self.sh.clients.borrow_mut()[self.k].connected_ns = now_ns;
        if self.first {
            self.sh.connect_latency.borrow_mut().record_us(self.started.elapsed().as_micros() as u64);
            self.attempt.done(true);
        }
        check_caught_up(&self.sh, self.k, now_ns);
    }

    async fn pump(&mut self, stream: &TcpStream) {
        loop {
            if stream.readable().await.is_err() {
                return;
            }
            let sh = self.sh.clone();
            let mut buf = sh.buf.borrow_mut();
            match stream.try_read(&mut buf) {
                Ok(0) => return,
                Ok(n) => {
                    if !self.read(&buf[..n]) {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    }

    /// Processes body bytes; `false` when the stream is over or broken.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let now = payload::now_ns();
        let mut events = std::mem::take(&mut *self.sh.events.borrow_mut());
        events.clear();
        let mut parser = std::mem::take(&mut self.parser);
        let ok = self.body.feed(bytes, &mut |piece| {
            parser.feed(piece, &mut |ev: &sse::Event<'_>| {
                events.push(classify(ev));
            })
        });
        self.parser = parser;
        for ev in events.drain(..) {
            self.handle(ev, now);
        }
        *self.sh.events.borrow_mut() = events;
        matches!(ok, Ok(false))
    }

    fn handle(&mut self, ev: Seen, now: u64) {
        match ev {
            Seen::Connected => self.connected(now),
            Seen::Reset => self.sh.counters.borrow_mut().resets += 1,
            Seen::Payload { sent_ns, seq } => {
                if !self.live.1 {
                    self.connected(now); // a server that sends no `connected`
                }
                let arrival = self.sh.clients.borrow_mut()[self.k].tracker.record(seq);
                self.sh.interval_deliveries.set(self.sh.interval_deliveries.get() + 1);
                if matches!(arrival, Arrival::New | Arrival::OutOfOrder) {
                    let us = now.saturating_sub(sent_ns) / 1000;
                    self.sh.latency.borrow_mut().record_us(us);
                    self.sh.interval.borrow_mut().record_us(us);
                }
                check_caught_up(&self.sh, self.k, now);
            }
            Seen::Other => {}
        }
    }
}

/// What an event means to the harness (copied out of the parser's borrowed buffers).
pub(super) enum Seen {
    Connected,
    Reset,
    Payload { sent_ns: u64, seq: u64 },
    Other,
}

fn classify(ev: &sse::Event<'_>) -> Seen {
    match ev.kind() {
        b"connected" => Seen::Connected,
        b"reset" => Seen::Reset,
        _ => match payload::decode(ev.data) {
            Some((sent_ns, seq)) => Seen::Payload { sent_ns, seq },
            None => Seen::Other,
        },
    }
}

/// Resume: a client has caught up once it is connected again after the kill and holds every
/// event published to it before the kill.
pub(super) fn check_caught_up(sh: &Shared, k: usize, now_ns: u64) {
    let Some((published, kill_ns)) = sh.kill.get() else { return };
    let mut clients = sh.clients.borrow_mut();
    let c = &mut clients[k];
    if c.caught_up || c.connected_ns < kill_ns {
        return;
    }
    if c.tracker.contiguous >= expected_of(sh, k, published) {
        c.caught_up = true;
        sh.catch_up.borrow_mut().record_us(now_ns.saturating_sub(kill_ns) / 1000);
    }
}
