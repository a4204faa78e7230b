//! Command-line flags (each with a `HERALD_LOADTEST_` environment twin), checked all at once
//! before anything connects.
//!
//! About 540 lines: one flag after another, each with its help, and 50 lines of tests.

use std::net::{IpAddr, ToSocketAddrs};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::proto::Scenario;
use crate::publish::Via;

#[derive(Parser, Debug)]
#[command(
    name = "herald-loadtest",
    version,
    about = "Herald's load generator: SSE connections, fan-out, targeted delivery, churn, resume, soak and chaos"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Ramp up N connections: connect rate, connect latency, gateway memory per connection.
    Connect(RunArgs),
    /// N subscribers on one channel, R publishes per second.
    Fanout(RunArgs),
    /// N subscribers each on its own channel (or user), R publishes per second spread over them.
    Targeted(RunArgs),
    /// Connect and disconnect everyone, --cycles times; the gateway's gauge must return to 0.
    Churn(RunArgs),
    /// Start two gateways, SIGKILL the one every client is on, resume on the other.
    Resume(RunArgs),
    /// Targeted delivery for a long time: memory and latency drift.
    Soak(RunArgs),
    /// Start a NATS cluster and gateways, publish durable events while killing gateways and NATS
    /// nodes on a seeded schedule, then reconcile every client: lost, duplicated, out of order.
    Chaos(ChaosArgs),
    /// Coordinate a run whose connections are held by `worker` processes, over NATS.
    Run(CoordinateArgs),
    /// Wait for jobs from a `run` coordinator over NATS and hold their connections.
    Worker(WorkerArgs),
    /// Internal: one share of a run, job on stdin, reports on stdout (used by --processes).
    #[command(hide = true)]
    Share,
}

/// How targeted clients are addressed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum By {
    Channel,
    User,
}

/// Whether clients share one channel or have one each.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Layout {
    Fanout,
    Targeted,
}

