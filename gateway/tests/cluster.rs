//! Herald on a three-node NATS cluster holding the history with three replicas: nodes are
//! killed, restarted and cut off while clients stream and a publisher publishes through the
//! HTTP API, and every acknowledged event still reaches every client it targets exactly once,
//! in order. The publisher sees latency, not errors, while a quorum exists; without one, 503.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use herald_testkit::cluster::NatsCluster;
use herald_testkit::delivery::{Ledger, all_connected, assert_exactly_once, follower, subject_for, targets_json};
use herald_testkit::sse::MARKER;
use herald_testkit::{Follower, Gateway, Sse, eventually, seq_of, token, try_publish};
use serde_json::json;

const CLIENTS: usize = 200;
const RATE: u64 = 500;

/// A gateway on every node of `cluster`, its NATS connection named after `host` (to find the
/// node it is connected to).
fn gateway(cluster: &NatsCluster, host: &str, extra: &[&str]) -> Gateway {
    // Every event of a run is kept, so that any sequence the history lacks was lost.
    let mut args = vec!["--history-replicas", "3", "--history-max-per-subject", "1000000"];
    args.extend(extra);
    Gateway::serve(cluster).args(&args).env("HOSTNAME", host).start()
}

/// What the publisher saw.
#[derive(Default)]
struct Tally {
    ledger: Mutex<Ledger>,
    acknowledged: AtomicUsize,
    /// Publishes answered 503, with when.
    unavailable: Mutex<Vec<(usize, Instant)>>,
    /// Each acknowledged event's number and the sequence it was acknowledged with.
    stored: Mutex<Vec<(usize, u64)>>,
    stop: AtomicBool,
}

