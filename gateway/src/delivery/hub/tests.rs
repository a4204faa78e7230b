//! The hub against a broker the test scripts: live events, ended subscriptions, gaps and
//! refills happen exactly when the test says, on one thread.

use std::collections::HashMap;
use std::sync::atomic::AtomicBool;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{oneshot, watch};

use super::*;
use crate::broker::resume::ResetReason;
use crate::broker::{Link, Resumption};
use crate::delivery::close_reason::CloseReason;
use crate::event::Delivery;
use crate::event::Outgoing;
use crate::names::Name;

type Reply = oneshot::Sender<Result<Replay, BrokerError>>;

/// Events a scripted subscription queues before it drops newer ones.
const CAPACITY: usize = 8;

/// A broker whose every move the test makes.
struct Scripted {
    feeds: Mutex<HashMap<Target, mpsc::Sender<Delivery>>>,
    replays: mpsc::UnboundedSender<(Option<EventId>, Reply)>,
    link: watch::Receiver<Link>,
    /// The history's head when the hub starts; `None`: the history does not answer.
    head: Option<u64>,
    /// While set, subscriptions wait for `gate` before they are in place (the broker may
    /// already queue their events).
    gated: AtomicBool,
    gate: Arc<tokio::sync::Notify>,
    /// While set, subscriptions fail (after the gate, when gated).
    failing: AtomicBool,
    /// Connections made: moves before the link says so, as a NATS client's count does.
    connections: Arc<std::sync::atomic::AtomicU64>,
}

/// The test's side of it.
struct Script {
    broker: Arc<Scripted>,
    metrics: Arc<Metrics>,
    replays: mpsc::UnboundedReceiver<(Option<EventId>, Reply)>,
    link: watch::Sender<Link>,
}

fn id(seq: u64) -> EventId {
    EventId { epoch: Arc::from("e"), seq }
}

fn user(name: &str) -> Target {
    Target::User(Name::parse(name).unwrap())
}

fn durable(seq: u64) -> Delivery {
    durable_in("e", seq)
}

fn durable_in(epoch: &str, seq: u64) -> Delivery {
    Delivery {
        event_type: "t".into(),
        payload: Bytes::from_static(b"1"),
        id: Some(EventId { epoch: Arc::from(epoch), seq }),
        from: None,
        trace: None,
        published_at: None,
        previous: None,
    }
}

impl Script {
    /// A broker whose history's head is `head` when the hub starts.
    fn new(head: u64) -> Script {
        Script::with_head(Some(head))
    }

    /// A broker whose history never tells the hub where it stands.
    fn unreadable() -> Script {
        Script::with_head(None)
    }

    fn with_head(head: Option<u64>) -> Script {
        Script::made(head, 1)
    }

    /// A broker whose client has not connected yet when the hub starts, as a gateway's NATS
    /// client connects in the background.
    fn not_yet_connected(head: u64) -> Script {
        Script::made(Some(head), 0)
    }

    fn made(head: Option<u64>, connections: u64) -> Script {
        let (replays_tx, replays) = mpsc::unbounded_channel();
        let (link, link_rx) = watch::channel(Link { up: connections > 0, connections, restored: 0 });
        let broker = Arc::new(Scripted {
            feeds: Mutex::default(),
            replays: replays_tx,
            link: link_rx,
            head,
            gated: AtomicBool::new(false),
            gate: Arc::default(),
            failing: AtomicBool::new(false),
            connections: Arc::new(connections.into()),
        });
        Script { broker, metrics: Arc::new(Metrics::new()), replays, link }
    }

    fn hub(&self) -> Arc<Hub> {
        Hub::start(self.broker.clone(), self.metrics.clone(), &tokio::runtime::Handle::current())
    }

    /// [`Script::hub`], holding at most `bytes` of live events while it refills a gap.
    fn hub_holding(&self, bytes: usize) -> Arc<Hub> {
        Hub::start_holding(self.broker.clone(), self.metrics.clone(), &tokio::runtime::Handle::current(), bytes)
    }

    /// The value of the hub's metric `series` (name and labels, as `/metrics` shows them).
    fn metric(&self, series: &str) -> f64 {
        let text = self.metrics.render(&Default::default());
        let line = text.lines().find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '));
        line.unwrap_or_else(|| panic!("no {series}")).rsplit_once(' ').unwrap().1.parse().unwrap()
    }

    /// How many gaps in live delivery the hub found, opened by `cause`.
    fn gaps(&self, cause: &str) -> f64 {
        self.metric(&format!("herald_live_gaps_total{{cause=\"{cause}\"}}"))
    }

    /// Delivers durable event `seq` live on `target`'s subscription; dropped, as a broker
    /// does, when the subscription already queues `CAPACITY` events.
    fn live(&self, target: &Target, seq: u64) {
        self.send(target, durable(seq));
    }

    /// [`Script::live`], for event `seq` republished as following `previous` on its subject.
    fn live_after(&self, target: &Target, seq: u64, previous: u64) {
        self.send(target, Delivery { previous: Some(previous), ..durable(seq) });
    }

    fn send(&self, target: &Target, delivery: Delivery) {
        match self.broker.feeds.lock()[target].try_send(delivery) {
            Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
            Err(e) => panic!("{e}"),
        }
    }

    /// Ends `target`'s subscription, as a broker may.
    fn end(&self, target: &Target) {
        self.broker.feeds.lock().remove(target);
    }

    /// The broker reconnected: live delivery skipped what was published meanwhile.
    fn gap(&self) {
        self.reconnected_unannounced();
        self.link.send_modify(|l| {
            l.up = true;
            l.connections += 1;
        });
    }

    /// The broker made a new connection, and its link has not said so yet.
    fn reconnected_unannounced(&self) {
        self.broker.connections.fetch_add(1, Ordering::SeqCst);
    }

    /// The broker's link went down.
    fn down(&self) {
        self.link.send_modify(|l| l.up = false);
    }

