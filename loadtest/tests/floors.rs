//! The floors docs/benchmarks.md measures Herald against, each run small with the load generator
//! against a real nats-server: a floor that drops or never receives what it should carry would
//! make every ratio to it meaningless.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use herald_testkit::Nats;
use herald_testkit::bins::workspace_example as example;
use herald_testkit::http::get_blocking;
use herald_testkit::loadtest::run_ok;
use herald_testkit::ports::on_free_ports;
use herald_testkit::process::Process;
use herald_testkit::wait::{poll, until};

const LIMIT: Duration = Duration::from_secs(90);

/// A floor listening on a free port, its address once it accepts connections.
fn start(bin: &PathBuf, nats: &Nats, flags: &[&str]) -> (Process, String) {
    on_free_ports(1, |ports| {
        let listen = format!("127.0.0.1:{}", ports[0]);
        let mut command = Command::new(bin);
        command.args(["--listen", &listen, "--nats", &nats.url()]).args(flags).stdout(Stdio::null());
        let mut floor = Process::spawn(&mut command, "a floor");
        let up = poll(Duration::from_secs(20), || {
            if floor.exited() {
                return Some(false);
            }
            std::net::TcpStream::connect(&listen).is_ok().then_some(true)
        });
        match up {
            Some(true) => Ok((floor, format!("http://{listen}"))),
            _ => Err(format!("{} did not listen on {listen}", bin.display())),
        }
    })
}

fn assert_complete(s: &serde_json::Value, expected: u64) {
    assert_eq!(s["expected"], expected, "{s:#}");
    assert_eq!(s["delivered"], s["expected"], "{s:#}");
    assert_eq!(s["missing"], 0, "{s:#}");
    assert_eq!(s["duplicates"], 0, "{s:#}");
    assert_eq!(s["out_of_order"], 0, "{s:#}");
}

/// 30 subscribers, 60 events/s for 2 s, each to one subscriber.
fn targeted(url: &str, nats: &Nats, publish: &[&str]) -> serde_json::Value {
    let nats_url = nats.url();
    let mut args = vec!["targeted", "--target", url, "--nats-url", &nats_url];
    args.extend(publish);
    args.extend(["--connections", "30", "--rate", "60", "--duration", "2"]);
    run_ok(&args, LIMIT)
}

/// The subscriptions the nats-server holds for its clients.
fn subscriptions(nats: &Nats) -> u64 {
    let subsz = get_blocking(nats.monitor_addr(), "/subsz").expect("/subsz").json();
    subsz["num_subscriptions"].as_u64().expect("num_subscriptions")
}

#[test]
fn the_targeted_floor_carries_every_event() {
    let nats = Nats::start_without_jetstream();
    let (_floor, url) = start(&example("herald-loadtest", "targeted_floor"), &nats, &[]);
    assert_complete(&targeted(&url, &nats, &[]), 120);
}

#[test]
fn the_targeted_floor_that_subscribes_each_subscriber_carries_every_event_and_unsubscribes_them() {
    let nats = Nats::start_without_jetstream();
    let before = subscriptions(&nats);
    let (_floor, url) = start(&example("herald-loadtest", "targeted_floor"), &nats, &["--subscribe-each"]);
    // No wildcard: only each subscriber's own subscriptions bring its events.
    assert_complete(&targeted(&url, &nats, &[]), 120);
    // Two per subscriber (its channel and its user) while it is there, none once all have left.
    until("the floor's subscriptions to end with its subscribers", Duration::from_secs(20), || {
        subscriptions(&nats) == before
    });
}

#[test]
fn the_durable_floor_carries_every_stored_event_and_answers_publishes_over_http() {
    let nats = Nats::start();
    let (_floor, url) = start(&example("herald-loadtest", "targeted_floor"), &nats, &["--stream"]);
    assert_complete(&targeted(&url, &nats, &["--publish", "jetstream"]), 120);
    let s = targeted(&url, &nats, &["--publish", "http", "--durable"]);
    assert_complete(&s, 120);
    assert_eq!(s["publish"]["errors"], 0, "{s:#}");
}

#[test]
fn the_connect_floor_opens_every_stream_with_its_subscription() {
    let nats = Nats::start_without_jetstream();
    let before = subscriptions(&nats);
    let (_floor, url) = start(&example("herald-gateway", "connect_floor"), &nats, &["--heartbeat-secs", "1"]);
    let run = std::thread::spawn(move || {
        run_ok(&["connect", "--target", &url, "--connections", "40", "--duration", "3"], LIMIT)
    });
    until("a subscription for each open stream", LIMIT, || run.is_finished() || subscriptions(&nats) == before + 40);
    assert_eq!(subscriptions(&nats), before + 40, "while the streams are open");
    let s = run.join().expect("the load generator's run");
    assert_eq!(s["connect"]["connected"], 40, "{s:#}");
    assert_eq!(s["connect"]["failed"], 0, "{s:#}");
    until("each stream's subscription to end with it", Duration::from_secs(20), || subscriptions(&nats) == before);
}

#[test]
fn the_fanout_floor_carries_every_broadcast_to_every_stream() {
    let nats = Nats::start_without_jetstream();
    let before = subscriptions(&nats);
    let (_floor, url) =
        start(&example("herald-gateway", "connect_floor"), &nats, &["--fanout", "--heartbeat-secs", "1"]);
    let nats_url = nats.url();
    let s = run_ok(
        &["fanout", "--target", &url, "--nats-url", &nats_url, "--connections", "30", "--rate", "5", "--duration", "2"],
        LIMIT,
    );
    // Every event once to every stream: a second fan-out would repeat each.
    assert_complete(&s, 300);
    // The fan-out's own subscription stays; each stream's ends with it.
    until("the streams' subscriptions to end with them", Duration::from_secs(20), || {
        subscriptions(&nats) == before + 1
    });
}

#[test]
fn the_actix_targeted_floor_carries_every_event_and_unsubscribes_its_streams() {
    let nats = Nats::start_without_jetstream();
    let before = subscriptions(&nats);
    let (_floor, url) =
        start(&example("herald-gateway", "connect_floor"), &nats, &["--targeted", "--heartbeat-secs", "1"]);
    assert_complete(&targeted(&url, &nats, &[]), 120);
    // Published to the users' subjects this time: each stream's other subscription.
    assert_complete(&targeted(&url, &nats, &["--by", "user"]), 120);
    until("the floor's subscriptions to end with its streams", Duration::from_secs(20), || {
        subscriptions(&nats) == before
    });
}

#[test]
fn the_broadcast_floor_walks_every_connection() {
    let out = Command::new(example("herald-loadtest", "broadcast_floor"))
        .args([
            "--connections",
            "50",
            "--messages",
            "3",
            "--interval-ms",
            "10",
            "--writer-cpu",
            "0",
            "--reader-cpu",
            "0",
        ])
        .output()
        .expect("broadcast_floor");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("50 connections, 160-byte frames"), "{stdout}");
    assert!(stdout.contains("walk to the p99 subscriber"), "{stdout}");
}
