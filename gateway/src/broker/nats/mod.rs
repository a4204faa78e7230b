//! The NATS broker (docs/architecture.md).
//!
//! Durable events are published to `herald.events.…`, stored by the stream `HERALD`, and
//! republished by the server to `herald.live.…` with a `Nats-Sequence` header: that sequence,
//! with the stream's epoch, is the event id. Ephemeral events go straight to `herald.live.…`.
//! With `--history off` there is no stream: everything is live.
//!
//! This file connects and answers the [`Broker`] calls; the work is in its parts:
//! - `stream.rs`: the stream's configuration and epoch, and whether it can store and reach
//!   this gateway;
//! - `barrier.rs`: the round trip that confirms new subscriptions are in place;
//! - `store.rs`: a durable publish, retried with its message ids;
//! - `headers.rs`: what a message's headers say (type, sender, stamp, trace, id);
//! - `reads.rs`: reads of the stream, shared by the callers of one moment; a replicated stream
//!   is read from its leader only, as a replica catching up after a node loss would answer
//!   without the newest events;
//! - `walk.rs`: a resuming client's gap, one read per event and subject, a page at a time;
//! - `replay.rs`: the hub's refill of a gap in live delivery, with an ordered consumer.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream;
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::watch;

use super::{Broker, BrokerError, ConnectionCount, EventStream, HistoryLimits, Link, Replay, ReportStream, Resumption};
use crate::broker::resume::ResetReason;
use crate::event::{EventId, Outgoing, SubjectKind, Target};
use barrier::Barrier;
use headers::delivery_from;
use reads::{Bounds, ResumeReads, StreamAccess};
use stream::{ensure_stream, epoch_in, stream_info, watch_reach};

/// The round trip that confirms new subscriptions are in place.
mod barrier;
/// What a message's headers say: type, sender, stamp, trace, id.
mod headers;
/// Reads of the stream, shared by the callers of one moment.
mod reads;
/// The hub's refill of a gap, with an ordered consumer.
mod replay;
/// A durable publish, retried with its message ids.
mod store;
/// The stream's configuration and epoch, and whether it can store and reach this gateway.
mod stream;
#[cfg(test)]
mod tests;
/// A resuming client's gap, one read per event and subject, a page at a time.
mod walk;

pub use headers::{HEADER_FROM, HEADER_PUBLISHED_AT, HEADER_TYPE, event_headers};
pub(crate) use stream::is_not_found;
pub use stream::{STREAM, stream_config};

/// Messages one subscription queues before async-nats drops newer ones (a slow consumer).
const SUBSCRIPTION_CAPACITY: usize = 256 * 1024;

/// Longest an ephemeral publish waits for NATS to take it before it is answered as unsure (504).
const EPHEMERAL_PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// Where each gateway publishes its stats for the fleet's dashboards, under the prefix:
/// `herald.internal.stats.<pod>`.
pub const STATS_SUBJECT: &str = "internal.stats";

/// How the stream is configured.
#[derive(Clone, Copy, Debug)]
pub struct StreamOptions {
    pub limits: HistoryLimits,
    pub replicas: usize,
}

/// How to reach NATS.
#[derive(Clone, Debug)]
pub struct NatsOptions {
    /// One or more server URLs, comma-separated.
    pub url: String,
    /// A `.creds` file (JWT + NKey seed), if the server wants one.
    pub credentials: Option<PathBuf>,
    /// Subject prefix (`herald`).
    pub prefix: String,
    /// Connection name shown in the server's monitoring.
    pub name: String,
    /// What to do about the stream.
    pub history: History,
    /// How long a durable publish is retried (with the same message ids) while the stream
    /// cannot store it, e.g. through a leader election, before it fails.
    pub publish_retry: Duration,
}

/// How a connection uses the stream `HERALD`.
#[derive(Clone, Copy, Debug)]
pub enum History {
    /// Live only (`--history off`): no stream, no ids.
    Off,
    /// Publish durably to the stream as it is (the `publish` command).
    Existing,
    /// Create the stream, or update its configuration, at connect (gateways).
    Ensure(StreamOptions),
}