    /// The next refill the hub asks for: where from, and where to answer it.
    async fn next_replay(&mut self) -> (u64, Reply) {
        let (after, reply) = tokio::time::timeout(Duration::from_secs(5), self.replays.recv())
            .await
            .expect("the hub asks for a refill")
            .unwrap();
        (after.unwrap().seq, reply)
    }

    /// Answers a refill with `events`.
    fn refill(reply: Reply, events: impl IntoIterator<Item = (Target, u64)>) {
        Script::refill_in("e", reply, events);
    }

    /// [`Script::refill`], with events of the history named `epoch`.
    fn refill_in(epoch: &str, reply: Reply, events: impl IntoIterator<Item = (Target, u64)>) {
        let events = events.into_iter().map(|(t, seq)| (t, durable_in(epoch, seq))).collect();
        assert!(reply.send(Ok(Replay::Events(events))).is_ok(), "the hub waits for its refill");
    }
}

impl Broker for Scripted {
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
        let (tx, rx) = mpsc::channel(CAPACITY);
        self.feeds.lock().insert(target, tx);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) });
        let gate = self.gated.load(Ordering::SeqCst).then(|| self.gate.clone());
        let failing = self.failing.load(Ordering::SeqCst);
        async move {
            if let Some(gate) = gate {
                gate.notified().await;
            }
            if failing {
                return Err(BrokerError::Unavailable("scripted".into()));
            }
            Ok(Box::pin(stream) as EventStream)
        }
        .boxed()
    }

    fn publish(&self, _: Vec<Target>, _: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>> {
        async { Err(BrokerError::Rejected("scripted".into())) }.boxed()
    }

    fn resume(&self, _: Vec<Target>, _: EventId, _: usize) -> BoxFuture<'static, Result<Resumption, BrokerError>> {
        async { Err(BrokerError::Rejected("scripted".into())) }.boxed()
    }

    fn replay(&self, _: Vec<Target>, after: EventId, _max: usize) -> BoxFuture<'static, Result<Replay, BrokerError>> {
        let (tx, rx) = oneshot::channel();
        let _ = self.replays.send((Some(after), tx));
        async move { rx.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("dropped".into()))) }.boxed()
    }

    fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>> {
        match self.head {
            Some(head) => async move { Ok(Some(id(head))) }.boxed(),
            None => futures_util::future::pending().boxed(),
        }
    }

    fn link(&self) -> Option<watch::Receiver<Link>> {
        Some(self.link.clone())
    }

    fn connections(&self) -> Option<crate::broker::ConnectionCount> {
        let count = self.connections.clone();
        Some(Arc::new(move || count.load(Ordering::SeqCst)))
    }

    fn subscription_capacity(&self) -> usize {
        CAPACITY
    }

    fn is_connected(&self) -> bool {
        self.link.borrow().up
    }
}

/// What one stream received: the ids of its durable events, in order.
struct Reader {
    outbox: Arc<Outbox>,
    seqs: Vec<u64>,
    /// `reset` frames received (their ids are in `seqs` too).
    resets: usize,
}

impl Reader {
    /// A stream on `targets` whose client starts at `cursor`.
    async fn join(hub: &Arc<Hub>, targets: &[Target], cursor: u64) -> (Reader, Membership) {
        Reader::try_join(hub, targets, cursor).await.unwrap()
    }

    /// [`Reader::join`], or why the hub refused it.
    async fn try_join(hub: &Arc<Hub>, targets: &[Target], cursor: u64) -> Result<(Reader, Membership), JoinError> {
        let outbox = Outbox::new(1 << 20, Arc::new(Metrics::new()));
        let membership = hub.join(targets, &outbox).await?;
        outbox.release([], Some(cursor));
        Ok((Reader { outbox, seqs: Vec::new(), resets: 0 }, membership))
    }

    fn read(&mut self) -> &[u64] {
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        while let Poll::Ready(Some(chunk)) = self.outbox.poll_chunk(&mut cx) {
            let text = String::from_utf8(chunk.to_vec()).unwrap();
            for line in text.lines() {
                self.resets += usize::from(line == "event: reset");
                if let Some((_, seq)) = line.strip_prefix("id: ").and_then(|id| id.rsplit_once('-')) {
                    self.seqs.push(seq.parse().unwrap());
                }
            }
        }
        &self.seqs
    }

    /// Waits until the stream is closed (the hub runs meanwhile); returns why.
    async fn closed(&self) -> CloseReason {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(reason) = self.outbox.close_reason() {
                return reason;
            }
            assert!(Instant::now() < deadline, "the stream is not closed");
            tokio::task::yield_now().await;
        }
    }

    /// Reads until `marker` arrives (the hub runs meanwhile); returns everything received.
    async fn until(&mut self, marker: u64) -> Vec<u64> {
        let deadline = Instant::now() + Duration::from_secs(5);
        while !self.read().contains(&marker) {
            assert!(Instant::now() < deadline, "marker {marker} not received; got {:?}", self.seqs);
            tokio::task::yield_now().await;
        }
        self.seqs.clone()
    }
}

/// A hub with one stream on user `u`, from 10, that has received event 11.
async fn streaming_after_11(script: &Script) -> (Arc<Hub>, Target, Reader, Membership) {
    let hub = script.hub();
    let u = user("u");
    let (mut a, membership) = Reader::join(&hub, std::slice::from_ref(&u), 10).await;
    script.live(&u, 11);
    assert_eq!(a.until(11).await, [11]);
    (hub, u, a, membership)
}

/// [`streaming_after_11`], when live delivery has a gap: the refill it asks for (after 11)
/// is out.
async fn a_gap_after_11(script: &mut Script) -> (Arc<Hub>, Target, Reader, Membership, Reply) {
    let (hub, u, a, membership) = streaming_after_11(script).await;
    script.gap();
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    (hub, u, a, membership, reply)
}

/// [`a_gap_after_11`], on a hub that holds at most `bound` bytes of live events meanwhile.
async fn a_gap_after_11_holding(script: &mut Script, bound: usize) -> (Arc<Hub>, Target, Reader, Membership, Reply) {
    let hub = script.hub_holding(bound);
    let u = user("u");
    let (mut a, membership) = Reader::join(&hub, std::slice::from_ref(&u), 10).await;
    script.live(&u, 11);
    assert_eq!(a.until(11).await, [11]);
    script.gap();
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    (hub, u, a, membership, reply)
}

