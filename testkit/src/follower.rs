//! A client that follows its stream as the browser client does: on any end or error it
//! reconnects (to the next gateway when one is unreachable) with `Last-Event-ID`, and records
//! what it received for a fault test to check.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;

use crate::sse::{Sse, seq_of};

/// What a [`Follower`] has seen.
#[derive(Default, Debug)]
pub struct Seen {
    /// Sequences of the durable events received, in arrival order.
    pub seqs: Vec<u64>,
    pub connects: usize,
    /// When each stream that had been connected ended.
    pub ends: Vec<Instant>,
    pub resets: Vec<String>,
    /// The ids of its `missed` resets: it refetched its state up to each of them, so events at
    /// or below one that it lacks are no loss (see docs/protocol.md).
    pub refetched: Vec<u64>,
    pub last_id: Option<String>,
    /// The cursor its first stream opened with (`connected`'s id): it is owed every event
    /// after it.
    pub first_cursor: Option<u64>,
}

pub struct Follower {
    pub seen: Arc<Mutex<Seen>>,
    task: tokio::task::JoinHandle<()>,
}

impl Follower {
    pub fn start(gateways: Vec<SocketAddr>, token: String, channels: Vec<String>) -> Follower {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let state = seen.clone();
        let task = tokio::spawn(async move {
            let mut at = 0usize;
            loop {
                let addr = gateways[at % gateways.len()];
                let last = state.lock().unwrap().last_id.clone();
                let target = format!("/events?channels={}", channels.join(","));
                let auth = format!("Bearer {token}");
                let mut headers = vec![("Authorization", auth.as_str())];
                if let Some(last) = &last {
                    headers.push(("Last-Event-ID", last.as_str()));
                }
                let opened = match TcpStream::connect(addr).await {
                    Ok(probe) => {
                        drop(probe);
                        Sse::open(addr, &target, &headers).await.ok()
                    }
                    Err(_) => None,
                };
                let Some(mut sse) = opened else {
                    at += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                };
                let mut was_connected = false;
                while let Some(ev) = sse.next_within(Duration::from_secs(3600)).await {
                    was_connected |= ev.event == "connected";
                    let mut s = state.lock().unwrap();
                    match ev.event.as_str() {
                        "connected" => {
                            s.connects += 1;
                            if s.connects == 1 {
                                s.first_cursor = ev.id.as_deref().map(seq_of);
                            }
                        }
                        "reset" => {
                            let reason = ev.json()["reason"].as_str().unwrap_or("").to_owned();
                            if reason == "missed"
                                && let Some(id) = &ev.id
                            {
                                s.refetched.push(seq_of(id));
                            }
                            s.resets.push(reason);
                        }
                        _ => {
                            if let Some(id) = &ev.id {
                                s.seqs.push(seq_of(id));
                            }
                        }
                    }
                    // As EventSource does: any id moves the cursor (a new stream's `connected`
                    // carries its first one, a `reset` the history's head).
                    if let Some(id) = &ev.id {
                        s.last_id = Some(id.clone());
                    }
                }
                if was_connected {
                    state.lock().unwrap().ends.push(Instant::now());
                }
                // The stream ended: come back after a short, jittered pause, through the "load
                // balancer" (the next gateway), as a draining or dead pod takes no new streams.
                at += 1;
                tokio::time::sleep(Duration::from_millis(20 + rand_below(80))).await;
            }
        });
        Follower { seen, task }
    }

    /// The sequences received so far, in arrival order.
    pub fn seqs(&self) -> Vec<u64> {
        self.seen.lock().unwrap().seqs.clone()
    }
}

impl Drop for Follower {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn rand_below(n: u64) -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(Instant::now()) % n
}
