//! The chaos publisher: durable events through `POST /v1/publish` at a steady rate, each with an
//! idempotency `id` of its own. An attempt that gets no answer, a 503 or any 5xx is retried with
//! the same `id` on the next gateway that is up, until one acknowledges it: the gateway then
//! answers the first store's ids and stores nothing new, so every publish is stored exactly once
//! however many attempts it took. Retries stop after [`RETRY_FOR`] (well inside the gateway's
//! default 2-minute de-duplication window); such a publish is `abandoned`, not acknowledged.
//!
//! Each publish runs as its own task, so one publish retrying through an outage does not hold
//! back the schedule. Order is not the publisher's business: a client's events are checked
//! against the stream's own order (their ids), which concurrent publishes cannot blur.

use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::json;

use super::Series;
use super::fleet::Fleet;
use super::rng::Rng;
use crate::http::{Conn, Target};
use crate::payload;

/// How long one publish is retried before it is given up.
pub const RETRY_FOR: Duration = Duration::from_secs(90);
/// How long one attempt may take (a gateway waiting out a stream leader election answers late).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(15);

/// Where one publish goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Targets {
    pub users: Vec<String>,
    pub channels: Vec<String>,
    pub broadcast: bool,
}

impl Targets {
    /// One entry per event the publish stores, in the order the gateway answers their ids:
    /// users, channels, broadcast.
    pub fn events(&self) -> Vec<EventTarget> {
        let mut out: Vec<EventTarget> = self.users.iter().map(|u| EventTarget::User(u.clone())).collect();
        out.extend(self.channels.iter().map(|c| EventTarget::Channel(c.clone())));
        if self.broadcast {
            out.push(EventTarget::Broadcast);
        }
        out
    }
}

/// Draws the targets of each publish: a user (45 %), a channel (35 %), everyone (10 %), or a
/// user and a channel at once (10 %: two events, two ids, one request).
pub fn draw(rng: &mut Rng, users: &[String], channels: &[String]) -> Targets {
    let user = |rng: &mut Rng| users[rng.below(users.len() as u64) as usize].clone();
    let channel = |rng: &mut Rng| channels[rng.below(channels.len() as u64) as usize].clone();
    let r = rng.unit();
    if r < 0.45 {
        Targets { users: vec![user(rng)], channels: vec![], broadcast: false }
    } else if r < 0.80 {
        Targets { users: vec![], channels: vec![channel(rng)], broadcast: false }
    } else if r < 0.90 {
        Targets { users: vec![], channels: vec![], broadcast: true }
    } else {
        Targets { users: vec![user(rng)], channels: vec![channel(rng)], broadcast: false }
    }
}

/// Whom one stored event is for.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventTarget {
    User(String),
    Channel(String),
    Broadcast,
}

/// An acknowledged publish.
#[derive(Clone, Debug, Serialize)]
pub struct Acked {
    pub seq: u64,
    pub targets: Targets,
    /// One per event, in [`Targets::events`] order.
    pub ids: Vec<String>,
    /// Seconds since publishing began: the first attempt, and the acknowledgement.
    pub sent_at_s: f64,
    pub acked_at_s: f64,
    pub attempts: u32,
    /// The gateway that acknowledged it.
    pub gateway: usize,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Stats {
    /// Publishes begun (the final marker included).
    pub published: u64,
    pub acknowledged: u64,
    /// Attempts after the first.
    pub retries: u64,
    pub status_503: u64,
    /// Attempts that got no answer: refused, reset, timed out.
    pub connection_errors: u64,
    /// Attempts answered with another 5xx.
    pub other_5xx: u64,
    /// Publishes refused with a 4xx (a bug in the harness or the gateway: never retried).
    pub rejected: u64,
    /// Publishes still unacknowledged after [`RETRY_FOR`].
    pub abandoned: u64,
    /// Acknowledgements whose number of ids is not the number of targets.
    pub id_count_mismatches: u64,
}

pub struct Publisher {
    pub fleet: Rc<Fleet>,
    auth: String,
    /// Prefix of every idempotency id: unique to the run.
    run_id: String,
    t0: Instant,
    series: Rc<Series>,
    pool: RefCell<Vec<Vec<Conn>>>,
    pub stats: RefCell<Stats>,
    pub acked: RefCell<Vec<Acked>>,
    /// 4xx answers, for the report.
    pub rejections: RefCell<Vec<String>>,
    in_flight: Cell<usize>,
}

impl Publisher {
    pub fn new(fleet: Rc<Fleet>, key: &str, run_id: &str, t0: Instant, series: Rc<Series>) -> Publisher {
        let pool = RefCell::new((0..fleet.len()).map(|_| Vec::new()).collect());
        Publisher {
            fleet,
            auth: format!("Bearer {key}"),
            run_id: run_id.to_owned(),
            t0,
            series,
            pool,
            stats: RefCell::default(),
            acked: RefCell::default(),
            rejections: RefCell::default(),
            in_flight: Cell::new(0),
        }
    }

