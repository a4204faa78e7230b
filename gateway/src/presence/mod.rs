//! Presence: who is connected to a channel, fleet-wide, and `presence` join/leave frames.
//!
//! Each pod counts its own connections per user on each presence-enabled channel and writes
//! them, as one entry per (channel, pod), to a shared [`PresenceStore`]. Writes are batched: a
//! change marks its channel dirty and a flusher writes every dirty channel at most once per
//! [`FLUSH_WINDOW`], so a burst of connections costs a handful of writes, not one per
//! connection. Every `ttl / 3` the pod rewrites all its entries; an entry not rewritten for
//! `ttl` belongs to a pod that is gone (killed, cut off) and is dropped by every other pod.
//!
//! A pod with local connections on a channel watches that channel's entries. After each change
//! it recomputes the channel's members (the union of the pods' users) and sends `join` and
//! `leave` frames for the difference to its own connections on the channel. Users are counted
//! across tabs and pods, so a user joins with their first connection and leaves with their
//! last. The first snapshot a pod reads sets the members without frames: a connection learns
//! who was already there from `GET /v1/presence/{channel}`.
//!
//! Reads of `GET /v1/presence/{channel}` share that same watch: a read of a channel the pod does
//! not watch starts watching it, waits for the first snapshot, and the watch stays for
//! [`READ_KEEP`] after the channel's last read. So the store sees one watcher per channel per
//! pod, whatever the number of streams and reads, and reads answer from memory, kept current by
//! the watch.

/// Where each pod keeps its part of the fleet's presence.
pub(crate) mod store;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::sync::Notify;

use crate::access::tokens::ChannelPattern;
use crate::broker::BrokerError;
use crate::delivery::hub::Hub;
use crate::delivery::sse;
use crate::event::Target;
use crate::names::Name;
use crate::ops::metrics::Metrics;
use store::{PresenceStore, Snapshot, Update};

/// How long the flusher gathers changes before writing them.
pub const FLUSH_WINDOW: Duration = Duration::from_millis(50);

/// How long a channel that is read but has no stream on this pod stays watched after its last
/// read.
pub const READ_KEEP: Duration = Duration::from_secs(30);

/// How long a read waits for the first snapshot of a channel it starts watching.
const READ_WAIT: Duration = Duration::from_secs(5);

/// One user's connections on one channel, as a pod writes them.
#[derive(Serialize, Deserialize, Clone, Debug)]
struct Member {
    connections: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    presence: Option<Box<RawValue>>,
}

/// One user's connections on one channel of this pod: their count, and the presence objects of
/// those that carry one, oldest first (the newest open one is shown).
#[derive(Default)]
struct Local {
    connections: u32,
    presences: Vec<Box<RawValue>>,
}

/// A pod's entry for a channel.
#[derive(Serialize, Deserialize, Default, Debug)]
struct Entry {
    users: BTreeMap<String, Member>,
}

/// A member of a channel, fleet-wide, as `GET /v1/presence/{channel}` shows it.
#[derive(Serialize, Clone, Debug)]
pub struct MemberView {
    pub user: String,
    pub connections: u32,
    pub presence: Option<Box<RawValue>>,
}

#[derive(Serialize)]
struct Change<'a> {
    action: &'a str,
    user: &'a str,
}

/// The fleet's entries for a channel this pod has connections on.
#[derive(Default)]
struct View {
    pods: HashMap<String, (Instant, Entry)>,
    members: HashSet<String>,
    loaded: bool,
    /// Stops the watcher when the last local connection leaves (and no read is recent).
    watcher: Option<tokio::task::AbortHandle>,
    /// Kept watched until then for reads, with no local connection.
    read_until: Option<Instant>,
}

#[derive(Default)]
struct Inner {
    /// This pod's connections: channel → user → theirs.
    local: HashMap<Name, BTreeMap<String, Local>>,
    dirty: HashSet<Name>,
    views: HashMap<Name, View>,
}

/// Presence for the channels matching the configured patterns.
pub struct Presence {
    patterns: Vec<ChannelPattern>,
    pod: String,
    ttl: Duration,
    store: Arc<dyn PresenceStore>,
    hub: Arc<Hub>,
    metrics: Arc<Metrics>,
    runtime: tokio::runtime::Handle,
    inner: Mutex<Inner>,
    changed: Notify,
    /// A view got its first snapshot (reads waiting for one look again).
    loaded: Notify,
}

