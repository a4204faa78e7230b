//! The headers of Herald's NATS messages: what an event carries besides its payload, and how a
//! message the stream republished is told from one published straight to a live subject.
//!
//! `Herald-Type` names the event (default `message`); `Herald-Published-At` is stamped on
//! publish for end-to-end latency; `Herald-From` carries the sender of client events;
//! `traceparent`/`tracestate` carry the W3C trace context (written and read only while traces
//! are on, see `ops/trace.rs`). JetStream stores them with the event, so replays carry them too.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_nats::header::HeaderName;
use async_nats::{HeaderMap, Message};
use bytes::Bytes;
use parking_lot::RwLock;

use super::stream::STREAM;
use crate::event::{Delivery, EventId, parse_published_at};
use crate::names::DEFAULT_EVENT_TYPE;
use crate::ops::trace;
use crate::ops::trace_context::{self, TraceContext};

pub const HEADER_TYPE: &str = "Herald-Type";
pub const HEADER_PUBLISHED_AT: &str = "Herald-Published-At";
pub const HEADER_FROM: &str = "Herald-From";
const HEADER_SEQUENCE: &str = "Nats-Sequence";
const HEADER_LAST_SEQUENCE: &str = "Nats-Last-Sequence";
const HEADER_STREAM: &str = "Nats-Stream";
const HEADER_SUBJECT: &str = "Nats-Subject";

/// The names looked up in every live message, made once: a lookup by `&str` copies a name
/// that is not one of NATS's own into a new allocation each time.
const TYPE_NAME: HeaderName = HeaderName::from_static(HEADER_TYPE);
const PUBLISHED_AT_NAME: HeaderName = HeaderName::from_static(HEADER_PUBLISHED_AT);
const FROM_NAME: HeaderName = HeaderName::from_static(HEADER_FROM);

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
pub(super) fn delivery_from(msg: Message, prefix: &str, epoch: &RwLock<Arc<str>>) -> Delivery {
    let seq = msg.headers.as_ref().and_then(|h| republished_seq(h, prefix, &msg.subject));
    let previous = seq.and(msg.headers.as_ref()).and_then(|h| last_number(h, HEADER_LAST_SEQUENCE));
    let mut delivery =
        event_from(msg.headers, seq.map(|seq| EventId { epoch: epoch.read().clone(), seq }), msg.payload);
    delivery.previous = previous;
    delivery
}

/// The last value of the header `name` as a positive number: the republish appends its headers
/// after any a publisher wrote. `None` for no value, `0` (the server's "none"), or anything else.
fn last_number(headers: &HeaderMap, name: &str) -> Option<u64> {
    let value = headers.get_last(name)?.as_str();
    // Digits only: `u64::from_str` would also take a leading `+`.
    if value.is_empty() || !value.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    value.parse().ok().filter(|&n| n > 0)
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
    last_number(headers, HEADER_SEQUENCE)
}

/// A delivery from an event's headers and payload (live, replayed by a walk or by a consumer).
/// The values it keeps are moved out of the headers, not copied.
pub(super) fn event_from(mut headers: Option<HeaderMap>, id: Option<EventId>, payload: Bytes) -> Delivery {
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
        previous: None,
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

#[cfg(test)]
mod tests {
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
        headers.append(HEADER_LAST_SEQUENCE, "0");
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
    fn the_event_before_on_the_subject_is_the_republish_s_last_sequence() {
        // A publisher's own copy comes first; the server's value, last, says none came before.
        let mut headers = republished(&[(HEADER_LAST_SEQUENCE, "7")], "herald.events.user.u1", "19");
        assert_eq!(last_number(&headers, HEADER_LAST_SEQUENCE), None);
        headers.append(HEADER_LAST_SEQUENCE, "12");
        assert_eq!(last_number(&headers, HEADER_LAST_SEQUENCE), Some(12));
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
