//! The floor under targeted delivery when the broker shares the server's CPU: the least a
//! gateway can do between NATS and its SSE sockets, with nothing else.
//!
//! It serves `GET /events?channels=NAME` (or `?user=NAME`) as an SSE stream (headers and a
//! `connected` event, then events), holds one NATS connection with a single wildcard
//! subscription to `<prefix>.live.>`, and writes each message of `<prefix>.live.channel.NAME`
//! (or `.user.NAME`) to that subscriber's socket with one `write` of a chunked SSE frame. One
//! thread, no authentication, no subscription per subscriber, no history, no queue, no
//! backpressure (a write that would block drops the event, which the load generator then
//! reports missing). Point the load generator at it exactly as at a dev gateway:
//!
//! ```sh
//! cargo build --release -p herald-loadtest --bins --example targeted_floor
//! taskset -c 0 nats-server -a 127.0.0.1 -p 4222 &
//! taskset -c 0 target/release/examples/targeted_floor --listen 127.0.0.1:18400 --nats 127.0.0.1:4222 &
//! taskset -c 1 target/release/herald-loadtest targeted --target http://127.0.0.1:18400 \
//!   --nats-url nats://127.0.0.1:4222 --connections 10000 --rate 32000 --duration 8
//! ```
//!
//! With `--stream` it first creates the gateway's history stream (`HERALD`, the gateway's own
//! configuration and defaults: every `<prefix>.events.>` subject stored on file and republished
//! to `<prefix>.live.>`) on a nats-server started with `-js`, and forwards the republished
//! messages, taking each event's id from its `Nats-Sequence` header: the floor under durable
//! delivery, where the load generator publishes with `--publish jetstream`.
//!
//! With `--stream` it also takes `POST /v1/publish` as the gateway does (keep-alive; a JSON body
//! naming one channel or user and its `data`): it stores `data` in the stream under a message id
//! over a NATS connection of its own, waits for the stream's acknowledgement, and answers `200`
//! with the event's id: the floor under publishing over HTTP (`--publish http --durable`), with
//! no key check, no validation beyond reading the body, and no retry.
//!
//! With `--subscribe-each` it subscribes to each subscriber's subjects as the subscriber comes
//! (and unsubscribes when it goes), instead of holding one wildcard subscription: its channel's
//! and its user's, as the gateway does, so that a pod gets the events of its own users only. The
//! floor under targeted delivery with the gateway's subscriptions, whose cost is the NATS
//! server's: two subscriptions per subscriber in its memory, and in its garbage collector's
//! work.
//!
//! `scripts/bench-vs-nchan` runs it beside Herald and Nchan when `BENCH_FLOOR=1`. Whatever rate
//! it cannot carry under a p99 of 10 ms, no gateway that takes its events from a nats-server on
//! the same CPU can.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::rc::Rc;

use herald_gateway::broker::HistoryLimits;
use herald_gateway::broker::nats::{StreamOptions, stream_config};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

type Sockets = Rc<RefCell<HashMap<String, Rc<TcpStream>>>>;

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

fn main() {
    let mut listen = "127.0.0.1:18400".to_owned();
    let mut nats = "127.0.0.1:4222".to_owned();
    let mut prefix = "herald".to_owned();
    let mut stream = false;
    let mut each = false;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--stream" {
            stream = true;
            continue;
        }
        if flag == "--subscribe-each" {
            each = true;
            continue;
        }
        let value = it.next().cloned().unwrap_or_else(|| usage(flag));
        match flag.as_str() {
            "--listen" => listen = value,
            "--nats" => nats = value.trim_start_matches("nats://").to_owned(),
            "--prefix" => prefix = value,
            _ => usage(flag),
        }
    }
    herald_loadtest::sys::raise_nofile();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let store = if stream {
            create_stream(&nats, &prefix).await;
            Some(Store::connect(&nats, &prefix).await)
        } else {
            None
        };
        let sockets: Sockets = Rc::default();
        // What is written to the NATS connection besides its first lines: PONGs, and with
        // `--subscribe-each`, each subscriber's SUB and UNSUB.
        let (to_nats, lines) = mpsc::unbounded_channel();
        let subscribe =
            each.then(|| Rc::new(Subscribe { to_nats: to_nats.clone(), prefix: prefix.clone(), next: Cell::new(2) }));
        let listener = TcpListener::bind(&listen).await.expect("listen");
        tokio::task::spawn_local(accept(listener, sockets.clone(), store, subscribe));
        let (sent, dropped) = forward(&nats, &prefix, sockets, !each, to_nats, lines).await;
        eprintln!("NATS connection closed: {sent} events written, {dropped} dropped");
    });
}

