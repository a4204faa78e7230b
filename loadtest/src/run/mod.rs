//! The coordinator: splits a run into shares, drives them through the scenario's phases
//! (connect, publish, kill, stop), merges their counters and histograms, and builds the summary.
//!
//! Shares are reached through [`Links`]: in-process (one share, the default), child processes of
//! this executable (`--processes`, JSON lines over stdin/stdout), or workers over NATS
//! (`run`/`worker`, see [`crate::dist`]). Every phase has a deadline, so a run always ends.

use std::cell::Cell;
use std::collections::BTreeMap;
use std::io::IsTerminal;
use std::path::PathBuf;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

mod links;
mod summary;

pub use links::{Links, child_processes, in_process, jobs};
use summary::{SummaryIn, summary};

use crate::cli::{By, RunArgs};
use crate::gateways::LocalGateways;
use crate::payload;
use crate::proto::{FromShare, Hist, Job, Scenario, ShareReport, ToShare};
use crate::publish::{self, HttpPublish, Plan, Publisher, Via};

/// `herald-loadtest share`: one job from stdin, reports to stdout.
pub async fn share_main() -> i32 {
    let mut lines = BufReader::new(tokio::io::stdin()).lines();
    let job: Job = match lines.next_line().await {
        Ok(Some(l)) => match serde_json::from_str(&l) {
            Ok(j) => j,
            Err(e) => {
                eprintln!("herald-loadtest share: bad job: {e}");
                return 2;
            }
        },
        _ => return 2,
    };
    crate::sys::raise_nofile();
    let (to_tx, to_rx) = mpsc::unbounded_channel();
    let (from_tx, mut from_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        while let Ok(Some(l)) = lines.next_line().await {
            if let Ok(msg) = serde_json::from_str::<ToShare>(&l) {
                let _ = to_tx.send(msg);
            }
        }
        // stdin closed: the coordinator is gone; dropping to_tx ends the share.
    });
    tokio::task::spawn_local(crate::share::run(job, to_rx, from_tx));
    let mut out = tokio::io::stdout();
    while let Some(msg) = from_rx.recv().await {
        let done = matches!(msg, FromShare::Done { .. } | FromShare::Failed { .. });
        let line = serde_json::to_string(&msg).expect("messages serialize");
        if out.write_all(format!("{line}\n").as_bytes()).await.is_err() {
            return 1;
        }
        let _ = out.flush().await;
        if done {
            return 0;
        }
    }
    0
}

/// Runs a scenario from the command line: checks flags, runs, prints and writes the reports.
pub async fn command(scenario: Scenario, args: RunArgs) -> i32 {
    let problems = args.problems(scenario);
    if !problems.is_empty() {
        for p in problems {
            eprintln!("herald-loadtest: {p}");
        }
        return 2;
    }
    let nofile = crate::sys::raise_nofile();
    let per_process = args.connections.div_ceil(args.processes as u64);
    if nofile > 0 && per_process + 64 > nofile {
        eprintln!(
            "herald-loadtest: {per_process} connections per process exceed the open-file limit {nofile}; use --processes {}",
            args.connections.div_ceil(nofile.saturating_sub(64).max(1))
        );
        return 2;
    }
    let result = run_local(scenario, &args).await;
    finish(&args, result)
}

/// Prints the summary and writes the files; the exit code.
pub fn finish(args: &RunArgs, result: Result<Value, String>) -> i32 {
    match result {
        Ok(summary) => {
            let mut printed = summary.clone();
            if let Some(o) = printed.as_object_mut() {
                o.remove("timeline");
            }
            use std::io::Write as _;
            // A closed stdout (`| head`) is not worth a panic.
            let _ = writeln!(std::io::stdout(), "{}", serde_json::to_string_pretty(&printed).expect("JSON"));
            if let Some(path) = &args.json
                && let Err(e) = std::fs::write(path, serde_json::to_string_pretty(&summary).expect("JSON"))
            {
                eprintln!("herald-loadtest: cannot write {}: {e}", path.display());
                return 1;
            }
            if let Some(path) = &args.html
                && let Err(e) = std::fs::write(path, crate::report::html(&summary))
            {
                eprintln!("herald-loadtest: cannot write {}: {e}", path.display());
                return 1;
            }
            let failed = failures(args, &summary);
            for f in &failed {
                eprintln!("herald-loadtest: FAILED: {f}");
            }
            if failed.is_empty() { 0 } else { 3 }
        }
        Err(e) => {
            eprintln!("herald-loadtest: {e}");
            1
        }
    }
}

