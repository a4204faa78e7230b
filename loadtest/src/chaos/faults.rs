//! The fault schedule and its driver. The schedule is drawn from the seed before the run: fault
//! `k` is due at `k × every` seconds into publishing (jittered by up to a quarter of `every`),
//! kills a gateway or a NATS node (alternating, the first kind drawn; one kind only when the
//! other cannot be killed safely), picks its target at random and keeps it down for 1–3 s.
//!
//! The driver runs faults one at a time: a fault is over when its process is back and healthy
//! (a gateway ready, a NATS node current in its cluster), and the next waits for that. So at
//! most one NATS node is ever down (a quorum of three stays) and at most one gateway (one of two
//! stays), however late a restart makes the schedule.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cluster::{self, Cluster};
use super::fleet::{self, Fleet, Gateways};
use super::rng::Rng;
use crate::payload;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    Gateway,
    Nats,
}

/// One fault as scheduled.
#[derive(Clone, Debug, PartialEq)]
pub struct Planned {
    /// Seconds into publishing.
    pub at: f64,
    pub kind: Kind,
    pub index: usize,
    /// Seconds between the kill and the restart.
    pub down: f64,
}

/// One fault as it happened; times in seconds since publishing began, and Unix ms.
#[derive(Clone, Debug, Serialize)]
pub struct Fault {
    pub kind: Kind,
    pub target: String,
    pub index: usize,
    pub planned_at_s: f64,
    pub killed_at_s: f64,
    pub killed_unix_ms: u64,
    pub restarted_at_s: Option<f64>,
    pub restarted_unix_ms: Option<u64>,
    /// When the restarted process was ready (gateway) or current in its cluster (NATS).
    pub healthy_at_s: Option<f64>,
    pub error: Option<String>,
}

/// The schedule for a run of `duration` seconds. The last fault is due at least `every / 2`
/// before the end, so that it is over before publishing stops.
pub fn schedule(seed: u64, duration: f64, every: f64, gateways: usize, nats_nodes: usize) -> Vec<Planned> {
    let mut rng = Rng::new(seed, 1);
    let kinds: Vec<Kind> = [(Kind::Gateway, gateways >= 2), (Kind::Nats, nats_nodes >= 3)]
        .into_iter()
        .filter_map(|(k, ok)| ok.then_some(k))
        .collect();
    if kinds.is_empty() {
        return Vec::new();
    }
    let first = rng.below(kinds.len() as u64) as usize;
    let mut out = Vec::new();
    for k in 1.. {
        let at = k as f64 * every + rng.range(-every / 4.0, every / 4.0);
        if at > duration - every / 2.0 {
            break;
        }
        let kind = kinds[(first + k - 1) % kinds.len()];
        let index = match kind {
            Kind::Gateway => rng.below(gateways as u64) as usize,
            Kind::Nats => rng.below(nats_nodes as u64) as usize,
        };
        let down = rng.range(1.0, 3.0).min(every / 2.0);
        out.push(Planned { at, kind, index, down });
    }
    out
}

/// What the driver acts on.
pub struct Targets {
    pub gateways: Rc<RefCell<Gateways>>,
    pub fleet: Rc<Fleet>,
    pub cluster: Rc<RefCell<Cluster>>,
}

/// Runs `plan` from `t0` (the start of publishing), recording into `faults`, until the plan is
/// done. Each fault ends with its process healthy again (or with its error recorded).
pub async fn drive(plan: Vec<Planned>, t0: Instant, to: Targets, faults: Rc<RefCell<Vec<Fault>>>) {
    let secs = |at: Instant| (at.saturating_duration_since(t0).as_secs_f64() * 1000.0).round() / 1000.0;
    for p in plan {
        tokio::time::sleep_until((t0 + Duration::from_secs_f64(p.at)).into()).await;
        let killed = Instant::now();
        let target = match p.kind {
            Kind::Gateway => format!("gateway-{}", p.index),
            Kind::Nats => to.cluster.borrow().node_name(p.index).to_owned(),
        };
        match p.kind {
            Kind::Gateway => {
                to.fleet.set_up(p.index, false);
                to.gateways.borrow_mut().kill(p.index);
            }
            Kind::Nats => to.cluster.borrow_mut().kill(p.index),
        }
        let at = faults.borrow().len();
        faults.borrow_mut().push(Fault {
            kind: p.kind,
            target,
            index: p.index,
            planned_at_s: (p.at * 1000.0).round() / 1000.0,
            killed_at_s: secs(killed),
            killed_unix_ms: payload::now_ns() / 1_000_000,
            restarted_at_s: None,
            restarted_unix_ms: None,
            healthy_at_s: None,
            error: None,
        });
        // The outage itself: how long the process stays dead is part of the fault.
        tokio::time::sleep(Duration::from_secs_f64(p.down)).await;
        let restarted = Instant::now();
        let restarted_ms = payload::now_ns() / 1_000_000;
        let result = match p.kind {
            Kind::Gateway => fleet::restart(&to.gateways, p.index).await.map(|()| to.fleet.set_up(p.index, true)),
            Kind::Nats => {
                let started = to.cluster.borrow_mut().restart(p.index);
                let (monitor, size) = {
                    let c = to.cluster.borrow();
                    (c.monitor_url(p.index), c.len())
                };
                match started {
                    Ok(()) => cluster::wait_node_healthy(&monitor, size, Duration::from_secs(60)).await,
                    Err(e) => Err(e),
                }
            }
        };
        let mut f = faults.borrow_mut();
        let f = &mut f[at];
        f.restarted_at_s = Some(secs(restarted));
        f.restarted_unix_ms = Some(restarted_ms);
        match result {
            Ok(()) => f.healthy_at_s = Some(secs(Instant::now())),
            Err(e) => f.error = Some(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_is_seeded_alternates_and_ends_before_the_run() {
        let a = schedule(42, 120.0, 10.0, 2, 3);
        assert_eq!(a, schedule(42, 120.0, 10.0, 2, 3), "one seed, one schedule");
        assert_ne!(a, schedule(43, 120.0, 10.0, 2, 3));
        assert!(a.len() >= 10, "{a:?}");
        assert!(a.windows(2).all(|w| w[0].kind != w[1].kind), "alternating: {a:?}");
        assert!(a.iter().all(|p| p.at > 0.0 && p.at <= 115.0 && (1.0..=3.0).contains(&p.down)));
        assert!(a.iter().all(|p| match p.kind {
            Kind::Gateway => p.index < 2,
            Kind::Nats => p.index < 3,
        }));
    }

    #[test]
    fn only_safe_faults_are_scheduled() {
        assert!(schedule(1, 60.0, 5.0, 1, 3).iter().all(|p| p.kind == Kind::Nats));
        assert!(schedule(1, 60.0, 5.0, 3, 1).iter().all(|p| p.kind == Kind::Gateway));
        assert!(schedule(1, 60.0, 5.0, 1, 2).is_empty());
    }
}
