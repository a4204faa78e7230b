//! The NATS broker's reads of the history against a real nats-server: a client's resume (the
//! walk) and the hub's refill of a gap.

use std::time::{Duration, Instant};

use super::{History, NatsBroker, NatsOptions, StreamOptions};
use crate::broker::resume::ResetReason;
use crate::broker::{Broker, HistoryLimits, Page, Replay, Resumption};
use crate::event::{EventId, Outgoing, Target};
use crate::names::Name;

/// A gateway's broker on `nats` that sets the stream up to keep `per_subject` events per
/// subject.
async fn broker(nats: &herald_testkit::Nats, per_subject: u64) -> NatsBroker {
    broker_at(nats.url(), per_subject, Duration::from_secs(60), Duration::from_secs(5)).await
}

/// A gateway's broker on the NATS at `url`, its stream keeping `per_subject` events per subject
/// and repeats of a message id for `dedup_window`, storing each event for up to `retry`.
async fn broker_at(url: String, per_subject: u64, dedup_window: Duration, retry: Duration) -> NatsBroker {
    let limits = HistoryLimits { max_age: Duration::from_secs(3600), max_per_subject: per_subject, dedup_window };
    let broker = NatsBroker::connect(&NatsOptions {
        url,
        credentials: None,
        prefix: "herald".into(),
        name: "walk".into(),
        history: History::Ensure(StreamOptions { limits, replicas: 1 }),
        publish_retry: retry,
    })
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !broker.is_connected() {
        assert!(Instant::now() < deadline, "the broker sets the stream up");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker
}

async fn publish(broker: &NatsBroker, target: &Target) -> EventId {
    broker.publish(vec![target.clone()], durable(None, b"1".to_vec())).await.unwrap().remove(0)
}

/// A durable event of `payload`, with the publisher's message id `id` if any.
fn durable(id: Option<&str>, payload: Vec<u8>) -> Outgoing {
    Outgoing {
        event_type: "t".into(),
        payload: payload.into(),
        durable: true,
        trace: None,
        from: None,
        id: id.map(Into::into),
    }
}

/// How many events the stream holds on `subject`, read past any proxy.
async fn stored_on(nats: &herald_testkit::Nats, subject: &str) -> usize {
    use futures_util::StreamExt;
    let js = async_nats::jetstream::new(nats.client().await);
    let stream = js.get_stream("HERALD").await.unwrap();
    let info = stream.info_with_subjects(subject).await.unwrap();
    info.map(|entry| entry.unwrap().1).collect::<Vec<_>>().await.into_iter().sum()
}

/// Resumes a client on user `u` and channel `c` from `after`, publishing `meanwhile` on `c`
/// once the replay is decided; the sequences replayed, and how the replay ended.
async fn resume(broker: &NatsBroker, after: &EventId, meanwhile: usize) -> (Vec<u64>, Page) {
    let targets = vec![user(), channel(), Target::Broadcast];
    let Resumption::Replay { mut pages, .. } = broker.resume(targets, after.clone(), 10_000).await.unwrap() else {
        panic!("a replay")
    };
    for _ in 0..meanwhile {
        publish(broker, &channel()).await;
    }
    let mut replayed = Vec::new();
    loop {
        match pages.next(1 << 20).await.unwrap() {
            Page::Events(events) => replayed.extend(events.iter().map(|(_, d)| d.id.as_ref().unwrap().seq)),
            end => return (replayed, end),
        }
    }
}

/// The sequences a refill after `after` for user `u` and broadcast brings; a reset fails.
async fn refill_for_user(broker: &NatsBroker, after: EventId) -> Vec<u64> {
    match broker.replay(vec![user(), Target::Broadcast], after, 10_000).await.unwrap() {
        Replay::Events(events) => events.iter().map(|(_, d)| d.id.as_ref().unwrap().seq).collect(),
        Replay::Reset(reason, _) => panic!("the refill was answered with a reset, {}", reason.as_str()),
    }
}

/// How a replay ended, in words.
fn ending(page: &Page) -> String {
    match page {
        Page::Events(events) => format!("{} more events", events.len()),
        Page::End => "the end".into(),
        Page::Reset(reason, _) => format!("a reset, {}", reason.as_str()),
    }
}

fn user() -> Target {
    Target::User(Name::parse("u").unwrap())
}

fn channel() -> Target {
    Target::Channel(Name::parse("c").unwrap())
}

/// The stream keeps 3 events per subject. The client saw 1 (on its user subject, still
/// kept, so the stream reaches back to it); its channel then got 2..=5, and the limit
/// dropped 2. One more event on the busy channel while the replay is read drops 3 as well:
/// the client is owed a `reset`, not 4 and 5 alone (before: 4, 5 and the end of the replay,
/// 2 and 3 lost without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_a_subject_drops_while_its_replay_is_read_end_it_in_a_reset() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 3).await;
    let seen = publish(&broker, &user()).await;
    for _ in 0..4 {
        publish(&broker, &channel()).await;
    }
    for meanwhile in [0, 1] {
        let (replayed, end) = resume(&broker, &seen, meanwhile).await;
        assert!(
            matches!(end, Page::Reset(ResetReason::HistoryExpired, _)),
            "{meanwhile} published meanwhile: replayed {replayed:?}, then {}",
            ending(&end)
        );
    }
}

