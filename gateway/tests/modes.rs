//! Live-only mode, publishing from a shell, and the second signal.

use std::time::{Duration, Instant};

use herald_testkit::sse::MARKER;
use herald_testkit::{Gateway, Nats, NatsWithCredentials, Sse, eventually, http, token};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_off_runs_live_only_against_a_nats_without_jetstream() {
    let nats = Nats::start_without_jetstream();
    let gw = Gateway::serve(&nats).args(&["--history", "off"]).start();
    gw.ready().await;
    let t = token("l1", &[], 600);
    let mut s = Sse::with_token(gw.addr, &t, &[]).await;
    s.next().await;
    let res = gw.publish(json!({"type":"n","data":1,"users":["l1"]})).await;
    assert_eq!((res.status, res.json()), (200, json!({"ids":[]})), "no history, no ids");
    let ev = s.next_event().await;
    assert_eq!((ev.event.as_str(), ev.id.as_deref()), ("n", None));

    // Without history nothing can be resumed: reset (with no id to move to), then live.
    let mut r = Sse::resume(gw.addr, &t, &[], "abc-5").await;
    r.next().await;
    let reset = r.next().await;
    assert_eq!((reset.event.as_str(), reset.id.as_deref()), ("reset", None));
    assert_eq!(reset.json()["reason"], "history_expired");
    gw.publish(json!({"type":"n","data":2,"users":["l1"]})).await;
    assert_eq!(r.next().await.json()["data"], 2);
}

/// A NATS that admits only holders of a credentials file (decentralized authentication): the
/// gateway and the `publish` command reach it with `--nats-creds`; a gateway without it is
/// refused and never reports ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_credentials_admit_the_gateway_and_the_publish_command() {
    let nats = NatsWithCredentials::start();
    let creds = nats.creds_file().display().to_string();
    let refused = Gateway::serve(&nats.url()).start();
    refused.wait_for_log("authorization violation").await;
    assert_eq!(http(refused.addr, "GET", "/readyz", &[], None).await.status, 503);

    let gw = Gateway::serve(&nats.url()).args(&["--nats-creds", &creds]).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("creds", &["jobs:*"], 600), &["jobs:1"]).await;
    s.next().await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
        .args(["publish", "--nats-url", &nats.url(), "--nats-creds", &creds, "--channel", "jobs:1", "--data", "7"])
        .env_remove("HERALD_URL")
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let ids: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let ev = s.next_event().await;
    assert_eq!((ev.id.as_deref(), ev.json()["data"].clone()), (ids["ids"][0].as_str(), json!(7)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_publish_command_publishes_durably_through_nats_and_http() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let mut s = Sse::with_token(gw.addr, &token("cli", &["jobs:*"], 600), &["jobs:1"]).await;
    s.next().await;
    let run = |args: &[&str]| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
            .arg("publish")
            .args(args)
            .env_remove("HERALD_URL")
            .env_remove("HERALD_NATS_URL")
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let via_nats =
        run(&["--nats-url", &nats.url(), "--type", "progress", "--channel", "jobs:1", "--data", "{\"pct\":50}"]);
    let ev = s.next_event().await;
    assert_eq!(ev.event, "progress");
    assert_eq!(ev.id.as_deref(), via_nats["ids"][0].as_str(), "durable through JetStream, with its id");

    let url = format!("http://{}", gw.addr);
    let key = herald_testkit::PUBLISH_KEY;
    let via_http =
        run(&["--url", &url, "--key", key, "--type", "progress", "--user", "cli", "--data", "{\"pct\":100}"]);
    assert_eq!(s.next_event().await.id.as_deref(), via_http["ids"][0].as_str());

    // With an idempotency key, through either way: a repeat prints the same ids and stores
    // nothing new (the marker is the very next event).
    for via in [["--nats-url", nats.url().as_str()], ["--url", url.as_str()]] {
        let id = format!("cli-{}", via[0].trim_start_matches('-'));
        let args = [&via[..], &["--key", key, "--id", &id, "--user", "cli", "--data", "1"]].concat();
        let first = run(&args);
        assert_eq!(run(&args), first, "a repeat answers the first publish's ids ({via:?})");
        assert_eq!(s.next_event().await.id.as_deref(), first["ids"][0].as_str());
        let marker = run(&["--url", &url, "--key", key, "--type", MARKER, "--user", "cli", "--data", "0"]);
        s.assert_next_is_marker(marker["ids"][0].as_str()).await;
    }

    let bad = std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
        .args(["publish", "--nats-url", &nats.url(), "--channel", "a..b", "--data", "1"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("empty segment"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigterm_exits_at_once() {
    let nats = Nats::start();
    let mut gw = Gateway::serve(&nats).args(&["--drain-secs", "60"]).start();
    gw.ready().await;
    // Two streams: the drain closes the first at once and the second only after 30 s, so the
    // gateway is still draining (not already done and gone) when the second signal comes.
    let _s1 = Sse::with_token(gw.addr, &token("d", &[], 600), &[]).await;
    let _s2 = Sse::with_token(gw.addr, &token("e", &[], 600), &[]).await;
    gw.signal(libc::SIGTERM);
    eventually("readiness fails at once", Duration::from_secs(2), || async {
        http(gw.addr, "GET", "/readyz", &[], None).await.status == 503
    })
    .await;
    let second = Instant::now();
    gw.signal(libc::SIGTERM);
    assert!(gw.wait_exit(Duration::from_secs(5)).is_some(), "exited after the second signal");
    assert!(second.elapsed() < Duration::from_secs(3));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn selftest_round_trips_against_a_running_gateway() {
    let nats = Nats::start();
    let gw = Gateway::serve(&nats).start();
    gw.ready().await;
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("secret"), herald_testkit::SECRET).unwrap();
    std::fs::write(dir.path().join("key"), format!("{}\n", herald_testkit::PUBLISH_KEY)).unwrap();
    let run = |key_file: &str| {
        std::process::Command::new(env!("CARGO_BIN_EXE_herald-gateway"))
            .args(["selftest", "--url", &format!("http://{}", gw.addr), "--timeout-secs", "10"])
            .arg("--jwt-secret-file")
            .arg(dir.path().join("secret"))
            .arg("--publish-key-file")
            .arg(dir.path().join(key_file))
            .output()
            .unwrap()
    };
    let ok = run("key");
    assert!(ok.status.success(), "{}", String::from_utf8_lossy(&ok.stderr));
    std::fs::write(dir.path().join("wrong"), "not-the-key-not-the-key").unwrap();
    let bad = run("wrong");
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("publish refused"));
}
