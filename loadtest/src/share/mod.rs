//! A share of a run: the SSE clients one process holds, their accounting, and the once-a-second
//! samples. Runs on a current-thread runtime inside a `LocalSet`, so per-client state lives in
//! plain `RefCell`s and one 64 KiB read buffer serves every connection: a client waits for its
//! socket to be readable, then reads into the shared buffer and parses before yielding. What a
//! connection keeps between reads is its socket, its chunked decoder and its SSE parser's
//! partial line.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::payload;
use crate::proto::{Counters, FromShare, Hist, Job, MISSING_EXAMPLES, MissingEvent, Scenario, ShareReport, ToShare};
use crate::track::{Tracker, expected_targeted};

mod client;

use client::{Seen, check_caught_up, client};

const READ_BUF: usize = 64 * 1024;
/// Lifetime of the tokens a share mints.
const TOKEN_SECS: u64 = 24 * 3600;

#[derive(Default)]
struct Client {
    tracker: Tracker,
    /// Unix ns of the latest `connected`.
    connected_ns: u64,
    caught_up: bool,
}

struct Shared {
    job: Job,
    secret: Option<Vec<u8>>,
    clients: RefCell<Vec<Client>>,
    live: Cell<u64>,
    attempted: Cell<u64>,
    counters: RefCell<Counters>,
    latency: RefCell<Hist>,
    interval: RefCell<Hist>,
    interval_deliveries: Cell<u64>,
    connect_latency: RefCell<Hist>,
    catch_up: RefCell<Hist>,
    /// (publishes before the kill, unix ns of the kill).
    kill: Cell<Option<(u64, u64)>>,
    connect_start_ms: Cell<u64>,
    connect_end_ms: Cell<u64>,
    /// The process's CPU time when the share began, and its use by the last successful connect.
    cpu0: Duration,
    connect_cpu: Cell<Duration>,
    buf: RefCell<Vec<u8>>,
    /// Events of the read being processed (kept to reuse the allocation).
    events: RefCell<Vec<Seen>>,
    permits: Arc<Semaphore>,
}

/// Runs one share until it is told to stop (or its coordinator goes away), reporting on `tx`.
/// Must run inside a `LocalSet`.
pub async fn run(job: Job, mut rx: mpsc::UnboundedReceiver<ToShare>, tx: mpsc::UnboundedSender<FromShare>) {
    let share = job.share;
    let secret = match &job.jwt_secret_file {
        Some(path) if job.herald => match read_secret(path) {
            Ok(s) => Some(s),
            Err(message) => {
                let _ = tx.send(FromShare::Failed { share, message });
                return;
            }
        },
        _ => None,
    };
    let cpu0 = crate::sys::cpu_time();
    let wall0 = Instant::now();
    let sh = Rc::new(Shared {
        clients: RefCell::new((0..job.count).map(|_| Client::default()).collect()),
        secret,
        live: Cell::new(0),
        attempted: Cell::new(0),
        counters: RefCell::default(),
        latency: RefCell::default(),
        interval: RefCell::default(),
        interval_deliveries: Cell::new(0),
        connect_latency: RefCell::default(),
        catch_up: RefCell::default(),
        kill: Cell::new(None),
        connect_start_ms: Cell::new(0),
        connect_end_ms: Cell::new(0),
        cpu0,
        connect_cpu: Cell::new(Duration::ZERO),
        buf: RefCell::new(vec![0; READ_BUF]),
        events: RefCell::default(),
        permits: Arc::new(Semaphore::new(job.connect_concurrency.max(1))),
        job,
    });
    let sampler = tokio::task::spawn_local(sample_every_second(sh.clone(), tx.clone()));

    let mut published = None;
    if sh.job.scenario == Scenario::Churn {
        for _ in 0..sh.job.cycles.max(1) {
            let tasks = spawn_clients(&sh);
            wait_attempted(&sh).await;
            for t in &tasks {
                t.abort();
            }
            for t in tasks {
                let _ = t.await;
            }
        }
        let c = sh.counters.borrow().clone();
        let _ = tx.send(FromShare::Ready { share, connected: c.connected, failed: c.connect_failed });
    } else {
        let tasks = spawn_clients(&sh);
        wait_attempted(&sh).await;
        let c = sh.counters.borrow().clone();
        let _ = tx.send(FromShare::Ready { share, connected: c.connected, failed: c.connect_failed });
        loop {
            match rx.recv().await {
                Some(ToShare::Killed { published, unix_ns }) => {
                    sh.kill.set(Some((published, unix_ns)));
                    let now = payload::now_ns();
                    for k in 0..sh.job.count as usize {
                        check_caught_up(&sh, k, now);
                    }
                }
                Some(ToShare::Stop { published: p }) => {
                    published = Some(p);
                    wait_complete(&sh, p).await;
                    break;
                }
                Some(ToShare::Abort) | None => {
                    sampler.abort();
                    for t in tasks {
                        t.abort();
                    }
                    return;
                }
            }
        }
        for t in &tasks {
            t.abort();
        }
    }
    sampler.abort();
    let report = finish(&sh, published.unwrap_or(0), cpu0, wall0);
    let _ = tx.send(FromShare::Done { share, report: Box::new(report) });
}

