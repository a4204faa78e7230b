//! Test support: a real nats-server and real gateway processes per test (on free loopback
//! ports, killed on drop), and a runner for the harness binary itself that returns its JSON
//! summary.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

pub const SECRET: &[u8] = b"loadtest-secret-0123456789abcdef";
pub const PUBLISH_KEY: &str = "loadtest-publisher-key-0123456789";

use herald_testkit::workspace_root;

/// The gateway binary next to the harness: the one `cargo test --workspace` (or `cargo build`)
/// built, else built here (this crate's tests do not build other packages' binaries).
/// `HERALD_GATEWAY_BIN` overrides it.
pub fn gateway_bin() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            if let Ok(p) = std::env::var("HERALD_GATEWAY_BIN") {
                return PathBuf::from(p);
            }
            let bin = Path::new(env!("CARGO_BIN_EXE_herald-loadtest")).with_file_name("herald-gateway");
            if bin.exists() {
                return bin;
            }
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let ok = Command::new(cargo)
                .args(["build", "-q", "-p", "herald-gateway", "--bin", "herald-gateway"])
                .current_dir(workspace_root())
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
            assert!(ok && bin.exists(), "cannot build herald-gateway for the tests");
            bin
        })
        .clone()
}

/// A nats-server with JetStream on free ports, killed on drop.
pub struct Nats {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Nats {
    /// Starts on a free port, again on another when the port was taken between choosing and
    /// binding it; on failure, panics with the server's log.
    pub fn start() -> Nats {
        let dir = tempfile::tempdir().unwrap();
        let (child, port, _) =
            herald_testkit::spawn_nats_on_free_ports(false, Some(dir.path()), &dir.path().join("nats.log"));
        Nats { child, port, _dir: dir }
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Files a gateway and the harness share: the client-token secret and the publisher keys.
pub struct Secrets {
    pub dir: tempfile::TempDir,
}

impl Secrets {
    pub fn new() -> Secrets {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("jwt.secret"), [SECRET, b"\n"].concat()).unwrap();
        std::fs::write(dir.path().join("publish.keys"), format!("# test\nloadtest:{PUBLISH_KEY}\n")).unwrap();
        Secrets { dir }
    }
    pub fn secret(&self) -> String {
        self.dir.path().join("jwt.secret").display().to_string()
    }
    pub fn keys(&self) -> String {
        self.dir.path().join("publish.keys").display().to_string()
    }
}

/// A `herald-gateway serve` process on a free port, killed on drop.
pub struct Gateway {
    child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
}

impl Gateway {
    pub fn serve(nats: &Nats, secrets: &Secrets) -> Gateway {
        let mut child = Command::new(gateway_bin())
            .args(["serve", "--listen", "127.0.0.1:0", "--nats-url", &nats.url()])
            .args(["--jwt-secret-file", &secrets.secret(), "--publish-keys-file", &secrets.keys()])
            // Closed streams are noticed at the next write: keep churn's wait short.
            .args(["--heartbeat-secs", "1"])
            .env("RUST_LOG", "info")
            .env_remove("HERALD_LISTEN")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn herald-gateway");
        let stderr = child.stderr.take().unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let sink = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(addr) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(addr.trim().to_owned());
                }
                sink.lock().unwrap().push(line);
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(20)) {
            Ok(a) => a.parse().unwrap(),
            Err(_) => {
                let _ = child.kill();
                panic!("gateway did not start: {:#?}", log.lock().unwrap());
            }
        };
        let gw = Gateway { child, addr, log };
        let end = Instant::now() + Duration::from_secs(15);
        while !gw.ready() {
            assert!(Instant::now() < end, "gateway not ready: {:#?}", gw.log.lock().unwrap());
            std::thread::sleep(Duration::from_millis(20));
        }
        gw
    }

    fn ready(&self) -> bool {
        http_get(self.addr, "/readyz").0 == 200
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn connections(&self) -> u64 {
        let (_, body) = http_get(self.addr, "/stats");
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["connections"].as_u64().unwrap()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A blocking `GET` (status, body) with `Connection: close`.
pub fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(addr) else { return (0, String::new()) };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    let mut raw = String::new();
    let _ = s.read_to_string(&mut raw);
    let status = raw.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b.to_owned()).unwrap_or_default();
    (status, body)
}

/// Runs `herald-loadtest args…` (bounded to `limit`), returns its exit code, JSON summary
/// (stdout) and stderr.
pub fn loadtest(args: &[&str], limit: Duration) -> (i32, serde_json::Value, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald-loadtest"))
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald-loadtest");
    let end = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let out = child.wait_with_output().unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout).to_string();
            let stderr = String::from_utf8_lossy(&out.stderr).to_string();
            let json = serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null);
            return (status.code().unwrap_or(-1), json, stderr);
        }
        if Instant::now() > end {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("herald-loadtest ran over {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs the harness and insists that it succeeded.
pub fn loadtest_ok(args: &[&str], limit: Duration) -> serde_json::Value {
    let (code, json, stderr) = loadtest(args, limit);
    assert_eq!(code, 0, "herald-loadtest {args:?} failed: {stderr}");
    json
}
