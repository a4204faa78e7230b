//! Where each pod keeps its part of the fleet's presence: one entry per (channel, pod), the
//! JSON of that pod's users on that channel.
//!
//! With NATS it is the JetStream key-value bucket `HERALD_PRESENCE` (memory storage, one value
//! per key, entries expire after the presence TTL unless rewritten); in `dev` mode, a map.
//! Keys are `<channel>.<pod>`, each part escaped to the key alphabet (see [`key_part`]).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use bytes::Bytes;
use futures_util::future::BoxFuture;
use futures_util::{FutureExt, Stream, StreamExt};
use parking_lot::Mutex;
use tokio::sync::mpsc;

use crate::broker::BrokerError;
use crate::names::Name;

/// The bucket's name (its stream is `KV_HERALD_PRESENCE`).
pub const BUCKET: &str = "HERALD_PRESENCE";

/// One pod's entry changed: its new value, or `None` once it is deleted.
pub type Update = (String, Option<Bytes>);

/// The changes after a snapshot, in order.
pub type Updates = Pin<Box<dyn Stream<Item = Update> + Send>>;

/// Every pod's entry for a channel: (pod, value, age).
pub type Snapshot = Vec<(String, Bytes, Duration)>;

/// The channels of a batch that were not written, each with why.
pub type Unwritten = Vec<(Name, BrokerError)>;

/// A shared store of presence entries.
pub trait PresenceStore: Send + Sync + 'static {
    /// Writes this pod's entries: a value per channel, or `None` to delete it. Each channel is
    /// written or not on its own: one the store refuses keeps none of the others from it.
    fn write(&self, pod: &str, batch: Vec<(Name, Option<Bytes>)>) -> BoxFuture<'static, Result<(), Unwritten>>;

    /// Every pod's current entry for `channel`, then each change after it, until the watch fails:
    /// the caller watches again.
    fn watch(&self, channel: &Name) -> BoxFuture<'static, Result<(Snapshot, Updates), BrokerError>>;
}

/// Escapes a name or pod id to the key alphabet (`A-Z a-z 0-9 _ -`, then `=XX` for any other
/// byte, `.` and `=` included), so that it is exactly one token of the key.
pub fn key_part(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    for b in raw.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("={b:02X}"));
        }
    }
    out
}

