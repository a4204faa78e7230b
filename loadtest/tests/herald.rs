//! The harness against real gateways and a real nats-server: every delivery scenario must find
//! what a healthy Herald delivers (nothing missing, nothing twice), through each publish path.

use std::time::Duration;

use herald_testkit::http::get_blocking;
use herald_testkit::loadtest::{Run, run, run_ok};
use herald_testkit::process::Process;
use herald_testkit::{Gateway, Nats, NatsWithCredentials, bins, ports};

const LIMIT: Duration = Duration::from_secs(90);

/// A ready gateway against `nats`.
fn gateway(nats: &Nats) -> Gateway {
    // Closed streams are noticed at the next write: keep churn's wait short.
    let gw = Gateway::serve(nats).args(&["--heartbeat-secs", "1"]).start();
    gw.wait_ready();
    gw
}

fn assert_complete(s: &serde_json::Value) {
    assert!(s["expected"].as_u64().unwrap() > 0, "{s:#}");
    assert_eq!(s["delivered"], s["expected"], "{s:#}");
    assert_eq!(s["missing"], 0, "{s:#}");
    assert_eq!(s["duplicates"], 0, "{s:#}");
    assert_eq!(s["out_of_order"], 0, "{s:#}");
    assert_eq!(s["latency_ms"]["count"], s["delivered"], "every first delivery has a latency: {s:#}");
    assert!(s["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s:#}");
}

#[test]
fn fanout_through_core_nats_misses_nothing() {
    let nats = Nats::start();
    let gw = gateway(&nats);
    let s = run_ok(
        &[
            "fanout",
            "--target",
            &gw.url(),
            "--nats-url",
            &nats.url(),
            "--jwt-secret-file",
            &gw.keys().jwt_secret(),
            "--connections",
            "40",
            "--rate",
            "20",
            "--duration",
            "2",
        ],
        LIMIT,
    );
    assert_complete(&s);
    assert_eq!(s["expected"], 40 * 40, "40 publishes reach 40 clients");
    assert_eq!(s["publish"]["via"], "nats");
    assert_eq!(s["connect"]["connected"], 40);
    assert_eq!(s["gateway"]["pid"], gw.pid(), "found by the target's port");
    assert!(s["gateway"]["rss_per_connection_bytes"].is_number(), "{s:#}");
    assert!(s["client"]["cpu_seconds"].as_f64().unwrap() > 0.0);
    assert_eq!(s["client_saturated"], false);
}

#[test]
fn targeted_through_http_and_jetstream_misses_nothing() {
    let nats = Nats::start();
    let gw = gateway(&nats);
    let base = [
        "--target",
        &gw.url(),
        "--jwt-secret-file",
        &gw.keys().jwt_secret(),
        "--publish-keys-file",
        &gw.keys().publish_keys(),
        "--connections",
        "30",
        "--rate",
        "60",
        "--duration",
        "2",
    ];
    let mut http: Vec<&str> = vec!["targeted", "--publish", "http"];
    http.extend(base);
    let s = run_ok(&http, LIMIT);
    assert_complete(&s);
    assert_eq!(s["expected"], 120, "each publish reaches one client");
    assert_eq!(s["publish"]["errors"], 0);

    let nats_url = nats.url();
    let mut js: Vec<&str> = vec!["targeted", "--publish", "jetstream", "--nats-url", &nats_url, "--by", "user"];
    js.extend(base);
    let s = run_ok(&js, LIMIT);
    assert_complete(&s);
    assert_eq!(s["publish"]["via"], "jetstream");
}

#[test]
fn child_processes_share_the_connections_and_merge_their_histograms() {
    let nats = Nats::start();
    let gw = gateway(&nats);
    let s = run_ok(
        &[
            "fanout",
            "--target",
            &gw.url(),
            "--nats-url",
            &nats.url(),
            "--jwt-secret-file",
            &gw.keys().jwt_secret(),
            "--connections",
            "31",
            "--rate",
            "10",
            "--duration",
            "2",
            "--processes",
            "3",
        ],
        LIMIT,
    );
    assert_complete(&s);
    assert_eq!(s["client"]["processes"], 3);
    assert_eq!(s["connect"]["connected"], 31);
    assert_eq!(s["expected"], 31 * 20);
}

#[test]
fn churn_brings_the_gateway_gauge_back_to_zero_and_connect_measures_memory() {
    let nats = Nats::start();
    let gw = gateway(&nats);
    let s = run_ok(
        &[
            "churn",
            "--target",
            &gw.url(),
            "--jwt-secret-file",
            &gw.keys().jwt_secret(),
            "--connections",
            "50",
            "--cycles",
            "3",
            "--duration",
            "1",
        ],
        LIMIT,
    );
    assert_eq!(s["connect"]["connected"], 150, "{s:#}");
    assert_eq!(s["connect"]["failed"], 0, "{s:#}");
    assert_eq!(s["churn"]["gateway"]["gauge_returned_to_zero"], true, "{s:#}");
    let stats = get_blocking(gw.addr, "/stats").expect("/stats answers").json();
    assert_eq!(stats["connections"], 0, "{stats}");

    let s = run_ok(
        &[
            "connect",
            "--target",
            &gw.url(),
            "--jwt-secret-file",
            &gw.keys().jwt_secret(),
            "--connections",
            "200",
            "--duration",
            "1",
            "--gateway-pid",
            &gw.pid().to_string(),
        ],
        LIMIT,
    );
    assert_eq!(s["connect"]["connected"], 200, "{s:#}");
    assert!(s["connect"]["rate_per_sec"].as_f64().unwrap() > 0.0, "{s:#}");
    assert!(s["connect"]["latency_ms"]["p99"].as_f64().unwrap() > 0.0, "{s:#}");
    assert!(s["gateway"]["rss_per_connection_bytes"].as_f64().unwrap() > 0.0, "{s:#}");
    let peak = s["timeline"].as_array().map(|t| t.len()).unwrap_or(0);
    assert_eq!(peak, 0, "the printed summary leaves the timeline to the files");
}

#[test]
fn resume_after_a_killed_gateway_loses_and_repeats_nothing() {
    let nats = Nats::start();
    let gateway = bins::gateway();
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("resume.json");
    let s = run_ok(
        &[
            "resume",
            "--nats-url",
            &nats.url(),
            "--gateway-bin",
            &gateway.display().to_string(),
            "--connections",
            "40",
            "--rate",
            "100",
            "--duration",
            "3",
            "--json",
            &json.display().to_string(),
        ],
        LIMIT,
    );
    assert_complete(&s);
    assert_eq!(s["resume"]["caught_up"], 40, "{s:#}");
    assert_eq!(s["resume"]["not_caught_up"], 0, "{s:#}");
    assert!(s["reconnects"].as_u64().unwrap() >= 40, "every client lost its gateway: {s:#}");
    assert!(s["resume"]["catch_up_ms"]["max"].as_f64().unwrap() < 5000.0, "{s:#}");
    let file: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(json).unwrap()).unwrap();
    assert!(!file["timeline"].as_array().unwrap().is_empty(), "the file has the per-second timeline");
}

