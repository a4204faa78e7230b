//! Who decides the replica count: [`decide`], a pure function of the policy, the current replica
//! count, each pod's connection count (ready or not), and recent recommendations.
//!
//! 1. The recommendation is `ceil(total connections / target)`, clamped to `[min, max]`.
//! 2. Up: act on the lowest recommendation seen within the up-stabilization window (0 = now),
//!    adding at most `scaleUp.maxStep` pods.
//! 3. Down: only when the recommendations cover the whole down-stabilization window and even the
//!    highest of them is below the current count; then remove at most `scaleDown.maxStep` pods.
//!    A ready pod whose count is missing blocks scaling down: its connections are unknown.
//! 4. A current count outside `[min, max]` is brought inside first.

use serde::Serialize;

use crate::crd::{RealtimeGatewaySpec, ScalePolicy};

/// The parts of the spec that scaling reads.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub min: u32,
    pub max: u32,
    pub target: u32,
    pub up: ScalePolicy,
    pub down: ScalePolicy,
}

impl Policy {
    pub fn from_spec(spec: &RealtimeGatewaySpec) -> Policy {
        Policy {
            min: spec.replicas.min.max(1),
            max: spec.replicas.max.max(spec.replicas.min.max(1)),
            target: spec.target_connections_per_pod.max(1),
            up: spec.scale_up.clone(),
            down: spec.scale_down.clone(),
        }
    }
}

/// An earlier recommendation: `age_secs` ago, the recommended count was `desired`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recommendation {
    pub age_secs: u64,
    pub desired: u32,
}

/// Why the decision is not simply the recommendation (HPA's ScalingLimited).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub enum Limit {
    /// The load wants fewer than `min` pods.
    TooFewReplicas,
    /// The load wants more than `max` pods.
    TooManyReplicas,
    /// Scaling up by more than `scaleUp.maxStep` at once.
    ScaleUpLimit,
    /// Scaling down by more than `scaleDown.maxStep` at once.
    ScaleDownLimit,
}

/// The outcome of [`decide`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The replica count to run now.
    pub desired: u32,
    /// This round's recommendation (remember it for later rounds).
    pub recommendation: u32,
    /// Open connections across the pods that reported.
    pub connections: u64,
    pub reason: String,
    pub limit: Option<Limit>,
}

