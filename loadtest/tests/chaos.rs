//! `herald-loadtest chaos` end to end: its own three-node NATS cluster and two gateways, killed
//! and restarted under durable traffic, and not one event lost, repeated or reordered.

use std::time::Duration;

use herald_testkit::{bins, loadtest};

#[test]
fn a_short_chaos_run_kills_gateways_and_nats_nodes_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let json = dir.path().join("chaos.json");
    let html = dir.path().join("chaos.html");
    let (gateway, nats) = (bins::gateway(), bins::nats_server());
    let args = [
        "chaos",
        "--gateways",
        "2",
        "--nats-nodes",
        "3",
        "--duration",
        "20",
        "--fault-every",
        "4",
        "--clients",
        "30",
        "--rate",
        "20",
        "--settle",
        "30",
        "--seed",
        "1",
        "--gateway-bin",
        &gateway.display().to_string(),
        "--nats-server-bin",
        &nats.display().to_string(),
        "--json",
        &json.display().to_string(),
        "--html",
        &html.display().to_string(),
        "--quiet",
    ];
    let loadtest::Run { code, summary: printed, stderr } = loadtest::run(&args, Duration::from_secs(150));
    assert_eq!(code, 0, "chaos found problems or failed: {stderr}\n{printed:#}");

    let s: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let t = &s["totals"];
    assert_eq!(s["ok"], true, "{t:#}");
    assert_eq!(t["lost"], 0, "{t:#}");
    assert_eq!(t["duplicates"], 0, "{t:#}");
    assert_eq!(t["out_of_order"], 0, "{t:#}");
    assert_eq!(t["abandoned"], 0, "{t:#}");
    assert!(t["acknowledged"].as_u64().unwrap() >= 300, "20 s at 20/s: {t:#}");
    assert_eq!(t["acknowledged"], t["published"], "{t:#}");
    // Every owed event delivered, but those lost in transit inside the cluster and recovered
    // after a newer one on another of the client's subjects: those reach it as a `missed` reset
    // naming the newest event it has, and it refetches its state (guarantee 14 of
    // docs/reliability.md). The run above, seed 1, has shown both outcomes.
    let (delivered, refetched) =
        (t["delivered"].as_u64().unwrap(), t["refetched_after_missed_reset"].as_u64().unwrap());
    assert_eq!(delivered + refetched, t["expected"].as_u64().unwrap(), "{t:#}");
    assert!(t["resumes"].as_u64().unwrap() > 0, "{t:#}");
    assert_eq!(s["config"]["seed"], 1);
    assert_eq!(s["config"]["history_replicas"], 3);

    let faults = s["faults"].as_array().unwrap();
    let of = |kind: &str| faults.iter().filter(|f| f["kind"] == kind).count();
    assert!(of("gateway") >= 1 && of("nats") >= 1, "{faults:#?}");
    for f in faults {
        assert!(f["error"].is_null(), "{f:#}");
        assert!(f["restarted_at_s"].as_f64().unwrap() > f["killed_at_s"].as_f64().unwrap(), "{f:#}");
        assert!(f["healthy_at_s"].is_number(), "{f:#}");
    }
    assert_eq!(s["clients"].as_array().unwrap().len(), 30);
    let timeline = s["timeline"].as_array().unwrap();
    assert!(timeline.len() >= 20, "a second per entry: {}", timeline.len());
    assert!(printed["timeline"].is_null(), "the printed summary leaves the timeline to the file");

    let page = std::fs::read_to_string(&html).unwrap();
    assert_eq!(page.matches("class=\"fault-marker\"").count(), faults.len(), "a marker per fault");
    for f in faults {
        assert!(page.contains(&format!("data-t=\"{}\"", f["killed_at_s"].as_f64().unwrap())), "{f:#}");
    }
    assert!(!page.contains("src=\"http"), "self-contained");
}
