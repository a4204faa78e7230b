//! What one event costs the gateway between NATS and its streams' queues: allocations, bytes
//! allocated and CPU, per event and per queued frame.
//!
//! It runs the gateway's own NATS broker and hub on one thread, as `serve` does, joins
//! `--streams` queues (each on its own user, or all on the broadcast), and has a child process
//! publish `--events` events into the stream (`--durable`, the default: stored, republished,
//! with ids) or straight to the live subjects. A global allocator counts every allocation of
//! this process until every queue holds what it is owed; the CPU is the hub thread's (the
//! broker's connection and the dispatcher). No sockets: what writing costs is the
//! socket-write floor's business (docs/benchmarks.md).
//!
//! ```sh
//! nats-server -js -p 14222 &
//! cargo run --release -p herald-gateway --example delivery_cost -- --nats nats://127.0.0.1:14222
//! cargo run --release -p herald-gateway --example delivery_cost -- --nats nats://127.0.0.1:14222 \
//!   --shape broadcast --streams 10000 --events 200
//! ```
//!
//! The queues are never read, so they grow: their growth is counted too (a few allocations per
//! queue over the run, a small share of the total).
//!
//! `--probe-joins` also has a thread join and leave one more stream of the same shape over and
//! over while the events flow, and reports how long a join took (its allocations then count
//! too): a fan-out that held its topic's member list through every push kept a join of a
//! broadcast waiting for all of them.

use std::alloc::{GlobalAlloc, Layout, System};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Parser, ValueEnum};
use herald_gateway::broker::Broker;
use herald_gateway::broker::HistoryLimits;
use herald_gateway::broker::nats::{History, NatsBroker, NatsOptions, StreamOptions};
use herald_gateway::delivery::hub::Hub;
use herald_gateway::delivery::outbox::Outbox;
use herald_gateway::event::{SubjectKind, Target};
use herald_gateway::names::Name;
use herald_gateway::ops::metrics::Metrics;

/// Counts every allocation of the process.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

fn count(size: usize) {
    ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    ALLOCATED.fetch_add(size as u64, Ordering::Relaxed);
}

// SAFETY: every call is passed to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        count(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Shape {
    /// Each stream on its own user; the events go round the users.
    Targeted,
    /// Every stream on the broadcast; each event reaches all of them.
    Broadcast,
}

/// What one event costs between NATS and the queues (see the top of this file).
#[derive(Parser)]
struct Args {
    /// The NATS server (with JetStream for `--durable true`).
    #[arg(long)]
    nats: String,
    #[arg(long, value_enum, default_value = "targeted")]
    shape: Shape,
    /// Streams (queues) joined.
    #[arg(long, default_value_t = 1000)]
    streams: usize,
    /// Events published.
    #[arg(long, default_value_t = 50_000)]
    events: usize,
    /// Publish into the stream (stored, with ids), or straight to the live subjects.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    durable: bool,
    /// Publishes in flight at once (durable: acknowledgements awaited per batch).
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Join and leave one more stream throughout, and report how long the joins took.
    #[arg(long)]
    probe_joins: bool,
    /// Be the publisher: publish to the subjects of these streams and exit.
    #[arg(long, hide = true)]
    publisher: bool,
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args = Args::parse();
    let prefix = "herald";
    let targets: Vec<Target> = match args.shape {
        Shape::Targeted => {
            (0..args.streams).map(|i| Target::User(Name::parse(&format!("u{i}")).expect("a name"))).collect()
        }
        Shape::Broadcast => vec![Target::Broadcast],
    };
    let kind = if args.durable { SubjectKind::Events } else { SubjectKind::Live };
    if args.publisher {
        let subjects: Vec<String> = targets.iter().map(|t| t.subject(prefix, kind)).collect();
        return Ok(publish(&args.nats, &subjects, args.events, args.batch, args.durable)?);
    }
    let hub_runtime = tokio::runtime::Builder::new_current_thread().enable_all().thread_name("herald-hub").build()?;
    let opts = NatsOptions {
        url: args.nats.clone(),
        credentials: None,
        prefix: prefix.into(),
        name: "delivery_cost".into(),
        history: if args.durable {
            History::Ensure(StreamOptions {
                limits: HistoryLimits {
                    max_age: Duration::from_secs(3600),
                    max_per_subject: 1000,
                    dedup_window: Duration::from_secs(120),
                },
                replicas: 1,
            })
        } else {
            History::Off
        },
        publish_retry: Duration::from_secs(10),
    };
    let metrics = Arc::new(Metrics::new());
    let handle = hub_runtime.handle().clone();
    std::thread::Builder::new()
        .name("herald-hub".into())
        .spawn(move || hub_runtime.block_on(std::future::pending::<()>()))?;
    let broker: Arc<dyn Broker> =
        Arc::new(handle.block_on(handle.spawn(async move { NatsBroker::connect(&opts).await }))??);
    let hub = Hub::start(broker, metrics.clone(), &handle);

