//! Live delivery over a real nats-server: user, channel and broadcast targets on one connection,
//! published through the HTTP API and straight to NATS, isolated between users.

use std::time::{Duration, Instant};

use bytes::Bytes;
use herald_testkit::{Gateway, Nats, Sse, token};
use serde_json::json;

/// Loopback delivery bound from the acceptance criteria.
const DELIVERY_BOUND: Duration = Duration::from_millis(100);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_channel_and_broadcast_arrive_in_order_on_one_connection() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;

    let mut u1 = Sse::with_token(gw.addr, &token("u1", &["booking:*"], 600), &["booking:42"]).await;
    assert_eq!(u1.header("content-type"), Some("text/event-stream"));
    assert_eq!(u1.header("cache-control"), Some("no-cache, no-transform"));
    assert_eq!(u1.header("x-accel-buffering"), Some("no"));
    assert_eq!(u1.header("content-encoding"), None);
    let connected = u1.next().await;
    assert_eq!(connected.event, "connected");
    // A new stream's first resume cursor: the history's head (empty here).
    assert!(connected.id.as_deref().is_some_and(|id| id.ends_with("-0")), "{:?}", connected.id);
    assert!(connected.retry.is_some(), "the first frame carries retry:");
    let info = connected.json();
    assert_eq!(info["user"], "u1");
    assert_eq!(info["channels"], json!(["booking:42"]));
    assert_eq!(info["resumed"], false);
    assert!(info["connectionId"].as_str().is_some_and(|s| !s.is_empty()));

    let mut u2 = Sse::with_token(gw.addr, &token("u2", &[], 600), &[]).await;
    assert_eq!(u2.next().await.event, "connected");

    // Through the HTTP API: one event per target, each awaited with a deadline.
    let cases = [
        (json!({"type":"notification","data":{"n":1},"users":["u1"]}), "notification", "user", json!(null)),
        (
            json!({"type":"booking_update","data":{"bookingId":"42","status":"confirmed"},"channels":["booking:42"]}),
            "booking_update",
            "channel",
            json!("booking:42"),
        ),
        (json!({"type":"maintenance","data":"at 5","broadcast":true}), "maintenance", "broadcast", json!(null)),
    ];
    for (body, event, target, channel) in &cases {
        let sent = Instant::now();
        let res = gw.publish(body.clone()).await;
        assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
        let ev = u1.next_within(DELIVERY_BOUND.saturating_sub(sent.elapsed()).max(Duration::from_millis(1))).await;
        let ev = ev.unwrap_or_else(|| panic!("{event} not delivered within {DELIVERY_BOUND:?}"));
        assert_eq!(&ev.event, event);
        let env = ev.json();
        assert_eq!(env["target"], *target);
        assert_eq!(env["channel"], *channel);
        assert_eq!(env["data"], body["data"]);
    }

    // Straight to NATS, as a backend would: the same envelope, the Herald-Type header as event.
    let client = nats.client().await;
    let subjects = [
        ("herald.live.user.u1", "agent_status", "user"),
        ("herald.live.channel.booking:42", "booking_update", "channel"),
        ("herald.live.broadcast", "notification", "broadcast"),
    ];
    for (i, (subject, event, target)) in subjects.iter().enumerate() {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert("Herald-Type", *event);
        let sent = Instant::now();
        client.publish_with_headers(*subject, headers, Bytes::from(format!("{{\"i\":{i}}}"))).await.unwrap();
        client.flush().await.unwrap();
        let ev = u1.next_within(DELIVERY_BOUND.saturating_sub(sent.elapsed()).max(Duration::from_millis(1))).await;
        let ev = ev.unwrap_or_else(|| panic!("NATS {subject} not delivered within {DELIVERY_BOUND:?}"));
        assert_eq!(ev.event, *event);
        assert_eq!(ev.json()["target"], *target);
        assert_eq!(ev.json()["data"]["i"], i);
    }

    // A burst across the three subjects: each subject's events arrive in publish order
    // (ephemeral events carry no sequence, so only durable ones are ordered across subjects).
    for i in 0..30 {
        let subject = subjects[i % 3].0;
        client.publish(subject, Bytes::from(format!("{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    let mut per_target: std::collections::HashMap<String, Vec<u64>> = Default::default();
    for _ in 0..30 {
        let ev = u1.next().await;
        assert_eq!(ev.event, "message", "no Herald-Type means \"message\"");
        let env = ev.json();
        per_target.entry(env["target"].as_str().unwrap().to_owned()).or_default().push(env["data"].as_u64().unwrap());
    }
    for (k, (_, _, target)) in subjects.iter().enumerate() {
        let want: Vec<u64> = (0..30).filter(|i| i % 3 == k as u64).collect();
        assert_eq!(per_target[*target], want, "{target} events in publish order");
    }

    // u2 saw the broadcasts only: none of u1's user or channel events, up to a marker of its own
    // published after them all.
    gw.publish_marker("u2").await;
    let (seen, _) = u2.read_to_marker().await;
    for ev in &seen {
        assert_eq!(ev.json()["target"], "broadcast", "u2 received {ev:?}");
    }
    assert_eq!(seen.len(), 2 + 10, "both broadcasts and the ten in the burst");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_from_query_and_cookie_and_payload_with_newlines() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;

    let t = token("q1", &["room.*"], 600);
    let mut by_query = Sse::open(gw.addr, &format!("/events?channels=room.1&token={t}"), &[]).await.unwrap();
    assert_eq!(by_query.next().await.json()["user"], "q1");
    let cookie = format!("herald_token={}", token("c1", &[], 600));
    let mut by_cookie = Sse::open(gw.addr, "/events", &[("Cookie", &cookie)]).await.unwrap();
    assert_eq!(by_cookie.next().await.json()["user"], "c1");

    // A pretty-printed payload becomes several data: lines that join back into the JSON.
    let client = nats.client().await;
    client.publish("herald.live.channel.room.1", Bytes::from_static(b"{\n  \"a\": 1\n}")).await.unwrap();
    client.flush().await.unwrap();
    let ev = by_query.next_event().await;
    assert_eq!(ev.json()["data"]["a"], 1);
    assert!(ev.data.contains('\n'));

    // A raw NATS publish that is not JSON is dropped (and logged), never sent half-broken.
    client.publish("herald.live.user.c1", Bytes::from_static(b"not json")).await.unwrap();
    client.publish("herald.live.user.c1", Bytes::from_static(b"\"after\"")).await.unwrap();
    client.flush().await.unwrap();
    assert_eq!(by_cookie.next_event().await.json()["data"], "after");
    herald_testkit::eventually("the drop is logged", std::time::Duration::from_secs(5), || async {
        gw.log_text().contains("payload is not JSON")
    })
    .await;
}

/// Durable events reach a connection in stream order across all its subjects, also when they
/// come faster than one scheduler turn can take (the hub drains every subscription fully before
/// sorting; a partial drain would let a later event overtake an earlier one, and a resuming
/// client would then skip the earlier one).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_events_arrive_in_stream_order_across_subjects_under_a_burst() {
    const EVENTS: u64 = 20_000;
    let nats = Nats::start();
    // Room for the whole burst: this test is about order, and a reader that falls behind by the
    // default 1 MiB (a busy machine descheduling it) would be cut off as slow, by design.
    let gw = Gateway::serve(&nats).args(&["--client-queue-bytes", &(64 << 20).to_string()]).start();
    gw.ready().await;
    let mut sse = Sse::with_token(gw.addr, &token("u1", &["room"], 600), &["room"]).await;
    assert_eq!(sse.next().await.event, "connected");

    // Straight into the stream, as a backend would, without waiting for acks: the stream's
    // republish to the live subjects then comes in long runs.
    let client = nats.client().await;
    let subjects = ["herald.events.user.u1", "herald.events.channel.room", "herald.events.broadcast"];
    for i in 0..EVENTS {
        client.publish(subjects[(i % 3) as usize], Bytes::from(format!("{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();

    let mut last = 0;
    let mut out_of_order = Vec::new();
    for n in 0..EVENTS {
        let ev = sse
            .next_within(Duration::from_secs(30))
            .await
            .unwrap_or_else(|| panic!("only {n} of {EVENTS} events arrived (stream ended: {})", sse.ended));
        let seq = herald_testkit::seq_of(ev.id.as_deref().expect("durable events carry an id"));
        if seq <= last && out_of_order.len() < 10 {
            out_of_order.push((last, seq));
        }
        last = last.max(seq);
    }
    assert!(out_of_order.is_empty(), "events overtaken (previous, then): {out_of_order:?}");
    assert_eq!(last, EVENTS, "the stream's sequences 1..={EVENTS}");
}

/// A durable publish over HTTP goes out on the connection of the worker that took the request,
/// one per worker beside the hub's, and comes back acknowledged and delivered in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_http_publishes_go_out_on_each_workers_own_connection() {
    const WORKERS: usize = 2;
    const EVENTS: usize = 40;
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--workers", &WORKERS.to_string()]).start();
    gw.ready().await;
    let publishers = || async {
        let connz = nats.connz().await;
        let conns = connz["connections"].as_array().cloned().unwrap_or_default();
        conns.into_iter().filter(|c| c["name"].as_str().is_some_and(|n| n.ends_with(" publisher"))).collect::<Vec<_>>()
    };
    herald_testkit::eventually("each worker has its publish connection", Duration::from_secs(10), || async {
        publishers().await.len() == WORKERS
    })
    .await;
    let sent = |conns: &[serde_json::Value]| conns.iter().map(|c| c["in_msgs"].as_u64().unwrap()).sum::<u64>();
    let before = sent(&publishers().await);

    let mut sse = Sse::with_token(gw.addr, &token("u1", &[], 600), &[]).await;
    assert_eq!(sse.next().await.event, "connected");
    let mut ids = Vec::new();
    for i in 0..EVENTS {
        ids.extend(gw.publish_ids(serde_json::json!({"data": i, "users": ["u1"]})).await);
    }
    for (i, id) in ids.iter().enumerate() {
        let ev = sse.next_event().await;
        assert_eq!((ev.id.as_deref(), ev.json()["data"].as_u64()), (Some(id.as_str()), Some(i as u64)));
    }
    // Every event was stored through a worker's connection (the monitor counts a connection's
    // publishes as it reads them, before the acknowledgement that answered the request).
    assert_eq!(sent(&publishers().await) - before, EVENTS as u64);
}