/// What makes a finished run a failure, for a CI job to stop on (exit 3): no connection opened,
/// or a threshold given on the command line crossed. One line each, naming the flag.
pub fn failures(args: &RunArgs, summary: &Value) -> Vec<String> {
    let mut failed = Vec::new();
    let connected = summary["connect"]["connected"].as_u64().unwrap_or(0);
    let failed_connects = summary["connect"]["failed"].as_u64().unwrap_or(0);
    if connected == 0 {
        failed.push(format!("no connection opened ({failed_connects} failed)"));
    }
    if let Some(max) = args.max_connect_failures
        && failed_connects > max
    {
        failed.push(format!("{failed_connects} connections failed to open, over --max-connect-failures {max}"));
    }
    let missing = summary["missing"].as_u64().unwrap_or(0);
    if let Some(max) = args.max_missing
        && missing > max
    {
        failed.push(format!("{missing} events missing, over --max-missing {max}"));
    }
    if let Some(max) = args.max_p99_ms {
        match summary["latency_ms"]["p99"].as_f64() {
            Some(p99) if p99 > max => failed.push(format!("delivery latency p99 {p99} ms, over --max-p99-ms {max}")),
            Some(_) => {}
            None => failed.push(format!("no delivery latency measured, so --max-p99-ms {max} cannot hold")),
        }
    }
    failed
}

async fn run_local(scenario: Scenario, args: &RunArgs) -> Result<Value, String> {
    let mut args = args.clone();
    let mut gateways = None;
    if scenario == Scenario::Resume {
        let g = LocalGateways::start(&args).await?;
        args.target = g.urls();
        args.jwt_secret_file = Some(g.secret_file.clone());
        if args.publish_keys_file.is_none() {
            args.publish_keys_file = Some(g.keys_file.clone());
        }
        gateways = Some(g);
    }
    let run_id = format!("{:x}", payload::now_ns());
    let jobs = jobs(&args, scenario, &args.target, args.processes, &run_id);
    let links = if args.processes <= 1 {
        in_process(jobs.into_iter().next().expect("one job"))
    } else {
        child_processes(jobs)?
    };
    coordinate(scenario, &args, links, gateways).await
}

/// Gateway memory, when a local gateway process is known.
fn gateway_pid(args: &RunArgs, gateways: &Option<LocalGateways>) -> Option<u32> {
    if let Some(g) = gateways {
        return g.pids().first().copied();
    }
    if args.gateway_pid.is_some() {
        return args.gateway_pid;
    }
    let t = crate::http::Target::parse(args.target.first()?).ok()?;
    crate::sys::pid_listening_on(t.port)
}

struct Second {
    connections: u64,
    deliveries: u64,
    latency: Hist,
    rss: Option<u64>,
}

