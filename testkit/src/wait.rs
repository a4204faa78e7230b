//! Waiting for a condition with a deadline, never for a fixed time: a test goes on as soon as
//! what it waits for holds, and fails naming it when it never does.

use std::time::{Duration, Instant};

/// How often a condition is checked again.
const INTERVAL: Duration = Duration::from_millis(20);

/// Waits for `cond` to hold, polling, until `deadline` passes; then panics naming `what`.
pub async fn eventually<F, Fut>(what: &str, deadline: Duration, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let end = Instant::now() + deadline;
    loop {
        if cond().await {
            return;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for: {what}");
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Calls `attempt` until it gives a value, blocking the thread in between; `None` once
/// `deadline` has passed without one. For processes and files, outside an async runtime.
pub fn poll<T>(deadline: Duration, mut attempt: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + deadline;
    loop {
        if let Some(value) = attempt() {
            return Some(value);
        }
        if Instant::now() > end {
            return None;
        }
        std::thread::sleep(INTERVAL);
    }
}

/// [`poll`] for a condition: blocks until `cond` holds; panics naming `what` past `deadline`.
pub fn until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    if poll(deadline, || cond().then_some(())).is_none() {
        panic!("timed out after {deadline:?} waiting for: {what}");
    }
}
