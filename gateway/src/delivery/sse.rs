//! SSE frame rendering (docs/protocol.md). Pure functions: the hub calls [`event_frame`] once per
//! event per pod and shares the resulting bytes with every session.
//!
//! Control frames (`connected`, `token_expired`) never carry `id:`, because an id there would
//! move the browser's resume cursor past events it has not seen. `reset` is the exception: it
//! tells the client to refetch its state, so its cursor moves to the head of the history (the
//! refetched state includes everything up to there); without it, every later reconnect would
//! send the same stale id and be reset again.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::event::{EventId, Target};

/// The comment sent every heartbeat interval; failed writes of it reveal dead clients.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Renders one event: `id:` (durable events only), `event:`, and the JSON envelope
/// `{"channel":…,"target":…,"data":…}` (plus `"from"` for client events) as `data:` lines.
///
/// `payload` must be valid JSON. Line breaks inside it (pretty-printed JSON) become further
/// `data:` lines, which the client joins back with `\n`.
pub fn event_frame(
    id: Option<&EventId>,
    event_type: &str,
    target: &Target,
    from: Option<&str>,
    payload: &[u8],
) -> Bytes {
    // Rendered straight into the frame: one allocation per event. Only the payload can hold
    // line breaks (JSON strings escape theirs), so only it is split into `data:` lines.
    let mut out = BytesMut::with_capacity(payload.len() + event_type.len() + 128);
    if let Some(id) = id {
        // Writing into BytesMut cannot fail.
        let _ = writeln!((&mut out).writer(), "id: {id}");
    }
    out.put_slice(b"event: ");
    out.put_slice(event_type.as_bytes());
    out.put_slice(b"\ndata: {\"channel\":");
    match target.channel() {
        Some(name) => json_string(&mut out, name.as_str()),
        None => out.put_slice(b"null"),
    }
    out.put_slice(b",\"target\":\"");
    out.put_slice(target.kind().as_bytes());
    out.put_u8(b'"');
    if let Some(from) = from {
        out.put_slice(b",\"from\":");
        json_string(&mut out, from);
    }
    out.put_slice(b",\"data\":");
    put_split_lines(&mut out, payload);
    out.put_slice(b"}\n\n");
    out.freeze()
}

/// A control event (no `id:`): `event: <name>` with `data` serialised from `data`.
pub fn control_frame(event: &str, data: &impl Serialize) -> Bytes {
    let json = serde_json::to_vec(data).unwrap_or_else(|_| b"null".to_vec());
    let mut out = BytesMut::with_capacity(json.len() + event.len() + 16);
    out.put_slice(b"event: ");
    out.put_slice(event.as_bytes());
    out.put_u8(b'\n');
    put_data_lines(&mut out, &json);
    out.put_u8(b'\n');
    out.freeze()
}

/// The `reset` reason of a stream that missed an event lost on its way to the gateway and
/// refilled after a newer one reached the stream: it can no longer go out in order.
pub const RESET_MISSED: &str = "missed";

/// `event: reset` with `{"reason":…}`, carrying the history's head as its id when known.
pub fn reset_frame(reason: &str, head: Option<&EventId>) -> Bytes {
    let control = control_frame("reset", &serde_json::json!({ "reason": reason }));
    match head {
        None => control,
        Some(id) => {
            let mut out = BytesMut::with_capacity(control.len() + 32);
            let _ = writeln!((&mut out).writer(), "id: {id}");
            out.put_slice(&control);
            out.freeze()
        }
    }
}

/// A bare reconnection hint: the browser waits `ms` before reconnecting.
pub fn retry_frame(ms: u64) -> Bytes {
    Bytes::from(format!("retry: {ms}\n\n"))
}

