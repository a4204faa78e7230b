//! `herald-loadtest chaos`: a soak under faults. It starts its own NATS cluster ([`cluster`]) and
//! gateways ([`fleet`]), connects SSE clients spread over the gateways ([`client`]), publishes
//! durable events with idempotency ids at a steady rate, retrying each until a gateway
//! acknowledges it ([`publisher`]), and meanwhile SIGKILLs and restarts gateways and NATS nodes
//! on a seeded schedule ([`faults`]) while random clients drop their streams and resume
//! elsewhere. At the end it publishes a last broadcast, waits until every client holds every
//! acknowledged event meant for it (or `--settle` passes), and reconciles ([`reconcile`]): lost,
//! duplicated and out-of-order events, per client. Exit code 3 when there is any.

pub mod client;
pub mod cluster;
pub mod faults;
pub mod fleet;
pub mod publisher;
pub mod reconcile;
pub mod rng;

use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cli::ChaosArgs;
use crate::gateways::{Credentials, GatewaySpec, find_bin, temp_dir};
use crate::payload;
use crate::proto::Hist;
use client::{Clients, Spec};
use faults::{Fault, Kind};
use fleet::{Fleet, Gateways};
use publisher::{EventTarget, Publisher, Targets};
use reconcile::ClientResult;
use rng::Rng;

/// Exit code of a run that found lost, duplicated or out-of-order events.
pub const EXIT_FOUND: i32 = 3;

/// Per-second counts, by seconds since publishing began.
pub struct Series {
    t0: Cell<Instant>,
    secs: RefCell<BTreeMap<u64, Second>>,
}

#[derive(Default)]
pub struct Second {
    pub published: u64,
    pub acknowledged: u64,
    pub retries: u64,
    pub publish_503: u64,
    pub delivered: u64,
    /// First deliveries only: receive time minus the publish's first attempt.
    pub latency: Hist,
    pub connections: u64,
}

impl Series {
    pub fn new() -> Series {
        Series { t0: Cell::new(Instant::now()), secs: RefCell::default() }
    }

    pub fn set_t0(&self, t0: Instant) {
        self.t0.set(t0);
    }

    /// Updates the second `at` falls in (before publishing: the first).
    pub fn at(&self, at: Instant, f: impl FnOnce(&mut Second)) {
        let sec = at.saturating_duration_since(self.t0.get()).as_secs();
        f(self.secs.borrow_mut().entry(sec).or_default());
    }
}

impl Default for Series {
    fn default() -> Self {
        Series::new()
    }
}

/// `herald-loadtest chaos`: checks the flags, runs, prints and writes the reports.
pub async fn command(args: ChaosArgs) -> i32 {
    let problems = args.problems();
    if !problems.is_empty() {
        for p in problems {
            eprintln!("herald-loadtest: {p}");
        }
        return 2;
    }
    crate::sys::raise_nofile();
    let dir = match temp_dir("chaos") {
        Ok(d) => d,
        Err(e) => {
            eprintln!("herald-loadtest: {e}");
            return 1;
        }
    };
    let result = run(&args, &dir).await;
    let code = match &result {
        Ok(summary) => write(&args, summary),
        Err(e) => {
            eprintln!("herald-loadtest: {e}");
            1
        }
    };
    if args.keep_dir || code != 0 {
        eprintln!("herald-loadtest: the NATS stores and the logs are in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    code
}

/// Prints the summary (without the timeline) and writes the files; the exit code.
fn write(args: &ChaosArgs, summary: &Value) -> i32 {
    let mut printed = summary.clone();
    if let Some(o) = printed.as_object_mut() {
        o.remove("timeline");
    }
    use std::io::Write as _;
    let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&printed).expect("JSON"));
    if let Some(path) = &args.json
        && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(summary).expect("JSON"))
    {
        eprintln!("herald-loadtest: cannot write {}: {e}", path.display());
        return 1;
    }
    if let Some(path) = &args.html
        && let Err(e) = std::fs::write(path, crate::report::chaos_html(summary))
    {
        eprintln!("herald-loadtest: cannot write {}: {e}", path.display());
        return 1;
    }
    let t = &summary["totals"];
    eprintln!(
        "herald-loadtest chaos: {} published, {} acknowledged ({} retries, {} answered 503), {} delivered; \
         lost {}, refetched after a missed reset {}, duplicates {}, out of order {}; faults: {} gateway, {} NATS",
        t["published"],
        t["acknowledged"],
        t["publish_retries"],
        t["publish_503"],
        t["delivered"],
        t["lost"],
        t["refetched_after_missed_reset"],
        t["duplicates"],
        t["out_of_order"],
        summary["faults_by_kind"]["gateway"],
        summary["faults_by_kind"]["nats"],
    );
    if summary["ok"] == true { 0 } else { EXIT_FOUND }
}

