//! The ledger of a fault test: who each event is for, what each client is owed, and the check
//! that every client received exactly that, once each, in order.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::time::Duration;

use crate::follower::Follower;
use crate::tokens::token;
use crate::wait::eventually;

pub const CHANNELS: usize = 10;

/// Who gets event `n`: one user, one channel, or everyone.
pub fn subject_for(n: usize, clients: usize) -> (String, Option<usize>, Option<usize>) {
    match n % 10 {
        9 => ("herald.events.broadcast".into(), None, None),
        k if k % 2 == 0 => {
            let user = (n / 2) % clients;
            (format!("herald.events.user.f{user}"), Some(user), None)
        }
        _ => {
            let ch = n % CHANNELS;
            (format!("herald.events.channel.ch:{ch}"), None, Some(ch))
        }
    }
}

/// The targets of [`subject_for`] as the body fields of `POST /v1/publish`.
pub fn targets_json(user: Option<usize>, channel: Option<usize>) -> serde_json::Value {
    match (user, channel) {
        (Some(u), _) => serde_json::json!({ "users": [format!("f{u}")] }),
        (_, Some(c)) => serde_json::json!({ "channels": [format!("ch:{c}")] }),
        _ => serde_json::json!({ "broadcast": true }),
    }
}

#[derive(Default)]
pub struct Ledger {
    per_user: HashMap<usize, Vec<u64>>,
    per_channel: HashMap<usize, Vec<u64>>,
    broadcast: Vec<u64>,
    /// The last event, a broadcast every client receives after all the others: once a client
    /// has it, anything still missing was lost, and no duplicate can come later.
    pub marker: u64,
}

impl Ledger {
    pub fn record(&mut self, user: Option<usize>, channel: Option<usize>, seq: u64) {
        match (user, channel) {
            (Some(u), _) => self.per_user.entry(u).or_default().push(seq),
            (_, Some(c)) => self.per_channel.entry(c).or_default().push(seq),
            _ => self.broadcast.push(seq),
        }
    }

    /// What client `client`, which started at `cursor`, is owed, in order.
    pub fn expected(&self, client: usize, cursor: Option<u64>) -> Vec<u64> {
        let mut all: Vec<u64> = self.per_user.get(&client).cloned().unwrap_or_default();
        all.extend(self.per_channel.get(&(client % CHANNELS)).cloned().unwrap_or_default());
        all.extend(&self.broadcast);
        all.retain(|&seq| seq > cursor.unwrap_or(0));
        all.sort();
        all
    }
}

/// Missing and duplicated sequences of `got` against `expected`.
pub fn diff(expected: &[u64], got: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let have: HashSet<u64> = got.iter().copied().collect();
    let missing = expected.iter().copied().filter(|s| !have.contains(s)).collect();
    let mut counts = HashMap::new();
    for s in got {
        *counts.entry(*s).or_insert(0) += 1;
    }
    let mut dups: Vec<u64> = counts.into_iter().filter(|(_, n)| *n > 1).map(|(s, _)| s).collect();
    dups.sort();
    (missing, dups)
}

pub fn followers(count: usize, gateways: &[SocketAddr]) -> Vec<Follower> {
    (0..count).map(|i| follower(i, gateways)).collect()
}

/// Client `i`: user `f<i>`, on channel `ch:<i mod 10>`.
pub fn follower(i: usize, gateways: &[SocketAddr]) -> Follower {
    Follower::start(gateways.to_vec(), token(&format!("f{i}"), &["ch:*"], 3600), vec![format!("ch:{}", i % CHANNELS)])
}

pub async fn all_connected(fs: &[Follower]) {
    eventually("every client connected", Duration::from_secs(30), || async {
        fs.iter().all(|f| f.seen.lock().unwrap().connects >= 1)
    })
    .await;
}

/// Every client received every event after its first cursor exactly once, in order: checked
/// once each has the final marker, which comes after everything else on its stream. An event a
/// client lacks at or below a `missed` reset it got is no loss: the reset told it to refetch
/// its state up to there (an event lost in transit came back after a newer one on another of
/// its subjects). Those are counted and reported, never silent.
pub async fn assert_exactly_once(fs: &[Follower], ledger: &Ledger) {
    eventually("every client has the final marker", Duration::from_secs(60), || async {
        fs.iter().all(|f| f.seqs().contains(&ledger.marker))
    })
    .await;
    let (mut missing, mut dups, mut older, mut delivered, mut covered) = (0, 0, 0, 0, 0);
    let mut examples = Vec::new();
    for (i, f) in fs.iter().enumerate() {
        let got = f.seqs();
        let cursor = f.seen.lock().unwrap().first_cursor;
        let expected = ledger.expected(i, cursor);
        let (mut m, d) = diff(&expected, &got);
        let refetched = f.seen.lock().unwrap().refetched.iter().copied().max();
        let before = m.len();
        m.retain(|&seq| refetched.is_none_or(|r| seq > r));
        covered += before - m.len();
        if (!m.is_empty() || !d.is_empty()) && examples.len() < 10 {
            let seen = f.seen.lock().unwrap();
            examples.push(format!(
                "client {i}: missing {m:?}, duplicated {d:?}, cursor {cursor:?}, {} streams, resets {:?}",
                seen.connects, seen.resets
            ));
        }
        missing += m.len();
        dups += d.len();
        // Events at or below the client's first cursor: its cursor went backwards.
        older += got.iter().filter(|&&seq| seq <= cursor.unwrap_or(0)).count();
        delivered += got.len();
        let mut sorted = got.clone();
        sorted.sort();
        assert_eq!(got, sorted, "client {i} received events out of order");
        assert_eq!(got.last(), Some(&ledger.marker), "client {i}: nothing after the marker");
    }
    if covered > 0 {
        eprintln!("{covered} events lacked at or below a `missed` reset (refetched by their clients)");
    }
    assert_eq!(
        (missing, dups, older),
        (0, 0, 0),
        "missing, duplicated and older-than-the-cursor deliveries over {delivered} delivered: {examples:#?}"
    );
}
