//! Distributed runs: `herald-loadtest worker` processes (e.g. the pods of the chart's Job) wait
//! for work on NATS; `herald-loadtest run <scenario>` finds them, gives each a share of the
//! connections, and drives them exactly like local shares.
//!
//! Subjects under the prefix (default `herald-loadtest`): `hello` (a request; every idle worker
//! answers with its id), `job.<worker>` (a share's job), `run.<run>.to.<share>` (coordinator to
//! share) and `run.<run>.from` (every share's reports, with serialized histograms).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::cli::{CoordinateArgs, WorkerArgs, check_loopback_url};
use crate::payload;
use crate::proto::{FromShare, Job, Scenario, ToShare};
use crate::publish::connect_nats;
use crate::run::{Links, coordinate, finish, jobs};

/// `herald-loadtest worker`.
pub async fn worker_main(args: WorkerArgs) -> i32 {
    if !args.allow_remote
        && let Err(e) = check_loopback_url(&args.nats_url)
    {
        eprintln!("herald-loadtest worker: {e}");
        return 2;
    }
    crate::sys::raise_nofile();
    let client = match connect_nats(&args.nats_url, args.nats_creds.as_deref()).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("herald-loadtest worker: {e}");
            return 1;
        }
    };
    let id = format!("{:x}{:x}", payload::now_ns(), std::process::id());
    let prefix = args.coord_subject.clone();
    let (Ok(mut hello), Ok(mut job_sub)) =
        (client.subscribe(format!("{prefix}.hello")).await, client.subscribe(format!("{prefix}.job.{id}")).await)
    else {
        eprintln!("herald-loadtest worker: cannot subscribe");
        return 1;
    };
    eprintln!("herald-loadtest worker {id}: waiting for jobs on {prefix}.*");
    let mut idle_since = Instant::now();
    loop {
        let idle_left = if args.idle_exit > 0 {
            Duration::from_secs(args.idle_exit).saturating_sub(idle_since.elapsed())
        } else {
            Duration::from_secs(3600)
        };
        tokio::select! {
            Some(msg) = hello.next() => {
                if let Some(reply) = msg.reply {
                    let _ = client.publish(reply, serde_json::json!({"id": id}).to_string().into()).await;
                }
            }
            Some(msg) = job_sub.next() => {
                let mut job: Job = match serde_json::from_slice(&msg.payload) {
                    Ok(j) => j,
                    Err(e) => { eprintln!("herald-loadtest worker: bad job: {e}"); continue; }
                };
                if let Some(f) = &args.jwt_secret_file {
                    job.jwt_secret_file = Some(f.clone());
                }
                run_job(&client, &prefix, job, args.allow_remote).await;
                if args.once {
                    return 0;
                }
                idle_since = Instant::now();
            }
            _ = tokio::time::sleep(idle_left) => {
                if args.idle_exit > 0 {
                    eprintln!("herald-loadtest worker: no job for {} s, exiting", args.idle_exit);
                    return 0;
                }
            }
        }
    }
}

async fn run_job(client: &async_nats::Client, prefix: &str, job: Job, allow_remote: bool) {
    let from_subject = format!("{prefix}.run.{}.from", job.run_id);
    let share = job.share;
    if !allow_remote && let Some(bad) = job.targets.iter().find_map(|t| check_loopback_url(t).err()) {
        let msg = FromShare::Failed { share, message: format!("worker refuses: {bad}") };
        let _ = client.publish(from_subject, serde_json::to_vec(&msg).expect("JSON").into()).await;
        return;
    }
    let Ok(mut to_sub) = client.subscribe(format!("{prefix}.run.{}.to.{share}", job.run_id)).await else { return };
    let _ = client.flush().await;
    let (to_tx, to_rx) = mpsc::unbounded_channel();
    let (from_tx, mut from_rx) = mpsc::unbounded_channel();
    let forward = tokio::task::spawn_local(async move {
        while let Some(msg) = to_sub.next().await {
            if let Ok(m) = serde_json::from_slice::<ToShare>(&msg.payload) {
                let _ = to_tx.send(m);
            }
        }
    });
    tokio::task::spawn_local(crate::share::run(job, to_rx, from_tx));
    while let Some(msg) = from_rx.recv().await {
        let done = matches!(msg, FromShare::Done { .. } | FromShare::Failed { .. });
        let _ = client.publish(from_subject.clone(), serde_json::to_vec(&msg).expect("JSON").into()).await;
        if done {
            break;
        }
    }
    let _ = client.flush().await;
    forward.abort();
}

