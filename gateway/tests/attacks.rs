//! Attacks on the delivery promise over real sockets and a real nats-server: forged ids, ids
//! past the history's head, repeated targets, tokens that never expire, clients that close and
//! come straight back. "Nothing more arrived" is shown by a marker event being the very next one.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use bytes::Bytes;
use herald_testkit::{Gateway, Nats, Sse, epoch_of, eventually, seq_of, token, token_with};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_targets_are_stored_and_delivered_once() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("u", &["c"], 600), &["c"]).await;
    assert_eq!(s.next().await.event, "connected");

    let ids = gw.publish_ids(json!({"type":"t","data":"once","users":["u","u","u"],"channels":["c","c"]})).await;
    assert_eq!(ids.len(), 2, "one id per distinct target: {ids:?}");
    let marker = gw.publish_marker("u").await;

    let first = s.next_event().await;
    let second = s.next_event().await;
    let mut got = vec![first.id.clone().unwrap(), second.id.clone().unwrap()];
    got.sort_by_key(|id| seq_of(id));
    assert_eq!(got, ids, "each target's event once");
    s.assert_next_is_marker(Some(&marker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_expiring_at_the_end_of_time_keeps_its_stream() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).start();
    gw.ready().await;
    // The largest `exp` a JSON number can say: adding the clock-skew leeway must not wrap.
    let t = token_with(json!({"sub": "forever", "exp": u64::MAX, "channels": []}));
    let mut s = Sse::with_token(gw.addr, &t, &[]).await;
    assert_eq!(s.next().await.event, "connected");
    // The stream stays open.
    let marker = gw.publish_marker("forever").await;
    s.assert_next_is_marker(Some(&marker)).await;
    // Its session is alive: a heartbeat comes, and nothing panicked on the way.
    assert!(s.wait_comments(1, Duration::from_secs(5)).await, "a heartbeat");
    assert!(!gw.log_text().contains("panicked"), "{}", gw.log_text());
}

/// A publisher can write any header, including the ones the stream's republish sets. Ids come
/// from what the stream wrote, never from the publisher's copy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ids_come_only_from_the_stream() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("victim", &[], 600);
    let mut s = Sse::with_token(gw.addr, &t, &[]).await;
    let connected = s.next().await;
    let epoch = epoch_of(connected.id.as_deref().expect("a first cursor")).to_owned();

    let client = nats.client().await;
    // A core publish straight to the live subject, dressed as a stored event.
    let mut forged = HeaderMap::new();
    forged.insert("Herald-Type", "forged");
    forged.insert("Nats-Sequence", "999999999");
    client.publish_with_headers("herald.live.user.victim", forged, Bytes::from_static(b"\"core\"")).await.unwrap();
    client.flush().await.unwrap();
    let ev = s.next_event().await;
    assert_eq!(ev.event, "forged");
    assert_eq!(ev.id, None, "an event that did not come through the stream has no id");

    // A durable publish carrying its own sequence header: stored at the stream's next sequence.
    let js = async_nats::jetstream::new(client.clone());
    let mut own = HeaderMap::new();
    own.insert("Herald-Type", "stored");
    own.insert("Nats-Sequence", "3");
    let ack = js
        .publish_with_headers("herald.events.user.victim", own, Bytes::from_static(b"\"js\""))
        .await
        .unwrap()
        .await
        .unwrap();
    assert!(ack.sequence != 3, "the test needs a stream sequence other than the forged one");
    let real = format!("{epoch}-{}", ack.sequence);
    let ev = s.next_event().await;
    assert_eq!(ev.event, "stored");
    assert_eq!(ev.id.as_deref(), Some(real.as_str()), "live: the stream's own sequence");

    // A replay of it carries the same id, and a resume from it repeats nothing.
    let first = format!("{epoch}-{}", ack.sequence - 1);
    drop(s);
    let mut back = Sse::resume(gw.addr, &t, &[], &first).await;
    assert_eq!(back.next().await.json()["resumed"], true);
    let ev = back.next().await;
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("stored", Some(real.as_str())), "replayed");
    drop(back);
    let mut back = Sse::resume(gw.addr, &t, &[], &real).await;
    assert_eq!(back.next().await.json()["resumed"], true);
    // Nothing repeated.
    let marker = gw.publish_marker("victim").await;
    back.assert_next_is_marker(Some(&marker)).await;
}

