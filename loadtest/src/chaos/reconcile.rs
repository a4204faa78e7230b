//! Reconciliation: what each client should have received (every acknowledged event whose target
//! it subscribes to: its user, its channels, broadcast) against what it did receive, in order.
//!
//! - **lost**: an acknowledged event of the client's whose id it never received, unless a
//!   `missed` reset the client got covers it (below).
//! - **refetched**: an acknowledged event the client never received, at or below the id of a
//!   `missed` reset it got: an event lost in transit inside the NATS cluster came back to its
//!   gateway after a newer one had gone out on another of the client's subjects, and the reset
//!   told the client to refetch its state up to there (docs/reliability.md, guarantee 14). Never
//!   silent, and counted apart.
//! - **duplicate**: a delivery repeating an event id the client already had, or repeating the
//!   publish (its payload sequence) and target of one it had under another id: the second is
//!   what a publish stored twice looks like, however the ids came out.
//! - **out of order**: a delivery whose stream sequence (the id's `<seq>`) is below one the
//!   client already received. A client's durable events come in stream order across all its
//!   subjects and reconnects (docs/reliability.md), so any step back is a fault.
//!
//! Deliveries whose id no acknowledgement named (a publish abandoned after storing) are counted
//! apart, as `unacknowledged`: nobody was promised them.

use std::collections::{HashMap, HashSet};

use serde::Serialize;

use super::publisher::{Acked, EventTarget};

/// One event as a client received it.
#[derive(Clone, Debug)]
pub struct Delivery {
    pub id: String,
    /// The publish's sequence, from the payload.
    pub pub_seq: u64,
    pub target: EventTarget,
    /// Seconds since publishing began.
    pub at_s: f64,
    /// Which of the client's streams (0 the first) carried it.
    pub stream: u32,
}

/// An acknowledged event, as the publisher recorded it.
#[derive(Clone, Debug, Serialize)]
pub struct Expected {
    pub id: String,
    pub pub_seq: u64,
    pub target: EventTarget,
    pub acked_at_s: f64,
}

/// Every acknowledged event, by the target it was stored for.
pub fn expected_by_target(acked: &[Acked]) -> HashMap<EventTarget, Vec<Expected>> {
    let mut out: HashMap<EventTarget, Vec<Expected>> = HashMap::new();
    for a in acked {
        for (target, id) in a.targets.events().into_iter().zip(&a.ids) {
            out.entry(target.clone()).or_default().push(Expected {
                id: id.clone(),
                pub_seq: a.seq,
                target,
                acked_at_s: a.acked_at_s,
            });
        }
    }
    out
}

/// The stream sequence in an id `<epoch>-<seq>`.
pub fn stream_seq(id: &str) -> Option<(&str, u64)> {
    let (epoch, seq) = id.rsplit_once('-')?;
    Some((epoch, seq.parse().ok()?))
}

/// Most examples of each kind kept per client.
const EXAMPLES: usize = 10;

#[derive(Clone, Debug, Default, Serialize)]
pub struct ClientResult {
    pub expected: u64,
    pub delivered: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub unacknowledged: u64,
    pub refetched: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub lost_examples: Vec<Expected>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub duplicate_examples: Vec<Example>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub out_of_order_examples: Vec<Example>,
}

/// One delivery that broke a rule.
#[derive(Clone, Debug, Serialize)]
pub struct Example {
    pub id: String,
    pub pub_seq: u64,
    pub target: EventTarget,
    pub at_s: f64,
    pub stream: u32,
    /// The id (a duplicate: of the first copy; out of order: of the highest before it) and the
    /// stream that carried it.
    pub after_id: String,
    pub after_stream: u32,
}

/// Whether a `missed` reset up to `refetched` (an id's epoch and sequence) covers `id`.
fn covered(id: &str, refetched: Option<&(String, u64)>) -> bool {
    match (stream_seq(id), refetched) {
        (Some((epoch, seq)), Some((reset_epoch, up_to))) => epoch == reset_epoch && seq <= *up_to,
        _ => false,
    }
}

