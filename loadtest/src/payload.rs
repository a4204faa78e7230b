//! The measured payload: a JSON object whose first two members are the send time (Unix
//! nanoseconds) and the sequence number within the publish's target, `{"t":…,"s":…}`, optionally
//! padded to a size with `"p"`. Herald delivers the publisher's JSON byte for byte inside its
//! envelope and Nchan delivers the body as is, so the receiver finds it by its prefix without a
//! JSON parser.

use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &[u8] = b"{\"t\":";
const SEQ: &[u8] = b",\"s\":";

/// Unix time in nanoseconds.
pub fn now_ns() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0)
}

/// Writes a payload of at least `size` bytes into `out` (cleared first).
pub fn encode(out: &mut Vec<u8>, sent_ns: u64, seq: u64, size: usize) {
    use std::io::Write;
    out.clear();
    let _ = write!(out, "{{\"t\":{sent_ns},\"s\":{seq}");
    // `,"p":""}` is 8 bytes.
    if size > out.len() + 8 {
        let pad = size - out.len() - 8;
        out.extend_from_slice(b",\"p\":\"");
        out.resize(out.len() + pad, b'x');
        out.push(b'"');
    }
    out.push(b'}');
}

/// Finds the send time and sequence in an event's data (a payload, or an envelope around one).
pub fn decode(data: &[u8]) -> Option<(u64, u64)> {
    let at = find(data, PREFIX)?;
    let rest = &data[at + PREFIX.len()..];
    let (t, used) = number(rest)?;
    let rest = rest[used..].strip_prefix(SEQ)?;
    let (s, _) = number(rest)?;
    Some((t, s))
}

fn number(b: &[u8]) -> Option<(u64, usize)> {
    let digits = b.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 || digits > 19 {
        return None;
    }
    let mut n = 0u64;
    for &c in &b[..digits] {
        n = n * 10 + u64::from(c - b'0');
    }
    Some((n, digits))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_pads() {
        let mut b = Vec::new();
        encode(&mut b, 1_700_000_000_123_456_789, 42, 0);
        assert_eq!(b, br#"{"t":1700000000123456789,"s":42}"#);
        assert_eq!(decode(&b), Some((1_700_000_000_123_456_789, 42)));
        encode(&mut b, 5, 6, 200);
        assert_eq!(b.len(), 200);
        assert!(serde_json::from_slice::<serde_json::Value>(&b).is_ok());
        assert_eq!(decode(&b), Some((5, 6)));
    }

    #[test]
    fn finds_the_payload_inside_herald_envelopes() {
        let env = br#"{"channel":"lt-1","target":"channel","data":{"t":10,"s":3,"p":"xx"}}"#;
        assert_eq!(decode(env), Some((10, 3)));
        assert_eq!(decode(br#"{"connectionId":"x"}"#), None);
        assert_eq!(decode(br#"{"t":,"s":1}"#), None);
        assert_eq!(decode(br#"{"t":99999999999999999999,"s":1}"#), None);
    }
}
