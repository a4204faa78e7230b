//! A NATS cluster with JetStream on loopback, whose nodes can be killed, restarted, and cut off
//! from each other.
//!
//! Every route runs through a [`Proxy`] of its own, one per ordered pair of nodes: node `i`
//! reaches node `j` only through `proxies[i][j]`. Cutting every proxy to and from a node isolates
//! it from the others while its clients stay connected to it. Each node advertises a route
//! address nobody listens on, so no node can open a route around the proxies from what the
//! others gossip: the full mesh is the explicit one.
//!
//! Each node picks its own client, monitoring and route ports (`-1`); the proxies exist first
//! (a node's `--routes` name them), refuse connections until the node they lead to has
//! started, and are then pointed at its route port. A restarted node takes its old ports again.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use async_nats::jetstream;

use crate::http::try_http;
use crate::nats::{self, NatsUrl, log_tail};
use crate::ports::UNUSED;
use crate::process::Process;
use crate::proxy::Proxy;

pub struct Node {
    pub name: String,
    /// The client port (0 until the node first started).
    pub port: u16,
    pub monitor_port: u16,
    cluster_port: u16,
    /// The ports of the proxies that lead to the other nodes.
    routes: Vec<u16>,
    dir: tempfile::TempDir,
    server: Option<Process>,
}

impl Node {
    /// Starts the node: on ports of its own choosing the first time, on the same ones after.
    fn spawn(&mut self) {
        let port = |p: u16| if p == 0 { "-1".to_owned() } else { p.to_string() };
        let routes: Vec<String> = self.routes.iter().map(|p| format!("nats://127.0.0.1:{p}")).collect();
        let args: Vec<String> = [
            "-a",
            "127.0.0.1",
            "-p",
            &port(self.port),
            "-m",
            &port(self.monitor_port),
            "-js",
            "-sd",
            &self.dir.path().join("store").display().to_string(),
            "--server_name",
            &self.name,
            "--cluster_name",
            "herald-test",
            "--cluster",
            &format!("nats://127.0.0.1:{}", port(self.cluster_port)),
            "--cluster_advertise",
            &format!("127.0.0.1:{UNUSED}"),
            "--routes",
            &routes.join(","),
        ]
        .map(String::from)
        .into();
        let (server, ports) = nats::spawn(&args, self.dir.path());
        self.port = ports.client;
        self.monitor_port = ports.monitoring.expect("a monitoring port in the ports file");
        self.cluster_port = ports.cluster.expect("a route port in the ports file");
        self.server = Some(server);
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// The server's log, for a failing test to show.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }

    pub fn is_up(&self) -> bool {
        self.server.is_some()
    }

    async fn monitor(&self, path: &str) -> Option<serde_json::Value> {
        let addr = SocketAddr::from(([127, 0, 0, 1], self.monitor_port));
        let res = try_http(addr, "GET", path, &[], None).await.ok()?;
        serde_json::from_slice(&res.body).ok()
    }
}

impl NatsUrl for Node {
    fn nats_url(&self) -> String {
        self.url()
    }
}

pub struct NatsCluster {
    pub nodes: Vec<Node>,
    /// `proxies[i][j]`: the route from node `i` to node `j` (`None` on the diagonal).
    proxies: Vec<Vec<Option<Proxy>>>,
}

impl NatsCluster {
    /// Starts `size` nodes and waits until they form a cluster with a JetStream leader.
    pub async fn start(size: usize) -> NatsCluster {
        let mut proxies = Vec::new();
        for i in 0..size {
            let mut row = Vec::new();
            for j in 0..size {
                row.push(if i == j { None } else { Some(Proxy::unpointed().await) });
            }
            proxies.push(row);
        }
        let mut nodes: Vec<Node> = (0..size)
            .map(|i| Node {
                name: format!("n{i}"),
                port: 0,
                monitor_port: 0,
                cluster_port: 0,
                routes: proxies[i].iter().flatten().map(|p: &Proxy| p.port).collect(),
                dir: tempfile::tempdir().unwrap(),
                server: None,
            })
            .collect();
        for node in &mut nodes {
            node.spawn();
        }
        // Every node's route port is known now: the routes to it may go through.
        for row in &proxies {
            for (j, proxy) in row.iter().enumerate() {
                if let Some(proxy) = proxy {
                    proxy.point_to(nodes[j].cluster_port);
                }
            }
        }
        let cluster = NatsCluster { nodes, proxies };
        cluster.formed().await;
        cluster
    }

    /// Every node's client URL, comma-separated (as `--nats-url` takes them).
    pub fn urls(&self) -> String {
        self.nodes.iter().map(Node::url).collect::<Vec<_>>().join(",")
    }

