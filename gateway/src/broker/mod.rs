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

use futures_util::Stream;
use futures_util::future::BoxFuture;

use crate::event::{Delivery, EventId, Outgoing, Target};

pub mod memory;
pub mod nats;

pub use memory::MemoryBroker;
pub use nats::NatsBroker;

/// Live events of one subject.
pub type EventStream = Pin<Box<dyn Stream<Item = Delivery> + Send>>;

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

/// A source and sink of events.
pub trait Broker: Send + Sync + 'static {
    /// Subscribes to `target`'s live subject. Resolves once the subscription is in place at the
    /// server, so an event published after this resolves is delivered. Must be called from the
    /// hub runtime.
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>>;

    /// Publishes one event to each target, returning one id per target (in order) for durable
    /// events, or an empty list for ephemeral ones.
    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>>;

    /// Whether the broker is reachable now (drives `/readyz`).
    fn is_connected(&self) -> bool;
}