/// An id past the history's head is not one this history issued: the client is told to
/// refetch, and then gets live events.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_id_past_the_head_is_answered_with_a_reset() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("ahead", &[], 600);
    let mut s = Sse::with_token(gw.addr, &t, &[]).await;
    let epoch = epoch_of(s.next().await.id.as_deref().unwrap()).to_owned();
    let ids = gw.publish_ids(json!({"type":"n","data":1,"users":["ahead"]})).await;
    assert_eq!(s.next_event().await.id, Some(ids[0].clone()));
    drop(s);

    // Far past the head, and just past it.
    let mut head = seq_of(&ids[0]);
    for far in [true, false] {
        let ahead = if far { 999_999_999 } else { head + 1 };
        let mut back = Sse::resume(gw.addr, &t, &[], &format!("{epoch}-{ahead}")).await;
        let connected = back.next().await;
        assert_eq!((connected.event.as_str(), connected.json()["resumed"].clone()), ("connected", json!(false)));
        let reset = back.next().await;
        assert_eq!(reset.event, "reset");
        assert_eq!(reset.json()["reason"], "epoch_changed");
        let marker = gw.publish_marker("ahead").await;
        back.assert_next_is_marker(Some(&marker)).await;
        head = seq_of(&marker);
    }
}

/// A browser that reloads its page closes the old stream as it opens the new one. The closed
/// stream's slot must be free at once, not at its next heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_stream_frees_its_slot_at_once() {
    let nats = Nats::start();
    // Heartbeats far apart: a slot freed only then would fail this test.
    let gw = Gateway::serve(&nats).args(&["--max-connections-per-user", "2", "--heartbeat-secs", "60"]).start();
    gw.ready().await;
    let t = token("reloader", &[], 600);
    let mut previous: Option<Sse> = None;
    for load in 0..10 {
        let mut s = match Sse::open(gw.addr, "/events", &[("Authorization", &format!("Bearer {t}"))]).await {
            Ok(s) => s,
            Err(res) => panic!("page load {load}: {} {}", res.status, String::from_utf8_lossy(&res.body)),
        };
        assert_eq!(s.next().await.event, "connected", "page load {load}");
        drop(previous.replace(s));
        tokio::time::sleep(Duration::from_millis(500)).await; // the user's pace, not a wait
    }
    drop(previous);
    let closed = Instant::now();
    eventually("every stream released", Duration::from_secs(5), || async { gw.stats().await["connections"] == 0 })
        .await;
    assert!(closed.elapsed() <= Duration::from_secs(1), "released after {:?}", closed.elapsed());
}

