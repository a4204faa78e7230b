//! Resuming from `Last-Event-ID` / `?lastEventId=`: exactly the missed events, in order, then
//! live ones; `reset` when the history can't cover the gap.

use std::time::Duration;

use herald_testkit::sse::MARKER;
use herald_testkit::{Gateway, Nats, Sse, epoch_of, eventually, seq_of, token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconnecting_client_gets_exactly_what_it_missed_then_live_events() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("r1", &["room:*"], 600);

    for via_query in [false, true] {
        let mut s = Sse::with_token(gw.addr, &t, &["room:1"]).await;
        assert_eq!(s.next().await.json()["resumed"], false);
        let mut last = String::new();
        for i in 0..5 {
            gw.publish_ids(json!({"type":"n","data":i,"users":["r1"]})).await;
            let ev = s.next_event().await;
            assert_eq!(ev.json()["data"], i);
            last = ev.id.clone().expect("durable events carry ids");
        }
        drop(s);

        // 20 events while away: to the user, the channel, broadcast, and one to someone else.
        let mut missed = Vec::new();
        for i in 0..20 {
            let body = match i % 3 {
                0 => json!({"type":"n","data":100 + i,"users":["r1", "other"]}),
                1 => json!({"type":"n","data":100 + i,"channels":["room:1", "room:2"]}),
                _ => json!({"type":"n","data":100 + i,"broadcast":true}),
            };
            let ids = gw.publish_ids(body).await;
            missed.push(ids[0].clone());
        }
        let mut back = if via_query {
            // With a blank header beside it, as a proxy may add: the query's id still counts.
            let target = format!("/events?channels=room:1&lastEventId={last}");
            Sse::open(gw.addr, &target, &[("Authorization", &format!("Bearer {t}")), ("Last-Event-ID", " ")])
                .await
                .unwrap()
        } else {
            Sse::resume(gw.addr, &t, &["room:1"], &last).await
        };
        let connected = back.next().await;
        assert_eq!(connected.event, "connected");
        assert_eq!(connected.json()["resumed"], true);
        let mut got = Vec::new();
        for _ in 0..20 {
            let ev = back.next().await;
            assert_ne!(ev.event, "reset");
            got.push(ev.id.clone().unwrap());
        }
        assert_eq!(got, missed, "exactly the missed events, in order (via query: {via_query})");
        // Nothing more, no duplicate: the next event is the live one published now.
        let live = gw.publish_ids(json!({"type":"n","data":"live","users":["r1"]})).await;
        let ev = back.next().await;
        assert_eq!(ev.id.as_ref(), Some(&live[0]), "the very next event is the live one: {ev:?}");
        assert!(seq_of(&live[0]) > seq_of(missed.last().unwrap()));
    }
}

/// A resume reads a short gap event by event from the history and hands a long one (more than
/// 64 events on one subject) to a consumer: both give exactly the missed events, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_and_long_gaps_are_replayed_whole() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("g1", &["g:*"], 600);
    for gap in [3usize, 150] {
        let mut s = Sse::with_token(gw.addr, &t, &["g:1"]).await;
        let cursor = s.next().await.id.expect("cursor");
        drop(s);
        let mut missed = Vec::new();
        for i in 0..gap {
            let body = if i % 10 == 9 {
                json!({"type":"n","data":i,"channels":["g:1"]})
            } else {
                json!({"type":"n","data":i,"users":["g1"]})
            };
            missed.extend(gw.publish_ids(body).await);
        }
        let mut back = Sse::resume(gw.addr, &t, &["g:1"], &cursor).await;
        assert_eq!(back.next().await.json()["resumed"], true);
        let mut got = Vec::new();
        for _ in 0..gap {
            got.push(back.next_event().await.id.unwrap());
        }
        assert_eq!(got, missed, "a gap of {gap}");
        // Nothing more after the gap.
        let marker = gw.publish_marker("g1").await;
        back.assert_next_is_marker(Some(&marker)).await;
    }
}

