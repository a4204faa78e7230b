//! A client that stops reading is cut off once its queue is full; nobody else notices.

use std::io::Read;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_testkit::sse::{SMALL_WINDOW, WIDE_WINDOW};
use herald_testkit::{Gateway, Nats, Sse, eventually, token};

const READERS: usize = 200;
const RATE: u64 = 2000;
const QUEUE: usize = 256 * 1024;

fn p99(samples: &mut [u64]) -> u64 {
    samples.sort_unstable();
    samples[(samples.len() * 99 / 100).min(samples.len() - 1)]
}

/// Publishes `RATE` events/s for `secs`, each to one reader's user, and a copy with a 4 KiB pad
/// to the `firehose` channel (8 MB/s: it overflows a stalled socket's kernel buffers quickly).
async fn publish(client: &async_nats::Client, origin: Instant, secs: u64) {
    let pad = "x".repeat(4 * 1024);
    let start = Instant::now();
    let total = RATE * secs;
    for n in 0..total {
        tokio::time::sleep_until((start + Duration::from_micros(1_000_000 / RATE * n)).into()).await;
        let t = origin.elapsed().as_micros();
        client
            .publish(format!("herald.live.user.s{}", n % READERS as u64), Bytes::from(format!("{{\"t\":{t}}}")))
            .await
            .unwrap();
        client
            .publish("herald.live.channel.firehose", Bytes::from(format!("{{\"t\":{t},\"pad\":\"{pad}\"}}")))
            .await
            .unwrap();
    }
    client.flush().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_client_is_disconnected_without_slowing_the_others() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--client-queue-bytes", &QUEUE.to_string()]).start();
    gw.ready().await;
    let origin = Instant::now();
    let phase = Arc::new(AtomicU8::new(0));
    let samples: Arc<Mutex<[Vec<u64>; 2]>> = Arc::new(Mutex::new([Vec::new(), Vec::new()]));

    let mut readers = Vec::new();
    for i in 0..READERS {
        let mut s = Sse::with_token(gw.addr, &token(&format!("s{i}"), &[], 3600), &[]).await;
        assert_eq!(s.next().await.event, "connected");
        let (phase, samples) = (phase.clone(), samples.clone());
        readers.push(tokio::spawn(async move {
            while let Some(ev) = s.next_within(Duration::from_secs(60)).await {
                let sent = ev.json()["data"]["t"].as_u64().unwrap();
                let latency = origin.elapsed().as_micros() as u64 - sent;
                let p = phase.load(Ordering::Relaxed) as usize;
                samples.lock().unwrap()[p.min(1)].push(latency);
            }
        }));
    }
    let publisher = nats.client().await;

    // Baseline: the same load, with a firehose subscriber that keeps up. It stays connected and
    // reading through both phases, so the only difference between them is the stalled client.
    // It reads on a thread of its own, with a wide receive buffer: at 8 MB/s a queue of 256 KiB
    // and a small window last tens of milliseconds, and a busy machine can pause the test's own
    // tasks longer than that. Only the stalled client is to be cut.
    let reader = herald_testkit::sse::firehose_client(gw.addr, "reader", WIDE_WINDOW).await;
    let mut reader = reader.into_std().unwrap();
    reader.set_nonblocking(false).unwrap();
    let drain = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 16];
        while let Ok(n) = reader.read(&mut buf) {
            if n == 0 {
                break;
            }
        }
    });
    eventually("the readers are counted", Duration::from_secs(5), || async {
        gw.stats().await["connections"] == READERS + 1
    })
    .await;
    publish(&publisher, origin, 3).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the last deliveries land
    let rss_before = gw.rss();

    // The same load with one client that subscribes to the firehose and never reads.
    phase.store(1, Ordering::Relaxed);
    let stalled = herald_testkit::sse::firehose_client(gw.addr, "stalled", SMALL_WINDOW).await;
    eventually("the stalled client is counted", Duration::from_secs(5), || async {
        gw.stats().await["connections"] == READERS + 2
    })
    .await;
    let mut peak_rss = rss_before;
    let load = publish(&publisher, origin, 4);
    tokio::pin!(load);
    loop {
        tokio::select! {
            _ = &mut load => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => peak_rss = peak_rss.max(gw.rss()),
        }
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    eventually("the stalled client was disconnected as slow", Duration::from_secs(10), || async {
        gw.stats().await["connections"] == READERS + 1
    })
    .await;
    assert!(!drain.is_finished(), "the firehose reader that keeps up is still connected");
    gw.wait_for_log("reason=\"slow\"").await; // the close is logged with reason slow
    drop(stalled);

    let [mut base, mut with_stalled] = std::mem::take(&mut *samples.lock().unwrap());
    let expected = (RATE * 3) as usize;
    assert_eq!(base.len(), expected, "every baseline event delivered");
    assert_eq!(with_stalled.len(), (RATE * 4) as usize, "every event delivered to the readers during the stall");
    let (p99_base, p99_stalled) = (p99(&mut base), p99(&mut with_stalled));
    let growth = peak_rss.saturating_sub(rss_before);
    eprintln!(
        "p99 without the stalled client {:.2} ms, with it {:.2} ms; RSS growth {:.1} MiB",
        p99_base as f64 / 1000.0,
        p99_stalled as f64 / 1000.0,
        growth as f64 / (1 << 20) as f64
    );
    assert!(growth < 64 << 20, "RSS grew by {growth} bytes");
    // Within 2x, or 25 ms over the baseline: a fan-out that waited on the stalled client would
    // hold the others for as long as the stall lasts (seconds), while a busy 2-CPU machine (a
    // clean clone's build still being written back) moves a sub-millisecond p99 by 10 ms alone.
    assert!(p99_stalled <= (2 * p99_base).max(p99_base + 25_000), "p99 {p99_stalled} µs vs baseline {p99_base} µs");
    for r in readers {
        r.abort();
    }
}
