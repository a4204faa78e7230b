//! A local NATS cluster for `chaos`: `n` nats-server processes with JetStream, each with its own
//! store directory, clustered over routes on 127.0.0.1. A killed node restarts with the same
//! store, ports and name, so it rejoins as itself and catches up from its peers.
//!
//! Readiness is asked, never assumed ([`wait_node_healthy`]): a node is healthy when its monitoring endpoint's
//! `/healthz` answers 200 (JetStream enabled and current) and, on a cluster, `/jsz` names a meta
//! leader of the full cluster size. Nothing starts on top of a cluster that is not.
//! The waits are free functions of the monitoring URLs, so no borrow of the cluster is held
//! across them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The nats-server binary: named, else next to this executable, else on `PATH`.
pub fn find_nats_server(explicit: Option<&PathBuf>) -> Result<PathBuf, String> {
    if let Some(b) = explicit {
        return if b.exists() {
            Ok(b.clone())
        } else {
            Err(format!("the nats-server binary {} does not exist", b.display()))
        };
    }
    let beside = crate::gateways::beside_this_exe("nats-server")?;
    if beside.exists() {
        return Ok(beside);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|dir| dir.join("nats-server"))
        .find(|p| p.is_file())
        .ok_or_else(|| "no nats-server found: pass --nats-server-bin, or put it on PATH".into())
}

struct Node {
    name: String,
    client_port: u16,
    cluster_port: u16,
    http_port: u16,
    store: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

pub struct Cluster {
    bin: PathBuf,
    name: String,
    nodes: Vec<Node>,
}

/// `count` distinct free loopback ports (all held until all are known, so none repeats).
pub fn free_ports(count: usize) -> Result<Vec<u16>, String> {
    let listeners: Vec<std::net::TcpListener> = (0..count)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<_, _>>()
        .map_err(|e| format!("cannot find free ports: {e}"))?;
    listeners.iter().map(|l| l.local_addr().map(|a| a.port()).map_err(|e| e.to_string())).collect()
}

impl Cluster {
    /// Starts every node (not waiting: see [`wait_healthy`]).
    pub fn start(bin: &Path, nodes: usize, dir: &Path) -> Result<Cluster, String> {
        let ports = free_ports(nodes * 3)?;
        let nodes = (0..nodes)
            .map(|i| Node {
                name: format!("nats-{i}"),
                client_port: ports[i * 3],
                cluster_port: ports[i * 3 + 1],
                http_port: ports[i * 3 + 2],
                store: dir.join(format!("nats-{i}")),
                log: dir.join(format!("nats-{i}.log")),
                child: None,
            })
            .collect();
        let mut c = Cluster { bin: bin.to_owned(), name: "herald-chaos".into(), nodes };
        for i in 0..c.nodes.len() {
            c.spawn(i)?;
        }
        Ok(c)
    }

    fn spawn(&mut self, i: usize) -> Result<(), String> {
        let routes: Vec<String> = self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.cluster_port)).collect();
        let clustered = self.nodes.len() > 1;
        let n = &mut self.nodes[i];
        std::fs::create_dir_all(&n.store).map_err(|e| format!("cannot create {}: {e}", n.store.display()))?;
        let mut cmd = Command::new(&self.bin);
        cmd.args(["-a", "127.0.0.1", "-p", &n.client_port.to_string(), "-m", &n.http_port.to_string()])
            .args(["--server_name", &n.name, "-js", "-sd"])
            .arg(&n.store)
            .arg("-l")
            .arg(&n.log);
        if clustered {
            cmd.args(["--cluster", &format!("nats://127.0.0.1:{}", n.cluster_port)]).args([
                "--cluster_name",
                &self.name,
                "--routes",
                &routes.join(","),
            ]);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.bin.display()))?;
        n.child = Some(child);
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn node_name(&self, i: usize) -> &str {
        &self.nodes[i].name
    }

    /// Every node's client URL, comma-separated (what a gateway's `--nats-url` takes).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(|n| format!("nats://127.0.0.1:{}", n.client_port)).collect::<Vec<_>>().join(",")
    }

    /// Node `i`'s monitoring base URL.
    pub fn monitor_url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.nodes[i].http_port)
    }

    /// SIGKILLs node `i`.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.nodes[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts node `i` again with its store, ports and name.
    pub fn restart(&mut self, i: usize) -> Result<(), String> {
        self.kill(i);
        self.spawn(i)
    }

    pub fn stop_all(&mut self) {
        for i in 0..self.nodes.len() {
            self.kill(i);
        }
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop_all();
    }
}

/// Waits until every node is healthy, or `limit` passes.
pub async fn wait_healthy(monitors: &[String], limit: Duration) -> Result<(), String> {
    for m in monitors {
        wait_node_healthy(m, monitors.len(), limit).await?;
    }
    Ok(())
}

/// Waits until the node at `monitor` answers `/healthz` with 200 and knows a meta leader of the
/// whole cluster of `size` (a restarted node: once it is current again), or `limit` passes.
pub async fn wait_node_healthy(monitor: &str, size: usize, limit: Duration) -> Result<(), String> {
    let end = Instant::now() + limit;
    loop {
        let last = match node_health(monitor, size).await {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        if Instant::now() > end {
            return Err(format!("the NATS node at {monitor} did not become healthy within {limit:?}: {last}"));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn node_health(base: &str, size: usize) -> Result<(), String> {
    let t = Duration::from_secs(2);
    match crate::http::get(&format!("{base}/healthz"), t).await {
        Ok((200, _)) => {}
        Ok((status, body)) => return Err(format!("/healthz {status}: {}", String::from_utf8_lossy(&body).trim())),
        Err(e) => return Err(format!("/healthz: {e}")),
    }
    if size <= 1 {
        return Ok(());
    }
    let (_, body) = crate::http::get(&format!("{base}/jsz"), t).await.map_err(|e| format!("/jsz: {e}"))?;
    let jsz: serde_json::Value = serde_json::from_slice(&body).map_err(|e| format!("/jsz: {e}"))?;
    let meta = &jsz["meta_cluster"];
    let leader = meta["leader"].as_str().unwrap_or_default();
    let known = meta["cluster_size"].as_u64().unwrap_or(0);
    if leader.is_empty() || known < size as u64 {
        return Err(format!("no meta leader yet (leader {leader:?}, cluster size {known})"));
    }
    Ok(())
}