/// Publishes event `n` through the gateways' HTTP API with the idempotency key `e-<n>`, as a
/// careful publisher does: a 503 or an unreachable gateway is retried, with the same key, on
/// the next gateway, until the event is acknowledged.
async fn publish_one(gateways: &[SocketAddr], n: usize, event_type: &str, tally: &Tally) -> u64 {
    let (_, user, channel) = if event_type == "marker" { (String::new(), None, None) } else { subject_for(n, CLIENTS) };
    let mut body = targets_json(user, channel);
    body["type"] = json!(event_type);
    body["data"] = json!({ "n": n });
    body["id"] = json!(format!("e-{n}"));
    let deadline = Instant::now() + Duration::from_secs(120);
    for at in n.. {
        assert!(Instant::now() < deadline, "event {n} was never acknowledged");
        match try_publish(gateways[at % gateways.len()], &body).await {
            Ok(res) if res.status == 200 => {
                let seq = seq_of(res.json()["ids"][0].as_str().unwrap());
                tally.ledger.lock().unwrap().record(user, channel, seq);
                tally.stored.lock().unwrap().push((n, seq));
                tally.acknowledged.fetch_add(1, Ordering::SeqCst);
                return seq;
            }
            Ok(res) if res.status == 503 => tally.unavailable.lock().unwrap().push((n, Instant::now())),
            Ok(res) => panic!("publish {n}: {} {}", res.status, String::from_utf8_lossy(&res.body)),
            Err(_) => {} // that gateway is down: the next one
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    unreachable!()
}

/// Publishes at [`RATE`] until told to stop, each event on its own task (a publish waiting out
/// a leader election does not hold up the next), then waits for every one to be acknowledged.
async fn publisher(gateways: Vec<SocketAddr>, tally: Arc<Tally>) -> usize {
    let start = Instant::now();
    let mut pending = Vec::new();
    let mut n = 0;
    while !tally.stop.load(Ordering::SeqCst) {
        tokio::time::sleep_until((start + Duration::from_micros(1_000_000 / RATE * n as u64)).into()).await;
        let (gateways, tally) = (gateways.clone(), tally.clone());
        pending.push(tokio::spawn(async move { publish_one(&gateways, n, "tick", &tally).await }));
        n += 1;
    }
    for p in pending {
        p.await.unwrap();
    }
    n
}

/// Waits until `more` further events have been acknowledged.
async fn acknowledged_more(tally: &Tally, more: usize, what: &str) {
    let target = tally.acknowledged.load(Ordering::SeqCst) + more;
    eventually(what, Duration::from_secs(60), || async { tally.acknowledged.load(Ordering::SeqCst) >= target }).await;
}

/// Every acknowledged sequence holds the event it was acknowledged for, and the history holds
/// nothing else: no retry was stored twice, and no event was acknowledged that was not stored.
async fn assert_stored_once(js: &jetstream::Context, stored: &[(usize, u64)]) {
    let mut stream = js.get_stream("HERALD").await.unwrap();
    let mut wrong = Vec::new();
    for (n, seq) in stored {
        match stream.get_raw_message(*seq).await {
            Ok(msg) => {
                let data: serde_json::Value = serde_json::from_slice(&msg.payload).unwrap();
                let want = json!({ "n": n });
                if data != want {
                    wrong.push(format!("event {n} acknowledged as {seq}, which holds {data}"));
                }
            }
            Err(e) => wrong.push(format!("event {n} acknowledged as {seq}, which the history lacks: {e}")),
        }
    }
    assert!(
        wrong.is_empty(),
        "{} of {} acknowledgements: {:#?}",
        wrong.len(),
        stored.len(),
        &wrong[..wrong.len().min(5)]
    );
    let messages = stream.info().await.unwrap().state.messages;
    assert_eq!(messages, stored.len() as u64, "stored events against acknowledged ones");
}

/// While 200 clients on two gateways stream and events are published at 500/s, in turn: the
/// node a gateway is connected to is SIGKILLed and restarted, the stream's leader is SIGKILLed
/// and restarted, a node is cut off from the other two for 10 s and healed, and a gateway is
/// SIGKILLed (its clients resume on the other). Every acknowledged event reaches every client
/// it targets exactly once, in order, and no publish is answered 503: a quorum existed
/// throughout, and the gateways waited out each leader election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn losing_nodes_of_a_three_node_cluster_loses_nothing() {
    let mut cluster = NatsCluster::start(3).await;
    let a = gateway(&cluster, "gw-a", &[]);
    let mut b = gateway(&cluster, "gw-b", &[]);
    a.ready().await;
    b.ready().await;
    let js = jetstream::new(cluster.client().await);
    assert_eq!(js.get_stream("HERALD").await.unwrap().info().await.unwrap().config.num_replicas, 3);

    // Half the clients start on each gateway.
    let fs: Vec<Follower> =
        (0..CLIENTS).map(|i| follower(i, &if i % 2 == 0 { [a.addr, b.addr] } else { [b.addr, a.addr] })).collect();
    all_connected(&fs).await;
    assert_eq!(a.stats().await["connections"], CLIENTS / 2);

    let tally = Arc::new(Tally::default());
    let publishing = tokio::spawn(publisher(vec![a.addr, b.addr], tally.clone()));
    acknowledged_more(&tally, 500, "publishing started").await;

    // 1. The node gateway A is connected to dies; A reconnects to another one.
    let node_a = cluster.node_of("herald-gateway gw-a").await.expect("gateway A is connected");
    cluster.kill(node_a);
    eventually("gateway A reconnected to another node", Duration::from_secs(30), || async {
        cluster.node_of("herald-gateway gw-a").await.is_some_and(|n| n != node_a)
    })
    .await;
    acknowledged_more(&tally, 1000, "publishing after losing gateway A's node").await;
    cluster.restart(node_a).await;
    cluster.stream_leader(&js, "HERALD", true).await;
    acknowledged_more(&tally, 500, "publishing after the restart").await;

    // 2. The stream's leader dies: the other two elect a new one.
    let leader = cluster.stream_leader(&js, "HERALD", true).await;
    cluster.kill(leader);
    acknowledged_more(&tally, 1000, "publishing after losing the stream leader").await;
    cluster.restart(leader).await;
    cluster.stream_leader(&js, "HERALD", true).await;
    acknowledged_more(&tally, 500, "publishing after the leader's restart").await;

    // 3. A node no gateway's hub is connected to is cut off from the other two for 10 s: one
    //    that holds a worker's publisher connection when there is one (its publishes must go
    //    through the hub's connection meanwhile), else the leader when no hub is on it.
    let used = [cluster.node_of("herald-gateway gw-a").await, cluster.node_of("herald-gateway gw-b").await];
    let leader = cluster.stream_leader(&js, "HERALD", true).await;
    let publishers = cluster.nodes_with("herald-gateway gw-").await;
    let free = |i: &usize| !used.contains(&Some(*i));
    let cut =
        publishers.iter().copied().find(free).or_else(|| free(&leader).then_some(leader)).or_else(|| (0..3).find(free));
    let cut = cut.unwrap();
    cluster.isolate(cut);
    tokio::time::sleep(Duration::from_secs(10)).await; // the partition itself
    cluster.heal();
    cluster.formed().await;
    cluster.stream_leader(&js, "HERALD", true).await;
    acknowledged_more(&tally, 500, "publishing after the partition healed").await;

    // 4. Gateway B dies: its clients resume on A.
    b.kill();
    acknowledged_more(&tally, 1000, "publishing after losing gateway B").await;

    tally.stop.store(true, Ordering::SeqCst);
    let published = publishing.await.unwrap();
    tally.ledger.lock().unwrap().marker = publish_one(&[a.addr], published, "marker", &tally).await;
    let ledger = std::mem::take(&mut *tally.ledger.lock().unwrap());
    let stored = std::mem::take(&mut *tally.stored.lock().unwrap());
    assert_stored_once(&js, &stored).await;
    assert_exactly_once(&fs, &ledger).await;
    assert_eq!(a.stats().await["connections"], CLIENTS, "B's clients resumed on A");
    let unavailable = tally.unavailable.lock().unwrap();
    assert!(unavailable.is_empty(), "{} of {published} publishes answered 503 with a quorum", unavailable.len());
    // Every gap was refilled with every stream kept open: none was sent to resume, through a
    // refill that failed or a live copy of an event (a new leader republishes what its
    // predecessor did) taken for a history that started over.
    for gw in [&a, &b] {
        let log = gw.log_text();
        assert!(!log.contains("every stream resumes"), "a gateway sent every stream to resume; its log:\n{log}");
    }
}

/// With two of three nodes gone there is no quorum: a publish is retried for the retry window,
/// then answered 503, and nothing of it is stored. Once a node is back, the publisher's retry
/// with the same key is stored once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_quorum_publishing_answers_503_after_the_retry_window() {
    let mut cluster = NatsCluster::start(3).await;
    let gw = gateway(&cluster, "gw-q", &["--publish-retry-secs", "2"]);
    gw.ready().await;
    let js = jetstream::new(cluster.client().await);
    cluster.stream_leader(&js, "HERALD", true).await;
    let mut s = Sse::with_token(gw.addr, &token("q", &[], 600), &[]).await;
    assert_eq!(s.next().await.event, "connected");

    let on = cluster.node_of("herald-gateway gw-q").await.unwrap();
    let others: Vec<usize> = (0..3).filter(|&i| i != on).collect();
    for &i in &others {
        cluster.kill(i);
    }
    let body = json!({"type":"order","data":1,"users":["q"],"id":"q-1"});
    let started = Instant::now();
    let res = try_publish(gw.addr, &body).await.unwrap();
    assert_eq!(res.status, 503, "{}", String::from_utf8_lossy(&res.body));
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "answered 503 after {:?}, within the retry window",
        started.elapsed()
    );

    cluster.restart(others[0]).await;
    let stored = Mutex::new(String::new());
    eventually("publishing works again with a quorum", Duration::from_secs(60), || async {
        match try_publish(gw.addr, &body).await {
            Ok(res) if res.status == 200 => {
                *stored.lock().unwrap() = res.json()["ids"][0].as_str().unwrap().to_owned();
                true
            }
            Ok(res) if res.status == 503 => false,
            Ok(res) => panic!("{} {}", res.status, String::from_utf8_lossy(&res.body)),
            Err(e) => panic!("{e}"),
        }
    })
    .await;
    let id = stored.into_inner().unwrap();
    let again = try_publish(gw.addr, &body).await.unwrap();
    assert_eq!(again.json()["ids"][0], json!(id), "a repeat answers the stored event's id");
    let marker = try_publish(gw.addr, &json!({"type":MARKER,"data":0,"users":["q"]})).await.unwrap();
    let marker = marker.json()["ids"][0].as_str().unwrap().to_owned();

    // A hub that saw a gap while the stream had no leader holds live events and refills the gap
    // from the history, trying for up to 30 s (docs/reliability.md): wait past that for each.
    let (before, last) = s.read_to_marker_within(Duration::from_secs(40)).await.unwrap_or_else(|before| {
        panic!("no marker within 40 s of the last event; before it: {before:?}; the gateway's log:\n{}", gw.log_text())
    });
    let got: Vec<(String, String)> = before.into_iter().map(|ev| (ev.event, ev.id.unwrap_or_default())).collect();
    assert_eq!((got, last.id), (vec![("order".to_owned(), id)], Some(marker)));
}