/// With `--subscribe-each`: how a subscriber's subscription is written to the NATS connection.
struct Subscribe {
    to_nats: mpsc::UnboundedSender<Vec<u8>>,
    prefix: String,
    /// The next subscription id (1 is the wildcard's, when there is one).
    next: Cell<u64>,
}

async fn accept(listener: TcpListener, sockets: Sockets, store: Option<Rc<Store>>, subscribe: Option<Rc<Subscribe>>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(serve(stream, sockets.clone(), store.clone(), subscribe.clone()));
    }
}

/// One subscriber: reads its request head, answers, and stays registered until it hangs up.
/// A publisher's connection (a `POST`) is served by [`publishes`] instead.
async fn serve(mut stream: TcpStream, sockets: Sockets, store: Option<Rc<Store>>, subscribe: Option<Rc<Subscribe>>) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 && head.len() + n <= 8192 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    if let (true, Some(store)) = (head.starts_with(b"POST "), store) {
        return publishes(stream, head, &store).await;
    }
    // Events are routed by the first subject: the channel's, else the user's.
    let subjects = subjects_of(&head);
    let Some(key) = subjects.first().cloned() else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let sids: Vec<u64> = match &subscribe {
        Some(each) => subjects
            .iter()
            .map(|subject| {
                let sid = each.next.get();
                each.next.set(sid + 1);
                let _ = each.to_nats.send(format!("SUB {}.live.{subject} {sid}\r\n", each.prefix).into_bytes());
                sid
            })
            .collect(),
        None => Vec::new(),
    };
    let mut hello = RESPONSE_HEAD.to_vec();
    chunk(&mut hello, b"event: connected\ndata: {}\n\n");
    if stream.write_all(&hello).await.is_ok() {
        let stream = Rc::new(stream);
        sockets.borrow_mut().insert(key.clone(), stream.clone());
        until_hung_up(&stream).await;
        sockets.borrow_mut().remove(&key);
    }
    if let Some(each) = subscribe {
        for sid in sids {
            let _ = each.to_nats.send(format!("UNSUB {sid}\r\n").into_bytes());
        }
    }
}

/// Waits until the client hangs up (anything it sends after the head is ignored).
async fn until_hung_up(stream: &TcpStream) {
    let mut buf = [0u8; 1024];
    loop {
        if stream.readable().await.is_err() {
            break;
        }
        match stream.try_read(&mut buf) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(_) => break,
        }
    }
}

/// The subject suffixes of a request, from its request line's query: `channel.NAME` for
/// `channels=NAME`, then `user.NAME` for `user=NAME`.
fn subjects_of(head: &[u8]) -> Vec<String> {
    let query = (|| {
        let line = head.split(|&b| b == b'\r').next()?;
        let target = std::str::from_utf8(line).ok()?.split(' ').nth(1)?;
        Some(target.split_once('?')?.1)
    })();
    let param = |name: &str| query?.split('&').find_map(|kv| kv.strip_prefix(name));
    let channel = param("channels=").map(|channel| format!("channel.{channel}"));
    channel.into_iter().chain(param("user=").map(|user| format!("user.{user}"))).collect()
}

/// Appends `event` as one chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, event: &[u8]) {
    let _ = write!(out, "{:x}\r\n", event.len());
    out.extend_from_slice(event);
    out.extend_from_slice(b"\r\n");
}