/// A subject that got as many events as the limit keeps, the first of them right after the
/// client's id, dropped none of the gap and is replayed whole, though the history moved on
/// further than the limit since the client's id (so it is checked).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_that_kept_the_first_event_after_the_id_is_replayed_whole() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 3).await;
    let seen = publish(&broker, &user()).await;
    let mut published = Vec::new();
    for _ in 0..3 {
        published.push(publish(&broker, &channel()).await.seq);
    }
    published.push(publish(&broker, &user()).await.seq);
    let (replayed, end) = resume(&broker, &seen, 0).await;
    assert_eq!((replayed, ending(&end)), (published, "the end".into()));
}

/// A resume names the history's newest event as it read it, whether the client is owed events
/// or none, and whatever subjects they are on: where the chains of the subjects its stream
/// opens start (before: only a fresh stream and a reset told the hub, so a topic a resume opened
/// had no chain to check until its first live event, and an event lost in transit before it
/// was lost without a word).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_names_the_head_it_read() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 100).await;
    let seen = publish(&broker, &user()).await;
    publish(&broker, &channel()).await;
    let other = Target::User(Name::parse("someone-else").unwrap());
    let head = publish(&broker, &other).await;
    let targets = vec![user(), channel(), Target::Broadcast];
    let replay = broker.resume(targets.clone(), seen.clone(), 10_000).await.unwrap();
    let Resumption::Replay { head: named, .. } = replay else { panic!("a replay") };
    assert_eq!(named, Some(head.clone()), "owed events");
    let last_own = publish(&broker, &channel()).await;
    let head = publish(&broker, &other).await;
    let up_to_date = broker.resume(targets, last_own, 10_000).await.unwrap();
    let Resumption::UpToDate { head: named } = up_to_date else { panic!("up to date") };
    assert_eq!(named, Some(head), "owed nothing: its subjects hold nothing after its id");
}

/// The limit a resume checks against is the stream's, not this gateway's flag: another
/// gateway started later with a lower `--history-max-per-subject` set the stream to it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_per_subject_limit_is_read_from_the_stream() {
    let nats = herald_testkit::Nats::start();
    let older = broker(&nats, 1000).await;
    let _newer = broker(&nats, 3).await;
    let seen = publish(&older, &user()).await;
    for _ in 0..4 {
        publish(&older, &channel()).await;
    }
    let (replayed, end) = resume(&older, &seen, 0).await;
    assert!(matches!(end, Page::Reset(ResetReason::HistoryExpired, _)), "replayed {replayed:?}, then {}", ending(&end));
}

/// A message stored on a subject of the stream that names no target (`herald.events.junk`: a
/// backend's typo) inside the range a refill reads is skipped, and the refill still answers
/// with the events around it (before: it was never counted, the refill waited for one more
/// message than the history held and answered `history_expired`, and the hub sent every stream
/// of the gateway to resume).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_on_a_subject_of_no_target_does_not_end_a_refill_in_a_reset() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 1000).await;
    let seen = publish(&broker, &user()).await;
    let js = broker.jetstream().unwrap().clone();
    js.publish("herald.events.junk", bytes::Bytes::from_static(b"{}")).await.unwrap().await.unwrap();
    let next = publish(&broker, &user()).await;
    assert_eq!(refill_for_user(&broker, seen).await, [next.seq]);
}

/// A refill reads only what the pod's streams want: a busy channel that nobody on this gateway
/// listens to, with more events in the gap than the history keeps per subject, does not end
/// the refill in a reset (before: `history_expired`, and every stream of the gateway resumed),
/// and its events are not handed to the hub.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refill_reads_only_the_subjects_it_is_asked_for() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 3).await;
    let seen = publish(&broker, &user()).await;
    for _ in 0..4 {
        publish(&broker, &channel()).await;
    }
    let next = publish(&broker, &user()).await;
    assert_eq!(refill_for_user(&broker, seen).await, [next.seq]);
}

