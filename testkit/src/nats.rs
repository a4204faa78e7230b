//! nats-server processes on the ports the server picks itself: it is started with `-p -1` and
//! `-m -1` and writes the ports it took to a ports file, which is read back. Nothing chooses a
//! port and releases it for the server to bind, so no other process can take it in between. A
//! restart reuses the ports the server took the first time.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bins;
use crate::http::http;
use crate::process::Process;
use crate::wait::poll;

/// How long a nats-server may take to write its ports file.
const START_DEADLINE: Duration = Duration::from_secs(20);

/// Whatever a gateway can be pointed at as its NATS: a [`Nats`], a proxy in front of one, a
/// cluster or one of its nodes, or a URL.
pub trait NatsUrl {
    /// The URL(s) for `--nats-url`.
    fn nats_url(&self) -> String;
}

impl NatsUrl for str {
    fn nats_url(&self) -> String {
        self.to_owned()
    }
}

impl NatsUrl for String {
    fn nats_url(&self) -> String {
        self.clone()
    }
}

/// The ports a nats-server listens on, as it wrote them to its ports file.
#[derive(Clone, Copy, Debug)]
pub struct Ports {
    pub client: u16,
    pub monitoring: Option<u16>,
    pub cluster: Option<u16>,
}

/// Starts nats-server with `args` (`-p -1` and the like for ports it picks itself), logging to
/// `dir/nats.log` and writing its ports file into `dir`, and waits for the file: the server
/// writes it once every listener is open, so it accepts connections from then on. Panics with
/// the end of the log when the server exits first or writes no ports file within 20 s.
pub(crate) fn spawn(args: &[String], dir: &Path) -> (Process, Ports) {
    let log = dir.join("nats.log");
    let mut command = Command::new(bins::nats_server());
    command.args(args).arg("--ports_file_dir").arg(dir).arg("--log").arg(&log);
    let mut server = Process::spawn(command.stdout(Stdio::null()).stderr(Stdio::null()), "nats-server");
    let pid = server.pid();
    let ports = poll(START_DEADLINE, || match read_ports_file(dir, pid) {
        Some(ports) => Some(Ok(ports)),
        None if server.exited() => Some(Err("it exited")),
        None => None,
    });
    match ports {
        Some(Ok(ports)) => (server, ports),
        failed => {
            let why = failed.map_or("it wrote no ports file within 20 s", |e| e.unwrap_err());
            panic!("nats-server {args:?} did not start: {why}; the end of its log:\n{}", log_tail(&log, 20))
        }
    }
}

/// The ports file of the server with `pid` in `dir` (`<executable>_<pid>.ports`, JSON such as
/// `{"nats":["nats://127.0.0.1:4222"],"monitoring":["http://127.0.0.1:8222"]}`), once it is
/// there and whole.
fn read_ports_file(dir: &Path, pid: u32) -> Option<Ports> {
    let suffix = format!("_{pid}.ports");
    let file = std::fs::read_dir(dir)
        .ok()?
        .filter_map(Result::ok)
        .find(|entry| entry.file_name().to_string_lossy().ends_with(&suffix))?;
    // Read while being written: not JSON yet, so read again.
    let ports: serde_json::Value = serde_json::from_slice(&std::fs::read(file.path()).ok()?).ok()?;
    let port = |kind: &str| -> Option<u16> {
        let url = ports[kind].as_array()?.first()?.as_str()?;
        url.rsplit_once(':')?.1.trim_end_matches('/').parse().ok()
    };
    Some(Ports { client: port("nats")?, monitoring: port("monitoring"), cluster: port("cluster") })
}

/// The last `lines` lines of a log file.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let tail: Vec<&str> = text.lines().rev().take(lines).collect();
    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
}

/// A single nats-server on loopback, killed on drop. Its ports stay its own across
/// [`Nats::stop`] and [`Nats::restart`], and so does its JetStream store.
pub struct Nats {
    server: Option<Process>,
    pub port: u16,
    pub monitor_port: u16,
    jetstream: bool,
    dir: tempfile::TempDir,
}

impl Nats {
    /// A server with JetStream.
    pub fn start() -> Nats {
        Self::spawn_new(true)
    }

    /// A server without JetStream.
    pub fn start_without_jetstream() -> Nats {
        Self::spawn_new(false)
    }

    /// A server with JetStream that took its ports and was stopped: a gateway pointed at it
    /// finds no NATS there until [`Nats::restart`] starts it on the same ports.
    pub fn stopped() -> Nats {
        let mut nats = Self::spawn_new(true);
        nats.stop();
        nats
    }

    fn spawn_new(jetstream: bool) -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let args = Self::args("-1", "-1", jetstream, dir.path());
        let (server, ports) = spawn(&args, dir.path());
        let monitor_port = ports.monitoring.expect("a monitoring port in the ports file");
        Nats { server: Some(server), port: ports.client, monitor_port, jetstream, dir }
    }

    fn args(port: &str, monitor_port: &str, jetstream: bool, dir: &Path) -> Vec<String> {
        let mut args: Vec<String> = ["-a", "127.0.0.1", "-p", port, "-m", monitor_port].map(String::from).into();
        if jetstream {
            args.extend(["-js".into(), "-sd".into(), dir.join("store").display().to_string()]);
        }
        args
    }

    /// Stops the server (SIGTERM, then SIGKILL if it lingers), keeping its JetStream store.
    pub fn stop(&mut self) {
        if let Some(mut server) = self.server.take() {
            server.stop();
        }
    }

    /// Starts the server again (stopping it first if it runs) on the ports it had, with its
    /// JetStream store.
    pub fn restart(&mut self) {
        self.stop();
        let args = Self::args(&self.port.to_string(), &self.monitor_port.to_string(), self.jetstream, self.dir.path());
        self.server = Some(spawn(&args, self.dir.path()).0);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log.
    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("nats.log")
    }

    pub async fn client(&self) -> async_nats::Client {
        async_nats::connect(self.url()).await.unwrap()
    }

    /// The address of the server's monitoring endpoints.
    pub fn monitor_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.monitor_port))
    }

    /// A monitoring endpoint's JSON, e.g. `/jsz`.
    pub async fn monitor(&self, path: &str) -> serde_json::Value {
        http(self.monitor_addr(), "GET", path, &[], None).await.json()
    }

    /// `/connz?subs=detail`: the server's connections with their subscriptions.
    pub async fn connz(&self) -> serde_json::Value {
        self.monitor("/connz?subs=detail").await
    }
}

impl NatsUrl for Nats {
    fn nats_url(&self) -> String {
        self.url()
    }
}

/// Subscribes `client` to `subject` and waits until the server has the subscription: a
/// message the client sends itself after the SUB comes back only once the server has processed
/// both (`flush` only writes them to the socket).
pub async fn subscribe_confirmed(client: &async_nats::Client, subject: &str) -> async_nats::Subscriber {
    use futures_util::StreamExt;
    let subscription = client.subscribe(subject.to_owned()).await.unwrap();
    let inbox = client.new_inbox();
    let mut probe = client.subscribe(inbox.clone()).await.unwrap();
    client.publish(inbox, bytes::Bytes::new()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), probe.next())
        .await
        .expect("the server answers its own client within 10 s")
        .expect("the probe's subscription is open");
    subscription
}
