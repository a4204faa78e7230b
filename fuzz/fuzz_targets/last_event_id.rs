//! `Last-Event-ID` (header or `?lastEventId=`) through `EventId::parse`.
#![no_main]

use herald_gateway::event::{EventId, Target};
use herald_gateway::delivery::sse::event_frame;
use herald_gateway_fuzz::{Expected, check_frame, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let s = text(data);
    let parsed = EventId::parse(&s);
    // Surrounding whitespace (a header value, a trailing CR) never changes the result.
    assert_eq!(EventId::parse(&format!(" \t{s}\r\n")), parsed, "padding changed the parse of {s:?}");
    let Some(id) = parsed else { return };

    let epoch: &str = &id.epoch;
    assert!((1..=32).contains(&epoch.len()), "epoch of {} bytes", epoch.len());
    assert!(epoch.bytes().all(|b| b.is_ascii_alphanumeric()), "epoch {epoch:?}");
    let (left, right) = s.trim().rsplit_once('-').expect("an accepted id has a '-'");
    assert_eq!(left, epoch);
    assert_eq!(right.parse::<u64>().ok(), Some(id.seq), "sequence of {s:?}");

    // Display is what goes out in `id:` lines and comes back in Last-Event-ID: it must re-parse
    // to the same id and be safe on one SSE line.
    let shown = id.to_string();
    assert_eq!(EventId::parse(&shown).as_ref(), Some(&id), "{shown:?} does not re-parse");
    assert!(!shown.bytes().any(|b| b.is_ascii_whitespace() || b.is_ascii_control()), "{shown:?}");

    let frame = event_frame(Some(&id), "message", &Target::Broadcast, None, b"{}");
    check_frame(
        &frame,
        &Expected {
            id: Some(&id),
            event_type: "message",
            channel: None,
            target: "broadcast",
            from: None,
            payload: b"{}",
        },
    );
});