/// Drives the shares through the scenario and merges what they report.
pub async fn coordinate(
    scenario: Scenario,
    args: &RunArgs,
    mut links: Links,
    mut gateways: Option<LocalGateways>,
) -> Result<Value, String> {
    let shares = links.to.len();
    let progress = !args.quiet && std::io::stderr().is_terminal();
    let gw_pid = gateway_pid(args, &gateways);
    let rss_before = gw_pid.and_then(crate::sys::rss_bytes);
    let started_ms = payload::now_ns() / 1_000_000;
    let cpu0 = crate::sys::cpu_time();
    let wall0 = Instant::now();
    let mut timeline: BTreeMap<u64, Second> = BTreeMap::new();
    let mut reports: Vec<Option<ShareReport>> = (0..shares).map(|_| None).collect();
    let mut ready = 0usize;
    let mut failures = Vec::new();
    let mut state = Collect { timeline: &mut timeline, started_ms, gw_pid, progress, live_latency: Hist::default() };

    // Phase 1: every share has attempted every connection.
    let connect_deadline = Instant::now()
        + Duration::from_secs(args.connect_timeout + 120)
        + Duration::from_secs_f64(if args.connect_rate > 0.0 {
            args.connections as f64 * args.cycles.max(1) as f64 / args.connect_rate
        } else {
            0.0
        });
    while ready < shares {
        let msg = tokio::time::timeout_at(connect_deadline.into(), links.from.recv())
            .await
            .map_err(|_| "timed out waiting for the connections to open".to_string())?
            .ok_or("every share went away")?;
        match msg {
            FromShare::Ready { .. } => ready += 1,
            FromShare::Failed { share, message } => return Err(format!("share {share}: {message}")),
            other => state.absorb(other, &mut reports),
        }
    }
    let connected_ms = payload::now_ns() / 1_000_000;
    let rss_connected = gw_pid.and_then(crate::sys::rss_bytes);

    // Phase 2: publish (or hold).
    let mut published = publish::Published::default();
    let mut kill_info = None;
    let hold = Duration::from_secs(args.duration);
    if scenario.delivers() {
        let via = args.via(scenario);
        let plan = Plan {
            fanout: args.fanout(scenario),
            total: args.connections,
            channel: args.channel.clone(),
            prefix: args.prefix.clone(),
            by_user: args.by == By::User,
        };
        let counters = publish::Counters { sent: Rc::new(Cell::new(0)), errors: Rc::new(Cell::new(0)) };
        let publisher = make_publisher(args, via, &plan, &counters).await?;
        let sent = counters.sent.clone();
        let run = publisher.run(&plan, args.rate, hold, &counters);
        tokio::pin!(run);
        let kill_at = (scenario == Scenario::Resume)
            .then(|| Instant::now() + Duration::from_secs_f64(args.kill_after.unwrap_or(args.duration as f64 / 2.0)));
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                p = &mut run => { published = p; break; }
                Some(msg) = links.from.recv() => {
                    if let FromShare::Failed { share, message } = &msg {
                        failures.push(format!("share {share}: {message}"));
                    }
                    state.absorb(msg, &mut reports);
                }
                _ = tokio::time::sleep_until(kill_at.unwrap_or_else(|| Instant::now() + Duration::from_secs(3600)).into()), if kill_at.is_some() && kill_info.is_none() => {
                    let g = gateways.as_mut().expect("resume has gateways");
                    g.kill_first();
                    let at = payload::now_ns();
                    let p = sent.get();
                    kill_info = Some((p, at));
                    links.send_all(|| ToShare::Killed { published: p, unix_ns: at });
                }
                _ = tick.tick() => state.print_progress(),
            }
        }
    } else if scenario == Scenario::Connect {
        let end = Instant::now() + hold;
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        while Instant::now() < end {
            tokio::select! {
                Some(msg) = links.from.recv() => state.absorb(msg, &mut reports),
                _ = tokio::time::sleep_until(end.into()) => {}
                _ = tick.tick() => state.print_progress(),
            }
        }
    }
    let rss_end = gw_pid.and_then(crate::sys::rss_bytes);

    // Phase 3: stop; every share reports.
    let p = published.published;
    links.send_all(|| ToShare::Stop { published: p });
    let stop_deadline = Instant::now() + Duration::from_secs(args.grace + 60);
    while reports.iter().any(Option::is_none) {
        match tokio::time::timeout_at(stop_deadline.into(), links.from.recv()).await {
            Ok(Some(FromShare::Failed { share, message })) => {
                if reports[share].is_none() {
                    failures.push(format!("share {share}: {message}"));
                    return Err(failures.join("; "));
                }
            }
            Ok(Some(msg)) => state.absorb(msg, &mut reports),
            Ok(None) => return Err("every share went away".into()),
            Err(_) => return Err("timed out waiting for the shares' reports".into()),
        }
    }
    if progress {
        eprintln!();
    }
    let reports: Vec<ShareReport> = reports.into_iter().map(|r| r.expect("all reported")).collect();

    // Churn: the gateways' gauges must come back to 0.
    let churn = if scenario == Scenario::Churn && args.sse_url_template.is_none() {
        // A gateway notices a closed stream when a write fails: within one heartbeat interval.
        Some(wait_gauges_zero(&args.target, Duration::from_secs(args.gauge_wait)).await)
    } else {
        None
    };
    if let Some(g) = gateways.as_mut() {
        g.stop_all();
    }
    let cpu_self = (crate::sys::cpu_time() - cpu0).as_secs_f64();
    let wall = wall0.elapsed().as_secs_f64();
    Ok(summary(SummaryIn {
        scenario,
        args,
        links_processes: links.processes,
        links_local: links.local,
        reports: &reports,
        published: &published,
        timeline: &timeline,
        started_ms,
        connected_ms,
        rss: (gw_pid, rss_before, rss_connected, rss_end),
        churn,
        kill_info,
        cpu_self,
        wall,
    }))
}