/// The first frame of every stream: the reconnection delay, then `event: connected`.
pub fn connected_frame(retry_ms: u64, cursor: Option<&EventId>, info: &impl Serialize) -> Bytes {
    let control = control_frame("connected", info);
    let mut out = BytesMut::with_capacity(control.len() + 48);
    let _ = writeln!((&mut out).writer(), "retry: {retry_ms}");
    if let Some(id) = cursor {
        let _ = writeln!((&mut out).writer(), "id: {id}");
    }
    out.put_slice(&control);
    out.freeze()
}

/// Writes `data` as `data:` lines.
fn put_data_lines(out: &mut BytesMut, data: &[u8]) {
    out.put_slice(b"data: ");
    put_split_lines(out, data);
    out.put_u8(b'\n');
}

/// Copies `data`, starting a new `data:` line at each CRLF, CR and LF, as the SSE parser splits.
fn put_split_lines(out: &mut BytesMut, data: &[u8]) {
    let mut rest = data;
    while let Some(i) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        out.put_slice(&rest[..i]);
        out.put_slice(b"\ndata: ");
        let skip = if rest[i] == b'\r' && rest.get(i + 1) == Some(&b'\n') { 2 } else { 1 };
        rest = &rest[i + skip..];
    }
    out.put_slice(rest);
}

fn json_string(out: &mut BytesMut, s: &str) {
    // Serialising a str into a BytesMut cannot fail.
    let _ = serde_json::to_writer(out.writer(), s);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::names::Name;

    fn text(b: &Bytes) -> &str {
        std::str::from_utf8(b).unwrap()
    }

    #[test]
    fn channel_event_with_id() {
        let id = EventId { epoch: Arc::from("e1"), seq: 7 };
        let target = Target::Channel(Name::parse("booking:42").unwrap());
        let frame = event_frame(Some(&id), "booking_update", &target, None, br#"{"status":"confirmed"}"#);
        assert_eq!(
            text(&frame),
            "id: e1-7\nevent: booking_update\ndata: {\"channel\":\"booking:42\",\"target\":\"channel\",\"data\":{\"status\":\"confirmed\"}}\n\n"
        );
    }

    #[test]
    fn user_and_broadcast_have_null_channel_and_no_id_when_ephemeral() {
        let u = Target::User(Name::parse("u1").unwrap());
        assert_eq!(
            text(&event_frame(None, "message", &u, None, b"1")),
            "event: message\ndata: {\"channel\":null,\"target\":\"user\",\"data\":1}\n\n"
        );
        assert_eq!(
            text(&event_frame(None, "message", &Target::Broadcast, Some("ana"), b"\"hi\"")),
            "event: message\ndata: {\"channel\":null,\"target\":\"broadcast\",\"from\":\"ana\",\"data\":\"hi\"}\n\n"
        );
    }

    #[test]
    fn newlines_become_data_lines() {
        let u = Target::User(Name::parse("u1").unwrap());
        let frame = event_frame(None, "t", &u, None, b"{\n\"a\":1,\r\n\"b\":2\r}");
        assert_eq!(
            text(&frame),
            "event: t\ndata: {\"channel\":null,\"target\":\"user\",\"data\":{\ndata: \"a\":1,\ndata: \"b\":2\ndata: }}\n\n"
        );
        // Joining the data lines with \n gives JSON that parses.
        let joined: Vec<&str> = text(&frame).lines().filter_map(|l| l.strip_prefix("data: ")).collect();
        let v: serde_json::Value = serde_json::from_str(&joined.join("\n")).unwrap();
        assert_eq!(v["data"]["b"], 2);
    }

    #[test]
    fn connected_has_retry_and_the_cursor_when_there_is_one() {
        let f = connected_frame(2500, None, &serde_json::json!({"user":"u1"}));
        assert_eq!(text(&f), "retry: 2500\nevent: connected\ndata: {\"user\":\"u1\"}\n\n");
        let id = EventId { epoch: "e1".into(), seq: 42 };
        let f = connected_frame(2500, Some(&id), &serde_json::json!({"user":"u1"}));
        assert_eq!(text(&f), "retry: 2500\nid: e1-42\nevent: connected\ndata: {\"user\":\"u1\"}\n\n");
    }
}
