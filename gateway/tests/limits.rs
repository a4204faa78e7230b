//! Admission limits, readiness and CORS, seen from outside.

use std::time::Duration;

use herald_testkit::{Gateway, Nats, Sse, eventually, http, token};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_answers_200_with_retry_and_per_user_limit_answers_429() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats)
        .args(&["--max-connections", "2", "--max-connections-per-user", "1", "--retry-ms", "1000"])
        .start();
    gw.ready().await;

    let mut a = Sse::with_token(gw.addr, &token("a", &[], 600), &[]).await;
    assert_eq!(a.next().await.event, "connected");
    let second_tab =
        Sse::open(gw.addr, "/events", &[("Authorization", &format!("Bearer {}", token("a", &[], 600)))]).await;
    let refused = second_tab.err().expect("a second stream of the same user is refused");
    assert_eq!((refused.status, refused.json()["error"].as_str()), (429, Some("too_many_connections")));

    let mut b = Sse::with_token(gw.addr, &token("b", &[], 600), &[]).await;
    assert_eq!(b.next().await.event, "connected");

    // The pod is full: 200, a jittered retry hint, and the end of the stream (no connected).
    let mut c = Sse::with_token(gw.addr, &token("c", &[], 600), &[]).await;
    assert_eq!(c.header("content-type"), Some("text/event-stream"));
    let events = c.read_to_end(Duration::from_secs(5)).await;
    assert!(c.ended, "the overflow stream is closed by the server");
    assert!(events.is_empty(), "no events, only a retry hint: {events:?}");
    assert_eq!(gw.stats().await["connections"], 2);
}

/// Without any flag, one token holds at most 100 streams on a gateway: the 101st is refused with
/// 429, and another user is not affected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_user_holds_at_most_100_streams_by_default() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("greedy", &[], 600);
    let mut held = Vec::new();
    for _ in 0..100 {
        let mut s = Sse::with_token(gw.addr, &t, &[]).await;
        assert_eq!(s.next().await.event, "connected");
        held.push(s);
    }
    let refused = Sse::open(gw.addr, "/events", &[("Authorization", &format!("Bearer {t}"))]).await;
    let refused = refused.err().expect("the 101st stream of one user is refused");
    assert_eq!((refused.status, refused.json()["error"].as_str()), (429, Some("too_many_connections")));
    let mut other = Sse::with_token(gw.addr, &token("other", &[], 600), &[]).await;
    assert_eq!(other.next().await.event, "connected");
    assert_eq!(gw.stats().await["connections"], 101);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_follows_the_nats_connection() {
    // Point the gateway at a port where no NATS runs yet.
    let mut nats = Nats::stopped();
    let gw = Gateway::serve(&nats).start();
    let ready = http(gw.addr, "GET", "/readyz", &[], None).await;
    assert_eq!(ready.status, 503);
    assert_eq!(ready.json()["status"], "not_ready");
    assert_eq!(http(gw.addr, "GET", "/healthz", &[], None).await.status, 200);

    nats.restart();
    eventually("ready once NATS is up", Duration::from_secs(20), || async {
        http(gw.addr, "GET", "/readyz", &[], None).await.status == 200
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_allows_only_the_configured_origins() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--allowed-origins", "https://app.example.com"]).start();
    gw.ready().await;
    let preflight = |origin: &'static str| async move {
        let headers = [
            ("Origin", origin),
            ("Access-Control-Request-Method", "GET"),
            ("Access-Control-Request-Headers", "authorization,last-event-id"),
        ];
        http(gw.addr, "OPTIONS", "/events", &headers, None).await
    };
    let ok = preflight("https://app.example.com").await;
    assert_eq!(ok.header("access-control-allow-origin"), Some("https://app.example.com"));
    let allowed = ok.header("access-control-allow-headers").unwrap_or("").to_ascii_lowercase();
    assert!(allowed.contains("authorization") && allowed.contains("last-event-id"), "{allowed}");
    let evil = preflight("https://evil.example").await;
    assert_eq!(evil.header("access-control-allow-origin"), None);
}