    /// Waits until every running node routes to every other running node and agrees on a
    /// JetStream meta leader. A loaded machine running several clusters at once can take tens
    /// of seconds to elect one; past 60 s, the panic shows each node's state and log.
    pub async fn formed(&self) {
        let up: Vec<&Node> = self.nodes.iter().filter(|n| n.is_up()).collect();
        let end = Instant::now() + Duration::from_secs(60);
        loop {
            let mut state = Vec::new();
            for node in &up {
                let routes = node.monitor("/routez").await.map(|routez| {
                    let mut peers: Vec<String> = routez["routes"]
                        .as_array()
                        .map(|rs| rs.iter().filter_map(|r| r["remote_name"].as_str().map(str::to_owned)).collect())
                        .unwrap_or_default();
                    peers.sort();
                    peers.dedup();
                    peers.len()
                });
                let leader = node
                    .monitor("/jsz")
                    .await
                    .and_then(|jsz| jsz["meta_cluster"]["leader"].as_str().map(str::to_owned))
                    .filter(|l| !l.is_empty());
                state.push((node.name.as_str(), routes, leader));
            }
            if state.iter().all(|(_, routes, leader)| routes.is_some_and(|r| r + 1 >= up.len()) && leader.is_some()) {
                return;
            }
            if Instant::now() >= end {
                let logs: Vec<String> = up
                    .iter()
                    .map(|n| {
                        format!("--- {} (port {}):\n{}", n.name, n.port, log_tail(&n.dir.path().join("nats.log"), 15))
                    })
                    .collect();
                panic!(
                    "the NATS cluster did not form with a JetStream leader within 60 s; (node, routes, leader): {state:?}\n{}",
                    logs.join("\n")
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGKILLs node `i`, keeping its store for a restart.
    pub fn kill(&mut self, i: usize) {
        self.nodes[i].server = None;
    }

    /// Starts a killed node again on its ports and store, and waits until it is back in the
    /// cluster.
    pub async fn restart(&mut self, i: usize) {
        self.nodes[i].spawn();
        self.formed().await;
    }

    /// Cuts node `i` off from every other node (its clients stay connected to it).
    pub fn isolate(&self, i: usize) {
        for (a, row) in self.proxies.iter().enumerate() {
            for (b, proxy) in row.iter().enumerate() {
                if let Some(proxy) = proxy.as_ref().filter(|_| a == i || b == i) {
                    proxy.cut();
                }
            }
        }
    }

    /// Undoes [`NatsCluster::isolate`].
    pub fn heal(&self) {
        for proxy in self.proxies.iter().flatten().flatten() {
            proxy.restore();
        }
    }

    /// Cuts the routes between nodes `i` and `j` alone; [`NatsCluster::heal`] undoes it.
    pub fn cut_routes(&self, i: usize, j: usize) {
        for (a, b) in [(i, j), (j, i)] {
            self.proxies[a][b].as_ref().expect("a route between two nodes").cut();
        }
    }

    /// Slows the routes between nodes `i` and `j` by `delay` each way (zero ends it): what one
    /// account's clients subscribe to and publish reaches the other node late, while
    /// JetStream's own requests (the system account's route) go at full speed.
    pub fn delay_routes(&self, i: usize, j: usize, delay: Duration) {
        for (a, b) in [(i, j), (j, i)] {
            self.proxies[a][b].as_ref().expect("a route between two nodes").delay(delay);
        }
    }

    /// The node a client named `name` is connected to, if any.
    pub async fn node_of(&self, name: &str) -> Option<usize> {
        self.nodes_where(|n| n == name).await.first().copied()
    }

    /// The nodes (up) holding a connection whose name starts with `prefix`.
    pub async fn nodes_with(&self, prefix: &str) -> Vec<usize> {
        self.nodes_where(|n| n.starts_with(prefix)).await
    }

    /// The nodes (up) holding a connection whose name passes `wanted`, per their `/connz`.
    async fn nodes_where(&self, wanted: impl Fn(&str) -> bool) -> Vec<usize> {
        let mut found = Vec::new();
        for (i, node) in self.nodes.iter().enumerate().filter(|(_, n)| n.is_up()) {
            let Some(connz) = node.monitor("/connz").await else { continue };
            let conns = connz["connections"].as_array().cloned().unwrap_or_default();
            if conns.iter().any(|c| c["name"].as_str().is_some_and(&wanted)) {
                found.push(i);
            }
        }
        found
    }

    /// A client connected to every node.
    pub async fn client(&self) -> async_nats::Client {
        let urls: Vec<async_nats::ServerAddr> = self.nodes.iter().map(|n| n.url().parse().unwrap()).collect();
        async_nats::ConnectOptions::new().retry_on_initial_connect().connect(urls).await.unwrap()
    }

    /// The node leading the stream `name`, once it has a leader; with `all_current`, once
    /// every replica has caught up with it, too.
    ///
    /// A replica that was cut off catches up at the pace the machine allows: with the other
    /// cluster tests running beside, that took over 30 s once. On timeout the last answer is shown.
    pub async fn stream_leader(&self, js: &jetstream::Context, name: &str, all_current: bool) -> usize {
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last = String::from("no answer");
        loop {
            if let Ok(mut stream) = js.get_stream(name).await
                && let Ok(info) = stream.info().await
                && let Some(cluster) = info.cluster.clone()
            {
                let current = cluster.replicas.iter().all(|r| r.current && !r.offline);
                let leader = cluster.leader.as_deref().and_then(|l| self.nodes.iter().position(|n| n.name == l));
                if let Some(leader) = leader.filter(|_| current || !all_current) {
                    return leader;
                }
                last = format!("{cluster:?}");
            }
            assert!(
                Instant::now() < deadline,
                "the stream {name} has no leader{} after 90 s; last: {last}",
                if all_current { " with current replicas" } else { "" }
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl NatsUrl for NatsCluster {
    fn nats_url(&self) -> String {
        self.urls()
    }
}
