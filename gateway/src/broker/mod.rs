//! Where events come from and go to: NATS in production, an in-process broker in `dev` mode.
//!
//! Both implement [`Broker`] with the same semantics, so the hub, the sessions and the HTTP API
//! never know which one they talk to.
//!
//! Ordering contract: the streams returned by [`Broker::subscribe`] are fed, in arrival order,
//! by tasks running on the hub's single-threaded runtime (NATS: async-nats' connection task,
//! created there; memory: the broker's own task, spawned there). The hub relies on this to
//! merge many subjects into one correctly ordered flow (see `delivery/hub/mod.rs`).

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::broker::resume::ResetReason;
use crate::event::{Delivery, EventId, Outgoing, Target};

/// The in-process broker of `dev` mode, with the semantics of NATS and JetStream.
pub(crate) mod memory;
/// NATS and JetStream.
pub mod nats;
/// What a resume owes a client, decided once for every broker and path.
pub(crate) mod resume;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;

/// Live events of one subject.
pub type EventStream = Pin<Box<dyn Stream<Item = Delivery> + Send>>;

/// The raw stats reports of the fleet's gateways.
pub type ReportStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// The broker's connection, as the hub watches it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Link {
    pub up: bool,
    /// Connections made so far: a new one means a reconnect, even when the moment it was down
    /// went unseen.
    pub connections: u64,
    /// Times the history's stream reached the gateway again, on the same connection, after it
    /// was cut off (a NATS node apart from the others): each is a gap as a reconnect is.
    pub restored: u64,
}

/// Reads a broker's connection count (see [`Broker::connections`]).
pub type ConnectionCount = Arc<dyn Fn() -> u64 + Send + Sync>;

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker can't be reached right now; retrying later may work.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation.
    #[error("message broker refused the request: {0}")]
    Rejected(String),
    /// The broker did not confirm the operation in time: it may yet happen, or not. (An
    /// ephemeral publish: an attempt again may deliver it twice.)
    #[error("message broker did not confirm in time: {0}")]
    Unsure(String),
}

/// What a resuming client gets.
pub enum Replay {
    /// Every retained event of its subjects after its id, in sequence order.
    Events(Vec<(Target, Delivery)>),
    /// The history cannot cover the gap: the client must refetch its state. Carries the id of
    /// the newest event in the history, where the client's cursor moves (none without history).
    Reset(ResetReason, Option<EventId>),
}

/// Where a resuming client stands (see `resume.rs`), with what it is owed.
///
/// `head` is the history's newest event as the resume read it, the stream's subscriptions in
/// place: every event after it comes live, so that is where the chains of the topics it opens
/// start (`Membership::started_at`). `None` without history.
pub enum Resumption {
    /// It missed nothing on its subjects: live events continue after its id.
    UpToDate { head: Option<EventId> },
    /// The history cannot cover the gap: the client must refetch its state. Carries the id of
    /// the newest event in the history, where the client's cursor moves (none without history).
    Reset(ResetReason, Option<EventId>),
    /// It missed events: read them page by page, as its stream drains.
    Replay { pages: Box<dyn Pages>, head: Option<EventId> },
}

/// A client's replay, read a page at a time, so that a stream holds no more of it than its
/// client can take (the stream's queue limit, plus one event).
pub trait Pages: Send {
    /// The next missed events, in sequence order: as many as fit in `room` bytes of SSE frames
    /// (by [`frame_estimate`]), and at least one whatever its size.
    fn next(&mut self, room: usize) -> BoxFuture<'_, Result<Page, BrokerError>>;
}

/// About how many bytes an event's SSE frame takes: its payload, its type, its channel, and
/// the `id:`, `event:` and envelope around them (`sse::event_frame`).
pub fn frame_estimate(target: &Target, delivery: &Delivery) -> usize {
    let channel = target.channel().map_or(0, |c| c.as_str().len());
    delivery.payload.len() + delivery.event_type.len() + channel + 128
}

/// One read of a replay.
pub enum Page {
    Events(Vec<(Target, Delivery)>),
    /// Every missed event was read.
    End,
    /// The history lost part of the gap while it was read (aged out, or evicted by the
    /// per-subject limit): what was sent may have a hole, so the client must refetch.
    Reset(ResetReason, Option<EventId>),
}

/// A replay whose events are all in memory already (dev mode's history).
pub struct Listed(pub std::collections::VecDeque<(Target, Delivery)>);

impl Pages for Listed {
    fn next(&mut self, room: usize) -> BoxFuture<'_, Result<Page, BrokerError>> {
        let mut page = Vec::new();
        let mut bytes = 0;
        while let Some((target, delivery)) = self.0.front() {
            let size = frame_estimate(target, delivery);
            if !page.is_empty() && bytes + size > room {
                break;
            }
            bytes += size;
            page.extend(self.0.pop_front());
        }
        let page = if page.is_empty() { Page::End } else { Page::Events(page) };
        Box::pin(async move { Ok(page) })
    }
}