pub fn read_secret(path: &std::path::Path) -> Result<Vec<u8>, String> {
    let mut bytes =
        std::fs::read(path).map_err(|e| format!("cannot read the JWT secret file {}: {e}", path.display()))?;
    if bytes.last() == Some(&b'\n') {
        bytes.pop();
        if bytes.last() == Some(&b'\r') {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("the JWT secret file {} is empty", path.display()));
    }
    Ok(bytes)
}

fn spawn_clients(sh: &Rc<Shared>) -> Vec<JoinHandle<()>> {
    sh.attempted.set(0);
    let start = Instant::now();
    if sh.connect_start_ms.get() == 0 {
        sh.connect_start_ms.set(payload::now_ns() / 1_000_000);
    }
    (0..sh.job.count as usize)
        .map(|k| {
            let at =
                (sh.job.connect_rate > 0.0).then(|| start + Duration::from_secs_f64(k as f64 / sh.job.connect_rate));
            tokio::task::spawn_local(client(sh.clone(), k, at))
        })
        .collect()
}

async fn wait_attempted(sh: &Rc<Shared>) {
    let end = Instant::now() + Duration::from_secs(600);
    while sh.attempted.get() < sh.job.count && Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn expected_of(sh: &Shared, k: usize, published: u64) -> u64 {
    if sh.job.fanout { published } else { expected_targeted(sh.job.first + k as u64, sh.job.total, published) }
}

/// Waits until every client has every event it should have, or the grace period ends.
async fn wait_complete(sh: &Rc<Shared>, published: u64) {
    let end = Instant::now() + Duration::from_secs(sh.job.grace_secs);
    loop {
        let done = {
            let clients = sh.clients.borrow();
            clients.iter().enumerate().all(|(k, c)| c.tracker.contiguous >= expected_of(sh, k, published))
        };
        if done || Instant::now() >= end {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn finish(sh: &Shared, published: u64, cpu0: Duration, wall0: Instant) -> ShareReport {
    let mut counters = sh.counters.borrow().clone();
    let mut missing_examples = Vec::new();
    if sh.job.scenario.delivers() {
        for (k, c) in sh.clients.borrow().iter().enumerate() {
            let expected = expected_of(sh, k, published);
            let missing = c.tracker.missing(expected);
            for seq in c.tracker.missing_seqs(expected).take(MISSING_EXAMPLES - missing_examples.len()) {
                missing_examples.push(MissingEvent {
                    client: sh.job.first + k as u64,
                    seq,
                    expected,
                    contiguous: c.tracker.contiguous,
                    caught_up: c.caught_up,
                });
            }
            counters.expected += expected;
            counters.delivered += c.tracker.unique;
            counters.received += c.tracker.received;
            counters.duplicates += c.tracker.duplicates;
            counters.out_of_order += c.tracker.out_of_order;
            counters.missing += missing;
            counters.complete_clients += u64::from(missing == 0);
            if sh.kill.get().is_some() {
                if c.caught_up {
                    counters.caught_up += 1;
                } else {
                    counters.not_caught_up += 1;
                }
            }
        }
    }
    ShareReport {
        counters,
        latency: sh.latency.borrow().clone(),
        connect_latency: sh.connect_latency.borrow().clone(),
        catch_up: sh.catch_up.borrow().clone(),
        cpu_seconds: (crate::sys::cpu_time() - cpu0).as_secs_f64(),
        wall_seconds: wall0.elapsed().as_secs_f64(),
        connect_start_ms: sh.connect_start_ms.get(),
        connect_end_ms: sh.connect_end_ms.get(),
        connect_cpu_seconds: sh.connect_cpu.get().as_secs_f64(),
        missing_examples,
    }
}

async fn sample_every_second(sh: Rc<Shared>, tx: mpsc::UnboundedSender<FromShare>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tick.tick().await;
        let latency = std::mem::take(&mut *sh.interval.borrow_mut());
        let msg = FromShare::Sample {
            share: sh.job.share,
            unix_ms: payload::now_ns() / 1_000_000,
            connections: sh.live.get(),
            deliveries: sh.interval_deliveries.replace(0),
            latency,
        };
        if tx.send(msg).is_err() {
            return;
        }
    }
}
