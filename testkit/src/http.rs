//! One HTTP/1.1 request on its own connection (`Connection: close`), and the response parsed
//! from the bytes on the wire: status, headers, and the body (de-chunked when chunked).

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::tokens::PUBLISH_KEY;

pub type Headers = Vec<(String, String)>;

/// A complete HTTP response.
#[derive(Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Headers,
    pub body: Vec<u8>,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&self.body)))
    }

    /// The body as text; panics when it is not UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8(self.body.clone()).unwrap_or_else(|_| panic!("not UTF-8: {:?}", self.body))
    }
}

/// The value of the header `name` (in any case) among `headers`.
pub fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
}

/// One request; panics when there is no complete response within 10 s.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Response {
    request(addr, method, target, headers, body, Duration::from_secs(10))
        .await
        .unwrap_or_else(|e| panic!("{method} {target}: {e}"))
}

/// [`http`], answering what went wrong instead of panicking (the connection refused, no
/// complete response), and waiting up to 30 s for the response.
pub async fn try_http(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
) -> Result<Response, String> {
    request(addr, method, target, headers, body, Duration::from_secs(30)).await
}

/// `POST /v1/publish` with the test publisher key, answering rather than panicking when the
/// gateway cannot be reached.
pub async fn try_publish(addr: SocketAddr, body: &serde_json::Value) -> Result<Response, String> {
    let auth = format!("Bearer {PUBLISH_KEY}");
    let headers = [("Authorization", auth.as_str()), ("Content-Type", "application/json")];
    try_http(addr, "POST", "/v1/publish", &headers, Some(body.to_string().as_bytes())).await
}

/// A `GET` from a thread outside any async runtime (a plain `#[test]`); `None` when the
/// connection is refused or no complete response comes within 5 s.
pub fn get_blocking(addr: SocketAddr, target: &str) -> Option<Response> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(addr).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(stream, "GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut raw = Vec::new();
    let _ = stream.read_to_end(&mut raw);
    parse_response(&raw).ok()
}

async fn request(
    addr: SocketAddr,
    method: &str,
    target: &str,
    headers: &[(&str, &str)],
    body: Option<&[u8]>,
    wait: Duration,
) -> Result<Response, String> {
    let stream = TcpStream::connect(addr).await.map_err(|e| format!("cannot connect to {addr}: {e}"))?;
    let mut req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    if let Some(b) = body {
        req.push_str(&format!("Content-Length: {}\r\n", b.len()));
    }
    req.push_str("\r\n");
    let (mut rd, mut wr) = stream.into_split();
    let body = body.map(<[u8]>::to_vec);
    // Written concurrently: the server may answer (413) before reading the whole body.
    let writer = tokio::spawn(async move {
        wr.write_all(req.as_bytes()).await?;
        if let Some(b) = body {
            wr.write_all(&b).await?;
        }
        Ok::<_, std::io::Error>(wr)
    });
    let mut raw = Vec::new();
    let _ = tokio::time::timeout(wait, rd.read_to_end(&mut raw)).await;
    writer.abort();
    parse_response(&raw)
}

/// A whole response read to the connection's end.
fn parse_response(raw: &[u8]) -> Result<Response, String> {
    let (status, headers, rest) =
        parse_head(raw).ok_or_else(|| format!("bad response: {}", String::from_utf8_lossy(raw)))?;
    let body = body_of(&headers, rest.to_vec());
    Ok(Response { status, headers, body })
}

/// The body of a response with `headers` from the bytes after its head: de-chunked when it
/// was sent chunked.
pub(crate) fn body_of(headers: &[(String, String)], rest: Vec<u8>) -> Vec<u8> {
    if header(headers, "transfer-encoding").is_some_and(|v| v.contains("chunked")) {
        let mut d = Dechunker::default();
        d.feed(&rest);
        d.out
    } else {
        rest
    }
}

/// An HTTP/1 response's status and headers, and the bytes after its head; None while incomplete.
pub fn parse_head(raw: &[u8]) -> Option<(u16, Headers, &[u8])> {
    let end = raw.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&raw[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status = lines.next()?.split(' ').nth(1)?.parse().ok()?;
    let headers =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    Some((status, headers, &raw[end + 4..]))
}

/// Incremental chunked transfer-encoding decoder.
#[derive(Default)]
pub(crate) struct Dechunker {
    buf: Vec<u8>,
    /// What has been decoded and not taken yet.
    pub(crate) out: Vec<u8>,
    remaining: usize,
    /// The last (empty) chunk has come.
    pub(crate) done: bool,
}

impl Dechunker {
    pub(crate) fn feed(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        loop {
            if self.done {
                return;
            }
            if self.remaining > 0 {
                let n = self.remaining.min(self.buf.len());
                if n == 0 {
                    return;
                }
                self.out.extend_from_slice(&self.buf[..n]);
                self.buf.drain(..n);
                self.remaining -= n;
                if self.remaining > 0 {
                    return;
                }
                continue;
            }
            // Expect [CRLF] size CRLF.
            let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") else { return };
            let line = String::from_utf8_lossy(&self.buf[..pos]).to_string();
            self.buf.drain(..pos + 2);
            if line.is_empty() {
                continue; // the CRLF after a chunk
            }
            let size = usize::from_str_radix(line.split(';').next().unwrap().trim(), 16).expect("chunk size");
            if size == 0 {
                self.done = true;
                return;
            }
            self.remaining = size;
        }
    }
}
