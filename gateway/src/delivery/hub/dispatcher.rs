//! The dispatcher: owns every subscription of the pod and merges them into one ordered flow,
//! refills gaps in live delivery, and fans each event out to its topic's members (see
//! `mod.rs` for the order it keeps and how).
//!
//! About 550 lines, as one piece: the subscriptions, the batch being ordered and the refill of a
//! gap are one state machine, whose steps read and change the same fields; apart, they would pass
//! all of it back and forth.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use parking_lot::Mutex;
use slab::Slab;
use tokio::sync::mpsc;

use crate::broker::{Broker, BrokerError, EventStream, Replay};
use crate::delivery::outbox::Rejected;
use crate::delivery::sse;
use crate::event::{Delivery, EventId, Target};
use crate::ops::metrics::{Gap, Metrics};
use crate::ops::trace;

use super::{Command, NO_SLOT, Topic, TopicState, UNKNOWN};

/// Most events replayed to refill one outage; beyond it, sessions are closed to resume alone.
const CATCH_UP_MAX: usize = 100_000;

/// Farthest behind the watermark a subject's broken chain is refilled from; beyond it, that
/// subject's streams resume on their own (see [`Dispatcher::dispatch`]).
const CHAIN_REFILL_MAX: u64 = 10_000;

/// How long a refill that the history cannot answer (a NATS cluster electing the stream's
/// leader takes seconds) is tried again, every [`REFILL_RETRY`], with every stream kept open
/// and live events held, before every stream is sent to resume on its own.
const REFILL_PATIENCE: Duration = Duration::from_secs(30);
const REFILL_RETRY: Duration = Duration::from_millis(500);

/// Most bytes of live events held while a gap is refilled, an eighth of a gateway's default
/// memory limit; beyond it, every stream is sent to resume on its own. Ephemeral events flow
/// while the history cannot be read (a NATS cluster without a quorum), and a refill may wait
/// 30 s for it: without a bound a busy pod would hold them until it ran out of memory.
pub(super) const HELD_MAX_BYTES: usize = 128 << 20;

/// Live events waiting for a refill, and about how much memory they take.
#[derive(Default)]
struct Held {
    events: Vec<(Arc<Topic>, Delivery)>,
    bytes: usize,
}

impl Held {
    fn push(&mut self, held: (Arc<Topic>, Delivery)) {
        self.bytes += held_size(&held.1);
        self.events.push(held);
    }

    fn extend(&mut self, held: impl IntoIterator<Item = (Arc<Topic>, Delivery)>) {
        for h in held {
            self.push(h);
        }
    }

    fn take(&mut self) -> Vec<(Arc<Topic>, Delivery)> {
        self.bytes = 0;
        std::mem::take(&mut self.events)
    }

    fn clear(&mut self) {
        self.take();
    }

    fn len(&self) -> usize {
        self.events.len()
    }
}

/// What holding `delivery` costs: its buffers and its place in the list.
fn held_size(delivery: &Delivery) -> usize {
    std::mem::size_of::<(Arc<Topic>, Delivery)>()
        + delivery.payload.len()
        + delivery.event_type.len()
        + delivery.from.as_deref().map_or(0, str::len)
        + delivery
            .trace
            .as_deref()
            .map_or(0, |t| std::mem::size_of_val(t) + t.traceparent.len() + t.tracestate.as_deref().map_or(0, str::len))
}

/// Indices of subscriptions that have events queued, filled by their wakers.
#[derive(Default)]
struct ReadyQueue {
    indices: Mutex<Vec<usize>>,
    dispatcher: AtomicWaker,
}

/// Waker of one subscription: marks it ready and wakes the dispatcher.
struct SlotWaker {
    index: usize,
    queued: AtomicBool,
    ready: Arc<ReadyQueue>,
}

impl Wake for SlotWaker {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if !self.queued.swap(true, Ordering::AcqRel) {
            self.ready.indices.lock().push(self.index);
            self.ready.dispatcher.wake();
        }
    }
}

