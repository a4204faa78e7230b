//! The hub: one broker subscription per subject per pod, fanned out to every session.
//!
//! The invariant this file keeps: **every session sees durable events in stream-sequence order**,
//! across all its subjects. Browsers resume from the id of the last event they saw, so an event
//! delivered after a later one would be lost (or duplicated) by a reconnect.
//!
//! Per-subject subscriptions arrive on separate queues, so their order must be rebuilt. The
//! broker pushes into those queues from one task on the hub's single-threaded runtime, in
//! arrival order (the broker contract). The [`Dispatcher`] runs on that same thread, so whenever
//! it runs, what is queued is exactly a prefix of the arrival order. It drains *everything* that
//! is queued in one go, sorts that batch by sequence, then fans it out. Each batch therefore
//! follows the previous one, and within a batch the sort restores the order. "Everything" is
//! literal: the dispatcher runs outside tokio's cooperative budget, which would otherwise report
//! a queue as empty once a turn's budget is spent while other queues were drained further.
//!
//! After a gap in live delivery the hub refills it: it holds back live events, replays from the
//! stream everything after the last durable event it dispatched, fans that out, then releases
//! the held events that the replay did not already cover. A gap is:
//!
//! - a broker reconnect. The hub holds from the moment it hears the link dropped, and refills
//!   when it hears the link is back or when the first event arrives, whichever comes first. A
//!   refill that fails while the link is down is tried again once it is back. The link's news
//!   travels by another task than the events and can come after the new connection's first
//!   ones, so the dispatcher also reads the broker's connection count as it drains: a count that
//!   moved holds what it drained and refills first.
//! - a subscription that fell behind. A broker drops what arrives for a subscription whose
//!   queue is full (NATS's slow consumer), so a drain that finds a queue full dispatches what it
//!   drained up to that subscription's newest event, and holds what follows for the refill
//!   from there.
//!
//! A gap that opens while a refill is out gets a refill of its own, from where the first one
//! ended, before anything held is released. Sessions stay open throughout, and each stream's
//! own cursor (`Outbox`) drops any durable event at or below what that stream already has: a
//! stream that joined during a refill starts at the history's head and never receives the
//! refill's older events. Should the history start over (its stream recreated: another epoch,
//! or a live sequence going back), every stream is closed to resume on its own.
//!
//! Bookkeeping: a subscription's slot and the index from its target to that slot change
//! together (`Dispatcher::remove_slot`). A topic's holder count changes only under the
//! `topics` lock, its members only outside it, so a long fan-out over one topic never stalls
//! the joins and leaves of the others.
//!
//! Fan-out renders each event to its SSE frame once and pushes the same bytes into each member's
//! [`Outbox`] without waiting (a full outbox closes that session alone).

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::task::AtomicWaker;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use slab::Slab;
use tokio::sync::{mpsc, watch};

use crate::broker::{Broker, BrokerError, EventStream, Replay};
use crate::delivery::close_reason::CloseReason;
use crate::delivery::outbox::{Outbox, Rejected};
use crate::delivery::sse;
use crate::event::{Delivery, EventId, Target};
use crate::ops::metrics::Metrics;
use crate::ops::trace;

/// How long a join waits for a new subject's subscription before giving up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum TopicState {
    Pending,
    Live,
    Failed(String),
    Closed,
}

/// One subject of this pod, and the sessions that want it.
pub struct Topic {
    target: Target,
    members: RwLock<Slab<Arc<Outbox>>>,
    /// How many memberships hold this topic. Changed only under the hub's `topics` lock, so
    /// that the last one to leave and a new one joining agree on whether the topic lives; the
    /// members themselves are added and removed outside it.
    holders: AtomicUsize,
    state: watch::Sender<TopicState>,
    /// The dispatcher's slot for this topic's subscription (`NO_SLOT` until attached).
    slot: AtomicUsize,
}

const NO_SLOT: usize = usize::MAX;

/// Members a fan-out pushes to between two chances for a waiting join or leave to take the
/// member list (see [`Topic::for_each_member`]).
const FAN_OUT_STRIDE: usize = 256;