#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Base URL(s) of the server(s), comma-separated; clients and HTTP publishes spread over
    /// them round-robin. May be a single Service address. `resume` starts its own gateways.
    #[arg(long, env = "HERALD_LOADTEST_TARGET", value_delimiter = ',')]
    pub target: Vec<String>,
    /// NATS URL, for publishing through NATS and for the gateways `resume` starts.
    #[arg(long, env = "HERALD_LOADTEST_NATS_URL")]
    pub nats_url: Option<String>,
    /// NATS credentials file (.creds) for every NATS connection of the run: publishing,
    /// reaching the workers, and the gateways `resume` starts.
    #[arg(long, env = "HERALD_LOADTEST_NATS_CREDS")]
    pub nats_creds: Option<PathBuf>,
    /// The gateways' HS256 client-token secret; clients get tokens signed with it. Without it,
    /// Herald mode expects a `dev` gateway and sends `?user=`.
    #[arg(long, env = "HERALD_LOADTEST_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// The gateways' publisher keys (`name:secret` lines); the first key is used for HTTP publishes.
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH_KEYS_FILE")]
    pub publish_keys_file: Option<PathBuf>,
    /// Clients (SSE connections) in total.
    #[arg(long, env = "HERALD_LOADTEST_CONNECTIONS", default_value_t = 100)]
    pub connections: u64,
    /// Publishes per second (fanout: each reaches every client).
    #[arg(long, env = "HERALD_LOADTEST_RATE", default_value_t = 10.0)]
    pub rate: f64,
    /// Seconds of publishing (connect: of holding the connections open).
    #[arg(long, env = "HERALD_LOADTEST_DURATION", default_value_t = 10)]
    pub duration: u64,
    /// Connect/disconnect cycles (churn).
    #[arg(long, env = "HERALD_LOADTEST_CYCLES", default_value_t = 3)]
    pub cycles: u32,
    /// Write the JSON summary (with the per-second timeline) to this file.
    #[arg(long, env = "HERALD_LOADTEST_JSON")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts to this file.
    #[arg(long, env = "HERALD_LOADTEST_HTML")]
    pub html: Option<PathBuf>,
    /// How to publish: `nats` (core, ephemeral), `jetstream` (durable) or `http`. Default:
    /// `nats` with --nats-url (`jetstream` for resume), else `http`.
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH")]
    pub publish: Option<Via>,
    /// HTTP publishes to Herald ask for durable events.
    #[arg(long, env = "HERALD_LOADTEST_DURABLE")]
    pub durable: bool,
    /// NATS subject prefix of the gateways.
    #[arg(long, env = "HERALD_LOADTEST_SUBJECT_PREFIX", default_value = "herald")]
    pub subject_prefix: String,
    /// The channel of fanout.
    #[arg(long, env = "HERALD_LOADTEST_CHANNEL", default_value = "loadtest")]
    pub channel: String,
    /// Prefix of per-client channel and user names (`<prefix>-<i>`).
    #[arg(long, env = "HERALD_LOADTEST_PREFIX", default_value = "lt")]
    pub prefix: String,
    /// Targeted clients each have their own channel, or are each a user.
    #[arg(long, env = "HERALD_LOADTEST_BY", value_enum, default_value_t = By::Channel)]
    pub by: By,
    /// One shared channel or one each, for connect, churn, resume and soak (fanout and targeted
    /// fix it). Default: fanout for connect and churn, targeted for resume and soak.
    #[arg(long, env = "HERALD_LOADTEST_LAYOUT", value_enum)]
    pub layout: Option<Layout>,
    /// Pad each payload to this many bytes.
    #[arg(long, env = "HERALD_LOADTEST_PAYLOAD_BYTES", default_value_t = 0)]
    pub payload_bytes: usize,
    /// Generic mode: the SSE URL, with `{target}`, `{channel}`, `{user}` and `{i}`
    /// (e.g. `{target}/sub/{channel}` for Nchan). Makes the run server-agnostic.
    #[arg(long, env = "HERALD_LOADTEST_SSE_URL_TEMPLATE")]
    pub sse_url_template: Option<String>,
    /// Generic mode: the publish URL, with `{target}`, `{channel}` and `{i}` (e.g. `{target}/pub/{channel}`).
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH_URL_TEMPLATE")]
    pub publish_url_template: Option<String>,
    /// Generic mode: the publish body; `{payload}` is the measured JSON payload.
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH_BODY_TEMPLATE", default_value = "{payload}")]
    pub publish_body_template: String,
    /// Generic mode: the publish method.
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH_METHOD", default_value = "POST")]
    pub publish_method: String,
    /// Generic mode: an extra publish header `Name: value` (repeatable).
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH_HEADER")]
    pub publish_header: Vec<String>,
    /// Keep-alive connections HTTP publishes spread over.
    #[arg(long, env = "HERALD_LOADTEST_PUBLISH_CONCURRENCY", default_value_t = 16)]
    pub publish_concurrency: usize,
    /// Load-generator processes to spread the connections over (one process may hold at most
    /// the hard open-file limit).
    #[arg(long, env = "HERALD_LOADTEST_PROCESSES", default_value_t = 1)]
    pub processes: usize,
    /// Connections opening at once, per process.
    #[arg(long, env = "HERALD_LOADTEST_CONNECT_CONCURRENCY", default_value_t = 512)]
    pub connect_concurrency: usize,
    /// New connections per second in total (0: as fast as they open).
    #[arg(long, env = "HERALD_LOADTEST_CONNECT_RATE", default_value_t = 0.0)]
    pub connect_rate: f64,
    /// Seconds one connection may take to open (until `connected` in Herald mode).
    #[arg(long, env = "HERALD_LOADTEST_CONNECT_TIMEOUT", default_value_t = 30)]
    pub connect_timeout: u64,
    /// Seconds to wait after publishing for the last deliveries.
    #[arg(long, env = "HERALD_LOADTEST_GRACE", default_value_t = 5)]
    pub grace: u64,
    /// `churn`: seconds to wait for the gateways' connection gauges to return to 0 (a gateway
    /// notices a closed stream at its next write, at the latest its next heartbeat).
    #[arg(long, env = "HERALD_LOADTEST_GAUGE_WAIT", default_value_t = 30)]
    pub gauge_wait: u64,
    /// Reconnect (to the next target, with the last event id) whenever a stream ends.
    #[arg(long, env = "HERALD_LOADTEST_RECONNECT")]
    pub reconnect: bool,
    /// The gateway's pid, for its memory (default: the process listening on the first target's port).
    #[arg(long, env = "HERALD_LOADTEST_GATEWAY_PID")]
    pub gateway_pid: Option<u32>,
    /// `resume`: the herald-gateway binary (default: next to this executable).
    #[arg(long, env = "HERALD_LOADTEST_GATEWAY_BIN")]
    pub gateway_bin: Option<PathBuf>,
    /// `resume`: seconds into publishing when the first gateway is killed (default: half the duration).
    #[arg(long, env = "HERALD_LOADTEST_KILL_AFTER")]
    pub kill_after: Option<f64>,
    /// Allow targets and NATS outside 127.0.0.0/8 and ::1.
    #[arg(long, env = "HERALD_LOADTEST_ALLOW_REMOTE")]
    pub allow_remote: bool,
    /// No progress line, even on a terminal.
    #[arg(long, env = "HERALD_LOADTEST_QUIET")]
    pub quiet: bool,
    /// Fail the run (exit 3) when the delivery latency's p99 is above this many milliseconds.
    #[arg(long, env = "HERALD_LOADTEST_MAX_P99_MS")]
    pub max_p99_ms: Option<f64>,
    /// Fail the run (exit 3) when more than this many expected events were never delivered.
    #[arg(long, env = "HERALD_LOADTEST_MAX_MISSING")]
    pub max_missing: Option<u64>,
    /// Fail the run (exit 3) when more than this many connections failed to open.
    #[arg(long, env = "HERALD_LOADTEST_MAX_CONNECT_FAILURES")]
    pub max_connect_failures: Option<u64>,
}

