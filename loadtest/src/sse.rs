//! An incremental Server-Sent Events parser, exact to the WHATWG "event stream interpretation".
//!
//! It is fed whatever a socket read returned (any split, even inside a CRLF) and calls back once
//! per dispatched event with borrowed slices, so a connection that receives a million events
//! allocates only when a line or an event is longer than any before it. Line endings may be
//! CRLF, LF or CR; `data:` lines are joined with LF; comments, unknown fields and `retry:` values
//! that are not all digits are ignored; an `id:` containing NUL is ignored; an event without
//! data is not dispatched (its type is reset); a UTF-8 byte order mark at the very start is
//! skipped; an unterminated event at end of stream is discarded (the caller simply stops
//! feeding).

/// One dispatched event. `last_id` is the stream's last event id (it persists across events, as
/// the spec says).
#[derive(Debug)]
pub struct Event<'a> {
    pub event_type: &'a [u8],
    pub data: &'a [u8],
    pub last_id: &'a [u8],
}

impl Event<'_> {
    /// The event type, `message` when the block named none.
    pub fn kind(&self) -> &[u8] {
        if self.event_type.is_empty() { b"message" } else { self.event_type }
    }
}

#[derive(Default, Debug)]
pub struct Parser {
    /// A line not yet terminated by the bytes fed so far.
    partial: Vec<u8>,
    /// The previous chunk ended in CR: an LF starting the next chunk belongs to it.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may follow).
    at_start: bool,
    data: Vec<u8>,
    event_type: Vec<u8>,
    id_buffer: Vec<u8>,
    /// The stream's last event id: the buffer as of the latest blank line.
    last_id: Vec<u8>,
    /// The reconnection time from the last valid `retry:` field, in milliseconds.
    pub retry_ms: Option<u64>,
    /// Comment lines seen (heartbeats).
    pub comments: u64,
}

impl Parser {
    pub fn new() -> Parser {
        Parser { at_start: true, ..Parser::default() }
    }

    /// The stream's last event id, what a reconnect sends as `Last-Event-ID` (empty when none).
    pub fn last_id(&self) -> &[u8] {
        &self.last_id
    }

    /// Feeds bytes; calls `on_event` for every event completed by them.
    pub fn feed<F: FnMut(&Event<'_>)>(&mut self, bytes: &[u8], on_event: &mut F) {
        if self.at_start {
            // The BOM may itself arrive split: hold the first bytes until it is known.
            self.partial.extend_from_slice(bytes);
            if self.partial.len() < 3 && b"\xEF\xBB\xBF".starts_with(&self.partial) {
                return;
            }
            self.at_start = false;
            let held = std::mem::take(&mut self.partial);
            let skip = if held.starts_with(b"\xEF\xBB\xBF") { 3 } else { 0 };
            self.feed_lines(&held[skip..], on_event);
            return;
        }
        self.feed_lines(bytes, on_event);
    }

    fn feed_lines<F: FnMut(&Event<'_>)>(&mut self, bytes: &[u8], on_event: &mut F) {
        let mut rest = bytes;
        if self.after_cr && !rest.is_empty() {
            self.after_cr = false;
            if rest.first() == Some(&b'\n') {
                rest = &rest[1..];
            }
        }
        while let Some(pos) = rest.iter().position(|&b| b == b'\n' || b == b'\r') {
            let line_end = rest[pos];
            let mut next = pos + 1;
            if line_end == b'\r' {
                match rest.get(next) {
                    Some(b'\n') => next += 1,
                    Some(_) => {}
                    None => self.after_cr = true,
                }
            }
            if self.partial.is_empty() {
                self.line(&rest[..pos], on_event);
            } else {
                let mut line = std::mem::take(&mut self.partial);
                line.extend_from_slice(&rest[..pos]);
                self.line(&line, on_event);
                line.clear();
                self.partial = line;
            }
            rest = &rest[next..];
        }
        self.partial.extend_from_slice(rest);
    }

    fn line<F: FnMut(&Event<'_>)>(&mut self, line: &[u8], on_event: &mut F) {
        if line.is_empty() {
            self.dispatch(on_event);
            return;
        }
        if line[0] == b':' {
            self.comments += 1;
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let v = &line[colon + 1..];
                (&line[..colon], v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                self.data.extend_from_slice(value);
                self.data.push(b'\n');
            }
            b"event" => {
                self.event_type.clear();
                self.event_type.extend_from_slice(value);
            }
            b"id" if !value.contains(&0) => {
                self.id_buffer.clear();
                self.id_buffer.extend_from_slice(value);
            }
            b"retry" if !value.is_empty() && value.iter().all(u8::is_ascii_digit) => {
                self.retry_ms = std::str::from_utf8(value).ok().and_then(|s| s.parse().ok());
            }
            _ => {}
        }
    }

