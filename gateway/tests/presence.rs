//! Presence and client events across two gateways on one real nats-server: who is on a
//! channel, join/leave frames coalesced across tabs and pods, a killed gateway's members
//! dropped within the TTL, and client events stamped with their sender, authorized and
//! rate-limited.

use std::time::{Duration, Instant};

use herald_testkit::sse::MARKER;
use herald_testkit::{Event, Gateway, Nats, PUBLISH_KEY, Sse, eventually, http, token_with};
use serde_json::{Value, json};

const TTL_SECS: u64 = 3;

fn serve(nats: &Nats) -> Gateway {
    Gateway::serve(nats).args(&["--presence-channels", "doc:*", "--presence-ttl-secs", &TTL_SECS.to_string()]).start()
}

fn client_token(user: &str) -> String {
    token_with(json!({
        "sub": user,
        "channels": ["doc:*", "plain"],
        "publish": ["doc:*"],
        "presence": {"name": user.to_uppercase()},
    }))
}

async fn open(gw: &Gateway, user: &str, channels: &[&str]) -> Sse {
    let mut s = Sse::with_token(gw.addr, &client_token(user), channels).await;
    assert_eq!(s.next().await.event, "connected");
    s
}

/// The next `presence` frame's (action, user), skipping other events.
async fn next_presence(s: &mut Sse, within: Duration) -> Option<(String, String)> {
    let end = Instant::now() + within;
    loop {
        let ev = s.next_within(end.saturating_duration_since(Instant::now())).await?;
        if ev.event == "presence" {
            return Some(presence_of(&ev));
        }
    }
}

fn presence_of(ev: &Event) -> (String, String) {
    assert_eq!(ev.id, None, "presence frames carry no id");
    let env = ev.json();
    assert_eq!(env["target"], "channel");
    assert_eq!(env["channel"], "doc:1");
    (env["data"]["action"].as_str().unwrap().to_owned(), env["data"]["user"].as_str().unwrap().to_owned())
}

async fn members(gw: &Gateway, auth: &str) -> Value {
    let res = http(gw.addr, "GET", "/v1/presence/doc:1", &[("Authorization", &format!("Bearer {auth}"))], None).await;
    assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
    res.json()
}