struct Collect<'a> {
    timeline: &'a mut BTreeMap<u64, Second>,
    started_ms: u64,
    gw_pid: Option<u32>,
    progress: bool,
    live_latency: Hist,
}

impl Collect<'_> {
    fn absorb(&mut self, msg: FromShare, reports: &mut [Option<ShareReport>]) {
        match msg {
            FromShare::Sample { unix_ms, connections, deliveries, latency, .. } => {
                let sec = unix_ms.saturating_sub(self.started_ms) / 1000;
                let rss = self.gw_pid.and_then(crate::sys::rss_bytes);
                let s = self.timeline.entry(sec).or_insert_with(|| Second {
                    connections: 0,
                    deliveries: 0,
                    latency: Hist::default(),
                    rss,
                });
                s.connections += connections;
                s.deliveries += deliveries;
                s.latency.merge(&latency);
                self.live_latency.merge(&latency);
            }
            FromShare::Done { share, report } => {
                if let Some(slot) = reports.get_mut(share) {
                    *slot = Some(*report);
                }
            }
            FromShare::Ready { .. } | FromShare::Failed { .. } => {}
        }
    }

    fn print_progress(&self) {
        if !self.progress {
            return;
        }
        // The last complete second.
        let Some((sec, s)) = self.timeline.iter().rev().nth(1).or_else(|| self.timeline.iter().next_back()) else {
            return;
        };
        let p99 = if self.live_latency.0.is_empty() {
            "-".to_string()
        } else {
            format!("{:.1} ms", self.live_latency.0.value_at_quantile(0.99) as f64 / 1000.0)
        };
        eprint!(
            "\r\x1b[2K[{sec:>5}s] connections {:>7}  deliveries/s {:>9}  p99 so far {p99}",
            s.connections, s.deliveries
        );
    }
}

async fn make_publisher(
    args: &RunArgs,
    via: Via,
    plan: &Plan,
    counters: &publish::Counters,
) -> Result<Publisher, String> {
    match via {
        Via::Nats | Via::Jetstream => {
            Publisher::nats(
                args.nats_url.as_deref().unwrap_or_default(),
                args.nats_creds.as_deref(),
                &args.subject_prefix,
                via == Via::Jetstream,
            )
            .await
        }
        Via::Http => {
            let key = match &args.publish_keys_file {
                Some(path) => Some(first_key(path)?),
                None => None,
            };
            let headers = args
                .publish_header
                .iter()
                .filter_map(|h| h.split_once(':'))
                .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                .collect();
            let cfg = HttpPublish {
                herald: args.sse_url_template.is_none(),
                targets: args.target.iter().map(|t| t.trim_end_matches('/').to_owned()).collect(),
                key,
                durable: args.durable,
                url_template: args.publish_url_template.clone().unwrap_or_default(),
                body_template: args.publish_body_template.clone(),
                method: args.publish_method.clone(),
                headers,
                lanes: args.publish_concurrency,
            };
            Ok(Publisher::http(cfg, plan.clone(), counters))
        }
    }
}