/// How much history is kept for resuming.
#[derive(Clone, Copy, Debug)]
pub struct HistoryLimits {
    pub max_age: Duration,
    pub max_per_subject: u64,
    /// How long a publish id is remembered (the stream's duplicate window).
    pub dedup_window: Duration,
}

/// A source and sink of events.
pub trait Broker: Send + Sync + 'static {
    /// Subscribes to `target`'s live subject. Resolves once the subscription is in place at the
    /// server, so an event published after this resolves is delivered. Must be called from the
    /// hub runtime.
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>>;

    /// Publishes one event to each target, returning one id per target (in order) for durable
    /// events, or an empty list for ephemeral ones.
    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>>;

    /// What a client that saw everything up to `after` on `targets` missed: nothing, a reset
    /// (including `too_many` when more than `max` events were missed), or a replay read page by
    /// page. Called after the client's live subscriptions are in place: the replay covers up to
    /// where the history stood then, and live events cover what comes after.
    fn resume(
        &self,
        targets: Vec<Target>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Resumption, BrokerError>>;

    /// Every retained event published after `after` for `targets` (the pod's subscriptions), at
    /// most `max` of them: what the hub refills a gap in live delivery with (a reconnect, a
    /// slow-consumer drop). Other subjects' events are neither returned nor counted against
    /// `max` or the per-subject limit.
    fn replay(
        &self,
        targets: Vec<Target>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Replay, BrokerError>>;

    /// The id of the newest event in the history now (sequence 0 when it is empty; `None`
    /// without history).
    fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>>;

    /// The state of the broker's connection (`None` without history to refill from). Events
    /// published while it is down are not delivered live: the hub holds what arrives after it
    /// comes back and refills the gap from the history first.
    fn link(&self) -> Option<watch::Receiver<Link>> {
        None
    }

    /// The connections the broker has made so far, read at once (`None` with no [`Broker::link`]).
    /// The link's news travels by another task and can come after the first events of a new
    /// connection; this count has moved before any of them is queued, so the hub, reading it as
    /// it drains, never sends them out ahead of the refill of what the reconnect skipped.
    fn connections(&self) -> Option<ConnectionCount> {
        None
    }

    /// How many undelivered events one subscription's stream queues before the broker drops
    /// newer ones (NATS's slow consumer). The hub treats a queue found that full as a gap after
    /// its newest event.
    fn subscription_capacity(&self) -> usize;

    /// Called on each HTTP worker's thread as it starts. A broker may open a connection of the
    /// worker's own there, for the durable publishes its requests make; until it is up, and
    /// whenever it is down, they take the shared one. Best effort.
    fn attach_worker(&self) {}

    /// Whether the broker is reachable now (drives `/readyz`).
    fn is_connected(&self) -> bool;

    /// Publishes this pod's stats report on `<prefix>.internal.stats.<pod>` for the fleet's
    /// dashboards (`ops/dashboard.rs`); best effort. Without a shared broker there is no fleet.
    fn publish_stats(&self, _pod: &str, _report: Bytes) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Every pod's stats reports, this one's included; `None` without a shared broker (dev mode).
    fn fleet_stats(&self) -> BoxFuture<'static, Result<Option<ReportStream>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bytes::Bytes;
    use futures_util::FutureExt;

    use super::*;

    fn event(seq: u64, size: usize) -> (Target, Delivery) {
        let delivery = Delivery {
            event_type: "t".into(),
            payload: Bytes::from(vec![b'1'; size]),
            id: Some(EventId { epoch: Arc::from("e"), seq }),
            from: None,
            trace: None,
            published_at: None,
            previous: None,
        };
        (Target::Broadcast, delivery)
    }

    fn seqs(page: Page) -> Vec<u64> {
        match page {
            Page::Events(events) => events.iter().map(|(_, d)| d.id.as_ref().unwrap().seq).collect(),
            Page::End => Vec::new(),
            Page::Reset(..) => panic!("a listed replay never resets"),
        }
    }

    #[test]
    fn listed_pages_fill_the_room_given_and_always_hold_one_event() {
        let mut pages = Listed([event(1, 4), event(2, 4), event(3, 10), event(4, 1)].into());
        let mut next = |room| seqs(pages.next(room).now_or_never().unwrap().unwrap());
        let frame = |payload: usize| frame_estimate(&Target::Broadcast, &event(0, payload).1);
        assert_eq!(next(frame(4) * 2 + frame(10) - 1), [1, 2]);
        assert_eq!(next(0), [3], "one event even without room");
        assert_eq!(next(100), [4]);
        assert!(next(100).is_empty(), "then the end");
    }
}
