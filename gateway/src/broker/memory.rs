//! The in-process broker of `dev` mode: the same semantics as NATS + JetStream (sequence ids
//! from one counter, bounded per-subject history, resume, ephemeral events), nothing to install.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};

use super::{Broker, BrokerError, EventStream, HistoryLimits, Listed, Replay, Resumption};
use crate::broker::resume::{self, ResetReason, Start};
use crate::event::{Delivery, EventId, Outgoing, Target};

/// Events a subscriber may fall behind by before it misses some (as NATS' slow consumer).
const SUBSCRIBER_CAPACITY: usize = 64 * 1024;

enum Command {
    Subscribe { target: Target, reply: oneshot::Sender<EventStream> },
    Publish { targets: Vec<Target>, event: Outgoing, reply: oneshot::Sender<Vec<EventId>> },
    Replay { targets: Vec<Target>, after: EventId, max: usize, reply: oneshot::Sender<Replay> },
    Resume { targets: Vec<Target>, after: EventId, max: usize, reply: oneshot::Sender<Resumption> },
    LastId { reply: oneshot::Sender<Option<EventId>> },
}

/// Handle to the in-process broker; its state lives in one task on the hub runtime.
pub struct MemoryBroker {
    commands: mpsc::UnboundedSender<Command>,
}

/// The retained events of one subject.
#[derive(Default)]
struct History {
    events: VecDeque<(Instant, Delivery)>,
    /// Highest sequence dropped by the limits: a resume from below it has a gap.
    dropped_up_to: u64,
}

impl History {
    fn trim(&mut self, limits: &HistoryLimits, now: Instant) {
        while let Some((at, d)) = self.events.front() {
            let too_many = self.events.len() as u64 > limits.max_per_subject;
            if !too_many && now.duration_since(*at) < limits.max_age {
                break;
            }
            self.dropped_up_to = d.id.as_ref().map_or(self.dropped_up_to, |id| id.seq);
            self.events.pop_front();
        }
    }
}

struct State {
    epoch: Arc<str>,
    limits: HistoryLimits,
    seq: u64,
    subscribers: HashMap<Target, Vec<mpsc::Sender<Delivery>>>,
    history: HashMap<Target, History>,
    /// The ids of events published with an idempotency key, by `<id>/<target>`, for the
    /// history's duplicate window.
    published: HashMap<String, (Instant, EventId)>,
}

impl MemoryBroker {
    /// Starts the broker task on `runtime` (the hub's runtime: see the ordering contract).
    pub fn start(runtime: &tokio::runtime::Handle, limits: HistoryLimits) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let state = State {
            epoch: Arc::from(format!("{:x}", rand::random::<u32>())),
            limits,
            seq: 0,
            subscribers: HashMap::new(),
            history: HashMap::new(),
            published: HashMap::new(),
        };
        runtime.spawn(run(rx, state));
        Arc::new(MemoryBroker { commands: tx })
    }

    fn call<T: Send + 'static>(
        &self,
        make: impl FnOnce(oneshot::Sender<T>) -> Command,
    ) -> BoxFuture<'static, Result<T, BrokerError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.commands.send(make(reply));
        async move {
            sent.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())
        }
        .boxed()
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>, mut state: State) {
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Subscribe { target, reply } => {
                let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
                state.subscribers.entry(target).or_default().push(tx);
                let _ = reply.send(Box::pin(ReceiverStream(rx)));
            }
            Command::Publish { targets, event, reply } => {
                let _ = reply.send(state.publish(targets, event));
            }
            Command::Replay { targets, after, max, reply } => {
                let _ = reply.send(state.replay(&targets, &after, max));
            }
            Command::Resume { targets, after, max, reply } => {
                // The history is in memory already: the pages only hand it out.
                let head = Some(EventId { epoch: state.epoch.clone(), seq: state.seq });
                let resumption = match state.replay(&targets, &after, max) {
                    Replay::Reset(reason, head) => Resumption::Reset(reason, head),
                    Replay::Events(events) if events.is_empty() => Resumption::UpToDate { head },
                    Replay::Events(events) => Resumption::Replay { pages: Box::new(Listed(events.into())), head },
                };
                let _ = reply.send(resumption);
            }
            Command::LastId { reply } => {
                let _ = reply.send(Some(EventId { epoch: state.epoch.clone(), seq: state.seq }));
            }
        }
    }
}

