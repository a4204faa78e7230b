//! The stream `HERALD`: its configuration, its epoch, and whether it can store events and reach
//! this gateway.

use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use async_nats::jetstream;
use parking_lot::RwLock;
use tokio::sync::watch;

use crate::broker::{BrokerError, Link};

use super::{PublishRetry, StreamOptions};

/// The stream holding every durable event.
pub const STREAM: &str = "HERALD";

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
pub(super) async fn stream_info(
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
pub(super) async fn ensure_stream(
    js: &jetstream::Context,
    mut config: jetstream::stream::Config,
) -> Result<jetstream::stream::Info, String> {
    let epoch = match js.get_stream(STREAM).await {
        Ok(stream) => epoch_in(stream.cached_info()),
        // Two gateways creating the stream at once: one of the creates fails (another epoch),
        // and the caller's retry finds the stream and keeps its epoch.
        Err(e) if is_not_found(&e) => return make_stream_again(js, config).await,
        Err(e) => return Err(e.to_string()),
    };
    config.metadata.insert(EPOCH_METADATA.into(), epoch.to_string());
    js.create_or_update_stream(config).await.map_err(|e| e.to_string())
}

/// Creates the stream, under a new epoch. Only creates: a node that said the stream was not
/// there may be behind the others (just restarted, on a cluster), and an update would give a
/// stream that exists a new epoch, and every client of the fleet a reset.
pub(super) async fn make_stream_again(
    js: &jetstream::Context,
    mut config: jetstream::stream::Config,
) -> Result<jetstream::stream::Info, String> {
    config.metadata.insert(EPOCH_METADATA.into(), epoch_of(&time::OffsetDateTime::now_utc()).to_string());
    js.create_stream(config).await.map(|stream| stream.cached_info().clone()).map_err(|e| e.to_string())
}

/// The epoch of the stream `info` describes: from its metadata, or else its creation time.
pub(super) fn epoch_in(info: &jetstream::stream::Info) -> Arc<str> {
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
///
/// Each read also tells `retry` the stream's duplicate window, which a gateway started later
/// with another `--history-dedup-window` may have changed.
///
/// A stream that JetStream says is gone (deleted, or lost with storage that did not survive a
/// NATS restart) is made again with `config`, under a new epoch: nobody else may ever make it,
/// and every durable publish would fail. The gateway stays ready meanwhile (its streams and
/// ephemeral events do not need the history). The hub learns of the new history from the first
/// event under the new epoch (or from a refill, if the link was reported down meanwhile), and
/// sends every stream to resume.
pub(super) async fn watch_reach(
    js: &jetstream::Context,
    config: &jetstream::stream::Config,
    epoch: &RwLock<Arc<str>>,
    client: &Client,
    link: &watch::Sender<Link>,
    retry: &PublishRetry,
) {
    let mut cut_off = false;
    loop {
        tokio::time::sleep(REACH_EVERY).await;
        if client.connection_state() != async_nats::connection::State::Connected {
            continue; // the connection's own events report that
        }
        // `stream_info` answers only from a leader that can store.
        let mut read = tokio::time::timeout(REACH_TIMEOUT, stream_info(js, epoch)).await;
        if matches!(read, Ok(Err(_))) && is_gone(js).await {
            tracing::warn!(stream = STREAM, "the history's stream is gone; making it again");
            match make_stream_again(js, config.clone()).await {
                Ok(info) => {
                    *epoch.write() = epoch_in(&info);
                    tracing::warn!(stream = STREAM, epoch = %epoch.read(), "the history's stream was made again; its history starts over");
                    read = tokio::time::timeout(REACH_TIMEOUT, stream_info(js, epoch)).await;
                }
                // Another gateway made it meanwhile, or NATS does not answer: looked at again next time.
                Err(e) => tracing::warn!(stream = STREAM, error = %e, "cannot make the history's stream yet"),
            }
        }
        if let Ok(Ok((_, info, _))) = &read {
            retry.within(info.config.duplicate_window);
        }
        let reached = matches!(read, Ok(Ok(_)));
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

/// Whether JetStream says the stream does not exist (not merely that it cannot be read now).
async fn is_gone(js: &jetstream::Context) -> bool {
    matches!(tokio::time::timeout(REACH_TIMEOUT, js.get_stream(STREAM)).await, Ok(Err(e)) if is_not_found(&e))
}

/// Whether a stream's lookup failed because JetStream has no such stream.
pub(crate) fn is_not_found(e: &jetstream::context::GetStreamError) -> bool {
    matches!(e.kind(), jetstream::context::GetStreamErrorKind::JetStream(e)
        if e.error_code() == jetstream::ErrorCode::STREAM_NOT_FOUND)
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
