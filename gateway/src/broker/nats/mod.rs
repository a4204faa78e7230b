//! The NATS broker (docs/architecture.md).
//!
//! Durable events are published to `herald.events.…`, stored by the stream `HERALD`, and
//! republished by the server to `herald.live.…` with a `Nats-Sequence` header: that sequence,
//! with the stream's epoch, is the event id. Ephemeral events go straight to `herald.live.…`.
//! A resuming client is replayed from the stream with a read per event and subject, a page at a
//! time (`Walk`); the hub refills a gap in live delivery with an ordered consumer on every
//! subject. A replicated stream is read from its leader only ([`Reads`]): a replica catching up
//! after a node loss would answer a direct get without the newest events.
//! With `--history off` there is no stream: everything is live.
//!
//! Headers: `Herald-Type` names the event (default `message`); `Herald-Published-At` is stamped on
//! publish for end-to-end latency; `Herald-From` carries the sender of client events;
//! `traceparent`/`tracestate` carry the W3C trace context (written and read only while traces
//! are on, see `trace.rs`). JetStream stores them with the event, so replays carry them too.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use async_nats::{Client, HeaderMap, Message, RequestErrorKind};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, StreamExt};
use parking_lot::RwLock;
use tokio::sync::{oneshot, watch};

use super::{
    Broker, BrokerError, ConnectionCount, EventStream, HistoryLimits, Link, Page, Pages, Replay, ReportStream,
    Resumption, frame_estimate,
};
use crate::broker::resume::{self, ResetReason, Start};
use crate::event::{Delivery, EventId, Outgoing, SubjectKind, Target, parse_published_at};
use crate::names::DEFAULT_EVENT_TYPE;
use crate::ops::trace;
use crate::ops::trace_context::{self, TraceContext};

/// Messages one subscription queues before async-nats drops newer ones (a slow consumer).
const SUBSCRIPTION_CAPACITY: usize = 256 * 1024;

/// Longest wait for the next message of a replay.
const REPLAY_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a replay waits for its next message before checking whether the history it still
/// expects has aged out meanwhile.
const VANISHED_CHECK: Duration = Duration::from_millis(250);

pub const HEADER_TYPE: &str = "Herald-Type";
pub const HEADER_PUBLISHED_AT: &str = "Herald-Published-At";
pub const HEADER_FROM: &str = "Herald-From";
const HEADER_SEQUENCE: &str = "Nats-Sequence";
const HEADER_STREAM: &str = "Nats-Stream";
const HEADER_SUBJECT: &str = "Nats-Subject";

/// The names looked up in every live message, made once: a lookup by `&str` copies a name
/// that is not one of NATS's own into a new allocation each time.
const TYPE_NAME: HeaderName = HeaderName::from_static(HEADER_TYPE);
const PUBLISHED_AT_NAME: HeaderName = HeaderName::from_static(HEADER_PUBLISHED_AT);
const FROM_NAME: HeaderName = HeaderName::from_static(HEADER_FROM);

/// Where each gateway publishes its stats for the fleet's dashboards, under the prefix:
/// `herald.internal.stats.<pod>`.
pub const STATS_SUBJECT: &str = "internal.stats";

/// The stream holding every durable event.
pub const STREAM: &str = "HERALD";

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