/// Reads the NATS connection until it closes, writing each message to its subscriber's socket.
/// Returns (events written, events dropped).
/// With `wildcard`, subscribes to every subscriber's subject at once; `to_nats` and `lines` carry
/// what else is written to the connection.
async fn forward(
    addr: &str,
    prefix: &str,
    sockets: Sockets,
    wildcard: bool,
    to_nats: mpsc::UnboundedSender<Vec<u8>>,
    mut lines: mpsc::UnboundedReceiver<Vec<u8>>,
) -> (u64, u64) {
    let nats = patiently(addr, || TcpStream::connect(addr)).await;
    let _ = nats.set_nodelay(true);
    let (mut nats, mut writer) = nats.into_split();
    let subscribe = if wildcard { format!("SUB {prefix}.live.> 1\r\n") } else { String::new() };
    let hello = format!("CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\n{subscribe}PING\r\n");
    writer.write_all(hello.as_bytes()).await.expect("subscribe");
    tokio::task::spawn_local(async move {
        while let Some(line) = lines.recv().await {
            if writer.write_all(&line).await.is_err() {
                return;
            }
        }
    });
    let key_at = format!("{prefix}.live.").len();
    let (mut sent, mut dropped, mut seq) = (0u64, 0u64, 0u64);
    let mut buf: Vec<u8> = Vec::with_capacity(1 << 20);
    let mut frame = Vec::with_capacity(512);
    let mut event = Vec::with_capacity(512);
    let mut read = vec![0u8; 1 << 16];
    loop {
        let n = match nats.read(&mut read).await {
            Ok(0) | Err(_) => return (sent, dropped),
            Ok(n) => n,
        };
        buf.extend_from_slice(&read[..n]);
        let mut at = 0;
        while let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") {
            let line = &buf[at..at + eol];
            let (msg, headed) = match (line.strip_prefix(b"MSG "), line.strip_prefix(b"HMSG ")) {
                (Some(rest), _) => (Some(rest), false),
                (None, Some(rest)) => (Some(rest), true),
                _ => (None, false),
            };
            if let Some(rest) = msg {
                // MSG <subject> <sid> [reply-to] <#bytes>, or HMSG <subject> <sid> [reply-to]
                // <#header bytes> <#total bytes>: the first field and the last one or two.
                let mut fields = rest.split(|&b| b == b' ');
                let subject = fields.next().unwrap_or_default();
                let mut number =
                    || fields.next_back().and_then(|f| std::str::from_utf8(f).ok()?.parse().ok()).unwrap_or(0);
                let len: usize = number();
                let header_len = if headed { number() } else { 0 };
                let start = at + eol + 2;
                if buf.len() < start + len + 2 {
                    break; // the payload has not all arrived
                }
                let payload = &buf[start + header_len.min(len)..start + len];
                seq = sequence_in(&buf[start..start + header_len.min(len)]).unwrap_or(seq + 1);
                let key = std::str::from_utf8(subject.get(key_at..).unwrap_or_default()).unwrap_or_default();
                if let Some(stream) = sockets.borrow().get(key) {
                    event.clear();
                    let _ = write!(event, "id: 0-{seq}\nevent: message\ndata: ");
                    event.extend_from_slice(payload);
                    event.extend_from_slice(b"\n\n");
                    frame.clear();
                    chunk(&mut frame, &event);
                    match stream.try_write(&frame) {
                        Ok(n) if n == frame.len() => sent += 1,
                        _ => dropped += 1,
                    }
                }
                at = start + len + 2;
            } else {
                if line == b"PING" {
                    let _ = to_nats.send(b"PONG\r\n".to_vec());
                } else if line.starts_with(b"-ERR") {
                    eprintln!("NATS: {}", String::from_utf8_lossy(line));
                }
                at += eol + 2;
            }
        }
        buf.drain(..at);
    }
}

