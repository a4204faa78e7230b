//! Events, their targets and the NATS subjects they travel on (docs/architecture.md).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;

use crate::names::Name;
use crate::ops::trace_context::TraceContext;

/// Who an event is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    User(Name),
    Channel(Name),
    Broadcast,
}

/// Which family of subjects: stored by the stream, or delivered live to gateways.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubjectKind {
    /// `<prefix>.events.…`: captured by the stream, republished to `live` with a sequence.
    Events,
    /// `<prefix>.live.…`: what gateways subscribe to.
    Live,
}

impl Target {
    /// The envelope's `target` field.
    pub fn kind(&self) -> &'static str {
        match self {
            Target::User(_) => "user",
            Target::Channel(_) => "channel",
            Target::Broadcast => "broadcast",
        }
    }

    /// The channel name for the envelope's `channel` field (`null` for user and broadcast).
    pub fn channel(&self) -> Option<&Name> {
        match self {
            Target::Channel(name) => Some(name),
            _ => None,
        }
    }

    /// The NATS subject for this target.
    pub fn subject(&self, prefix: &str, kind: SubjectKind) -> String {
        let family = match kind {
            SubjectKind::Events => "events",
            SubjectKind::Live => "live",
        };
        match self {
            Target::User(u) => format!("{prefix}.{family}.user.{u}"),
            Target::Channel(c) => format!("{prefix}.{family}.channel.{c}"),
            Target::Broadcast => format!("{prefix}.{family}.broadcast"),
        }
    }
}

impl Target {
    /// Reads a target back from its subject (`<prefix>.<family>.user.u1`, …). `None` for
    /// subjects of other families or with invalid names.
    pub fn from_subject(prefix: &str, kind: SubjectKind, subject: &str) -> Option<Target> {
        let family = match kind {
            SubjectKind::Events => "events",
            SubjectKind::Live => "live",
        };
        let rest = subject.strip_prefix(prefix)?.strip_prefix('.')?.strip_prefix(family)?.strip_prefix('.')?;
        if rest == "broadcast" {
            return Some(Target::Broadcast);
        }
        if let Some(user) = rest.strip_prefix("user.") {
            return Name::parse(user).ok().map(Target::User);
        }
        rest.strip_prefix("channel.").and_then(|c| Name::parse(c).ok()).map(Target::Channel)
    }
}

impl Target {
    /// What names this target in a stored event's de-duplication key `<id>/<target>`: its
    /// durable subject after `<prefix>.events.` (`user.u1`, `channel.booking:42`, `broadcast`).
    pub fn dedup_key(&self, id: &str) -> String {
        match self {
            Target::User(u) => format!("{id}/user.{u}"),
            Target::Channel(c) => format!("{id}/channel.{c}"),
            Target::Broadcast => format!("{id}/broadcast"),
        }
    }
}

/// Checks a publisher's idempotency key: 1–128 characters of ASCII letters, digits and `_ . : -`.
pub fn validate_publish_id(id: &str) -> Result<(), String> {
    if let Some(at) = id.chars().position(|c| !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | ':' | '-'))) {
        return Err(format!("has a character other than letters, digits and _ . : - at position {at}"));
    }
    // All ASCII by now: bytes are characters.
    if id.is_empty() || id.len() > 128 {
        return Err(format!("must be 1 to 128 characters long, not {}", id.len()));
    }
    Ok(())
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Target::User(u) => write!(f, "user {u}"),
            Target::Channel(c) => write!(f, "channel {c}"),
            Target::Broadcast => f.write_str("broadcast"),
        }
    }
}

/// A resumable event id: `<epoch>-<seq>`. The epoch names one incarnation of the history
/// (a JetStream stream, or a dev-mode process); sequences are only comparable within it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventId {
    pub epoch: Arc<str>,
    pub seq: u64,
}

impl EventId {
    /// Parses `<epoch>-<seq>` as browsers send it back in `Last-Event-ID`. The epoch is 1–32
    /// ASCII letters or digits; the sequence a positive decimal number.
    pub fn parse(s: &str) -> Option<EventId> {
        let (epoch, seq) = s.trim().rsplit_once('-')?;
        if epoch.is_empty() || epoch.len() > 32 || !epoch.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return None;
        }
        if seq.is_empty() || seq.len() > 20 || !seq.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        Some(EventId { epoch: Arc::from(epoch), seq: seq.parse().ok()? })
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.epoch, self.seq)
    }
}

/// One event as a broker delivers it to the hub. The payload is the publisher's JSON, not yet
/// validated when it comes straight from NATS.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub event_type: String,
    pub payload: Bytes,
    /// Resumable id of durable events; `None` for ephemeral ones.
    pub id: Option<EventId>,
    /// The sending user, for events published by clients.
    pub from: Option<String>,
    /// The publisher's trace context (`traceparent` header), read only while traces are on.
    pub trace: Option<Box<TraceContext>>,
    /// When the publisher published it (Unix nanoseconds), from `Herald-Published-At`: the
    /// start of the delivery latency measured at the socket.
    pub published_at: Option<u64>,
    /// For a durable event delivered live: the sequence of the event stored before it on the
    /// same subject, as the stream's republish names it (`Nats-Last-Sequence`). The hub checks
    /// each subject's chain with it (`delivery/hub`). `None` when unknown.
    pub previous: Option<u64>,
}

impl Delivery {
    /// Why this event can't be sent to browsers, if it can't. Events from raw NATS publishers
    /// are checked once per pod before any client sees them.
    pub fn problem(&self) -> Option<&'static str> {
        if crate::names::validate_event_type(&self.event_type).is_err() {
            return Some("invalid or reserved Herald-Type");
        }
        // JSON text is UTF-8, and an SSE stream is decoded as UTF-8: a parser skipping over a
        // string does not check its bytes, so check them first.
        if std::str::from_utf8(&self.payload).is_err() {
            return Some("payload is not UTF-8");
        }
        if serde_json::from_slice::<serde::de::IgnoredAny>(&self.payload).is_err() {
            return Some("payload is not JSON");
        }
        None
    }
}