    let work = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
    let mut outboxes = Vec::with_capacity(args.streams);
    let mut memberships = Vec::with_capacity(args.streams);
    for i in 0..args.streams {
        let outbox = Outbox::new(usize::MAX / 2, metrics.clone());
        let target = targets[i % targets.len()].clone();
        memberships.push(work.block_on(hub.join(&[target], &outbox))?);
        outbox.release(std::iter::empty::<Bytes>(), None);
        outboxes.push(outbox);
    }
    let owed = match args.shape {
        Shape::Targeted => args.events as u64,
        Shape::Broadcast => (args.events * args.streams) as u64,
    };

    let (events, durable) = (args.events, args.durable);
    let queued = || outboxes.iter().map(|o| o.totals().events).sum::<u64>();
    let (allocations, allocated, cpu) =
        (ALLOCATIONS.load(Ordering::Relaxed), ALLOCATED.load(Ordering::Relaxed), hub_cpu());
    let started = Instant::now();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let probe = args.probe_joins.then(|| {
        let (hub, metrics, stop, target) = (hub.clone(), metrics.clone(), stop.clone(), targets[0].clone());
        let runtime = work.handle().clone();
        std::thread::spawn(move || {
            let mut waits = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let outbox = Outbox::new(usize::MAX / 2, metrics.clone());
                let joining = Instant::now();
                let membership = runtime.block_on(hub.join(std::slice::from_ref(&target), &outbox));
                waits.push(joining.elapsed());
                drop(membership);
                // A join every few hundred microseconds, as a busy pod sees them.
                std::thread::sleep(Duration::from_micros(200));
            }
            waits
        })
    });
    let mut publisher =
        Command::new(std::env::current_exe()?).args(std::env::args().skip(1)).arg("--publisher").spawn()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while queued() < owed {
        if Instant::now() > deadline {
            return Err(format!("only {} of {owed} frames queued after 120 s", queued()).into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let elapsed = started.elapsed();
    let (allocations, allocated, cpu) = (
        ALLOCATIONS.load(Ordering::Relaxed) - allocations,
        ALLOCATED.load(Ordering::Relaxed) - allocated,
        hub_cpu() - cpu,
    );
    if !publisher.wait()?.success() {
        return Err("the publisher failed".into());
    }
    stop.store(true, Ordering::Relaxed);
    let joins = probe.map(|p| p.join().map_err(|_| "the join probe panicked")).transpose()?;
    let per = |n: f64, d: u64| n / d as f64;
    println!(
        "{} {}, {} streams, {} events, {} frames queued in {:.2} s",
        if durable { "durable" } else { "ephemeral" },
        match args.shape {
            Shape::Targeted => "targeted",
            Shape::Broadcast => "broadcast",
        },
        args.streams,
        events,
        owed,
        elapsed.as_secs_f64()
    );
    println!(
        "per event: {:.2} allocations, {:.0} bytes allocated, {:.2} µs of the hub thread's CPU",
        per(allocations as f64, events as u64),
        per(allocated as f64, events as u64),
        per(cpu * 1e6, events as u64)
    );
    println!("per queued frame: {:.3} allocations, {:.3} µs", per(allocations as f64, owed), per(cpu * 1e6, owed));
    if let Some(mut waits) = joins {
        waits.sort();
        let at = |q: f64| waits[((waits.len() - 1) as f64 * q) as usize].as_secs_f64() * 1e3;
        println!(
            "joins while the events flowed: {}, p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            waits.len(),
            at(0.5),
            at(0.99),
            at(1.0)
        );
    }
    drop(memberships);
    Ok(())
}

/// Publishes `events` events round the `subjects` (the child process).
fn publish(url: &str, subjects: &[String], events: usize, batch: usize, durable: bool) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| e.to_string())?;
    runtime.block_on(async {
        let client = async_nats::connect(url).await.map_err(|e| e.to_string())?;
        let js = async_nats::jetstream::new(client.clone());
        let payload = Bytes::from_static(br#"{"status":"confirmed","booking":"b-1042"}"#);
        let mut sent = 0;
        while sent < events {
            let n = batch.min(events - sent);
            let mut acks = Vec::with_capacity(n);
            for i in sent..sent + n {
                let subject = subjects[i % subjects.len()].clone();
                let mut headers = async_nats::HeaderMap::new();
                headers.insert("Herald-Type", "booking_update");
                if durable {
                    acks.push(
                        js.publish_with_headers(subject, headers, payload.clone()).await.map_err(|e| e.to_string())?,
                    );
                } else {
                    client.publish_with_headers(subject, headers, payload.clone()).await.map_err(|e| e.to_string())?;
                }
            }
            for ack in acks {
                ack.await.map_err(|e| e.to_string())?;
            }
            sent += n;
        }
        client.flush().await.map_err(|e| e.to_string())
    })
}

/// CPU seconds the `herald-hub` thread has used.
fn hub_cpu() -> f64 {
    let ticks_per_second = 100.0; // USER_HZ on Linux
    let mut ticks = 0u64;
    for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else { continue };
        let Some((name, rest)) = stat.split_once(") ").and_then(|(head, rest)| Some((head.split_once('(')?.1, rest)))
        else {
            continue;
        };
        if name == "herald-hub" {
            // After the name: state, then fields 4.. ; utime and stime are fields 14 and 15.
            let fields: Vec<&str> = rest.split(' ').collect();
            ticks += fields.get(11).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
            ticks += fields.get(12).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        }
    }
    ticks as f64 / ticks_per_second
}