    /// Publishes `rate` per second for `duration`, each to targets from `draw`; returns the
    /// number of publishes once the last is acknowledged (or abandoned). They are numbered from 1.
    pub async fn run(self: &Rc<Self>, rate: f64, duration: Duration, mut draw: impl FnMut() -> Targets) -> u64 {
        let start = Instant::now();
        let total = (duration.as_secs_f64() * rate).floor() as u64;
        let mut tick = tokio::time::interval(Duration::from_millis(5));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut k = 0u64;
        while k < total {
            tick.tick().await;
            let due = ((start.elapsed().as_secs_f64() * rate).floor() as u64).min(total);
            while k < due {
                k += 1;
                tokio::task::spawn_local(self.clone().publish(k, "chaos", draw()));
            }
        }
        self.drain().await;
        k
    }

    /// Waits until no publish is in flight (each is bounded by [`RETRY_FOR`]).
    pub async fn drain(&self) {
        while self.in_flight.get() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// One publish, retried until acknowledged; `true` when it was.
    pub async fn publish(self: Rc<Self>, seq: u64, event_type: &'static str, targets: Targets) -> bool {
        self.in_flight.set(self.in_flight.get() + 1);
        let ok = self.attempts(seq, event_type, targets).await;
        self.in_flight.set(self.in_flight.get() - 1);
        ok
    }

    async fn attempts(&self, seq: u64, event_type: &str, targets: Targets) -> bool {
        let sent = Instant::now();
        let mut data = Vec::with_capacity(64);
        payload::encode(&mut data, payload::now_ns(), seq, 0);
        let data: serde_json::Value = serde_json::from_slice(&data).expect("payloads are JSON");
        let body = json!({
            "type": event_type,
            "id": format!("{}-{seq}", self.run_id),
            "data": data,
            "users": targets.users,
            "channels": targets.channels,
            "broadcast": targets.broadcast,
        })
        .to_string();
        self.stats.borrow_mut().published += 1;
        self.series.at(sent, |s| s.published += 1);
        let mut g = seq as usize % self.fleet.len();
        let mut attempts = 0u32;
        loop {
            g = self.fleet.next_up(g);
            attempts += 1;
            if attempts > 1 {
                self.stats.borrow_mut().retries += 1;
                self.series.at(Instant::now(), |s| s.retries += 1);
            }
            let target = Target::parse(&format!("{}/v1/publish", self.fleet.urls[g])).expect("gateway URLs parse");
            let mut conn = self.pool.borrow_mut()[g].pop().unwrap_or_else(|| Conn::new(&target.authority));
            let headers = [("Authorization", self.auth.as_str()), ("Content-Type", "application/json")];
            let answer = conn.request("POST", &target, &headers, body.as_bytes(), ATTEMPT_TIMEOUT).await;
            match answer {
                Ok((200..=299, reply)) => {
                    self.pool.borrow_mut()[g].push(conn);
                    let ids: Vec<String> = serde_json::from_slice::<serde_json::Value>(&reply)
                        .ok()
                        .and_then(|v| serde_json::from_value(v["ids"].clone()).ok())
                        .unwrap_or_default();
                    let now = Instant::now();
                    let mut st = self.stats.borrow_mut();
                    st.acknowledged += 1;
                    if ids.len() != targets.events().len() {
                        st.id_count_mismatches += 1;
                    }
                    self.series.at(now, |s| s.acknowledged += 1);
                    self.acked.borrow_mut().push(Acked {
                        seq,
                        targets,
                        ids,
                        sent_at_s: self.secs(sent),
                        acked_at_s: self.secs(now),
                        attempts,
                        gateway: g,
                    });
                    return true;
                }
                Ok((503, _)) => {
                    self.pool.borrow_mut()[g].push(conn);
                    self.stats.borrow_mut().status_503 += 1;
                    self.series.at(Instant::now(), |s| s.publish_503 += 1);
                }
                Ok((500..=599, _)) => self.stats.borrow_mut().other_5xx += 1,
                Ok((status, reply)) => {
                    self.stats.borrow_mut().rejected += 1;
                    self.rejections.borrow_mut().push(format!(
                        "publish {seq}: {status} {}",
                        String::from_utf8_lossy(&reply).chars().take(300).collect::<String>()
                    ));
                    return false;
                }
                Err(_) => self.stats.borrow_mut().connection_errors += 1,
            }
            if sent.elapsed() > RETRY_FOR {
                self.stats.borrow_mut().abandoned += 1;
                return false;
            }
            // The next gateway, after a pause that grows with the attempts (an election takes
            // seconds; a dead gateway is skipped at once by the fleet's view).
            g += 1;
            tokio::time::sleep(Duration::from_millis(50 * u64::from(attempts.min(10)))).await;
        }
    }

    fn secs(&self, at: Instant) -> f64 {
        (at.saturating_duration_since(self.t0).as_secs_f64() * 1000.0).round() / 1000.0
    }
}