#[test]
fn a_coordinator_drives_workers_over_nats_and_merges_them() {
    let nats = Nats::start();
    let gw = gateway(&nats);
    // Killed when the test ends, however it ends.
    let workers: Vec<Process> = (0..2)
        .map(|_| {
            let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_herald-loadtest"));
            worker
                .args(["worker", "--nats-url", &nats.url(), "--once", "--idle-exit", "120"])
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null());
            Process::spawn(&mut worker, "a herald-loadtest worker")
        })
        .collect();
    let s = run_ok(
        &[
            "run",
            "fanout",
            "--workers",
            "2",
            "--worker-wait",
            "30",
            "--target",
            &gw.url(),
            "--nats-url",
            &nats.url(),
            "--jwt-secret-file",
            &gw.keys().jwt_secret(),
            "--connections",
            "25",
            "--rate",
            "10",
            "--duration",
            "2",
        ],
        LIMIT,
    );
    assert_complete(&s);
    assert_eq!(s["client"]["processes"], 2, "{s:#}");
    assert_eq!(s["connect"]["connected"], 25, "{s:#}");
    assert_eq!(s["expected"], 25 * 20, "{s:#}");
    drop(workers);
}

/// The load tester as a CI gate: thresholds that hold pass (exit 0), one crossed fails the run
/// with exit 3 naming its flag, the report still printed.
#[test]
fn thresholds_fail_the_run_with_exit_3_naming_the_flag() {
    let nats = Nats::start();
    let gw = gateway(&nats);
    let (url, nats_url, secret) = (gw.url(), nats.url(), gw.keys().jwt_secret());
    let run_with = |thresholds: &[&str]| {
        let mut args = vec![
            "fanout",
            "--target",
            &url,
            "--nats-url",
            &nats_url,
            "--jwt-secret-file",
            &secret,
            "--connections",
            "10",
            "--rate",
            "10",
            "--duration",
            "1",
        ];
        args.extend(thresholds);
        run(&args, LIMIT)
    };
    let Run { code, summary: report, stderr } =
        run_with(&["--max-p99-ms", "60000", "--max-missing", "0", "--max-connect-failures", "0"]);
    assert_eq!(code, 0, "{stderr}");
    assert_complete(&report);
    let Run { code, summary: report, stderr } = run_with(&["--max-p99-ms", "0.001", "--max-missing", "0"]);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("over --max-p99-ms 0.001"), "{stderr}");
    assert!(!stderr.contains("--max-missing"), "only what was crossed: {stderr}");
    assert_eq!(report["missing"], 0, "the report is still printed: {report:#}");
}