/// The hub could not read where the history stood when it started; a stream that joined
/// later read its first cursor, 10, from it. The link drops and returns before any durable event
/// reached the hub, and events 11 and 12 were stored meanwhile: the hub refills the gap from
/// where that stream started rather than send 13 over it.
#[tokio::test]
async fn a_gap_before_the_hub_read_the_history_is_refilled_from_where_a_stream_started() {
    let mut script = Script::unreadable();
    let hub = script.hub();
    let u = user("u");
    let (mut a, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 10).await;
    on_u.started_at(&id(10)); // as a new stream does, once it has read its first cursor
    script.down();
    script.gap();
    script.live(&u, 13);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 10);
    Script::refill(reply, [(u.clone(), 11), (u.clone(), 12), (u.clone(), 13)]);
    assert_eq!(a.until(13).await, [11, 12, 13]);
}

/// A route between the pod's NATS node and the stream's leader dropped for a moment: events 12
/// and 13 on `u` never arrived, and nothing told the hub. Event 15 names 13 as the event before
/// it on its subject: the hub holds it, refills from 11 (the last one it sent on `u`, below the
/// watermark, 14), and sends only what never reached its topic, then 15.
#[tokio::test]
async fn a_subject_whose_chain_breaks_is_refilled_from_its_last_event() {
    let mut script = Script::new(10);
    let (hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    let v = user("v");
    let (mut b, _on_v) = Reader::join(&hub, std::slice::from_ref(&v), 11).await;
    script.live(&v, 14);
    assert_eq!(b.until(14).await, [14]);

    script.live_after(&u, 15, 13);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11, "from the broken subject's last event, not the watermark");
    Script::refill(reply, [(u.clone(), 12), (u.clone(), 13), (v.clone(), 14), (u.clone(), 15)]);
    script.live_after(&u, 16, 15);
    assert_eq!(a.until(16).await, [11, 12, 13, 15, 16]);
    script.live(&v, 17);
    assert_eq!(b.until(17).await, [14, 17], "14 reached `v` once");
    assert_eq!((script.gaps("broken_chain"), script.gaps("reconnect")), (1.0, 0.0));
}

/// Events 12 and 13 on `u` were lost in transit, and a stream on both `u` and `v` got 14 on `v`
/// before the hub learnt of the loss (15 on `u` names 13). The refill sends 12 and 13 to `u`:
/// the stream on `u` alone gets them in order; the one on both no longer can, and gets a
/// `reset` naming 14 instead (its client refetches), then 15.
#[tokio::test]
async fn a_stream_that_got_a_newer_event_before_a_lost_one_is_reset() {
    let mut script = Script::new(10);
    let (hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    let v = user("v");
    let (mut both, _on_both) = Reader::join(&hub, &[u.clone(), v.clone()], 11).await;
    script.live(&v, 14);
    assert_eq!(both.until(14).await, [14]);

    script.live_after(&u, 15, 13);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, [(u.clone(), 12), (u.clone(), 13), (v.clone(), 14), (u.clone(), 15)]);
    assert_eq!(a.until(15).await, [11, 12, 13, 15]);
    assert_eq!((both.until(15).await, both.resets), (vec![14, 14, 15], 1), "14, a reset naming 14, then 15");
    assert_eq!(script.metric("herald_missed_resets_total"), 1.0);
}

/// The events a chain names are gone from the history when the refill reads it (aged out): the
/// refill brings only the held event itself, which goes out, and the hub does not look for them
/// again.
#[tokio::test]
async fn events_a_chain_names_that_the_history_no_longer_holds_are_not_looked_for_again() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    script.live_after(&u, 13, 12);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, [(u.clone(), 13)]);
    script.live_after(&u, 14, 13);
    assert_eq!(a.until(14).await, [11, 13, 14]);
}

/// The first event a new topic gets is chain-checked too: a stream's own user subject is new
/// when the stream opens, and 11, lost in transit, is named by 12. The refill starts where the
/// stream found the history once the topic's subscription was in place.
#[tokio::test]
async fn the_first_event_of_a_new_topic_is_chain_checked_too() {
    let mut script = Script::new(10);
    let hub = script.hub();
    let u = user("u");
    let (mut a, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 10).await;
    on_u.started_at(&id(10));
    script.live_after(&u, 12, 11);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 10);
    Script::refill(reply, [(u.clone(), 11), (u.clone(), 12)]);
    assert_eq!(a.until(12).await, [11, 12]);
}

/// The history started over under a running hub (its first event comes under a new epoch, and
/// every stream resumes): the first event of the new history that names a lost one is
/// chain-checked too, from where the new history stood.
#[tokio::test]
async fn after_the_history_started_over_the_first_broken_chain_is_refilled() {
    let mut script = Script::new(10);
    let (hub, u, a, _on_u) = streaming_after_11(&script).await;
    script.send(&u, durable_in("e2", 1));
    a.closed().await;
    let (mut b, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 1).await;
    on_u.started_at(&EventId { epoch: Arc::from("e2"), seq: 1 });
    // e2-2 lost in transit, named by e2-3.
    script.send(&u, Delivery { previous: Some(2), ..durable_in("e2", 3) });
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 1);
    Script::refill_in("e2", reply, [(u.clone(), 2), (u.clone(), 3)]);
    assert_eq!(b.until(3).await, [2, 3]);
}