/// Decides the replica count. `connections` has one entry per pod asked (every ready pod, and
/// each pod not ready that answered), `None` where a ready pod's count could not be read.
pub fn decide(policy: &Policy, current: u32, connections: &[Option<u64>], history: &[Recommendation]) -> Decision {
    let total: u64 = connections.iter().flatten().sum();
    let missing = connections.iter().filter(|c| c.is_none()).count();
    let raw = total.div_ceil(u64::from(policy.target));
    let mut limit = None;
    let recommendation = if raw < u64::from(policy.min) {
        limit = Some(Limit::TooFewReplicas);
        policy.min
    } else if raw > u64::from(policy.max) {
        limit = Some(Limit::TooManyReplicas);
        policy.max
    } else {
        raw as u32
    };
    let decision = |desired: u32, reason: String, limit: Option<Limit>| Decision {
        desired,
        recommendation,
        connections: total,
        reason,
        limit,
    };
    let load = format!("{total} connections / {} per pod → {recommendation}", policy.target);

    if current < policy.min {
        return decision(policy.min, format!("below the minimum of {}: {load}", policy.min), limit);
    }
    if current > policy.max {
        return decision(policy.max, format!("above the maximum of {}: {load}", policy.max), limit);
    }

    if recommendation > current {
        let window = u64::from(policy.up.stabilization_seconds);
        let stabilized = history
            .iter()
            .filter(|r| r.age_secs <= window)
            .map(|r| r.desired)
            .chain([recommendation])
            .min()
            .unwrap_or(recommendation);
        if window > 0 && !covers(history, window) {
            return decision(current, format!("scale-up held: less than {window}s of recommendations ({load})"), limit);
        }
        if stabilized <= current {
            return decision(
                current,
                format!("scale-up held by the {window}s up-stabilization window ({load})"),
                limit,
            );
        }
        // Saturating: a step near u32::MAX wrapped around to fewer pods than there are.
        let step = current.saturating_add(policy.up.max_step).min(policy.max);
        if stabilized > step {
            return decision(
                step,
                format!("scaling up by the maximum step of {} ({load})", policy.up.max_step),
                Some(Limit::ScaleUpLimit),
            );
        }
        return decision(stabilized, format!("scaling up: {load}"), limit);
    }

    if recommendation < current {
        if missing > 0 {
            return decision(
                current,
                format!("scale-down blocked: {missing} ready pod(s) did not report their connections ({load})"),
                limit,
            );
        }
        let window = u64::from(policy.down.stabilization_seconds);
        if !covers(history, window) {
            return decision(
                current,
                format!("scale-down held: less than {window}s of recommendations ({load})"),
                limit,
            );
        }
        let stabilized = history
            .iter()
            .filter(|r| r.age_secs <= window)
            .map(|r| r.desired)
            .chain([recommendation])
            .max()
            .unwrap_or(recommendation);
        if stabilized >= current {
            return decision(
                current,
                format!("scale-down held: {stabilized} was recommended within the last {window}s ({load})"),
                limit,
            );
        }
        let step = current.saturating_sub(policy.down.max_step).max(policy.min);
        if stabilized < step {
            return decision(
                step,
                format!("scaling down by the maximum step of {} ({load})", policy.down.max_step),
                Some(Limit::ScaleDownLimit),
            );
        }
        return decision(stabilized, format!("scaling down: {load}"), limit);
    }

    decision(current, format!("steady: {load}"), limit)
}

/// Whether the recommendations reach back at least `window` seconds.
fn covers(history: &[Recommendation], window: u64) -> bool {
    window == 0 || history.iter().any(|r| r.age_secs >= window)
}

/// Parses `--history` of `herald-operator plan`: `s:d,…` (s seconds ago, d recommended).
pub fn parse_history(s: &str) -> Result<Vec<Recommendation>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (age, desired) = p.split_once(':').ok_or_else(|| format!("{p:?}: expected seconds:desired"))?;
            Ok(Recommendation {
                age_secs: age.trim().parse().map_err(|_| format!("{p:?}: seconds must be a number"))?,
                desired: desired.trim().parse().map_err(|_| format!("{p:?}: desired must be a number"))?,
            })
        })
        .collect()
}

