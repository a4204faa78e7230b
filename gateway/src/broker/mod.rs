//! Where events come from and go to: NATS in production, an in-process broker in `dev` mode.
//!
//! Both implement [`Broker`] with the same semantics, so the hub, the sessions and the HTTP API
//! never know which one they talk to.
//!
//! Ordering contract: the streams returned by [`Broker::subscribe`] are fed, in arrival order,
//! by tasks running on the hub's single-threaded runtime (NATS: async-nats' connection task,
//! created there; memory: the broker's own task, spawned there). The hub relies on this to
//! merge many subjects into one correctly ordered flow (see `hub.rs`).

use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::future::BoxFuture;
use tokio::sync::watch;

use crate::event::{Delivery, EventId, Outgoing, Target};

pub mod memory;
pub mod nats;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;

/// Live events of one subject.
pub type EventStream = Pin<Box<dyn Stream<Item = Delivery> + Send>>;

/// The raw stats reports of the fleet's gateways.
pub type ReportStream = Pin<Box<dyn Stream<Item = Bytes> + Send>>;

/// Why a broker operation failed.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker can't be reached right now; retrying later may work.
    #[error("message broker unavailable: {0}")]
    Unavailable(String),
    /// The broker refused the operation.
    #[error("message broker refused the request: {0}")]
    Rejected(String),
}

/// What a resuming client gets.
pub enum Replay {
    /// Every retained event of its subjects after its id, in sequence order.
    Events(Vec<(Target, Delivery)>),
    /// The history cannot cover the gap: the client must refetch its state. Carries the id of
    /// the newest event in the history, where the client's cursor moves (none without history).
    Reset(ResetReason, Option<EventId>),
}

/// Why a resume could not be served from history.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResetReason {
    /// Events after the client's id were already dropped by the retention limits.
    HistoryExpired,
    /// The id belongs to another history (a recreated stream, another dev process).
    EpochChanged,
    /// More events than `--max-replay` were missed.
    TooMany,
}

impl ResetReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ResetReason::HistoryExpired => "history_expired",
            ResetReason::EpochChanged => "epoch_changed",
            ResetReason::TooMany => "too_many",
        }
    }
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

    /// The retained events published after `after`, at most `max` of them: those of `targets`,
    /// or of every subject when `targets` is `None` (to refill a gap after a broker outage).
    fn replay(
        &self,
        targets: Option<Vec<Target>>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Replay, BrokerError>>;

    /// The id of the newest event in the history now (sequence 0 when it is empty; `None`
    /// without history).
    fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>>;

    /// A counter that moves each time live delivery may have skipped events: the broker
    /// reconnected after losing its connection, or dropped messages of a subscription that fell
    /// behind. The hub refills each gap from the history.
    fn gaps(&self) -> Option<watch::Receiver<u64>> {
        None
    }

    /// Whether the broker is reachable now (drives `/readyz`).
    fn is_connected(&self) -> bool;

    /// Publishes this pod's stats report on `<prefix>.internal.stats.<pod>` for the fleet's
    /// dashboards (`dashboard.rs`); best effort. Without a shared broker there is no fleet.
    fn publish_stats(&self, _pod: &str, _report: Bytes) -> BoxFuture<'static, ()> {
        Box::pin(async {})
    }

    /// Every pod's stats reports, this one's included; `None` without a shared broker (dev mode).
    fn fleet_stats(&self) -> BoxFuture<'static, Result<Option<ReportStream>, BrokerError>> {
        Box::pin(async { Ok(None) })
    }
}
