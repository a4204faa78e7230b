//! The chaos clients: SSE streams spread over the gateways, each subscribed to its own user, two
//! channels and broadcast, recording every event they receive (id, publish sequence, target,
//! which stream carried it). When a stream ends (its gateway died, the gateway closed it) or is
//! dropped on purpose (a deliberate resume), the client reconnects to the next gateway that is up
//! with `Last-Event-ID`: the last id its streams carried, `connected`'s cursor included, exactly
//! what EventSource sends.
//!
//! At 100-odd clients and tens of events a second, clarity beats the zero-copy tricks of
//! [`crate::share`]: envelopes are parsed with serde, and every delivery is kept for the
//! reconciliation at the end.

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::rc::Rc;
use std::time::{Duration, Instant};

use jsonwebtoken::{EncodingKey, Header};
use serde::Serialize;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::Notify;

use super::Series;
use super::fleet::Fleet;
use super::publisher::EventTarget;
use super::reconcile::{Delivery, stream_seq};
use crate::http::{BodyReader, Target, parse_head, write_request};
use crate::payload;
use crate::sse;

/// Lifetime of the clients' tokens.
const TOKEN_SECS: u64 = 24 * 3600;
/// How long opening a stream may take, until `connected`.
const OPEN_TIMEOUT: Duration = Duration::from_secs(15);

/// Who one client is.
#[derive(Clone, Debug)]
pub struct Spec {
    pub user: String,
    pub channels: Vec<String>,
}

impl Spec {
    /// What the client's streams carry: its user, its channels and broadcast.
    pub fn targets(&self) -> Vec<EventTarget> {
        let mut t = vec![EventTarget::User(self.user.clone())];
        t.extend(self.channels.iter().map(|c| EventTarget::Channel(c.clone())));
        t.push(EventTarget::Broadcast);
        t
    }
}

/// One stream of a client, for the report.
#[derive(Clone, Debug, Serialize)]
pub struct StreamRecord {
    pub gateway: usize,
    pub opened_at_s: f64,
    /// The `Last-Event-ID` it was opened with (empty: none).
    pub last_event_id: String,
    /// `connected`'s `resumed`.
    pub resumed: Option<bool>,
    pub closed_at_s: Option<f64>,
    /// `closed` (the server ended it), `error`, `deliberate` (a deliberate resume), or `open`
    /// (still open at the end).
    pub end: &'static str,
    pub events: u64,
}

#[derive(Default)]
pub struct State {
    pub deliveries: Vec<Delivery>,
    pub seen: HashSet<String>,
    pub streams: Vec<StreamRecord>,
    /// Streams opened with a `Last-Event-ID`.
    pub resumes: u64,
    pub deliberate: u64,
    pub resets: u64,
    /// The highest id (epoch, sequence) a `missed` reset named: the client was told to refetch
    /// its state up to there.
    pub refetched: Option<(String, u64)>,
    /// Streams opened with an id whose `connected` said `"resumed": false`.
    pub not_resumed: u64,
    /// Durable-looking events without an id.
    pub without_id: u64,
    pub failed_opens: u64,
    last_id: Vec<u8>,
}

pub struct Clients {
    pub specs: Vec<Spec>,
    pub states: Vec<RefCell<State>>,
    kicks: Vec<Notify>,
    fleet: Rc<Fleet>,
    secret: Vec<u8>,
    t0: Cell<Instant>,
    series: Rc<Series>,
    /// Streams open now.
    pub open: Cell<u64>,
}

impl Clients {
    pub fn new(specs: Vec<Spec>, fleet: Rc<Fleet>, secret: Vec<u8>, series: Rc<Series>) -> Rc<Clients> {
        let n = specs.len();
        Rc::new(Clients {
            specs,
            states: (0..n).map(|_| RefCell::default()).collect(),
            kicks: (0..n).map(|_| Notify::new()).collect(),
            fleet,
            secret,
            t0: Cell::new(Instant::now()),
            series,
            open: Cell::new(0),
        })
    }

    /// Times from now on are relative to `t0` (the start of publishing).
    pub fn set_t0(&self, t0: Instant) {
        self.t0.set(t0);
    }