/// Reconciles one client subscribed to `targets` (its user, its channels and broadcast), which
/// got `missed` resets up to `refetched`, if any.
pub fn client(
    expected: &HashMap<EventTarget, Vec<Expected>>,
    targets: &[EventTarget],
    deliveries: &[Delivery],
    refetched: Option<&(String, u64)>,
) -> ClientResult {
    let mut r = ClientResult::default();
    let known: HashSet<&str> =
        targets.iter().flat_map(|t| expected.get(t).into_iter().flatten()).map(|e| e.id.as_str()).collect();
    let mut by_id: HashMap<&str, (u32, u64)> = HashMap::new();
    let mut by_publish: HashMap<(u64, &EventTarget), (&str, u32)> = HashMap::new();
    let mut highest: Option<(&str, u64, u32)> = None;
    for d in deliveries {
        let first_of_id = by_id.get(d.id.as_str()).copied();
        let first_of_publish = by_publish.get(&(d.pub_seq, &d.target)).copied();
        let example = |after_id: &str, after_stream: u32| Example {
            id: d.id.clone(),
            pub_seq: d.pub_seq,
            target: d.target.clone(),
            at_s: d.at_s,
            stream: d.stream,
            after_id: after_id.to_owned(),
            after_stream,
        };
        if let Some((stream, _)) = first_of_id {
            r.duplicates += 1;
            if r.duplicate_examples.len() < EXAMPLES {
                r.duplicate_examples.push(example(&d.id, stream));
            }
            continue;
        }
        if let Some((id, stream)) = first_of_publish {
            r.duplicates += 1;
            if r.duplicate_examples.len() < EXAMPLES {
                r.duplicate_examples.push(example(id, stream));
            }
            by_id.insert(&d.id, (d.stream, 0));
            continue;
        }
        let seq = stream_seq(&d.id).map_or(0, |(_, s)| s);
        by_id.insert(&d.id, (d.stream, seq));
        by_publish.insert((d.pub_seq, &d.target), (&d.id, d.stream));
        match highest {
            Some((id, top, stream)) if seq <= top => {
                r.out_of_order += 1;
                if r.out_of_order_examples.len() < EXAMPLES {
                    r.out_of_order_examples.push(example(id, stream));
                }
            }
            _ => highest = Some((&d.id, seq, d.stream)),
        }
        if known.contains(d.id.as_str()) {
            r.delivered += 1;
        } else {
            r.unacknowledged += 1;
        }
    }
    let mut lost = Vec::new();
    for e in targets.iter().flat_map(|t| expected.get(t).into_iter().flatten()) {
        r.expected += 1;
        if by_id.contains_key(e.id.as_str()) {
            continue;
        }
        if covered(&e.id, refetched) {
            r.refetched += 1;
        } else {
            lost.push(e);
        }
    }
    r.lost = lost.len() as u64;
    // The earliest losses, in the order they were published.
    lost.sort_by(|a, b| a.acked_at_s.total_cmp(&b.acked_at_s).then(a.pub_seq.cmp(&b.pub_seq)));
    r.lost_examples = lost.into_iter().take(EXAMPLES).cloned().collect();
    r
}