/// A publisher's keep-alive connection: each request is stored and acknowledged before it is
/// answered, one at a time, as the gateway does.
async fn publishes(mut stream: TcpStream, mut buf: Vec<u8>, store: &Store) {
    let mut read = [0u8; 4096];
    let mut answer = Vec::with_capacity(128);
    loop {
        // The head, then as many body bytes as it announces.
        let (head_end, body_len) = loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break (end + 4, content_length(&buf[..end]));
            }
            match stream.read(&mut read).await {
                Ok(n) if n > 0 && buf.len() + n <= 1 << 20 => buf.extend_from_slice(&read[..n]),
                _ => return,
            }
        };
        while buf.len() < head_end + body_len {
            match stream.read(&mut read).await {
                Ok(n) if n > 0 => buf.extend_from_slice(&read[..n]),
                _ => return,
            }
        }
        let stored = match serde_json::from_slice::<Publish>(&buf[head_end..head_end + body_len]) {
            Ok(publish) => match publish.subject() {
                Some(target) => store.store(&target, publish.data.get().as_bytes()).await,
                None => None,
            },
            Err(_) => None,
        };
        buf.drain(..head_end + body_len);
        answer.clear();
        match stored {
            Some(seq) => {
                let body = format!("{{\"ids\":[\"0-{seq}\"]}}");
                let _ = write!(answer, "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}", body.len());
            }
            None => answer.extend_from_slice(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n"),
        }
        if stream.write_all(&answer).await.is_err() {
            return;
        }
    }
}

fn content_length(head: &[u8]) -> usize {
    let head = String::from_utf8_lossy(head);
    head.split("\r\n")
        .filter_map(|line| line.split_once(':'))
        .find(|(name, _)| name.trim().eq_ignore_ascii_case("content-length"))
        .and_then(|(_, value)| value.trim().parse().ok())
        .unwrap_or(0)
}

/// The part of a publish request the floor reads: one target and the data.
#[derive(serde::Deserialize)]
struct Publish<'a> {
    #[serde(borrow)]
    data: &'a serde_json::value::RawValue,
    #[serde(default)]
    channels: Vec<&'a str>,
    #[serde(default)]
    users: Vec<&'a str>,
}

impl Publish<'_> {
    fn subject(&self) -> Option<String> {
        match (self.channels.first(), self.users.first()) {
            (Some(channel), _) => Some(format!("channel.{channel}")),
            (None, Some(user)) => Some(format!("user.{user}")),
            (None, None) => None,
        }
    }
}

/// Stores events in the stream over a NATS connection of its own and hands back the
/// sequences of its acknowledgements: the writes of every waiting publish go out together.
struct Store {
    prefix: String,
    commands: mpsc::UnboundedSender<Vec<u8>>,
    waiting: Rc<RefCell<HashMap<u64, oneshot::Sender<u64>>>>,
    next: Cell<u64>,
}