struct Slot {
    topic: Arc<Topic>,
    stream: EventStream,
    waker: Arc<SlotWaker>,
    /// Not drained yet. What the subscription queued before it was in place (a NATS cluster
    /// confirms a subscription only once the stream's leader knows of it, a round trip across
    /// the cluster) may be older than what the other subscriptions delivered meanwhile: that is
    /// no new history, and every stream joining it starts at a cursor that covers those events.
    new: bool,
}

/// Owns every subscription of the pod and merges them into one ordered flow (see the top of
/// `mod.rs`). Runs as a single future on the hub runtime.
pub(super) struct Dispatcher {
    broker: Arc<dyn Broker>,
    commands: mpsc::UnboundedReceiver<Command>,
    commands_tx: mpsc::UnboundedSender<Command>,
    slots: Slab<Slot>,
    ready: Arc<ReadyQueue>,
    batch: Vec<(usize, Delivery)>,
    metrics: Arc<Metrics>,
    /// The slot of each subscribed target, to route replayed events.
    by_target: HashMap<Target, usize>,
    /// The newest durable event dispatched (or in the history at start).
    watermark: Option<EventId>,
    /// Refilling a gap, while live events wait in `held`.
    catch_up: CatchUp,
    /// Events one subscription queues before the broker drops newer ones (its slow consumer).
    capacity: usize,
    /// Set by a drain that found a subscription's queue full: the broker may have dropped what
    /// came after this sequence on it.
    hole_after: Option<u64>,
    held: Held,
    /// [`HELD_MAX_BYTES`], lower in tests.
    held_max_bytes: usize,
    /// Counts the refills given up on: the answer of one asked for before is not waited for.
    refill_generation: u64,
    /// The hub's flag of a stream's first cursor sent as the position (`Hub::stream_started_at`).
    stream_position_sent: Arc<AtomicBool>,
    /// A subject's chain broke (see [`Dispatcher::dispatch`]): the refill starts after this
    /// sequence, the last one sent on that subject, rather than after the watermark.
    refill_after: Option<u64>,
    /// What the last refill read: an event it covered that never reached its topic is gone
    /// from the history (its subject's limit, its age), not in transit, and breaks no chain.
    /// `reading_from` is where the refill out now starts.
    read: Option<Read>,
    reading_from: u64,
    /// The live events held because their subject's chain broke, by sequence, until a refill
    /// answers; then `looked_for`, until the held events are released: one still broken then
    /// names an event the history, as read, does not hold, and is not looked for again.
    looking_for: Vec<u64>,
    looked_for: Vec<u64>,
    /// The subjects the refill out now reads: those subscribed when it was asked for.
    reading: Arc<std::collections::HashSet<Target>>,
    /// When the refills of the current gap started failing with the link up.
    refill_failing_since: Option<std::time::Instant>,
    /// The broker's connection count, read at once (see [`Broker::connections`]), and the
    /// count the hub last accounted for: a difference is a reconnect, a gap to refill.
    connections: Option<crate::broker::ConnectionCount>,
    known_connections: u64,
}

/// The sequences a refill read, after its start and through its end, on the subjects it read.
struct Read {
    from: u64,
    through: u64,
    subjects: Arc<std::collections::HashSet<Target>>,
}

/// Whether the hub is refilling a gap in live delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CatchUp {
    Idle,
    /// The broker's link went down: live events that arrive from now on come after a gap, and
    /// wait until it is refilled. The refill starts when the link is back, or at the first
    /// event to arrive (proof that it is, should the word of it come late or not at all).
    Holding,
    /// A replay is out. `again`: another gap opened meanwhile (a second reconnect), which that
    /// replay may not cover; another replay follows it before the held events are released.
    Running {
        again: bool,
    },
}