/// How long a durable publish is repeated: the configured time, but never as long as the
/// stream's duplicate window, which another gateway's `--history-dedup-window` may have set
/// shorter than this one's. A repeat that reaches the stream after the window of its first
/// copy is stored again, as a second event.
pub(super) struct PublishRetry {
    configured: Duration,
    /// Milliseconds.
    now: std::sync::atomic::AtomicU64,
}

impl PublishRetry {
    fn new(configured: Duration) -> Self {
        PublishRetry { configured, now: std::sync::atomic::AtomicU64::new(millis(configured)) }
    }

    fn get(&self) -> Duration {
        Duration::from_millis(self.now.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The stream keeps message ids for `window`: repeats end a tenth of it (at least a second)
    /// before it does, counted from the publish's start, when the first copy can be stored.
    pub(super) fn within(&self, window: Duration) {
        if window.is_zero() {
            return;
        }
        let margin = (window / 10).max(Duration::from_secs(1));
        let retry = self.configured.min(window.saturating_sub(margin));
        let before = self.now.swap(millis(retry), std::sync::atomic::Ordering::Relaxed);
        if before != millis(retry) && retry < self.configured {
            tracing::info!(
                configured = ?self.configured,
                window = ?window,
                retry = ?retry,
                "publishes are repeated for less than configured: the stream's duplicate window is shorter"
            );
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A NATS-backed broker. Cheap to share; the connection lives on the hub runtime.
pub struct NatsBroker {
    client: Client,
    prefix: Arc<str>,
    /// Confirms that the server has processed what this connection sent (subscriptions).
    barrier: Arc<Barrier>,
    /// JetStream, when history is on.
    jetstream: Option<jetstream::Context>,
    /// The stream's epoch (from its creation time), refreshed whenever its info is read.
    epoch: Arc<RwLock<Arc<str>>>,
    /// The connection's state, for the hub to refill what a reconnect missed.
    link: watch::Receiver<Link>,
    /// Set once the stream exists with our configuration (always, without history).
    stream_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Reads shared by the new streams and resumes of one moment.
    shared: Arc<ResumeReads>,
    /// See [`NatsOptions::publish_retry`], cut short of the stream's duplicate window once read
    /// ([`PublishRetry::within`]).
    publish_retry: Arc<PublishRetry>,
    /// What the HTTP workers' own connections are opened with ([`Broker::attach_worker`]).
    options: NatsOptions,
}

thread_local! {
    /// This HTTP worker's own connection for durable publishes, with the broker it belongs to
    /// (the address of that broker's `shared`): see [`Broker::attach_worker`].
    static WORKER_JETSTREAM: std::cell::RefCell<Option<(usize, jetstream::Context)>> =
        const { std::cell::RefCell::new(None) };
    /// The broker this thread opened (or is opening) its connection for: one per worker, also
    /// when the worker builds its app once per listening address.
    static WORKER_ATTACHED: std::cell::Cell<usize> = const { std::cell::Cell::new(0) };
}

/// The options every connection of a gateway shares. It keeps trying to (re)connect forever:
/// a gateway starts, unready, while NATS is unreachable.
fn connect_options(name: &str) -> async_nats::ConnectOptions {
    async_nats::ConnectOptions::new()
        .name(name)
        .retry_on_initial_connect()
        .max_reconnects(None)
        .connection_timeout(Duration::from_secs(5))
        .request_timeout(Some(Duration::from_secs(5)))
}

/// Connects with `options` and the credentials and URLs of `opts`.
async fn connect(mut options: async_nats::ConnectOptions, opts: &NatsOptions) -> Result<Client, BrokerError> {
    if let Some(path) = &opts.credentials {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| BrokerError::Rejected(format!("{}: {e}", path.display())))?;
    }
    let urls: Vec<async_nats::ServerAddr> = opts
        .url
        .split(',')
        .map(|u| u.trim().parse())
        .collect::<Result<_, _>>()
        .map_err(|e| BrokerError::Rejected(format!("invalid NATS URL: {e}")))?;
    options.connect(urls).await.map_err(|e| BrokerError::Unavailable(e.to_string()))
}

impl NatsBroker {
    /// Connects (retrying in the background until the server is reachable). Must be called on
    /// the hub runtime: async-nats spawns its connection task on the current runtime.
    pub async fn connect(opts: &NatsOptions) -> Result<Self, BrokerError> {
        let (link_tx, link) = watch::channel(Link::default());
        let link_tx = Arc::new(link_tx);
        let probe_link = link_tx.clone();
        let options =
            connect_options(&opts.name).subscription_capacity(SUBSCRIPTION_CAPACITY).event_callback(move |event| {
                let link = link_tx.clone();
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            link.send_modify(|l| {
                                l.up = true;
                                l.connections += 1;
                            });
                            tracing::info!("connected to NATS");
                        }
                        async_nats::Event::Disconnected => {
                            link.send_modify(|l| l.up = false);
                            tracing::warn!("disconnected from NATS; reconnecting")
                        }
                        async_nats::Event::SlowConsumer(sid) => {
                            // The hub finds the full queue itself, and refills from there.
                            tracing::warn!(sid, "NATS subscription fell behind and dropped messages")
                        }
                        other => tracing::debug!(event = %other, "nats connection event"),
                    }
                }
            });
        let client = connect(options, opts).await?;
        let broker = NatsBroker {
            jetstream: (!matches!(opts.history, History::Off)).then(|| jetstream::new(client.clone())),
            barrier: Arc::new(Barrier::new(client.clone(), &opts.prefix, !matches!(opts.history, History::Off))),
            client,
            prefix: Arc::from(opts.prefix.as_str()),
            epoch: Arc::new(RwLock::new(Arc::from("0"))),
            link,
            stream_ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            shared: Arc::default(),
            publish_retry: Arc::new(PublishRetry::new(opts.publish_retry)),
            options: opts.clone(),
        };
        match (&broker.jetstream, opts.history) {
            (Some(js), History::Ensure(stream)) => {
                // The gateway starts (unready) while NATS is unreachable, and sets the stream up
                // as soon as it can.
                let (js, config, epoch, ready, client, retry) = (
                    js.clone(),
                    stream_config(&opts.prefix, stream),
                    broker.epoch.clone(),
                    broker.stream_ready.clone(),
                    broker.client.clone(),
                    broker.publish_retry.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        match ensure_stream(&js, config.clone()).await {
                            Ok(info) => {
                                *epoch.write() = epoch_in(&info);
                                retry.within(info.config.duplicate_window);
                                ready.store(true, std::sync::atomic::Ordering::Release);
                                tracing::info!(stream = STREAM, epoch = %epoch.read(), messages = info.state.messages, "history stream ready");
                                watch_reach(&js, &config, &epoch, &client, &probe_link, &retry).await;
                                return;
                            }
                            Err(e) => {
                                tracing::warn!(stream = STREAM, error = %e, "cannot set up the history stream yet; retrying");
                                tokio::time::sleep(Duration::from_secs(1)).await;
                            }
                        }
                    }
                });
            }
            (Some(js), _) => {
                // Publishing to the stream as it is: its epoch names the ids we hand out, and its
                // duplicate window bounds how long a publish may be repeated.
                let (_, info, _) = stream_info(js, &broker.epoch).await?;
                broker.publish_retry.within(info.config.duplicate_window);
                broker.stream_ready.store(true, std::sync::atomic::Ordering::Release);
            }
            (None, _) => broker.stream_ready.store(true, std::sync::atomic::Ordering::Release),
        }
        Ok(broker)
    }

    /// JetStream, unless the gateway runs live-only.
    pub fn jetstream(&self) -> Option<&jetstream::Context> {
        self.jetstream.as_ref()
    }

    /// What reading the history needs, unless the gateway runs live-only.
    fn access(&self) -> Option<StreamAccess> {
        Some(StreamAccess {
            js: self.jetstream.clone()?,
            prefix: self.prefix.clone(),
            epoch: self.epoch.clone(),
            shared: self.shared.clone(),
        })
    }

    /// Names this broker among the workers' connections: the address of its `shared`.
    fn owner(&self) -> usize {
        Arc::as_ptr(&self.shared) as usize
    }
}