#[derive(Args, Debug, Clone)]
pub struct CoordinateArgs {
    /// The scenario to run on the workers.
    #[arg(value_enum)]
    pub scenario: Scenario,
    /// Workers to wait for; the connections are split evenly between them.
    #[arg(long, env = "HERALD_LOADTEST_WORKERS", default_value_t = 1)]
    pub workers: usize,
    /// Seconds to wait for the workers to answer.
    #[arg(long, env = "HERALD_LOADTEST_WORKER_WAIT", default_value_t = 60)]
    pub worker_wait: u64,
    /// NATS for coordination (default: --nats-url).
    #[arg(long, env = "HERALD_LOADTEST_COORD_NATS_URL")]
    pub coord_nats_url: Option<String>,
    /// Subject prefix for coordination.
    #[arg(long, env = "HERALD_LOADTEST_COORD_SUBJECT", default_value = "herald-loadtest")]
    pub coord_subject: String,
    #[command(flatten)]
    pub run: RunArgs,
}

#[derive(Args, Debug, Clone)]
pub struct WorkerArgs {
    /// NATS to receive jobs over.
    #[arg(long, env = "HERALD_LOADTEST_NATS_URL")]
    pub nats_url: String,
    /// NATS credentials file (.creds).
    #[arg(long, env = "HERALD_LOADTEST_NATS_CREDS")]
    pub nats_creds: Option<std::path::PathBuf>,
    /// Subject prefix for coordination.
    #[arg(long, env = "HERALD_LOADTEST_COORD_SUBJECT", default_value = "herald-loadtest")]
    pub coord_subject: String,
    /// This worker's client-token secret (overrides the path in the job).
    #[arg(long, env = "HERALD_LOADTEST_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<std::path::PathBuf>,
    /// Exit after one job.
    #[arg(long, env = "HERALD_LOADTEST_ONCE")]
    pub once: bool,
    /// Exit when no job has arrived after this many seconds (0: wait forever).
    #[arg(long, env = "HERALD_LOADTEST_IDLE_EXIT", default_value_t = 0)]
    pub idle_exit: u64,
    /// Allow targets outside 127.0.0.0/8 and ::1.
    #[arg(long, env = "HERALD_LOADTEST_ALLOW_REMOTE")]
    pub allow_remote: bool,
}