/// The range a refill read in the old history (its sequences) does not excuse a broken chain
/// of the new one as gone from the history.
#[tokio::test]
async fn what_a_refill_read_in_an_old_history_excuses_no_broken_chain_in_the_new() {
    let mut script = Script::new(10);
    let (hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    // The old history: a chain names 50, which it no longer holds; the refill reads (11, 100].
    script.live_after(&u, 100, 50);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, [(u.clone(), 100)]);
    assert_eq!(a.until(100).await, [11, 100]);
    script.send(&u, durable_in("e2", 1));
    a.closed().await;
    let (mut b, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 1).await;
    on_u.started_at(&EventId { epoch: Arc::from("e2"), seq: 1 });
    script.send(&u, Delivery { previous: Some(1), ..durable_in("e2", 20) });
    assert_eq!(b.until(20).await, [20]);
    // e2-30 lost in transit, named by e2-40.
    script.send(&u, Delivery { previous: Some(30), ..durable_in("e2", 40) });
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 20);
    Script::refill_in("e2", reply, [(u.clone(), 30), (u.clone(), 40)]);
    assert_eq!(b.until(40).await, [20, 30, 40]);
}

/// A broken chain on a subject that was quiet for long (its last event far behind where the hub
/// stands) is not refilled from there, which would read every subject's events since and, past
/// the most a refill reads, send every stream of the pod to resume: that topic's streams alone
/// resume, and every other stream goes on.
#[tokio::test]
async fn a_broken_chain_far_behind_sends_only_its_topics_streams_to_resume() {
    let mut script = Script::new(10);
    let (hub, u, a, _on_u) = streaming_after_11(&script).await;
    let v = user("v");
    let (mut b, _on_v) = Reader::join(&hub, std::slice::from_ref(&v), 11).await;
    // The hub moves far on: a refill brings one event on `v`, 20,000 events later.
    script.gap();
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, [(v.clone(), 20_011)]);
    assert_eq!(b.until(20_011).await, [20_011]);
    // An event on `u` names one lost in transit.
    script.live_after(&u, 20_013, 20_012);
    assert_eq!(a.closed().await, CloseReason::Error, "u's stream resumes on its own");
    script.live(&v, 20_014);
    assert_eq!(b.until(20_014).await, [20_011, 20_014], "v's stream goes on");
    assert!(script.replays.try_recv().is_err(), "no refill was asked for");
    assert_eq!(script.gaps("broken_chain"), 1.0);
}

/// The first event a new topic gets names one stored after where the hub last dispatched (a
/// notification the user got while away), but before the stream found the history's head: the
/// stream has it (its cursor covers it), and nothing is refilled.
#[tokio::test]
async fn an_event_the_first_member_already_has_breaks_no_chain() {
    let script = Script::new(10);
    let hub = script.hub();
    let (v, w) = (user("v"), user("w"));
    let (mut b, _on_v) = Reader::join(&hub, std::slice::from_ref(&v), 10).await;
    let (mut a, on_w) = Reader::join(&hub, std::slice::from_ref(&w), 45).await;
    on_w.started_at(&id(45));
    script.live_after(&w, 50, 40);
    assert_eq!(a.until(50).await, [50]);
    script.live(&v, 51);
    assert_eq!(b.until(51).await, [51], "the other stream goes on");
    assert_eq!(script.gaps("broken_chain"), 0.0);
}

/// A refill that fails sends every stream to resume and releases what it held; an event it
/// held naming one in the unfilled gap does not ask for the same refill again, and a stream
/// that joins afterwards gets live events.
#[tokio::test]
async fn a_failed_refill_does_not_start_itself_again() {
    let mut script = Script::new(10);
    let (hub, u, a, _on_u, first) = a_gap_after_11(&mut script).await;
    // 16 names 15, in the gap: held behind the refill.
    script.live_after(&u, 16, 15);
    assert!(first.send(Err(BrokerError::Rejected("gone".into()))).is_ok());
    assert_eq!(a.closed().await, CloseReason::Error);
    let (mut c, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 16).await;
    on_u.started_at(&id(16));
    script.live_after(&u, 17, 16);
    assert_eq!(c.until(17).await, [17]);
    assert!(script.replays.try_recv().is_err(), "no refill was asked for again");
}

/// A refill answered with a reset that names no head leaves the hub without a position, while
/// the next stream sets its topic's chain start: a broken chain then cannot be refilled (there
/// is nowhere to refill from) and goes out as it is, rather than asking again and again (before:
/// the hub held it, released it for want of a position, held it again, and overflowed its stack).
#[tokio::test]
async fn a_broken_chain_with_no_position_to_refill_from_goes_out() {
    let mut script = Script::new(10);
    let (hub, u, a, on_u) = streaming_after_11(&script).await;
    on_u.started_at(&id(10)); // the hub has its position: this one tells it nothing new
    script.gap();
    let (_, reply) = script.next_replay().await;
    assert!(reply.send(Ok(Replay::Reset(ResetReason::HistoryExpired, None))).is_ok());
    assert_eq!(a.closed().await, CloseReason::Error);
    let (mut b, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 20).await;
    on_u.started_at(&id(20));
    script.live_after(&u, 22, 21);
    assert_eq!(b.until(22).await, [22]);
}

/// A refill answered from a stale view of the history (on a NATS cluster, a replica that
/// still lags right after a partition heals) lacks events the hub holds, which the history
/// must have stored before they were republished: the hub asks again instead of releasing
/// what it held over the gap (before: "gap refilled events=0", and the gap was lost for good).
#[tokio::test]
async fn a_refill_that_lacks_the_events_held_is_asked_again() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    script.down();
    // The first event after the link is back: held, and the refill asked for.
    script.live_after(&u, 14, 13);
    let (after, first) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(first, []);
    let (after, second) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(second, [(u.clone(), 12), (u.clone(), 13), (u.clone(), 14)]);
    assert_eq!(a.until(14).await, [11, 12, 13, 14]);
}

/// A broken chain whose refill comes back without the event it names (a replica still
/// catching up, or headers no stream wrote) is not looked for again: the subject's streams
/// resume, each from its own id, and live delivery goes on for every other one (before: the
/// hub asked again at once, for as long as the answer stayed the same, and held every live
/// event of the pod meanwhile).
#[tokio::test]
async fn a_chain_the_refill_cannot_mend_sends_its_streams_to_resume() {
    let mut script = Script::new(10);
    let (hub, u, a, _on_u) = streaming_after_11(&script).await;
    let v = user("v");
    let (mut b, _on_v) = Reader::join(&hub, std::slice::from_ref(&v), 11).await;
    script.live_after(&u, 14, 13);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, []);
    assert_eq!(a.closed().await, CloseReason::Error);
    script.live_after(&v, 15, 11);
    assert_eq!(b.until(15).await, [15]);
    assert!(script.replays.try_recv().is_err(), "the event named was looked for once");
}