    fn secs(&self, at: Instant) -> f64 {
        let t0 = self.t0.get();
        let s = if at >= t0 { at.duration_since(t0).as_secs_f64() } else { -t0.duration_since(at).as_secs_f64() };
        (s * 1000.0).round() / 1000.0
    }

    /// Drops client `k`'s stream; it resumes on the next gateway.
    pub fn kick(&self, k: usize) {
        self.kicks[k].notify_one();
    }

    /// Whether every client has connected once.
    pub fn all_connected(&self) -> bool {
        self.states.iter().all(|s| s.borrow().streams.iter().any(|r| r.resumed.is_some()))
    }

    fn token(&self, k: usize) -> String {
        let spec = &self.specs[k];
        let exp = payload::now_ns() / 1_000_000_000 + TOKEN_SECS;
        let claims = serde_json::json!({"sub": spec.user, "exp": exp, "channels": spec.channels});
        jsonwebtoken::encode(&Header::default(), &claims, &EncodingKey::from_secret(&self.secret)).expect("HS256 signs")
    }
}

/// Why a stream ended.
enum End {
    Closed,
    Error,
    Deliberate,
}

/// Client `k`, forever (the run aborts it at the end).
pub async fn run(c: Rc<Clients>, k: usize) {
    let mut g = k % c.fleet.len();
    let query = format!("/events?channels={}", c.specs[k].channels.join(","));
    let token = format!("Bearer {}", c.token(k));
    loop {
        g = c.fleet.next_up(g);
        let last = String::from_utf8_lossy(&c.states[k].borrow().last_id).into_owned();
        let url = format!("{}{query}", c.fleet.urls[g]);
        let opened = tokio::time::timeout(OPEN_TIMEOUT, open(&url, &token, &last)).await;
        let Ok(Ok((stream, body, rest))) = opened else {
            c.states[k].borrow_mut().failed_opens += 1;
            g += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        let n = {
            let mut st = c.states[k].borrow_mut();
            if !last.is_empty() {
                st.resumes += 1;
            }
            st.streams.push(StreamRecord {
                gateway: g,
                opened_at_s: c.secs(Instant::now()),
                last_event_id: last,
                resumed: None,
                closed_at_s: None,
                end: "open",
                events: 0,
            });
            st.streams.len() as u32 - 1
        };
        c.open.set(c.open.get() + 1);
        let mut s = Stream { c: &c, k, n, body, parser: sse::Parser::new() };
        let end = if s.read(&rest) { s.pump(&stream).await } else { End::Closed };
        c.open.set(c.open.get() - 1);
        {
            let mut st = c.states[k].borrow_mut();
            if !s.parser.last_id().is_empty() {
                st.last_id = s.parser.last_id().to_vec();
            }
            let rec = &mut st.streams[n as usize];
            rec.closed_at_s = Some(c.secs(Instant::now()));
            rec.end = match end {
                End::Closed => "closed",
                End::Error => "error",
                End::Deliberate => "deliberate",
            };
            if matches!(end, End::Deliberate) {
                st.deliberate += 1;
            }
        }
        drop(stream);
        g += 1;
        // EventSource waits `retry:` (3 s by default) before reconnecting; a short pause keeps
        // the run's resumes frequent while not hammering a gateway that just refused.
        tokio::time::sleep(Duration::from_millis(20 + (k as u64 % 30))).await;
    }
}

async fn open(url: &str, token: &str, last_id: &str) -> Result<(TcpStream, BodyReader, Vec<u8>), String> {
    let target = Target::parse(url).map_err(|e| e.to_string())?;
    let mut stream = TcpStream::connect(&target.authority).await.map_err(|e| e.to_string())?;
    let mut headers: Vec<(&str, &str)> = vec![("Accept", "text/event-stream"), ("Authorization", token)];
    if !last_id.is_empty() {
        headers.push(("Last-Event-ID", last_id));
    }
    let mut req = Vec::with_capacity(1024);
    write_request(&mut req, "GET", &target, &headers, b"");
    stream.write_all(&req).await.map_err(|e| e.to_string())?;
    let mut head = Vec::with_capacity(1024);
    loop {
        stream.readable().await.map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 4096];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err("closed before the response head".into()),
            Ok(n) => head.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => continue,
            Err(e) => return Err(e.to_string()),
        }
        if let Some((h, used)) = parse_head(&head).map_err(|e| e.to_string())? {
            if h.status != 200 {
                return Err(format!("status {}", h.status));
            }
            return Ok((stream, BodyReader::new(h.framing), head[used..].to_vec()));
        }
    }
}