#[derive(Args, Debug, Clone)]
pub struct ChaosArgs {
    /// `herald-gateway serve` processes to start (gateway faults need at least 2: one stays up).
    #[arg(long, env = "HERALD_LOADTEST_GATEWAYS", default_value_t = 2)]
    pub gateways: usize,
    /// nats-server processes in the cluster (NATS faults need at least 3: a quorum stays up).
    #[arg(long, env = "HERALD_LOADTEST_NATS_NODES", default_value_t = 3)]
    pub nats_nodes: usize,
    /// Seconds of publishing (and of faults).
    #[arg(long, env = "HERALD_LOADTEST_DURATION", default_value_t = 60)]
    pub duration: u64,
    /// Seed of the fault schedule, the targets of publishes and the deliberate resumes.
    #[arg(long, env = "HERALD_LOADTEST_SEED", default_value_t = 1)]
    pub seed: u64,
    /// Seconds between faults (each time jittered by up to a quarter either way).
    #[arg(long, env = "HERALD_LOADTEST_FAULT_EVERY", default_value_t = 10.0)]
    pub fault_every: f64,
    /// SSE clients, spread over the gateways.
    #[arg(long, env = "HERALD_LOADTEST_CLIENTS", default_value_t = 100)]
    pub clients: usize,
    /// Publishes per second.
    #[arg(long, env = "HERALD_LOADTEST_RATE", default_value_t = 20.0)]
    pub rate: f64,
    /// Channels the clients subscribe to (two each).
    #[arg(long, env = "HERALD_LOADTEST_CHANNELS", default_value_t = 8)]
    pub channels: usize,
    /// Seconds between deliberate resumes (one random client drops its stream and resumes on
    /// another gateway); 0: none.
    #[arg(long, env = "HERALD_LOADTEST_RESUME_EVERY", default_value_t = 0.5)]
    pub resume_every: f64,
    /// Seconds after publishing for every client to receive every acknowledged event.
    #[arg(long, env = "HERALD_LOADTEST_SETTLE", default_value_t = 60)]
    pub settle: u64,
    /// Write the JSON report (with the per-second timeline) to this file.
    #[arg(long, env = "HERALD_LOADTEST_JSON")]
    pub json: Option<PathBuf>,
    /// Write a self-contained HTML report with charts (faults marked) to this file.
    #[arg(long, env = "HERALD_LOADTEST_HTML")]
    pub html: Option<PathBuf>,
    /// The herald-gateway binary (default: next to this executable).
    #[arg(long, env = "HERALD_LOADTEST_GATEWAY_BIN")]
    pub gateway_bin: Option<PathBuf>,
    /// The nats-server binary (default: next to this executable, else on PATH).
    #[arg(long, env = "HERALD_LOADTEST_NATS_SERVER_BIN")]
    pub nats_server_bin: Option<PathBuf>,
    /// Keep the NATS stores and the processes' logs (kept anyway when the run finds a problem).
    #[arg(long, env = "HERALD_LOADTEST_KEEP_DIR")]
    pub keep_dir: bool,
    /// No progress line, even on a terminal.
    #[arg(long, env = "HERALD_LOADTEST_QUIET")]
    pub quiet: bool,
}

impl ChaosArgs {
    /// Every problem with the flags.
    pub fn problems(&self) -> Vec<String> {
        let mut p = Vec::new();
        if self.gateways == 0 || self.gateways > 16 {
            p.push("--gateways must be between 1 and 16".into());
        }
        if self.nats_nodes == 0 || self.nats_nodes > 7 {
            p.push("--nats-nodes must be between 1 and 7".into());
        }
        if self.gateways < 2 && self.nats_nodes < 3 {
            p.push("no fault can be injected safely: use --gateways 2 or more, or --nats-nodes 3 or more".into());
        }
        if self.duration == 0 {
            p.push("--duration must be at least 1 second".into());
        }
        if !(self.fault_every >= 1.0 && self.fault_every.is_finite()) {
            p.push("--fault-every must be at least 1 second".into());
        }
        if self.clients == 0 || self.clients > 5000 {
            p.push("--clients must be between 1 and 5000".into());
        }
        if !(self.rate > 0.0 && self.rate <= 2000.0) {
            p.push("--rate must be a positive number of publishes per second, at most 2000".into());
        }
        if self.channels == 0 {
            p.push("--channels must be at least 1".into());
        }
        if !(self.resume_every >= 0.0 && self.resume_every.is_finite()) {
            p.push("--resume-every must be 0 (none) or positive".into());
        }
        p
    }
}