/// A chain's refill that a reconnect overtakes, and that comes back without the event named
/// (a stale answer), is followed by one that again reads the subject from its last event, not
/// from the watermark, and mends the chain (before: the second read from the watermark, past
/// the missing events, and the subject's streams were sent to resume).
#[tokio::test]
async fn a_chain_refill_overtaken_by_a_reconnect_reads_again_from_the_subjects_last_event() {
    let mut script = Script::new(10);
    let (hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    let v = user("v");
    let (mut b, _on_v) = Reader::join(&hub, std::slice::from_ref(&v), 11).await;
    script.live(&v, 20);
    assert_eq!(b.until(20).await, [20]);
    script.live_after(&u, 24, 23);
    let (after, first) = script.next_replay().await;
    assert_eq!(after, 11);
    script.gap();
    script.live(&v, 25);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while script.gaps("reconnect") < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the hub notices the reconnect");
        tokio::task::yield_now().await;
    }
    Script::refill(first, []);
    let (after, second) = script.next_replay().await;
    assert_eq!(after, 11, "from u's last event again, not from the watermark (20)");
    Script::refill(second, [(u.clone(), 23), (u.clone(), 24), (v.clone(), 25)]);
    assert_eq!(a.until(24).await, [11, 23, 24]);
    assert_eq!(b.until(25).await, [20, 25]);
}

/// An unbroken chain asks for no refill: each event names the one sent before it on its subject.
#[tokio::test]
async fn a_subject_whose_chain_holds_is_not_refilled() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _on_u) = streaming_after_11(&script).await;
    script.live_after(&u, 12, 11);
    script.live_after(&u, 20, 12);
    assert_eq!(a.until(20).await, [11, 12, 20]);
    assert!(script.replays.try_recv().is_err(), "no refill was asked for");
}

#[tokio::test]
async fn a_fan_out_past_many_strides_reaches_every_member_once() {
    let script = Script::new(10);
    let hub = script.hub();
    let u = user("u");
    let mut streams = Vec::new();
    for _ in 0..5 * FAN_OUT_STRIDE + 7 {
        streams.push(Reader::join(&hub, std::slice::from_ref(&u), 10).await);
    }
    // Holes in the member list, within strides and on their edges.
    let left: Vec<_> = [0, 1, FAN_OUT_STRIDE - 1, FAN_OUT_STRIDE, 3 * FAN_OUT_STRIDE + 5].into_iter().rev().collect();
    let gone: Vec<_> = left.iter().map(|&i| streams.remove(i)).collect();
    drop(gone.into_iter().map(|(_, membership)| membership).collect::<Vec<_>>());
    script.live(&u, 11);
    script.live(&u, 12);
    for (reader, _) in &mut streams {
        assert_eq!(reader.until(12).await, [11, 12]);
    }
}

/// A NATS client reports a reconnect from another task than the one that queues the new
/// connection's events: they can be drained first. Sent on at once, they would move the
/// watermark past what the reconnect skipped, and the refill would start after it.
#[tokio::test]
async fn events_of_a_new_connection_wait_for_the_refill_when_word_of_the_reconnect_comes_late() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _a) = streaming_after_11(&script).await;
    // 12 was published while the connection was down; 13 comes on the new one.
    script.reconnected_unannounced();
    script.live(&u, 13);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11, "the refill starts after what went out before the reconnect");
    Script::refill(reply, [(u.clone(), 12), (u.clone(), 13)]);
    // The link's word of the reconnect comes now: the refill already covered it.
    script.link.send_modify(|l| l.connections += 1);
    script.live(&u, 14);
    assert_eq!(a.until(14).await, [11, 12, 13, 14]);
    assert!(script.replays.try_recv().is_err(), "one refill for one reconnect");
}

/// The hub starts before its NATS client's first connection, which it hears of from the
/// client's count first. That connection is no gap (the position read covers what came before
/// it): before, the hub refilled from the history's start at its first event, and a burst that
/// had put more events on a subject than the history keeps per subject closed every stream.
#[tokio::test]
async fn the_first_connection_after_the_hub_started_is_no_gap() {
    let mut script = Script::not_yet_connected(10);
    let hub = script.hub();
    let u = user("u");
    let (mut a, _a) = Reader::join(&hub, std::slice::from_ref(&u), 10).await;
    script.reconnected_unannounced();
    script.live(&u, 11);
    assert_eq!(a.until(11).await, [11]);
    // The link's word of it comes now.
    script.link.send_modify(|l| {
        l.up = true;
        l.connections += 1;
    });
    script.live(&u, 12);
    assert_eq!(a.until(12).await, [11, 12]);
    assert!(script.replays.try_recv().is_err(), "no refill");
    assert_eq!(script.gaps("reconnect"), 0.0);

    // A reconnect after it is still one.
    script.reconnected_unannounced();
    script.live(&u, 14);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 12);
    Script::refill(reply, [(u.clone(), 13), (u.clone(), 14)]);
    assert_eq!(a.until(14).await, [11, 12, 13, 14]);
}

/// A NATS node cut off from the others leaves the connection up: the broker says the link is
/// down, then restored. Heard only as restored (its word of the cut lost or late), it is still
/// a gap, though no connection count moved.
#[tokio::test]
async fn a_stream_restored_on_the_same_connection_is_refilled() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _a) = streaming_after_11(&script).await;
    script.link.send_modify(|l| l.restored += 1);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, [(u.clone(), 12)]);
    script.live(&u, 13);
    assert_eq!(a.until(13).await, [11, 12, 13]);
}