struct Stream<'a> {
    c: &'a Rc<Clients>,
    k: usize,
    n: u32,
    body: BodyReader,
    parser: sse::Parser,
}

/// An event copied out of the parser's buffers.
enum Seen {
    Connected { resumed: Option<bool> },
    Reset { missed: bool, id: String },
    Event { id: String, data: Vec<u8> },
}

#[derive(serde::Deserialize)]
struct Envelope {
    target: String,
    channel: Option<String>,
    data: Data,
}

#[derive(serde::Deserialize)]
struct Data {
    t: u64,
    s: u64,
}

impl Stream<'_> {
    async fn pump(&mut self, stream: &TcpStream) -> End {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            tokio::select! {
                r = stream.readable() => {
                    if r.is_err() {
                        return End::Error;
                    }
                    match stream.try_read(&mut buf) {
                        Ok(0) => return End::Closed,
                        Ok(n) => {
                            if !self.read(&buf[..n]) {
                                return End::Closed;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => return End::Error,
                    }
                }
                _ = self.c.kicks[self.k].notified() => return End::Deliberate,
            }
        }
    }

    /// Processes body bytes; `false` once the body is over or broken.
    fn read(&mut self, bytes: &[u8]) -> bool {
        let mut seen = Vec::new();
        let parser = &mut self.parser;
        let ok = self.body.feed(bytes, &mut |piece| {
            parser.feed(piece, &mut |ev: &sse::Event<'_>| {
                seen.push(match ev.kind() {
                    b"connected" => Seen::Connected {
                        resumed: serde_json::from_slice::<serde_json::Value>(ev.data)
                            .ok()
                            .and_then(|v| v["resumed"].as_bool()),
                    },
                    b"reset" => Seen::Reset {
                        missed: serde_json::from_slice::<serde_json::Value>(ev.data)
                            .is_ok_and(|v| v["reason"] == "missed"),
                        id: String::from_utf8_lossy(ev.last_id).into_owned(),
                    },
                    _ => Seen::Event { id: String::from_utf8_lossy(ev.last_id).into_owned(), data: ev.data.to_vec() },
                });
            })
        });
        for s in seen {
            self.handle(s);
        }
        matches!(ok, Ok(false))
    }

    fn handle(&mut self, s: Seen) {
        let c = self.c;
        let now = Instant::now();
        let mut st = c.states[self.k].borrow_mut();
        match s {
            Seen::Connected { resumed } => {
                let rec = &mut st.streams[self.n as usize];
                rec.resumed = Some(resumed.unwrap_or(false));
                if !rec.last_event_id.is_empty() && resumed == Some(false) {
                    st.not_resumed += 1;
                }
            }
            Seen::Reset { missed, id } => {
                st.resets += 1;
                if let Some((epoch, seq)) = missed.then(|| stream_seq(&id)).flatten()
                    && st.refetched.as_ref().is_none_or(|(e, s)| e != epoch || *s < seq)
                {
                    st.refetched = Some((epoch.to_owned(), seq));
                }
            }
            Seen::Event { id, data } => {
                let Ok(env) = serde_json::from_slice::<Envelope>(&data) else { return };
                if id.is_empty() {
                    st.without_id += 1;
                    return;
                }
                let target = match (env.target.as_str(), env.channel) {
                    ("channel", Some(name)) => EventTarget::Channel(name),
                    ("broadcast", _) => EventTarget::Broadcast,
                    _ => EventTarget::User(c.specs[self.k].user.clone()),
                };
                let first = st.seen.insert(id.clone());
                st.streams[self.n as usize].events += 1;
                st.deliveries.push(Delivery { id, pub_seq: env.data.s, target, at_s: c.secs(now), stream: self.n });
                drop(st);
                let latency_us = payload::now_ns().saturating_sub(env.data.t) / 1000;
                c.series.at(now, |s| {
                    s.delivered += 1;
                    if first {
                        s.latency.record_us(latency_us);
                    }
                });
            }
        }
    }
}