impl State {
    fn publish(&mut self, targets: Vec<Target>, event: Outgoing) -> Vec<EventId> {
        let now = Instant::now();
        // As the NATS broker stamps Herald-Published-At, for the delivery latency.
        let published_at = crate::ops::metrics::unix_nanos();
        let mut ids = Vec::new();
        if event.id.is_some() && event.durable {
            let window = self.limits.dedup_window;
            self.published.retain(|_, (at, _)| now.duration_since(*at) < window);
        }
        for target in targets {
            // A repeat of an idempotent publish: the first one's id, nothing stored or sent.
            let key = event.id.as_ref().filter(|_| event.durable).map(|id| target.dedup_key(id));
            if let Some((_, id)) = key.as_ref().and_then(|k| self.published.get(k)) {
                ids.push(id.clone());
                continue;
            }
            let id = event.durable.then(|| {
                self.seq += 1;
                EventId { epoch: self.epoch.clone(), seq: self.seq }
            });
            let delivery = Delivery {
                event_type: event.event_type.clone(),
                payload: event.payload.clone(),
                id,
                from: event.from.clone(),
                trace: event.trace.clone().map(Box::new),
                published_at: Some(published_at),
                previous: None,
            };
            if let Some(id) = &delivery.id {
                ids.push(id.clone());
                if let Some(key) = key {
                    self.published.insert(key, (now, id.clone()));
                }
                let history = self.history.entry(target.clone()).or_default();
                history.events.push_back((now, delivery.clone()));
                history.trim(&self.limits, now);
            }
            if let Some(subs) = self.subscribers.get_mut(&target) {
                subs.retain(|s| !s.is_closed());
                for s in subs.iter() {
                    let _ = s.try_send(delivery.clone());
                }
                if subs.is_empty() {
                    self.subscribers.remove(&target);
                }
            }
        }
        ids
    }

    fn replay(&mut self, targets: &[Target], after: &EventId, max: usize) -> Replay {
        let head = Some(EventId { epoch: self.epoch.clone(), seq: self.seq });
        let whole = resume::Bounds { epoch: &self.epoch, first: 1, last: self.seq };
        match resume::start(after, &whole) {
            Start::Replay => {}
            Start::UpToDate => return Replay::Events(Vec::new()),
            Start::Reset(reason) => return Replay::Reset(reason, head),
        }
        let now = Instant::now();
        let mut events = Vec::new();
        for target in targets {
            let Some(history) = self.history.get_mut(target) else { continue };
            history.trim(&self.limits, now);
            // Each subject's history starts after the newest event its limits dropped.
            let kept = resume::Bounds { first: history.dropped_up_to + 1, ..whole.clone() };
            if let Start::Reset(reason) = resume::start(after, &kept) {
                return Replay::Reset(reason, head);
            }
            for (_, d) in &history.events {
                if d.id.as_ref().is_some_and(|id| id.seq > after.seq) {
                    events.push((target.clone(), d.clone()));
                }
            }
            if events.len() > max {
                return Replay::Reset(ResetReason::TooMany, head);
            }
        }
        events.sort_by_key(|(_, d)| d.id.as_ref().map(|id| id.seq));
        Replay::Events(events)
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
        self.call(|reply| Command::Subscribe { target, reply })
    }

    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>> {
        self.call(|reply| Command::Publish { targets, event, reply })
    }

    fn replay(
        &self,
        targets: Vec<Target>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Replay, BrokerError>> {
        self.call(|reply| Command::Replay { targets, after, max, reply })
    }

    fn resume(
        &self,
        targets: Vec<Target>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Resumption, BrokerError>> {
        self.call(|reply| Command::Resume { targets, after, max, reply })
    }

    fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>> {
        self.call(|reply| Command::LastId { reply })
    }

    fn subscription_capacity(&self) -> usize {
        SUBSCRIBER_CAPACITY
    }

    fn is_connected(&self) -> bool {
        !self.commands.is_closed()
    }
}

fn stopped() -> BrokerError {
    BrokerError::Unavailable("the in-process broker has stopped".into())
}

/// A `Stream` over an mpsc receiver, without pulling in tokio-stream for one adapter.
struct ReceiverStream<T>(mpsc::Receiver<T>);

impl<T> futures_util::Stream for ReceiverStream<T> {
    type Item = T;
    fn poll_next(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Option<T>> {
        self.0.poll_recv(cx)
    }
}