/// `herald-loadtest run <scenario>`.
pub async fn coordinate_main(a: CoordinateArgs) -> i32 {
    let mut problems = a.run.problems(a.scenario);
    if a.scenario == Scenario::Resume {
        problems.push("resume starts its gateways locally: run it without workers".into());
    }
    let coord_url = a.coord_nats_url.clone().or_else(|| a.run.nats_url.clone());
    if coord_url.is_none() {
        problems.push("run needs --coord-nats-url or --nats-url to reach its workers".into());
    }
    if a.workers == 0 {
        problems.push("--workers must be at least 1".into());
    }
    if !problems.is_empty() {
        for p in problems {
            eprintln!("herald-loadtest: {p}");
        }
        return 2;
    }
    let result = coordinate_workers(&a, coord_url.as_deref().unwrap_or_default()).await;
    finish(&a.run, result)
}

async fn coordinate_workers(a: &CoordinateArgs, url: &str) -> Result<serde_json::Value, String> {
    let client = connect_nats(url, a.run.nats_creds.as_deref()).await?;
    let prefix = &a.coord_subject;
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await.map_err(|e| format!("cannot subscribe: {e}"))?;
    let mut ids = BTreeSet::new();
    let end = Instant::now() + Duration::from_secs(a.worker_wait);
    while ids.len() < a.workers {
        client
            .publish_with_reply(format!("{prefix}.hello"), inbox.clone(), "{}".into())
            .await
            .map_err(|e| format!("cannot publish: {e}"))?;
        let round = Instant::now() + Duration::from_secs(1);
        while let Ok(Some(msg)) = tokio::time::timeout_at(round.into(), replies.next()).await {
            if let Some(id) = serde_json::from_slice::<serde_json::Value>(&msg.payload)
                .ok()
                .and_then(|v| v["id"].as_str().map(str::to_owned))
            {
                ids.insert(id);
            }
        }
        if Instant::now() > end {
            return Err(format!("only {} of {} workers answered within {} s", ids.len(), a.workers, a.worker_wait));
        }
    }
    let ids: Vec<String> = ids.into_iter().take(a.workers).collect();
    let run_id = format!("{:x}", payload::now_ns());
    let jobs = jobs(&a.run, a.scenario, &a.run.target, ids.len(), &run_id);
    let mut from_sub =
        client.subscribe(format!("{prefix}.run.{run_id}.from")).await.map_err(|e| format!("cannot subscribe: {e}"))?;
    let (from_tx, from_rx) = mpsc::unbounded_channel();
    tokio::task::spawn_local(async move {
        while let Some(msg) = from_sub.next().await {
            match serde_json::from_slice::<FromShare>(&msg.payload) {
                Ok(m) => {
                    let _ = from_tx.send(m);
                }
                Err(e) => eprintln!("herald-loadtest: bad report from a worker: {e}"),
            }
        }
    });
    let mut to = Vec::new();
    for (job, id) in jobs.iter().zip(&ids) {
        let body = serde_json::to_vec(job).expect("JSON");
        client.publish(format!("{prefix}.job.{id}"), body.into()).await.map_err(|e| format!("cannot publish: {e}"))?;
        let (tx, mut rx) = mpsc::unbounded_channel::<ToShare>();
        let c = client.clone();
        let subject = format!("{prefix}.run.{run_id}.to.{}", job.share);
        tokio::task::spawn_local(async move {
            while let Some(m) = rx.recv().await {
                let _ = c.publish(subject.clone(), serde_json::to_vec(&m).expect("JSON").into()).await;
                let _ = c.flush().await;
            }
        });
        to.push(tx);
    }
    client.flush().await.map_err(|e| format!("NATS: {e}"))?;
    coordinate(a.scenario, &a.run, Links { to, from: from_rx, processes: ids.len(), local: false }, None).await
}