impl RunArgs {
    /// Every problem with the flags, for `scenario`.
    pub fn problems(&self, scenario: Scenario) -> Vec<String> {
        let mut p = Vec::new();
        if self.target.is_empty() && scenario != Scenario::Resume {
            p.push("--target is required: the base URL of the server(s) to test".into());
        }
        if self.connections == 0 {
            p.push("--connections must be at least 1".into());
        }
        if scenario.delivers() && !(self.rate > 0.0 && self.rate.is_finite()) {
            p.push("--rate must be a positive number of publishes per second".into());
        }
        if self.duration == 0 {
            p.push("--duration must be at least 1 second".into());
        }
        if self.processes == 0 || self.processes > 64 {
            p.push("--processes must be between 1 and 64".into());
        }
        if self.publish_concurrency == 0 {
            p.push("--publish-concurrency must be at least 1".into());
        }
        if !(self.connect_rate >= 0.0 && self.connect_rate.is_finite()) {
            p.push("--connect-rate must be 0 (unlimited) or positive".into());
        }
        for t in &self.target {
            if let Err(e) = crate::http::Target::parse(t) {
                p.push(format!(
                    "--target {t:?}: {e}; the load tester speaks plain HTTP (test the Service inside the cluster, or through a proxy that terminates TLS)"
                ));
            }
        }
        if let Some(t) = &self.publish_url_template
            && t.starts_with("https://")
        {
            p.push("--publish-url-template: only http:// is supported".into());
        }
        if let Some(max) = self.max_p99_ms
            && !(max > 0.0 && max.is_finite())
        {
            p.push("--max-p99-ms must be a positive number of milliseconds".into());
        }
        if self.max_p99_ms.is_some() && !scenario.delivers() {
            p.push(format!("--max-p99-ms needs a scenario that delivers events, not {}", scenario.name()));
        }
        let generic = self.sse_url_template.is_some();
        if generic && scenario.delivers() && self.publish_url_template.is_none() {
            p.push("--sse-url-template needs --publish-url-template to publish".into());
        }
        if generic && matches!(scenario, Scenario::Resume) {
            p.push("resume starts Herald gateways itself: it has no generic mode".into());
        }
        if !generic && self.publish_url_template.is_some() {
            p.push("--publish-url-template belongs to generic mode: add --sse-url-template".into());
        }
        if let Some(t) = &self.sse_url_template
            && !t.contains("{target}")
            && !t.starts_with("http://")
        {
            p.push("--sse-url-template must be an http:// URL or start with {target}".into());
        }
        let via = self.via(scenario);
        if matches!(via, Via::Nats | Via::Jetstream) && self.nats_url.is_none() && scenario.delivers() {
            p.push(format!("--publish {} needs --nats-url", via_name(via)));
        }
        if generic && matches!(via, Via::Nats | Via::Jetstream) && scenario.delivers() {
            p.push("generic mode publishes over HTTP (--publish http)".into());
        }
        if scenario == Scenario::Resume {
            if self.nats_url.is_none() {
                p.push("resume needs --nats-url (the NATS its two gateways use)".into());
            }
            if via == Via::Nats || (via == Via::Http && !self.durable) {
                p.push("resume needs durable events: --publish jetstream, or --publish http --durable".into());
            }
            if let Some(k) = self.kill_after
                && !(k > 0.0 && k < self.duration as f64)
            {
                p.push("--kill-after must be within the duration".into());
            }
        }
        for h in &self.publish_header {
            if !h.contains(':') {
                p.push(format!("--publish-header {h:?} is not `Name: value`"));
            }
        }
        if !crate::names::valid(&self.channel) {
            p.push(format!("--channel {:?} is not a valid channel name", self.channel));
        }
        if !crate::names::valid(&self.prefix) {
            p.push(format!("--prefix {:?} is not a valid name prefix", self.prefix));
        }
        let files = [
            ("--jwt-secret-file", &self.jwt_secret_file),
            ("--publish-keys-file", &self.publish_keys_file),
            ("--nats-creds", &self.nats_creds),
        ];
        for (flag, path) in files.into_iter().filter_map(|(flag, path)| Some((flag, path.as_ref()?))) {
            if std::fs::metadata(path).is_err() {
                p.push(format!("{flag}: cannot read {}", path.display()));
            }
        }
        if !self.allow_remote {
            for t in &self.target {
                if let Err(e) = check_loopback_url(t) {
                    p.push(e);
                }
            }
            if let Some(n) = &self.nats_url {
                for one in n.split(',') {
                    if let Err(e) = check_loopback_url(one.trim()) {
                        p.push(e);
                    }
                }
            }
        }
        p
    }

