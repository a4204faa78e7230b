//! Just enough HTTP/1.1 for a load generator: a request writer, a response-head parser, an
//! incremental zero-copy chunked decoder, and a keep-alive connection for publishing and for
//! reading `/stats`.
//!
//! A general HTTP client would allocate per read and keep buffers per connection; an SSE
//! connection here costs a socket, the decoder's two words and the SSE parser's buffers.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("bad URL {0:?}: {1}")]
    Url(String, String),
    #[error("connect to {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("malformed HTTP response")]
    Malformed,
    #[error("response head over 16 KiB")]
    HeadTooLong,
    #[error("malformed chunked body")]
    Chunked,
    #[error("connection closed before the response was complete")]
    Closed,
    #[error("timed out")]
    Timeout,
}

/// An `http://host:port/path?query` URL split for a raw request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// `host:port`, for connecting and for the `Host` header.
    pub authority: String,
    pub host: String,
    pub port: u16,
    /// Path and query, at least `/`.
    pub path: String,
}

impl Target {
    pub fn parse(raw: &str) -> Result<Target, HttpError> {
        let url = url::Url::parse(raw).map_err(|e| HttpError::Url(raw.to_owned(), e.to_string()))?;
        if url.scheme() != "http" {
            return Err(HttpError::Url(raw.to_owned(), "only http:// is supported".into()));
        }
        let host = url.host_str().ok_or_else(|| HttpError::Url(raw.to_owned(), "no host".into()))?.to_owned();
        let port = url.port_or_known_default().unwrap_or(80);
        let mut path = url.path().to_owned();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let host = host.trim_start_matches('[').trim_end_matches(']').to_owned();
        let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
        Ok(Target { authority, host, port, path })
    }
}

/// How a response body is framed.
#[derive(Debug)]
pub enum Framing {
    Chunked(Dechunker),
    Length(u64),
    /// Until the connection closes.
    Close,
}

#[derive(Debug)]
pub struct Head {
    pub status: u16,
    pub framing: Framing,
}

/// Parses a response head from `buf`: `Ok(None)` while incomplete, else the head and its length.
pub fn parse_head(buf: &[u8]) -> Result<Option<(Head, usize)>, HttpError> {
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        if buf.len() > 16 * 1024 {
            return Err(HttpError::HeadTooLong);
        }
        return Ok(None);
    };
    let head = std::str::from_utf8(&buf[..end]).map_err(|_| HttpError::Malformed)?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().ok_or(HttpError::Malformed)?;
    if !status_line.starts_with("HTTP/1.") {
        return Err(HttpError::Malformed);
    }
    let status = status_line.split(' ').nth(1).and_then(|s| s.parse().ok()).ok_or(HttpError::Malformed)?;
    let mut framing = Framing::Close;
    for line in lines {
        let Some((k, v)) = line.split_once(':') else { continue };
        let v = v.trim();
        if k.eq_ignore_ascii_case("transfer-encoding") && v.to_ascii_lowercase().contains("chunked") {
            framing = Framing::Chunked(Dechunker::default());
        } else if k.eq_ignore_ascii_case("content-length") && !matches!(framing, Framing::Chunked(_)) {
            framing = Framing::Length(v.parse().map_err(|_| HttpError::Malformed)?);
        }
    }
    if matches!(status, 204 | 304) || (100..200).contains(&status) {
        framing = Framing::Length(0);
    }
    Ok(Some((Head { status, framing }, end + 4)))
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum State {
    #[default]
    Size,
    SizeExt,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    TrailerLine,
    TrailerLf,
    Done,
}

/// Incremental `Transfer-Encoding: chunked` decoder: hands out slices of the input, never copies.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: State,
    size: u64,
    size_digits: u8,
}

impl Dechunker {
    pub fn done(&self) -> bool {
        self.state == State::Done
    }

