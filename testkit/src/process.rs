//! Child processes that end with the test, however it ends: killed (SIGKILL) on drop.

use std::process::{Child, Command};
use std::time::Duration;

use crate::wait::poll;

/// A running child process, killed on drop.
pub struct Process {
    child: Child,
}

impl Process {
    /// Spawns `command`; panics naming `what` when it cannot be started.
    pub fn spawn(command: &mut Command, what: &str) -> Process {
        let child = command.spawn().unwrap_or_else(|e| panic!("cannot start {what} ({command:?}): {e}"));
        Process { child }
    }

    /// The process as spawned, for its pipes.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited (and been reaped).
    pub fn exited(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(Some(_)))
    }

    /// Sends a signal (e.g. `libc::SIGTERM`) to the process.
    pub fn signal(&self, sig: i32) {
        // SAFETY: kill(2) on our own child's pid.
        unsafe {
            libc::kill(self.child.id() as i32, sig);
        }
    }

    /// Waits up to `wait` for the process to exit; its exit code, or `None` while it still runs
    /// (or when a signal ended it).
    pub fn wait_exit(&mut self, wait: Duration) -> Option<i32> {
        poll(wait, || self.child.try_wait().ok().flatten()).and_then(|status| status.code())
    }

    /// Stops it as an orchestrator would: SIGTERM, then SIGKILL if it lingers past 10 s.
    pub fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        if poll(Duration::from_secs(10), || self.child.try_wait().ok().flatten()).is_none() {
            self.kill();
        }
    }

    /// SIGKILL, and reaps it.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        self.kill();
    }
}