    pub fn via(&self, scenario: Scenario) -> Via {
        match self.publish {
            Some(v) => v,
            None if self.sse_url_template.is_some() => Via::Http,
            None if self.nats_url.is_some() => {
                if scenario == Scenario::Resume {
                    Via::Jetstream
                } else {
                    Via::Nats
                }
            }
            None => Via::Http,
        }
    }

    pub fn fanout(&self, scenario: Scenario) -> bool {
        match scenario {
            Scenario::Fanout => true,
            Scenario::Targeted => false,
            Scenario::Connect | Scenario::Churn => self.layout != Some(Layout::Targeted),
            Scenario::Resume | Scenario::Soak => self.layout == Some(Layout::Fanout),
        }
    }
}

pub fn via_name(v: Via) -> &'static str {
    match v {
        Via::Nats => "nats",
        Via::Jetstream => "jetstream",
        Via::Http => "http",
    }
}

/// Refuses URLs whose host is not on the loopback interface.
pub fn check_loopback_url(raw: &str) -> Result<(), String> {
    let url = url::Url::parse(raw).map_err(|e| format!("{raw:?} is not a URL: {e}"))?;
    let host = url.host_str().ok_or_else(|| format!("{raw:?} has no host"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let port = url.port_or_known_default().unwrap_or(0);
    let addrs: Vec<IpAddr> = match host.parse::<IpAddr>() {
        Ok(ip) => vec![ip],
        Err(_) => {
            (host, port).to_socket_addrs().map_err(|e| format!("cannot resolve {host}: {e}"))?.map(|a| a.ip()).collect()
        }
    };
    if addrs.is_empty() || addrs.iter().any(|ip| !ip.is_loopback()) {
        return Err(format!("{raw} is not a loopback address; pass --allow-remote to load a remote server"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(extra: &[&str]) -> RunArgs {
        let mut argv = vec!["herald-loadtest", "fanout"];
        argv.extend_from_slice(extra);
        match Cli::try_parse_from(argv).unwrap().command {
            Command::Fanout(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn the_issue_command_shape_parses() {
        let a = args(&[
            "--target",
            "http://127.0.0.1:1,http://127.0.0.1:2",
            "--nats-url",
            "nats://127.0.0.1:4222",
            "--connections",
            "10",
            "--rate",
            "5",
            "--duration",
            "3",
            "--cycles",
            "2",
            "--json",
            "x.json",
            "--html",
            "x.html",
        ]);
        assert_eq!(a.target.len(), 2);
        assert!(a.problems(Scenario::Fanout).is_empty(), "{:?}", a.problems(Scenario::Fanout));
        assert_eq!(a.via(Scenario::Fanout), Via::Nats);
        assert_eq!(a.via(Scenario::Resume), Via::Jetstream);
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let a = args(&["--target", "http://10.1.2.3:80", "--connections", "0", "--rate", "0", "--publish", "nats"]);
        let p = a.problems(Scenario::Fanout);
        assert_eq!(p.len(), 4, "{p:?}");
        assert!(p.iter().any(|m| m.contains("--allow-remote")));
        let a = args(&["--target", "http://10.1.2.3:80", "--allow-remote"]);
        assert!(a.problems(Scenario::Fanout).is_empty());
        let a = args(&["--nats-url", "nats://127.0.0.1:1", "--publish", "nats"]);
        assert!(a.problems(Scenario::Resume).iter().any(|m| m.contains("durable")));
    }
}
