//! `herald-gateway dev`: no NATS, no auth, the page at `/`.

use herald_testkit::{Gateway, Sse, http};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_streams_without_nats_or_tokens() {
    // No NATS anywhere: the in-process broker carries the events.
    let gw = Gateway::dev().start();
    gw.ready().await;
    gw.wait_for_log("DEVELOPMENT MODE").await; // dev mode says so loudly

    let mut alice = Sse::open(gw.addr, "/events?user=alice&channels=booking:42", &[]).await.unwrap();
    let connected = alice.next().await;
    assert_eq!(connected.json()["user"], "alice");

    let res = http(
        gw.addr,
        "POST",
        "/v1/publish",
        &[("Content-Type", "application/json")],
        Some(json!({"type":"notification","data":{"text":"hi"},"users":["alice"]}).to_string().as_bytes()),
    )
    .await;
    assert_eq!(res.status, 200, "publishing needs no key in dev mode");
    let ids = res.json()["ids"].as_array().unwrap().clone();
    assert_eq!(ids.len(), 1);

    let ev = alice.next_event().await;
    assert_eq!(ev.event, "notification");
    assert_eq!(ev.json(), json!({"channel":null,"target":"user","data":{"text":"hi"}}));
    assert_eq!(ev.id.as_deref(), ids[0].as_str(), "dev mode gives durable events ids");

    let page = http(gw.addr, "GET", "/", &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let client = http(gw.addr, "GET", "/client/herald.js", &[], None).await;
    assert_eq!(client.status, 200);
    assert_eq!(client.header("content-type"), Some("text/javascript; charset=utf-8"));
    assert!(String::from_utf8_lossy(&client.body).contains("createClient"));
    assert_eq!(http(gw.addr, "GET", "/client/nope.js", &[], None).await.status, 404);

    // Every module of the browser client is served (index.js as herald.js), so a page importing
    // herald.js loads all it imports; react.js imports `react` and is for bundlers only.
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../clients/js/src");
    let mut served = 0;
    for entry in std::fs::read_dir(&src).unwrap() {
        let name = entry.unwrap().file_name().into_string().unwrap();
        if !name.ends_with(".js") || name == "react.js" {
            continue;
        }
        let path = if name == "index.js" { "/client/herald.js".to_owned() } else { format!("/client/{name}") };
        let module = http(gw.addr, "GET", &path, &[], None).await;
        assert_eq!(module.status, 200, "{path}");
        let source = std::fs::read(src.join(&name)).unwrap();
        assert!(
            module.body == source,
            "{path} is not clients/js/src/{name} ({} bytes served, {} in the file): rebuild the gateway",
            module.body.len(),
            source.len()
        );
        served += 1;
    }
    assert!(served >= 6, "the client's modules: {served}");
}

#[test]
fn dev_mode_binds_loopback_by_default_and_serve_refuses_without_config() {
    let out =
        std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway")).args(["dev", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("127.0.0.1:8080"));

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
        .arg("serve")
        .env_remove("HERALD_NATS_URL")
        .env_remove("HERALD_JWT_SECRET_FILE")
        .env_remove("HERALD_JWT_PUBLIC_KEY_FILE")
        .env_remove("HERALD_JWKS_FILE")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("no NATS URL") && err.contains("no client-token key"), "{err}");
}

/// Dev mode has no authentication, so it answers this machine only: a page on another site gets
/// no CORS grant and cannot publish (not even as a form or `text/plain`), a request naming
/// another host (DNS rebinding) gets 403, and listening beyond loopback needs `--allow-remote`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_mode_answers_this_machine_only() {
    let gw = Gateway::dev().start();
    gw.ready().await;
    let res = http(gw.addr, "GET", "/stats", &[("Origin", "http://localhost:5173")], None).await;
    assert_eq!(res.header("access-control-allow-origin"), Some("http://localhost:5173"), "a local page");
    let res = http(gw.addr, "GET", "/stats", &[("Origin", "https://evil.example")], None).await;
    assert_eq!(res.status, 200);
    assert_eq!(res.header("access-control-allow-origin"), None, "no grant for another site");

    let publish = |content_type: &'static str, origin: &'static str| {
        let addr = gw.addr;
        async move {
            let body = json!({"data": 1, "broadcast": true}).to_string();
            let headers = [("Content-Type", content_type), ("Origin", origin)];
            http(addr, "POST", "/v1/publish", &headers, Some(body.as_bytes())).await
        }
    };
    assert_eq!(publish("text/plain", "https://evil.example").await.status, 415);
    assert_eq!(publish("application/json", "https://evil.example").await.status, 403);
    assert_eq!(publish("application/json", "http://127.0.0.1:3000").await.status, 200);

    // DNS rebinding: the attacker's name resolves to 127.0.0.1, and the browser sends it as Host.
    let mut conn = tokio::net::TcpStream::connect(gw.addr).await.unwrap();
    let request = "GET /events?user=alice HTTP/1.1\r\nHost: attacker.example:8080\r\nConnection: close\r\n\r\n";
    tokio::io::AsyncWriteExt::write_all(&mut conn, request.as_bytes()).await.unwrap();
    let mut raw = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut conn, &mut raw).await.unwrap();
    let head = String::from_utf8_lossy(&raw);
    assert!(head.starts_with("HTTP/1.1 403"), "{head}");
    assert!(head.contains("host_not_allowed"), "{head}");

    // Beyond loopback only when asked, and then with every open door named.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
        .args(["dev", "--listen", "0.0.0.0:0"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--allow-remote"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let remote = Gateway::dev().args(&["--allow-remote"]).start();
    remote.ready().await;
    remote.wait_for_log("publish to everyone").await;
}