/// Two gateways on every node of `cluster`, ready: `gw-a`, which the clients of
/// [`Publishing`] stream from, and `gw-b`, which it publishes through.
async fn two_gateways(cluster: &NatsCluster) -> (Gateway, Gateway) {
    let a = gateway(cluster, "gw-a", &[]);
    let b = gateway(cluster, "gw-b", &[]);
    a.ready().await;
    b.ready().await;
    (a, b)
}

/// 50 clients streaming from one gateway while events are published through another at
/// [`RATE`], until [`Publishing::finish`].
struct Publishing {
    fs: Vec<Follower>,
    tally: Arc<Tally>,
    task: tokio::task::JoinHandle<usize>,
    through: SocketAddr,
}

impl Publishing {
    const CLIENTS: usize = 50;

    /// Connects the clients to `a`, starts publishing through `b`, and waits until 500 events
    /// are acknowledged.
    async fn start(a: &Gateway, b: &Gateway) -> Publishing {
        let fs: Vec<Follower> = (0..Self::CLIENTS).map(|i| follower(i, &[a.addr])).collect();
        all_connected(&fs).await;
        let tally = Arc::new(Tally::default());
        let task = tokio::spawn(publisher(vec![b.addr], tally.clone()));
        acknowledged_more(&tally, 500, "publishing started").await;
        Publishing { fs, tally, task, through: b.addr }
    }