/// A resume of a long gap never holds more of it than the stream's queue limit: clients that
/// never read cost their queue limit each, not the whole gap, and clients that read get every
/// missed event exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_never_holds_more_than_the_queue_limit() {
    const LIMIT: u64 = 1024 * 1024;
    const EVENTS: usize = 500;
    const STALLED: usize = 16;
    const READERS: usize = 4;
    let nats = Nats::start();
    let gw =
        Gateway::serve(&nats).args(&["--client-queue-bytes", &LIMIT.to_string(), "--heartbeat-secs", "60"]).start();
    gw.ready().await;
    let t = token("hist", &[], 600);

    // 500 events of about 60 KB: 30 MB of history for one user.
    let pad = "x".repeat(60_000);
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        ids.extend(gw.publish_ids(json!({"type":"big","data":{"i":i,"pad":pad},"users":["hist"]})).await);
    }
    let before = format!("{}-{}", epoch_of(&ids[0]), seq_of(&ids[0]) - 1);
    let baseline = gw.rss();

    // Clients that resume from before the first event and never read: a tiny receive buffer,
    // so that the kernel holds little of it either.
    let mut stalled = Vec::new();
    for _ in 0..STALLED {
        let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        socket.set_recv_buffer_size(4096).unwrap();
        socket.connect(&gw.addr.into()).unwrap();
        let mut stream = std::net::TcpStream::from(socket);
        let request = format!(
            "GET /events HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {t}\r\nLast-Event-ID: {before}\r\n\r\n",
            gw.addr
        );
        std::io::Write::write_all(&mut stream, request.as_bytes()).unwrap();
        stalled.push(stream);
    }
    // Clients that read it all.
    let mut readers = Vec::new();
    for _ in 0..READERS {
        let mut s = Sse::resume(gw.addr, &t, &[], &before).await;
        assert_eq!(s.next().await.json()["resumed"], true);
        readers.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for _ in 0..EVENTS {
                got.push(s.next().await.id.unwrap());
            }
            (s, got)
        }));
    }

    // Watch the gateway while the replays run: its memory, and its fullest queue.
    let (mut peak_rss, mut peak_queue) = (baseline, 0u64);
    while !readers.iter().all(|r| r.is_finished()) {
        peak_rss = peak_rss.max(gw.rss());
        let queue = gw.metric("herald_session_queue_bytes").await.expect("herald_session_queue_bytes");
        peak_queue = peak_queue.max(queue as u64);
        tokio::time::sleep(Duration::from_millis(50)).await; // a sampling interval, not a wait
    }
    let mut done = Vec::new();
    for r in readers {
        let (s, got) = r.await.unwrap();
        assert_eq!(got, ids, "every missed event once, in order");
        done.push(s);
    }
    // Nothing more after them: the next event is a marker.
    let marker = gw.publish_marker("hist").await;
    for s in &mut done {
        s.assert_next_is_marker(Some(&marker)).await;
    }

    eprintln!("fullest queue {peak_queue} B; gateway RSS grew by {} KB", (peak_rss - baseline) >> 10);
    let one_event = 61_000;
    assert!(peak_queue <= LIMIT + one_event, "a queue held {peak_queue} bytes against a limit of {LIMIT}");
    let allowed = (STALLED + READERS) as u64 * LIMIT + 64 * 1024 * 1024;
    assert!(
        peak_rss - baseline <= allowed,
        "gateway RSS grew by {} MB (allowed {} MB)",
        (peak_rss - baseline) >> 20,
        allowed >> 20
    );

    // Live events pile up behind the stalled replays: once a queue would pass its limit, that
    // stream is cut as `slow` (its client resumes later), as any slow stream is.
    for i in 0..12 {
        gw.publish_ids(json!({"type":"big","data":{"live":i,"pad":pad},"users":["hist"]})).await;
    }
    eventually("every stalled stream cut as slow", Duration::from_secs(10), || async {
        let metrics = gw.metrics_text().await;
        metrics.contains(&format!("herald_connections_closed_total{{reason=\"slow\"}} {STALLED}\n"))
    })
    .await;
    drop(stalled);
}

/// A publish repeated with its idempotency key, including after its answer was lost on the way
/// back, stores each target's event once and answers the same ids.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_repeated_with_its_id_is_stored_once() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("idem", &["c:1"], 600), &["c:1"]).await;
    assert_eq!(s.next().await.event, "connected");

    let body = json!({"type":"order","data":1,"users":["idem"],"channels":["c:1"],"id":"order-1"});
    let first = gw.publish_ids(body.clone()).await;
    assert_eq!(first.len(), 2);
    assert_eq!(gw.publish_ids(body).await, first, "a repeat answers the first publish's ids");

    // The answer to this one is lost on its way back: a proxy between the publisher and the
    // gateway forwards the request, takes the gateway's answer (so the event was stored) and
    // drops it. The publisher, having heard nothing, tries again.
    let lost = json!({"type":"order","data":2,"users":["idem"],"id":"order-2"});
    let dropped = herald_testkit::try_publish(gw.addr, &lost).await.unwrap();
    assert_eq!(dropped.status, 200, "the first attempt was stored; its answer never reaches the publisher");
    let again = gw.publish_ids(lost).await;
    assert_eq!(
        again,
        dropped.json()["ids"].as_array().unwrap().iter().map(|v| v.as_str().unwrap().to_owned()).collect::<Vec<_>>()
    );
    // Ephemeral events are not stored, so there is nothing to de-duplicate: the id is ignored.
    let ephemeral = json!({"type":"typing","data":0,"users":["idem"],"durable":false,"id":"order-1"});
    assert_eq!(gw.publish(ephemeral).await.json()["ids"], json!([]));
    let marker = gw.publish_marker("idem").await;

    let (before, last) = s.read_to_marker().await;
    assert_eq!(last.id, Some(marker));
    let got: Vec<(String, Option<String>)> = before.into_iter().map(|ev| (ev.event, ev.id)).collect();
    let want = vec![
        ("order".to_owned(), Some(first[0].clone())),
        ("order".to_owned(), Some(first[1].clone())),
        ("order".to_owned(), Some(again[0].clone())),
        ("typing".to_owned(), None),
    ];
    assert_eq!(got, want, "each target's event once, then the marker");
}

