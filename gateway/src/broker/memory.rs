//! The in-process broker of `dev` mode: the same semantics as NATS + JetStream (sequence ids
//! from one counter, durable and ephemeral events), with nothing to install.

use std::collections::HashMap;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use tokio::sync::{mpsc, oneshot};
use tokio_stream_shim::ReceiverStream;

use super::{Broker, BrokerError, EventStream};
use crate::event::{Delivery, EventId, Outgoing, Target};

/// Events a subscriber may fall behind by before it misses some (as NATS' slow consumer).
const SUBSCRIBER_CAPACITY: usize = 64 * 1024;

enum Command {
    Subscribe { target: Target, reply: oneshot::Sender<EventStream> },
    Publish { targets: Vec<Target>, event: Outgoing, reply: oneshot::Sender<Vec<EventId>> },
}

/// Handle to the in-process broker; its state lives in one task on the hub runtime.
pub struct MemoryBroker {
    commands: mpsc::UnboundedSender<Command>,
}

impl MemoryBroker {
    /// Starts the broker task on `runtime` (the hub's runtime: see the ordering contract).
    pub fn start(runtime: &tokio::runtime::Handle) -> Arc<Self> {
        let (tx, rx) = mpsc::unbounded_channel();
        let epoch = Arc::<str>::from(format!("{:x}", rand::random::<u32>()));
        runtime.spawn(run(rx, epoch));
        Arc::new(MemoryBroker { commands: tx })
    }
}

async fn run(mut commands: mpsc::UnboundedReceiver<Command>, epoch: Arc<str>) {
    let mut subscribers: HashMap<Target, Vec<mpsc::Sender<Delivery>>> = HashMap::new();
    let mut seq: u64 = 0;
    while let Some(cmd) = commands.recv().await {
        match cmd {
            Command::Subscribe { target, reply } => {
                let (tx, rx) = mpsc::channel(SUBSCRIBER_CAPACITY);
                subscribers.entry(target).or_default().push(tx);
                let _ = reply.send(Box::pin(ReceiverStream(rx)));
            }
            Command::Publish { targets, event, reply } => {
                let mut ids = Vec::new();
                for target in targets {
                    let id = event.durable.then(|| {
                        seq += 1;
                        EventId { epoch: epoch.clone(), seq }
                    });
                    if let Some(id) = &id {
                        ids.push(id.clone());
                    }
                    if let Some(subs) = subscribers.get_mut(&target) {
                        let delivery = Delivery {
                            event_type: event.event_type.clone(),
                            payload: event.payload.clone(),
                            id,
                            from: None,
                        };
                        subs.retain(|s| !s.is_closed());
                        for s in subs.iter() {
                            let _ = s.try_send(delivery.clone());
                        }
                        if subs.is_empty() {
                            subscribers.remove(&target);
                        }
                    }
                }
                let _ = reply.send(ids);
            }
        }
    }
}

impl Broker for MemoryBroker {
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Subscribe { target, reply });
        async move {
            sent.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())
        }
        .boxed()
    }

    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>> {
        let (reply, rx) = oneshot::channel();
        let sent = self.commands.send(Command::Publish { targets, event, reply });
        async move {
            sent.map_err(|_| stopped())?;
            rx.await.map_err(|_| stopped())
        }
        .boxed()
    }

    fn is_connected(&self) -> bool {
        !self.commands.is_closed()
    }
}

fn stopped() -> BrokerError {
    BrokerError::Unavailable("the in-process broker has stopped".into())
}

/// A `Stream` over an mpsc receiver, without pulling in tokio-stream for one adapter.
mod tokio_stream_shim {
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use tokio::sync::mpsc;

    pub struct ReceiverStream<T>(pub mpsc::Receiver<T>);

    impl<T> futures_util::Stream for ReceiverStream<T> {
        type Item = T;
        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<T>> {
            self.0.poll_recv(cx)
        }
    }
}
