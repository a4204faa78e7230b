//! The hub: one broker subscription per subject per pod, fanned out to every session.
//!
//! The invariant the hub keeps: **every session sees durable events in stream-sequence order**,
//! across all its subjects. Browsers resume from the id of the last event they saw, so an event
//! delivered after a later one would be lost (or duplicated) by a reconnect.
//!
//! Per-subject subscriptions arrive on separate queues, so their order must be rebuilt. The
//! broker pushes into those queues from one task on the hub's single-threaded runtime, in
//! arrival order (the broker contract). The dispatcher (`dispatcher.rs`) runs on that same
//! thread, so whenever it runs, what is queued is exactly a prefix of the arrival order. It
//! drains *everything* that is queued in one go, sorts that batch by sequence, then fans it
//! out. Each batch therefore follows the previous one, and within a batch the sort restores the
//! order. "Everything" is literal: the dispatcher runs outside tokio's cooperative budget, which
//! would otherwise report a queue as empty once a turn's budget is spent while other queues
//! were drained further.
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
//! - a subject's broken chain. The stream's republish names, on each event, the event stored
//!   before it on the same subject (`Nats-Last-Sequence`). One newer than the last event the
//!   hub sent on that subject means events on it never arrived: a route between the pod's NATS
//!   node and the stream's leader dropped for a moment, and the leader republished them to no
//!   one here. The connection never dropped, and the stream-reach check may notice only later,
//!   or never. The hub holds that event and refills from the subject's last event, sending
//!   only what never reached its topic (each topic remembers the newest event sent on it, and
//!   starts where its first stream found the history's head). A subject quiet for so
//!   long that a refill from its last event would read far back sends its own streams to
//!   resume instead.
//! - a live sequence going back within an epoch: a copy of an event already sent (a new stream
//!   leader republishing what its predecessor did), or a history that started over under the
//!   epoch the gateway last read. The refill from where the hub is tells which: a copy is
//!   dropped with the refill's duplicates, a new history answers with a reset.
//!
//! A refill starts from the newest durable event the hub dispatched, or, before any, from where
//! the history stood when the hub started. Should the history not answer then, the first
//! cursor a stream reads from it takes that place (`Membership::started_at`).
//!
//! A gap that opens while a refill is out gets a refill of its own, from where the first one
//! ended, before anything held is released. Sessions stay open throughout, and each stream's
//! own cursor (`Outbox`) drops any durable event at or below what that stream already has: a
//! stream that joined during a refill starts at the history's head and never receives the
//! refill's older events. Should the history start over (its stream recreated: another epoch, or a
//! refill answered with a reset), or the live events held pass their bound (`HELD_MAX_BYTES`),
//! every stream is closed to resume on its own.
//!
//! Bookkeeping: a subscription's slot and the index from its target to that slot change
//! together (`Dispatcher::remove_slot`). A topic's holder count changes only under the
//! `topics` lock, its members only outside it, so a long fan-out over one topic never stalls
//! the joins and leaves of the others.
//!
//! Fan-out renders each event to its SSE frame once and pushes the same bytes into each member's
//! [`Outbox`] without waiting (a full outbox closes that session alone).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::{Mutex, RwLock, RwLockReadGuard};
use slab::Slab;
use tokio::sync::{Notify, mpsc};

use crate::broker::{Broker, BrokerError, EventStream, Replay};
use crate::delivery::close_reason::CloseReason;
use crate::delivery::outbox::Outbox;
use crate::delivery::sse;
use crate::event::{EventId, Target};
use crate::ops::metrics::Metrics;

/// The ordered merge of the subscriptions, the refills of gaps, and the fan-out.
mod dispatcher;

use dispatcher::Dispatcher;

/// How often the hub asks where the history stands until it answers.
const POSITION_RETRY: Duration = Duration::from_millis(250);

/// How long a join waits for a new subject's subscription before giving up.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
enum TopicState {
    Pending,
    Live,
    Failed(String),
    Closed,
}