/// The names of client `k`: user `chaos-u<k>`, two of the `channels` channels.
pub fn spec_of(k: usize, channels: usize) -> Spec {
    let a = k % channels;
    let b = (a + 1 + (k / channels) % channels.saturating_sub(1).max(1)) % channels;
    let mut chans = vec![format!("chaos-c{a}")];
    if b != a {
        chans.push(format!("chaos-c{b}"));
    }
    Spec { user: format!("chaos-u{k}"), channels: chans }
}

async fn run(args: &ChaosArgs, dir: &std::path::Path) -> Result<Value, String> {
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let say = |m: &str| {
        if !args.quiet {
            eprintln!("herald-loadtest chaos: {m}");
        }
    };
    let gateway_bin = find_bin(args.gateway_bin.as_ref(), "herald-gateway")?;
    let nats_bin = cluster::find_nats_server(args.nats_server_bin.as_ref())?;
    let started_ms = payload::now_ns() / 1_000_000;

    let cluster = cluster::Cluster::start(&nats_bin, args.nats_nodes, dir)?;
    let monitors: Vec<String> = (0..cluster.len()).map(|i| cluster.monitor_url(i)).collect();
    cluster::wait_healthy(&monitors, Duration::from_secs(60)).await?;
    let cluster = Rc::new(RefCell::new(cluster));
    say(&format!("NATS cluster of {} up ({})", args.nats_nodes, cluster.borrow().urls()));

    let credentials = Credentials::new(dir, None, None)?;
    let replicas = if args.nats_nodes >= 3 { 3 } else { 1 };
    let spec = GatewaySpec {
        bin: gateway_bin,
        nats: cluster.borrow().urls(),
        credentials: credentials.clone(),
        max_connections: args.clients as u64,
        extra: vec!["--history-replicas".into(), replicas.to_string()],
        log: None,
    };
    let gateways = Gateways::start(&spec, args.gateways, dir).await?;
    let fleet = Rc::new(Fleet::new(gateways.urls()));
    let gateways = Rc::new(RefCell::new(gateways));
    // Tasks still holding the processes when the run ends early are never dropped (the process
    // exits): stop them here, on every way out.
    let stop = StopOnDrop(gateways.clone(), cluster.clone());
    say(&format!("{} gateways ready ({})", args.gateways, fleet.urls.join(", ")));

    let series = Rc::new(Series::new());
    let secret = crate::share::read_secret(&credentials.secret_file)?;
    let key = crate::run::first_key(&credentials.keys_file)?;
    let specs: Vec<Spec> = (0..args.clients).map(|k| spec_of(k, args.channels)).collect();
    let clients = Clients::new(specs.clone(), fleet.clone(), secret, series.clone());
    let tasks: Vec<_> = (0..args.clients).map(|k| tokio::task::spawn_local(client::run(clients.clone(), k))).collect();
    let end = Instant::now() + Duration::from_secs(60);
    while !clients.all_connected() {
        if Instant::now() > end {
            return Err("the clients did not all connect within 60 s".into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    say(&format!("{} clients connected; publishing for {} s", args.clients, args.duration));

    // Publishing begins: every time in the report counts from here.
    let t0 = Instant::now();
    series.set_t0(t0);
    clients.set_t0(t0);
    let run_id = format!("chaos-{:x}", payload::now_ns());
    let publisher = Rc::new(Publisher::new(fleet.clone(), &key, &run_id, t0, series.clone()));
    let faults = Rc::new(RefCell::new(Vec::<Fault>::new()));
    let plan = faults::schedule(args.seed, args.duration as f64, args.fault_every, args.gateways, args.nats_nodes);
    let driver = tokio::task::spawn_local(faults::drive(
        plan,
        t0,
        faults::Targets { gateways: gateways.clone(), fleet: fleet.clone(), cluster: cluster.clone() },
        faults.clone(),
    ));
    let kicker = (args.resume_every > 0.0).then(|| {
        let (clients, every, seed) = (clients.clone(), args.resume_every, args.seed);
        tokio::task::spawn_local(async move {
            let mut rng = Rng::new(seed, 3);
            let mut tick = tokio::time::interval(Duration::from_secs_f64(every));
            tick.tick().await;
            loop {
                tick.tick().await;
                clients.kick(rng.below(clients.specs.len() as u64) as usize);
            }
        })
    });
    let ticker = {
        let (clients, series, publisher, faults) = (clients.clone(), series.clone(), publisher.clone(), faults.clone());
        tokio::task::spawn_local(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let open = clients.open.get();
                series.at(Instant::now(), |s| s.connections = s.connections.max(open));
                if progress {
                    let st = publisher.stats.borrow();
                    eprint!(
                        "\r\x1b[2K[{:>4}s] published {:>6}  acknowledged {:>6}  retries {:>4}  503 {:>4}  streams {:>5}  faults {}",
                        t0.elapsed().as_secs(),
                        st.published,
                        st.acknowledged,
                        st.retries,
                        st.status_503,
                        open,
                        faults.borrow().len()
                    );
                }
            }
        })
    };

    let users: Vec<String> = specs.iter().map(|s| s.user.clone()).collect();
    let channels: Vec<String> = (0..args.channels).map(|c| format!("chaos-c{c}")).collect();
    let mut rng = Rng::new(args.seed, 2);
    let published = publisher
        .run(args.rate, Duration::from_secs(args.duration), || publisher::draw(&mut rng, &users, &channels))
        .await;
    let publishing_s = t0.elapsed().as_secs_f64();
    if tokio::time::timeout(Duration::from_secs(120), driver).await.is_err() {
        return Err("the last fault did not end within 120 s".into());
    }
    if let Some(k) = kicker {
        k.abort();
    }
    // The marker: the stream's newest event, for every client. Once a client has it, everything
    // acknowledged before it was sent to it before it.
    let marker = Targets { users: vec![], channels: vec![], broadcast: true };
    publisher.clone().publish(published + 1, "chaos_end", marker).await;
    if progress {
        eprintln!();
    }
    say("publishing over; waiting for every client to hold every acknowledged event");
    let settle_started = Instant::now();
    let settle_end = settle_started + Duration::from_secs(args.settle);
    let targets: Vec<Vec<EventTarget>> = specs.iter().map(Spec::targets).collect();
    let complete = loop {
        let expected = reconcile::expected_by_target(&publisher.acked.borrow());
        let done = (0..specs.len()).all(|k| {
            let st = clients.states[k].borrow();
            reconcile::complete(&expected, &targets[k], &st.seen, st.refetched.as_ref())
        });
        if done || Instant::now() > settle_end {
            break done;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let settle_s = settle_started.elapsed().as_secs_f64();
    ticker.abort();
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    drop(stop);

    let faults = faults.borrow().clone();
    Ok(summary(Report {
        args,
        started_ms,
        publishing_s,
        settle_s,
        complete,
        publisher: &publisher,
        clients: &clients,
        targets: &targets,
        faults: &faults,
        series: &series,
        urls: &fleet.urls,
        nats: &cluster.borrow().urls(),
        replicas,
    }))
}

/// Stops every gateway and NATS node when dropped.
struct StopOnDrop(Rc<RefCell<Gateways>>, Rc<RefCell<cluster::Cluster>>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.borrow_mut().stop_all();
        self.1.borrow_mut().stop_all();
    }
}

struct Report<'a> {
    args: &'a ChaosArgs,
    started_ms: u64,
    publishing_s: f64,
    settle_s: f64,
    complete: bool,
    publisher: &'a Publisher,
    clients: &'a Clients,
    targets: &'a [Vec<EventTarget>],
    faults: &'a [Fault],
    series: &'a Series,
    urls: &'a [String],
    nats: &'a str,
    replicas: u32,
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn summary(r: Report<'_>) -> Value {
    let args = r.args;
    let acked = r.publisher.acked.borrow();
    let expected = reconcile::expected_by_target(&acked);
    let stats = r.publisher.stats.borrow().clone();
    let mut totals = ClientResult::default();
    let (mut resumes, mut deliberate, mut resets, mut not_resumed, mut without_id, mut failed_opens, mut streams) =
        (0u64, 0u64, 0u64, 0u64, 0u64, 0u64, 0u64);
    let mut per_client = Vec::new();
    let mut problems = Vec::new();
    for (k, spec) in r.clients.specs.iter().enumerate() {
        let st = r.clients.states[k].borrow();
        let res = reconcile::client(&expected, &r.targets[k], &st.deliveries, st.refetched.as_ref());
        totals.expected += res.expected;
        totals.delivered += res.delivered;
        totals.lost += res.lost;
        totals.duplicates += res.duplicates;
        totals.out_of_order += res.out_of_order;
        totals.unacknowledged += res.unacknowledged;
        totals.refetched += res.refetched;
        resumes += st.resumes;
        deliberate += st.deliberate;
        resets += st.resets;
        not_resumed += st.not_resumed;
        without_id += st.without_id;
        failed_opens += st.failed_opens;
        streams += st.streams.len() as u64;
        per_client.push(json!({
            "client": k,
            "user": spec.user,
            "channels": spec.channels,
            "expected": res.expected,
            "delivered": res.delivered,
            "lost": res.lost,
            "duplicates": res.duplicates,
            "out_of_order": res.out_of_order,
            "streams": st.streams.len(),
            "resumes": st.resumes,
            "resets": st.resets,
            "refetched": res.refetched,
        }));
        if res.lost + res.duplicates + res.out_of_order > 0 {
            // Everything needed to tell what happened: the events, and every stream the client
            // had, with the gateway, the id it resumed from and how it ended.
            problems.push(json!({
                "client": k,
                "user": spec.user,
                "channels": spec.channels,
                "result": res,
                "streams": st.streams,
            }));
        }
    }
    let mut by_kind = json!({"gateway": 0, "nats": 0});
    for f in r.faults {
        let key = match f.kind {
            Kind::Gateway => "gateway",
            Kind::Nats => "nats",
        };
        by_kind[key] = json!(by_kind[key].as_u64().unwrap_or(0) + 1);
    }
    let mut latency = Hist::default();
    let secs = r.series.secs.borrow();
    let timeline: Vec<Value> = secs
        .iter()
        .map(|(t, s)| {
            latency.merge(&s.latency);
            let h = &s.latency.0;
            let q = |p: f64| if h.is_empty() { Value::Null } else { json!(h.value_at_quantile(p) as f64 / 1000.0) };
            json!({
                "t": t,
                "published": s.published,
                "acknowledged": s.acknowledged,
                "retries": s.retries,
                "publish_503": s.publish_503,
                "delivered": s.delivered,
                "connections": s.connections,
                "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                "max_ms": if h.is_empty() { Value::Null } else { json!(h.max() as f64 / 1000.0) },
            })
        })
        .collect();
    let ok = r.complete
        && totals.lost == 0
        && totals.duplicates == 0
        && totals.out_of_order == 0
        && stats.rejected == 0
        && stats.abandoned == 0
        && r.faults.iter().all(|f| f.error.is_none());
    let retried: Vec<&publisher::Acked> = acked.iter().filter(|a| a.attempts > 1).collect();
    json!({
        "scenario": "chaos",
        "ok": ok,
        "started_unix_ms": r.started_ms,
        "config": {
            "seed": args.seed,
            "gateways": args.gateways,
            "nats_nodes": args.nats_nodes,
            "history_replicas": r.replicas,
            "duration_secs": args.duration,
            "fault_every_secs": args.fault_every,
            "clients": args.clients,
            "rate": args.rate,
            "channels": args.channels,
            "resume_every_secs": args.resume_every,
            "settle_secs": args.settle,
        },
        "gateways": r.urls,
        "nats_urls": r.nats,
        "totals": {
            "published": stats.published,
            "acknowledged": stats.acknowledged,
            "abandoned": stats.abandoned,
            "rejected": stats.rejected,
            "publish_retries": stats.retries,
            "publishes_retried": retried.len(),
            "publish_503": stats.status_503,
            "publish_connection_errors": stats.connection_errors,
            "publish_other_5xx": stats.other_5xx,
            "id_count_mismatches": stats.id_count_mismatches,
            "events_acknowledged": expected.values().map(Vec::len).sum::<usize>(),
            "expected": totals.expected,
            "delivered": totals.delivered,
            "lost": totals.lost,
            "refetched_after_missed_reset": totals.refetched,
            "duplicates": totals.duplicates,
            "out_of_order": totals.out_of_order,
            "unacknowledged_delivered": totals.unacknowledged,
            "streams": streams,
            "resumes": resumes,
            "deliberate_resumes": deliberate,
            "resets": resets,
            "not_resumed": not_resumed,
            "events_without_id": without_id,
            "failed_opens": failed_opens,
        },
        "complete": r.complete,
        "publishing_secs": round3(r.publishing_s),
        "settle_secs": round3(r.settle_s),
        "latency_ms": latency.summary_ms(),
        "faults_by_kind": by_kind,
        "faults": r.faults,
        "rejections": *r.publisher.rejections.borrow(),
        "problems": problems,
        "clients": per_client,
        "timeline": timeline,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clients_have_two_distinct_channels_spread_over_all() {
        let mut used = std::collections::HashSet::new();
        for k in 0..100 {
            let s = spec_of(k, 8);
            assert_eq!(s.channels.len(), 2, "{s:?}");
            assert_ne!(s.channels[0], s.channels[1]);
            used.extend(s.channels);
        }
        assert_eq!(used.len(), 8);
        assert_eq!(spec_of(3, 1).channels, ["chaos-c0"]);
    }
}