    /// Feeds bytes, calling `sink` with each piece of body data.
    pub fn feed(&mut self, mut bytes: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<(), HttpError> {
        while !bytes.is_empty() {
            match self.state {
                State::Data => {
                    let n = (self.size.min(bytes.len() as u64)) as usize;
                    sink(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.size -= n as u64;
                    if self.size == 0 {
                        self.state = State::DataCr;
                    }
                    continue;
                }
                State::Done => return Ok(()),
                _ => {}
            }
            let b = bytes[0];
            bytes = &bytes[1..];
            self.state = match (self.state, b) {
                (State::Size, b) if b.is_ascii_hexdigit() => {
                    if self.size_digits >= 15 {
                        return Err(HttpError::Chunked);
                    }
                    self.size_digits += 1;
                    self.size = self.size * 16 + (b as char).to_digit(16).unwrap_or(0) as u64;
                    State::Size
                }
                (State::Size, b';' | b' ' | b'\t') if self.size_digits > 0 => State::SizeExt,
                (State::Size, b'\r') if self.size_digits > 0 => State::SizeLf,
                (State::Size | State::SizeLf | State::SizeExt, b'\n') if self.size_digits > 0 => self.after_size(),
                (State::SizeExt, _) => State::SizeExt,
                (State::DataCr, b'\r') => State::DataLf,
                (State::DataCr | State::DataLf, b'\n') => {
                    self.size_digits = 0;
                    State::Size
                }
                (State::TrailerStart, b'\r') => State::TrailerLf,
                (State::TrailerStart | State::TrailerLf, b'\n') => State::Done,
                (State::TrailerLine, b'\n') => State::TrailerStart,
                (State::TrailerStart | State::TrailerLine, _) => State::TrailerLine,
                _ => return Err(HttpError::Chunked),
            };
        }
        Ok(())
    }

    fn after_size(&mut self) -> State {
        if self.size == 0 { State::TrailerStart } else { State::Data }
    }
}

/// Body decoder over any framing; `true` from [`BodyReader::feed`] means the body is complete.
#[derive(Debug)]
pub struct BodyReader {
    framing: Framing,
}

impl BodyReader {
    pub fn new(framing: Framing) -> BodyReader {
        BodyReader { framing }
    }

    pub fn complete(&self) -> bool {
        match &self.framing {
            Framing::Chunked(d) => d.done(),
            Framing::Length(n) => *n == 0,
            Framing::Close => false,
        }
    }

    pub fn feed(&mut self, bytes: &[u8], sink: &mut impl FnMut(&[u8])) -> Result<bool, HttpError> {
        match &mut self.framing {
            Framing::Chunked(d) => {
                d.feed(bytes, sink)?;
                Ok(d.done())
            }
            Framing::Length(left) => {
                let n = (*left).min(bytes.len() as u64) as usize;
                sink(&bytes[..n]);
                *left -= n as u64;
                Ok(*left == 0)
            }
            Framing::Close => {
                sink(bytes);
                Ok(false)
            }
        }
    }
}

/// Writes a request head (and body) into `out`.
pub fn write_request(out: &mut Vec<u8>, method: &str, target: &Target, headers: &[(&str, &str)], body: &[u8]) {
    use std::io::Write;
    let _ = write!(out, "{method} {} HTTP/1.1\r\nHost: {}\r\n", target.path, target.authority);
    for (k, v) in headers {
        let _ = write!(out, "{k}: {v}\r\n");
    }
    if method != "GET" || !body.is_empty() {
        let _ = write!(out, "Content-Length: {}\r\n", body.len());
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// A keep-alive HTTP/1.1 connection for request/response exchanges (publishing, `/stats`).
pub struct Conn {
    authority: String,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
    out: Vec<u8>,
}

impl Conn {
    pub fn new(authority: &str) -> Conn {
        Conn { authority: authority.to_owned(), stream: None, buf: Vec::with_capacity(4096), out: Vec::new() }
    }

    /// One request; reconnects once if a kept-alive connection turned out closed.
    pub async fn request(
        &mut self,
        method: &str,
        target: &Target,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Vec<u8>), HttpError> {
        let reused = self.stream.is_some();
        match tokio::time::timeout(timeout, self.exchange(method, target, headers, body)).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(HttpError::Closed | HttpError::Io(_))) if reused => {
                self.stream = None;
                tokio::time::timeout(timeout, self.exchange(method, target, headers, body))
                    .await
                    .map_err(|_| HttpError::Timeout)?
            }
            Ok(Err(e)) => {
                self.stream = None;
                Err(e)
            }
            Err(_) => {
                self.stream = None;
                Err(HttpError::Timeout)
            }
        }
    }

    async fn exchange(
        &mut self,
        method: &str,
        target: &Target,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Result<(u16, Vec<u8>), HttpError> {
        if self.stream.is_none() {
            let s =
                TcpStream::connect(&self.authority).await.map_err(|e| HttpError::Connect(self.authority.clone(), e))?;
            s.set_nodelay(true)?;
            self.stream = Some(s);
        }
        let stream = self.stream.as_mut().expect("connected above");
        self.out.clear();
        write_request(&mut self.out, method, target, headers, body);
        stream.write_all(&self.out).await?;
        self.buf.clear();
        let mut chunk = [0u8; 4096];
        let (head, used) = loop {
            if let Some(h) = parse_head(&self.buf)? {
                break h;
            }
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(HttpError::Closed);
            }
            self.buf.extend_from_slice(&chunk[..n]);
        };
        let keep = !matches!(head.framing, Framing::Close);
        let mut reader = BodyReader::new(head.framing);
        let mut out = Vec::new();
        let rest = self.buf[used..].to_vec();
        let mut done = reader.complete() || reader.feed(&rest, &mut |d| out.extend_from_slice(d))?;
        while !done {
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                if keep {
                    return Err(HttpError::Closed);
                }
                break;
            }
            done = reader.feed(&chunk[..n], &mut |d| out.extend_from_slice(d))?;
        }
        if !keep {
            self.stream = None;
        }
        Ok((head.status, out))
    }
}

/// One `GET` with its own connection.
pub async fn get(url: &str, timeout: Duration) -> Result<(u16, Vec<u8>), HttpError> {
    let target = Target::parse(url)?;
    Conn::new(&target.authority).request("GET", &target, &[("Connection", "close")], b"", timeout).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dechunk(chunks: &[&[u8]]) -> (Vec<u8>, bool) {
        let mut d = Dechunker::default();
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |s| out.extend_from_slice(s)).unwrap();
        }
        (out, d.done())
    }

    #[test]
    fn chunked_bodies_decode_across_any_split() {
        let wire: &[u8] = b"5;ext=1\r\nhello\r\n1A\r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: y\r\n\r\n";
        let want = b"helloabcdefghijklmnopqrstuvwxyz".to_vec();
        assert_eq!(dechunk(&[wire]), (want.clone(), true));
        for i in 0..=wire.len() {
            assert_eq!(dechunk(&[&wire[..i], &wire[i..]]), (want.clone(), true), "split at {i}");
        }
        assert_eq!(dechunk(&[b"3\r\nabc\r\n"]), (b"abc".to_vec(), false));
    }

    #[test]
    fn bad_chunks_are_errors_not_panics() {
        for bad in [&b"zz\r\n"[..], b"\r\n", b"3\r\nabcX", b"fffffffffffffffff\r\n"] {
            let mut d = Dechunker::default();
            assert!(d.feed(bad, &mut |_| {}).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn heads_parse_framing() {
        let (h, n) = parse_head(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nrest").unwrap().unwrap();
        assert_eq!((h.status, n), (200, 47));
        assert!(matches!(h.framing, Framing::Chunked(_)));
        let (h, _) = parse_head(b"HTTP/1.1 401 Unauthorized\r\nContent-Length: 12\r\n\r\n").unwrap().unwrap();
        assert!(matches!(h.framing, Framing::Length(12)));
        assert!(parse_head(b"HTTP/1.1 200 OK\r\n").unwrap().is_none());
        assert!(parse_head(b"SSH-2.0\r\n\r\n").is_err());
    }

    #[test]
    fn targets_split_urls() {
        let t = Target::parse("http://127.0.0.1:8080/events?channels=a,b").unwrap();
        assert_eq!((t.authority.as_str(), t.port, t.path.as_str()), ("127.0.0.1:8080", 8080, "/events?channels=a,b"));
        assert!(Target::parse("https://x/").is_err());
        assert!(Target::parse("not a url").is_err());
    }
}
