//! Two local `herald-gateway serve` processes for the `resume` scenario, on free loopback ports
//! against the run's NATS, sharing a client-token secret and a publisher key (the run's own
//! files, or fresh ones in a temporary directory). The first is the one SIGKILLed mid-run.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::cli::RunArgs;
use crate::payload;

pub struct LocalGateways {
    children: Vec<Child>,
    addrs: Vec<String>,
    pub secret_file: PathBuf,
    pub keys_file: PathBuf,
    dir: PathBuf,
}

impl LocalGateways {
    pub async fn start(args: &RunArgs) -> Result<LocalGateways, String> {
        let bin = match &args.gateway_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()
                .map_err(|e| format!("cannot find this executable: {e}"))?
                .with_file_name("herald-gateway"),
        };
        if !bin.exists() {
            return Err(format!(
                "the gateway binary {} does not exist: build it (cargo build -p herald-gateway) or pass --gateway-bin",
                bin.display()
            ));
        }
        let dir = std::env::temp_dir().join(format!("herald-loadtest-{}-{:x}", std::process::id(), payload::now_ns()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let secret_file = match &args.jwt_secret_file {
            Some(f) => f.clone(),
            None => {
                let f = dir.join("jwt.secret");
                let secret = format!("{:032x}{:x}", payload::now_ns(), std::process::id());
                write_private(&f, secret.as_bytes())?;
                f
            }
        };
        let keys_file = match &args.publish_keys_file {
            Some(f) => f.clone(),
            None => {
                let f = dir.join("publish.keys");
                write_private(&f, format!("loadtest:lt{:030x}\n", payload::now_ns()).as_bytes())?;
                f
            }
        };
        let nats = args.nats_url.clone().ok_or("resume needs --nats-url")?;
        let mut g = LocalGateways { children: Vec::new(), addrs: Vec::new(), secret_file, keys_file, dir };
        for _ in 0..2 {
            let (child, addr) = spawn(&bin, &nats, &g.secret_file, &g.keys_file, args.connections)?;
            g.children.push(child);
            g.addrs.push(addr);
        }
        for url in g.urls() {
            let end = Instant::now() + Duration::from_secs(20);
            loop {
                if let Ok((200, _)) = crate::http::get(&format!("{url}/readyz"), Duration::from_secs(2)).await {
                    break;
                }
                if Instant::now() > end {
                    return Err(format!("the gateway at {url} did not become ready"));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
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
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(bytes))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))
}

fn spawn(
    bin: &PathBuf,
    nats: &str,
    secret: &PathBuf,
    keys: &PathBuf,
    connections: u64,
) -> Result<(Child, String), String> {
    let mut child = Command::new(bin)
        .args(["serve", "--listen", "127.0.0.1:0", "--nats-url", nats])
        .arg("--jwt-secret-file")
        .arg(secret)
        .arg("--publish-keys-file")
        .arg(keys)
        .args(["--max-connections", &(connections + 100).to_string()])
        .env("RUST_LOG", "warn,herald_gateway::server=info")
        .env_remove("HERALD_LISTEN")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", bin.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if let Some(addr) = line.split("listening on http://").nth(1) {
                let _ = tx.send(addr.trim().to_owned());
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(20)) {
        Ok(addr) => Ok((child, addr)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(format!("{} did not start listening within 20 s", bin.display()))
        }
    }
}