/// Reverses [`key_part`]; `None` for anything it could not have produced.
pub fn unkey_part(key: &str) -> Option<String> {
    let bytes = key.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'=' {
            let hex = key.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

/// The bucket in JetStream, created (or updated) on first use: NATS may be down at start. It is
/// kept in memory, so a NATS restart empties it of everything, itself included: a write or a
/// read that JetStream answers "no such stream" makes it again the next time (one at a time:
/// after a restart every watched channel finds it gone at once).
pub struct NatsPresence {
    js: jetstream::Context,
    config: jetstream::stream::Config,
    /// The bucket was made (or found), and JetStream has not said it is gone since.
    ready: Arc<tokio::sync::Mutex<bool>>,
}

const KV_OPERATION: &str = "KV-Operation";
/// Longest a snapshot read waits for its next entry before taking what it has.
const SNAPSHOT_STEP: Duration = Duration::from_millis(500);

impl NatsPresence {
    /// Entries expire `ttl` after their last write.
    pub fn new(js: jetstream::Context, ttl: Duration, replicas: usize) -> Self {
        let config = jetstream::stream::Config {
            name: format!("KV_{BUCKET}"),
            description: Some("Herald presence: each gateway's members of each presence-enabled channel".into()),
            subjects: vec![format!("$KV.{BUCKET}.>")],
            max_messages_per_subject: 1,
            max_age: ttl,
            storage: jetstream::stream::StorageType::Memory,
            num_replicas: replicas,
            discard: jetstream::stream::DiscardPolicy::New,
            allow_rollup: true,
            deny_delete: true,
            allow_direct: true,
            ..Default::default()
        };
        NatsPresence { js, config, ready: Arc::new(tokio::sync::Mutex::new(false)) }
    }

    fn ensure(&self) -> impl std::future::Future<Output = Result<(), BrokerError>> + Send + 'static {
        let (js, config, ready) = (self.js.clone(), self.config.clone(), self.ready.clone());
        async move {
            let mut made = ready.lock().await;
            if !*made {
                js.create_or_update_stream(config)
                    .await
                    .map_err(|e| BrokerError::Unavailable(format!("the presence bucket {BUCKET}: {e}")))?;
                *made = true;
            }
            Ok(())
        }
    }
}

/// JetStream says the bucket is gone: it is made again before the next write or read.
async fn forget(ready: &tokio::sync::Mutex<bool>) {
    *ready.lock().await = false;
}

impl PresenceStore for NatsPresence {
    fn write(&self, pod: &str, batch: Vec<(Name, Option<Bytes>)>) -> BoxFuture<'static, Result<(), Unwritten>> {
        let js = self.js.clone();
        let pod = key_part(pod);
        let (ensure, ready) = (self.ensure(), self.ready.clone());
        async move {
            if let Err(e) = ensure.await {
                return Err(batch.into_iter().map(|(channel, _)| (channel, e.clone())).collect());
            }
            let mut gone = false;
            let mut unavailable = |e: &jetstream::context::PublishError| {
                gone |= e.kind() == jetstream::context::PublishErrorKind::StreamNotFound;
                BrokerError::Unavailable(e.to_string())
            };
            let max_payload = js.client().server_info().max_payload;
            let mut unwritten = Vec::new();
            // Every write first, then every acknowledgement: one round trip for the batch.
            let mut acks = Vec::with_capacity(batch.len());
            for (channel, value) in batch {
                let subject = format!("$KV.{BUCKET}.{}.{pod}", key_part(channel.as_str()));
                let ack = match value {
                    Some(value) if max_payload > 0 && value.len() > max_payload => {
                        let too_large = format!(
                            "its entry of {} bytes exceeds the NATS server's max_payload ({max_payload})",
                            value.len()
                        );
                        unwritten.push((channel, BrokerError::Rejected(too_large)));
                        continue;
                    }
                    Some(value) => js.publish(subject, value).await,
                    None => {
                        let mut headers = async_nats::HeaderMap::new();
                        headers.insert(KV_OPERATION, "DEL");
                        js.publish_with_headers(subject, headers, Bytes::new()).await
                    }
                };
                match ack {
                    Ok(ack) => acks.push((channel, ack)),
                    Err(e) => unwritten.push((channel, unavailable(&e))),
                }
            }
            for (channel, ack) in acks {
                if let Err(e) = ack.await {
                    unwritten.push((channel, unavailable(&e)));
                }
            }
            if gone {
                forget(&ready).await;
            }
            if unwritten.is_empty() { Ok(()) } else { Err(unwritten) }
        }
        .boxed()
    }

    fn watch(&self, channel: &Name) -> BoxFuture<'static, Result<(Snapshot, Updates), BrokerError>> {
        let js = self.js.clone();
        let prefix = format!("$KV.{BUCKET}.{}.", key_part(channel.as_str()));
        let (ensure, ready) = (self.ensure(), self.ready.clone());
        async move {
            ensure.await?;
            let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
            let stream = match js.get_stream(format!("KV_{BUCKET}")).await {
                Ok(stream) => stream,
                Err(e) => {
                    if crate::broker::nats::is_not_found(&e) {
                        forget(&ready).await;
                    }
                    return Err(unavailable(&e));
                }
            };
            let consumer = stream
                .create_consumer(pull::OrderedConfig {
                    filter_subject: format!("{prefix}*"),
                    deliver_policy: DeliverPolicy::LastPerSubject,
                    ..Default::default()
                })
                .await
                .map_err(|e| unavailable(&e))?;
            let mut expected = consumer.cached_info().num_pending;
            let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
            let mut snapshot = Vec::new();
            // The entries there now; one that expires meanwhile is simply not waited for.
            while expected > 0 {
                let Ok(Some(msg)) = tokio::time::timeout(SNAPSHOT_STEP, messages.next()).await else { break };
                let msg = msg.map_err(|e| unavailable(&e))?;
                let Ok(info) = msg.info() else { break };
                expected = info.pending;
                let age = SystemTime::from(info.published).elapsed().unwrap_or_default();
                if let Some((pod, Some(value))) = update_of(&prefix, &msg) {
                    snapshot.push((pod, value, age));
                }
            }
            // An error ends the watch, which starts again (see `PresenceStore::watch`): an ordered
            // consumer whose stream is gone fails for ever, and the watch went on, deaf, until the
            // pod restarted.
            let updates = messages
                .take_while(|msg| {
                    if let Err(e) = msg {
                        tracing::debug!(error = %e, "the presence watch failed");
                    }
                    std::future::ready(msg.is_ok())
                })
                .filter_map(move |msg| {
                    let update = msg.ok().and_then(|msg| update_of(&prefix, &msg));
                    async move { update }
                });
            Ok((snapshot, Box::pin(updates) as Updates))
        }
        .boxed()
    }
}