/// A NATS-backed broker. Cheap to share; the connection lives on the hub runtime.
pub struct NatsBroker {
    client: Client,
    prefix: Arc<str>,
    /// Confirms that the server has processed what this connection sent (subscriptions).
    confirmations: Arc<Confirmations>,
    /// JetStream, when history is on.
    jetstream: Option<jetstream::Context>,
    /// The stream's epoch (from its creation time), refreshed whenever its info is read.
    epoch: Arc<RwLock<Arc<str>>>,
    /// The connection's state, for the hub to refill what a reconnect missed.
    link: watch::Receiver<Link>,
    /// Set once the stream exists with our configuration (always, without history).
    stream_ready: Arc<std::sync::atomic::AtomicBool>,
    /// Events the stream keeps per subject (0 when this process does not configure it).
    per_subject_cap: u64,
    /// Reads shared by the new streams and resumes of one moment.
    shared: Arc<Shared>,
    /// See [`NatsOptions::publish_retry`].
    publish_retry: Duration,
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
            confirmations: Arc::new(Confirmations::new(
                client.clone(),
                &opts.prefix,
                !matches!(opts.history, History::Off),
            )),
            client,
            prefix: Arc::from(opts.prefix.as_str()),
            epoch: Arc::new(RwLock::new(Arc::from("0"))),
            link,
            stream_ready: Arc::new(std::sync::atomic::AtomicBool::new(false)),
            per_subject_cap: match opts.history {
                History::Ensure(stream) => stream.limits.max_per_subject,
                _ => 0,
            },
            shared: Arc::default(),
            publish_retry: opts.publish_retry,
            options: opts.clone(),
        };
        match (&broker.jetstream, opts.history) {
            (Some(js), History::Ensure(stream)) => {
                // The gateway starts (unready) while NATS is unreachable, and sets the stream up
                // as soon as it can.
                let (js, config, epoch, ready, client) = (
                    js.clone(),
                    stream_config(&opts.prefix, stream),
                    broker.epoch.clone(),
                    broker.stream_ready.clone(),
                    broker.client.clone(),
                );
                tokio::spawn(async move {
                    loop {
                        match ensure_stream(&js, config.clone()).await {
                            Ok(info) => {
                                *epoch.write() = epoch_in(&info);
                                ready.store(true, std::sync::atomic::Ordering::Release);
                                tracing::info!(stream = STREAM, epoch = %epoch.read(), messages = info.state.messages, "history stream ready");
                                watch_reach(&js, &epoch, &client, &probe_link).await;
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
                // Publishing to the stream as it is: its epoch names the ids we hand out.
                stream_info(js, &broker.epoch).await?;
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

/// Confirms that what this connection sent before (its subscriptions above all) has been
/// processed by its own server and, with history on, by the node leading the stream too.
///
/// The second half matters in a NATS cluster. A subscription reaches the gateway's own node at
/// once and the other nodes a moment later, over the routes; an event that the stream's leader
/// republishes in that moment never reaches the gateway, and nothing would tell it so. So the
/// confirmation is a publish into the stream that the leader refuses (`Nats-Expected-Stream`
/// names no stream) and answers without storing anything: a node sends a route both the
/// interest and the messages of one account over the same connection, in order, so once the
/// leader has answered it knows of every subscription sent before, and republishes every later
/// event to this gateway. What was stored before is read from the leader by the resume, or the
/// first cursor, that follows the join. Without a stream leader (an election) nothing answers,
/// and nothing is republished either: the "no responders" reply then confirms the own node.
/// Without history, the request goes to a subject nobody serves, for that same reply.
///
/// One round trip answers for every caller that was waiting when it was sent, so a burst of
/// connections subscribing to their users' subjects costs one request per round trip, not one
/// per connection.
struct Confirmations {
    client: Client,
    subject: String,
    /// Sent with a refusal header into the stream (history on), or plainly (history off).
    barrier: bool,
    waiting: parking_lot::Mutex<Waiting>,
}

#[derive(Default)]
struct Waiting {
    callers: Vec<oneshot::Sender<Result<(), BrokerError>>>,
    /// A task is sending round trips until nobody waits.
    running: bool,
}

/// What a confirmation's `Nats-Expected-Stream` names: not a valid stream name (it has a dot),
/// so it never matches the stream, which refuses the message unstored.
const BARRIER_EXPECTED_STREAM: &str = "herald.barrier";

impl Confirmations {
    fn new(client: Client, prefix: &str, history: bool) -> Self {
        let subject = if history {
            format!("{prefix}.events._barrier")
        } else {
            format!("{prefix}._sync.{:x}", rand::random::<u64>())
        };
        Confirmations { client, subject, barrier: history, waiting: Default::default() }
    }

    /// Resolves once what this connection sent before the call has been processed (see above).
    async fn confirm(self: &Arc<Self>) -> Result<(), BrokerError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut waiting = self.waiting.lock();
            waiting.callers.push(tx);
            !std::mem::replace(&mut waiting.running, true)
        };
        if start {
            let this = self.clone();
            tokio::spawn(async move { this.run().await });
        }
        rx.await.unwrap_or_else(|_| Err(BrokerError::Unavailable("NATS connection closed".into())))
    }

    async fn run(&self) {
        loop {
            // Everyone in this batch was queued before the request below is sent.
            let batch = {
                let mut waiting = self.waiting.lock();
                if waiting.callers.is_empty() {
                    waiting.running = false;
                    return;
                }
                std::mem::take(&mut waiting.callers)
            };
            let result = self.round_trip().await;
            for caller in batch {
                let _ = caller.send(result.clone());
            }
        }
    }

    async fn round_trip(&self) -> Result<(), BrokerError> {
        let sent = if self.barrier {
            let mut headers = HeaderMap::new();
            headers.insert(async_nats::header::NATS_EXPECTED_STREAM, BARRIER_EXPECTED_STREAM);
            self.client.request_with_headers(self.subject.clone(), headers, Bytes::new()).await
        } else {
            self.client.request(self.subject.clone(), Bytes::new()).await
        };
        match sent {
            Ok(reply) => {
                if self.barrier && !reply.payload.windows(7).any(|w| w == b"\"error\"") {
                    // A server that ignored the header stored the message. Never seen; said
                    // loudly, since it would leave a stray message in the history.
                    tracing::error!(subject = %self.subject, "the stream stored a confirmation it should have refused");
                }
                Ok(())
            }
            Err(e) if e.kind() == RequestErrorKind::NoResponders => Ok(()),
            Err(e) => Err(BrokerError::Unavailable(format!("NATS did not answer: {e}"))),
        }
    }
}

/// How often a gateway checks that the stream can reach it, and how long it waits for an answer.
const REACH_EVERY: Duration = Duration::from_millis(500);
const REACH_TIMEOUT: Duration = Duration::from_secs(2);

/// A replica the stream's leader has not heard from for this long does not count toward a quorum.
const REPLICA_SILENT: Duration = Duration::from_secs(3);

/// Watches, for as long as the connection lives, whether the stream can store events and reach
/// this gateway, and reports it on the link the hub watches.
///
/// On a NATS cluster a gateway's connection can stay up while its server is cut off from the
/// others: nothing the stream stores reaches it, and nothing tells it so. Every
/// [`REACH_EVERY`] the stream's info is read, as its leader describes it: no answer, or a leader
/// that has not heard from a quorum of its replicas lately (it is the one cut off, or there is no
/// quorum), and the link is reported down: the hub holds what arrives from then on. Once the stream answers again with
/// a quorum, the link is reported back up and restored: the hub refills the gap from the
/// history. (Between the cut and its detection nothing arrives either, so nothing is delivered
/// ahead of the gap.)
async fn watch_reach(js: &jetstream::Context, epoch: &RwLock<Arc<str>>, client: &Client, link: &watch::Sender<Link>) {
    let mut cut_off = false;
    loop {
        tokio::time::sleep(REACH_EVERY).await;
        if client.connection_state() != async_nats::connection::State::Connected {
            continue; // the connection's own events report that
        }
        // `stream_info` answers only from a leader that can store.
        let reached = matches!(tokio::time::timeout(REACH_TIMEOUT, stream_info(js, epoch)).await, Ok(Ok(_)));
        if reached == cut_off {
            cut_off = !reached;
            if cut_off {
                tracing::warn!(
                    stream = STREAM,
                    "the history's stream cannot store or reach this gateway; holding live delivery"
                );
                link.send_modify(|l| l.up = false);
            } else {
                tracing::info!(stream = STREAM, "the history's stream reaches this gateway again");
                link.send_modify(|l| {
                    l.up = true;
                    l.restored += 1;
                });
            }
        }
    }
}

/// Whether the stream, as its leader describes it, can store events: it has a leader, and that
/// leader heard lately from enough replicas to make a quorum with itself.
fn can_store(info: &jetstream::stream::Info) -> bool {
    let replicas = info.config.num_replicas.max(1);
    if replicas == 1 {
        return true; // the leader that answered is the whole stream
    }
    let Some(cluster) = &info.cluster else { return false };
    if cluster.leader.is_none() {
        return false;
    }
    let heard = cluster.replicas.iter().filter(|r| !r.offline && r.active < REPLICA_SILENT).count();
    2 * (heard + 1) > replicas
}

/// Longest wait for the acknowledgements of one attempt to store an event.
const STORE_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Pause before the first retry of a store; it doubles up to [`STORE_BACKOFF_MAX`].
const STORE_BACKOFF: Duration = Duration::from_millis(50);
const STORE_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// Stores one event on each target's subject and answers their stream sequences, in order.
///
/// Each target's copy carries the message id `<id>/<target>`. Every target is sent before any
/// acknowledgement is awaited (one round trip, not one per target). A copy the stream did not
/// acknowledge — no leader (no responders), no answer in time, the connection lost — is sent
/// again, with the same message id, until `retry` has passed: a leader election costs the
/// publisher latency, not an error, and a copy stored by an attempt whose acknowledgement was
/// lost is answered by the repeat with its first sequence (the stream's duplicate window
/// outlasts `retry`, see `config.rs`). Nothing is acknowledged that the stream did not store.
///
/// Attempts take the connections in `via` in turn (a worker's own, then the hub's): a node cut
/// off from the others cannot reach the stream's leader, and a connection to it would fail
/// every attempt until the partition heals, while another connection, on another node, stores
/// the event at once. A connection seen down leaves the turn for the rest of this store: an
/// attempt queued on it would go out whenever it is back, maybe after the request was answered
/// through another, and past the duplicate window it would be stored again. (With none up, the
/// last one, the hub's, is used, as the only one was before.)
async fn store(
    all: &[&jetstream::Context],
    prefix: &str,
    targets: &[Target],
    headers: &HeaderMap,
    payload: &Bytes,
    id: &str,
    retry: Duration,
) -> Result<Vec<u64>, BrokerError> {
    use async_nats::jetstream::context::PublishErrorKind;
    // Errors a repeat cannot cure: the rest (no stream leader, no answer, lost connection) can.
    let lasting = |kind: PublishErrorKind| {
        matches!(
            kind,
            PublishErrorKind::MaxPayloadExceeded
                | PublishErrorKind::WrongLastMessageId
                | PublishErrorKind::WrongLastSequence
        )
    };
    let deadline = tokio::time::Instant::now() + retry;
    let mut sequences: Vec<Option<u64>> = vec![None; targets.len()];
    let mut backoff = STORE_BACKOFF;
    let mut via: Vec<&jetstream::Context> = all.to_vec();
    let mut attempt = 0usize;
    loop {
        if via.len() > 1 {
            via.retain(|js| js.client().connection_state() == async_nats::connection::State::Connected);
            if via.is_empty() {
                via.extend(all.last());
            }
        }
        let js = via[attempt % via.len()];
        attempt += 1;
        let mut last_error = String::new();
        let mut acks = Vec::new();
        for (i, target) in targets.iter().enumerate().filter(|(i, _)| sequences[*i].is_none()) {
            let mut headers = headers.clone();
            headers.insert(async_nats::header::NATS_MESSAGE_ID, target.dedup_key(id).as_str());
            match js.publish_with_headers(target.subject(prefix, SubjectKind::Events), headers, payload.clone()).await {
                Ok(ack) => acks.push((i, ack)),
                Err(e) if lasting(e.kind()) => return Err(BrokerError::Rejected(e.to_string())),
                Err(e) => last_error = e.to_string(),
            }
        }
        let attempt_ends = tokio::time::Instant::now() + STORE_ATTEMPT_TIMEOUT;
        for (i, ack) in acks {
            match tokio::time::timeout_at(attempt_ends, ack.into_future()).await {
                Ok(Ok(ack)) => sequences[i] = Some(ack.sequence),
                Ok(Err(e)) if lasting(e.kind()) => return Err(BrokerError::Rejected(e.to_string())),
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "no acknowledgement in time".into(),
            }
        }
        if sequences.iter().all(Option::is_some) {
            return Ok(sequences.into_iter().flatten().collect());
        }
        let now = tokio::time::Instant::now();
        if now >= deadline {
            return Err(BrokerError::Unavailable(format!(
                "the stream {STREAM} did not store the event within {}s: {last_error}",
                retry.as_secs()
            )));
        }
        tracing::debug!(id, error = %last_error, "the stream did not store an event yet; trying again");
        if attempt.is_multiple_of(via.len()) {
            // Every connection has had its try: wait before the next round.
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
        }
    }
}

/// The stream `HERALD`: every `<prefix>.events.>` subject, republished to `<prefix>.live.>`.
pub fn stream_config(prefix: &str, opts: StreamOptions) -> jetstream::stream::Config {
    let max_age = opts.limits.max_age;
    jetstream::stream::Config {
        name: STREAM.into(),
        description: Some("Herald events, kept for resuming clients".into()),
        subjects: vec![format!("{prefix}.events.>")],
        republish: Some(jetstream::stream::Republish {
            source: format!("{prefix}.events.>"),
            destination: format!("{prefix}.live.>"),
            headers_only: false,
        }),
        max_age,
        max_messages_per_subject: i64::try_from(opts.limits.max_per_subject).unwrap_or(i64::MAX),
        duplicate_window: opts.limits.dedup_window.min(max_age),
        storage: jetstream::stream::StorageType::File,
        num_replicas: opts.replicas,
        allow_direct: true,
        ..Default::default()
    }
}

/// Reads the stream's current info, and refreshes the cached epoch from it (the stream may have
/// been recreated since we last looked).
///
/// Only from a leader that can store ([`can_store`]): a leader cut off from the others may still
/// answer, from a history that stopped while the others went on, and a replay or resume that
/// took its bounds would miss what was stored meanwhile.
async fn stream_info(
    js: &jetstream::Context,
    epoch: &RwLock<Arc<str>>,
) -> Result<(jetstream::stream::Stream, jetstream::stream::Info, Arc<str>), BrokerError> {
    let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("the stream {STREAM}: {e}"));
    // Fetching the stream reads its info: one request.
    let stream = js.get_stream(STREAM).await.map_err(|e| unavailable(&e))?;
    let info = stream.cached_info().clone();
    if !can_store(&info) {
        return Err(unavailable(&"its leader does not hear from a quorum of its replicas"));
    }
    let current = epoch_in(&info);
    *epoch.write() = current.clone();
    Ok((stream, info, current))
}

/// The stream metadata entry holding the stream's epoch.
const EPOCH_METADATA: &str = "herald.epoch";

/// Creates the stream with `config`, or updates it to `config`, keeping its epoch.
///
/// An epoch names one incarnation of the stream. It is written into the stream's metadata when
/// the stream is created, and read back from there: every replica answers the same. (The
/// stream's creation time, which names a stream created without it, is not: after a node
/// loss, a replica can report a creation time a fraction of a millisecond off, which would
/// send every client a reset.)
async fn ensure_stream(
    js: &jetstream::Context,
    mut config: jetstream::stream::Config,
) -> Result<jetstream::stream::Info, String> {
    let epoch = match js.get_stream(STREAM).await {
        Ok(stream) => epoch_in(stream.cached_info()),
        Err(e) => match e.kind() {
            jetstream::context::GetStreamErrorKind::JetStream(e)
                if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND =>
            {
                epoch_of(&time::OffsetDateTime::now_utc())
            }
            _ => return Err(e.to_string()),
        },
    };
    config.metadata.insert(EPOCH_METADATA.into(), epoch.to_string());
    // Two gateways creating the stream at once: one of the creates fails (another epoch), and
    // the caller's retry finds the stream and keeps its epoch.
    js.create_or_update_stream(config).await.map_err(|e| e.to_string())
}

/// The epoch of the stream `info` describes: from its metadata, or else its creation time.
fn epoch_in(info: &jetstream::stream::Info) -> Arc<str> {
    match info.config.metadata.get(EPOCH_METADATA) {
        Some(epoch) if is_epoch(epoch) => Arc::from(epoch.as_str()),
        _ => epoch_of(&info.created),
    }
}

/// Whether `s` can name an epoch: ids are `<epoch>-<seq>`.
fn is_epoch(s: &str) -> bool {
    (1..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase())
}

/// An epoch from a time: its nanoseconds since 1970, in base 36.
fn epoch_of(created: &time::OffsetDateTime) -> Arc<str> {
    let mut n = u128::try_from(created.unix_timestamp_nanos()).unwrap_or(0);
    let mut digits = Vec::new();
    loop {
        digits.push(b"0123456789abcdefghijklmnopqrstuvwxyz"[(n % 36) as usize]);
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    Arc::from(String::from_utf8(digits).unwrap_or_default())
}

/// The stream's first and last sequences and epoch, as one read saw them.
#[derive(Clone)]
struct Bounds {
    first: u64,
    last: u64,
    epoch: Arc<str>,
    reads: Reads,
}

/// How a replay reads one event: by direct get while the stream has a single replica (served
/// outside the JetStream API queue, and there is no other copy to lag behind), from the leader
/// when it has several: a replica still catching up after a node loss would answer a direct
/// get without the newest events, and the walk would end early.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Reads {
    Direct,
    Leader,
}

impl Reads {
    fn of(info: &jetstream::stream::Info) -> Reads {
        if info.config.num_replicas > 1 { Reads::Leader } else { Reads::Direct }
    }

    /// The first event on `subject` at or after `seq`.
    async fn first_from(
        self,
        stream: &jetstream::stream::Stream<()>,
        subject: &str,
        seq: u64,
    ) -> Result<Option<async_nats::jetstream::message::StreamMessage>, BrokerError> {
        use async_nats::jetstream::stream::{DirectGetErrorKind, RawMessageErrorKind};
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("replay: {e}"));
        match self {
            Reads::Direct => match stream.direct_get_next_for_subject(subject, Some(seq)).await {
                Ok(msg) => Ok(Some(msg)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
            Reads::Leader => match stream.get_first_raw_message_by_subject(subject, seq).await {
                Ok(msg) => Ok(Some(msg)),
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
        }
    }

    /// The sequence of the newest event on `subject`.
    async fn newest(self, stream: &jetstream::stream::Stream<()>, subject: &str) -> Result<Option<u64>, BrokerError> {
        use async_nats::jetstream::stream::{DirectGetErrorKind, LastRawMessageErrorKind};
        let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(format!("replay: {e}"));
        match self {
            Reads::Direct => match stream.direct_get_last_for_subject(subject).await {
                Ok(msg) => Ok(Some(msg.sequence)),
                Err(e) if e.kind() == DirectGetErrorKind::NotFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
            Reads::Leader => match stream.get_last_raw_message_by_subject(subject).await {
                Ok(msg) => Ok(Some(msg.sequence)),
                Err(e) if e.kind() == LastRawMessageErrorKind::NoMessageFound => Ok(None),
                Err(e) => Err(unavailable(&e)),
            },
        }
    }
}

impl Bounds {
    fn view(&self) -> resume::Bounds<'_> {
        resume::Bounds { epoch: &self.epoch, first: self.first, last: self.last }
    }

    async fn read(js: &jetstream::Context, epoch: &RwLock<Arc<str>>) -> Result<Bounds, BrokerError> {
        let (_, info, current) = stream_info(js, epoch).await?;
        Ok(Bounds {
            first: info.state.first_sequence,
            last: info.state.last_sequence,
            epoch: current,
            reads: Reads::of(&info),
        })
    }
}

/// One read of the server for every caller waiting at the same moment. Each new stream asks for
/// the stream's newest sequence (its first cursor), each resume for the stream's bounds and the
/// broadcast subject's newest event, and a gateway's death sends thousands of those at once. A
/// caller gets the result of a read sent after its call began, so the answer covers everything
/// stored before the call. A failed read fails everyone who waited for it, rather than each of
/// them trying again in turn.
struct SharedRead<T> {
    latest: tokio::sync::Mutex<Option<(tokio::time::Instant, Result<T, BrokerError>)>>,
}

impl<T> Default for SharedRead<T> {
    fn default() -> Self {
        SharedRead { latest: tokio::sync::Mutex::new(None) }
    }
}

impl<T: Clone> SharedRead<T> {
    async fn read<F>(&self, read: F) -> Result<T, BrokerError>
    where
        F: Future<Output = Result<T, BrokerError>>,
    {
        let called = tokio::time::Instant::now();
        // Callers queue here while a read is out; the first of them sends the next one.
        let mut latest = self.latest.lock().await;
        if let Some((sent, value)) = &*latest
            && *sent > called
        {
            return value.clone();
        }
        let sent = tokio::time::Instant::now();
        let value = read.await;
        *latest = Some((sent, value.clone()));
        value
    }
}

/// What a walk shares with the other resumes of its moment.
#[derive(Default)]
struct Shared {
    bounds: SharedRead<Bounds>,
    /// The sequence of the newest broadcast event (`None`: there is none). Every stream carries
    /// broadcast, and broadcasts are rare: one read tells most resumes there is nothing to walk.
    broadcast_last: SharedRead<Option<u64>>,
}

/// A client's replay, walked one read per event ([`Reads`]) and sent a page at a time.
///
/// [`NatsBroker::resume`] reads the stream's bounds after the client's live subscriptions were in
/// place: every event up to that read's last sequence `L` is stored, and every later one reaches
/// the client live. For each subject, its newest event `N` is read first (the server's
/// per-subject index answers it): at or before the client's id, nothing was missed there. The
/// others are walked from the client's id to `min(N, L)`, one read per event: the walk
/// keeps each subject's next event, and each page takes the oldest of them until the page is
/// full. So a stream holds at most a page and one event per subject of its replay, never the
/// whole gap. The held live events continue from `L`.
///
/// After the last page, the bounds are read again: if the history no longer reaches back to the
/// client's id, an event of the gap may have aged out unread; and a subject that had as many
/// events in the gap as the per-subject limit keeps may have lost older ones to it. Either way
/// the client gets a `reset` after what it was sent.
struct Walk {
    stream: jetstream::stream::Stream<()>,
    js: jetstream::Context,
    shared: Arc<Shared>,
    epoch: Arc<RwLock<Arc<str>>>,
    after: EventId,
    /// The history's head when the replay was decided: where a reset moves the cursor.
    head: Option<EventId>,
    subjects: Vec<Walking>,
    reads: Reads,
    /// Events the stream keeps per subject (0: unknown).
    per_subject_cap: u64,
    started: bool,
}

/// One subject of a walk.
struct Walking {
    target: Target,
    subject: String,
    /// The next sequence to ask for.
    next: u64,
    /// The last sequence the walk covers on this subject.
    end: u64,
    /// The subject's next event and its sequence, read and not yet handed out.
    ahead: Option<(u64, Delivery)>,
    done: bool,
    /// Events of the gap read on this subject.
    read: u64,
}

impl Walking {
    /// Reads the subject's next event of the gap into `ahead`, unless it has one or is done.
    async fn fill(
        &mut self,
        stream: &jetstream::stream::Stream<()>,
        reads: Reads,
        epoch: &Arc<str>,
    ) -> Result<(), BrokerError> {
        if self.done || self.ahead.is_some() {
            return Ok(());
        }
        if self.next > self.end {
            self.done = true;
            return Ok(());
        }
        match reads.first_from(stream, self.subject.as_str(), self.next).await? {
            Some(msg) if msg.sequence <= self.end => {
                self.next = msg.sequence + 1;
                let id = EventId { epoch: epoch.clone(), seq: msg.sequence };
                self.ahead = Some((msg.sequence, event_from(Some(msg.headers), Some(id), msg.payload)));
            }
            _ => self.done = true,
        }
        Ok(())
    }
}

impl Pages for Walk {
    fn next(&mut self, room: usize) -> BoxFuture<'_, Result<Page, BrokerError>> {
        async move {
            let epoch = self.after.epoch.clone();
            if !self.started {
                // Every subject's first event at once: one round trip, not one per subject.
                self.started = true;
                let stream = &self.stream;
                let reads = self.reads;
                let fills = self.subjects.iter_mut().map(|w| w.fill(stream, reads, &epoch));
                for filled in futures_util::future::join_all(fills).await {
                    filled?;
                }
            }
            let mut page = Vec::new();
            let mut bytes = 0;
            // Each time, the oldest event any subject has ahead, while it fits.
            while let Some(w) = self
                .subjects
                .iter_mut()
                .filter(|w| w.ahead.is_some())
                .min_by_key(|w| w.ahead.as_ref().map_or(u64::MAX, |(seq, _)| *seq))
            {
                let size = w.ahead.as_ref().map_or(0, |(_, d)| frame_estimate(&w.target, d));
                if !page.is_empty() && bytes + size > room {
                    break;
                }
                let Some((_, delivery)) = w.ahead.take() else { break };
                bytes += size;
                w.read += 1;
                page.push((w.target.clone(), delivery));
                w.fill(&self.stream, self.reads, &epoch).await?;
            }
            if !page.is_empty() {
                return Ok(Page::Events(page));
            }
            // The gap is walked: did the history keep all of it meanwhile?
            let now = self.shared.bounds.read(Bounds::read(&self.js, &self.epoch)).await?;
            let most = self.subjects.iter().map(|w| w.read).max().unwrap_or(0);
            Ok(match resume::after_walk(&self.after, &now.view(), most, self.per_subject_cap) {
                Some(reason) => Page::Reset(reason, self.head.clone()),
                None => Page::End,
            })
        }
        .boxed()
    }
}

/// The first value of header `name`, taken out of `headers` rather than copied.
fn take_header(headers: Option<&mut HeaderMap>, name: HeaderName) -> Option<String> {
    headers?.remove(name)?.into_iter().next().map(String::from)
}

/// The trace context in a message's headers, while traces are on. NATS headers are
/// case-sensitive: `traceparent` as W3C writes it, or `Traceparent` as Go's HTTP-style carriers do.
fn trace_from(headers: Option<&HeaderMap>) -> Option<Box<TraceContext>> {
    if !trace::on() {
        return None;
    }
    let headers = headers?;
    let get = |name: &str| {
        let value = headers.get(name).or_else(|| {
            let mut title = name.to_owned();
            title[..1].make_ascii_uppercase();
            headers.get(title.as_str())
        });
        value.map(|v| v.as_str())
    };
    TraceContext::from_headers(get).map(Box::new)
}

/// Turns a live NATS message into a delivery. Only the stream's republish makes it durable, with
/// id `<epoch>-<seq>` (see `republished_seq`): the epoch is read for those alone.
fn delivery_from(msg: Message, prefix: &str, epoch: &RwLock<Arc<str>>) -> Delivery {
    let seq = msg.headers.as_ref().and_then(|h| republished_seq(h, prefix, &msg.subject));
    event_from(msg.headers, seq.map(|seq| EventId { epoch: epoch.read().clone(), seq }), msg.payload)
}

/// The stream sequence of a message that the stream `HERALD` republished on the live subject
/// `live`, or `None` when the message did not come that way.
///
/// The republish keeps the stored message's own headers and appends `Nats-Stream`,
/// `Nats-Subject` and `Nats-Sequence` after them: the last value of each is the server's, while
/// a value a publisher wrote comes before it (a durable publish) or is the only one (a publish
/// straight to the live subject). A message counts as republished only when the last
/// `Nats-Stream` names the stream and the last `Nats-Subject` is the stored subject behind
/// `live`; then the last `Nats-Sequence` is its id.
fn republished_seq(headers: &HeaderMap, prefix: &str, live: &str) -> Option<u64> {
    let last = |name: &str| headers.get_last(name).map(|v| v.as_str());
    if last(HEADER_STREAM)? != STREAM {
        return None;
    }
    let rest = live.strip_prefix(prefix)?.strip_prefix(".live.")?;
    let stored = last(HEADER_SUBJECT)?;
    let stored_rest = stored.strip_prefix(prefix)?.strip_prefix(".events.")?;
    if stored_rest != rest {
        return None;
    }
    let seq = last(HEADER_SEQUENCE)?;
    // Digits only: `u64::from_str` would also take a leading `+`.
    if seq.is_empty() || !seq.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    seq.parse().ok().filter(|&seq| seq > 0)
}

/// How many events of `filters` the stream holds after sequence `after`: the pending count of
/// an ordered consumer made for the purpose (ephemeral, it goes away by itself).
async fn count_after<I>(
    stream: &jetstream::stream::Stream<I>,
    filters: Vec<String>,
    after: u64,
) -> Result<u64, BrokerError> {
    let consumer = stream
        .create_consumer(pull::OrderedConfig {
            filter_subjects: filters,
            deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after + 1 },
            ..Default::default()
        })
        .await
        .map_err(|e| BrokerError::Unavailable(format!("replay: {e}")))?;
    Ok(consumer.cached_info().num_pending)
}

/// A delivery from an event's headers and payload (live, replayed by a walk or by a consumer).
/// The values it keeps are moved out of the headers, not copied.
fn event_from(mut headers: Option<HeaderMap>, id: Option<EventId>, payload: Bytes) -> Delivery {
    let trace = trace_from(headers.as_ref());
    let published_at =
        headers.as_ref().and_then(|h| h.get(PUBLISHED_AT_NAME)).and_then(|v| parse_published_at(v.as_str()));
    Delivery {
        event_type: take_header(headers.as_mut(), TYPE_NAME).unwrap_or_else(|| DEFAULT_EVENT_TYPE.to_owned()),
        from: take_header(headers.as_mut(), FROM_NAME),
        id,
        trace,
        published_at,
        payload,
    }
}

/// Headers for an event published by Herald, with its trace context when it has one.
pub fn event_headers(event_type: &str, trace: Option<&TraceContext>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    headers.insert(HEADER_TYPE, event_type);
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    headers.insert(HEADER_PUBLISHED_AT, now.as_nanos().to_string().as_str());
    if let Some(trace) = trace {
        headers.insert(trace_context::TRACEPARENT, trace.traceparent.as_str());
        if let Some(state) = &trace.tracestate {
            headers.insert(trace_context::TRACESTATE, state.as_str());
        }
    }
    headers
}

impl Broker for NatsBroker {
    fn subscribe(&self, target: Target) -> BoxFuture<'static, Result<EventStream, BrokerError>> {
        let client = self.client.clone();
        let subject = target.subject(&self.prefix, SubjectKind::Live);
        let confirmations = self.confirmations.clone();
        let epoch = self.epoch.clone();
        let prefix = self.prefix.clone();
        async move {
            let sub = client.subscribe(subject).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            confirmations.confirm().await?;
            Ok(Box::pin(sub.map(move |msg| delivery_from(msg, &prefix, &epoch))) as EventStream)
        }
        .boxed()
    }

    fn publish(&self, targets: Vec<Target>, event: Outgoing) -> BoxFuture<'static, Result<Vec<EventId>, BrokerError>> {
        let client = self.client.clone();
        let prefix = self.prefix.clone();
        let durable = event.durable.then(|| self.jetstream.clone()).flatten();
        let epoch = self.epoch.clone();
        let publish_retry = self.publish_retry;
        let owner = self.owner();
        async move {
            let mut headers = event_headers(&event.event_type, event.trace.as_ref());
            if let Some(from) = &event.from {
                headers.insert(HEADER_FROM, from.as_str());
            }
            let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
            let Some(js) = durable else {
                for target in &targets {
                    let subject = target.subject(&prefix, SubjectKind::Live);
                    client
                        .publish_with_headers(subject, headers.clone(), event.payload.clone())
                        .await
                        .map_err(|e| unavailable(&e))?;
                }
                client.flush().await.map_err(|e| unavailable(&e))?;
                return Ok(Vec::new());
            };
            // Every stored event carries a message id (the publisher's, or one made up here), so
            // an attempt that may or may not have been stored can be sent again: the stream
            // answers a repeat with the first one's sequence and stores nothing.
            let id = event.id.clone().unwrap_or_else(|| format!("{:032x}", rand::random::<u128>()));
            let worker = worker_jetstream(owner);
            let via: Vec<&jetstream::Context> = worker.iter().chain([&js]).collect();
            let sequences = store(&via, &prefix, &targets, &headers, &event.payload, &id, publish_retry).await?;
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
        let js = self.jetstream.clone();
        let prefix = self.prefix.clone();
        let epoch = self.epoch.clone();
        let shared = self.shared.clone();
        let per_subject_cap = self.per_subject_cap;
        async move {
            let Some(js) = js else {
                // Live-only: there is no history to resume from.
                return Ok(Resumption::Reset(ResetReason::HistoryExpired, None));
            };
            // Usually a few events on a few subjects, often for thousands of clients at once (a
            // gateway died): the stream-wide reads are shared by the resumes of one moment, and
            // the walk costs no consumer.
            let bounds = shared.bounds.read(Bounds::read(&js, &epoch)).await?;
            let head = Some(EventId { epoch: bounds.epoch.clone(), seq: bounds.last });
            match resume::start(&after, &bounds.view()) {
                Start::Replay => {}
                Start::UpToDate => return Ok(Resumption::UpToDate),
                Start::Reset(reason) => return Ok(Resumption::Reset(reason, head)),
            }
            let stream = js.get_stream_no_info(STREAM).await.map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            // Each subject's newest event first: the server finds it from its per-subject index,
            // while "the next event after n" scans the messages after n until one matches. Most
            // resuming clients missed nothing on most subjects, and then this is all it costs.
            let reads = bounds.reads;
            let newest = targets.into_iter().map(|target| {
                let (stream, shared) = (&stream, &shared);
                let subject = target.subject(&prefix, SubjectKind::Events);
                async move {
                    let read = reads.newest(stream, subject.as_str());
                    let newest = if target == Target::Broadcast {
                        // Every stream carries broadcast: one read for all the resumes of this moment.
                        shared.broadcast_last.read(read).await?
                    } else {
                        read.await?
                    };
                    Ok::<_, BrokerError>((target, subject, newest))
                }
            });
            let mut subjects = Vec::new();
            for found in futures_util::future::join_all(newest).await {
                let (target, subject, newest) = found?;
                if let Some(end) = resume::walk_end(after.seq, newest, bounds.last) {
                    let next = after.seq + 1;
                    subjects.push(Walking { target, subject, next, end, ahead: None, done: false, read: 0 });
                }
            }
            if subjects.is_empty() {
                return Ok(Resumption::UpToDate);
            }
            // More than `max` missed? When it may be, one consumer counts them.
            if resume::may_exceed(after.seq, bounds.last, per_subject_cap, subjects.len(), max) {
                let filters = subjects.iter().map(|w| w.subject.clone()).collect();
                if count_after(&stream, filters, after.seq).await? > max as u64 {
                    return Ok(Resumption::Reset(ResetReason::TooMany, head));
                }
            }
            Ok(Resumption::Replay(Box::new(Walk {
                stream,
                js,
                shared,
                epoch,
                after,
                head,
                subjects,
                reads,
                per_subject_cap,
                started: false,
            })))
        }
        .boxed()
    }

    fn replay(&self, after: EventId, max: usize) -> BoxFuture<'static, Result<Replay, BrokerError>> {
        let js = self.jetstream.clone();
        let prefix = self.prefix.clone();
        let epoch = self.epoch.clone();
        let confirmations = self.confirmations.clone();
        let per_subject_cap = self.per_subject_cap;
        async move {
            let Some(js) = js else {
                // Live-only: there is no history to resume from.
                return Ok(Replay::Reset(ResetReason::HistoryExpired, None));
            };
            let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
            // Make sure the resubscriptions after a reconnect are in place at the server first,
            // so that nothing falls between the replay and live delivery.
            confirmations.confirm().await?;
            let (stream, info, current) = stream_info(&js, &epoch).await?;
            let head = Some(EventId { epoch: current.clone(), seq: info.state.last_sequence });
            let bounds =
                resume::Bounds { epoch: &current, first: info.state.first_sequence, last: info.state.last_sequence };
            match resume::start(&after, &bounds) {
                Start::Replay => {}
                Start::UpToDate => return Ok(Replay::Events(Vec::new())),
                Start::Reset(reason) => return Ok(Replay::Reset(reason, head)),
            }
            let filters = vec![format!("{prefix}.events.>")];
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subjects: filters,
                    deliver_policy: DeliverPolicy::ByStartSequence { start_sequence: after.seq + 1 },
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&e))?;
            let pending = usize::try_from(consumer.cached_info().num_pending).unwrap_or(usize::MAX);
            if pending > max {
                return Ok(Replay::Reset(ResetReason::TooMany, head));
            }
            let mut events = Vec::with_capacity(pending);
            // Events read per subject: one that had as many in the gap as the history keeps per
            // subject may have lost older ones to that limit before they were read.
            let mut per_subject: HashMap<&Target, u64> = HashMap::new();
            if pending > 0 {
                let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
                // What the consumer still had after the last message read; 0 with fewer than
                // `pending` read means the rest vanished (aged out or evicted) mid-replay.
                let mut left = None;
                let mut last_read = 0;
                let mut quiet_since = tokio::time::Instant::now();
                while events.len() < pending {
                    if left == Some(0) {
                        return Ok(Replay::Reset(ResetReason::HistoryExpired, head));
                    }
                    let mut msg = match tokio::time::timeout(VANISHED_CHECK, messages.next()).await {
                        Ok(msg) => msg
                            .ok_or_else(|| BrokerError::Unavailable("the replay ended early".into()))?
                            .map_err(|e| unavailable(&e))?,
                        Err(_) => {
                            // Nothing comes: the messages still owed may have aged out.
                            let (_, now, _) = stream_info(&js, &epoch).await?;
                            if after.seq + 1 < now.state.first_sequence {
                                return Ok(Replay::Reset(ResetReason::HistoryExpired, head));
                            }
                            if quiet_since.elapsed() > REPLAY_STEP_TIMEOUT {
                                return Err(BrokerError::Unavailable(
                                    "the stream stopped answering during a replay".into(),
                                ));
                            }
                            continue;
                        }
                    };
                    quiet_since = tokio::time::Instant::now();
                    let meta = msg.info().map_err(|e| unavailable(&e))?;
                    let seq = meta.stream_sequence;
                    left = Some(meta.pending);
                    last_read = seq;
                    let Some(target) = Target::from_subject(&prefix, SubjectKind::Events, &msg.subject) else {
                        continue;
                    };
                    let id = EventId { epoch: current.clone(), seq };
                    events.push((target, event_from(msg.message.headers.take(), Some(id), msg.payload.clone())));
                }
                // A message of the gap that aged out before the consumer reached it is skipped
                // without a trace, and a newer one then takes its place in the count. Only
                // possible when the last message read is newer than the head seen before the
                // consumer was made; then, if the history no longer reaches back to the
                // client's id, it may have missed one.
                if last_read > info.state.last_sequence {
                    let (_, now, _) = stream_info(&js, &epoch).await?;
                    if after.seq + 1 < now.state.first_sequence {
                        return Ok(Replay::Reset(ResetReason::HistoryExpired, head));
                    }
                }
                for (target, _) in &events {
                    *per_subject.entry(target).or_default() += 1;
                }
                let most = per_subject.values().copied().max().unwrap_or(0);
                if per_subject_cap > 0 && most >= per_subject_cap {
                    return Ok(Replay::Reset(ResetReason::HistoryExpired, head));
                }
            }
            Ok(Replay::Events(events))
        }
        .boxed()
    }

    fn last_id(&self) -> BoxFuture<'static, Result<Option<EventId>, BrokerError>> {
        let js = self.jetstream.clone();
        let epoch = self.epoch.clone();
        let shared = self.shared.clone();
        async move {
            let Some(js) = js else { return Ok(None) };
            let bounds = shared.bounds.read(Bounds::read(&js, &epoch)).await?;
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_stream_can_store_with_a_leader_that_hears_a_quorum() {
        let info = |replicas: usize, leader: Option<&str>, peers: serde_json::Value| {
            let mut v = serde_json::json!({
                "config": jetstream::stream::Config { name: STREAM.into(), num_replicas: replicas, ..Default::default() },
                "created": "2026-12-05T00:00:00Z",
                "state": {"messages": 0, "bytes": 0, "first_seq": 0, "first_ts": "2026-12-05T00:00:00Z",
                          "last_seq": 0, "last_ts": "2026-12-05T00:00:00Z", "consumer_count": 0},
                "cluster": {"name": "c", "replicas": peers},
            });
            if let Some(l) = leader {
                v["cluster"]["leader"] = serde_json::json!(l);
            }
            serde_json::from_value::<jetstream::stream::Info>(v).unwrap()
        };
        let peer = |active_ms: u64, offline: bool| serde_json::json!({"name": "p", "current": true, "active": active_ms * 1_000_000, "offline": offline});
        use serde_json::json;
        assert!(can_store(&info(1, Some("n0"), json!([]))), "R1: the leader that answered");
        assert!(can_store(&info(1, None, json!([]))), "R1 on a single server: no cluster info");
        assert!(can_store(&info(3, Some("n0"), json!([peer(200, false), peer(300, false)]))));
        assert!(can_store(&info(3, Some("n0"), json!([peer(200, false), peer(0, true)]))), "one replica lost");
        assert!(!can_store(&info(3, Some("n0"), json!([peer(9_000, false), peer(8_000, false)]))), "a leader cut off");
        assert!(!can_store(&info(3, Some("n0"), json!([peer(0, true), peer(0, true)]))), "both replicas lost");
        assert!(!can_store(&info(3, None, json!([peer(200, false), peer(300, false)]))), "no leader");
        assert!(can_store(&info(5, Some("n0"), json!([peer(1, false), peer(1, false), peer(0, true), peer(0, true)]))));
        assert!(!can_store(&info(5, Some("n0"), json!([peer(1, false), peer(0, true), peer(0, true), peer(0, true)]))));
    }

    use super::*;

    /// Headers as the stream's republish writes them after `own`, the stored message's own.
    fn republished(own: &[(&str, &str)], subject: &str, seq: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        for (name, value) in own {
            headers.append(*name, *value);
        }
        headers.append(HEADER_STREAM, STREAM);
        headers.append(HEADER_SUBJECT, subject);
        headers.append(HEADER_SEQUENCE, seq);
        headers.append("Nats-Last-Sequence", "0");
        headers
    }

    #[test]
    fn ids_come_only_from_the_republish() {
        let live = "herald.live.user.u1";
        let seq = |h: &HeaderMap| republished_seq(h, "herald", live);
        assert_eq!(seq(&republished(&[], "herald.events.user.u1", "19")), Some(19));
        // A durable publish that carried its own copies: the server's come last.
        let own = [(HEADER_SEQUENCE, "3"), (HEADER_STREAM, STREAM), (HEADER_SUBJECT, "herald.events.user.u1")];
        assert_eq!(seq(&republished(&own, "herald.events.user.u1", "19")), Some(19));

        // A publish straight to the live subject, however it is dressed.
        let mut core = HeaderMap::new();
        core.insert(HEADER_SEQUENCE, "999999999");
        assert_eq!(seq(&core), None, "no stream header");
        core.insert(HEADER_STREAM, "OTHER");
        core.insert(HEADER_SUBJECT, "herald.events.user.u1");
        assert_eq!(seq(&core), None, "another stream");
        // Republished, but for another subject than the one it arrived on.
        assert_eq!(seq(&republished(&[], "herald.events.user.u2", "19")), None);
        assert_eq!(seq(&republished(&[], "herald.events.user.u1.x", "19")), None);
        assert_eq!(seq(&republished(&[], "other.events.user.u1", "19")), None);
        for bad in ["", "+19", "-1", "0", "1e3", "99999999999999999999999"] {
            assert_eq!(seq(&republished(&[], "herald.events.user.u1", bad)), None, "{bad:?}");
        }
        assert_eq!(
            republished_seq(&republished(&[], "herald.events.user.u1", "7"), "herald", "herald.events.user.u1"),
            None
        );
    }

    #[test]
    fn an_event_takes_its_type_sender_and_stamp_from_its_headers() {
        let own = [(HEADER_TYPE, "booking_update"), (HEADER_FROM, "u7"), (HEADER_PUBLISHED_AT, "1700000000000000000")];
        let d = event_from(Some(republished(&own, "herald.events.user.u1", "19")), None, Bytes::from_static(b"{}"));
        assert_eq!(d.event_type, "booking_update");
        assert_eq!(d.from.as_deref(), Some("u7"));
        assert_eq!(d.published_at, Some(1_700_000_000_000_000_000));

        // Without them: the default type, no sender, no stamp.
        let d = event_from(Some(HeaderMap::new()), None, Bytes::from_static(b"{}"));
        assert_eq!((d.event_type.as_str(), d.from, d.published_at), (DEFAULT_EVENT_TYPE, None, None));
        let d = event_from(None, None, Bytes::from_static(b"{}"));
        assert_eq!(d.event_type, DEFAULT_EVENT_TYPE);
    }
}
