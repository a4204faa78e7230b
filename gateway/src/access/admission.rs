//! Connection admission: the pod-wide and per-user limits, counted with RAII permits.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use parking_lot::Mutex;
use slab::Slab;

use crate::delivery::close_reason::CloseReason;
use crate::delivery::outbox::Outbox;
use crate::delivery::sse;
use crate::names::Name;

/// Pod-wide connection accounting, shared by every worker.
pub struct Admission {
    max_connections: usize,
    /// 0 = unlimited.
    max_per_user: usize,
    connections: AtomicUsize,
    per_user: Mutex<HashMap<Name, usize>>,
    draining: AtomicBool,
    /// The outbox of every open stream, for draining.
    streams: Mutex<Slab<Arc<Outbox>>>,
    /// The `retry:` a drained stream's client waits around (`--retry-ms`).
    retry_ms: u64,
}

/// Why a connection was not admitted.
#[derive(Debug, PartialEq, Eq)]
pub enum Refusal {
    /// The pod is at `--max-connections` (or draining): come back later, maybe elsewhere.
    Capacity,
    /// The user is at `--max-connections-per-user`.
    PerUser(usize),
}

/// One admitted connection. Dropping it gives the slot back.
pub struct Permit {
    admission: Arc<Admission>,
    user: Option<Name>,
    stream: Option<usize>,
}

impl Admission {
    pub fn new(max_connections: usize, max_per_user: usize, retry_ms: u64) -> Arc<Self> {
        Arc::new(Admission {
            max_connections,
            max_per_user,
            connections: AtomicUsize::new(0),
            per_user: Mutex::new(HashMap::new()),
            draining: AtomicBool::new(false),
            streams: Mutex::new(Slab::new()),
            retry_ms,
        })
    }

    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::Relaxed)
    }

    pub fn max_connections(&self) -> usize {
        self.max_connections
    }

    pub fn draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Admits a connection for `user`, or says why not.
    pub fn admit(self: &Arc<Self>, user: &Name) -> Result<Permit, Refusal> {
        if self.draining() {
            return Err(Refusal::Capacity);
        }
        let admitted = self
            .connections
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| (n < self.max_connections).then_some(n + 1));
        if admitted.is_err() {
            return Err(Refusal::Capacity);
        }
        if self.max_per_user == 0 {
            return Ok(Permit { admission: self.clone(), user: None, stream: None });
        }
        let mut per_user = self.per_user.lock();
        let count = per_user.entry(user.clone()).or_insert(0);
        if *count >= self.max_per_user {
            drop(per_user);
            self.connections.fetch_sub(1, Ordering::AcqRel);
            return Err(Refusal::PerUser(self.max_per_user));
        }
        *count += 1;
        Ok(Permit { admission: self.clone(), user: Some(user.clone()), stream: None })
    }

    /// Every open stream's outbox, to close them one by one while draining.
    pub fn open_streams(&self) -> Vec<Arc<Outbox>> {
        self.streams.lock().iter().map(|(_, o)| o.clone()).collect()
    }

    /// Closes a stream of a draining pod: its client comes back, maybe elsewhere, after a
    /// `retry:` jittered around `--retry-ms` (half to one and a half of it), so that the
    /// clients of a pod do not all come back at once.
    pub fn close_for_drain(&self, outbox: &Outbox) {
        let retry = rand::Rng::random_range(&mut rand::rng(), self.retry_ms / 2..=self.retry_ms + self.retry_ms / 2);
        outbox.close(CloseReason::Drain, Some(sse::retry_frame(retry)));
    }
}

impl Permit {
    /// Registers the stream this permit admitted, so a drain can close it. A stream admitted
    /// before the drain began that registers after it (it was still reading its first cursor,
    /// or its resume) is past the drain's list: it is closed as the drain closes streams.
    pub fn attach(&mut self, outbox: Arc<Outbox>) {
        let mut streams = self.admission.streams.lock();
        if self.admission.draining() {
            drop(streams);
            self.admission.close_for_drain(&outbox);
            return;
        }
        self.stream = Some(streams.insert(outbox));
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        if let Some(key) = self.stream {
            self.admission.streams.lock().try_remove(key);
        }
        if let Some(user) = &self.user {
            let mut per_user = self.admission.per_user.lock();
            if let Some(count) = per_user.get_mut(user) {
                *count -= 1;
                if *count == 0 {
                    per_user.remove(user);
                }
            }
        }
        self.admission.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pod_and_user_limits() {
        let a = Admission::new(3, 2, 1000);
        let u1 = Name::parse("u1").unwrap();
        let u2 = Name::parse("u2").unwrap();
        let p1 = a.admit(&u1).unwrap();
        let _p2 = a.admit(&u1).unwrap();
        assert_eq!(a.admit(&u1).err(), Some(Refusal::PerUser(2)));
        assert_eq!(a.connections(), 2);
        let _p3 = a.admit(&u2).unwrap();
        assert_eq!(a.admit(&u2).err(), Some(Refusal::Capacity));
        drop(p1);
        assert_eq!(a.connections(), 2);
        assert!(a.admit(&u1).is_ok());
        assert_eq!(a.connections(), 2, "the permit was dropped at once");
        a.start_draining();
        assert_eq!(a.admit(&u2).err(), Some(Refusal::Capacity));
    }

    /// A stream admitted just before the drain began, which registers after the drain took its
    /// list of open streams (it was reading its first cursor meanwhile), is closed as the
    /// drain closes streams (before: it stayed open, outside the drain's spreading, until the
    /// server stopped and cut it).
    #[test]
    fn a_stream_admitted_just_before_the_drain_is_closed_by_it() {
        let a = Admission::new(10, 0, 1000);
        let mut permit = a.admit(&Name::parse("u").unwrap()).unwrap();
        a.start_draining();
        let taken = a.open_streams();
        let outbox = Outbox::new(1 << 16, std::sync::Arc::new(crate::ops::metrics::Metrics::new()));
        permit.attach(outbox.clone());
        for o in taken {
            a.close_for_drain(&o);
        }
        assert_eq!(outbox.close_reason(), Some(CloseReason::Drain));
    }
}
