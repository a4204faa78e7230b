//! `/dashboard`: guarded by a publisher key, and fed with the whole fleet's stats over SSE.
//! Two gateways share one NATS; each one's dashboard stream shows both, and a gateway that
//! stops reporting is marked stale, then dropped.

use std::time::Duration;

use herald_testkit::{DASHBOARD_KEY, Gateway, Nats, PUBLISH_KEY, Sse, http, token};

/// Reads `stats` frames (one a second) until one satisfies `cond`, 15 at most; returns it.
async fn stats_until(s: &mut Sse, what: &str, cond: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    for _ in 0..15 {
        let ev = s.next_within(Duration::from_secs(3)).await.unwrap_or_else(|| panic!("no stats frame ({what})"));
        assert_eq!(ev.event, "stats");
        let view = ev.json();
        if cond(&view) {
            return view;
        }
    }
    panic!("no stats frame showed {what}");
}

fn pod<'a>(view: &'a serde_json::Value, name: &str) -> Option<&'a serde_json::Value> {
    view["pods"].as_array().unwrap().iter().find(|p| p["pod"] == name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_shows_the_whole_fleet_behind_a_dashboard_key() {
    let nats = Nats::start();
    let a = Gateway::serve(&nats).args(&["--pod-name", "gw-a"]).start();
    let mut b = Gateway::serve(&nats).args(&["--pod-name", "gw-b"]).start();
    a.ready().await;
    b.ready().await;

    // The key: none, a wrong one, a publisher key (it publishes to every user: never typed into
    // a browser), then the dashboard key as ?key= (which sets the cookie) or Bearer.
    assert_eq!(http(a.addr, "GET", "/dashboard", &[], None).await.status, 401);
    assert_eq!(http(a.addr, "GET", "/dashboard/stream", &[], None).await.status, 401);
    assert_eq!(http(a.addr, "GET", "/dashboard?key=not-the-key-0123456789", &[], None).await.status, 401);
    let publisher = format!("Bearer {PUBLISH_KEY}");
    for (target, headers) in [
        (format!("/dashboard?key={PUBLISH_KEY}"), vec![]),
        ("/dashboard".to_owned(), vec![("Authorization", publisher.as_str())]),
        ("/dashboard/stream".to_owned(), vec![("Authorization", publisher.as_str())]),
    ] {
        let res = http(a.addr, "GET", &target, &headers, None).await;
        assert_eq!(res.status, 401, "a publisher key on {target}");
        assert!(String::from_utf8_lossy(&res.body).contains("unknown dashboard key"));
    }
    let page = http(a.addr, "GET", &format!("/dashboard?key={DASHBOARD_KEY}"), &[], None).await;
    assert_eq!(page.status, 200);
    assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
    let body = String::from_utf8_lossy(&page.body);
    // Self-contained: no URL but the SVG namespace (a name, never fetched).
    let elsewhere = body.replace("http://www.w3.org/2000/svg", "");
    assert!(body.contains("<svg") && !elsewhere.contains("http://") && !elsewhere.contains("https://"));
    let csp = page.header("content-security-policy").expect("a Content-Security-Policy");
    assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"), "{csp}");
    let cookie = page.header("set-cookie").expect("a cookie for reloads and the stream");
    assert!(cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict") && cookie.contains("Path=/dashboard"));
    let cookie = cookie.split(';').next().unwrap().to_owned();
    assert_eq!(http(a.addr, "GET", "/dashboard", &[("Cookie", &cookie)], None).await.status, 200);
    let bearer = format!("Bearer {DASHBOARD_KEY}");
    assert_eq!(http(b.addr, "GET", "/dashboard", &[("Authorization", &bearer)], None).await.status, 200);
    let log = a.log_text();
    assert!(!log.contains(DASHBOARD_KEY) && !log.contains(PUBLISH_KEY), "no key is ever logged");

    // A's stream shows both gateways; B's connection count moves as a client connects to B.
    let mut stream = match Sse::open(a.addr, "/dashboard/stream", &[("Cookie", &cookie)]).await {
        Ok(s) => s,
        Err(r) => panic!("stream refused: {}", r.status),
    };
    assert_eq!(stream.header("content-type"), Some("text/event-stream"));
    // A gateway reports itself connected once its stream is ready too, which can be a report
    // after its first: wait for both to say so.
    let view = stats_until(&mut stream, "both pods, connected", |v| {
        pod(v, "gw-a").is_some() && pod(v, "gw-b").is_some() && v["fleet"]["natsConnected"] == 2
    })
    .await;
    assert_eq!(view["thisPod"], "gw-a");
    assert_eq!(view["fleet"]["pods"], 2);
    let mut client = Sse::with_token(b.addr, &token("u1", &[], 600), &[]).await;
    assert_eq!(client.next().await.event, "connected");
    let view =
        stats_until(&mut stream, "B's new connection", |v| pod(v, "gw-b").is_some_and(|p| p["connections"] == 1)).await;
    assert_eq!(pod(&view, "gw-a").unwrap()["connections"], 0);
    assert_eq!(view["fleet"]["connections"], 1);
    // A dashboard stream is not a client stream.
    assert_eq!(a.stats().await["connections"], 0);

    // Deliveries on B show up as B's rate and latency.
    assert_eq!(b.publish(serde_json::json!({"users": ["u1"], "data": 1})).await.status, 200);
    assert_eq!(client.next_event().await.event, "message");
    let view =
        stats_until(&mut stream, "B's delivery", |v| pod(v, "gw-b").is_some_and(|p| p["deliveriesPerSec"] != 0.0))
            .await;
    assert!(view["fleet"]["p99Seconds"].as_f64().is_some_and(|s| s > 0.0 && s < 1.0), "{view}");

    // B goes away: stale after 3 s of silence, forgotten after 10 s.
    b.kill();
    let view = stats_until(&mut stream, "B stale", |v| pod(v, "gw-b").is_some_and(|p| p["stale"] == true)).await;
    assert_eq!(view["fleet"]["pods"], 1, "a stale pod is left out of the totals");
    let view = stats_until(&mut stream, "B forgotten", |v| pod(v, "gw-b").is_none()).await;
    assert_eq!(view["pods"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_is_open_in_dev_mode_and_shows_this_pod() {
    let gw = Gateway::dev().start();
    assert_eq!(http(gw.addr, "GET", "/dashboard", &[], None).await.status, 200);
    let mut stream = Sse::open(gw.addr, "/dashboard/stream", &[]).await.expect("open in dev mode");
    let view = stats_until(&mut stream, "this pod", |v| v["pods"].as_array().is_some_and(|p| p.len() == 1)).await;
    assert_eq!(view["pods"][0]["pod"], view["thisPod"]);
    assert!(view["thisPod"].as_str().unwrap().ends_with(&format!(":{}", gw.addr.port())), "default name: host:port");
}

/// A dashboard key is typed into browsers: one with a publisher key's secret (which publishes to
/// every user) is refused at start, naming both keys and never the secret.
#[test]
fn a_dashboard_key_that_is_a_publisher_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (publishing, dashboard, secret) =
        (dir.path().join("publish.keys"), dir.path().join("dashboard.keys"), dir.path().join("jwt"));
    std::fs::write(&publishing, "backend:shared-secret-0123456789\n").unwrap();
    std::fs::write(&dashboard, "ops:shared-secret-0123456789\n").unwrap();
    std::fs::write(&secret, "jwt-secret-0123456789abcdef\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
        .args(["serve", "--nats-url", "nats://127.0.0.1:1", "--jwt-secret-file"])
        .arg(&secret)
        .arg("--publish-keys-file")
        .arg(&publishing)
        .arg("--dashboard-keys-file")
        .arg(&dashboard)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(r#"key "ops" has the secret of publisher key "backend""#), "{stderr}");
    assert!(!stderr.contains("shared-secret"), "{stderr}");
}
