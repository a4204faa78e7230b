//! Runs `herald-loadtest` as a user would, bounded in time, and reads its JSON summary.

use std::process::{Command, Stdio};
use std::time::Duration;

use crate::bins;

/// How a run ended: its exit code, its JSON summary (stdout; `Null` when it printed none) and
/// its stderr.
pub struct Run {
    pub code: i32,
    pub summary: serde_json::Value,
    pub stderr: String,
}

/// Runs `herald-loadtest args…`; panics with its stderr when it runs over `limit` (it is
/// killed then).
pub fn run(args: &[&str], limit: Duration) -> Run {
    let child = Command::new(bins::loadtest())
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn herald-loadtest");
    let pid = child.id();
    // Both pipes are read to their end on a thread of their own, so that a long summary never
    // blocks the run on a full pipe while the limit is watched here.
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    let out = match rx.recv_timeout(limit) {
        Ok(out) => out.expect("herald-loadtest's output"),
        Err(_) => {
            // SAFETY: kill(2) on our own child's pid, not yet reaped (the thread reaps it).
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
            let out = rx.recv().unwrap().expect("herald-loadtest's output");
            panic!("herald-loadtest ran over {limit:?}: {}", String::from_utf8_lossy(&out.stderr));
        }
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    Run {
        code: out.status.code().unwrap_or(-1),
        summary: serde_json::from_str(&stdout).unwrap_or(serde_json::Value::Null),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Runs the harness and insists that it succeeded; returns its summary.
pub fn run_ok(args: &[&str], limit: Duration) -> serde_json::Value {
    let run = run(args, limit);
    assert_eq!(run.code, 0, "herald-loadtest {args:?} failed: {}", run.stderr);
    run.summary
}
