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
//! After a broker outage the hub refills the gap: it holds back live events, replays from the
//! stream everything after the last durable event it dispatched, fans that out, then releases
//! the held events that the replay did not already cover. Sessions stay open throughout.
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
use parking_lot::{Mutex, RwLock};
use slab::Slab;
use tokio::sync::{mpsc, watch};

use crate::broker::{Broker, BrokerError, EventStream, Replay};
use crate::event::{Delivery, EventId, Target};
use crate::metrics::Metrics;
use crate::outbox::{CloseReason, Outbox, Rejected};
use crate::sse;
use crate::trace;

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
    state: watch::Sender<TopicState>,
    /// The dispatcher's slot for this topic's subscription (`NO_SLOT` until attached).
    slot: AtomicUsize,
}

const NO_SLOT: usize = usize::MAX;

enum Command {
    Open(Arc<Topic>),
    Attach(Arc<Topic>, Result<EventStream, BrokerError>),
    Close(Arc<Topic>),
    /// The newest event id of the history when the hub started.
    Position(Option<EventId>),
    /// The broker reconnected: events may have been missed.
    Reconnected,
    /// The replay that refills the gap.
    CaughtUp(Result<Replay, BrokerError>),
}

/// Most events replayed to refill one outage; beyond it, sessions are closed to resume alone.
const CATCH_UP_MAX: usize = 100_000;

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
            catching_up: false,
            held: Vec::new(),
        };
        let position = dispatcher.broker.last_id();
        let reconnects = dispatcher.broker.reconnects();
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
                        break;
                    }
                    Err(e) => tracing::debug!(error = %e, "history position not readable yet"),
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                position = broker.last_id();
            }
            let Some(mut reconnects) = reconnects else { return };
            reconnects.borrow_and_update();
            while reconnects.changed().await.is_ok() {
                if commands.send(Command::Reconnected).is_err() {
                    return;
                }
            }
        });
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
        let mut pending = Vec::new();
        {
            let mut topics = self.topics.lock();
            for target in targets {
                let usable = topics
                    .get(target)
                    .filter(|t| matches!(*t.state.borrow(), TopicState::Pending | TopicState::Live))
                    .cloned();
                let topic = match usable {
                    Some(topic) => topic,
                    None => {
                        // New, or a failed subscription that a fresh one replaces.
                        let topic = Arc::new(Topic {
                            target: target.clone(),
                            members: RwLock::new(Slab::new()),
                            state: watch::Sender::new(TopicState::Pending),
                            slot: AtomicUsize::new(NO_SLOT),
                        });
                        topics.insert(target.clone(), topic.clone());
                        let _ = self.commands.send(Command::Open(topic.clone()));
                        topic
                    }
                };
                let key = topic.members.write().insert(outbox.clone());
                if !matches!(*topic.state.borrow(), TopicState::Live) {
                    pending.push(topic.state.subscribe());
                }
                membership.entries.push((topic, key));
            }
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
            for (_, outbox) in topic.members.read().iter() {
                // A full queue closes that stream alone, as for any event.
                let _ = outbox.push_event(frame.clone(), None, None);
            }
        }
    }

    fn leave(&self, topic: &Arc<Topic>, key: usize) {
        let mut topics = self.topics.lock();
        let mut members = topic.members.write();
        members.try_remove(key);
        if members.is_empty() {
            if topics.get(&topic.target).is_some_and(|t| Arc::ptr_eq(t, topic)) {
                topics.remove(&topic.target);
            }
            topic.state.send_replace(TopicState::Closed);
            let _ = self.commands.send(Command::Close(topic.clone()));
        }
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
    /// While refilling a gap, live events wait in `held`.
    catching_up: bool,
    held: Vec<(usize, Delivery)>,
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
                        entry.insert(Slot { topic: topic.clone(), stream, waker });
                        topic.state.send_replace(TopicState::Live);
                    }
                    Err(e) => {
                        tracing::warn!(target = %topic.target, error = %e, "subscribe failed");
                        topic.state.send_replace(TopicState::Failed(e.to_string()));
                    }
                }
            }
            Command::Close(topic) => {
                let key = topic.slot.swap(NO_SLOT, Ordering::Relaxed);
                if self.slots.get(key).is_some_and(|s| Arc::ptr_eq(&s.topic, &topic)) {
                    self.slots.remove(key);
                    if self.by_target.get(&topic.target) == Some(&key) {
                        self.by_target.remove(&topic.target);
                    }
                }
            }
            Command::Position(id) => {
                if self.watermark.is_none() {
                    self.watermark = id;
                }
            }
            Command::Reconnected => {
                let Some(after) = self.watermark.clone() else { return };
                if self.catching_up {
                    return;
                }
                tracing::info!(after = %after, "reconnected to the broker; refilling the gap from the history");
                self.catching_up = true;
                let replay = self.broker.replay(None, after, CATCH_UP_MAX);
                let tx = self.commands_tx.clone();
                tokio::spawn(async move {
                    let _ = tx.send(Command::CaughtUp(replay.await));
                });
            }
            Command::CaughtUp(result) => {
                self.catching_up = false;
                match result {
                    Ok(Replay::Events(events)) => {
                        tracing::info!(events = events.len(), "gap refilled");
                        for (target, delivery) in events {
                            if let Some(&index) = self.by_target.get(&target) {
                                self.dispatch(index, delivery, false);
                            }
                        }
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
                        for (_, slot) in self.slots.iter() {
                            for (_, outbox) in slot.topic.members.read().iter() {
                                outbox.close(CloseReason::Error, Some(sse::retry_frame(1000)));
                            }
                        }
                    }
                }
                for (index, delivery) in std::mem::take(&mut self.held) {
                    self.dispatch(index, delivery, true);
                }
            }
        }
    }

    /// Fans out one event and moves the watermark. With `dedupe` (events held during a refill),
    /// durable events at or below the watermark were already sent by the replay and are skipped.
    /// Outside a refill, sequences only grow, unless the stream was recreated: then the
    /// watermark simply follows.
    fn dispatch(&mut self, index: usize, delivery: Delivery, dedupe: bool) {
        if let Some(id) = &delivery.id {
            match &self.watermark {
                Some(w) if dedupe && w.epoch == id.epoch && id.seq <= w.seq => return,
                _ => self.watermark = Some(id.clone()),
            }
        }
        if let Some(slot) = self.slots.get(index) {
            fan_out(&slot.topic, &delivery, &self.metrics);
        }
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
                let waker = Waker::from(slot.waker.clone());
                let mut cx = Context::from_waker(&waker);
                loop {
                    match slot.stream.poll_next_unpin(&mut cx) {
                        Poll::Ready(Some(delivery)) => self.batch.push((index, delivery)),
                        Poll::Ready(None) => {
                            // The broker ended this subscription: its sessions must reconnect.
                            let slot = self.slots.remove(index);
                            slot.topic.slot.store(NO_SLOT, Ordering::Relaxed);
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
        if self.catching_up {
            self.held.append(&mut self.batch);
            return;
        }
        let batch = std::mem::take(&mut self.batch);
        for (index, delivery) in batch {
            self.dispatch(index, delivery, false);
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
    if trace::on() {
        let span = trace::deliver_span(delivery.trace.as_deref(), &topic.target, delivery.id.as_ref());
        let _entered = span.enter();
        let (sent, slow) = fan_out_frames(topic, delivery, metrics);
        trace::record_delivery(&span, sent, slow, delivery.problem());
    } else {
        fan_out_frames(topic, delivery, metrics);
    }
}

/// Returns how many sessions got the frame, and how many were cut off as too slow for it.
fn fan_out_frames(topic: &Topic, delivery: &Delivery, metrics: &Metrics) -> (u64, u64) {
    metrics.received(&topic.target);
    if let Some(reason) = delivery.problem() {
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
    let members = topic.members.read();
    let mut sent = 0;
    let mut slow = 0;
    for (_, outbox) in members.iter() {
        match outbox.push_event(frame.clone(), seq, delivery.published_at) {
            Ok(()) => sent += 1,
            // The outbox closed itself as slow.
            Err(Rejected::Full) => slow += 1,
            // The stream is ending anyway.
            Err(Rejected::Closed) => {}
        }
    }
    (sent, slow)
}