/// A topic's [`TopicState`], and a wake-up for the joins waiting on it to settle.
///
/// Not a `tokio::sync::watch`: its shared state is about 360 bytes, held by every topic, which
/// with one user per stream is every stream; this is about 80.
struct TopicStatus {
    state: Mutex<TopicState>,
    changed: Notify,
}

impl TopicStatus {
    fn new() -> Self {
        TopicStatus { state: Mutex::new(TopicState::Pending), changed: Notify::new() }
    }

    fn is(&self, f: impl FnOnce(&TopicState) -> bool) -> bool {
        f(&self.state.lock())
    }

    fn set(&self, state: TopicState) {
        *self.state.lock() = state;
        self.changed.notify_waiters();
    }

    /// The state once it is no longer `Pending`.
    async fn settled(&self) -> TopicState {
        loop {
            // Created before the check: a `set` between the check and the wait still wakes it.
            let changed = self.changed.notified();
            match &*self.state.lock() {
                TopicState::Pending => {}
                settled => return settled.clone(),
            }
            changed.await;
        }
    }
}

/// One subject of this pod, and the sessions that want it.
pub struct Topic {
    target: Target,
    members: RwLock<Slab<Arc<Outbox>>>,
    /// How many memberships hold this topic. Changed only under the hub's `topics` lock, so
    /// that the last one to leave and a new one joining agree on whether the topic lives; the
    /// members themselves are added and removed outside it.
    holders: AtomicUsize,
    status: TopicStatus,
    /// The dispatcher's slot for this topic's subscription (`NO_SLOT` until attached).
    slot: AtomicUsize,
    /// The newest durable sequence the dispatcher sent to this topic's members (0: none yet).
    /// Only the dispatcher's thread reads and writes it.
    last_sent: AtomicU64,
    /// Where the history stood when the first of its members read it, after the topic's
    /// subscription was in place (`UNKNOWN` until one did): every member has every event of
    /// the subject up to it (its cursor, or its replay, covers them), and every later one must
    /// arrive live. So before any event is sent here, an event naming an earlier one after it
    /// names one lost in transit. The lowest such read counts, so that a member that read early
    /// is never taken for one that has more.
    chain_start: AtomicU64,
}

const NO_SLOT: usize = usize::MAX;

/// A [`Topic::chain_start`] no member has set.
const UNKNOWN: u64 = u64::MAX;

/// Members a fan-out pushes to between two chances for a waiting join or leave to take the
/// member list (see [`Topic::for_each_member`]).
const FAN_OUT_STRIDE: usize = 256;

/// How long a stream the hub closes tells its client to wait before it resumes (`retry:`).
const RESUME_AFTER_MS: u64 = 1000;

impl Topic {
    /// Closes every stream on this topic with a `retry:`: each client resumes on its own, from
    /// the last event it got.
    fn send_members_to_resume(&self) {
        for (_, outbox) in self.members.read().iter() {
            outbox.close(CloseReason::Error, Some(sse::retry_frame(RESUME_AFTER_MS)));
        }
    }

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
    /// The newest event id of the history when the hub started, or (read first) when a stream
    /// started.
    Position(Option<EventId>),
    /// The broker's connection went down: what is published now is not delivered live.
    LinkDown,
    /// The broker reconnected (or, `restored`, the history's stream reaches it again on the
    /// same connection): refill what it missed.
    Gap {
        restored: bool,
    },
    /// The replay that refills the gap, asked for in the dispatcher's refill generation named.
    CaughtUp(u64, Result<Replay, BrokerError>),
}

