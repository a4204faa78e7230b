//! `POST /v1/publish` bodies through `http::publish::validate`, and what a valid request renders
//! to on the SSE stream.
#![no_main]

use herald_gateway::event::Target;
use herald_gateway::http::publish::{MAX_TARGETS, validate};
use herald_gateway::names::{validate_event_type, validate_name};
use herald_gateway::delivery::sse::event_frame;
use herald_gateway_fuzz::{Expected, check_frame};
use libfuzzer_sys::fuzz_target;

const CODES: &[&str] = &[
    "invalid_json",
    "missing_data",
    "payload_too_large",
    "invalid_type",
    "no_targets",
    "too_many_targets",
    "invalid_user",
    "invalid_channel",
];

fuzz_target!(|data: &[u8]| {
    for max_payload in [64 * 1024, 16] {
        let valid = match validate(data, max_payload) {
            Ok(v) => v,
            Err(e) => {
                assert!(CODES.contains(&e.code), "unexpected error code {:?}", e.code);
                let want = if e.code == "payload_too_large" { 413 } else { 400 };
                assert_eq!(e.status.as_u16(), want, "status of {}", e.code);
                continue;
            }
        };
        assert_eq!(data.trim_ascii_start().first(), Some(&b'{'), "accepted a body that is not an object");
        let event = &valid.event;
        assert!(event.payload.len() <= max_payload, "payload of {} bytes accepted", event.payload.len());
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&event.payload).is_ok(), "payload is not JSON");
        assert!(std::str::from_utf8(&event.payload).is_ok(), "payload is not UTF-8");
        assert!(validate_event_type(&event.event_type).is_ok(), "event type {:?}", event.event_type);
        assert!((1..=MAX_TARGETS).contains(&valid.targets.len()), "{} targets", valid.targets.len());
        assert!(valid.targets.iter().filter(|t| **t == Target::Broadcast).count() <= 1);
        for target in &valid.targets {
            if let Target::User(n) | Target::Channel(n) = target {
                assert!(validate_name(n.as_str()).is_ok(), "target {n:?}");
            }
        }
        // What this request turns into on every stream is one well-formed SSE event.
        for target in valid.targets.iter().take(4) {
            let frame = event_frame(None, &event.event_type, target, None, &event.payload);
            check_frame(
                &frame,
                &Expected {
                    id: None,
                    event_type: &event.event_type,
                    channel: target.channel().map(|c| c.as_str()),
                    target: target.kind(),
                    from: None,
                    payload: &event.payload,
                },
            );
        }
    }
});
