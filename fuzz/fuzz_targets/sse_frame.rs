//! Rendering events for the stream, as the hub does for whatever arrives from NATS: a delivery
//! that passes `Delivery::problem` (valid event type, JSON payload) becomes exactly one SSE event
//! whatever its payload, `from` and id.
//!
//! Input: `payload[\0event-type[\0from[\0id]]]`.
#![no_main]

use bytes::Bytes;
use herald_gateway::event::{Delivery, EventId, Target};
use herald_gateway::names::Name;
use herald_gateway::delivery::sse::event_frame;
use herald_gateway_fuzz::{Expected, check_frame, fields, text};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let parts = fields(data, 4);
    let delivery = Delivery {
        event_type: parts.get(1).map(|t| text(t)).unwrap_or_else(|| "message".into()),
        payload: Bytes::copy_from_slice(parts[0]),
        id: parts.get(3).and_then(|i| EventId::parse(&text(i))),
        from: parts.get(2).map(|f| text(f)),
        trace: None,
        published_at: None,
        previous: None,
    };
    let json_ok = serde_json::from_slice::<serde::de::IgnoredAny>(&delivery.payload).is_ok();
    if delivery.problem().is_some() {
        return;
    }
    assert!(json_ok, "a payload that is not JSON passed Delivery::problem");

    let targets = [
        Target::User(Name::parse("u1").unwrap()),
        Target::Channel(Name::parse("org.42.dash").unwrap()),
        Target::Broadcast,
    ];
    let target = &targets[delivery.payload.len() % targets.len()];
    let frame =
        event_frame(delivery.id.as_ref(), &delivery.event_type, target, delivery.from.as_deref(), &delivery.payload);
    check_frame(
        &frame,
        &Expected {
            id: delivery.id.as_ref(),
            event_type: &delivery.event_type,
            channel: target.channel().map(|c| c.as_str()),
            target: target.kind(),
            from: delivery.from.as_deref(),
            payload: &delivery.payload,
        },
    );
});