/// The calling worker's own connection to the stream, while it is connected: a durable
/// publish then goes from the worker to NATS and its acknowledgement straight back, without
/// two hops through the hub thread, whose connection also carries every delivery.
///
/// Ordering is unchanged: a stored event's place is its sequence, which the acknowledgement
/// returns before the request is answered, whichever connection carried it.
fn worker_jetstream(owner: usize) -> Option<jetstream::Context> {
    WORKER_JETSTREAM.with(|worker| match &*worker.borrow() {
        Some((of, js))
            if *of == owner && js.client().connection_state() == async_nats::connection::State::Connected =>
        {
            Some(js.clone())
        }
        _ => None,
    })
}

impl Broker for NatsBroker {
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
        let client = self.client.clone();
        let subject = target.subject(&self.prefix, SubjectKind::Live);
        let barrier = self.barrier.clone();
        let epoch = self.epoch.clone();
        let prefix = self.prefix.clone();
        async move {
            let sub = client.subscribe(subject).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            barrier.pass().await?;
            Ok(Box::pin(sub.map(move |msg| delivery_from(msg, &prefix, &epoch))) as EventStream)
        }
        .boxed()
    }

    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>> {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let durable = event.durable.then(|| self.jetstream.clone()).flatten();
        let epoch = self.epoch.clone();
        let publish_retry = self.publish_retry.get();
        let owner = self.owner();
        async move {
            let mut headers = event_headers(&event.event_type, event.trace.as_ref());
            if let Some(from) = &event.from {
                headers.insert(HEADER_FROM, from.as_str());
            }
            let Some(js) = durable else {
                store::check_size(client.server_info().max_payload, &headers, &event.payload, std::iter::empty())?;
                // Nothing is queued while the link is down: the client would send it once NATS is
                // back, long after the caller was answered, who may have sent it again. A link
                // that drops meanwhile may still carry what was queued: the caller learns that
                // it is unsure (a 504) within `EPHEMERAL_PUBLISH_TIMEOUT`, not when NATS is back.
                if client.connection_state() != async_nats::connection::State::Connected {
                    return Err(BrokerError::Unavailable("not connected to NATS".into()));
                }
                // Past the check, a failure is unsure too: some copies may be on their way already.
                let unsure = |e: &dyn std::fmt::Display| BrokerError::Unsure(e.to_string());
                let send = async {
                    for target in &targets {
                        let subject = target.subject(&prefix, SubjectKind::Live);
                        client
                            .publish_with_headers(subject, headers.clone(), event.payload.clone())
                            .await
                            .map_err(|e| unsure(&e))?;
                    }
                    client.flush().await.map_err(|e| unsure(&e))
                };
                tokio::time::timeout(EPHEMERAL_PUBLISH_TIMEOUT, send).await.map_err(|_| {
                    unsure(&format_args!("NATS did not take the event within {EPHEMERAL_PUBLISH_TIMEOUT:?}"))
                })??;
                return Ok(Vec::new());
            };
            // Every stored event carries a message id (the publisher's, or one made up here), so
            // an attempt that may or may not have been stored can be sent again: the stream
            // answers a repeat with the first one's sequence and stores nothing.
            let id = event.id.clone().unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
            let worker = worker_jetstream(owner);
            let via: Vec<&jetstream::Context> = worker.iter().chain([&js]).collect();
            let sequences = store::store(&via, &prefix, &targets, &headers, &event.payload, &id, publish_retry).await?;
            let epoch = epoch.read().clone();
            Ok(sequences.into_iter().map(|seq| EventId { epoch: epoch.clone(), seq }).collect())
        }
        .boxed()
    }

    fn resume(
        &self,
        targets: Vec<Target>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Resumption, BrokerError>> {
        match self.access() {
            Some(access) => walk::resume(access, targets, after, max).boxed(),
            // Live-only: there is no history to resume from.
            None => std::future::ready(Ok(Resumption::Reset(ResetReason::HistoryExpired, None))).boxed(),
        }
    }

    fn replay(
        &self,
        targets: Vec<Target>,
        after: EventId,
        max: usize,
    ) -> BoxFuture<'static, Result<Replay, BrokerError>> {
        match self.access() {
            Some(access) => replay::replay(access, self.barrier.clone(), targets, after, max).boxed(),
            // Live-only: there is no history to resume from.
            None => std::future::ready(Ok(Replay::Reset(ResetReason::HistoryExpired, None))).boxed(),
        }
    }

    fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>> {
        let js = self.jetstream.clone();
        let epoch = self.epoch.clone();
        let shared = self.shared.clone();
        async move {
            let Some(js) = js else { return Ok(None) };
            let bounds = shared.bounds.read(|| Bounds::read(&js, &epoch)).await?;
            Ok(Some(EventId { epoch: bounds.epoch, seq: bounds.last }))
        }
        .boxed()
    }

    fn link(&self) -> Option<watch::Receiver<Link>> {
        self.jetstream.as_ref().map(|_| self.link.clone())
    }

    fn connections(&self) -> Option<ConnectionCount> {
        self.jetstream.as_ref()?;
        // async-nats counts a connection before it resubscribes on it and reads from it, so an
        // event of a new connection, once queued, is seen with the new count.
        let statistics = self.client.statistics();
        Some(Arc::new(move || statistics.connects.load(std::sync::atomic::Ordering::Acquire)))
    }

    fn attach_worker(&self) {
        let owner = self.owner();
        if self.jetstream.is_none()
            || tokio::runtime::Handle::try_current().is_err()
            || WORKER_ATTACHED.replace(owner) == owner
        {
            return;
        }
        let opts = self.options.clone();
        tokio::spawn(async move {
            let name = format!("{} publisher", opts.name);
            let options = connect_options(&name).event_callback(|event| async move {
                tracing::debug!(event = %event, "worker publish connection event");
            });
            match connect(options, &opts).await {
                Ok(client) => WORKER_JETSTREAM.with(|w| *w.borrow_mut() = Some((owner, jetstream::new(client)))),
                // Its publishes go through the hub's connection instead.
                Err(e) => tracing::warn!(error = %e, "cannot open this worker's publish connection"),
            }
        });
    }

    fn publish_stats(&self, pod: &str, report: Bytes) -> BoxFuture<'static, ()> {
        let client = self.client.clone();
        let subject = format!("{}.{STATS_SUBJECT}.{}", self.prefix, crate::ops::dashboard::subject_token(pod));
        async move {
            if let Err(e) = client.publish(subject, report).await {
                tracing::debug!(error = %e, "cannot publish the stats report");
            }
        }
        .boxed()
    }

    fn fleet_stats(&self) -> BoxFuture<'static, Result<Option<ReportStream>, BrokerError>> {
        let client = self.client.clone();
        let subject = format!("{}.{STATS_SUBJECT}.*", self.prefix);
        async move {
            let sub = client.subscribe(subject).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            Ok(Some(Box::pin(sub.map(|msg| msg.payload)) as ReportStream))
        }
        .boxed()
    }

    fn subscription_capacity(&self) -> usize {
        SUBSCRIPTION_CAPACITY
    }

    fn is_connected(&self) -> bool {
        self.client.connection_state() == async_nats::connection::State::Connected
            && self.stream_ready.load(std::sync::atomic::Ordering::Acquire)
    }
}