/// Parses `--connections` of `herald-operator plan`: `c1,c2,…` with `?` for a missing count.
pub fn parse_connections(s: &str) -> Result<Vec<Option<u64>>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(|p| if p == "?" { Ok(None) } else { p.parse().map(Some).map_err(|_| format!("{p:?}: a count or ?")) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            min: 2,
            max: 10,
            target: 1000,
            up: ScalePolicy { stabilization_seconds: 0, max_step: 3 },
            down: ScalePolicy { stabilization_seconds: 300, max_step: 1 },
        }
    }

    fn h(pairs: &[(u64, u32)]) -> Vec<Recommendation> {
        pairs.iter().map(|&(age_secs, desired)| Recommendation { age_secs, desired }).collect()
    }

    #[test]
    fn table() {
        let p = policy();
        // (name, current, per-pod connections, history, desired, limit)
        type Case = (&'static str, u32, Vec<Option<u64>>, Vec<Recommendation>, u32, Option<Limit>);
        let cases: Vec<Case> = vec![
            ("steady", 3, vec![Some(900), Some(1000), Some(1000)], vec![], 3, None),
            ("scale up from load", 2, vec![Some(1500), Some(1400)], vec![], 3, None),
            ("bounded up-step", 2, vec![Some(4000), Some(4000)], vec![], 5, Some(Limit::ScaleUpLimit)),
            ("clamped at max", 9, vec![Some(6000), Some(6000)], vec![], 10, Some(Limit::TooManyReplicas)),
            ("already at max", 10, vec![Some(20000); 10], vec![], 10, Some(Limit::TooManyReplicas)),
            (
                "not before the down window",
                5,
                vec![Some(100); 5],
                h(&[(100, 1), (200, 2)]),
                5,
                Some(Limit::TooFewReplicas),
            ),
            ("down after the window", 5, vec![Some(700); 5], h(&[(301, 5), (200, 4), (10, 4)]), 4, None),
            (
                "a recent high recommendation holds",
                5,
                vec![Some(100); 5],
                h(&[(400, 2), (120, 5)]),
                5,
                Some(Limit::TooFewReplicas),
            ),
            (
                "one step down at a time",
                6,
                vec![Some(100); 6],
                h(&[(400, 2), (100, 2)]),
                5,
                Some(Limit::ScaleDownLimit),
            ),
            ("down clamps at min", 3, vec![Some(0); 3], h(&[(400, 2)]), 2, Some(Limit::TooFewReplicas)),
            (
                "missing count blocks scale-down",
                5,
                vec![Some(10), None, Some(10), Some(10), Some(10)],
                h(&[(400, 2)]),
                5,
                Some(Limit::TooFewReplicas),
            ),
            ("missing count does not block scale-up", 2, vec![Some(2900), None], vec![], 3, None),
            ("zero connections → min", 2, vec![Some(0), Some(0)], h(&[(400, 2)]), 2, Some(Limit::TooFewReplicas)),
            (
                "zero connections from above → steps to min",
                4,
                vec![Some(0); 4],
                h(&[(400, 2)]),
                3,
                Some(Limit::ScaleDownLimit),
            ),
            ("below min is raised", 1, vec![Some(0)], vec![], 2, Some(Limit::TooFewReplicas)),
            ("above max is lowered", 12, vec![Some(0); 12], vec![], 10, Some(Limit::TooFewReplicas)),
            ("no pods yet", 2, vec![], vec![], 2, Some(Limit::TooFewReplicas)),
        ];
        for (name, current, conns, history, want, want_limit) in cases {
            let d = decide(&p, current, &conns, &history);
            assert_eq!((d.desired, d.limit), (want, want_limit), "{name}: {}", d.reason);
        }
    }

    /// The schema bounds `maxStep` now, but a resource stored before it was bounded can still
    /// carry any u32 (before: `current + maxStep` overflowed, a panic in a debug build, and in
    /// a release build a wrap to 0 replicas).
    #[test]
    fn an_up_step_as_large_as_a_u32_stays_within_the_bounds() {
        let mut p = policy();
        p.up.max_step = u32::MAX;
        let d = decide(&p, 2, &[Some(2500), Some(2500)], &[]);
        assert_eq!((d.desired, d.limit), (5, None), "{}", d.reason);
    }

    #[test]
    fn up_stabilization_waits_for_a_sustained_rise() {
        let mut p = policy();
        p.up.stabilization_seconds = 60;
        let busy = vec![Some(3000), Some(3000)];
        assert_eq!(decide(&p, 2, &busy, &h(&[(30, 2)])).desired, 2, "not 60s of history yet");
        assert_eq!(decide(&p, 2, &busy, &h(&[(90, 2), (59, 2), (30, 6)])).desired, 2, "the window still saw 2");
        assert_eq!(decide(&p, 2, &busy, &h(&[(90, 2), (59, 6), (30, 6)])).desired, 5, "sustained: up, by one step");
    }

    #[test]
    fn parsing() {
        assert_eq!(parse_connections("10, ?,3").unwrap(), vec![Some(10), None, Some(3)]);
        assert!(parse_connections("x").is_err());
        assert_eq!(parse_history("400:2,10:5").unwrap(), h(&[(400, 2), (10, 5)]));
        assert!(parse_history("400").is_err());
        assert_eq!(parse_history("").unwrap(), vec![]);
    }
}