/// Whether every acknowledged event of the client has arrived, or is covered by a `missed`
/// reset it got (the end of the run waits for it).
pub fn complete(
    expected: &HashMap<EventTarget, Vec<Expected>>,
    targets: &[EventTarget],
    seen: &HashSet<String>,
    refetched: Option<&(String, u64)>,
) -> bool {
    targets
        .iter()
        .flat_map(|t| expected.get(t).into_iter().flatten())
        .all(|e| seen.contains(&e.id) || covered(&e.id, refetched))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::chaos::publisher::Targets;

    fn acked(seq: u64, targets: Targets, ids: &[&str]) -> Acked {
        Acked {
            seq,
            targets,
            ids: ids.iter().map(|s| s.to_string()).collect(),
            sent_at_s: 0.0,
            acked_at_s: seq as f64,
            attempts: 1,
            gateway: 0,
        }
    }

    fn d(id: &str, pub_seq: u64, target: EventTarget, stream: u32) -> Delivery {
        Delivery { id: id.into(), pub_seq, target, at_s: 0.0, stream }
    }

    #[test]
    fn finds_lost_duplicated_and_reordered_events() {
        let user = |u: &str| Targets { users: vec![u.into()], channels: vec![], broadcast: false };
        let both = Targets { users: vec!["u1".into()], channels: vec!["c1".into()], broadcast: false };
        let all = Targets { users: vec![], channels: vec![], broadcast: true };
        let acks = vec![
            acked(1, user("u1"), &["e-1"]),
            acked(2, both, &["e-2", "e-3"]),
            acked(3, all, &["e-4"]),
            acked(4, user("u2"), &["e-5"]),
            acked(5, user("u1"), &["e-6"]),
            acked(6, user("u1"), &["e-8"]),
        ];
        let exp = expected_by_target(&acks);
        let subs = [EventTarget::User("u1".into()), EventTarget::Channel("c1".into()), EventTarget::Broadcast];
        let (u1, c1) = (EventTarget::User("u1".into()), EventTarget::Channel("c1".into()));
        let perfect = [
            d("e-1", 1, u1.clone(), 0),
            d("e-2", 2, u1.clone(), 0),
            d("e-3", 2, c1.clone(), 1),
            d("e-4", 3, EventTarget::Broadcast, 1),
            d("e-6", 5, u1.clone(), 1),
            d("e-8", 6, u1.clone(), 1),
        ];
        let r = client(&exp, &subs, &perfect, None);
        assert_eq!((r.expected, r.delivered, r.lost, r.duplicates, r.out_of_order), (6, 6, 0, 0, 0), "{r:?}");
        let seen: HashSet<String> = perfect.iter().map(|d| d.id.clone()).collect();
        assert!(complete(&exp, &subs, &seen, None));

        let bad = [
            d("e-1", 1, u1.clone(), 0),
            d("e-3", 2, c1.clone(), 0),
            d("e-2", 2, u1.clone(), 0), // below e-3: out of order
            d("e-3", 2, c1.clone(), 1), // the same id again
            d("e-7", 5, u1.clone(), 1), // publish 5 stored twice: e-6 is lost, e-7 counts
            d("e-9", 5, u1.clone(), 1), // and a third copy: a duplicate by publish
            d("e-8", 6, u1.clone(), 1),
        ];
        let r = client(&exp, &subs, &bad, None);
        assert_eq!(r.duplicates, 2, "{r:?}");
        assert_eq!(r.out_of_order, 1, "{r:?}");
        assert_eq!(r.lost, 2, "e-4 and e-6: {r:?}");
        assert_eq!(r.unacknowledged, 1, "e-7: {r:?}");
        assert_eq!(r.lost_examples.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e-4", "e-6"]);
        assert_eq!(r.out_of_order_examples[0].after_id, "e-3");
        let seen: HashSet<String> = bad.iter().map(|d| d.id.clone()).collect();
        assert!(!complete(&exp, &subs, &seen, None));
        assert_eq!(stream_seq("dn6k5qv18fbf-4210"), Some(("dn6k5qv18fbf", 4210)));

        // A `missed` reset up to e-4 covers e-4, not e-6 (above it), nor an id of another epoch.
        let r = client(&exp, &subs, &bad, Some(&("e".to_owned(), 4)));
        assert_eq!((r.lost, r.refetched), (1, 1), "{r:?}");
        assert_eq!(r.lost_examples.iter().map(|e| e.id.as_str()).collect::<Vec<_>>(), ["e-6"]);
        assert!(!complete(&exp, &subs, &seen, Some(&("e".to_owned(), 4))));
        assert!(complete(&exp, &subs, &seen, Some(&("e".to_owned(), 6))));
        assert_eq!(client(&exp, &subs, &bad, Some(&("f".to_owned(), 9))).refetched, 0);
    }
}