impl Dispatcher {
    /// A dispatcher of `broker`'s subscriptions, taking commands from `commands` (`commands_tx`
    /// is its sender, for the tasks it starts).
    pub(super) fn new(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        commands: mpsc::UnboundedReceiver<Command>,
        commands_tx: mpsc::UnboundedSender<Command>,
        held_max_bytes: usize,
        stream_position_sent: Arc<AtomicBool>,
    ) -> Self {
        let capacity = broker.subscription_capacity().max(1);
        let mut dispatcher = Dispatcher {
            broker,
            commands,
            commands_tx,
            slots: Slab::new(),
            ready: Arc::new(ReadyQueue::default()),
            batch: Vec::new(),
            metrics,
            by_target: HashMap::new(),
            watermark: None,
            catch_up: CatchUp::Idle,
            capacity,
            hole_after: None,
            held: Held::default(),
            held_max_bytes,
            refill_generation: 0,
            stream_position_sent,
            refill_after: None,
            read: None,
            reading_from: 0,
            looking_for: Vec::new(),
            looked_for: Vec::new(),
            reading: Arc::default(),
            refill_failing_since: None,
            known_connections: 0,
            connections: None,
        };
        // Counted from here: the first connection is no gap.
        dispatcher.connections = dispatcher.broker.connections();
        dispatcher.note_connections();
        dispatcher
    }

    fn command(&mut self, cmd: Command) {
        match cmd {
            Command::Open(topic) => {
                let subscribe = self.broker.subscribe(topic.target.clone());
                let tx = self.commands_tx.clone();
                tokio::spawn(async move {
                    let result = subscribe.await;
                    let _ = tx.send(Command::Attach(topic, result));
                });
            }
            Command::Attach(topic, result) => {
                if topic.status.is(|s| matches!(s, TopicState::Closed)) {
                    return; // everyone left while subscribing; dropping the stream unsubscribes
                }
                match result {
                    Ok(stream) => {
                        let entry = self.slots.vacant_entry();
                        let waker = Arc::new(SlotWaker {
                            index: entry.key(),
                            queued: AtomicBool::new(false),
                            ready: self.ready.clone(),
                        });
                        waker.wake_by_ref(); // poll it once to register the waker
                        topic.slot.store(entry.key(), Ordering::Relaxed);
                        self.by_target.insert(topic.target.clone(), entry.key());
                        entry.insert(Slot { topic: topic.clone(), stream, waker, new: true });
                        topic.status.set(TopicState::Live);
                    }
                    Err(e) => {
                        tracing::warn!(target = %topic.target, error = %e, "subscribe failed");
                        topic.status.set(TopicState::Failed(e.to_string()));
                    }
                }
            }
            Command::Close(topic) => {
                let key = topic.slot.load(Ordering::Relaxed);
                if self.slots.get(key).is_some_and(|s| Arc::ptr_eq(&s.topic, &topic)) {
                    self.remove_slot(key);
                }
            }
            Command::Position(id) => {
                if self.watermark.is_none() {
                    self.watermark = id;
                }
            }
            Command::LinkDown => match self.catch_up {
                CatchUp::Idle => {
                    self.metrics.live_gap(Gap::Reconnect);
                    self.catch_up = CatchUp::Holding;
                }
                CatchUp::Holding => {}
                CatchUp::Running { .. } => {
                    self.metrics.live_gap(Gap::Reconnect);
                    self.catch_up = CatchUp::Running { again: true };
                }
            },
            Command::Gap { restored } => {
                // Word of a reconnect the dispatcher may have found first, from the count; a
                // stream restored on the same connection moves no count, and is always new.
                let unseen = self.note_connections() || self.connections.is_none() || restored;
                match self.catch_up {
                    CatchUp::Holding => self.start_catch_up(),
                    CatchUp::Idle if unseen => {
                        self.metrics.live_gap(Gap::Reconnect);
                        self.start_catch_up();
                    }
                    CatchUp::Running { .. } if unseen => {
                        self.metrics.live_gap(Gap::Reconnect);
                        self.catch_up = CatchUp::Running { again: true };
                    }
                    CatchUp::Idle | CatchUp::Running { .. } => {}
                }
            }
            Command::CaughtUp(generation, _) if generation != self.refill_generation => {
                // A refill given up on (see `bound_held`): its streams resume on their own.
            }
            Command::CaughtUp(_, result) => {
                let again = self.catch_up == CatchUp::Running { again: true };
                self.catch_up = CatchUp::Idle;
                match result {
                    Ok(Replay::Events(events)) => {
                        self.refill_failing_since = None;
                        if !again {
                            // Another refill follows this one otherwise: it reads the broken
                            // chains' subjects from their last events again, and only its
                            // answer tells that an event they name is not in the history.
                            self.refill_after = None;
                            self.looked_for.append(&mut self.looking_for);
                        }
                        let seq = |i: Option<&(Target, Delivery)>| i.and_then(|(_, d)| d.id.as_ref()).map(|id| id.seq);
                        let (first, last) = (seq(events.first()), seq(events.last()));
                        // What the refill read: up to its last event, not up to the newest one
                        // held. Every held event was stored before it was republished, so a true
                        // answer reaches it; one from a stale view of the history (on a NATS
                        // cluster, a replica still catching up right after a partition healed)
                        // may stop short, and what it did not reach must still be looked for.
                        let from = self.reading_from;
                        let subjects = self.reading.clone();
                        self.read = Some(Read { from, through: last.unwrap_or(from), subjects });
                        tracing::info!(events = events.len(), first, last, held = self.held.len(), "gap refilled");
                        for (target, delivery) in events {
                            if let Some(topic) = self.by_target.get(&target).and_then(|&i| self.topic_at(i)) {
                                self.dispatch(&topic, delivery, true);
                            }
                        }
                        if again && !self.broker.is_connected() {
                            // The link dropped again meanwhile: refill from here once it is back.
                            self.catch_up = CatchUp::Holding;
                            return;
                        }
                        if again {
                            // Another gap opened while this one was refilled: refill from here
                            // before releasing what was held, which may lie beyond it.
                            self.start_catch_up();
                            if self.catch_up != CatchUp::Idle {
                                return;
                            }
                        }
                    }
                    Err(e) if again || !self.broker.is_connected() => {
                        // The link dropped while refilling: try again, now or once it is back,
                        // with every stream kept open.
                        tracing::info!(error = %e, "the refill failed as the link dropped; trying again");
                        if self.broker.is_connected() {
                            self.start_catch_up();
                        } else {
                            self.catch_up = CatchUp::Holding;
                        }
                        return;
                    }
                    Err(BrokerError::Unavailable(e))
                        if self.refill_failing_since.get_or_insert_with(std::time::Instant::now).elapsed()
                            < REFILL_PATIENCE =>
                    {
                        // The link is up but the history does not answer (no stream leader
                        // yet): a little later, with every stream kept open.
                        tracing::info!(error = %e, "the history cannot be read yet; refilling the gap again shortly");
                        self.catch_up = CatchUp::Running { again: false };
                        self.request_refill(REFILL_RETRY);
                        return;
                    }
                    Ok(Replay::Reset(reason, head)) => {
                        // The history cannot cover the gap, or started over: every stream
                        // reconnects and resumes alone, from the history as it stands. What was
                        // held is theirs to resume, and may be named by the old history.
                        tracing::warn!(reason = reason.as_str(), "cannot refill the gap; every stream resumes");
                        self.refill_failing_since = None;
                        self.watermark = head;
                        self.close_every_stream();
                        self.held.clear();
                        return;
                    }
                    Err(e) => {
                        // The gap can't be refilled: every stream reconnects and resumes alone.
                        tracing::warn!(error = %e, "cannot refill the gap; every stream resumes");
                        self.refill_failing_since = None;
                        self.close_every_stream();
                    }
                }
                for (topic, delivery) in self.held.take() {
                    self.dispatch(&topic, delivery, true);
                }
                self.looked_for.clear();
            }
        }
    }

