//! Refusals before streaming: the right status and a JSON body, no panic, and no effect on the
//! connections already streaming.

use std::time::Duration;

use herald_testkit::{Gateway, Nats, PUBLISH_KEY, Sse, http, token};
use serde_json::json;

async fn refused(gw: &Gateway, target: &str, headers: &[(&str, &str)]) -> (u16, serde_json::Value) {
    match Sse::open(gw.addr, target, headers).await {
        Ok(_) => panic!("{target} was accepted"),
        Err(res) => {
            assert_eq!(res.header("content-type"), Some("application/json"), "{target}");
            (res.status, res.json())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_clear_errors_and_leave_others_alone() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).args(&["--max-channels", "3"]).start();
    gw.ready().await;

    // A healthy stream that must survive everything below.
    let mut bystander = Sse::with_token(gw.addr, &token("ok", &["booking:*"], 600), &["booking:1"]).await;
    assert_eq!(bystander.next().await.event, "connected");

    let expired = token("u1", &["booking:*"], -600);
    let forged = {
        let claims = json!({"sub":"u1","exp":jsonwebtoken::get_current_timestamp()+600,"channels":["*"]});
        jsonwebtoken::encode(
            &jsonwebtoken::Header::default(),
            &claims,
            &jsonwebtoken::EncodingKey::from_secret(b"wrong-secret-wrong-secret-wrong!"),
        )
        .unwrap()
    };
    let good = token("u1", &["booking:*"], 600);
    let bearer = |t: &str| format!("Bearer {t}");

    let (status, body) = refused(&gw, "/events", &[]).await;
    assert_eq!((status, body["error"].as_str()), (401, Some("unauthorized")));
    assert!(body["message"].as_str().unwrap().contains("no token"));

    let (status, body) = refused(&gw, "/events", &[("Authorization", &bearer(&expired))]).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("expired"), "{body}");

    let (status, body) = refused(&gw, "/events", &[("Authorization", &bearer(&forged))]).await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("signature"), "{body}");

    let (status, _) = refused(&gw, "/events?token=garbage.not.jwt", &[]).await;
    assert_eq!(status, 401);
    let (status, _) = refused(&gw, "/events", &[("Authorization", "Bearer ")]).await;
    assert_eq!(status, 401);
    let huge = "x".repeat(9000);
    let (status, _) = refused(&gw, "/events", &[("Authorization", &bearer(&huge))]).await;
    assert_eq!(status, 401);

    let (status, body) = refused(&gw, "/events?channels=agent:7", &[("Authorization", &bearer(&good))]).await;
    assert_eq!((status, body["error"].as_str()), (403, Some("channel_not_allowed")));

    for bad in ["booking:..", "booking:a%20b", "booking:*", "booking:%3E", "booking:%0A", "%E2%9C%93", "a..b"] {
        let (status, body) =
            refused(&gw, &format!("/events?channels={bad}"), &[("Authorization", &bearer(&good))]).await;
        assert_eq!((status, body["error"].as_str()), (400, Some("invalid_channel")), "{bad}");
    }
    let (status, body) =
        refused(&gw, "/events?channels=booking:1,booking:2,booking:3,booking:4", &[("Authorization", &bearer(&good))])
            .await;
    assert_eq!((status, body["error"].as_str()), (400, Some("too_many_channels")));

    // Publishing: key checks, validation, size limit.
    let body = json!({"data":1,"broadcast":true}).to_string();
    let ct = ("Content-Type", "application/json");
    let res = http(gw.addr, "POST", "/v1/publish", &[ct], Some(body.as_bytes())).await;
    assert_eq!((res.status, res.json()["error"].as_str()), (401, Some("unauthorized")));
    let res = http(
        gw.addr,
        "POST",
        "/v1/publish",
        &[ct, ("Authorization", "Bearer not-the-key-not-the-key")],
        Some(body.as_bytes()),
    )
    .await;
    assert_eq!(res.status, 401);
    // A client token is not a publisher key.
    let res =
        http(gw.addr, "POST", "/v1/publish", &[ct, ("Authorization", &bearer(&good))], Some(body.as_bytes())).await;
    assert_eq!(res.status, 401);

    let key = bearer(PUBLISH_KEY);
    let big = json!({"data":"x".repeat(70 * 1024),"broadcast":true}).to_string();
    let res = http(gw.addr, "POST", "/v1/publish", &[ct, ("Authorization", &key)], Some(big.as_bytes())).await;
    assert_eq!((res.status, res.json()["error"].as_str()), (413, Some("payload_too_large")));
    let huge = vec![b'['; 4 * 1024 * 1024];
    let res = http(gw.addr, "POST", "/v1/publish", &[ct, ("Authorization", &key)], Some(&huge)).await;
    assert_eq!(res.status, 413);
    for (bad, code) in [
        ("{", "invalid_json"),
        (r#"{"data":1}"#, "no_targets"),
        (r#"{"data":1,"users":["a b"]}"#, "invalid_user"),
        (r#"{"data":1,"channels":["*"]}"#, "invalid_channel"),
        (r#"{"data":1,"broadcast":true,"type":"connected"}"#, "invalid_type"),
        (r#"{"broadcast":true}"#, "missing_data"),
    ] {
        let res = http(gw.addr, "POST", "/v1/publish", &[ct, ("Authorization", &key)], Some(bad.as_bytes())).await;
        assert_eq!((res.status, res.json()["error"].as_str()), (400, Some(code)), "{bad}");
    }

    // The bystander never noticed: it still streams and receives.
    let res = gw.publish(json!({"type":"still_here","data":1,"channels":["booking:1"]})).await;
    assert_eq!(res.status, 200);
    let ev = bystander.next_event().await;
    assert_eq!(ev.event, "still_here");
    let stats = gw.stats().await;
    assert_eq!(stats["connections"], 1, "{stats}");

    let log = gw.log_text();
    assert!(!log.contains("panicked"), "{log}");
    assert!(!log.contains(&good) && !log.contains(&expired) && !log.contains(PUBLISH_KEY), "a secret reached the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_in_urls_are_redacted_from_logs() {
    let nats = Nats::start();
    // Debug level logs every request line, query included.
    let gw = Gateway::serve(&nats).args(&["--heartbeat-secs", "1"]).rust_log("debug").start();
    gw.ready().await;
    let t = token("u9", &[], 600);
    let mut s = Sse::open(gw.addr, &format!("/events?token={t}"), &[]).await.unwrap();
    assert_eq!(s.next().await.event, "connected");
    let res = http(gw.addr, "GET", &format!("/events?channels=nope:1&token={t}"), &[], None).await;
    assert_eq!(res.status, 403);
    // A publish, with its key, while the stream is open: one event for the close line to count.
    let res = gw.publish(serde_json::json!({"data":{"n":1},"users":["u9"]})).await;
    assert_eq!(res.status, 200);
    assert_eq!(s.next_event().await.event, "message");
    drop(s);
    herald_testkit::eventually("connection closed", Duration::from_secs(20), || async {
        gw.stats().await["connections"] == 0
    })
    .await;
    // The gateway's log is read from its stderr by another thread: the close line may trail.
    herald_testkit::eventually("the close is logged", Duration::from_secs(10), || async {
        gw.log_text().contains("connection closed")
    })
    .await;
    let log = gw.log_text();
    assert!(log.contains("token=REDACTED"), "request lines are logged at debug: {log}");
    assert!(!log.contains(&t), "the token reached the log");
    assert!(!log.contains(PUBLISH_KEY), "the publisher key reached the log");

    // Exactly one line for the one stream that closed, with what it carried and why it ended.
    let closes: Vec<&str> = log.lines().filter(|l| l.contains("connection closed")).collect();
    assert_eq!(closes.len(), 1, "{log}");
    let close = closes[0];
    for field in ["reason=\"client\"", "user=u9", "events=1", "duration_ms=", "frames=", "bytes="] {
        assert!(close.contains(field), "{field} missing from the close line: {close}");
    }
}

/// Malformed requests are the client's error, and anyone can send them: they are answered and
/// closed without an ERROR line (which anyone could otherwise use to flood the logs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_do_not_log_errors() {
    let gw = Gateway::dev().start();
    gw.ready().await;
    let requests: [&[u8]; 3] = [
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nBad Header\r\n\r\n",
        b"GARBAGE\r\n\r\n",
        b"GET /events HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: x\r\n\r\n",
    ];
    for request in requests {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn, request).await.unwrap();
        let mut answer = Vec::new();
        // The gateway answers 400 and closes: once the close is read, the request was handled.
        tokio::time::timeout(Duration::from_secs(10), tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer))
            .await
            .expect("the gateway closes a malformed request's connection")
            .unwrap();
    }
    assert_eq!(http(gw.addr, "GET", "/healthz", &[], None).await.status, 200);
    let log = gw.log_text();
    assert!(!log.contains("ERROR"), "{log}");
}

/// A request body that never finishes is given up after 10 s with a 408, and its connection
/// closed: without a deadline, one publisher key or one client token held any number of
/// connections open this way, none of them counted against any limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_that_never_finishes_is_answered_408() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let requests = [
        format!(
            "POST /v1/publish HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {PUBLISH_KEY}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{"
        ),
        format!(
            "POST /v1/client-events HTTP/1.1\r\nHost: h\r\nAuthorization: Bearer {}\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{{",
            token("slow", &[], 600)
        ),
    ];
    let answers = futures_util::future::join_all(requests.iter().map(|request| async move {
        let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
        tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        tokio::time::timeout(Duration::from_secs(20), tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut answer))
            .await
            .expect("answered and closed within 20 s")
            .unwrap();
        String::from_utf8_lossy(&answer).into_owned()
    }))
    .await;
    for answer in answers {
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(answer.contains("\"error\":\"request_timeout\""), "{answer}");
    }
}

/// A known path asked with a method it does not take is answered 405 with `Allow` and a JSON
/// error, an unknown path 404 with one (before: both a bare 404 with no body).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_methods_and_unknown_paths_get_json_errors() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    for (method, target, allow) in
        [("GET", "/v1/publish", "POST"), ("PUT", "/v1/client-events", "POST"), ("POST", "/events", "GET")]
    {
        let res = http(gw.addr, method, target, &[], None).await;
        assert_eq!((res.status, res.json()["error"].as_str()), (405, Some("method_not_allowed")), "{method} {target}");
        assert_eq!(res.header("allow"), Some(allow), "{method} {target}");
    }
    let res = http(gw.addr, "GET", "/v2/publish", &[], None).await;
    assert_eq!((res.status, res.json()["error"].as_str()), (404, Some("not_found")));
}
