//! The floor under a broadcast's latency on this machine: no server, no user-space work, only the
//! socket writes any SSE server must make.
//!
//! One process (the writer, pinned to `--writer-cpu`) accepts `--connections` loopback
//! connections from a second process (the readers, pinned to `--reader-cpu`, reading and
//! discarding), then sends each message to every connection with one `write` of a frame the size
//! of an SSE event, in a tight loop, `--messages` times, `--interval-ms` apart. It prints how long
//! the walk took until the 99th-percentile subscriber had its frame (the best p99 a broadcast can
//! have) and until the last one, medians over the messages.
//!
//! ```sh
//! cargo run --release -p herald-loadtest --example broadcast_floor -- --connections 10000
//! ```
//!
//! Two processes because one may hold at most the hard open-file limit; two CPUs as in
//! `scripts/bench-vs-nchan` (server on one, load generator on the other). On loopback the
//! receiving side's TCP processing runs in the writer's context, as it does for a real server.

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

struct Args {
    connections: usize,
    messages: usize,
    interval: Duration,
    frame_bytes: usize,
    writer_cpu: usize,
    reader_cpu: usize,
}

fn main() {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    if argv.first().map(String::as_str) == Some("--readers") {
        return readers(&argv[1], argv[2].parse().expect("count"), argv[3].parse().expect("cpu"));
    }
    let mut args = Args {
        connections: 10_000,
        messages: 20,
        interval: Duration::from_millis(200),
        frame_bytes: 160,
        writer_cpu: 0,
        reader_cpu: 1,
    };
    let mut it = argv.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().and_then(|v| v.parse::<usize>().ok()).unwrap_or_else(|| usage(flag));
        match flag.as_str() {
            "--connections" => args.connections = value(),
            "--messages" => args.messages = value().max(1),
            "--interval-ms" => args.interval = Duration::from_millis(value() as u64),
            "--frame-bytes" => args.frame_bytes = value().max(1),
            "--writer-cpu" => args.writer_cpu = value(),
            "--reader-cpu" => args.reader_cpu = value(),
            _ => usage(flag),
        }
    }
    herald_loadtest::sys::raise_nofile();
    pin(args.writer_cpu);

    let listener = TcpListener::bind("127.0.0.1:0").expect("listen on loopback");
    let addr = listener.local_addr().expect("listener address").to_string();
    let exe = std::env::current_exe().expect("own executable");
    let mut child = Command::new(exe)
        .args(["--readers", &addr, &args.connections.to_string(), &args.reader_cpu.to_string()])
        .stdin(Stdio::null())
        .spawn()
        .expect("start the reader process");
    let mut sockets = Vec::with_capacity(args.connections);
    while sockets.len() < args.connections {
        let (s, _) = listener.accept().expect("accept");
        s.set_nodelay(true).expect("TCP_NODELAY");
        sockets.push(s);
    }

    let frame = frame(args.frame_bytes);
    let p99_at = (args.connections * 99 / 100).saturating_sub(1);
    let (mut p99, mut last) = (Vec::new(), Vec::new());
    for _ in 0..args.messages {
        std::thread::sleep(args.interval);
        let start = Instant::now();
        for (k, s) in sockets.iter_mut().enumerate() {
            s.write_all(&frame).expect("write");
            if k == p99_at {
                p99.push(start.elapsed());
            }
        }
        last.push(start.elapsed());
    }
    drop(sockets);
    let _ = child.wait();

    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let (p99, last) = (median(&mut p99), median(&mut last));
    println!(
        "{} connections, {}-byte frames, writer on CPU {}: walk to the p99 subscriber {:.1} ms, to the last {:.1} ms, {:.1} µs per write (medians of {} messages)",
        args.connections,
        args.frame_bytes,
        args.writer_cpu,
        ms(p99),
        ms(last),
        last.as_secs_f64() * 1e6 / args.connections as f64,
        args.messages
    );
}

/// The reader process: opens `count` connections to `addr` and discards what arrives until the
/// writer closes them.
fn readers(addr: &str, count: usize, cpu: usize) {
    herald_loadtest::sys::raise_nofile();
    pin(cpu);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    rt.block_on(async {
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let mut s = herald_loadtest::sys::connect(addr, i as u64).await.expect("connect");
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = [0u8; 4096];
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// A chunk-encoded SSE event of `bytes` bytes in all, as a server writes it.
fn frame(bytes: usize) -> Vec<u8> {
    let mut event = b"id: 0-1\nevent: message\ndata: {\"x\":\"".to_vec();
    let tail = b"\"}\n\n";
    let overhead = event.len() + tail.len() + 8; // chunk size line and trailing CRLF
    event.resize(event.len() + bytes.saturating_sub(overhead), b'x');
    event.extend_from_slice(tail);
    let mut out = format!("{:x}\r\n", event.len()).into_bytes();
    out.extend_from_slice(&event);
    out.extend_from_slice(b"\r\n");
    out
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn pin(cpu: usize) {
    // SAFETY: sched_setaffinity on this process with a zeroed, then filled, owned cpu_set_t.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            eprintln!("could not pin to CPU {cpu}: {}", std::io::Error::last_os_error());
        }
    }
}

fn usage(flag: &str) -> ! {
    eprintln!(
        "unknown or incomplete flag {flag}\nusage: broadcast_floor [--connections N] [--messages N] [--interval-ms MS] [--frame-bytes N] [--writer-cpu C] [--reader-cpu C]"
    );
    std::process::exit(2)
}