/// A refill for user `u` and broadcast after `after`, at most `max` events owed: the sequences
/// it brings, or the reason of its reset.
async fn refill_at_most(broker: &NatsBroker, after: EventId, max: usize) -> Result<Vec<u64>, &'static str> {
    match broker.replay(vec![user(), Target::Broadcast], after, max).await.unwrap() {
        Replay::Events(events) => Ok(events.iter().map(|(_, d)| d.id.as_ref().unwrap().seq).collect()),
        Replay::Reset(reason, _) => Err(reason.as_str()),
    }
}

/// A refill's ceiling counts the events the pod's streams are owed, not every event the
/// history took meanwhile: on a stream that the whole fleet shares, a gap of a few seconds
/// holds many more events of other pods' users than of this pod's (before: 30 events on a
/// channel nobody here listens to passed a ceiling of 10, and every stream of the pod was
/// sent to resume). The events owed still have their ceiling, and so does what the refill
/// reads to find them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refills_ceiling_counts_only_the_events_its_streams_are_owed() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 1000).await;
    let seen = publish(&broker, &user()).await;
    for _ in 0..30 {
        publish(&broker, &channel()).await;
    }
    let next = publish(&broker, &user()).await;
    assert_eq!(refill_at_most(&broker, seen.clone(), 10).await, Ok(vec![next.seq]));

    let mut owed = vec![next.seq];
    for _ in 0..10 {
        owed.push(publish(&broker, &user()).await.seq);
    }
    assert_eq!(refill_at_most(&broker, seen.clone(), 11).await, Ok(owed));
    assert_eq!(refill_at_most(&broker, seen.clone(), 10).await, Err("too_many"));

    // What it reads to find them: at most `REFILL_READS_PER_EVENT` times the events owed.
    let read = super::replay::REFILL_READS_PER_EVENT * 11;
    let pending = 30 + 11;
    for _ in pending..read {
        publish(&broker, &channel()).await;
    }
    assert_eq!(refill_at_most(&broker, seen.clone(), 11).await.map(|s| s.len()), Ok(11), "{read} to read");
    publish(&broker, &channel()).await;
    assert_eq!(refill_at_most(&broker, seen, 11).await, Err("too_many"), "{} to read", read + 1);
}

/// A store answered `unavailable` (its acknowledgement lost with the link) sends nothing while
/// the link is down, so nothing of it goes out once the link is back (before: each retry queued
/// a copy on the dropped connection, which the NATS client sent after it reconnected, past the
/// stream's duplicate window: a second event, after the publisher had its 503 and may well have
/// published again elsewhere). A marker published once the link is back goes out after anything
/// still queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_answered_unavailable_is_not_stored_again_once_the_link_is_back() {
    let nats = herald_testkit::Nats::start();
    let proxy = herald_testkit::proxy::Proxy::start(nats.port).await;
    let window = Duration::from_secs(3);
    let broker = broker_at(proxy.url(), 1000, window, window).await;
    // The acknowledgement comes back a second late, and the link is cut before it does.
    proxy.delay(Duration::from_secs(1));
    let started = tokio::time::Instant::now();
    let publishing = tokio::spawn(broker.publish(vec![user()], durable(Some("order-1"), b"1".to_vec())));
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_on(&nats, "herald.events.user.u").await == 0 {
        assert!(Instant::now() < deadline, "the first copy is stored");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.cut();
    let answer = publishing.await.unwrap();
    assert!(matches!(answer, Err(crate::broker::BrokerError::Unavailable(_))), "{answer:?}");

    // The link comes back once the stream's duplicate window is over.
    tokio::time::sleep_until(started + window + Duration::from_secs(1)).await;
    proxy.delay(Duration::ZERO);
    proxy.restore();
    let deadline = Instant::now() + Duration::from_secs(20);
    while !broker.is_connected() {
        assert!(Instant::now() < deadline, "the broker reconnects");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    publish(&broker, &channel()).await;
    assert_eq!(
        stored_on(&nats, "herald.events.user.u").await,
        1,
        "order-1, answered 503 and never retried, is stored once"
    );
}

/// An event whose copy for one of its targets is too large for the NATS server once its
/// headers are counted (the message id names the target, so a long name can tip it over) is
/// refused before any copy is sent: nothing is stored for any target, and the answer says it is
/// too large (before: the copy for the short name was stored, then the publisher was answered
/// 503, "retry with the same id", which could never succeed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_too_large_for_one_target_stores_nothing() {
    let nats = herald_testkit::Nats::start();
    let broker = broker(&nats, 1000).await;
    let max_payload = broker.client.server_info().max_payload;
    let long = Target::User(Name::parse(&"x".repeat(128)).unwrap());
    let event = durable(Some("big"), vec![b'1'; max_payload - 150]);
    let answer = broker.publish(vec![user(), long], event.clone()).await;
    assert!(matches!(&answer, Err(crate::broker::BrokerError::Rejected(_))), "{answer:?}");
    assert_eq!(stored_on(&nats, "herald.events.>").await, 0, "nothing stored for any target");
    // The short name alone fits.
    assert!(broker.publish(vec![user()], event).await.is_ok());
}