impl Store {
    async fn connect(addr: &str, prefix: &str) -> Rc<Store> {
        let nats = patiently(addr, || TcpStream::connect(addr)).await;
        let _ = nats.set_nodelay(true);
        let (mut reader, mut writer) = nats.into_split();
        let (commands, mut queued) = mpsc::unbounded_channel::<Vec<u8>>();
        let _ = commands.send(
            b"CONNECT {\"verbose\":false,\"pedantic\":false,\"headers\":true}\r\nSUB _INBOX.floor.* 1\r\n".to_vec(),
        );
        tokio::task::spawn_local(async move {
            let mut out = Vec::with_capacity(1 << 16);
            while let Some(first) = queued.recv().await {
                out.clear();
                out.extend_from_slice(&first);
                while let Ok(more) = queued.try_recv() {
                    out.extend_from_slice(&more);
                }
                if writer.write_all(&out).await.is_err() {
                    return;
                }
            }
        });
        let waiting: Rc<RefCell<HashMap<u64, oneshot::Sender<u64>>>> = Rc::default();
        let (acks, pongs) = (waiting.clone(), commands.clone());
        tokio::task::spawn_local(async move {
            let mut buf: Vec<u8> = Vec::with_capacity(1 << 16);
            let mut read = vec![0u8; 1 << 16];
            loop {
                match reader.read(&mut read).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buf.extend_from_slice(&read[..n]),
                }
                let mut at = 0;
                while let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    let line = &buf[at..at + eol];
                    let Some(rest) = line.strip_prefix(b"MSG ") else {
                        if line == b"PING" {
                            let _ = pongs.send(b"PONG\r\n".to_vec());
                        }
                        at += eol + 2;
                        continue;
                    };
                    // MSG _INBOX.floor.<n> 1 <#bytes>, the payload an acknowledgement.
                    let mut fields = rest.split(|&b| b == b' ');
                    let inbox = fields.next().unwrap_or_default();
                    let len: usize =
                        fields.next_back().and_then(|f| std::str::from_utf8(f).ok()?.parse().ok()).unwrap_or(0);
                    let start = at + eol + 2;
                    if buf.len() < start + len + 2 {
                        break;
                    }
                    let n = inbox.rsplit(|&b| b == b'.').next().and_then(|n| std::str::from_utf8(n).ok()?.parse().ok());
                    let seq = serde_json::from_slice::<serde_json::Value>(&buf[start..start + len])
                        .ok()
                        .and_then(|ack| ack["seq"].as_u64());
                    if let (Some(n), Some(seq)) = (n, seq)
                        && let Some(waiter) = acks.borrow_mut().remove(&n)
                    {
                        let _ = waiter.send(seq);
                    }
                    at = start + len + 2;
                }
                buf.drain(..at);
            }
        });
        Rc::new(Store { prefix: prefix.to_owned(), commands, waiting, next: Cell::new(0) })
    }

    /// Stores `data` on `<prefix>.events.<target>` under a new message id; the sequence, once
    /// the stream has acknowledged it.
    async fn store(&self, target: &str, data: &[u8]) -> Option<u64> {
        let n = self.next.get() + 1;
        self.next.set(n);
        let headers = format!("NATS/1.0\r\nNats-Msg-Id: floor-{n}\r\n\r\n");
        let mut command = Vec::with_capacity(96 + headers.len() + data.len());
        let _ = write!(
            command,
            "HPUB {}.events.{target} _INBOX.floor.{n} {} {}\r\n{headers}",
            self.prefix,
            headers.len(),
            headers.len() + data.len()
        );
        command.extend_from_slice(data);
        command.extend_from_slice(b"\r\n");
        let (tx, rx) = oneshot::channel();
        self.waiting.borrow_mut().insert(n, tx);
        self.commands.send(command).ok()?;
        rx.await.ok()
    }
}

/// What `connect` connects to NATS at `addr`, tried for 10 s: the nats-server may have been
/// started a moment ago.
async fn patiently<T, E: std::fmt::Display, F: std::future::Future<Output = Result<T, E>>>(
    addr: &str,
    connect: impl Fn() -> F,
) -> T {
    for attempt in 1.. {
        match connect().await {
            Ok(connected) => return connected,
            Err(e) if attempt < 100 => {
                if attempt == 1 {
                    eprintln!("waiting for NATS at {addr}: {e}");
                }
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Err(e) => panic!("cannot connect to NATS at {addr}: {e}"),
        }
    }
    unreachable!("the loop returns or panics")
}

/// The last `Nats-Sequence` of a header block: the stream's, which its republish appends.
fn sequence_in(headers: &[u8]) -> Option<u64> {
    const NAME: &[u8] = b"\r\nNats-Sequence:";
    let at = headers.windows(NAME.len()).rposition(|w| w == NAME)? + NAME.len();
    let value = &headers[at..];
    let end = value.iter().position(|&b| b == b'\r').unwrap_or(value.len());
    std::str::from_utf8(&value[..end]).ok()?.trim().parse().ok()
}

/// Creates the history stream as a gateway would (its configuration and default limits).
async fn create_stream(addr: &str, prefix: &str) {
    let client = patiently(addr, || async_nats::connect(addr)).await;
    let limits = HistoryLimits {
        max_age: std::time::Duration::from_secs(24 * 3600),
        max_per_subject: 1000,
        dedup_window: std::time::Duration::from_secs(120),
    };
    let config = stream_config(prefix, StreamOptions { limits, replicas: 1 });
    async_nats::jetstream::new(client).create_or_update_stream(config).await.expect("create the stream");
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "unknown or incomplete flag {flag}\nusage: targeted_floor [--listen ADDR] [--nats HOST:PORT] [--prefix P] [--stream] [--subscribe-each]"
    );
    std::process::exit(2)
}