/// A stream that is lost before its first event (its gateway died) must not come back without an
/// id: `connected` carries the history's head as the cursor, so what was published meanwhile is
/// replayed, and what was published before the stream opened is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_lost_before_its_first_event_resumes_from_the_connected_cursor() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("q1", &[], 600);
    let mut before = Vec::new();
    for i in 0..3 {
        before.extend(gw.publish_ids(json!({"type":"n","data":i,"users":["q1"]})).await);
    }

    let mut s = Sse::with_token(gw.addr, &t, &[]).await;
    let connected = s.next().await;
    assert_eq!((connected.event.as_str(), connected.json()["resumed"].as_bool()), ("connected", Some(false)));
    let cursor = connected.id.clone().expect("a new stream's connected frame carries the resume cursor");
    assert_eq!(cursor, before[2], "the cursor is the history's newest event when the stream opened");
    drop(s);

    let mut missed = Vec::new();
    for i in 0..2 {
        missed.extend(gw.publish_ids(json!({"type":"n","data":10 + i,"users":["q1"]})).await);
    }
    let mut back = Sse::resume(gw.addr, &t, &[], &cursor).await;
    let connected = back.next().await;
    assert_eq!(connected.json()["resumed"], true);
    assert_eq!(connected.id, None, "a resumed stream keeps the client's own cursor");
    let got = [back.next_event().await.id.unwrap(), back.next_event().await.id.unwrap()];
    assert_eq!(got.as_slice(), missed.as_slice(), "what was published while away, and nothing from before");
    let marker = gw.publish_marker("q1").await;
    back.assert_next_is_marker(Some(&marker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn too_many_missed_events_and_foreign_ids_reset() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--max-replay", "5"]).start();
    gw.ready().await;
    let t = token("r2", &[], 600);
    let first = gw.publish_ids(json!({"data":0,"users":["r2"]})).await;
    let mut newest = first.clone();
    for i in 0..6 {
        newest = gw.publish_ids(json!({"data":i,"users":["r2"]})).await;
    }
    let mut s = Sse::resume(gw.addr, &t, &[], &first[0]).await;
    assert_eq!(s.next().await.json()["resumed"], false);
    let reset = s.next().await;
    assert_eq!(reset.event, "reset");
    assert_eq!(reset.json()["reason"], "too_many");
    // The reset moves the cursor to the head of the history: the app refetches from there.
    assert_eq!(reset.id.as_ref(), Some(&newest[0]));
    let live = gw.publish_ids(json!({"data":"live","users":["r2"]})).await;
    assert_eq!(s.next().await.id.as_ref(), Some(&live[0]), "live events follow the reset");
    drop(s);

    // Reconnecting from the reset's id resumes normally: no second reset.
    let mut again = Sse::resume(gw.addr, &t, &[], &newest[0]).await;
    assert_eq!(again.next().await.json()["resumed"], true);
    assert_eq!(again.next().await.id.as_ref(), Some(&live[0]));

    // An id this service never issued resets to the head too, so that the browser's next
    // reconnect carries the head's id and resumes instead of resetting again.
    let mut odd = Sse::resume(gw.addr, &t, &[], "not-an-id").await;
    odd.next().await;
    let reset = odd.next().await;
    assert_eq!((reset.json()["reason"].as_str(), reset.id.as_ref()), (Some("epoch_changed"), Some(&live[0])));
    drop(odd);
    let mut after_odd = Sse::resume(gw.addr, &t, &[], &live[0]).await;
    assert_eq!(after_odd.next().await.json()["resumed"], true);
    let marker = gw.publish_ids(json!({"type":MARKER,"data":0,"users":["r2"]})).await;
    after_odd.assert_next_is_marker(Some(&marker[0])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_history_resets_with_history_expired() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--history-max-age", "1s"]).start();
    gw.ready().await;
    let t = token("r3", &[], 600);
    let seen = gw.publish_ids(json!({"data":1,"users":["r3"]})).await;
    gw.publish_ids(json!({"data":2,"users":["r3"]})).await;
    // Once the missed event has aged out of the stream, resuming can't cover the gap.
    eventually("the missed event expired", Duration::from_secs(15), || async {
        let mut s = Sse::resume(gw.addr, &t, &[], &seen[0]).await;
        s.next().await;
        s.next_within(Duration::from_millis(500))
            .await
            .is_some_and(|ev| ev.event == "reset" && ev.json()["reason"] == "history_expired")
    })
    .await;
    let mut s = Sse::resume(gw.addr, &t, &[], &seen[0]).await;
    s.next().await;
    assert_eq!(s.next().await.event, "reset");
    let live = gw.publish_ids(json!({"data":3,"users":["r3"]})).await;
    assert_eq!(s.next().await.id.as_ref(), Some(&live[0]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recreated_stream_resets_with_epoch_changed() {
    let nats = Nats::start();
    let mut gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("r4", &[], 600);
    let old = gw.publish_ids(json!({"data":1,"users":["r4"]})).await;
    gw.kill();

    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream("HERALD").await.unwrap();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    gw.publish_ids(json!({"data":2,"users":["r4"]})).await;

    let mut s = Sse::resume(gw.addr, &t, &[], &old[0]).await;
    assert_eq!(s.next().await.json()["resumed"], false);
    let reset = s.next().await;
    assert_eq!((reset.event.as_str(), reset.json()["reason"].as_str()), ("reset", Some("epoch_changed")));
    let live = gw.publish_ids(json!({"data":3,"users":["r4"]})).await;
    assert_eq!(s.next().await.id.as_ref(), Some(&live[0]));
}

/// The stream is deleted and recreated (by another gateway starting) under a running gateway,
/// whose clients hold ids of the old history: they are sent to resume, and get `epoch_changed`,
/// instead of having the new history's events dropped as older than their cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_recreated_under_a_running_gateway_sends_its_clients_to_resume() {
    let nats = Nats::start();
    let a = Gateway::serve(&nats).start();
    a.ready().await;
    let t = token("r5", &[], 600);
    let mut s = Sse::with_token(a.addr, &t, &[]).await;
    assert_eq!(s.next().await.event, "connected");
    let mut last = String::new();
    for i in 0..3 {
        let ids = a.publish_ids(json!({"data":i,"users":["r5"]})).await;
        assert_eq!(s.next_event().await.id, Some(ids[0].clone()));
        last = ids[0].clone();
    }

    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream("HERALD").await.unwrap();
    let b = Gateway::serve(&nats).start();
    b.ready().await; // it created the stream anew
    let new = b.publish_ids(json!({"data":"new","users":["r5"]})).await;
    assert_ne!(epoch_of(&new[0]), epoch_of(&last), "a new epoch");

    // The old stream ends with a retry: instead of the event, under an id it does not have.
    let rest = s.read_to_end(Duration::from_secs(10)).await;
    assert!(s.ended, "the stream was closed for its client to resume");
    assert!(rest.iter().all(|ev| ev.id.is_none()), "no event of the new history under the old epoch: {rest:?}");
    let mut back = Sse::resume(a.addr, &t, &[], &last).await;
    assert_eq!(back.next().await.json()["resumed"], false);
    let reset = back.next().await;
    assert_eq!((reset.event.as_str(), reset.json()["reason"].as_str()), ("reset", Some("epoch_changed")));
    assert_eq!(reset.id, Some(new[0].clone()), "the cursor moves to the new history's head");
    let marker = a.publish_marker("r5").await;
    back.assert_next_is_marker(Some(&marker)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_resumes_with_the_same_semantics() {
    let gw = Gateway::dev().args(&["--history-max-per-subject", "3"]).start();
    gw.ready().await;
    let post = |body: serde_json::Value| async move {
        let res = herald_testkit::http(
            gw.addr,
            "POST",
            "/v1/publish",
            &[("Content-Type", "application/json")],
            Some(body.to_string().as_bytes()),
        )
        .await;
        res.json()["ids"][0].as_str().unwrap().to_owned()
    };
    let first = post(json!({"data":0,"users":["d1"]})).await;
    let second = post(json!({"data":1,"users":["d1"]})).await;
    let third = post(json!({"data":2,"channels":["c"]})).await;
    let mut s = Sse::open(gw.addr, &format!("/events?user=d1&channels=c&lastEventId={first}"), &[]).await.unwrap();
    assert_eq!(s.next().await.json()["resumed"], true);
    assert_eq!(s.next().await.id, Some(second));
    assert_eq!(s.next().await.id, Some(third));
    // Three more for d1 push the first ones out of its bounded history.
    for i in 0..3 {
        post(json!({"data":10 + i,"users":["d1"]})).await;
    }
    let mut s = Sse::open(gw.addr, &format!("/events?user=d1&lastEventId={first}"), &[]).await.unwrap();
    s.next().await;
    assert_eq!(s.next().await.json()["reason"], "history_expired");

    // A publish repeated with its idempotency key is stored once, in memory too.
    let once = post(json!({"data":"once","users":["d1"],"id":"dev-1"})).await;
    assert_eq!(post(json!({"data":"once","users":["d1"],"id":"dev-1"})).await, once);
    assert_ne!(post(json!({"data":"once","users":["d1"],"id":"dev-2"})).await, once);

    // An id past the head was never issued by this history.
    let epoch = epoch_of(&first);
    let mut s = Sse::open(gw.addr, &format!("/events?user=d1&lastEventId={epoch}-999999"), &[]).await.unwrap();
    assert_eq!(s.next().await.json()["resumed"], false);
    assert_eq!(s.next().await.json()["reason"], "epoch_changed");
}

/// A stream that resumes opens its subjects' subscriptions on this gateway as a new stream
/// does, and the hub checks each one's chain from the history's head the resume read: the
/// first live event that names an earlier event on its subject that never arrived is held and
/// the gap refilled, counted in `herald_live_gaps_total{cause="broken_chain"}` (before: a
/// subject a resume opened went unchecked until its first live event, so such a loss went
/// unnoticed; after a gateway dies, every client comes back this way). The lost event is made
/// here by a trusted publisher writing the republish's headers itself (guarantee 10 of
/// docs/reliability.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_a_resume_opens_has_its_chain_checked() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let t = token("ann", &[], 600);
    let id = gw.publish_ids(json!({"type": "n", "data": 1, "users": ["ann"]})).await.remove(0);
    let seq = seq_of(&id);
    let mut s = Sse::resume(gw.addr, &t, &[], &id).await;
    assert_eq!(s.next().await.json()["resumed"], true);

    republish_as_the_stream(&nats, "ann", seq + 2, seq + 1).await;
    eventually("the broken chain is noticed", Duration::from_secs(10), || async {
        gw.metric("herald_live_gaps_total{cause=\"broken_chain\"}").await.is_some_and(|n| n >= 1.0)
    })
    .await;
    drop(s);
}

/// Publishes on `user`'s live subject what the stream's republish would, for an event `seq`
/// whose subject's previous one is `previous`, neither of them stored.
async fn republish_as_the_stream(nats: &Nats, user: &str, seq: u64, previous: u64) {
    let client = nats.client().await;
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Herald-Type", "n");
    headers.insert("Nats-Stream", "HERALD");
    headers.insert("Nats-Subject", format!("herald.events.user.{user}").as_str());
    headers.insert("Nats-Sequence", seq.to_string());
    headers.insert("Nats-Last-Sequence", previous.to_string());
    client.publish_with_headers(format!("herald.live.user.{user}"), headers, "2".into()).await.unwrap();
    client.flush().await.unwrap();
}

/// A broken chain the history cannot mend, an event named past everything the refill read (the
/// answer of a replica still catching up, or headers no stream wrote), is looked for once: the
/// subject's streams resume on their own, and every other stream of the pod goes on. Before,
/// the hub refilled again at once, every few milliseconds, for as long as it went on, and every
/// live event of the pod waited behind it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chain_the_history_cannot_mend_holds_up_no_other_stream() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let (ann, bob) = (token("ann", &[], 600), token("bob", &[], 600));
    let id = gw.publish_ids(json!({"type": "n", "data": 1, "users": ["ann"]})).await.remove(0);
    let mut a = Sse::resume(gw.addr, &ann, &[], &id).await;
    assert_eq!(a.next().await.json()["resumed"], true);
    let mut b = Sse::with_token(gw.addr, &bob, &[]).await;
    assert_eq!(b.next().await.json()["resumed"], false);

    let seq = seq_of(&id);
    republish_as_the_stream(&nats, "ann", seq + 1000, seq + 999).await;
    eventually("the broken chain is noticed", Duration::from_secs(10), || async {
        gw.metric("herald_live_gaps_total{cause=\"broken_chain\"}").await.is_some_and(|n| n >= 1.0)
    })
    .await;
    let marker = gw.publish_marker("bob").await;
    b.assert_next_is_marker(Some(&marker)).await;

    // ann's stream is sent to resume, without the event no history holds; back, it gets what
    // the history holds since its id.
    let rest = a.read_to_end(Duration::from_secs(10)).await;
    assert!(a.ended, "ann's stream is closed to resume; got {rest:?}");
    assert!(rest.iter().all(|e| e.event != "n"), "nothing the history does not hold: {rest:?}");
    let marker = gw.publish_marker("ann").await;
    let mut back = Sse::resume(gw.addr, &ann, &[], &id).await;
    assert_eq!(back.next().await.json()["resumed"], true);
    back.assert_next_is_marker(Some(&marker)).await;
    // Looked for once: the count stands still while further events pass.
    let gaps = gw.metric("herald_live_gaps_total{cause=\"broken_chain\"}").await;
    let marker = gw.publish_marker("bob").await;
    b.assert_next_is_marker(Some(&marker)).await;
    assert_eq!(gw.metric("herald_live_gaps_total{cause=\"broken_chain\"}").await, gaps);
    assert_eq!(gaps, Some(1.0));
}

/// The stream is deleted under a running gateway and nobody else makes it again (NATS on storage
/// that did not survive its restart, or `nats stream rm`): the gateway makes it again itself,
/// under a new epoch, stores what is published next there, and sends its clients to resume
/// (before: every durable publish failed with 503, for good, and `/readyz` said ready).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_deleted_under_a_running_gateway_is_made_again() {
    let nats = Nats::start();
    let a = Gateway::serve(&nats).args(&["--publish-retry-secs", "5"]).start();
    a.ready().await;
    let t = token("r6", &[], 600);
    let mut s = Sse::with_token(a.addr, &t, &[]).await;
    assert_eq!(s.next().await.event, "connected");
    let old = a.publish_ids(json!({"data": 1, "users": ["r6"]})).await;
    assert_eq!(s.next_event().await.id, Some(old[0].clone()));

    let js = async_nats::jetstream::new(nats.client().await);
    js.delete_stream("HERALD").await.unwrap();
    let new = a.publish(json!({"data": "new", "users": ["r6"]})).await;
    assert_eq!(new.status, 200, "stored in the stream made again: {}", String::from_utf8_lossy(&new.body));
    let new = new.json()["ids"][0].as_str().unwrap().to_owned();
    assert_ne!(epoch_of(&new), epoch_of(&old[0]), "a new epoch");

    let rest = s.read_to_end(Duration::from_secs(10)).await;
    assert!(s.ended, "the stream was closed for its client to resume");
    assert!(rest.iter().all(|ev| ev.id.is_none()), "no event of the new history under the old epoch: {rest:?}");
    let mut back = Sse::resume(a.addr, &t, &[], &old[0]).await;
    assert_eq!(back.next().await.json()["resumed"], false);
    let reset = back.next().await;
    assert_eq!((reset.event.as_str(), reset.json()["reason"].as_str()), ("reset", Some("epoch_changed")));
    let marker = a.publish_marker("r6").await;
    back.assert_next_is_marker(Some(&marker)).await;
}
