//! The HTTP/1 dispatcher's buffers start small, grow with what arrives and are given back while a
//! connection waits (vendor/README.md). Requests of every size must still be read whole: heads
//! and bodies larger than the initial buffer, several requests in one write, and a request
//! arriving on a connection whose buffer was given back.

use std::time::Duration;

use herald_testkit::{Gateway, Nats, PUBLISH_KEY, Sse, token};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn publish_request(event_type: &str, data: &str, pad: usize) -> Vec<u8> {
    let body = json!({"type": event_type, "data": data, "channels": ["big:1"]}).to_string();
    format!(
        "POST /v1/publish HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {PUBLISH_KEY}\r\n\
         Content-Type: application/json\r\nX-Pad: {}\r\nContent-Length: {}\r\n\r\n{body}",
        "p".repeat(pad),
        body.len()
    )
    .into_bytes()
}

/// Reads `count` responses with a Content-Length from one keep-alive connection; their statuses.
async fn read_responses(stream: &mut TcpStream, count: usize) -> Vec<u16> {
    let mut raw = Vec::new();
    let mut statuses = Vec::new();
    let mut chunk = [0u8; 4096];
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while statuses.len() < count {
        // Every complete response at the front of `raw`.
        while let Some((status, headers, rest)) = herald_testkit::http::parse_head(&raw) {
            let length: usize = headers
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                .map(|(_, v)| v.parse().unwrap())
                .unwrap_or_else(|| panic!("no content-length in {headers:?}"));
            if rest.len() < length {
                break;
            }
            let consumed = raw.len() - rest.len() + length;
            statuses.push(status);
            raw.drain(..consumed);
        }
        if statuses.len() == count {
            break;
        }
        let n = tokio::time::timeout_at(deadline, stream.read(&mut chunk))
            .await
            .unwrap_or_else(|_| panic!("{} of {count} responses within 10 s", statuses.len()))
            .unwrap();
        assert!(n > 0, "the gateway closed the connection after {} of {count} responses", statuses.len());
        raw.extend_from_slice(&chunk[..n]);
    }
    statuses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_larger_than_the_first_buffer_pipelined_or_after_a_wait_are_read_whole() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;

    // A stream whose own request head (3 KiB of it a header) is larger than the first buffer.
    let pad = "s".repeat(3 * 1024);
    let bearer = format!("Bearer {}", token("reader", &["big:*"], 600));
    let mut sse = Sse::open(gw.addr, "/events?channels=big:1", &[("Authorization", &bearer), ("X-Pad", &pad)])
        .await
        .unwrap_or_else(|res| panic!("refused: {}", res.status));
    assert_eq!(sse.next().await.event, "connected");

    // Three requests in one write on one connection: small, then a 3 KiB head with a 40 KiB
    // body, then small again.
    let large = "d".repeat(40 * 1024);
    let mut burst = publish_request("first", "a", 0);
    burst.extend(publish_request("large", &large, 3 * 1024));
    burst.extend(publish_request("third", "c", 0));
    let mut conn = TcpStream::connect(gw.addr).await.unwrap();
    conn.write_all(&burst).await.unwrap();
    assert_eq!(read_responses(&mut conn, 3).await, [200, 200, 200]);

    // The connection has read everything and waits; a request arriving now is read through a
    // buffer given back meanwhile.
    conn.write_all(&publish_request("after_wait", "e", 2 * 1024)).await.unwrap();
    assert_eq!(read_responses(&mut conn, 1).await, [200]);

    for (event_type, data) in [("first", "a"), ("large", large.as_str()), ("third", "c"), ("after_wait", "e")] {
        let ev = sse.next_event().await;
        assert_eq!(ev.event, event_type);
        assert_eq!(ev.json()["data"], json!(data), "{event_type}: the data arrived changed");
    }
    assert!(!gw.log_text().contains("panicked"));
}