    fn dispatch<F: FnMut(&Event<'_>)>(&mut self, on_event: &mut F) {
        if self.last_id != self.id_buffer {
            self.last_id.clear();
            self.last_id.extend_from_slice(&self.id_buffer);
        }
        if self.data.is_empty() {
            self.event_type.clear();
            return;
        }
        self.data.pop(); // the trailing LF
        on_event(&Event { event_type: &self.event_type, data: &self.data, last_id: &self.id_buffer });
        self.data.clear();
        self.event_type.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq)]
    struct Owned {
        kind: String,
        data: String,
        id: String,
    }

    fn parse_chunks(chunks: &[&[u8]]) -> (Vec<Owned>, Parser) {
        let mut p = Parser::new();
        let mut out = Vec::new();
        for c in chunks {
            p.feed(c, &mut |e: &Event<'_>| {
                out.push(Owned {
                    kind: String::from_utf8_lossy(e.kind()).into(),
                    data: String::from_utf8_lossy(e.data).into(),
                    id: String::from_utf8_lossy(e.last_id).into(),
                })
            });
        }
        (out, p)
    }

    fn parse(s: &str) -> Vec<Owned> {
        parse_chunks(&[s.as_bytes()]).0
    }

    fn ev(kind: &str, data: &str, id: &str) -> Owned {
        Owned { kind: kind.into(), data: data.into(), id: id.into() }
    }

    #[test]
    fn every_line_ending_is_a_line_ending() {
        let want = vec![ev("a", "1", "x"), ev("message", "2", "x")];
        assert_eq!(parse("event: a\nid: x\ndata: 1\n\ndata: 2\n\n"), want);
        assert_eq!(parse("event: a\r\nid: x\r\ndata: 1\r\n\r\ndata: 2\r\n\r\n"), want);
        assert_eq!(parse("event: a\rid: x\rdata: 1\r\rdata: 2\r\r"), want);
        assert_eq!(parse("event: a\rid: x\r\ndata: 1\n\r\ndata: 2\r\n\n"), want);
    }

    #[test]
    fn data_lines_join_with_lf_and_one_leading_space_is_stripped() {
        assert_eq!(parse("data: {\ndata:  \"a\": 1\ndata:}\n\n"), vec![ev("message", "{\n \"a\": 1\n}", "")]);
        assert_eq!(parse("data\n\n"), vec![ev("message", "", "")], "one empty data line is an empty event");
        assert_eq!(parse("data\ndata\n\n"), vec![ev("message", "\n", "")]);
        assert_eq!(parse("data:no-space\n\n"), vec![ev("message", "no-space", "")]);
    }

    #[test]
    fn comments_unknown_fields_and_empty_events_are_ignored() {
        let (out, p) = parse_chunks(&[b": heartbeat\n\n: another\nfoo: bar\nevent: x\n\ndata: d\n\n"]);
        assert_eq!(out, vec![ev("message", "d", "")], "an event without data resets its type");
        assert_eq!(p.comments, 2);
    }

    #[test]
    fn id_persists_and_nul_ids_are_ignored() {
        let out = parse("id: 7\ndata: a\n\ndata: b\n\nid: 8\u{0}\ndata: c\n\nid\ndata: d\n\n");
        assert_eq!(
            out,
            vec![ev("message", "a", "7"), ev("message", "b", "7"), ev("message", "c", "7"), ev("message", "d", "")]
        );
    }

    #[test]
    fn the_stream_id_moves_at_blank_lines_only() {
        let (_, p) = parse_chunks(&[b"id: 1\ndata: a\n\nid: 2\n\nid: 3\ndata: b\n"]);
        assert_eq!(p.last_id(), b"2", "an id-only block moves it; an unterminated one does not");
    }

    #[test]
    fn retry_takes_only_digits() {
        let (_, p) = parse_chunks(&[b"retry: 3000\n\n"]);
        assert_eq!(p.retry_ms, Some(3000));
        let (_, p) = parse_chunks(&[b"retry: 3000\nretry: 12x\nretry: -1\nretry:\n\n"]);
        assert_eq!(p.retry_ms, Some(3000));
    }

    #[test]
    fn any_split_gives_the_same_events() {
        let stream: &[u8] =
            b"\xEF\xBB\xBFretry: 10\r\nevent: connected\r\ndata: {\"a\":1}\r\n\r\n: hb\r\nid: 1-5\r\nevent: x\rdata: one\ndata: two\r\n\r\ndata: tail\n\n";
        let (whole, _) = parse_chunks(&[stream]);
        assert_eq!(whole.len(), 3);
        assert_eq!(whole[1], ev("x", "one\ntwo", "1-5"));
        for i in 0..=stream.len() {
            for j in i..=stream.len() {
                let (split, p) = parse_chunks(&[&stream[..i], &stream[i..j], &stream[j..]]);
                assert_eq!(split, whole, "split at {i},{j}");
                assert_eq!(p.comments, 1);
                assert_eq!(p.retry_ms, Some(10));
            }
        }
        // One byte at a time.
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(parse_chunks(&bytes).0, whole);
    }

    #[test]
    fn bom_is_only_skipped_at_the_start() {
        assert_eq!(parse("\u{FEFF}data: a\n\n"), vec![ev("message", "a", "")]);
        let (out, _) = parse_chunks(&[b"data: a\n\n", b"\xEF\xBB\xBFdata: b\n\n"]);
        assert_eq!(out.len(), 1, "a BOM later is part of a field name, so the line is unknown");
    }

    #[test]
    fn an_unterminated_event_is_not_dispatched() {
        assert_eq!(parse("data: a\n"), vec![]);
        assert_eq!(parse("data: a"), vec![]);
    }
}
