//! Names of users and channels, event types, channel patterns and NATS subjects.
//!
//! Input: `name[\0channel]`. `name` goes through every name-like parser; `channel` is matched
//! against it as a channel pattern.
#![no_main]

use herald_gateway::access::tokens::ChannelPattern;
use herald_gateway::event::{SubjectKind, Target};
use herald_gateway::names::{
    MAX_NAME_LEN, MAX_TYPE_LEN, Name, NameError, RESERVED_EVENT_TYPES, validate_event_type, validate_name,
};
use herald_gateway_fuzz::{fields, text};
use libfuzzer_sys::fuzz_target;

const PREFIXES: &[&str] = &["herald", "acme.herald"];
const KINDS: &[SubjectKind] = &[SubjectKind::Events, SubjectKind::Live];

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 2);
    let s = text(parts[0]);
    let other = parts.get(1).map(|b| text(b));

    check_name(&s);
    check_event_type(&s);
    check_subject(&s);
    check_pattern(&s, other.as_deref());
});

fn check_name(s: &str) {
    let checked = validate_name(s);
    let parsed = Name::parse(s);
    assert_eq!(checked.is_ok(), parsed.is_ok(), "validate_name and Name::parse disagree on {s:?}");
    match &checked {
        Err(NameError::Empty) => assert!(s.is_empty()),
        Err(NameError::TooLong(_, max)) => assert!(s.len() > *max),
        Err(NameError::Reserved) => panic!("names have no reserved values: {s:?}"),
        _ => {}
    }
    let Ok(name) = parsed else { return };
    assert_eq!(name.as_str(), s);
    assert!((1..=MAX_NAME_LEN).contains(&s.len()), "accepted name of {} bytes", s.len());
    assert!(
        s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-:@=+~.".contains(&b)),
        "accepted name with a forbidden character: {s:?}"
    );
    assert!(s.split('.').all(|seg| !seg.is_empty()), "accepted name with an empty segment: {s:?}");

    // A valid name round-trips through every subject it can appear in, and never produces a NATS
    // wildcard or empty token.
    for prefix in PREFIXES {
        for &kind in KINDS {
            for target in [Target::User(name.clone()), Target::Channel(name.clone())] {
                let subject = target.subject(prefix, kind);
                assert!(
                    subject.split('.').all(|t| !t.is_empty() && t != "*" && t != ">"),
                    "subject {subject:?} has an empty or wildcard token"
                );
                assert!(!subject.bytes().any(|b| b.is_ascii_whitespace()), "whitespace in subject {subject:?}");
                assert_eq!(Target::from_subject(prefix, kind, &subject).as_ref(), Some(&target), "{subject:?}");
                let other = match kind {
                    SubjectKind::Events => SubjectKind::Live,
                    SubjectKind::Live => SubjectKind::Events,
                };
                assert_eq!(Target::from_subject(prefix, other, &subject), None, "{subject:?} read as {other:?}");
            }
        }
    }
}

fn check_event_type(s: &str) {
    let Ok(()) = validate_event_type(s) else { return };
    assert!((1..=MAX_TYPE_LEN).contains(&s.len()), "accepted event type of {} bytes", s.len());
    // It is written after `event: `; a line break there would start a new SSE field.
    assert!(
        s.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-:.".contains(&b)),
        "accepted event type with a forbidden character: {s:?}"
    );
    assert!(!RESERVED_EVENT_TYPES.contains(&s), "accepted reserved event type {s:?}");
}

fn check_subject(s: &str) {
    // Whatever subject NATS hands us, a target read from it maps back to exactly that subject.
    for prefix in PREFIXES {
        for &kind in KINDS {
            if let Some(target) = Target::from_subject(prefix, kind, s) {
                assert_eq!(target.subject(prefix, kind), s, "{target:?} read from {s:?}");
            }
        }
    }
}

fn check_pattern(s: &str, channel: Option<&str>) {
    let Ok(pattern) = ChannelPattern::parse(s) else { return };
    match &pattern {
        ChannelPattern::Exact(name) => {
            assert_eq!(name, s);
            assert!(validate_name(name).is_ok(), "exact pattern {name:?} is not a valid name");
            assert!(pattern.matches(s));
        }
        ChannelPattern::Prefix(prefix) => {
            assert_eq!(format!("{prefix}*"), s);
            assert!(!prefix.contains('*'), "wildcard inside prefix {prefix:?}");
            if !prefix.is_empty() {
                let stem = prefix.strip_suffix('.').unwrap_or(prefix);
                assert!(validate_name(stem).is_ok(), "prefix {prefix:?} is not a cut name");
            }
            // A prefix grants the names below it, never the bare prefix itself.
            assert!(!pattern.matches(prefix));
            assert!(pattern.matches(&format!("{prefix}x")));
        }
    }
    if let Some(channel) = channel {
        let want = match &pattern {
            ChannelPattern::Exact(name) => name == channel,
            ChannelPattern::Prefix(prefix) => channel.len() > prefix.len() && channel.starts_with(prefix.as_str()),
        };
        assert_eq!(pattern.matches(channel), want, "{pattern:?} against {channel:?}");
    }
}
