//! Reads with an ordered consumer: the replay of everything after an id (the hub's refill of a
//! gap in live delivery), and the count of events after an id.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy, consumer::pull};
use futures_util::StreamExt;

use super::barrier::Barrier;
use super::headers::event_from;
use super::reads::{StreamAccess, per_subject_limit};
use super::stream::stream_info;
use crate::broker::resume::{self, ResetReason, Start};
use crate::broker::{BrokerError, Replay};
use crate::event::{EventId, SubjectKind, Target};

/// Most messages a refill reads per event it may owe: it reads every subject (see [`replay`]).
pub(super) const REFILL_READS_PER_EVENT: usize = 10;

/// Longest wait for the next message of a replay.
const REPLAY_STEP_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a replay waits for its next message before checking whether the history it still
/// expects has aged out meanwhile.
const VANISHED_CHECK: Duration = Duration::from_millis(250);

/// Every event after `after` for `targets`, in the stream's order; a reset when more than
/// `max` are owed or some of them are gone. The consumer reads every subject (one filter for
/// thousands of subscriptions); the others' events are skipped as they come, and count only
/// against what the refill may read, [`REFILL_READS_PER_EVENT`] times `max`: on a stream
/// shared by a whole fleet, most of a gap's events are other pods' users'.
pub(super) async fn replay(
    access: StreamAccess,
    barrier: Arc<Barrier>,
    targets: Vec<Target>,
    after: EventId,
    max: usize,
) -> Result<Replay, BrokerError> {
    let wanted: HashSet<Target> = targets.into_iter().collect();
    let StreamAccess { js, prefix, epoch, .. } = access;
    let unavailable = |e: &dyn std::fmt::Display| BrokerError::Unavailable(e.to_string());
    // Make sure the resubscriptions after a reconnect are in place at the server first,
    // so that nothing falls between the replay and live delivery.
    barrier.pass().await?;
    let (stream, info, current) = stream_info(&js, &epoch).await?;
    let head = Some(EventId { epoch: current.clone(), seq: info.state.last_sequence });
    let bounds = resume::Bounds { epoch: &current, first: info.state.first_sequence, last: info.state.last_sequence };
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
    if pending > max.saturating_mul(REFILL_READS_PER_EVENT) {
        return Ok(Replay::Reset(ResetReason::TooMany, head));
    }
    let mut events = Vec::with_capacity(pending.min(max));
    // Events read per subject: one that had as many in the gap as the history keeps per
    // subject may have lost older ones to that limit before they were read.
    let mut per_subject: HashMap<&Target, u64> = HashMap::new();
    if pending > 0 {
        let mut messages = consumer.messages().await.map_err(|e| unavailable(&e))?;
        // What the consumer still had after the last message read; 0 with fewer than
        // `pending` read means the rest vanished (aged out or evicted) mid-replay.
        let mut left = None;
        let mut last_read = 0;
        // Messages read, events or not: one on a subject that names no target counts as read.
        let mut read = 0;
        let mut quiet_since = tokio::time::Instant::now();
        while read < pending {
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
                        return Err(BrokerError::Unavailable("the stream stopped answering during a replay".into()));
                    }
                    continue;
                }
            };
            quiet_since = tokio::time::Instant::now();
            let meta = msg.info().map_err(|e| unavailable(&e))?;
            let seq = meta.stream_sequence;
            left = Some(meta.pending);
            last_read = seq;
            read += 1;
            let Some(target) = Target::from_subject(&prefix, SubjectKind::Events, &msg.subject) else {
                continue;
            };
            if !wanted.contains(&target) {
                continue;
            }
            if events.len() == max {
                return Ok(Replay::Reset(ResetReason::TooMany, head));
            }
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
        let per_subject = per_subject_limit(&info);
        if per_subject > 0 && most >= per_subject {
            return Ok(Replay::Reset(ResetReason::HistoryExpired, head));
        }
    }
    Ok(Replay::Events(events))
}

/// How many events of `filters` the stream holds after sequence `after`: the pending count of
/// an ordered consumer made for the purpose (ephemeral, it goes away by itself).
pub(super) async fn count_after<I>(
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
