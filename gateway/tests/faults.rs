//! No lost events across failures: a killed gateway, a drained gateway, a restarted NATS.
//! Clients behave like the browser client (resume with `Last-Event-ID`, reconnect elsewhere);
//! every acknowledged event addressed to a client must reach it exactly once.

mod support;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use support::{Follower, Gateway, Nats, Proxy, diff, eventually, token};

const CHANNELS: usize = 10;

/// Who gets event `n`: one user, one channel, or everyone.
fn subject_for(n: usize, clients: usize) -> (String, Option<usize>, Option<usize>) {
    match n % 10 {
        9 => ("herald.events.broadcast".into(), None, None),
        k if k % 2 == 0 => {
            let user = (n / 2) % clients;
            (format!("herald.events.user.f{user}"), Some(user), None)
        }
        _ => {
            let ch = n % CHANNELS;
            (format!("herald.events.channel.ch:{ch}"), None, Some(ch))
        }
    }
}

struct Ledger {
    per_user: HashMap<usize, Vec<u64>>,
    per_channel: HashMap<usize, Vec<u64>>,
    broadcast: Vec<u64>,
    /// The last event, a broadcast every client receives after all the others: once a client
    /// has it, anything still missing was lost, and no duplicate can come later.
    marker: u64,
}

impl Ledger {
    fn new() -> Self {
        Ledger { per_user: HashMap::new(), per_channel: HashMap::new(), broadcast: Vec::new(), marker: 0 }
    }
    fn record(&mut self, user: Option<usize>, channel: Option<usize>, seq: u64) {
        match (user, channel) {
            (Some(u), _) => self.per_user.entry(u).or_default().push(seq),
            (_, Some(c)) => self.per_channel.entry(c).or_default().push(seq),
            _ => self.broadcast.push(seq),
        }
    }
    /// What client `client`, which started at `cursor`, is owed, in order.
    fn expected(&self, client: usize, cursor: Option<u64>) -> Vec<u64> {
        let mut all: Vec<u64> = self.per_user.get(&client).cloned().unwrap_or_default();
        all.extend(self.per_channel.get(&(client % CHANNELS)).cloned().unwrap_or_default());
        all.extend(&self.broadcast);
        all.retain(|&seq| seq > cursor.unwrap_or(0));
        all.sort();
        all
    }
}

fn followers(count: usize, gateways: &[std::net::SocketAddr]) -> Vec<Follower> {
    (0..count).map(|i| follower(i, gateways)).collect()
}

/// Client `i`: user `f<i>`, on channel `ch:<i mod 10>`.
fn follower(i: usize, gateways: &[std::net::SocketAddr]) -> Follower {
    Follower::start(gateways.to_vec(), token(&format!("f{i}"), &["ch:*"], 3600), vec![format!("ch:{}", i % CHANNELS)])
}

async fn all_connected(fs: &[Follower]) {
    eventually("every client connected", Duration::from_secs(30), || async {
        fs.iter().all(|f| f.seen.lock().unwrap().connects >= 1)
    })
    .await;
}