    /// Reads the broker's connection count; whether it moved since last read (always false for a
    /// broker that does not count).
    fn note_connections(&mut self) -> bool {
        let Some(count) = &self.connections else { return false };
        let now = count();
        // The client's first connection, made after the hub started (it connects in the
        // background), is no gap: nothing came before it, and the position read covers it.
        let moved = now != self.known_connections && !(self.known_connections == 0 && now == 1);
        self.known_connections = now;
        moved
    }

    /// Starts refilling the gap after the watermark (nothing without one: the hub has not yet
    /// read where the history stood when it started).
    fn start_catch_up(&mut self) {
        let Some(after) = self.watermark.clone() else {
            // Nothing to refill from: send on what was held.
            self.catch_up = CatchUp::Idle;
            for (topic, delivery) in self.held.take() {
                self.dispatch(&topic, delivery, false);
            }
            return;
        };
        tracing::info!(after = %after, "live delivery had a gap; refilling it from the history");
        self.catch_up = CatchUp::Running { again: false };
        self.request_refill(Duration::ZERO);
    }

    /// Asks the broker, after `delay`, for everything after the watermark; the answer comes
    /// back as [`Command::CaughtUp`].
    fn request_refill(&mut self, delay: Duration) {
        let Some(mut after) = self.watermark.clone() else { return };
        if let Some(seq) = self.refill_after {
            after.seq = after.seq.min(seq);
        }
        self.reading_from = after.seq;
        // The subjects subscribed now: one subscribed later starts its streams at the head.
        let targets: Vec<Target> = self.by_target.keys().cloned().collect();
        self.reading = Arc::new(targets.iter().cloned().collect());
        let broker = self.broker.clone();
        let tx = self.commands_tx.clone();
        let generation = self.refill_generation;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Command::CaughtUp(generation, broker.replay(targets, after, CATCH_UP_MAX).await));
        });
    }

    /// Gives up the refill under way once what it holds passes `held_max_bytes`: every stream
    /// resumes on its own, from its own id, and the refill's answer is not waited for.
    fn bound_held(&mut self) {
        if self.held.bytes <= self.held_max_bytes {
            return;
        }
        tracing::warn!(
            events = self.held.len(),
            bytes = self.held.bytes,
            "too many live events held while refilling a gap; every stream resumes"
        );
        self.metrics.refill_given_up();
        self.held.clear();
        self.close_every_stream();
        self.catch_up = CatchUp::Idle;
        self.refill_failing_since = None;
        self.refill_generation += 1;
        // Where the gap began is no place to refill the next one from: every stream resumes
        // past it. The next to open (or the next durable event) tells where the history is.
        self.watermark = None;
        self.stream_position_sent.store(false, Ordering::Relaxed);
    }

    /// Forgets the subscription in `index`, with the target index that routes to it: both change
    /// together, so that a slot reused by another topic never receives this one's events.
    fn remove_slot(&mut self, index: usize) -> Option<Slot> {
        let slot = self.slots.try_remove(index)?;
        slot.topic.slot.store(NO_SLOT, Ordering::Relaxed);
        if self.by_target.get(&slot.topic.target) == Some(&index) {
            self.by_target.remove(&slot.topic.target);
        }
        Some(slot)
    }

    /// Fans out one event and moves the watermark. With `dedupe` (a refill's events, and the
    /// events held during it), durable events at or below the last one sent on their topic were
    /// already sent and are skipped. Every event waits behind a refill that one before it
    /// started; a live sequence going back starts one, and so does a live event whose subject's
    /// chain is broken. Each stream's own cursor (`Outbox`) skips what it already has besides.
    fn dispatch(&mut self, topic: &Arc<Topic>, delivery: Delivery, dedupe: bool) {
        if self.catch_up != CatchUp::Idle {
            // An event before it in the batch, or before it among the held ones being released,
            // started a refill.
            self.held.push((topic.clone(), delivery));
            return;
        }
        if let Some(id) = &delivery.id {
            if let Some(w) = &self.watermark {
                if w.epoch != id.epoch {
                    // The history started over (its stream recreated), under a name the gateway
                    // has read. Every stream's cursor belongs to the old history, and the new
                    // one's events would be dropped as older than it: each stream resumes on
                    // its own instead, and gets a `reset`.
                    tracing::warn!(epoch = %id.epoch, seq = id.seq, watermark = %w, "the history started over; every stream resumes");
                    self.watermark = Some(id.clone());
                    self.close_every_stream();
                    return;
                }
                if !dedupe && id.seq < w.seq {
                    // A live sequence going back: a copy of an event already sent (a newly
                    // elected stream leader republishes the entries it applies, which its
                    // predecessor may have republished already), or a history that started
                    // over under the old name (the gateway names events by the epoch it last
                    // read). The history tells which: refilled from the watermark, with this
                    // event and what follows held, a copy is dropped as sent, and a new history
                    // answers with a reset.
                    tracing::info!(seq = id.seq, watermark = %w, "a live sequence went back; asking the history why");
                    self.metrics.live_gap(Gap::SequenceBack);
                    self.held.push((topic.clone(), delivery));
                    self.start_catch_up();
                    return;
                }
            }
            let last_sent = topic.last_sent.load(Ordering::Relaxed);
            // The newest event of the subject that every member has: the last one sent here,
            // or, before any, where the first member found the history (see `Topic::chain_start`).
            let anchor = match topic.chain_start.load(Ordering::Relaxed) {
                UNKNOWN => last_sent,
                start => last_sent.max(start),
            };
            // Only on a subject the refill read: one subscribed while it was out was not.
            let gone = |previous: u64| {
                self.read
                    .as_ref()
                    .is_some_and(|r| r.from < previous && previous <= r.through && r.subjects.contains(&topic.target))
            };
            // Without a watermark there is nowhere to refill from (a reset that named no head):
            // the chain goes unchecked until an event sets one.
            let refillable = self.watermark.is_some();
            if refillable
                && anchor > 0
                && delivery.previous.is_some_and(|previous| previous > anchor && !gone(previous))
            {
                // The subject's chain is broken: the stream stored events on it after the last
                // one sent here, and they never arrived. A route between this pod's NATS node and
                // the stream's leader dropped for a moment, and the leader republished them to
                // no one here; the link's own check may notice that only later, or never. They
                // are refilled from the history, from that subject's last event, with this event
                // and what follows held. Once the history has been read past the event named,
                // it is no longer looked for: what the history does not hold cannot be sent. Nor
                // is it looked for twice.
                if self.looked_for.contains(&id.seq) {
                    // Looked for already: the refill this event waited for read its subject
                    // from the last event sent on it, and the event named was not there. The
                    // answer of a replica still catching up, or headers no stream wrote; a
                    // refill again would answer the same, at once, with every live event of
                    // the pod held behind it. The subject's streams resume instead, each from
                    // its own id, from the history as it then stands. The topic's last event
                    // sent stays where it was: moved to a sequence no history holds, it would
                    // drop every real event below it for the streams that come back. So while
                    // the history stays behind, each later event on the subject costs one refill
                    // and one resume, no more.
                    tracing::warn!(target = %topic.target, seq = id.seq, previous = delivery.previous, anchor, "an event names one its subject's history does not hold; its streams resume");
                    topic.send_members_to_resume();
                    return;
                }
                self.metrics.live_gap(Gap::BrokenChain);
                if self.watermark.as_ref().is_some_and(|w| w.seq.saturating_sub(anchor) > CHAIN_REFILL_MAX) {
                    // A subject quiet for long: a refill from its last event would read every
                    // subject's events since (past ten times `CATCH_UP_MAX` of them, or
                    // `CATCH_UP_MAX` owed here, it would send every stream of the pod to
                    // resume). Its own streams resume instead, each from its own id, this
                    // event included.
                    tracing::info!(target = %topic.target, seq = id.seq, previous = delivery.previous, anchor, "events on a quiet subject never arrived; its streams resume");
                    topic.last_sent.store(id.seq, Ordering::Relaxed);
                    topic.send_members_to_resume();
                    return;
                }
                tracing::info!(target = %topic.target, seq = id.seq, previous = delivery.previous, anchor, "events on a subject never arrived; refilling them");
                self.refill_after = Some(self.refill_after.map_or(anchor, |after| after.min(anchor)));
                self.looking_for.push(id.seq);
                self.held.push((topic.clone(), delivery));
                self.start_catch_up();
                return;
            }
            // Sent on this topic already: a copy, live, or a refill's. Per topic, not against the
            // watermark: a refill from a subject's broken chain goes back before the watermark,
            // and only the events that never reached their topic go out again.
            if id.seq <= last_sent {
                return;
            }
            topic.last_sent.store(last_sent.max(id.seq), Ordering::Relaxed);
            if self.watermark.as_ref().is_none_or(|w| id.seq > w.seq) {
                self.watermark = Some(id.clone());
            }
        }
        fan_out(topic, &delivery, &self.metrics);
    }

    /// Closes every stream of the pod with a `retry:`: each client resumes on its own. What each
    /// topic sent, where its chain started, and what the last refill read, are forgotten with
    /// them: they may belong to a history that started over. The streams that join next start
    /// each topic's chain again.
    fn close_every_stream(&mut self) {
        for (_, slot) in self.slots.iter() {
            slot.topic.last_sent.store(0, Ordering::Relaxed);
            slot.topic.chain_start.store(UNKNOWN, Ordering::Relaxed);
            slot.topic.send_members_to_resume();
        }
        self.read = None;
        self.refill_after = None;
        self.looking_for.clear();
        self.looked_for.clear();
    }

    /// The topic whose subscription is in `index`, if it still is.
    fn topic_at(&self, index: usize) -> Option<Arc<Topic>> {
        self.slots.get(index).map(|slot| slot.topic.clone())
    }

    /// Moves everything queued on ready subscriptions into `self.batch`.
    fn drain_ready(&mut self) {
        loop {
            let ready = std::mem::take(&mut *self.ready.indices.lock());
            if ready.is_empty() {
                return;
            }
            for index in ready {
                let Some(slot) = self.slots.get_mut(index) else { continue };
                slot.waker.queued.store(false, Ordering::Release);
                // Queued before the subscription was in place, at or below what was sent: no
                // member can want it (see `Slot::new`).
                let before = std::mem::take(&mut slot.new).then(|| self.watermark.clone()).flatten().map(|w| {
                    move |d: &Delivery| d.id.as_ref().is_some_and(|id| id.epoch == w.epoch && id.seq <= w.seq)
                });
                let waker = Waker::from(slot.waker.clone());
                let mut cx = Context::from_waker(&waker);
                let (mut drained, mut newest) = (0, None);
                loop {
                    match slot.stream.poll_next_unpin(&mut cx) {
                        Poll::Ready(Some(delivery)) => {
                            drained += 1;
                            if let Some(id) = &delivery.id {
                                newest = Some(id.seq);
                            }
                            if !before.as_ref().is_some_and(|older| older(&delivery)) {
                                self.batch.push((index, delivery));
                            }
                            if drained == self.capacity {
                                // Full: the broker dropped whatever came next on it, up to now
                                // (everything queued arrived before; nothing can arrive while
                                // this thread drains).
                                let from = newest.or(self.watermark.as_ref().map(|w| w.seq)).unwrap_or(0);
                                self.hole_after = Some(self.hole_after.map_or(from, |h| h.min(from)));
                            }
                        }
                        Poll::Ready(None) => {
                            // The broker ended this subscription: its sessions must reconnect.
                            let Some(slot) = self.remove_slot(index) else { break };
                            slot.topic.status.set(TopicState::Failed("ended by the broker".into()));
                            tracing::warn!(target = %slot.topic.target, "subscription ended by the broker");
                            slot.topic.send_members_to_resume();
                            break;
                        }
                        Poll::Pending => break,
                    }
                }
            }
        }
    }

    fn dispatch_batch(&mut self) {
        // Stable: ephemeral events (no id) keep their queue order, ahead of durable ones.
        self.batch.sort_by_key(|(_, d)| d.id.as_ref().map(|id| id.seq));
        let batch = std::mem::take(&mut self.batch);
        // Held events keep their topic, not their slot: a slot freed meanwhile may be reused.
        let topics: Vec<_> = batch.into_iter().filter_map(|(index, d)| Some((self.topic_at(index)?, d))).collect();
        let hole = self.hole_after.take();
        // A new connection (the link's word of it may come later): what was just drained can
        // follow a gap.
        let reconnected = self.note_connections();
        match self.catch_up {
            CatchUp::Idle if reconnected => {
                tracing::info!("the broker reconnected before its link said so; refilling first");
                self.metrics.live_gap(Gap::Reconnect);
                self.held.extend(topics);
                self.start_catch_up();
                return;
            }
            CatchUp::Idle => {}
            CatchUp::Holding => {
                // Events arrive: the link is back. Refill the gap before they go out.
                self.held.extend(topics);
                self.start_catch_up();
                return;
            }
            CatchUp::Running { .. } => {
                if hole.is_some() {
                    self.metrics.live_gap(Gap::FellBehind);
                }
                if reconnected {
                    self.metrics.live_gap(Gap::Reconnect);
                }
                if hole.is_some() || reconnected {
                    self.catch_up = CatchUp::Running { again: true };
                }
                self.held.extend(topics);
                return;
            }
        }
        let Some(hole) = hole else {
            for (topic, delivery) in topics {
                self.dispatch(&topic, delivery, false);
            }
            return;
        };
        // A subscription overflowed and the broker dropped what followed sequence `hole` on it:
        // what precedes the hole goes out now, what follows it waits for the refill from there.
        tracing::warn!(after = hole, "a subscription fell behind and the broker dropped events; refilling them");
        self.metrics.live_gap(Gap::FellBehind);
        let mut beyond = Vec::new();
        for (topic, delivery) in topics {
            if delivery.id.as_ref().is_some_and(|id| id.seq > hole) {
                beyond.push((topic, delivery));
            } else {
                self.dispatch(&topic, delivery, false);
            }
        }
        self.held.extend(beyond);
        if self.catch_up == CatchUp::Idle {
            self.start_catch_up();
        }
    }
}

