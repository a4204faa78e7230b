//! One NATS subscription per subject per pod, however many sessions share it.

use std::time::Duration;

use herald_testkit::{Gateway, Nats, Sse, eventually, token};
use serde_json::json;

/// The gateway connection's subscriptions on `herald.live.…`, as the NATS server sees them.
async fn live_subscriptions(nats: &Nats) -> Vec<String> {
    let connz = nats.connz().await;
    let mut subs = Vec::new();
    for conn in connz["connections"].as_array().into_iter().flatten() {
        if !conn["name"].as_str().unwrap_or("").starts_with("herald-gateway") {
            continue;
        }
        for sub in conn["subscriptions_list_detail"].as_array().into_iter().flatten() {
            let subject = sub["subject"].as_str().unwrap_or("").to_owned();
            if subject.starts_with("herald.live.") {
                subs.push(subject);
            }
        }
    }
    subs.sort();
    subs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sessions_share_one_subscription_and_all_get_the_broadcast() {
    const N: usize = 1000;
    let nats = Nats::start();
    // One user's thousand streams: beyond the default per-user limit.
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1", "--max-connections-per-user", "0"]).start();
    gw.ready().await;

    let t = token("fan", &["room:*"], 600);
    let mut clients = Vec::with_capacity(N);
    for chunk in 0..N / 100 {
        let opens = (0..100).map(|_| Sse::with_token(gw.addr, &t, &["room:1"]));
        let mut opened = futures_util::future::join_all(opens).await;
        for c in opened.iter_mut() {
            assert_eq!(c.next().await.event, "connected", "chunk {chunk}");
        }
        clients.extend(opened);
    }
    let stats = gw.stats().await;
    assert_eq!(stats["connections"], N, "{stats}");
    assert_eq!(stats["subjects"], 3, "user, channel and broadcast: {stats}");
    assert_eq!(
        live_subscriptions(&nats).await,
        vec!["herald.live.broadcast", "herald.live.channel.room:1", "herald.live.user.fan"],
        "exactly one NATS subscription per subject for {N} sessions"
    );

    for (body, target) in [
        (json!({"type":"tick","data":{"n":1},"broadcast":true}), "broadcast"),
        (json!({"type":"tick","data":{"n":2},"channels":["room:1"]}), "channel"),
    ] {
        assert_eq!(gw.publish(body).await.status, 200);
        let reads = clients.iter_mut().map(|c| async move { c.next_event().await });
        let events = futures_util::future::join_all(reads).await;
        assert_eq!(events.len(), N);
        for ev in events {
            assert_eq!(ev.event, "tick");
            assert_eq!(ev.json()["target"], target);
        }
    }

    drop(clients);
    eventually("every session left and every subscription ended", Duration::from_secs(10), || async {
        let s = gw.stats().await;
        s["connections"] == 0 && s["subjects"] == 0 && live_subscriptions(&nats).await.is_empty()
    })
    .await;
}