/// While the link is down, a publish is answered when its retry window ends, however many
/// targets it has, and the next one too (before: the copies of each target were queued on the
/// dropped connection, and once the NATS client's queue was full each target's send waited for
/// room: a 1,000-target publish with a 3 s window was not answered within a minute).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_while_the_link_is_down_ends_with_its_retry_window() {
    let nats = herald_testkit::Nats::start();
    let proxy = herald_testkit::proxy::Proxy::start(nats.port).await;
    let retry = Duration::from_secs(3);
    let broker = broker_at(proxy.url(), 1000, Duration::from_secs(60), retry).await;
    proxy.cut();
    let deadline = Instant::now() + Duration::from_secs(10);
    while broker.is_connected() {
        assert!(Instant::now() < deadline, "the broker sees the link down");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let targets: Vec<Target> = (0..1000).map(|i| Target::User(Name::parse(&format!("u{i}")).unwrap())).collect();
    for round in 0..2 {
        let started = Instant::now();
        let answer =
            tokio::time::timeout(retry * 5, broker.publish(targets.clone(), durable(None, b"1".to_vec()))).await;
        assert!(
            matches!(answer, Ok(Err(crate::broker::BrokerError::Unavailable(_)))),
            "round {round}: {answer:?} after {:?}",
            started.elapsed()
        );
    }
}

/// A publisher whose retry window is longer than the stream's duplicate window (the `publish`
/// command retries for 20 s; another gateway set the stream's window to 1 s) repeats a publish
/// only within the window, so a repeat is never stored as a second event (before: an attempt
/// whose acknowledgement was slow was repeated after the first copy's window had passed, and
/// the stream stored both).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_is_repeated_only_within_the_streams_duplicate_window() {
    let nats = herald_testkit::Nats::start();
    let _gateway = broker_at(nats.url(), 1000, Duration::from_secs(1), Duration::from_secs(1)).await;
    let proxy = herald_testkit::proxy::Proxy::start(nats.port).await;
    let command = NatsBroker::connect(&NatsOptions {
        url: proxy.url(),
        credentials: None,
        prefix: "herald".into(),
        name: "publish".into(),
        history: History::Existing,
        publish_retry: Duration::from_secs(20),
    })
    .await
    .unwrap();
    // Its copy takes 2.5 s to reach the stream, and its acknowledgement as long to come back.
    proxy.delay(Duration::from_millis(2500));
    let answer = command.publish(vec![user()], durable(Some("order-3"), b"1".to_vec())).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while stored_on(&nats, "herald.events.user.u").await == 0 {
        assert!(Instant::now() < deadline, "the first copy is stored (answered {answer:?})");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A marker sent after it on the same connection: once it is stored, so is any repeat sent
    // before it. (Its own acknowledgement waits behind the slow one: its answer does not count.)
    proxy.delay(Duration::ZERO);
    let _ = command.publish(vec![channel()], durable(None, b"marker".to_vec())).await;
    while stored_on(&nats, "herald.events.channel.c").await == 0 {
        assert!(Instant::now() < deadline, "the marker is stored");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(stored_on(&nats, "herald.events.user.u").await, 1, "order-3 stored once (answered {answer:?})");
}

/// The last attempt of a store goes out at the end of its retry window, and it still has its
/// time to be acknowledged: a copy the stream stored is answered with its id, not
/// `unavailable` (which a publisher without an id of its own would answer by publishing again).
/// Here the stream is back (a leader elected) just before the window ends.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_attempt_at_the_end_of_the_window_has_its_time_to_be_acknowledged() {
    let nats = herald_testkit::Nats::start();
    let retry = Duration::from_secs(3);
    let broker = broker_at(nats.url(), 1000, Duration::from_secs(60), retry).await;
    let js = async_nats::jetstream::new(nats.client().await);
    let config = js.get_stream("HERALD").await.unwrap().cached_info().config.clone();
    // No stream takes the event meanwhile (a deleted stream would be made again by the broker).
    let elsewhere = async_nats::jetstream::stream::Config {
        subjects: vec!["herald.elsewhere.>".into()],
        republish: None,
        ..config.clone()
    };
    js.update_stream(elsewhere).await.unwrap();
    let started = tokio::time::Instant::now();
    let publishing = tokio::spawn(broker.publish(vec![user()], durable(Some("late-1"), b"1".to_vec())));
    // Not synchronisation: the moment in the window this test is about.
    tokio::time::sleep_until(started + retry - Duration::from_millis(300)).await;
    js.update_stream(config).await.unwrap();
    let answer = publishing.await.unwrap();
    let stored = stored_on(&nats, "herald.events.user.u").await;
    assert!(answer.is_ok() || stored == 0, "answered {answer:?} though the stream stored it ({stored} stored)");
}