/// Reads a `Herald-Published-At` value: Unix nanoseconds, or RFC 3339. `None` when it is
/// neither (the event is still delivered, just not timed).
pub fn parse_published_at(value: &str) -> Option<u64> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse().ok();
    }
    let at = time::OffsetDateTime::parse(value, &time::format_description::well_known::Rfc3339).ok()?;
    u64::try_from(at.unix_timestamp_nanos()).ok()
}

/// One event as a publisher hands it to a broker: validated, ready to send.
#[derive(Clone, Debug)]
pub struct Outgoing {
    pub event_type: String,
    /// Valid JSON.
    pub payload: Bytes,
    pub durable: bool,
    /// The trace context to send with the event (the `publish` span's), while traces are on.
    pub trace: Option<TraceContext>,
    /// The sending user of a client event, stamped by the gateway (envelope field `from`).
    pub from: Option<String>,
    /// The publisher's idempotency key: each target's stored event is identified by
    /// `<id>/<target>` ([`Target::dedup_key`]), so a repeat within the history's duplicate
    /// window stores nothing new and answers the first publish's ids.
    pub id: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_payload_must_be_utf8_json() {
        let delivery = |payload: &'static [u8]| Delivery {
            event_type: "message".into(),
            payload: Bytes::from_static(payload),
            id: None,
            from: None,
            trace: None,
            published_at: None,
            previous: None,
        };
        assert_eq!(delivery(br#"{"a":"b\u00e9"}"#).problem(), None);
        assert_eq!(delivery("\"é\"".as_bytes()).problem(), None);
        assert_eq!(delivery(b"\"\xff\"").problem(), Some("payload is not UTF-8"));
        assert_eq!(delivery(b"{").problem(), Some("payload is not JSON"));
    }

    #[test]
    fn subjects() {
        let u = Target::User(Name::parse("u1").unwrap());
        let c = Target::Channel(Name::parse("org.42.dash").unwrap());
        assert_eq!(u.subject("herald", SubjectKind::Live), "herald.live.user.u1");
        assert_eq!(u.subject("herald", SubjectKind::Events), "herald.events.user.u1");
        assert_eq!(c.subject("x", SubjectKind::Live), "x.live.channel.org.42.dash");
        assert_eq!(Target::Broadcast.subject("herald", SubjectKind::Live), "herald.live.broadcast");
    }

    #[test]
    fn event_id_parse() {
        let id = EventId::parse("k3x9-42").unwrap();
        assert_eq!((&*id.epoch, id.seq), ("k3x9", 42));
        assert_eq!(EventId::parse(" k3x9-42 \r").unwrap().seq, 42);
        for bad in [
            "",
            "-",
            "42",
            "k3x9-",
            "-42",
            "k3x9-4a",
            "k3x9--42",
            "k 3-1",
            "é-1",
            "k-99999999999999999999999",
            "k3x9-+42",
        ] {
            assert_eq!(EventId::parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn targets_from_subjects() {
        let u = Target::User(Name::parse("u1").unwrap());
        let c = Target::Channel(Name::parse("org.42.dash").unwrap());
        for (t, kind) in [(&u, SubjectKind::Events), (&c, SubjectKind::Live), (&Target::Broadcast, SubjectKind::Events)]
        {
            assert_eq!(Target::from_subject("herald", kind, &t.subject("herald", kind)).as_ref(), Some(t));
        }
        assert_eq!(Target::from_subject("herald", SubjectKind::Live, "herald.events.user.u1"), None);
        assert_eq!(Target::from_subject("herald", SubjectKind::Live, "herald.live.user.a..b"), None);
        assert_eq!(Target::from_subject("herald", SubjectKind::Live, "heraldx.live.broadcast"), None);
    }

    #[test]
    fn published_at_values() {
        assert_eq!(parse_published_at("1700000000123456789"), Some(1_700_000_000_123_456_789));
        assert_eq!(parse_published_at("2023-11-14T22:13:20.5Z"), Some(1_700_000_000_500_000_000));
        assert_eq!(parse_published_at("2023-11-14T23:13:20+01:00"), Some(1_700_000_000_000_000_000));
        for bad in ["", "yesterday", "-5", "1e9", "99999999999999999999999", "1969-12-31T23:59:59Z"] {
            assert_eq!(parse_published_at(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn publish_ids() {
        for good in ["a", "order-42", "2026.12.04:booking_7", &"x".repeat(128)] {
            assert_eq!(validate_publish_id(good), Ok(()), "{good}");
        }
        for bad in ["", "a b", "a/b", "é", "a*", &"x".repeat(129)] {
            assert!(validate_publish_id(bad).is_err(), "{bad:?}");
        }
        // Too long in bytes, not in characters: the character is what is wrong (before: "must
        // be 1 to 128 characters long, not 140").
        assert_eq!(
            validate_publish_id(&"é".repeat(70)),
            Err("has a character other than letters, digits and _ . : - at position 0".to_owned())
        );
        let c = Target::Channel(Name::parse("booking:42").unwrap());
        assert_eq!(c.dedup_key("k1"), "k1/channel.booking:42");
        assert_eq!(Target::Broadcast.dedup_key("k1"), "k1/broadcast");
    }

    #[test]
    fn event_id_display() {
        let id = EventId { epoch: Arc::from("k3x9"), seq: 42 };
        assert_eq!(id.to_string(), "k3x9-42");
    }
}