#[tokio::test]
async fn a_stream_that_joins_during_a_refill_gets_nothing_older_than_its_cursor() {
    let mut script = Script::new(10);
    let (hub, u, mut a, _a, reply) = a_gap_after_11(&mut script).await;
    script.live(&u, 20); // held while the refill is out
    // A new stream opens meanwhile; its first cursor is the history's head then.
    let (mut b, _b) = Reader::join(&hub, std::slice::from_ref(&u), 19).await;
    Script::refill(reply, (12..=19).map(|seq| (u.clone(), seq)));
    script.live(&u, 21);

    assert_eq!(a.until(21).await, (11..=21).collect::<Vec<_>>());
    assert_eq!(b.until(21).await, [20, 21], "nothing at or below its cursor 19");
}

#[tokio::test]
async fn events_a_subscription_queued_before_it_was_in_place_are_no_new_history() {
    let script = Script::new(10);
    let (hub, u, mut a, _a) = streaming_after_11(&script).await;
    let v = user("v");
    script.broker.gated.store(true, Ordering::SeqCst);
    let joining = {
        let (hub, v) = (hub.clone(), v.clone());
        tokio::spawn(async move { Reader::join(&hub, &[v], 12).await })
    };
    while !script.broker.feeds.lock().contains_key(&v) {
        tokio::task::yield_now().await;
    }
    // Queued on v's subscription while it waits to be confirmed; 5 came before anything
    // the hub sent since, 13 after.
    script.live(&v, 5);
    script.live(&u, 12);
    script.live(&v, 13);
    assert_eq!(a.until(12).await, [11, 12]);
    script.broker.gate.notify_one();
    let (mut b, _b) = joining.await.unwrap();
    script.live(&v, 14);
    script.live(&u, 15);
    assert_eq!(a.until(15).await, [11, 12, 15], "no stream was sent to resume");
    assert_eq!(b.until(14).await, [13, 14]);
}

/// Every stream that joins while its subject's subscription is being made waits for it and
/// learns how it ended: all go on once it is in place, all fail when it fails, and the next
/// join subscribes afresh.
#[tokio::test]
async fn every_join_waiting_for_a_subscription_learns_how_it_ended() {
    let script = Script::new(10);
    let hub = script.hub();
    let joining = |target: &Target| {
        let (hub, target) = (hub.clone(), target.clone());
        tokio::spawn(async move { Reader::try_join(&hub, &[target], 10).await })
    };
    // A join is waiting once it holds the topic: it does so in the same poll that starts to wait.
    let waiting = |target: &Target, n: usize| {
        hub.topics.lock().get(target).is_some_and(|t| t.holders.load(Ordering::Relaxed) == n)
    };
    script.broker.gated.store(true, Ordering::SeqCst);

    let u = user("u");
    let joins: Vec<_> = (0..3).map(|_| joining(&u)).collect();
    while !waiting(&u, 3) {
        tokio::task::yield_now().await;
    }
    script.broker.gate.notify_one();
    let mut streams = Vec::new();
    for join in joins {
        streams.push(join.await.unwrap().expect("the subscription is in place"));
    }
    script.live(&u, 11);
    for (reader, _) in &mut streams {
        assert_eq!(reader.until(11).await, [11]);
    }

    let v = user("v");
    script.broker.failing.store(true, Ordering::SeqCst);
    let joins: Vec<_> = (0..2).map(|_| joining(&v)).collect();
    while !waiting(&v, 2) {
        tokio::task::yield_now().await;
    }
    script.broker.gate.notify_one();
    for join in joins {
        match join.await.unwrap() {
            Err(JoinError::Broker(BrokerError::Unavailable(e))) => assert!(e.ends_with("scripted"), "{e}"),
            other => panic!("the join should fail with the subscription, got {:?}", other.map(|_| ())),
        }
    }
    script.broker.failing.store(false, Ordering::SeqCst);
    script.broker.gated.store(false, Ordering::SeqCst);
    let (mut b, _b) = joining(&v).await.unwrap().expect("a new subscription replaces the failed one");
    script.live(&v, 12);
    assert_eq!(b.until(12).await, [12]);
}

#[tokio::test]
async fn a_gap_that_opens_during_a_refill_is_refilled_too() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _a, first) = a_gap_after_11(&mut script).await;
    // The link drops again while the first refill is out: 14..=19 are lost live, and the
    // first refill, read before, ends at 13.
    script.live(&u, 20);
    script.gap();
    script.live(&u, 21);
    Script::refill(first, [(u.clone(), 12), (u.clone(), 13)]);
    let (after, second) = script.next_replay().await;
    assert_eq!(after, 13, "the second refill starts where the first ended");
    Script::refill(second, (14..=21).map(|seq| (u.clone(), seq)));
    script.live(&u, 22);

    assert_eq!(a.until(22).await, (11..=22).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(script.gaps("reconnect"), 2.0);
}

#[tokio::test]
async fn events_a_full_subscription_dropped_are_refilled_in_order() {
    let mut script = Script::new(10);
    let hub = script.hub();
    let (a, b) = (user("a"), user("b"));
    let (mut s, _s) = Reader::join(&hub, &[a.clone(), b.clone()], 10).await;
    // A burst before the hub runs again: a's queue fills with 11..=18 and the broker drops
    // 19 and 20; b's 21 still arrives. 21 must not go out before 19 and 20.
    for seq in 11..=20 {
        script.live(&a, seq);
    }
    script.live(&b, 21);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 18, "refilled from a's newest queued event");
    Script::refill(reply, [(a.clone(), 19), (a.clone(), 20), (b.clone(), 21)]);
    script.live(&b, 22);
    assert_eq!(s.until(22).await, (11..=22).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!((script.gaps("fell_behind"), script.gaps("reconnect")), (1.0, 0.0));
}

#[tokio::test]
async fn duplicated_and_reordered_live_events_reach_a_stream_once_in_order() {
    let script = Script::new(10);
    let hub = script.hub();
    let (a, b) = (user("a"), user("b"));
    let (mut s, _s) = Reader::join(&hub, &[a.clone(), b.clone()], 10).await;
    // Within one burst: b's 12 before a's 11, and 11 twice.
    script.live(&b, 12);
    script.live(&a, 11);
    script.live(&a, 11);
    script.live(&a, 13);
    assert_eq!(s.until(13).await, [11, 12, 13]);
}