/// A connection's presence on its channels; dropping it leaves them.
pub struct PresenceGuard {
    presence: Arc<Presence>,
    user: String,
    channels: Vec<Name>,
    /// Its presence object, which leaves with it.
    info: Option<Box<RawValue>>,
}

impl Drop for PresenceGuard {
    fn drop(&mut self) {
        self.presence.leave(&self.user, &self.channels, self.info.as_deref());
    }
}

impl Presence {
    /// Starts the flusher and the sweeper on `runtime`. `pod` names this process in the store.
    pub fn start(
        patterns: Vec<ChannelPattern>,
        pod: String,
        ttl: Duration,
        store: Arc<dyn PresenceStore>,
        hub: Arc<Hub>,
        metrics: Arc<Metrics>,
        runtime: &tokio::runtime::Handle,
    ) -> Arc<Self> {
        let presence = Arc::new(Presence {
            patterns,
            pod,
            ttl,
            store,
            hub,
            metrics,
            runtime: runtime.clone(),
            inner: Mutex::new(Inner::default()),
            changed: Notify::new(),
            loaded: Notify::new(),
        });
        if !presence.patterns.is_empty() {
            runtime.spawn(presence.clone().flush());
            runtime.spawn(presence.clone().sweep());
        }
        presence
    }

    /// Whether `channel` has presence.
    pub fn enabled(&self, channel: &str) -> bool {
        self.patterns.iter().any(|p| p.matches(channel))
    }

    /// How long a vanished pod's members stay listed.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Counts one connection of `user` on each presence-enabled channel of `channels`.
    pub fn join(self: &Arc<Self>, user: &Name, channels: &[Name], info: Option<&RawValue>) -> Option<PresenceGuard> {
        let channels: Vec<Name> = channels.iter().filter(|c| self.enabled(c.as_str())).cloned().collect();
        if channels.is_empty() {
            return None;
        }
        let mut inner = self.inner.lock();
        for channel in &channels {
            let users = inner.local.entry(channel.clone()).or_default();
            let local = users.entry(user.as_str().to_owned()).or_default();
            local.connections += 1;
            if let Some(info) = info {
                local.presences.push(info.to_owned());
            }
            // Every change of a count is written (batched, see `flush`): counts are exact.
            inner.dirty.insert(channel.clone());
            self.watched(&mut inner, channel);
        }
        drop(inner);
        self.changed.notify_one();
        let info = info.map(ToOwned::to_owned);
        Some(PresenceGuard { presence: self.clone(), user: user.as_str().to_owned(), channels, info })
    }

    fn leave(&self, user: &str, channels: &[Name], info: Option<&RawValue>) {
        let mut guard = self.inner.lock();
        let inner = &mut *guard;
        for channel in channels {
            let Some(users) = inner.local.get_mut(channel) else { continue };
            let Some(local) = users.get_mut(user) else { continue };
            local.connections -= 1;
            if let Some(info) = info
                && let Some(i) = local.presences.iter().position(|p| p.get() == info.get())
            {
                local.presences.remove(i);
            }
            inner.dirty.insert(channel.clone());
            if local.connections > 0 {
                continue;
            }
            users.remove(user);
            if inner.local.get(channel).is_some_and(BTreeMap::is_empty) {
                // Nobody here is left to tell: stop watching the channel, unless it is read.
                inner.local.remove(channel);
                let read = inner.views.get(channel).and_then(|v| v.read_until).is_some_and(|t| t > Instant::now());
                if !read && let Some(watcher) = inner.views.remove(channel).and_then(|v| v.watcher) {
                    watcher.abort();
                }
            }
        }
        drop(guard);
        self.changed.notify_one();
    }