/// The per-pod hub. Shared by all HTTP workers.
pub struct Hub {
    topics: Mutex<HashMap<Target, Arc<Topic>>>,
    commands: mpsc::UnboundedSender<Command>,
    /// Whether a stream's first cursor went to the dispatcher (see [`Hub::stream_started_at`]);
    /// cleared by the dispatcher when it forgets where it was (`Dispatcher::bound_held`).
    stream_position_sent: Arc<AtomicBool>,
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

impl Membership {
    /// The stream holding this membership found the history's head at `head`, after its
    /// subscriptions were in place (its first cursor, the head its resume read, or the one its
    /// `reset` names): where the chain of each of its topics starts, if it is the first to say
    /// so, and where the hub refills a gap from until it has read the history itself. A topic
    /// that has sent events already, with no start set (its first members could not read the
    /// head), keeps its chain where its last event is: a later head would hide from those
    /// members an event lost in transit since.
    pub fn started_at(&self, head: &EventId) {
        for (topic, _) in &self.entries {
            if topic.chain_start.load(Ordering::Relaxed) == UNKNOWN && topic.last_sent.load(Ordering::Relaxed) > 0 {
                continue;
            }
            topic.chain_start.fetch_min(head.seq, Ordering::Relaxed);
        }
        self.hub.stream_started_at(head);
    }
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
        Hub::start_holding(broker, metrics, runtime, dispatcher::HELD_MAX_BYTES)
    }

    /// [`Hub::start`], holding at most `held_max_bytes` of live events while it refills a gap.
    fn start_holding(
        broker: Arc<dyn Broker>,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
        held_max_bytes: usize,
    ) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let stream_position_sent = Arc::new(AtomicBool::new(false));
        let dispatcher =
            Dispatcher::new(broker.clone(), metrics, rx, tx.clone(), held_max_bytes, stream_position_sent.clone());
        let position = broker.last_id();
        let link = broker.link();
        // Unconstrained: tokio's cooperative budget would otherwise make a subscription's queue
        // look empty part-way through a drain, and the next batch would then carry an event
        // older than ones already sent (see the top of `mod.rs`).
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
                tokio::time::sleep(POSITION_RETRY).await;
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
        Arc::new(Hub { topics: Mutex::new(HashMap::new()), commands: tx, stream_position_sent })
    }

    /// The history stood at `id` after a new stream's subscriptions were in place (the stream's
    /// first cursor, or its reset's, read from the history's head). Until the hub has read
    /// where the history stood itself (it may not answer when the pod starts), a gap in live
    /// delivery is refilled from the first such id: else the gap's events, which that stream is
    /// owed, would be lost to it. Every stream that opens after it starts at or after it, so
    /// its first is the one that counts.
    fn stream_started_at(&self, id: &EventId) {
        if !self.stream_position_sent.swap(true, Ordering::Relaxed) {
            let _ = self.commands.send(Command::Position(Some(id.clone())));
        }
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
                        .filter(|t| t.status.is(|s| matches!(s, TopicState::Pending | TopicState::Live)))
                        .cloned();
                    let topic = usable.unwrap_or_else(|| {
                        // New, or a failed subscription that a fresh one replaces.
                        let topic = Arc::new(Topic {
                            target: target.clone(),
                            members: RwLock::new(Slab::new()),
                            holders: AtomicUsize::new(0),
                            status: TopicStatus::new(),
                            slot: AtomicUsize::new(NO_SLOT),
                            last_sent: AtomicU64::new(0),
                            chain_start: AtomicU64::new(UNKNOWN),
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
        for topic in held {
            let key = topic.members.write().insert(outbox.clone());
            membership.entries.push((topic, key));
        }
        for (topic, _) in &membership.entries {
            let settled = tokio::time::timeout(SUBSCRIBE_TIMEOUT, topic.status.settled())
                .await
                .map_err(|_| JoinError::Timeout)?;
            match settled {
                TopicState::Live => {}
                TopicState::Failed(e) => return Err(JoinError::Broker(BrokerError::Unavailable(e))),
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
        topic.status.set(TopicState::Closed);
        let _ = self.commands.send(Command::Close(topic.clone()));
    }
}

#[cfg(test)]
mod tests;
