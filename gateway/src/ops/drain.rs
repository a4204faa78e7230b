//! Graceful shutdown for long-lived streams, on SIGTERM or SIGINT.
//!
//! The drain sequence:
//! 1. Readiness fails at once (`/readyz` 503) so load balancers stop sending new streams, and
//!    any stream that still arrives is answered 200 + a jittered `retry:` + close.
//! 2. Open streams are closed one at a time, in random order, spread evenly over
//!    `--drain-secs`, each with its own jittered `retry:` hint: their reconnects land on other
//!    pods as a trickle, not a stampede, and resume from their last event id (nothing is lost).
//!    A stream admitted before the drain began that registers after it is closed the same way
//!    as it registers ([`crate::access::admission::Permit::attach`]).
//! 3. Once every stream is closed (or after a short grace), the HTTP server stops and the
//!    process exits 0. A second signal exits at once.

use std::sync::Arc;
use std::time::Duration;

use actix_web::dev::ServerHandle;
use actix_web::rt::signal::unix::{SignalKind, signal};
use actix_web::rt::time::{Instant, sleep, sleep_until};
use rand::seq::SliceRandom;

use crate::access::admission::Admission;

/// How long closed streams get to flush their last frames before the server stops.
const FLUSH_GRACE: Duration = Duration::from_secs(2);

/// Waits for a termination signal, then drains. Runs on the HTTP server's system.
pub async fn on_signal(admission: Arc<Admission>, drain: Duration, server: ServerHandle) {
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot listen for signals; drain on shutdown is off");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    // A second signal means: stop now.
    actix_web::rt::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::warn!("second signal: exiting without finishing the drain");
        std::process::exit(1);
    });

    admission.start_draining();
    let mut streams = admission.open_streams();
    streams.shuffle(&mut rand::rng());
    tracing::info!(streams = streams.len(), drain_secs = drain.as_secs_f64(), "draining");
    let start = Instant::now();
    let n = streams.len().max(1) as u32;
    for (i, outbox) in streams.into_iter().enumerate() {
        sleep_until(start + drain * i as u32 / n).await;
        admission.close_for_drain(&outbox);
    }
    let deadline = Instant::now() + FLUSH_GRACE;
    while admission.connections() > 0 && Instant::now() < deadline {
        sleep(Duration::from_millis(20)).await;
    }
    tracing::info!(left = admission.connections(), "drained; stopping");
    server.stop(true).await;
}