impl Future for Dispatcher {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        this.ready.dispatcher.register(cx.waker());
        loop {
            while let Poll::Ready(cmd) = this.commands.poll_recv(cx) {
                match cmd {
                    Some(cmd) => this.command(cmd),
                    None => return Poll::Ready(()),
                }
            }
            this.bound_held();
            this.drain_ready();
            if this.batch.is_empty() {
                return Poll::Pending;
            }
            this.dispatch_batch();
            this.bound_held();
        }
    }
}

/// Renders `delivery` once and queues the frame on every member of `topic`. What reaches the
/// sockets is counted by the outboxes; a push that overflows a queue closes that stream as
/// `slow`, counted when its session ends. While traces are on, records it as one `deliver` span
/// (per event and pod, never per session).
fn fan_out(topic: &Topic, delivery: &Delivery, metrics: &Metrics) {
    metrics.received(&topic.target);
    let problem = delivery.problem();
    if trace::on() {
        let span = trace::deliver_span(delivery.trace.as_deref(), &topic.target, delivery.id.as_ref());
        let _entered = span.enter();
        let (sent, slow) = fan_out_frames(topic, delivery, problem, metrics);
        trace::record_delivery(&span, sent, slow, problem);
    } else {
        fan_out_frames(topic, delivery, problem, metrics);
    }
}