fn update_of(prefix: &str, msg: &jetstream::Message) -> Option<Update> {
    let pod = unkey_part(msg.subject.as_str().strip_prefix(prefix)?)?;
    let deleted =
        msg.headers.as_ref().and_then(|h| h.get(KV_OPERATION)).is_some_and(|op| matches!(op.as_str(), "DEL" | "PURGE"));
    Some((pod, (!deleted).then(|| msg.payload.clone())))
}

/// `dev` mode: one process, one map.
#[derive(Default)]
pub struct MemoryPresence {
    inner: Mutex<MemoryInner>,
}

#[derive(Default)]
struct MemoryInner {
    entries: HashMap<Name, HashMap<String, Bytes>>,
    watchers: HashMap<Name, Vec<mpsc::UnboundedSender<Update>>>,
}

impl MemoryPresence {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
}

impl PresenceStore for MemoryPresence {
    fn write(&self, pod: &str, batch: Vec<(Name, Option<Bytes>)>) -> BoxFuture<'static, Result<(), Unwritten>> {
        let mut inner = self.inner.lock();
        for (channel, value) in batch {
            let entries = inner.entries.entry(channel.clone()).or_default();
            match &value {
                Some(v) => {
                    entries.insert(pod.to_owned(), v.clone());
                }
                None => {
                    entries.remove(pod);
                }
            }
            if entries.is_empty() {
                inner.entries.remove(&channel);
            }
            if let Some(watchers) = inner.watchers.get_mut(&channel) {
                watchers.retain(|w| w.send((pod.to_owned(), value.clone())).is_ok());
                if watchers.is_empty() {
                    inner.watchers.remove(&channel);
                }
            }
        }
        async { Ok(()) }.boxed()
    }

    fn watch(&self, channel: &Name) -> BoxFuture<'static, Result<(Snapshot, Updates), BrokerError>> {
        let mut inner = self.inner.lock();
        let snapshot = inner
            .entries
            .get(channel)
            .map(|e| e.iter().map(|(pod, v)| (pod.clone(), v.clone(), Duration::ZERO)).collect())
            .unwrap_or_default();
        let (tx, mut rx) = mpsc::unbounded_channel();
        inner.watchers.entry(channel.clone()).or_default().push(tx);
        let updates = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
        async move { Ok((snapshot, Box::pin(updates) as Updates)) }.boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_parts_are_one_token_of_the_key_alphabet_and_reversible() {
        for raw in ["doc:1", "org.42.dashboard", "a=b", "ana@example.com", "x+y~z", "pod-7f3a", "Ünï"] {
            let k = key_part(raw);
            assert!(k.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-=".contains(&b)), "{k}");
            assert_eq!(unkey_part(&k).as_deref(), Some(raw));
        }
        assert_eq!(key_part("doc:1"), "doc=3A1");
        assert_eq!(unkey_part("=Z1"), None);
        assert_eq!(unkey_part("abc="), None);
    }

    /// A pod writes all its dirty channels in one batch (`Presence::flush`). One channel whose
    /// entry NATS refuses (larger than the server's `max_payload`: docs/presence.md's "past
    /// about 30,000 users of one channel", or far fewer under a lowered `max_payload`) keeps
    /// none of the pod's other channels from being written (before: the batch stopped there and
    /// was retried whole every second, so theirs expired after the TTL and their members left
    /// on every other gateway).
    #[tokio::test]
    async fn one_oversized_entry_does_not_keep_the_other_channels_from_being_written() {
        let nats = herald_testkit::Nats::start();
        let js = async_nats::jetstream::new(nats.client().await);
        let store = NatsPresence::new(js.clone(), Duration::from_secs(30), 1);
        let big = Name::parse("doc:big").unwrap();
        let small = Name::parse("doc:small").unwrap();
        let huge = Bytes::from(vec![b' '; 2 * 1024 * 1024]);
        let entry = Bytes::from_static(br#"{"users":{"ana":{"connections":1}}}"#);
        let result = store.write("pod-1", vec![(big.clone(), Some(huge)), (small.clone(), Some(entry))]).await;
        let unwritten = result.expect_err("the oversized entry is refused");
        assert_eq!(unwritten.len(), 1, "{unwritten:?}");
        assert_eq!(unwritten[0].0, big);
        assert!(matches!(unwritten[0].1, BrokerError::Rejected(_)), "{unwritten:?}");
        let stream = js.get_stream(format!("KV_{BUCKET}")).await.unwrap();
        let subject = format!("$KV.{BUCKET}.{}.{}", key_part(small.as_str()), key_part("pod-1"));
        assert!(
            stream.get_last_raw_message_by_subject(&subject).await.is_ok(),
            "doc:small was never written: one oversized channel blocks the pod's other channels"
        );
    }
}
