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
//! `scripts/bench-vs-nchan` runs it beside Herald and Nchan when `BENCH_FLOOR=1`. Whatever rate
//! it cannot carry under a p99 of 10 ms, no gateway that takes its events from a nats-server on
//! the same CPU can.

use std::cell::RefCell;
use std::collections::HashMap;
use std::io::{ErrorKind, Write};
use std::rc::Rc;

use herald_gateway::broker::nats::{StreamOptions, stream_config};
use herald_gateway::config::HistoryLimits;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

type Sockets = Rc<RefCell<HashMap<String, Rc<TcpStream>>>>;

const RESPONSE_HEAD: &[u8] = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ncache-control: no-cache\r\ntransfer-encoding: chunked\r\n\r\n";

fn main() {
    let mut listen = "127.0.0.1:18400".to_owned();
    let mut nats = "127.0.0.1:4222".to_owned();
    let mut prefix = "herald".to_owned();
    let mut stream = false;
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        if flag == "--stream" {
            stream = true;
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
        if stream {
            create_stream(&nats, &prefix).await;
        }
        let sockets: Sockets = Rc::default();
        let listener = TcpListener::bind(&listen).await.expect("listen");
        tokio::task::spawn_local(accept(listener, sockets.clone()));
        let (sent, dropped) = forward(&nats, &prefix, sockets).await;
        eprintln!("NATS connection closed: {sent} events written, {dropped} dropped");
    });
}

async fn accept(listener: TcpListener, sockets: Sockets) {
    loop {
        let Ok((stream, _)) = listener.accept().await else { continue };
        let _ = stream.set_nodelay(true);
        tokio::task::spawn_local(serve(stream, sockets.clone()));
    }
}

/// One subscriber: reads its request head, answers, and stays registered until it hangs up.
async fn serve(mut stream: TcpStream, sockets: Sockets) {
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    while !head.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf).await {
            Ok(n) if n > 0 && head.len() + n <= 8192 => head.extend_from_slice(&buf[..n]),
            _ => return,
        }
    }
    let Some(key) = key_of(&head) else {
        let _ = stream.write_all(b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n\r\n").await;
        return;
    };
    let mut hello = RESPONSE_HEAD.to_vec();
    chunk(&mut hello, b"event: connected\ndata: {}\n\n");
    if stream.write_all(&hello).await.is_err() {
        return;
    }
    let stream = Rc::new(stream);
    sockets.borrow_mut().insert(key.clone(), stream.clone());
    // Until the client hangs up (anything it sends after the head is ignored).
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
    sockets.borrow_mut().remove(&key);
}

/// The subject suffix a request subscribes to: `channel.NAME` for `channels=NAME` in the request
/// line's query, else `user.NAME` for `user=NAME`.
fn key_of(head: &[u8]) -> Option<String> {
    let line = head.split(|&b| b == b'\r').next()?;
    let target = std::str::from_utf8(line).ok()?.split(' ').nth(1)?;
    let query = target.split_once('?')?.1;
    let param = |name: &str| query.split('&').find_map(|kv| kv.strip_prefix(name));
    match param("channels=") {
        Some(channel) => Some(format!("channel.{channel}")),
        None => param("user=").map(|user| format!("user.{user}")),
    }
}

/// Appends `event` as one chunk of a chunked body.
fn chunk(out: &mut Vec<u8>, event: &[u8]) {
    let _ = write!(out, "{:x}\r\n", event.len());
    out.extend_from_slice(event);
    out.extend_from_slice(b"\r\n");
}

/// Reads the NATS connection until it closes, writing each message to its subscriber's socket.
/// Returns (events written, events dropped).
async fn forward(addr: &str, prefix: &str, sockets: Sockets) -> (u64, u64) {
    let mut nats = patiently(addr, || TcpStream::connect(addr)).await;
    let _ = nats.set_nodelay(true);
    let hello = format!(
        "CONNECT {{\"verbose\":false,\"pedantic\":false,\"headers\":true}}\r\nSUB {prefix}.live.> 1\r\nPING\r\n"
    );
    nats.write_all(hello.as_bytes()).await.expect("subscribe");
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
                    let _ = nats.write_all(b"PONG\r\n").await;
                } else if line.starts_with(b"-ERR") {
                    eprintln!("NATS: {}", String::from_utf8_lossy(line));
                }
                at += eol + 2;
            }
        }
        buf.drain(..at);
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
        "unknown or incomplete flag {flag}\nusage: targeted_floor [--listen ADDR] [--nats HOST:PORT] [--prefix P] [--stream]"
    );
    std::process::exit(2)
}
