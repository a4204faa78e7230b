//! Storing a durable event: each target's copy into the stream, retried with its message id
//! until the stream acknowledges it or the retry window has passed.

use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use bytes::Bytes;

use super::stream::STREAM;
use crate::broker::BrokerError;
use crate::event::{SubjectKind, Target};

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
pub(super) async fn store(
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