/// Publishes `total` durable events at `rate`/s straight to JetStream, retrying until each is
/// acknowledged, then the marker; calls `at(n)` before event `n` (to inject the fault).
async fn publish(nats_url: String, total: usize, rate: u64, clients: usize, mut at: impl FnMut(usize)) -> Ledger {
    let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(nats_url).await.unwrap();
    let js = jetstream::new(client);
    let mut ledger = Ledger::new();
    let start = Instant::now();
    for n in 0..=total {
        if n < total {
            at(n);
        }
        tokio::time::sleep_until((start + Duration::from_micros(1_000_000 / rate * n as u64)).into()).await;
        let (subject, user, channel) =
            if n < total { subject_for(n, clients) } else { ("herald.events.broadcast".into(), None, None) };
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Herald-Type", if n < total { "tick" } else { "marker" });
        let payload = Bytes::from(format!("{{\"n\":{n}}}"));
        let deadline = Instant::now() + Duration::from_secs(30);
        let seq = loop {
            let attempt =
                async { js.publish_with_headers(subject.clone(), headers.clone(), payload.clone()).await?.await };
            match tokio::time::timeout(Duration::from_secs(2), attempt).await {
                Ok(Ok(ack)) => break ack.sequence,
                _ => {
                    assert!(Instant::now() < deadline, "event {n} was never acknowledged");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        };
        ledger.record(user, channel, seq);
        ledger.marker = seq;
    }
    ledger
}

/// Every client received every event after its first cursor exactly once, in order: checked
/// once each has the final marker, which comes after everything else on its stream.
async fn assert_exactly_once(fs: &[Follower], ledger: &Ledger) {
    eventually("every client has the final marker", Duration::from_secs(60), || async {
        fs.iter().all(|f| f.seqs().contains(&ledger.marker))
    })
    .await;
    let (mut missing, mut dups, mut older, mut delivered) = (0, 0, 0, 0);
    for (i, f) in fs.iter().enumerate() {
        let got = f.seqs();
        let cursor = f.seen.lock().unwrap().first_cursor;
        let expected = ledger.expected(i, cursor);
        let (m, d) = diff(&expected, &got);
        missing += m.len();
        dups += d.len();
        // Events at or below the client's first cursor: its cursor went backwards.
        older += got.iter().filter(|&&seq| seq <= cursor.unwrap_or(0)).count();
        delivered += got.len();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "client {i} received events out of order");
        assert_eq!(got.last(), Some(&ledger.marker), "client {i}: nothing after the marker");
    }
    assert_eq!(
        (missing, dups, older),
        (0, 0, 0),
        "missing, duplicated and older-than-the-cursor deliveries over {delivered} delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_another_with_nothing_lost() {
    const CLIENTS: usize = 200;
    let nats = Nats::start();
    let mut a = Gateway::serve(&nats, &[]);
    let b = Gateway::serve(&nats, &[]);
    a.ready().await;
    b.ready().await;
    let fs = followers(CLIENTS, &[a.addr, b.addr]);
    all_connected(&fs).await;
    assert_eq!(a.stats().await["connections"], CLIENTS);

    let mut killed = None;
    let ledger = publish(nats.url(), 2500, 500, CLIENTS, |n| {
        if n == 1000 {
            a.kill(); // SIGKILL, mid-stream
            killed = Some(Instant::now());
        }
    })
    .await;
    assert!(killed.is_some());
    assert_exactly_once(&fs, &ledger).await;
    assert_eq!(b.stats().await["connections"], CLIENTS, "everyone moved to the surviving gateway");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_draining_gateway_hands_its_clients_over_gradually_and_exits_0() {
    const CLIENTS: usize = 200;
    let nats = Nats::start();
    let mut a = Gateway::serve(&nats, &["--drain-secs", "5", "--retry-ms", "200"]);
    let b = Gateway::serve(&nats, &[]);
    a.ready().await;
    b.ready().await;
    let fs = followers(CLIENTS, &[a.addr, b.addr]);
    all_connected(&fs).await;

    let mut term_at = None;
    let ledger = publish(nats.url(), 4000, 500, CLIENTS, |n| {
        if n == 1000 {
            a.signal(libc::SIGTERM);
            term_at = Some(Instant::now());
        }
    })
    .await;
    assert_exactly_once(&fs, &ledger).await;
    assert_eq!(a.wait_exit(Duration::from_secs(15)), Some(0), "a drained gateway exits 0");

    // The closes were spread over the drain window, not bunched.
    let term_at = term_at.unwrap();
    let mut ends: Vec<f64> = fs
        .iter()
        .map(|f| {
            f.seen
                .lock()
                .unwrap()
                .ends
                .first()
                .expect("every stream on A was closed")
                .duration_since(term_at)
                .as_secs_f64()
        })
        .collect();
    ends.sort_by(f64::total_cmp);
    let spread = ends[ends.len() - 1] - ends[0];
    assert!((3.5..=7.0).contains(&spread), "closes spread over {spread:.2}s, expected about 5s");
    let busiest = ends.iter().map(|&t| ends.iter().filter(|&&u| u >= t && u < t + 0.1).count()).max().unwrap();
    assert!(busiest <= CLIENTS / 10, "{busiest} of {CLIENTS} clients were closed within the same 100 ms");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nats_restart_loses_no_acknowledged_event() {
    const CLIENTS: usize = 50;
    let mut nats = Nats::start();
    let gw = Gateway::serve(&nats, &[]);
    gw.ready().await;
    let fs = followers(CLIENTS, &[gw.addr]);
    all_connected(&fs).await;

    let url = nats.url();
    let ledger = {
        let nats = &mut nats;
        publish(url, 1500, 300, CLIENTS, move |n| {
            if n == 300 {
                nats.stop();
                std::thread::sleep(Duration::from_secs(3)); // the outage itself
                nats.restart();
            }
        })
        .await
    };
    assert_exactly_once(&fs, &ledger).await;
    let connects: usize = fs.iter().map(|f| f.seen.lock().unwrap().connects).sum();
    assert_eq!(connects, CLIENTS, "sessions stayed open through the outage");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_published_while_the_gateways_nats_link_was_down_are_refilled() {
    const CLIENTS: usize = 50;
    let nats = Nats::start();
    let proxy = std::sync::Arc::new(Proxy::start(nats.port).await);
    let gw = Gateway::serve_url(&proxy.url(), &[], "info");
    gw.ready().await;
    let fs = followers(CLIENTS, &[gw.addr]);
    all_connected(&fs).await;

    // The publisher talks to NATS directly and keeps going while the gateway's link is down.
    let link = proxy.clone();
    let ledger = publish(nats.url(), 1500, 300, CLIENTS, move |n| {
        if n == 300 {
            link.cut();
            let link = link.clone();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(3)).await; // the outage itself
                link.restore();
            });
        }
    })
    .await;
    assert_exactly_once(&fs, &ledger).await;
    let connects: usize = fs.iter().map(|f| f.seen.lock().unwrap().connects).sum();
    assert_eq!(connects, CLIENTS, "sessions stayed open through the outage");
    assert!(gw.log_text().contains("gap refilled"), "{}", gw.log_text());
}

/// The gateway's NATS link goes down twice, a second apart, while 200 clients stream and 50
/// more open streams during the outages (their subscriptions and first cursors land while the
/// hub refills a gap): every client gets every event after its first cursor exactly once, in
/// order, and the streams of the first 200 stay open throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_link_outages_a_second_apart_with_clients_joining_lose_nothing() {
    const FIRST: usize = 200;
    const LATE: usize = 50;
    let nats = Nats::start();
    let proxy = std::sync::Arc::new(Proxy::start(nats.port).await);
    let gw = Gateway::serve_url(&proxy.url(), &[], "info");
    gw.ready().await;
    let mut fs = followers(FIRST, &[gw.addr]);
    all_connected(&fs).await;

    let late = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let (link, joining, addr) = (proxy.clone(), late.clone(), gw.addr);
    let ledger = publish(nats.url(), 4000, 500, FIRST + LATE, move |n| {
        if n == 500 {
            // The fault schedule: down 2 s, up 1 s, down 2 s, up.
            let link = link.clone();
            link.cut();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_secs(2)).await;
                link.restore();
                tokio::time::sleep(Duration::from_secs(1)).await;
                link.cut();
                tokio::time::sleep(Duration::from_secs(2)).await;
                link.restore();
            });
        }
        // Half of the late clients arrive during each outage.
        if n == 750 || n == 2250 {
            let first = FIRST + if n == 750 { 0 } else { LATE / 2 };
            joining.lock().unwrap().extend((first..first + LATE / 2).map(|i| follower(i, &[addr])));
        }
    })
    .await;
    let late: Vec<Follower> = std::mem::take(&mut *late.lock().unwrap());
    assert_eq!(late.len(), LATE);
    fs.extend(late);
    assert_exactly_once(&fs, &ledger).await;
    let connects: usize = fs[..FIRST].iter().map(|f| f.seen.lock().unwrap().connects).sum();
    assert_eq!(connects, FIRST, "the first clients' streams stayed open through both outages");
    let log = gw.log_text();
    assert!(log.matches("gap refilled").count() >= 2, "{log}");
}
