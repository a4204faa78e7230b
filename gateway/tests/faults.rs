//! No lost events across failures: a killed gateway, a drained gateway, a restarted NATS.
//! Clients behave like the browser client (resume with `Last-Event-ID`, reconnect elsewhere);
//! every acknowledged event addressed to a client must reach it exactly once.

use std::time::{Duration, Instant};

use async_nats::jetstream;
use bytes::Bytes;
use herald_testkit::delivery::{Ledger, all_connected, assert_exactly_once, follower, followers, subject_for};
use herald_testkit::{Follower, Gateway, Nats, Proxy, Sse, seq_of, token};

/// Publishes `total` durable events at `rate`/s straight to JetStream, retrying until each is
/// acknowledged, then the marker; calls `at(n)` before event `n` (to inject the fault).
async fn publish(nats_url: String, total: usize, rate: u64, clients: usize, mut at: impl FnMut(usize)) -> Ledger {
    let client = async_nats::ConnectOptions::new().retry_on_initial_connect().connect(nats_url).await.unwrap();
    let js = jetstream::new(client);
    let mut ledger = Ledger::default();
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_killed_gateway_resume_on_another_with_nothing_lost() {
    const CLIENTS: usize = 200;
    let nats = Nats::start();
    let mut a = Gateway::serve(&nats).start();
    let b = Gateway::serve(&nats).start();
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
    let mut a = Gateway::serve(&nats).args(&["--drain-secs", "5", "--retry-ms", "200"]).start();
    let b = Gateway::serve(&nats).start();
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
    let gw = Gateway::serve(&nats).start();
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
    let gw = Gateway::serve(proxy.as_ref()).start();
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
    gw.wait_for_log("gap refilled").await;
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
    let gw = Gateway::serve(proxy.as_ref()).start();
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

/// A gateway whose link to NATS drops in its first second, with a stream open and 10 events
/// published meanwhile: the gap is refilled (the link is watched from the start, not only once
/// the history's position has been read).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_link_that_drops_right_after_start_is_refilled() {
    let (gw, proxy, nats, mut s, first) = streaming_capped_user(1000).await;
    proxy.cut();
    publish_to_capped(&nats, 10).await;
    proxy.restore();
    let mut seqs = Vec::new();
    while seqs.len() < 10 {
        let ev = s.next_event().await;
        seqs.push(seq_of(ev.id.as_deref().unwrap()));
    }
    let after = seq_of(&first[0]);
    assert_eq!(seqs, (after + 1..=after + 10).collect::<Vec<_>>(), "{}", gw.log_text());
}

/// While the gateway's link is down, a user gets more events than the history keeps per
/// subject: the oldest of them are gone before the hub can refill the gap (while other
/// subjects keep the history reaching back further). Its streams are not handed what is left
/// as if nothing were missing: each is sent to resume on its own, and its resume answers
/// `reset`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_longer_than_the_history_keeps_per_subject_ends_in_a_reset() {
    let (gw, proxy, nats, mut s, first) = streaming_capped_user(5).await;
    proxy.cut();
    publish_to_capped(&nats, 10).await;
    proxy.restore();

    let rest = s.read_to_end(Duration::from_secs(30)).await;
    assert!(s.ended, "the stream was sent to resume; it got {rest:?}");
    assert!(rest.iter().all(|ev| ev.id.is_none()), "no event of a gap it cannot fill: {rest:?}");
    let t = token("capped", &[], 600);
    // The resume sends what the history still has of the gap, then says that more is gone.
    let mut resumed = Sse::resume(gw.addr, &t, &[], &first[0]).await;
    let mut kept = Vec::new();
    let reset = loop {
        let ev = resumed.next_event().await;
        if ev.event == "reset" {
            break ev;
        }
        kept.push(seq_of(ev.id.as_deref().unwrap()));
    };
    assert_eq!(reset.json()["reason"], "history_expired");
    let after = seq_of(&first[0]);
    assert_eq!(kept, (after + 6..=after + 10).collect::<Vec<_>>(), "the 5 newest the history keeps");
}

/// A gateway keeping `per_subject` events per subject, through a proxy to its NATS, with a
/// stream for user `capped` that has received one event (after one for another user, which
/// keeps the history's first event older than anything of `capped`'s).
async fn streaming_capped_user(per_subject: u64) -> (Gateway, Proxy, Nats, Sse, Vec<String>) {
    let nats = Nats::start();
    let proxy = Proxy::start(nats.port).await;
    let cap = per_subject.to_string();
    let gw = Gateway::serve(&proxy).args(&["--history-max-per-subject", &cap]).start();
    gw.ready().await;
    let t = token("capped", &[], 600);
    let mut s = Sse::with_token(gw.addr, &t, &[]).await;
    assert_eq!(s.next().await.event, "connected");
    gw.publish_ids(serde_json::json!({"type":"t","data":0,"users":["other"]})).await;
    let first = gw.publish_ids(serde_json::json!({"type":"t","data":0,"users":["capped"]})).await;
    assert_eq!(s.next_event().await.id.as_ref(), Some(&first[0]));
    (gw, proxy, nats, s, first)
}

async fn publish_to_capped(nats: &Nats, count: usize) {
    let js = jetstream::new(nats.client().await);
    for n in 1..=count {
        js.publish("herald.events.user.capped", Bytes::from(format!("{n}"))).await.unwrap().await.unwrap();
    }
}

/// An ephemeral publish while the gateway's NATS link is down is answered 503 at once, and never
/// sent later (before: the request hung until NATS was back, and then the event went out, long
/// after its sender had given up, and perhaps sent it again).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ephemeral_publish_while_nats_is_down_is_refused_and_never_sent() {
    let mut nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("eph", &[], 600), &[]).await;
    assert_eq!(s.next().await.json()["resumed"], false);

    nats.stop();
    herald_testkit::eventually("the gateway is unready", Duration::from_secs(10), || async {
        herald_testkit::http(gw.addr, "GET", "/readyz", &[], None).await.status == 503
    })
    .await;
    let refused =
        gw.publish(serde_json::json!({"type": "typing", "data": 1, "users": ["eph"], "durable": false})).await;
    assert_eq!((refused.status, refused.json()["error"].as_str()), (503, Some("unavailable")));

    nats.restart();
    gw.ready().await;
    let marker = gw.publish_marker("eph").await;
    let (before, got) = s.read_to_marker().await;
    assert_eq!(got.id.as_deref(), Some(marker.as_str()));
    assert!(before.iter().all(|e| e.event != "typing"), "the refused event was never sent: {before:?}");
}
