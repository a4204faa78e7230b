//! Connections come and go: dead clients are found by heartbeats, and churn leaks nothing.

use std::time::{Duration, Instant};

use herald_testkit::{Gateway, Nats, Sse, eventually, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeats_flow_and_vanished_clients_are_dropped_within_two_intervals() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).start();
    gw.ready().await;

    let mut live = Sse::with_token(gw.addr, &token("alive", &[], 600), &[]).await;
    assert!(live.wait_comments(2, Duration::from_secs(5)).await, "heartbeat comments every second");

    // One client resets its socket, one just stops reading after a half-close; neither says goodbye at the HTTP level.
    let reset = Sse::with_token(gw.addr, &token("gone1", &[], 600), &[]).await;
    let quiet = Sse::with_token(gw.addr, &token("gone2", &[], 600), &[]).await;
    eventually("three connections", Duration::from_secs(5), || async { gw.stats().await["connections"] == 3 }).await;
    let vanished_at = Instant::now();
    reset.vanish();
    drop(quiet);
    eventually("vanished clients gone from /stats", Duration::from_secs(10), || async {
        gw.stats().await["connections"] == 1
    })
    .await;
    let took = vanished_at.elapsed();
    assert!(took <= Duration::from_secs(2), "took {took:?}, more than two heartbeat intervals");
    // The survivor keeps streaming.
    let before = live.comments;
    assert!(live.wait_comments(before + 1, Duration::from_secs(5)).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_connect_disconnect_cycles_leave_nothing_behind() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).start();
    gw.ready().await;

    for round in 0..20 {
        let cycles = (0..50).map(|i| {
            let addr = gw.addr;
            async move {
                let user = format!("churn{}", (round * 50 + i) % 97);
                let channel = format!("room:{}", i % 7);
                let mut s = Sse::with_token(addr, &token(&user, &["room:*"], 600), &[&channel]).await;
                assert_eq!(s.next().await.event, "connected");
                if i % 2 == 0 { s.vanish() } else { drop(s) }
            }
        });
        futures_util::future::join_all(cycles).await;
    }
    eventually("connection gauge and subscriptions back to zero", Duration::from_secs(10), || async {
        let s = gw.stats().await;
        s["connections"] == 0 && s["subjects"] == 0
    })
    .await;
    assert!(!gw.log_text().contains("panicked"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_token_ends_the_stream_with_token_expired() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("brief", &[], 2), &[]).await;
    assert_eq!(s.next().await.event, "connected");
    let opened = Instant::now();
    let events = s.read_to_end(Duration::from_secs(10)).await;
    assert!(s.ended, "the server ended the stream");
    let last = events.last().expect("a final event");
    assert_eq!((last.event.as_str(), last.id.as_deref()), ("token_expired", None));
    assert!(opened.elapsed() >= Duration::from_secs(1), "not before the token's exp");
    eventually("the session is gone", Duration::from_secs(5), || async { gw.stats().await["connections"] == 0 }).await;
    gw.wait_for_log("reason=\"token_expired\"").await;
}
