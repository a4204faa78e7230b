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
/// the event at once. Nothing is ever sent on a connection that is down: the NATS client would
/// queue it and send it whenever the connection is back, maybe long after the publisher had its
/// answer (and retried elsewhere), and past the duplicate window it would be stored again. A
/// connection seen down leaves the turn for the rest of this store; with none up, an attempt
/// sends nothing and the next looks again, until the retry window ends.
///
/// A copy too large for the NATS server (its headers count) refuses the whole event before any
/// copy is sent ([`check_size`]).
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
    // Each target's message id, made once for the size check and every attempt.
    let keys: Vec<String> = targets.iter().map(|target| target.dedup_key(id)).collect();
    if let Some(js) = all.first() {
        let id_header = |key: &String| header_line_len(async_nats::header::NATS_MESSAGE_ID.as_ref(), key);
        check_size(js.client().server_info().max_payload, headers, payload, keys.iter().map(id_header))?;
    }
    // No copy is sent after `deadline`; an attempt sent by then has its full time to be
    // acknowledged (the last one starts at the deadline): a copy the stream stored must not be
    // answered `unavailable`, or a publisher without an id of its own would store it again.
    let deadline = tokio::time::Instant::now() + retry;
    let mut sequences: Vec<Option<u64>> = vec![None; targets.len()];
    let mut backoff = STORE_BACKOFF;
    let up = |js: &jetstream::Context| js.client().connection_state() == async_nats::connection::State::Connected;
    let mut via: Vec<&jetstream::Context> = all.to_vec();
    let mut attempt = 0usize;
    loop {
        via.retain(|js| up(js));
        if via.is_empty() {
            // Every connection was seen down: those back up take their turns again.
            via.extend(all.iter().filter(|js| up(js)));
        }
        let turn = attempt % via.len().max(1);
        attempt += 1;
        let mut last_error = String::from("no connection to NATS is up");
        let mut acks = Vec::new();
        if let Some(&js) = via.get(turn) {
            for (i, target) in targets.iter().enumerate().filter(|(i, _)| sequences[*i].is_none()) {
                if !up(js) {
                    // It dropped during this attempt: what is left waits for the next.
                    break;
                }
                let mut headers = headers.clone();
                headers.insert(async_nats::header::NATS_MESSAGE_ID, keys[i].as_str());
                let subject = target.subject(prefix, SubjectKind::Events);
                // Bounded: with the connection's queue full, the NATS client waits for room.
                let sent_by = deadline.max(tokio::time::Instant::now());
                match tokio::time::timeout_at(sent_by, js.publish_with_headers(subject, headers, payload.clone())).await
                {
                    Ok(Ok(ack)) => acks.push((i, ack)),
                    Ok(Err(e)) if lasting(e.kind()) => return Err(BrokerError::Rejected(e.to_string())),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => {
                        last_error = "the NATS connection took no more messages in time".into();
                        break;
                    }
                }
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
        if attempt.is_multiple_of(via.len().max(1)) {
            // Every connection has had its try: wait before the next round.
            tokio::time::sleep(backoff.min(deadline - now)).await;
            backoff = (backoff * 2).min(STORE_BACKOFF_MAX);
        }
    }
}

/// The length of the header line `name: value` in a message's header block.
pub(super) fn header_line_len(name: &str, value: &str) -> usize {
    name.len() + b": ".len() + value.len() + b"\r\n".len()
}

/// Refuses an event whose copy for some target, with `headers` and that target's own header
/// line (`per_target`, in bytes), would exceed the NATS server's `max_payload`: the publish goes
/// target by target, so the copies before the first too large would be stored or delivered,
/// and the publisher then answered an error it cannot cure by retrying.
pub(super) fn check_size(
    max_payload: usize,
    headers: &HeaderMap,
    payload: &Bytes,
    per_target: impl Iterator<Item = usize>,
) -> Result<(), BrokerError> {
    let block = b"NATS/1.0\r\n".len()
        + b"\r\n".len()
        + headers
            .iter()
            .map(|(name, values)| values.iter().map(|v| header_line_len(name.as_ref(), v.as_str())).sum::<usize>())
            .sum::<usize>();
    let largest = per_target.max().unwrap_or(0);
    let size = block + largest + payload.len();
    if max_payload > 0 && size > max_payload {
        return Err(BrokerError::Rejected(format!(
            "the event takes {size} bytes with its headers, over the NATS server's limit of {max_payload}"
        )));
    }
    Ok(())
}