    /// Stops publishing, publishes the marker, and asserts that every client got every
    /// acknowledged event it was owed exactly once, in order; answers the clients.
    async fn finish(self) -> Vec<Follower> {
        self.tally.stop.store(true, Ordering::SeqCst);
        let published = self.task.await.unwrap();
        let marker = publish_one(&[self.through], published, "marker", &self.tally).await;
        self.tally.ledger.lock().unwrap().marker = marker;
        let ledger = std::mem::take(&mut *self.tally.ledger.lock().unwrap());
        assert_exactly_once(&self.fs, &ledger).await;
        self.fs
    }
}

/// The routes between a gateway's node and the stream's leader drop for 300 ms and come back,
/// while the other two nodes keep a quorum: what the leader stored meanwhile was republished to
/// nobody on the gateway's node, and the gateway's connection never dropped. Its clients still
/// get every acknowledged event exactly once, in order: the first event to arrive after the
/// blink names an earlier one on its subject that never came, and the gateway refills from
/// there (before: about 1 s of events, 3,630–3,680 deliveries, lost without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_gateway_whose_routes_to_the_leader_blink_lose_nothing() {
    let cluster = NatsCluster::start(3).await;
    let (a, b) = two_gateways(&cluster).await;
    let client = cluster.client().await;
    let js = jetstream::new(client.clone());
    let node_a = cluster.node_of("herald-gateway gw-a").await.unwrap();
    // The gateway's node must not lead the stream: asked to step down, a leader hands over
    // to another node.
    let mut leader = cluster.stream_leader(&js, "HERALD", true).await;
    for _ in 0..5 {
        if leader != node_a {
            break;
        }
        let _ = client.request("$JS.API.STREAM.LEADER.STEPDOWN.HERALD", "".into()).await;
        leader = cluster.stream_leader(&js, "HERALD", true).await;
    }
    assert_ne!(leader, node_a, "another node leads the stream");

    let publishing = Publishing::start(&a, &b).await;
    cluster.cut_routes(node_a, leader);
    tokio::time::sleep(Duration::from_millis(300)).await; // the blink itself
    cluster.heal();
    acknowledged_more(&publishing.tally, 2000, "publishing after the blink").await;
    publishing.finish().await;
    // And the gateway's metrics show it.
    let mut gaps = 0.0;
    for cause in ["broken_chain", "reconnect"] {
        gaps += a.metric(&format!("herald_live_gaps_total{{cause=\"{cause}\"}}")).await.unwrap();
    }
    assert!(gaps >= 1.0, "the gap counted in herald_live_gaps_total");
}