/// Returns how many sessions got the frame, and how many were cut off as too slow for it.
fn fan_out_frames(topic: &Topic, delivery: &Delivery, problem: Option<&'static str>, metrics: &Metrics) -> (u64, u64) {
    if let Some(reason) = problem {
        metrics.invalid();
        tracing::warn!(target = %topic.target, reason, "dropped an event that is not valid for SSE");
        return (0, 0);
    }
    let frame: Bytes = sse::event_frame(
        delivery.id.as_ref(),
        &delivery.event_type,
        &topic.target,
        delivery.from.as_deref(),
        &delivery.payload,
    );
    let seq = delivery.id.as_ref().map(|id| id.seq);
    let mut sent = 0;
    let mut slow = 0;
    let mut missed = 0;
    topic.for_each_member(|outbox| match outbox.push_event(frame.clone(), seq, delivery.published_at) {
        Ok(()) => sent += 1,
        // The outbox closed itself as slow.
        Err(Rejected::Full) => slow += 1,
        // The stream is ending anyway.
        Err(Rejected::Closed) => {}
        // An event lost in transit, refilled after the stream got a newer one on another
        // subject: the client refetches instead.
        Err(Rejected::Missed { cursor }) => {
            if let Some(id) = &delivery.id {
                let head = EventId { epoch: id.epoch.clone(), seq: cursor };
                outbox.reset_missed(sse::reset_frame(sse::RESET_MISSED, Some(&head)));
                missed += 1;
            }
        }
    });
    if missed > 0 {
        metrics.missed_resets(missed);
        tracing::warn!(target = %topic.target, seq, streams = missed, "streams got a newer event before this one, lost in transit; sent them a reset");
    }
    (sent, slow)
}