fn users(body: &Value) -> Vec<(String, u64)> {
    body["members"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| (m["user"].as_str().unwrap().to_owned(), m["connections"].as_u64().unwrap()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_across_two_gateways_with_coalesced_joins_and_leaves() {
    let nats = Nats::start();
    let (a, b) = (serve(&nats), serve(&nats));
    a.ready().await;
    b.ready().await;

    let mut ana = open(&a, "ana", &["doc:1"]).await;
    assert_eq!(next_presence(&mut ana, Duration::from_secs(5)).await, Some(("join".into(), "ana".into())));
    let mut ben = open(&b, "ben", &["doc:1"]).await;
    // Each sees ben arrive; ben learns who was there from the list.
    assert_eq!(next_presence(&mut ana, Duration::from_secs(5)).await, Some(("join".into(), "ben".into())));
    assert_eq!(next_presence(&mut ben, Duration::from_secs(5)).await, Some(("join".into(), "ben".into())));
    let listed = members(&b, &client_token("ben")).await;
    assert_eq!(listed["channel"], "doc:1");
    assert_eq!(users(&listed), [("ana".into(), 1), ("ben".into(), 1)]);
    assert_eq!(listed["members"][0]["presence"], json!({"name": "ANA"}), "the token's presence object");

    // A second tab of ana's, on the other gateway: no second join; the count is fleet-wide.
    let ana2 = open(&b, "ana", &["doc:1"]).await;
    eventually("ana counted twice", Duration::from_secs(5), || async {
        users(&members(&a, PUBLISH_KEY).await) == [("ana".to_owned(), 2), ("ben".to_owned(), 1)]
    })
    .await;
    // Closing one tab leaves ana present; closing the second makes her leave.
    drop(ana2);
    eventually("ana counted once", Duration::from_secs(5), || async {
        users(&members(&a, PUBLISH_KEY).await) == [("ana".to_owned(), 1), ("ben".to_owned(), 1)]
    })
    .await;
    drop(ana);
    assert_eq!(
        next_presence(&mut ben, Duration::from_secs(5)).await,
        Some(("leave".into(), "ana".into())),
        "the first presence frame after two joins of ana is her leave: none for her first tab"
    );
    assert_eq!(users(&members(&b, PUBLISH_KEY).await), [("ben".to_owned(), 1)]);

    // Who may look: a token for the channel or a publisher key; not another channel's token.
    let other = token_with(json!({"sub": "eve", "channels": ["plain"]}));
    let res = http(b.addr, "GET", "/v1/presence/doc:1", &[("Authorization", &format!("Bearer {other}"))], None).await;
    assert_eq!((res.status, res.json()["error"].clone()), (403, json!("channel_not_allowed")));
    let res = http(b.addr, "GET", "/v1/presence/doc:1", &[], None).await;
    assert_eq!(res.status, 401);
    let res =
        http(b.addr, "GET", "/v1/presence/plain", &[("Authorization", &format!("Bearer {PUBLISH_KEY}"))], None).await;
    assert_eq!((res.status, res.json()["error"].clone()), (404, json!("presence_off")));
    let res =
        http(b.addr, "GET", "/v1/presence/a..b", &[("Authorization", &format!("Bearer {PUBLISH_KEY}"))], None).await;
    assert_eq!((res.status, res.json()["error"].clone()), (400, json!("invalid_channel")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_gateways_members_leave_within_the_ttl() {
    let nats = Nats::start();
    let (a, mut b) = (serve(&nats), serve(&nats));
    a.ready().await;
    b.ready().await;
    let mut ana = open(&a, "ana", &["doc:1"]).await;
    let _ben = open(&b, "ben", &["doc:1"]).await;
    let _ben2 = open(&b, "ben", &["doc:1"]).await;
    eventually("both listed", Duration::from_secs(5), || async {
        users(&members(&a, PUBLISH_KEY).await) == [("ana".to_owned(), 1), ("ben".to_owned(), 2)]
    })
    .await;
    while next_presence(&mut ana, Duration::from_millis(100)).await.is_some() {}

    b.kill();
    let killed = Instant::now();
    let bound = Duration::from_secs(TTL_SECS);
    let frame = next_presence(&mut ana, bound + Duration::from_secs(2)).await;
    let took = killed.elapsed();
    assert_eq!(frame, Some(("leave".into(), "ben".into())));
    eprintln!("ben left {:.2} s after his gateway was killed (TTL {TTL_SECS} s)", took.as_secs_f64());
    assert!(took <= bound + Duration::from_millis(500), "leave after {took:?}, bound {bound:?}");
    assert_eq!(users(&members(&a, PUBLISH_KEY).await), [("ana".to_owned(), 1)]);
    // A fresh reader of the store (no local watcher) agrees.
    let c = serve(&nats);
    c.ready().await;
    assert_eq!(users(&members(&c, PUBLISH_KEY).await), [("ana".to_owned(), 1)]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_events_carry_their_sender_and_are_authorized_and_rate_limited() {
    let nats = Nats::start();
    let (a, b) = (serve(&nats), serve(&nats));
    a.ready().await;
    b.ready().await;
    let mut ben = open(&b, "ben", &["doc:1"]).await;
    let post = |gw: &Gateway, token: String, body: Value| {
        let addr = gw.addr;
        async move {
            let body = serde_json::to_vec(&body).unwrap();
            http(
                addr,
                "POST",
                "/v1/client-events",
                &[("Authorization", &format!("Bearer {token}")), ("Content-Type", "application/json")],
                Some(&body),
            )
            .await
        }
    };

    // ana (on the other gateway) claims to be ben, twice: the gateway stamps her user.
    let res = post(
        &a,
        client_token("ana"),
        json!({"channel": "doc:1", "type": "cursor", "data": {"x": 1, "from": "ben"}, "from": "ben"}),
    )
    .await;
    assert_eq!(res.status, 202, "{}", String::from_utf8_lossy(&res.body));
    let ev = loop {
        let ev = ben.next().await;
        if ev.event != "presence" {
            break ev;
        }
    };
    assert_eq!(ev.event, "cursor");
    assert_eq!(ev.id, None, "client events are ephemeral");
    let env = ev.json();
    assert_eq!(env["from"], "ana");
    assert_eq!(env["data"], json!({"x": 1, "from": "ben"}));
    assert_eq!(env["channel"], "doc:1");

    // Not allowed: no publish claim, or a channel outside it; a reserved type; a big body.
    let reader = token_with(json!({"sub": "rita", "channels": ["doc:*"]}));
    let res = post(&a, reader, json!({"channel": "doc:1", "type": "cursor", "data": 1})).await;
    assert_eq!((res.status, res.json()["error"].clone()), (403, json!("publish_not_allowed")));
    let res = post(&a, client_token("ana"), json!({"channel": "plain", "type": "cursor", "data": 1})).await;
    assert_eq!(res.status, 403);
    let res = post(&a, client_token("ana"), json!({"channel": "doc:1", "type": "presence", "data": 1})).await;
    assert_eq!((res.status, res.json()["error"].clone()), (400, json!("invalid_type")));
    let res = post(&a, client_token("ana"), json!({"channel": "doc:1", "type": "t", "data": "x".repeat(4096)})).await;
    assert_eq!((res.status, res.json()["error"].clone()), (413, json!("too_large")));
    let res = post(&a, "not.a.token".into(), json!({"channel": "doc:1", "type": "t", "data": 1})).await;
    assert_eq!(res.status, 401);

    // 60 at once against a burst of 40 (and 20/s): some are refused with Retry-After, and
    // exactly the accepted ones are delivered.
    let mut accepted = 0;
    let mut refused = 0;
    for i in 0..60 {
        let res = post(&a, client_token("ana"), json!({"channel": "doc:1", "type": "burst", "data": i})).await;
        match res.status {
            202 => accepted += 1,
            429 => {
                refused += 1;
                assert_eq!(res.json()["error"], "rate_limited");
                let retry: u64 = res.header("retry-after").expect("Retry-After").parse().unwrap();
                assert!((1..=2).contains(&retry), "Retry-After {retry}");
            }
            other => panic!("unexpected status {other}"),
        }
    }
    assert!(refused > 0 && accepted >= 39, "{accepted} accepted, {refused} refused");
    // A marker from another user, sent after all of them through the same path, closes the count.
    let res = post(&a, client_token("cy"), json!({"channel": "doc:1", "type": MARKER, "data": 0})).await;
    assert_eq!(res.status, 202);
    let (before, _) = ben.read_to_marker().await;
    let delivered: Vec<u64> =
        before.iter().filter(|ev| ev.event == "burst").map(|ev| ev.json()["data"].as_u64().unwrap()).collect();
    assert_eq!(delivered.len(), accepted, "delivered exactly the accepted events");
    assert!(delivered.windows(2).all(|w| w[0] < w[1]), "in order: {delivered:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_connections_costs_a_few_batched_writes() {
    const CONNECTIONS: usize = 300;
    let nats = Nats::start();
    let gw = serve(&nats);
    gw.ready().await;
    let writes = || async { gw.metric("herald_presence_writes_total").await.unwrap_or(0.0) as u64 };
    let before = writes().await;
    // All at once, as a burst comes: one after another, they would take longer on a loaded
    // machine, and the count would measure the machine's speed against the 50 ms batch.
    let opening = (0..CONNECTIONS).map(|i| {
        let t = token_with(json!({"sub": format!("u{i}"), "channels": ["doc:*"]}));
        async move { Sse::with_token(gw.addr, &t, &["doc:1"]).await }
    });
    let _streams = futures_util::future::join_all(opening).await;
    eventually("every user listed", Duration::from_secs(10), || async {
        members(&gw, PUBLISH_KEY).await["members"].as_array().unwrap().len() == CONNECTIONS
    })
    .await;
    let after = writes().await;
    let took = after - before;
    eprintln!("{CONNECTIONS} connections on one channel: {took} presence writes");
    assert!(took * 10 <= CONNECTIONS as u64, "{took} writes for {CONNECTIONS} connections");
}

/// The consumers the nats-server holds, from its own monitoring.
async fn consumers(nats: &Nats) -> u64 {
    let jsz = nats.monitor("/jsz").await;
    jsz["consumers"].as_u64().expect("/jsz counts consumers")
}

/// 300 presence reads of three channels in about a second, on a gateway that streams none of
/// them, while another gateway's streams make the members: every read answers those members,
/// and the nats-server's own monitoring counts at most one new consumer per channel (before: one
/// per read, each living ~30 s). A user reading faster than 5 a second past a burst of 20 gets
/// 429 with `Retry-After`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_reads_share_one_watch_per_channel_and_are_rate_limited() {
    let nats = Nats::start();
    let (reader, streams) = (serve(&nats), serve(&nats));
    reader.ready().await;
    streams.ready().await;
    let _ana = open(&streams, "ana", &["doc:1"]).await;
    let _ben = open(&streams, "ben", &["doc:2"]).await;
    // The streaming gateway answers from its own watches (no consumer of a read's own).
    eventually("the members are written", Duration::from_secs(10), || async {
        users(&members(&streams, PUBLISH_KEY).await) == [("ana".to_owned(), 1)]
    })
    .await;
    let before = consumers(&nats).await;

    let started = Instant::now();
    let reads: Vec<_> = (0..300)
        .map(|i| {
            let addr = reader.addr;
            tokio::spawn(async move {
                let channel = format!("doc:{}", i % 3 + 1);
                let auth = format!("Bearer {PUBLISH_KEY}");
                let res =
                    http(addr, "GET", &format!("/v1/presence/{channel}"), &[("Authorization", &auth)], None).await;
                assert_eq!(res.status, 200, "{}", String::from_utf8_lossy(&res.body));
                (channel, users(&res.json()))
            })
        })
        .collect();
    for read in reads {
        let (channel, members) = read.await.unwrap();
        let want: Vec<(String, u64)> = match channel.as_str() {
            "doc:1" => vec![("ana".into(), 1)],
            "doc:2" => vec![("ben".into(), 1)],
            _ => vec![],
        };
        assert_eq!(members, want, "{channel}");
    }
    let took = started.elapsed();
    let added = consumers(&nats).await - before;
    assert!(added <= 3, "{added} consumers for 300 reads of 3 channels in {took:?}");

    // One user, reading as fast as it can.
    let eve = client_token("eve");
    let (mut ok, mut limited) = (0, None);
    for _ in 0..40 {
        let res =
            http(reader.addr, "GET", "/v1/presence/doc:1", &[("Authorization", &format!("Bearer {eve}"))], None).await;
        match res.status {
            200 => ok += 1,
            429 => limited = Some(res),
            other => panic!("{other}: {}", String::from_utf8_lossy(&res.body)),
        }
    }
    let limited = limited.expect("reads past the burst are refused");
    assert_eq!(limited.json()["error"], "rate_limited");
    assert!(limited.header("retry-after").is_some());
    assert!((20..40).contains(&ok), "{ok} of 40 reads answered");
}

/// The presence bucket is kept in memory: a NATS restart empties it of everything, itself
/// included. The gateway makes it again when a write or a read finds it gone (before: once per
/// process, so presence answered 503, and no join or leave went out, until a gateway restarted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_comes_back_after_a_nats_restart() {
    let mut nats = Nats::start();
    let gw = serve(&nats);
    gw.ready().await;
    let mut ana = open(&gw, "ana", &["doc:1"]).await;
    assert_eq!(next_presence(&mut ana, Duration::from_secs(5)).await, Some(("join".into(), "ana".into())));

    nats.stop();
    nats.restart();
    gw.ready().await;
    let _ben = open(&gw, "ben", &["doc:1"]).await;
    assert_eq!(next_presence(&mut ana, Duration::from_secs(10)).await, Some(("join".into(), "ben".into())));
    let other = serve(&nats);
    other.ready().await;
    assert_eq!(users(&members(&other, PUBLISH_KEY).await), [("ana".to_owned(), 1), ("ben".to_owned(), 1)]);
}

/// A second tab of a user counts at once, and the presence object shown is that of an open tab
/// (before: a count that stayed at 0 or 1 was written only with the TTL's rewrite, a third of
/// it later, and a closed tab's object stayed on show).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_tab_counts_at_once_and_a_closed_tabs_presence_goes_with_it() {
    let nats = Nats::start();
    // A long TTL: its rewrites, every 20 s, are not what the test sees.
    let gw = Gateway::serve(&nats).args(&["--presence-channels", "doc:*", "--presence-ttl-secs", "60"]).start();
    gw.ready().await;
    let tab = |status: &str| token_with(json!({"sub": "ana", "channels": ["doc:*"], "presence": {"status": status}}));
    let shown = || async {
        let listed = members(&gw, PUBLISH_KEY).await;
        (users(&listed), listed["members"][0]["presence"]["status"].as_str().map(str::to_owned))
    };
    let mut away = Sse::with_token(gw.addr, &tab("away"), &["doc:1"]).await;
    assert_eq!(away.next().await.event, "connected");
    eventually("one tab", Duration::from_secs(5), || async {
        shown().await == (vec![("ana".to_owned(), 1)], Some("away".to_owned()))
    })
    .await;
    let mut busy = Sse::with_token(gw.addr, &tab("busy"), &["doc:1"]).await;
    assert_eq!(busy.next().await.event, "connected");
    eventually("two tabs, the newest one's presence", Duration::from_secs(5), || async {
        shown().await == (vec![("ana".to_owned(), 2)], Some("busy".to_owned()))
    })
    .await;
    drop(busy);
    eventually("one tab again, its own presence", Duration::from_secs(5), || async {
        shown().await == (vec![("ana".to_owned(), 1)], Some("away".to_owned()))
    })
    .await;
}