/// The node a gateway is connected to is cut off from the other two for 10 s: the gateway's
/// connection stays up, but nothing the stream stores reaches it meanwhile. Its clients still
/// get every acknowledged event exactly once, in order (the gateway notices that it cannot
/// reach the stream, holds, and refills once it can).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_of_a_gateway_whose_node_is_cut_off_lose_nothing() {
    let cluster = NatsCluster::start(3).await;
    let (a, b) = two_gateways(&cluster).await;
    let js = jetstream::new(cluster.client().await);
    cluster.stream_leader(&js, "HERALD", true).await;
    let node_a = cluster.node_of("herald-gateway gw-a").await.unwrap();

    let publishing = Publishing::start(&a, &b).await;
    cluster.isolate(node_a);
    tokio::time::sleep(Duration::from_secs(10)).await; // the partition itself
    cluster.heal();
    cluster.formed().await;
    acknowledged_more(&publishing.tally, 1000, "publishing after the partition healed").await;
    let fs = publishing.finish().await;
    let connects: usize = fs.iter().map(|f| f.seen.lock().unwrap().connects).sum();
    assert_eq!(
        connects,
        Publishing::CLIENTS,
        "every stream stayed open through the partition; gw-a's log:\n{}",
        a.log_text()
    );
    a.wait_for_log("cannot store or reach this gateway").await;
}

/// Stores one event for `user` straight into the stream, and answers its sequence.
async fn store_for(js: &jetstream::Context, user: &str, event_type: &str, n: usize) -> u64 {
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Herald-Type", event_type);
    let subject = format!("herald.events.user.{user}");
    let ack = js.publish_with_headers(subject, headers, json!({ "n": n }).to_string().into()).await.unwrap();
    ack.await.unwrap().sequence
}

/// Reads `s` up to its marker event, and answers the sequences of the events before it; panics
/// with `gw`'s log when the stream ends or stays silent for 10 s before the marker.
async fn seqs_to_marker(s: &mut Sse, gw: &Gateway) -> Vec<u64> {
    match s.try_read_to_marker().await {
        Ok((before, _)) => {
            before.iter().map(|ev| seq_of(ev.id.as_deref().expect("a stored event has an id"))).collect()
        }
        Err(before) => panic!(
            "no marker: the stream {} after {} events; the gateway's log:\n{}",
            if s.ended { "ended" } else { "went silent" },
            before.len(),
            gw.log_text()
        ),
    }
}