impl Topic {
    /// Calls `f` with every member, by key, giving the member list up to a waiting join or
    /// leave every `FAN_OUT_STRIDE` members. A broadcast that held it across every push kept
    /// each join and leave of its topic, on an HTTP worker serving thousands of other streams,
    /// waiting for all of them. A stream that joins meanwhile at a key already passed misses
    /// only what its resume covers, as one joining after the fan-out would; one at a key ahead
    /// is called, as one joining before would be.
    fn for_each_member(&self, mut f: impl FnMut(&Arc<Outbox>)) {
        let mut members = self.members.read();
        let mut key = 0;
        while key < members.capacity() {
            if key % FAN_OUT_STRIDE == FAN_OUT_STRIDE - 1 {
                RwLockReadGuard::bump(&mut members);
            }
            if let Some(outbox) = members.get(key) {
                f(outbox);
            }
            key += 1;
        }
    }
}

enum Command {
    Open(Arc<Topic>),
    Attach(Arc<Topic>, Result<EventStream, BrokerError>),
    Close(Arc<Topic>),
    /// The newest event id of the history when the hub started.
    Position(Option<EventId>),
    /// The broker's connection went down: what is published now is not delivered live.
    LinkDown,
    /// The broker reconnected (or, `restored`, the history's stream reaches it again on the
    /// same connection): refill what it missed.
    Gap {
        restored: bool,
    },
    /// The replay that refills the gap.
    CaughtUp(Result<Replay, BrokerError>),
}

/// Most events replayed to refill one outage; beyond it, sessions are closed to resume alone.
const CATCH_UP_MAX: usize = 100_000;

/// How long a refill that the history cannot answer (a NATS cluster electing the stream's
/// leader takes seconds) is tried again, every [`REFILL_RETRY`], with every stream kept open
/// and live events held, before every stream is sent to resume on its own.
const REFILL_PATIENCE: Duration = Duration::from_secs(30);
const REFILL_RETRY: Duration = Duration::from_millis(500);

/// The per-pod hub. Shared by all HTTP workers.
pub struct Hub {
    topics: Mutex<HashMap<Target, Arc<Topic>>>,
    commands: mpsc::UnboundedSender<Command>,
}

/// Why a session could not join.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    #[error("{0}")]
    Broker(#[from] BrokerError),
    #[error("timed out waiting for the subscription")]
    Timeout,
    #[error("subscription closed")]
    Closed,
}

/// A session's membership in its topics. Dropping it leaves them; the last member of a topic
/// to leave ends the subscription.
pub struct Membership {
    hub: Arc<Hub>,
    entries: Vec<(Arc<Topic>, usize)>,
}

impl Drop for Membership {
    fn drop(&mut self) {
        for (topic, key) in self.entries.drain(..) {
            self.hub.leave(&topic, key);
        }
    }
}

