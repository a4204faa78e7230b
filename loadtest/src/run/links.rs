//! How the coordinator reaches its shares: the jobs a run splits into, and the channels to
//! each share, in this process or in child processes of this executable.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::mpsc;

use crate::cli::{By, RunArgs};
use crate::proto::{FromShare, Job, Scenario, ToShare};

/// The coordinator's ends of its shares' channels.
pub struct Links {
    pub to: Vec<mpsc::UnboundedSender<ToShare>>,
    pub from: mpsc::UnboundedReceiver<FromShare>,
    /// Reported by the links themselves (child process exits, worker identities).
    pub processes: usize,
    /// The shares run on this machine (in this process or its children), not on remote workers.
    pub local: bool,
}

impl Links {
    pub(super) fn send_all(&self, msg: impl Fn() -> ToShare) {
        for t in &self.to {
            let _ = t.send(msg());
        }
    }
}

/// Splits the run into `shares` jobs.
pub fn jobs(args: &RunArgs, scenario: Scenario, targets: &[String], shares: usize, run_id: &str) -> Vec<Job> {
    let n = args.connections;
    let shares = shares.max(1) as u64;
    let generic = args.sse_url_template.is_some();
    let sse_template = match &args.sse_url_template {
        Some(t) => t.clone(),
        None if args.fanout(scenario) || args.by == By::Channel => "{target}/events?channels={channel}".into(),
        None => "{target}/events".into(),
    };
    let mut first = 0;
    (0..shares)
        .map(|s| {
            let count = n / shares + u64::from(s < n % shares);
            let job = Job {
                run_id: run_id.to_owned(),
                scenario,
                share: s as usize,
                first,
                count,
                total: n,
                targets: targets.iter().map(|t| t.trim_end_matches('/').to_owned()).collect(),
                sse_template: sse_template.clone(),
                herald: !generic,
                jwt_secret_file: args.jwt_secret_file.clone(),
                fanout: args.fanout(scenario),
                channel: args.channel.clone(),
                prefix: args.prefix.clone(),
                connect_concurrency: args.connect_concurrency,
                connect_rate: args.connect_rate / shares as f64,
                connect_timeout_secs: args.connect_timeout,
                reconnect: args.reconnect || scenario == Scenario::Resume,
                start_on_first: scenario == Scenario::Resume,
                cycles: args.cycles,
                grace_secs: args.grace,
            };
            first += count;
            job
        })
        .collect()
}

/// One share in this process.
pub fn in_process(job: Job) -> Links {
    let (to_tx, to_rx) = mpsc::unbounded_channel();
    let (from_tx, from_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(crate::share::run(job, to_rx, from_tx));
    Links { to: vec![to_tx], from: from_rx, processes: 1, local: true }
}

/// One child process per job, running `herald-loadtest share`.
pub fn child_processes(jobs: Vec<Job>) -> Result<Links, String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let (from_tx, from_rx) = mpsc::unbounded_channel();
    let mut to = Vec::new();
    let processes = jobs.len();
    for job in jobs {
        let share = job.share;
        let mut child = tokio::process::Command::new(&exe)
            .arg("share")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start a share process: {e}"))?;
        let mut stdin = child.stdin.take().expect("piped");
        let stdout = child.stdout.take().expect("piped");
        let (tx, mut rx) = mpsc::unbounded_channel::<ToShare>();
        let first = serde_json::to_string(&job).expect("jobs serialize");
        tokio::task::spawn_local(async move {
            let _ = stdin.write_all(format!("{first}\n").as_bytes()).await;
            while let Some(msg) = rx.recv().await {
                let line = serde_json::to_string(&msg).expect("messages serialize");
                if stdin.write_all(format!("{line}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
            // The coordinator is done with this share: wait for it to exit (bounded).
            let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
        });
        let from = from_tx.clone();
        tokio::task::spawn_local(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                match serde_json::from_str::<FromShare>(&line) {
                    Ok(msg) => {
                        let _ = from.send(msg);
                    }
                    Err(e) => {
                        let _ = from.send(FromShare::Failed { share, message: format!("bad report line: {e}") });
                    }
                }
            }
            let _ = from.send(FromShare::Failed { share, message: "share process exited".into() });
        });
        to.push(tx);
    }
    Ok(Links { to, from: from_rx, processes, local: true })
}