/// Two streams open on a gateway connected to a node that does not lead the stream, for
/// subjects that gateway had no subscription for, while the routes between its node and the
/// leader's lag by 500 ms (all but the system account's, which JetStream's API requests take),
/// and events for both are stored every 10 ms throughout. Each stream gets every event after
/// its cursor (a resume's `Last-Event-ID`, a new stream's first id) exactly once, in order: a
/// stream opens only once the leader's node knows of its subscriptions, so every event stored
/// later is republished to the gateway, and the cursor's read covers every event before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_opened_before_their_subscriptions_reach_the_leaders_node_miss_nothing() {
    const LAG: Duration = Duration::from_millis(500);
    let cluster = NatsCluster::start(3).await;
    let boot = gateway(&cluster, "gw-boot", &[]);
    boot.ready().await;
    let js = jetstream::new(cluster.client().await);
    let leader = cluster.stream_leader(&js, "HERALD", true).await;
    let far = (0..3).find(|&i| i != leader).unwrap();
    let args = ["--history-replicas", "3", "--history-max-per-subject", "1000000"];
    let gw = Gateway::serve(&cluster.nodes[far]).args(&args).env("HOSTNAME", "gw-far").start();
    gw.ready().await;
    let epoch = js.get_stream("HERALD").await.unwrap().info().await.unwrap().config.metadata["herald.epoch"].clone();
    let at_leader = jetstream::new(async_nats::connect(cluster.nodes[leader].url()).await.unwrap());
    let before = store_for(&at_leader, "late", "tick", 0).await;

    cluster.delay_routes(far, leader, LAG);
    let stop = Arc::new(AtomicBool::new(false));
    let stored: Arc<Mutex<Vec<(&str, u64)>>> = Arc::default();
    let publishing = {
        let (js, stop, stored) = (at_leader.clone(), stop.clone(), stored.clone());
        tokio::spawn(async move {
            let mut n = 1;
            while !stop.load(Ordering::SeqCst) {
                for user in ["late", "fresh"] {
                    let seq = store_for(&js, user, "tick", n).await;
                    stored.lock().unwrap().push((user, seq));
                }
                n += 1;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    };
    eventually("events are being stored", Duration::from_secs(10), || async { stored.lock().unwrap().len() >= 10 })
        .await;
    let (late_token, fresh_token, last_id) =
        (token("late", &[], 600), token("fresh", &[], 600), format!("{epoch}-{before}"));
    let (mut late, mut fresh) =
        tokio::join!(Sse::resume(gw.addr, &late_token, &[], &last_id), Sse::with_token(gw.addr, &fresh_token, &[]),);
    let connected = fresh.next().await;
    assert_eq!(connected.event, "connected");
    let fresh_cursor = seq_of(connected.id.as_deref().expect("a new stream's first id"));
    // Well past the lag: the window it opens has passed for both streams.
    tokio::time::sleep(LAG * 4).await;
    stop.store(true, Ordering::SeqCst);
    publishing.await.unwrap();
    store_for(&at_leader, "late", "marker", 0).await;
    store_for(&at_leader, "fresh", "marker", 0).await;

    let stored = stored.lock().unwrap().clone();
    let expected = |user: &str, after: u64| -> Vec<u64> {
        stored.iter().filter(|(u, seq)| *u == user && *seq > after).map(|(_, seq)| *seq).collect()
    };
    let (want_late, want_fresh) = (expected("late", before), expected("fresh", fresh_cursor));
    assert!(want_fresh.len() >= 20, "events for the new stream after it opened: {}", want_fresh.len());
    assert_eq!(seqs_to_marker(&mut late, &gw).await, want_late, "the resumed stream");
    assert_eq!(seqs_to_marker(&mut fresh, &gw).await, want_fresh, "the new stream");
}

/// A node is cut off from the others while an HTTP worker's own publisher connection is on it
/// (the hub's connection, and the stream's leader, elsewhere). That worker's publishes go
/// through the hub's connection meanwhile: every one is stored within the retry window, none
/// waits out the partition or is answered 503. A retry window shorter than the partition makes
/// a publish that kept to the cut-off connection fail. (A publish sent before the cut-off node
/// has noticed the cut waits out one attempt there, 2 s, before the hub's connection stores it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_under_a_workers_own_connection_costs_no_publish() {
    let cluster = NatsCluster::start(3).await;
    const RETRY_WINDOW: Duration = Duration::from_secs(3);
    let args = ["--workers", "4", "--publish-retry-secs", "3"];
    let mut gw = gateway(&cluster, "gw-w", &args);
    gw.ready().await;
    let js = jetstream::new(cluster.client().await);
    // Each connection picks its node at random: start the gateway again until a worker's
    // connection is on a node that neither the hub's connection nor the stream's leader is on.
    let mut cut = None;
    for _ in 0..12 {
        let leader = cluster.stream_leader(&js, "HERALD", true).await;
        let hub = cluster.node_of("herald-gateway gw-w").await;
        let publishers = cluster.nodes_with("herald-gateway gw-w publisher").await;
        cut = publishers.into_iter().find(|&i| Some(i) != hub && i != leader);
        if cut.is_some() {
            break;
        }
        gw.kill();
        gw = gateway(&cluster, "gw-w", &args);
        gw.ready().await;
    }
    let cut = cut.expect("in 12 starts, no worker's connection landed on a node of its own");

    cluster.isolate(cut);
    let mut answers = Vec::new();
    for n in 0..24 {
        let body = json!({"type":"order","data":n,"users":["w"],"id":format!("w-{n}")});
        let started = Instant::now();
        let res = try_publish(gw.addr, &body).await.unwrap();
        answers.push((res.status, started.elapsed() < RETRY_WINDOW));
    }
    cluster.heal();
    assert!(
        answers.iter().all(|&(status, in_time)| status == 200 && in_time),
        "(status, answered within the retry window) of each publish while node {cut} was cut off: {answers:?}"
    );
}