/// The secret of the first `name:secret` line of a publisher keys file.
pub fn first_key(path: &PathBuf) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read the publish keys file {}: {e}", path.display()))?;
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .find_map(|l| l.split_once(':').map(|(_, s)| s.trim().to_owned()))
        .ok_or_else(|| format!("{} holds no `name:secret` line", path.display()))
}

async fn wait_gauges_zero(targets: &[String], wait: Duration) -> Value {
    let start = Instant::now();
    let mut last = Vec::new();
    loop {
        last.clear();
        for t in targets {
            let n = match crate::http::get(&format!("{}/stats", t.trim_end_matches('/')), Duration::from_secs(5)).await
            {
                Ok((200, body)) => serde_json::from_slice::<Value>(&body).ok().and_then(|v| v["connections"].as_u64()),
                _ => None,
            };
            last.push(n);
        }
        let zero = last.iter().all(|n| *n == Some(0));
        if zero || start.elapsed() > wait {
            return json!({
                "gauge_returned_to_zero": zero,
                "gauge_after": last,
                "zero_after_ms": zero.then(|| start.elapsed().as_millis() as u64),
            });
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::summary::client_saturated;
    use super::*;

    fn run_args(flags: &[&str]) -> RunArgs {
        use clap::Parser;
        let mut argv = vec!["herald-loadtest", "fanout", "--target", "http://127.0.0.1:8080"];
        argv.extend(flags);
        match crate::cli::Cli::parse_from(argv).command {
            crate::cli::Command::Fanout(a) => a,
            _ => unreachable!(),
        }
    }

    fn summary(connected: u64, failed: u64, missing: u64, p99: Option<f64>) -> Value {
        json!({"connect": {"connected": connected, "failed": failed}, "missing": missing, "latency_ms": {"p99": p99}})
    }

    #[test]
    fn each_threshold_fails_the_run_only_when_crossed() {
        let all = run_args(&["--max-p99-ms", "50", "--max-missing", "0", "--max-connect-failures", "2"]);
        assert!(failures(&all, &summary(10, 2, 0, Some(50.0))).is_empty(), "at the thresholds");
        let crossed = failures(&all, &summary(10, 3, 1, Some(50.5)));
        assert_eq!(crossed.len(), 3, "{crossed:?}");
        for flag in ["--max-connect-failures 2", "--max-missing 0", "--max-p99-ms 50"] {
            assert!(crossed.iter().any(|f| f.contains(flag)), "{flag}: {crossed:?}");
        }
        let none_measured = failures(&all, &summary(10, 0, 0, None));
        assert!(none_measured[0].contains("--max-p99-ms"), "{none_measured:?}");
    }

    #[test]
    fn a_run_without_a_connection_fails_without_thresholds() {
        let plain = run_args(&[]);
        assert!(failures(&plain, &summary(10, 5, 7, Some(9e9))).is_empty(), "no thresholds, some connected");
        assert_eq!(failures(&plain, &summary(0, 10, 0, None)), ["no connection opened (10 failed)"]);
    }

    #[test]
    fn a_saturated_connect_phase_taints_connect_runs_but_not_delivery_runs() {
        // The generator opened its connections at full speed, then kept up with the deliveries.
        assert!(client_saturated(Scenario::Connect, 0.4, 0.97));
        assert!(client_saturated(Scenario::Churn, 0.4, 0.97));
        assert!(!client_saturated(Scenario::Targeted, 0.4, 0.97));
        assert!(!client_saturated(Scenario::Fanout, 0.4, 0.97));
        // A generator at its core's limit over the run taints every run.
        for scenario in [Scenario::Connect, Scenario::Targeted, Scenario::Fanout, Scenario::Resume] {
            assert!(client_saturated(scenario, 0.95, 0.1), "{scenario:?}");
            assert!(!client_saturated(scenario, 0.5, 0.1), "{scenario:?}");
        }
    }
}
