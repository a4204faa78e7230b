//! Local `herald-gateway serve` processes on loopback ports, sharing a client-token secret and a
//! publisher key (the run's own files, or fresh ones in a temporary directory).
//!
//! [`LocalGateways`] is the `resume` scenario's pair, whose first is SIGKILLed mid-run; `chaos`
//! keeps its own fleet (killed and restarted on the same port) from the same parts: [`find_bin`],
//! [`Credentials`], [`GatewaySpec::spawn`] and [`wait_ready`].

use std::io::{BufRead, BufReader, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::RunArgs;
use crate::payload;

/// A binary named on the command line, else the one of that name next to this executable.
pub fn find_bin(explicit: Option<&PathBuf>, name: &str) -> Result<PathBuf, String> {
    let bin = match explicit {
        Some(b) => b.clone(),
        None => beside_this_exe(name)?,
    };
    if !bin.exists() {
        return Err(format!(
            "the {name} binary {} does not exist: build it (cargo build --workspace) or name it with its flag",
            bin.display()
        ));
    }
    Ok(bin)
}

/// Where a sibling binary of this executable would be.
pub fn beside_this_exe(name: &str) -> Result<PathBuf, String> {
    Ok(std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?.with_file_name(name))
}

/// A fresh private directory under the system's temporary directory.
pub fn temp_dir(label: &str) -> Result<PathBuf, String> {
    let dir = std::env::temp_dir().join(format!("herald-{label}-{}-{:x}", std::process::id(), payload::now_ns()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    Ok(dir)
}

/// The client-token secret and publisher keys files the gateways are started with.
#[derive(Clone, Debug)]
pub struct Credentials {
    pub secret_file: PathBuf,
    pub keys_file: PathBuf,
}

impl Credentials {
    /// The given files, or fresh ones written into `dir`.
    pub fn new(dir: &Path, secret: Option<&PathBuf>, keys: Option<&PathBuf>) -> Result<Credentials, String> {
        let secret_file = match secret {
            Some(f) => f.clone(),
            None => {
                let f = dir.join("jwt.secret");
                let secret = format!("{:032x}{:x}", payload::now_ns(), std::process::id());
                write_private(&f, secret.as_bytes())?;
                f
            }
        };
        let keys_file = match keys {
            Some(f) => f.clone(),
            None => {
                let f = dir.join("publish.keys");
                write_private(&f, format!("loadtest:lt{:030x}\n", payload::now_ns()).as_bytes())?;
                f
            }
        };
        Ok(Credentials { secret_file, keys_file })
    }
}

/// How to start one gateway: everything but the address it listens on.
#[derive(Clone, Debug)]
pub struct GatewaySpec {
    pub bin: PathBuf,
    /// One NATS URL, or several comma-separated.
    pub nats: String,
    pub credentials: Credentials,
    pub max_connections: u64,
    /// More `serve` flags.
    pub extra: Vec<String>,
    /// Append the gateway's log here (else it is read for the address and dropped).
    pub log: Option<PathBuf>,
}

impl GatewaySpec {
    /// Starts `serve` on `listen` (`127.0.0.1:0` for a free port); returns the process and the
    /// address it listens on, once it says so.
    pub fn spawn(&self, listen: &str) -> Result<(Child, String), String> {
        let bin = &self.bin;
        let mut child = Command::new(bin)
            .args(["serve", "--listen", listen, "--nats-url", &self.nats])
            .arg("--jwt-secret-file")
            .arg(&self.credentials.secret_file)
            .arg("--publish-keys-file")
            .arg(&self.credentials.keys_file)
            .args(["--max-connections", &(self.max_connections + 100).to_string()])
            .args(&self.extra)
            .env("RUST_LOG", "warn,herald_gateway::commands::serve=info")
            .env_remove("HERALD_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
        let stderr = child.stderr.take().expect("piped");
        let mut log = match &self.log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .map_err(|e| format!("cannot open {}: {e}", path.display()))?,
            ),
            None => None,
        };
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads the log for as long as the process lives: a full pipe would stop its logging.
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                if let Some(f) = &mut log {
                    let _ = writeln!(f, "{line}");
                }
            }
        });
        match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(addr) => Ok((child, addr)),
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                Err(format!("{} did not start listening on {listen} within 20 s", bin.display()))
            }
        }
    }
}

/// Waits until `GET {url}/readyz` answers 200, or `limit` passes.
pub async fn wait_ready(url: &str, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    loop {
        if let Ok((200, _)) = crate::http::get(&format!("{url}/readyz"), Duration::from_secs(2)).await {
            return Ok(());
        }
        if Instant::now() > end {
            return Err(format!("the gateway at {url} did not become ready within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The `resume` scenario's two gateways against the run's NATS. The first is the one
/// SIGKILLed mid-run.
pub struct LocalGateways {
    children: Vec<Child>,
    addrs: Vec<String>,
    pub secret_file: PathBuf,
    pub keys_file: PathBuf,
    dir: PathBuf,
}

impl LocalGateways {
    pub async fn start(args: &RunArgs) -> Result<LocalGateways, String> {
        let bin = find_bin(args.gateway_bin.as_ref(), "herald-gateway")?;
        let dir = temp_dir("loadtest")?;
        let credentials = Credentials::new(&dir, args.jwt_secret_file.as_ref(), args.publish_keys_file.as_ref())?;
        let nats = args.nats_url.clone().ok_or("resume needs --nats-url")?;
        let spec = GatewaySpec {
            bin,
            nats,
            credentials: credentials.clone(),
            max_connections: args.connections,
            extra: args.nats_creds.iter().flat_map(|c| ["--nats-creds".into(), c.display().to_string()]).collect(),
            log: None,
        };
        let mut g = LocalGateways {
            children: Vec::new(),
            addrs: Vec::new(),
            secret_file: credentials.secret_file,
            keys_file: credentials.keys_file,
            dir,
        };
        for _ in 0..2 {
            let (child, addr) = spec.spawn("127.0.0.1:0")?;
            g.children.push(child);
            g.addrs.push(addr);
        }
        for url in g.urls() {
            wait_ready(&url, Duration::from_secs(20)).await.map_err(|e| match args.nats_creds {
                None => format!("{e} (does its NATS need --nats-creds?)"),
                Some(_) => e,
            })?;
        }
        Ok(g)
    }

    pub fn urls(&self) -> Vec<String> {
        self.addrs.iter().map(|a| format!("http://{a}")).collect()
    }

    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(Child::id).collect()
    }

    /// SIGKILLs the first gateway: no drain, no goodbye.
    pub fn kill_first(&mut self) {
        if let Some(c) = self.children.first_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn stop_all(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for LocalGateways {
    fn drop(&mut self) {
        self.stop_all();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn write_private(path: &PathBuf, bytes: &[u8]) -> Result<(), String> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}