/// A page on another site makes the victim's browser post a client event with the victim's
/// `herald_token` cookie, as a form or CORS "simple" request (`text/plain`) would: 415; the
/// same with a JSON body from a foreign `Origin`: 403. Subscribers receive neither; the same
/// request from an allowed origin, and from a backend (no `Origin`), goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_client_events_are_refused() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--allowed-origins", "https://app.example.com"]).start();
    gw.ready().await;
    let victim = token_with(json!({"sub": "victim", "channels": ["doc:*"], "publish": ["doc:*"]}));
    let mut sub = Sse::with_token(gw.addr, &token("watcher", &["doc:1"], 600), &["doc:1"]).await;
    assert_eq!(sub.next().await.event, "connected");

    let cookie = format!("herald_token={victim}");
    let post = |content_type: &'static str, origin: Option<&'static str>, event: &'static str| {
        let (addr, cookie) = (gw.addr, cookie.clone());
        async move {
            let body = json!({"channel": "doc:1", "type": event, "data": 1}).to_string();
            let mut headers = vec![("Cookie", cookie.as_str()), ("Content-Type", content_type)];
            if let Some(origin) = origin {
                headers.push(("Origin", origin));
            }
            herald_testkit::http(addr, "POST", "/v1/client-events", &headers, Some(body.as_bytes())).await
        }
    };
    let res = post("text/plain", Some("https://evil.example"), "forged").await;
    assert_eq!((res.status, res.json()["error"].clone()), (415, json!("unsupported_media_type")));
    let res = post("application/json", Some("https://evil.example"), "forged").await;
    assert_eq!((res.status, res.json()["error"].clone()), (403, json!("origin_not_allowed")));
    let res = post("application/json", Some("https://app.example.com"), "from_app").await;
    assert_eq!(res.status, 202, "{}", String::from_utf8_lossy(&res.body));
    let res = post("application/json", None, "marker").await;
    assert_eq!(res.status, 202, "{}", String::from_utf8_lossy(&res.body));

    // Nothing forged reached the subscriber.
    assert_eq!(sub.next_event().await.event, "from_app");
    sub.assert_next_is_marker(None).await;
}

/// The cookie authenticates reads too. A page on another site that makes a signed-in browser
/// read presence or open a stream with it (it need not see the answer) would spend the user's
/// read budget, so that the user's own app was answered 429, and open streams as the user.
/// Such a request, its `Origin` foreign, is refused with 403 before either; the user's own
/// requests (the app's origin, the gateway's own, or none) go through, the budget whole.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cross_site_reads_with_the_cookie_are_refused() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats)
        .args(&["--presence-channels", "doc:*", "--allowed-origins", "https://app.example.com"])
        .start();
    gw.ready().await;
    let ana = token_with(json!({"sub": "ana", "channels": ["doc:*"]}));
    let cookie = format!("herald_token={ana}");
    let from = |origin: Option<String>| {
        let mut headers = vec![("Cookie".to_owned(), cookie.clone())];
        headers.extend(origin.map(|o| ("Origin".to_owned(), o)));
        headers
    };
    let get = |path: &'static str, headers: Vec<(String, String)>| async move {
        let headers: Vec<(&str, &str)> = headers.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        herald_testkit::http(gw.addr, "GET", path, &headers, None).await
    };
    let foreign = || from(Some("https://evil.example".into()));
    for _ in 0..30 {
        let res = get("/v1/presence/doc:1", foreign()).await;
        assert_eq!((res.status, res.json()["error"].clone()), (403, json!("origin_not_allowed")));
    }
    let res = get("/events?channels=doc:1", foreign()).await;
    assert_eq!((res.status, res.json()["error"].clone()), (403, json!("origin_not_allowed")));
    // No `Origin` (an image or a script of another site, or of a sibling subdomain, which may
    // be anybody's page), as the browser marks it.
    for site in ["cross-site", "same-site", "nonsense"] {
        let mut no_cors = from(None);
        no_cors.push(("Sec-Fetch-Site".to_owned(), site.to_owned()));
        let res = get("/events?channels=doc:1", no_cors.clone()).await;
        assert_eq!((res.status, res.json()["error"].clone()), (403, json!("origin_not_allowed")), "{site}");
        let res = get("/v1/presence/doc:1", no_cors).await;
        assert_eq!(res.status, 403, "{site}");
    }
    assert_eq!(gw.stats().await["connections"], 0, "no stream was opened as the user");

    // Bursts of 20: every read of the user's own is answered (without an `Origin`: the
    // gateway's own page, the user typing the address, or a client that is no browser).
    for n in 0..20 {
        let origin = match n % 3 {
            0 => Some("https://app.example.com".to_owned()),
            1 => Some(gw.url()),
            _ => None,
        };
        let mut headers = from(origin.clone());
        if origin.is_none()
            && let Some(site) = [Some("same-origin"), Some("none"), None][(n / 3) % 3]
        {
            headers.push(("Sec-Fetch-Site".to_owned(), site.to_owned()));
        }
        let res = get("/v1/presence/doc:1", headers).await;
        assert_eq!(res.status, 200, "read {n} from {origin:?}: {}", String::from_utf8_lossy(&res.body));
    }
}