#[tokio::test]
async fn events_that_arrive_before_the_word_of_a_reconnect_wait_for_the_refill() {
    let mut script = Script::new(10);
    let (_hub, u, mut s, _s) = streaming_after_11(&script).await;
    // The link drops; 12..=19 are published meanwhile. After the reconnect, 20 arrives
    // before the hub hears of the reconnect: it must not go out ahead of 12..=19.
    script.down();
    script.live(&u, 20);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(reply, (12..=20).map(|seq| (u.clone(), seq)));
    // The word of the reconnect comes late: a refill from where the hub is, of nothing.
    script.gap();
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 20);
    Script::refill(reply, []);
    script.live(&u, 21);
    assert_eq!(s.until(21).await, (11..=21).collect::<Vec<_>>());
}

#[tokio::test]
async fn a_refill_cut_short_by_the_link_is_tried_again_with_every_stream_kept() {
    let mut script = Script::new(10);
    let (_hub, u, mut s, _s, first) = a_gap_after_11(&mut script).await;
    // The link drops again while the refill is out, and the refill fails with it.
    script.down();
    assert!(first.send(Err(BrokerError::Unavailable("link down".into()))).is_ok());
    // Once the link is back, the gap is refilled from where the hub was.
    script.gap();
    let (after, second) = script.next_replay().await;
    assert_eq!(after, 11);
    Script::refill(second, (12..=15).map(|seq| (u.clone(), seq)));
    script.live(&u, 16);
    assert_eq!(s.until(16).await, (11..=16).collect::<Vec<_>>());
    assert_eq!(s.outbox.close_reason(), None, "the stream stayed open");
}

#[tokio::test]
async fn a_refill_the_history_cannot_answer_yet_is_tried_again_with_every_stream_kept() {
    let mut script = Script::new(10);
    let (_hub, u, mut s, _s, first) = a_gap_after_11(&mut script).await;
    // The link is back, but the history does not answer: its stream has no leader yet.
    script.live(&u, 16);
    assert!(first.send(Err(BrokerError::Unavailable("no stream leader".into()))).is_ok());
    let (after, second) = script.next_replay().await;
    assert_eq!(after, 11, "asked again from where the hub was");
    Script::refill(second, (12..=16).map(|seq| (u.clone(), seq)));
    script.live(&u, 17);
    assert_eq!(s.until(17).await, (11..=17).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(s.outbox.close_reason(), None, "the stream stayed open");
}

#[tokio::test]
async fn a_history_that_starts_over_sends_every_stream_to_resume() {
    // The stream was recreated: its sequences start again from 1, named by the new epoch if
    // the gateway has read it, else by the old one until the history is asked why the
    // sequence went back (reading the history renames what comes after).
    for epoch in ["e", "e2"] {
        let mut script = Script::new(10);
        let (hub, u, a, _a) = streaming_after_11(&script).await;
        script.send(&u, durable_in(epoch, 1));
        if epoch == "e" {
            let (after, reply) = script.next_replay().await;
            assert_eq!(after, 11);
            let head = EventId { epoch: Arc::from("e2"), seq: 1 };
            assert!(reply.send(Ok(Replay::Reset(ResetReason::EpochChanged, Some(head)))).is_ok());
        }
        // Not dropped silently as older than the stream's cursor: the stream resumes.
        assert_eq!(a.closed().await, CloseReason::Error, "the stream is sent to resume ({epoch})");
        // A stream that opens afterwards, at the new history's head, gets its events.
        let (mut b, _b) = Reader::join(&hub, std::slice::from_ref(&u), 1).await;
        script.send(&u, durable_in("e2", 2));
        script.send(&u, durable_in("e2", 3));
        assert_eq!(b.until(3).await, [2, 3], "the new history's events reach a new stream ({epoch})");
        assert_eq!(b.outbox.close_reason(), None);
    }
}

#[tokio::test]
async fn a_refill_never_reaches_a_topic_through_a_reused_slot() {
    let mut script = Script::new(10);
    let hub = script.hub();
    let (x, y) = (user("x"), user("y"));
    let (gone, _gone) = Reader::join(&hub, std::slice::from_ref(&x), 10).await;
    // The broker ends x's subscription: its streams are closed to resume elsewhere.
    script.end(&x);
    gone.closed().await;
    // y subscribes into the slot x left.
    let (mut b, _b) = Reader::join(&hub, std::slice::from_ref(&y), 10).await;
    script.gap();
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 10);
    Script::refill(reply, [(x.clone(), 11), (y.clone(), 12)]);
    script.live(&y, 13);
    assert_eq!(b.until(13).await, [12, 13], "x's event never reaches y's stream");
}

#[tokio::test]
async fn a_live_copy_of_an_event_already_sent_is_no_new_history() {
    // A newly elected stream leader republishes the entries it applies, which its predecessor
    // may have republished already: 12 comes live again after 13.
    let mut script = Script::new(10);
    let (_hub, u, mut a, _a) = streaming_after_11(&script).await;
    script.live(&u, 12);
    script.live(&u, 13);
    assert_eq!(a.until(13).await, [11, 12, 13]);
    script.live(&u, 12);
    script.live(&u, 14);
    // The hub asks the history, which has nothing the stream lacks.
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 13);
    Script::refill(reply, [(u.clone(), 14)]);
    script.live(&u, 15);
    assert_eq!(a.until(15).await, (11..=15).collect::<Vec<_>>(), "every event once, in order");
    assert_eq!(a.outbox.close_reason(), None, "the stream stayed open");
    assert_eq!(script.gaps("sequence_back"), 1.0);
}