    /// The view of `channel`, with its watcher started if it has none.
    fn watched<'a>(self: &Arc<Self>, inner: &'a mut Inner, channel: &Name) -> &'a mut View {
        inner.views.entry(channel.clone()).or_insert_with(|| {
            let task = self.runtime.spawn(self.clone().watch(channel.clone()));
            View { watcher: Some(task.abort_handle()), ..View::default() }
        })
    }

    /// The channel's members, fleet-wide, from this pod's view of it: watched already, or from
    /// now on for [`READ_KEEP`] (the first read waits for the first snapshot).
    pub async fn members(self: &Arc<Self>, channel: &Name) -> Result<Vec<MemberView>, crate::broker::BrokerError> {
        let deadline = tokio::time::Instant::now() + READ_WAIT;
        loop {
            let loaded = self.loaded.notified();
            tokio::pin!(loaded);
            // Registered before looking, so a load between the look and the wait is not missed.
            loaded.as_mut().enable();
            {
                let mut inner = self.inner.lock();
                let view = self.watched(&mut inner, channel);
                view.read_until = Some(Instant::now() + READ_KEEP);
                if view.loaded {
                    return Ok(aggregate(view.pods.values().map(|(_, e)| e)));
                }
            }
            if tokio::time::timeout_at(deadline, loaded).await.is_err() {
                return Err(crate::broker::BrokerError::Unavailable(
                    "the presence store did not answer in time".into(),
                ));
            }
        }
    }

    /// Deletes this pod's entries (a clean shutdown), waiting at most `wait`.
    pub async fn clear(&self, wait: Duration) {
        let batch: Vec<(Name, Option<Bytes>)> = {
            let mut inner = self.inner.lock();
            let channels: HashSet<Name> = inner.local.keys().chain(inner.dirty.iter()).cloned().collect();
            inner.local.clear();
            inner.dirty.clear();
            channels.into_iter().map(|c| (c, None)).collect()
        };
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        match tokio::time::timeout(wait, self.store.write(&self.pod, batch)).await {
            Ok(Ok(())) => self.metrics.presence_written(n),
            Ok(Err(unwritten)) => {
                self.metrics.presence_written(n - unwritten.len());
                let (_, e) = &unwritten[0];
                tracing::warn!(error = %e, channels = unwritten.len(), "could not remove this gateway's presence entries");
            }
            Err(_) => tracing::warn!("timed out removing this gateway's presence entries"),
        }
    }

    /// Writes dirty channels at most once per window, and every entry once per `ttl / 3`.
    async fn flush(self: Arc<Self>) {
        let mut heartbeat = tokio::time::interval(self.ttl / 3);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.changed.notified() => tokio::time::sleep(FLUSH_WINDOW).await,
                _ = heartbeat.tick() => {
                    let mut inner = self.inner.lock();
                    let channels: Vec<Name> = inner.local.keys().cloned().collect();
                    inner.dirty.extend(channels);
                }
            }
            let batch: Vec<(Name, Option<Bytes>)> = {
                let mut inner = self.inner.lock();
                let dirty: Vec<Name> = inner.dirty.drain().collect();
                dirty
                    .into_iter()
                    .map(|channel| {
                        let value = inner.local.get(&channel).map(render);
                        (channel, value)
                    })
                    .collect()
            };
            if batch.is_empty() {
                continue;
            }
            let n = batch.len();
            match self.store.write(&self.pod, batch).await {
                Ok(()) => self.metrics.presence_written(n),
                Err(unwritten) => {
                    self.metrics.presence_written(n - unwritten.len());
                    // An entry the store refuses (too large for NATS) is tried again with every
                    // entry's rewrite, or as its channel changes; one it could not reach, in a
                    // second. Either way the other channels' entries were written.
                    let (refused, retry): (Vec<_>, Vec<_>) =
                        unwritten.into_iter().partition(|(_, e)| matches!(e, BrokerError::Rejected(_)));
                    for (channel, e) in &refused {
                        tracing::warn!(channel = %channel, error = %e, "presence on this channel cannot be written");
                    }
                    if let Some((_, e)) = retry.first() {
                        tracing::warn!(error = %e, channels = retry.len(), "could not write presence; retrying");
                        self.inner.lock().dirty.extend(retry.into_iter().map(|(channel, _)| channel));
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        self.changed.notify_one();
                    }
                }
            }
        }
    }

    /// Drops the entries of pods that stopped rewriting them.
    async fn sweep(self: Arc<Self>) {
        let mut tick = tokio::time::interval((self.ttl / 10).max(Duration::from_millis(100)));
        loop {
            tick.tick().await;
            let limit = self.silence_limit();
            let mut inner = self.inner.lock();
            // Channels watched for reads alone, not read for a while: stop watching them.
            let now = Instant::now();
            let unread: Vec<Name> = inner
                .views
                .iter()
                .filter(|(channel, view)| {
                    !inner.local.contains_key(*channel) && view.read_until.is_none_or(|until| until <= now)
                })
                .map(|(channel, _)| channel.clone())
                .collect();
            for channel in unread {
                if let Some(watcher) = inner.views.remove(&channel).and_then(|v| v.watcher) {
                    watcher.abort();
                }
            }
            let channels: Vec<Name> = inner.views.keys().cloned().collect();
            for channel in channels {
                let Some(view) = inner.views.get_mut(&channel) else { continue };
                let before = view.pods.len();
                view.pods.retain(|pod, (seen, _)| *pod == self.pod || seen.elapsed() < limit);
                if view.pods.len() != before {
                    self.recompute(&channel, view);
                }
            }
        }
    }

    /// How long a pod's entry may go unwritten before its members count as gone: allowing for
    /// the sweep's own period, they are gone within `ttl` of the pod's last write.
    fn silence_limit(&self) -> Duration {
        self.ttl - (self.ttl / 10)
    }

    /// Follows one channel's entries while this pod has connections on it. A watch that hears
    /// nothing for `ttl`, while every pod with members rewrites its entry every `ttl / 3`, is
    /// deaf (a NATS restart emptied the bucket, and the consumer behind the watch with it,
    /// without a word) or watches a channel nobody is on: either way it starts again.
    async fn watch(self: Arc<Self>, channel: Name) {
        loop {
            match self.store.watch(&channel).await {
                Ok((snapshot, mut updates)) => {
                    self.load(&channel, snapshot);
                    while let Ok(Some(update)) = tokio::time::timeout(self.ttl, updates.next()).await {
                        self.apply(&channel, update);
                    }
                    tracing::debug!(channel = %channel, "presence watch ended or fell silent; watching again");
                }
                Err(e) => tracing::warn!(channel = %channel, error = %e, "cannot watch presence yet; retrying"),
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }

    fn load(&self, channel: &Name, snapshot: Snapshot) {
        tracing::debug!(channel = %channel, pods = snapshot.len(), "presence snapshot");
        let now = Instant::now();
        let mut inner = self.inner.lock();
        let Some(view) = inner.views.get_mut(channel) else { return };
        view.pods = snapshot
            .into_iter()
            .filter(|(_, _, age)| *age < self.silence_limit())
            .filter_map(|(pod, value, age)| {
                let entry = serde_json::from_slice(&value).ok()?;
                Some((pod, (now.checked_sub(age).unwrap_or(now), entry)))
            })
            .collect();
        if view.loaded {
            // Watching again after an interruption: announce what changed meanwhile.
            self.recompute(channel, view);
        } else {
            view.members = view.pods.values().flat_map(|(_, e)| e.users.keys().cloned()).collect();
            view.loaded = true;
            self.loaded.notify_waiters();
        }
    }

    fn apply(&self, channel: &Name, (pod, value): Update) {
        tracing::debug!(channel = %channel, pod = %pod, deleted = value.is_none(), "presence update");
        let mut inner = self.inner.lock();
        let Some(view) = inner.views.get_mut(channel) else { return };
        match value.and_then(|v| serde_json::from_slice::<Entry>(&v).ok()) {
            Some(entry) => {
                view.pods.insert(pod, (Instant::now(), entry));
            }
            None => {
                view.pods.remove(&pod);
            }
        }
        if view.loaded {
            self.recompute(channel, view);
        }
    }

    /// Updates the channel's members and tells this pod's connections on it what changed.
    fn recompute(&self, channel: &Name, view: &mut View) {
        let members: HashSet<String> = view.pods.values().flat_map(|(_, e)| e.users.keys().cloned()).collect();
        let target = Target::Channel(channel.clone());
        let mut left: Vec<&String> = view.members.difference(&members).collect();
        let mut joined: Vec<&String> = members.difference(&view.members).collect();
        left.sort();
        joined.sort();
        for (action, users) in [("leave", left), ("join", joined)] {
            for user in users {
                let payload = serde_json::to_vec(&Change { action, user }).unwrap_or_default();
                let frame = sse::event_frame(None, "presence", &target, None, &payload);
                self.hub.deliver_local(&target, frame);
                self.metrics.presence_change();
            }
        }
        view.members = members;
    }
}

/// Largest entry written with presence objects; past it, an entry carries counts only.
const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// A pod's entry for a channel, as stored. Thousands of users with large presence objects would
/// outgrow a NATS message: past [`MAX_ENTRY_BYTES`] the objects are left out (members and
/// counts stay exact).
fn render(users: &BTreeMap<String, Local>) -> Bytes {
    let members = users
        .iter()
        .map(|(user, l)| (user.clone(), Member { connections: l.connections, presence: l.presences.last().cloned() }))
        .collect();
    let full = serde_json::to_vec(&Entry { users: members }).unwrap_or_default();
    if full.len() <= MAX_ENTRY_BYTES {
        return Bytes::from(full);
    }
    let counts =
        users.iter().map(|(user, m)| (user.clone(), Member { connections: m.connections, presence: None })).collect();
    Bytes::from(serde_json::to_vec(&Entry { users: counts }).unwrap_or_default())
}

/// Sums the pods' entries per user; users sorted by name.
fn aggregate<'a>(entries: impl Iterator<Item = &'a Entry>) -> Vec<MemberView> {
    let mut users: BTreeMap<&str, MemberView> = BTreeMap::new();
    for entry in entries {
        for (user, m) in &entry.users {
            let view =
                users.entry(user).or_insert_with(|| MemberView { user: user.clone(), connections: 0, presence: None });
            view.connections += m.connections;
            if view.presence.is_none() {
                view.presence = m.presence.clone();
            }
        }
    }
    users.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(users: &[(&str, u32)]) -> Entry {
        Entry {
            users: users.iter().map(|(u, n)| ((*u).to_owned(), Member { connections: *n, presence: None })).collect(),
        }
    }

    #[test]
    fn members_are_summed_across_pods_and_sorted() {
        let a = entry(&[("ben", 1), ("ana", 2)]);
        let b = entry(&[("ana", 1), ("cy", 1)]);
        let members = aggregate([&a, &b].into_iter());
        let got: Vec<(&str, u32)> = members.iter().map(|m| (m.user.as_str(), m.connections)).collect();
        assert_eq!(got, [("ana", 3), ("ben", 1), ("cy", 1)]);
    }

    #[test]
    fn a_large_entry_keeps_its_members_and_drops_their_presence_objects() {
        let big = format!("{{\"bio\":\"{}\"}}", "x".repeat(1000));
        let users: BTreeMap<String, Local> = (0..400)
            .map(|i| {
                let presences = vec![RawValue::from_string(big.clone()).unwrap()];
                (format!("u{i}"), Local { connections: 2, presences })
            })
            .collect();
        let bytes = render(&users);
        assert!(bytes.len() <= MAX_ENTRY_BYTES);
        let entry: Entry = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(entry.users.len(), 400);
        assert!(entry.users.values().all(|m| m.connections == 2 && m.presence.is_none()));
        let small: BTreeMap<String, Local> = users.into_iter().take(10).collect();
        let entry: Entry = serde_json::from_slice(&render(&small)).unwrap();
        assert!(entry.users.values().all(|m| m.presence.is_some()), "small entries keep them");
    }

    #[test]
    fn an_entry_round_trips_with_its_presence_object() {
        let mut e = entry(&[("ana", 2)]);
        e.users.get_mut("ana").unwrap().presence = Some(RawValue::from_string("{\"c\":1}".into()).unwrap());
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(text, r#"{"users":{"ana":{"connections":2,"presence":{"c":1}}}}"#);
        let back: Entry = serde_json::from_str(&text).unwrap();
        assert_eq!(back.users["ana"].presence.as_ref().unwrap().get(), "{\"c\":1}");
    }
}