/// A gateway learns the stream's duplicate window again as it watches the stream, so another
/// gateway started later with a shorter `--history-dedup-window` shortens its retries too
/// (before: it read the window once, as it set the stream up with its own, and went on
/// repeating publishes for 20 s against a 1 s window).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shorter_window_set_by_a_later_gateway_shortens_the_retries() {
    let nats = herald_testkit::Nats::start();
    let first = broker_at(nats.url(), 1000, Duration::from_secs(60), Duration::from_secs(20)).await;
    assert_eq!(first.publish_retry.get(), Duration::from_secs(20));
    let _later = broker_at(nats.url(), 1000, Duration::from_secs(5), Duration::from_secs(5)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while first.publish_retry.get() != Duration::from_secs(4) {
        assert!(Instant::now() < deadline, "retrying for {:?} against a 5 s window", first.publish_retry.get());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Making the stream again never touches one that exists: a node that said it was gone may be
/// behind the others, and an update would give the fleet's history a new epoch, and every
/// client a reset.
#[tokio::test]
async fn making_the_stream_again_leaves_an_existing_one_and_its_epoch_alone() {
    let nats = herald_testkit::Nats::start();
    let b = broker(&nats, 100).await;
    let epoch = b.epoch.read().clone();
    let js = async_nats::jetstream::new(nats.client().await);
    let limits = HistoryLimits {
        max_age: Duration::from_secs(3600),
        max_per_subject: 100,
        dedup_window: Duration::from_secs(60),
    };
    let config = super::stream_config("herald", StreamOptions { limits, replicas: 1 });
    assert!(super::stream::make_stream_again(&js, config).await.is_err());
    let (_, _, now) = super::stream::stream_info(&js, &b.epoch).await.unwrap();
    assert_eq!(now, epoch);
}

/// A burst of new subscriptions shares its confirmations: the round trips to the stream's
/// leader go at most one per `SPACING` however fast callers come (each is a JetStream publish
/// the leader refuses, the largest per-connection cost nats-server had in a connect storm), and
/// every caller is answered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_confirmations_of_a_burst_of_subscriptions_are_shared_and_spaced() {
    use futures_util::StreamExt;
    let nats = herald_testkit::Nats::start();
    let b = broker(&nats, 100).await;
    let watcher = nats.client().await;
    let mut seen = watcher.subscribe("herald.events._barrier").await.unwrap();
    let mut marker = watcher.subscribe("herald.test.marker").await.unwrap();
    watcher.flush().await.unwrap();

    // Callers come one after another, far faster than a round trip, for 60 ms.
    let started = Instant::now();
    let mut callers = Vec::new();
    while started.elapsed() < Duration::from_millis(60) {
        let barrier = b.barrier.clone();
        callers.push(tokio::spawn(async move { barrier.pass().await }));
        tokio::task::yield_now().await;
    }
    for caller in futures_util::future::join_all(callers).await {
        caller.unwrap().expect("every caller is confirmed");
    }
    let elapsed = started.elapsed();

    // Sent after every confirmation on the same connection: the watcher has them all once it
    // has this.
    b.client.publish("herald.test.marker", "end".into()).await.unwrap();
    b.client.flush().await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), marker.next()).await.unwrap().unwrap();
    let mut round_trips = 0;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::ZERO, seen.next()).await {
        round_trips += 1;
    }
    let at_most = elapsed.as_millis() / super::barrier::SPACING.as_millis() + 1;
    assert!(round_trips >= 1, "the callers were confirmed by a round trip");
    assert!(
        round_trips as u128 <= at_most,
        "{round_trips} round trips in {elapsed:?}: at most one per {:?}",
        super::barrier::SPACING
    );
}