#[tokio::test]
async fn a_live_copy_that_comes_after_its_refill_is_no_new_history() {
    let mut script = Script::new(10);
    let (_hub, u, mut a, _a, reply) = a_gap_after_11(&mut script).await;
    Script::refill(reply, [(u.clone(), 12), (u.clone(), 13)]);
    assert_eq!(a.until(13).await, [11, 12, 13]);
    // The live copies of 12 and 13 come after the refill that sent them.
    script.live(&u, 12);
    script.live(&u, 13);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 13);
    Script::refill(reply, []);
    script.live(&u, 14);
    assert_eq!(a.until(14).await, [11, 12, 13, 14], "every event once, in order");
    assert_eq!(a.outbox.close_reason(), None, "the stream stayed open");
}

/// The history cannot be read (a NATS cluster without a quorum) while ephemeral events keep
/// coming: the hub holds them for its refill only up to its bound, then sends every stream to
/// resume and holds nothing more. The answer of the refill it gave up on is not taken for the
/// next one's.
#[tokio::test]
async fn live_events_held_past_the_bound_send_every_stream_to_resume() {
    const BOUND: usize = 64 << 10;
    let mut script = Script::new(10);
    let (hub, u, a, _a, given_up) = a_gap_after_11_holding(&mut script, BOUND).await;

    let ephemeral = Delivery { id: None, payload: Bytes::from(vec![b'1'; 4096]), ..durable(0) };
    let mut sent = 0;
    while a.outbox.close_reason().is_none() {
        assert!(sent < 4 * BOUND / 4096, "still open after {sent} events of 4 KiB held");
        script.send(&u, ephemeral.clone());
        sent += 1;
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
        if sent * 4096 <= BOUND / 2 {
            assert_eq!(a.outbox.close_reason(), None, "held {sent} events of 4 KiB, half the bound");
        }
    }
    assert_eq!(a.closed().await, CloseReason::Error, "sent to resume");
    assert!(sent * 4096 > BOUND / 2, "closed by the bound, after {sent} events");
    assert_eq!(script.metric("herald_refills_given_up_total"), 1.0);

    // The client resumes, with 11, the history's head as its resume read it. Another gap
    // opens, and the given-up refill answers first: only the new refill's answer releases
    // what is held.
    let (mut b, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 11).await;
    on_u.started_at(&id(11));
    script.gap();
    let (after, refill) = script.next_replay().await;
    assert_eq!(after, 11);
    script.live(&u, 14);
    Script::refill(given_up, []);
    Script::refill(refill, [(u.clone(), 12), (u.clone(), 13)]);
    assert_eq!(b.until(14).await, [12, 13, 14], "every event once, in order");
    assert_eq!(b.outbox.close_reason(), None);
}

/// A refill is asked for while the pod subscribes to `u` only; a stream then opens on `v` (a
/// new topic, its chain starting at 13). The refill reads `u`'s events through 15. Event 14 on
/// `v` was lost in transit, and 16 names it: it lies in the range the refill read, but on a
/// subject the refill never read, so it is looked for (before: excused as gone from the
/// history, and lost without a word).
#[tokio::test]
async fn a_refill_excuses_no_broken_chain_on_a_subject_it_did_not_read() {
    let mut script = Script::new(10);
    let (hub, u, _a, _on_u, reply) = a_gap_after_11(&mut script).await;
    let v = user("v");
    let (mut b, on_v) = Reader::join(&hub, std::slice::from_ref(&v), 13).await;
    on_v.started_at(&id(13));
    // The refill was asked for with the targets subscribed then: `u` alone.
    Script::refill(reply, [(u.clone(), 12), (u.clone(), 13), (u.clone(), 15)]);
    script.live_after(&v, 16, 14);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 13, "refilled from v's last event");
    Script::refill(reply, [(v.clone(), 14), (v.clone(), 16)]);
    assert_eq!(b.until(16).await, [14, 16], "every event once, in order");
}

/// After the hold bound gives up a refill, the next gap is refilled from where the streams that
/// opened since found the history (30), not from where the given-up gap began (11): that would
/// read the whole given-up period again and, past the refill's ceiling, send every stream, all
/// of them current, to resume a second time.
#[tokio::test]
async fn after_giving_up_the_next_refill_starts_where_the_streams_are() {
    const BOUND: usize = 64 << 10;
    let mut script = Script::new(10);
    let (hub, u, a, _a, _given_up) = a_gap_after_11_holding(&mut script, BOUND).await;
    let ephemeral = Delivery { id: None, payload: Bytes::from(vec![b'1'; 4096]), ..durable(0) };
    while a.outbox.close_reason().is_none() {
        script.send(&u, ephemeral.clone());
        for _ in 0..8 {
            tokio::task::yield_now().await;
        }
    }
    // 12..=30 were stored meanwhile; a stream opens at the head, 30.
    let (mut c, on_u) = Reader::join(&hub, std::slice::from_ref(&u), 30).await;
    on_u.started_at(&id(30));
    script.gap();
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 30, "refilled from where the open stream started");
    Script::refill(reply, [(u.clone(), 31)]);
    script.live(&u, 32);
    assert_eq!(c.until(32).await, [31, 32]);
    assert_eq!(c.outbox.close_reason(), None);
}

/// A stream opened with no first cursor (the history did not answer) has received 11 on `u`;
/// a second stream opens on `u` at the history's head, 20. Event 15 on `u` never arrived, and
/// 22 names it: the first stream lacks it, so it is refilled, though the second stream's head
/// is past it (before: the second stream's head became the chain's start, and 15 was lost to
/// the first without a word).
#[tokio::test]
async fn a_later_streams_head_hides_no_event_an_earlier_one_lacks() {
    let mut script = Script::new(10);
    let hub = script.hub();
    let u = user("u");
    let (mut a, _a) = Reader::join(&hub, std::slice::from_ref(&u), 10).await;
    script.live(&u, 11);
    assert_eq!(a.until(11).await, [11]);
    let (_b, on_b) = Reader::join(&hub, std::slice::from_ref(&u), 20).await;
    on_b.started_at(&id(20));
    script.live_after(&u, 22, 15);
    let (after, reply) = script.next_replay().await;
    assert_eq!(after, 11, "refilled from u's last event");
    Script::refill(reply, [(u.clone(), 15), (u.clone(), 22)]);
    assert_eq!(a.until(22).await, [11, 15, 22], "every event once, in order");
}