/// A client that resumes in a loop (a `Last-Event-ID` on every reconnect) has the history read
/// at most `--resume-burst` times at once and `--resume-rate` times a second after: beyond its
/// budget a stream is answered with a `retry:` and ends, before anything is read. Another
/// user's resume is not affected, and the throttled client, coming back with the same id,
/// misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_resuming_in_a_loop_is_told_to_come_back_later_and_misses_nothing() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--resume-burst", "3", "--resume-rate", "1", "--retry-ms", "200"]).start();
    gw.ready().await;
    let looper = token("looper", &[], 600);
    let (mut ids, mut others) = (Vec::new(), Vec::new());
    for i in 0..5 {
        ids.extend(gw.publish_ids(json!({"type":"t","data":{"i":i},"users":["looper"]})).await);
        others.extend(gw.publish_ids(json!({"type":"t","data":{"i":i},"users":["other"]})).await);
    }
    let before = format!("{}-{}", epoch_of(&ids[0]), seq_of(&ids[0]) - 1);
    let replayed = |events: &[herald_testkit::Event]| events.iter().filter_map(|e| e.id.clone()).collect::<Vec<_>>();

    // Four resumes at once (opened before anything is read, so that no token refills between
    // them): the first three replay the five events, the fourth gets a retry hint and the end,
    // no `connected`, nothing replayed.
    let mut opened = Vec::new();
    for _ in 0..4 {
        opened.push(Sse::resume(gw.addr, &looper, &[], &before).await);
    }
    let mut throttled = opened.pop().unwrap();
    for (turn, s) in opened.iter_mut().enumerate() {
        assert_eq!(s.next().await.event, "connected", "resume {turn}");
        let mut got = Vec::new();
        for _ in 0..ids.len() {
            got.push(s.next().await);
        }
        assert_eq!(replayed(&got), ids, "resume {turn}");
    }
    let events = throttled.read_to_end(Duration::from_secs(10)).await;
    assert!(throttled.ended, "the throttled stream is closed by the server");
    assert!(events.is_empty(), "no events, only a retry hint: {events:?}");
    assert_eq!(gw.metric("herald_connections_closed_total{reason=\"throttled\"}").await, Some(1.0));

    // Another user resumes as usual meanwhile.
    let mut other = Sse::resume(gw.addr, &token("other", &[], 600), &[], &before).await;
    assert_eq!(other.next().await.event, "connected");
    let mut got = Vec::new();
    for _ in 0..others.len() {
        got.push(other.next().await);
    }
    assert_eq!(replayed(&got), others, "another user's resume");

    // The throttled client comes back with the same id, as EventSource does after `retry:`, and
    // once its budget has refilled (a resume a second) it gets every event it missed.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut back = loop {
        let mut s = Sse::resume(gw.addr, &looper, &[], &before).await;
        if s.next_within(Duration::from_secs(5)).await.is_some_and(|ev| ev.event == "connected") {
            break s;
        }
        assert!(Instant::now() < deadline, "a resume within the budget again after 5 s");
        tokio::time::sleep(Duration::from_millis(100)).await; // the client's pace: its retry hint
    };
    let mut got = Vec::new();
    for _ in 0..ids.len() {
        got.push(back.next().await);
    }
    assert_eq!(replayed(&got), ids, "the resume after the throttle");
}