/// A run in which no connection opened fails, thresholds or not; an https:// target is refused
/// before anything runs.
#[test]
fn a_run_that_connects_nothing_fails_and_https_is_refused_up_front() {
    let target = format!("http://127.0.0.1:{}", ports::UNUSED);
    let Run { code, summary: report, stderr } =
        run(&["connect", "--target", &target, "--connections", "10", "--duration", "1"], LIMIT);
    assert_eq!(code, 3, "{stderr}");
    assert!(stderr.contains("no connection opened (10 failed)"), "{stderr}");
    assert_eq!(report["connect"]["failed"], 10, "{report:#}");

    let started = std::time::Instant::now();
    let Run { code, stderr, .. } =
        run(&["connect", "--target", "https://herald.example.com", "--connections", "10"], LIMIT);
    assert_eq!(code, 2, "{stderr}");
    assert!(stderr.contains("--target \"https://herald.example.com\"") && stderr.contains("plain HTTP"), "{stderr}");
    assert!(started.elapsed() < Duration::from_secs(5), "refused before the run");
}

/// A NATS that admits only holders of a credentials file (decentralized authentication): the
/// gateway reaches it with `--nats-creds`, and so do a coordinator and its worker given the
/// same file, as the chart's load-test Jobs are, and the gateways `resume` starts; a run
/// without it is refused by NATS and names the flag.
#[test]
fn a_nats_that_requires_credentials_is_reached_with_nats_creds() {
    let nats = NatsWithCredentials::start();
    let (nats_url, creds) = (nats.url(), nats.creds_file().display().to_string());
    let gw = Gateway::serve(&nats_url).args(&["--nats-creds", &creds]).start();
    gw.wait_ready();
    let mut worker = std::process::Command::new(env!("CARGO_BIN_EXE_herald-loadtest"));
    worker
        .args(["worker", "--nats-url", &nats_url, "--nats-creds", &creds, "--once", "--idle-exit", "120"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    let worker = Process::spawn(&mut worker, "a herald-loadtest worker");
    let (url, secret) = (gw.url(), gw.keys().jwt_secret());
    let run_args = [
        "--target",
        &url,
        "--nats-url",
        &nats_url,
        "--publish",
        "jetstream",
        "--jwt-secret-file",
        &secret,
        "--connections",
        "20",
        "--rate",
        "40",
        "--duration",
        "2",
    ];
    let mut coordinated = vec!["run", "targeted", "--workers", "1", "--worker-wait", "30", "--nats-creds", &creds];
    coordinated.extend(run_args);
    let s = run_ok(&coordinated, LIMIT);
    assert_complete(&s);
    assert_eq!(s["publish"]["via"], "jetstream", "{s:#}");
    assert_eq!(s["expected"], 80, "{s:#}");
    drop(worker);

    // `resume` starts gateways of its own: they get the credentials too.
    let gateway = bins::gateway().display().to_string();
    let resume = [
        "resume",
        "--nats-url",
        &nats_url,
        "--nats-creds",
        &creds,
        "--gateway-bin",
        &gateway,
        "--connections",
        "20",
        "--rate",
        "40",
        "--duration",
        "3",
    ];
    let s = run_ok(&resume, LIMIT);
    assert_complete(&s);
    assert_eq!(s["resume"]["caught_up"], 20, "{s:#}");

    let mut alone = vec!["targeted"];
    alone.extend(run_args);
    let Run { code, stderr, .. } = run(&alone, LIMIT);
    assert_ne!(code, 0, "{stderr}");
    assert!(stderr.contains("authorization violation") && stderr.contains("--nats-creds"), "{stderr}");
}