impl Hub {
    /// Creates the hub and starts its dispatcher on `runtime` (single-threaded; the broker's
    /// streams must be fed from it).
    pub fn start(broker: Arc<dyn Broker>, metrics: Arc<Metrics>, runtime: &tokio::runtime::Handle) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let capacity = broker.subscription_capacity().max(1);
        let dispatcher = Dispatcher {
            broker,
            commands: rx,
            commands_tx: tx.clone(),
            slots: Slab::new(),
            ready: Arc::new(ReadyQueue::default()),
            batch: Vec::new(),
            metrics,
            by_target: HashMap::new(),
            watermark: None,
            catch_up: CatchUp::Idle,
            capacity,
            renaming: false,
            hole_after: None,
            held: Vec::new(),
            refill_failing_since: None,
            known_connections: 0,
            connections: None,
        };
        let mut dispatcher = dispatcher;
        dispatcher.connections = dispatcher.broker.connections();
        dispatcher.note_connections();
        let position = dispatcher.broker.last_id();
        let link = dispatcher.broker.link();
        let broker = dispatcher.broker.clone();
        // Unconstrained: tokio's cooperative budget would otherwise make a subscription's queue
        // look empty part-way through a drain, and the next batch would then carry an event
        // older than ones already sent (see the top of this file).
        runtime.spawn(tokio::task::unconstrained(dispatcher));
        let commands = tx.clone();
        runtime.spawn(async move {
            let mut position = position;
            loop {
                match position.await {
                    Ok(id) => {
                        let _ = commands.send(Command::Position(id));
                        return;
                    }
                    Err(e) => tracing::debug!(error = %e, "history position not readable yet"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                position = broker.last_id();
            }
        });
        // Watched from the start, not once the position is read: a link that drops meanwhile
        // is a gap after the events already dispatched.
        if let Some(mut link) = link {
            // The first connection is no gap: the position read covers what came before it.
            let mut seen = *link.borrow_and_update();
            let commands = tx.clone();
            runtime.spawn(async move {
                while link.changed().await.is_ok() {
                    let now = *link.borrow_and_update();
                    let restored = now.restored != seen.restored;
                    let command = if !now.up {
                        Command::LinkDown
                    } else if now.connections != seen.connections || restored {
                        Command::Gap { restored }
                    } else {
                        continue;
                    };
                    seen = now;
                    if commands.send(command).is_err() {
                        return;
                    }
                }
            });
        }
        Arc::new(Hub { topics: Mutex::new(HashMap::new()), commands: tx })
    }

    /// Subjects this pod is subscribed to.
    pub fn subjects(&self) -> usize {
        self.topics.lock().len()
    }

    /// Adds `outbox` to the topics of `targets`, subscribing where this pod has no subscription
    /// yet, and resolves once every subscription is live at the broker.
    pub async fn join(self: &Arc<Self>, targets: &[Target], outbox: &Arc<Outbox>) -> Result<Membership, JoinError> {
        let mut membership = Membership { hub: self.clone(), entries: Vec::with_capacity(targets.len()) };
        let held: Vec<Arc<Topic>> = {
            let mut topics = self.topics.lock();
            targets
                .iter()
                .map(|target| {
                    let usable = topics
                        .get(target)
                        .filter(|t| matches!(*t.state.borrow(), TopicState::Pending | TopicState::Live))
                        .cloned();
                    let topic = usable.unwrap_or_else(|| {
                        // New, or a failed subscription that a fresh one replaces.
                        let topic = Arc::new(Topic {
                            target: target.clone(),
                            members: RwLock::new(Slab::new()),
                            holders: AtomicUsize::new(0),
                            state: watch::Sender::new(TopicState::Pending),
                            slot: AtomicUsize::new(NO_SLOT),
                        });
                        topics.insert(target.clone(), topic.clone());
                        let _ = self.commands.send(Command::Open(topic.clone()));
                        topic
                    });
                    topic.holders.fetch_add(1, Ordering::Relaxed);
                    topic
                })
                .collect()
        };
        // Outside the topics lock: a fan-out holding a topic's members must not stall every
        // other join and leave of the pod.
        let mut pending = Vec::new();
        for topic in held {
            let key = topic.members.write().insert(outbox.clone());
            if !matches!(*topic.state.borrow(), TopicState::Live) {
                pending.push(topic.state.subscribe());
            }
            membership.entries.push((topic, key));
        }
        for mut state in pending {
            let settled =
                tokio::time::timeout(SUBSCRIBE_TIMEOUT, state.wait_for(|s| !matches!(s, TopicState::Pending)))
                    .await
                    .map_err(|_| JoinError::Timeout)?
                    .map_err(|_| JoinError::Closed)?;
            match &*settled {
                TopicState::Live => {}
                TopicState::Failed(e) => return Err(JoinError::Broker(BrokerError::Unavailable(e.clone()))),
                TopicState::Pending | TopicState::Closed => return Err(JoinError::Closed),
            }
        }
        Ok(membership)
    }

    /// Queues `frame`, an ephemeral frame made on this pod (presence changes), on every stream
    /// of this pod that carries `target`.
    pub fn deliver_local(&self, target: &Target, frame: Bytes) {
        let topic = self.topics.lock().get(target).cloned();
        if let Some(topic) = topic {
            // A full queue closes that stream alone, as for any event.
            topic.for_each_member(|outbox| _ = outbox.push_event(frame.clone(), None, None));
        }
    }

    fn leave(&self, topic: &Arc<Topic>, key: usize) {
        // The member first, outside the topics lock (it may wait for a fan-out to finish).
        topic.members.write().try_remove(key);
        {
            let mut topics = self.topics.lock();
            if topic.holders.fetch_sub(1, Ordering::Relaxed) != 1 {
                return;
            }
            if topics.get(&topic.target).is_some_and(|t| Arc::ptr_eq(t, topic)) {
                topics.remove(&topic.target);
            }
        }
        topic.state.send_replace(TopicState::Closed);
        let _ = self.commands.send(Command::Close(topic.clone()));
    }
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
/// this file). Runs as a single future on the hub runtime.
struct Dispatcher {
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
    /// The history started over while events still came under the old epoch: the next epoch
    /// change is the new history's real name, not another new history.
    renaming: bool,
    /// Set by a drain that found a subscription's queue full: the broker may have dropped what
    /// came after this sequence on it.
    hole_after: Option<u64>,
    held: Vec<(Arc<Topic>, Delivery)>,
    /// When the refills of the current gap started failing with the link up.
    refill_failing_since: Option<std::time::Instant>,
    /// The broker's connection count, read at once (see [`Broker::connections`]), and the
    /// count the hub last accounted for: a difference is a reconnect, a gap to refill.
    connections: Option<crate::broker::ConnectionCount>,
    known_connections: u64,
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
                if matches!(*topic.state.borrow(), TopicState::Closed) {
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
                        topic.state.send_replace(TopicState::Live);
                    }
                    Err(e) => {
                        tracing::warn!(target = %topic.target, error = %e, "subscribe failed");
                        topic.state.send_replace(TopicState::Failed(e.to_string()));
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
                CatchUp::Idle => self.catch_up = CatchUp::Holding,
                CatchUp::Holding => {}
                CatchUp::Running { .. } => self.catch_up = CatchUp::Running { again: true },
            },
            Command::Gap { restored } => {
                // Word of a reconnect the dispatcher may have found first, from the count; a
                // stream restored on the same connection moves no count, and is always new.
                let unseen = self.note_connections() || self.connections.is_none() || restored;
                match self.catch_up {
                    CatchUp::Holding => self.start_catch_up(),
                    CatchUp::Idle if unseen => self.start_catch_up(),
                    CatchUp::Running { .. } if unseen => self.catch_up = CatchUp::Running { again: true },
                    CatchUp::Idle | CatchUp::Running { .. } => {}
                }
            }
            Command::CaughtUp(result) => {
                let again = self.catch_up == CatchUp::Running { again: true };
                self.catch_up = CatchUp::Idle;
                match result {
                    Ok(Replay::Events(events)) => {
                        self.refill_failing_since = None;
                        let seq = |i: Option<&(Target, Delivery)>| i.and_then(|(_, d)| d.id.as_ref()).map(|id| id.seq);
                        let (first, last) = (seq(events.first()), seq(events.last()));
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
                    other => {
                        // The gap can't be refilled: every stream reconnects and resumes alone.
                        match other {
                            Ok(Replay::Reset(reason, _)) => {
                                tracing::warn!(reason = reason.as_str(), "cannot refill the gap")
                            }
                            Err(e) => tracing::warn!(error = %e, "cannot refill the gap"),
                            Ok(Replay::Events(_)) => {}
                        }
                        self.refill_failing_since = None;
                        self.close_every_stream();
                    }
                }
                for (topic, delivery) in std::mem::take(&mut self.held) {
                    self.dispatch(&topic, delivery, true);
                }
            }
        }
    }

    /// Reads the broker's connection count; whether it moved since last read (always false for a
    /// broker that does not count).
    fn note_connections(&mut self) -> bool {
        let Some(count) = &self.connections else { return false };
        let now = count();
        let moved = now != self.known_connections;
        self.known_connections = now;
        moved
    }

    /// Starts refilling the gap after the watermark (nothing without one: the hub has not yet
    /// read where the history stood when it started).
    fn start_catch_up(&mut self) {
        let Some(after) = self.watermark.clone() else {
            // Nothing to refill from: send on what was held.
            self.catch_up = CatchUp::Idle;
            for (topic, delivery) in std::mem::take(&mut self.held) {
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
        let Some(after) = self.watermark.clone() else { return };
        let broker = self.broker.clone();
        let tx = self.commands_tx.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = tx.send(Command::CaughtUp(broker.replay(after, CATCH_UP_MAX).await));
        });
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
    /// events held during it), durable events at or below the watermark were already sent and
    /// are skipped. Outside a refill, sequences only grow within an epoch. Each stream's own
    /// cursor (`Outbox`) skips what it already has besides.
    fn dispatch(&mut self, topic: &Topic, delivery: Delivery, dedupe: bool) {
        if let Some(id) = &delivery.id {
            if let Some(w) = &self.watermark {
                let renamed = w.epoch != id.epoch;
                if renamed && self.renaming {
                    // The new history's epoch, now that the gateway has read it: the same
                    // history as the events since it started over, under its real name.
                    self.renaming = false;
                } else if renamed || (!dedupe && id.seq < w.seq) {
                    // Another epoch, or a live sequence going back (the gateway names events
                    // by the old epoch until it next reads the stream's): the history started
                    // over, its stream recreated. Every stream's cursor belongs to the old
                    // history, and the new one's events would be dropped as older than it:
                    // each stream resumes on its own instead, and gets a `reset`.
                    tracing::warn!(epoch = %id.epoch, seq = id.seq, watermark = %w, "the history started over; every stream resumes");
                    self.renaming = !renamed;
                    self.watermark = Some(id.clone());
                    self.close_every_stream();
                    return;
                } else if dedupe && id.seq <= w.seq {
                    return;
                }
            }
            self.watermark = Some(id.clone());
        }
        fan_out(topic, &delivery, &self.metrics);
    }

    /// Closes every stream of the pod with a `retry:`: each client resumes on its own.
    fn close_every_stream(&self) {
        for (_, slot) in self.slots.iter() {
            for (_, outbox) in slot.topic.members.read().iter() {
                outbox.close(CloseReason::Error, Some(sse::retry_frame(1000)));
            }
        }
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
                            slot.topic.state.send_replace(TopicState::Failed("ended by the broker".into()));
                            tracing::warn!(target = %slot.topic.target, "subscription ended by the broker");
                            for (_, outbox) in slot.topic.members.read().iter() {
                                outbox.close(CloseReason::Error, Some(sse::retry_frame(1000)));
                            }
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
        let mut beyond = Vec::new();
        for (topic, delivery) in topics {
            if delivery.id.as_ref().is_some_and(|id| id.seq > hole) {
                beyond.push((topic, delivery));
            } else {
                self.dispatch(&topic, delivery, false);
            }
        }
        self.held.extend(beyond);
        self.start_catch_up();
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
            this.drain_ready();
            if this.batch.is_empty() {
                return Poll::Pending;
            }
            this.dispatch_batch();
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
    topic.for_each_member(|outbox| match outbox.push_event(frame.clone(), seq, delivery.published_at) {
        Ok(()) => sent += 1,
        // The outbox closed itself as slow.
        Err(Rejected::Full) => slow += 1,
        // The stream is ending anyway.
        Err(Rejected::Closed) => {}
    });
    (sent, slow)
}

#[cfg(test)]
mod tests {
    //! The hub against a broker the test scripts: live events, ended subscriptions, gaps and
    //! refills happen exactly when the test says, on one thread.

    use std::collections::HashMap;
    use std::time::{Duration, Instant};

    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;
    use tokio::sync::oneshot;

    use super::*;
    use crate::broker::{Link, Resumption};
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
        head: u64,
        /// While set, subscriptions wait for `gate` before they are in place (the broker may
        /// already queue their events).
        gated: AtomicBool,
        gate: Arc<tokio::sync::Notify>,
        /// Connections made: moves before the link says so, as a NATS client's count does.
        connections: Arc<std::sync::atomic::AtomicU64>,
    }

    /// The test's side of it.
    struct Script {
        broker: Arc<Scripted>,
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
        }
    }

    impl Script {
        /// A broker whose history's head is `head` when the hub starts.
        fn new(head: u64) -> Script {
            let (replays_tx, replays) = mpsc::unbounded_channel();
            let (link, link_rx) = watch::channel(Link { up: true, connections: 1, restored: 0 });
            let broker = Arc::new(Scripted {
                feeds: Mutex::default(),
                replays: replays_tx,
                link: link_rx,
                head,
                gated: AtomicBool::new(false),
                gate: Arc::default(),
                connections: Arc::new(1.into()),
            });
            Script { broker, replays, link }
        }

        fn hub(&self) -> Arc<Hub> {
            Hub::start(self.broker.clone(), Arc::new(Metrics::new()), &tokio::runtime::Handle::current())
        }

        /// Delivers durable event `seq` live on `target`'s subscription; dropped, as a broker
        /// does, when the subscription already queues `CAPACITY` events.
        fn live(&self, target: &Target, seq: u64) {
            self.send(target, durable(seq));
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
            let events = events.into_iter().map(|(t, seq)| (t, durable(seq))).collect();
            assert!(reply.send(Ok(Replay::Events(events))).is_ok(), "the hub waits for its refill");
        }
    }

    impl Broker for Scripted {
        fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
            let (tx, rx) = mpsc::channel(CAPACITY);
            self.feeds.lock().insert(target, tx);
            let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|d| (d, rx)) });
            let gate = self.gated.load(Ordering::SeqCst).then(|| self.gate.clone());
            async move {
                if let Some(gate) = gate {
                    gate.notified().await;
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

        fn replay(&self, after: EventId, _max: usize) -> BoxFuture<'static, Result<Replay, BrokerError>> {
            let (tx, rx) = oneshot::channel();
            let _ = self.replays.send((Some(after), tx));
            async move { rx.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("dropped".into()))) }.boxed()
        }

        fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>> {
            let head = self.head;
            async move { Ok(Some(id(head))) }.boxed()
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
    }

    impl Reader {
        /// A stream on `targets` whose client starts at `cursor`.
        async fn join(hub: &Arc<Hub>, targets: &[Target], cursor: u64) -> (Reader, Membership) {
            let outbox = Outbox::new(1 << 20, Arc::new(Metrics::new()));
            let membership = hub.join(targets, &outbox).await.unwrap();
            outbox.release([], Some(cursor));
            (Reader { outbox, seqs: Vec::new() }, membership)
        }

        fn read(&mut self) -> &[u64] {
            let waker = futures_util::task::noop_waker();
            let mut cx = Context::from_waker(&waker);
            while let Poll::Ready(Some(chunk)) = self.outbox.poll_chunk(&mut cx) {
                let text = String::from_utf8(chunk.to_vec()).unwrap();
                for line in text.lines() {
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
        let left: Vec<_> =
            [0, 1, FAN_OUT_STRIDE - 1, FAN_OUT_STRIDE, 3 * FAN_OUT_STRIDE + 5].into_iter().rev().collect();
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
        Script::refill(second, (12..=15).map(|seq| (u.clone(), seq)));
        script.live(&u, 17);
        assert_eq!(s.until(17).await, (11..=17).collect::<Vec<_>>(), "every event once, in order");
        assert_eq!(s.outbox.close_reason(), None, "the stream stayed open");
    }

    #[tokio::test]
    async fn a_history_that_starts_over_sends_every_stream_to_resume() {
        // The stream was recreated: its sequences start again from 1, named by the old epoch
        // until the gateway reads the new one, or by the new one already.
        for epoch in ["e", "e2"] {
            let script = Script::new(10);
            let (hub, u, a, _a) = streaming_after_11(&script).await;
            script.send(&u, durable_in(epoch, 1));
            // Not dropped silently as older than the stream's cursor: the stream resumes.
            assert_eq!(a.closed().await, CloseReason::Error, "the stream is sent to resume ({epoch})");
            // A stream that opens afterwards gets the new history's events, also once the
            // gateway names them by the new epoch.
            let (mut b, _b) = Reader::join(&hub, std::slice::from_ref(&u), 1).await;
            script.send(&u, durable_in(epoch, 2));
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
}
