//! Publishing at a fixed rate: through core NATS (ephemeral, `herald.live.…`), JetStream
//! (durable, `herald.events.…`), Herald's `POST /v1/publish`, or any HTTP endpoint from a URL
//! and body template (Nchan's `/pub/{channel}`).
//!
//! Publish `k` (from 0) goes to target `k % n` with sequence `k / n + 1` (targeted), or to the
//! one channel with sequence `k + 1` (fanout); receivers derive what they should have seen from
//! the total alone. Each payload carries its send time: when the publisher issued it, on
//! schedule. An HTTP publish that then waits for its lane's connection (the server answering
//! the previous ones slowly) keeps that time, so the wait counts in the delivery's latency, as
//! it does for a NATS publish buffered in the client: a server that slows its publishers down
//! does not hide its queue in the load generator. HTTP publishes keep per-target order by
//! always sending one target's publishes over the same connection.

use std::cell::Cell;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Semaphore, mpsc};

use crate::http::{Conn, Target};
use crate::payload;

/// How publishes travel.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Via {
    /// Core NATS to `herald.live.…`: ephemeral, no ids.
    Nats,
    /// JetStream to `herald.events.…`: stored, with ids, resumable.
    Jetstream,
    /// `POST /v1/publish` on the targets (or the publish template in generic mode).
    Http,
}

/// Where publish `k` goes.
#[derive(Clone, Debug)]
pub struct Plan {
    pub fanout: bool,
    pub total: u64,
    pub channel: String,
    pub prefix: String,
    pub by_user: bool,
}

impl Plan {
    /// (target index, name, sequence).
    pub fn route(&self, k: u64) -> (u64, String, u64) {
        if self.fanout {
            (0, self.channel.clone(), k + 1)
        } else {
            let i = k % self.total.max(1);
            (i, format!("{}-{i}", self.prefix), k / self.total.max(1) + 1)
        }
    }
}

pub enum Publisher {
    Nats {
        client: async_nats::Client,
        prefix: String,
    },
    Jetstream {
        js: async_nats::jetstream::Context,
        prefix: String,
        in_flight: Arc<Semaphore>,
    },
    /// Each lane takes (publish number, issue time in Unix ns).
    Http {
        lanes: Vec<mpsc::UnboundedSender<(u64, u64)>>,
        pending: Rc<Cell<u64>>,
    },
}

/// What a publishing run did.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Published {
    pub published: u64,
    pub errors: u64,
    /// The most the publisher fell behind its schedule, in ms.
    pub behind_max_ms: f64,
}

pub struct HttpPublish {
    /// Herald mode: `POST {target}/v1/publish` with a JSON body; else the templates.
    pub herald: bool,
    pub targets: Vec<String>,
    pub key: Option<String>,
    pub durable: bool,
    pub url_template: String,
    pub body_template: String,
    pub method: String,
    pub headers: Vec<(String, String)>,
    pub lanes: usize,
}

/// A NATS connection for the run, with the credentials file (`--nats-creds`) when one is given.
pub async fn connect_nats(url: &str, creds: Option<&Path>) -> Result<async_nats::Client, String> {
    let mut options = async_nats::ConnectOptions::new();
    if let Some(path) = creds {
        options = options
            .credentials_file(path)
            .await
            .map_err(|e| format!("cannot use the NATS credentials in {}: {e}", path.display()))?;
    }
    options.connection_timeout(Duration::from_secs(5)).connect(url).await.map_err(|e| {
        let hint = match e.kind() {
            async_nats::ConnectErrorKind::AuthorizationViolation if creds.is_none() => {
                " (a NATS that requires credentials: --nats-creds)"
            }
            _ => "",
        };
        format!("cannot connect to NATS at {url}: {e}{hint}")
    })
}

pub struct Counters {
    pub sent: Rc<Cell<u64>>,
    pub errors: Rc<Cell<u64>>,
}

impl Publisher {
    pub async fn nats(url: &str, creds: Option<&Path>, prefix: &str, durable: bool) -> Result<Publisher, String> {
        let client = connect_nats(url, creds).await?;
        Ok(if durable {
            Publisher::Jetstream {
                js: async_nats::jetstream::new(client),
                prefix: prefix.to_owned(),
                in_flight: Arc::new(Semaphore::new(4096)),
            }
        } else {
            Publisher::Nats { client, prefix: prefix.to_owned() }
        })
    }

    /// Starts one task per lane, each with its own keep-alive connection(s).
    pub fn http(cfg: HttpPublish, plan: Plan, counters: &Counters) -> Publisher {
        let cfg = Rc::new(cfg);
        let pending = Rc::new(Cell::new(0));
        let lanes = (0..cfg.lanes.max(1))
            .map(|_| {
                let (tx, rx) = mpsc::unbounded_channel();
                let lane = http_lane(cfg.clone(), plan.clone(), rx, counters.errors.clone(), pending.clone());
                tokio::task::spawn_local(lane);
                tx
            })
            .collect();
        Publisher::Http { lanes, pending }
    }

    /// Publishes at `rate` per second for `duration`; `sent` counts as it goes (the resume
    /// scenario reads it at the kill).
    pub async fn run(&self, plan: &Plan, rate: f64, duration: Duration, counters: &Counters) -> Published {
        let start = Instant::now();
        let mut tick = tokio::time::interval(Duration::from_millis(1));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        let mut buf = Vec::with_capacity(64);
        let mut behind = Duration::ZERO;
        let total_due = (duration.as_secs_f64() * rate).floor() as u64;
        let mut k = 0u64;
        while k < total_due {
            tick.tick().await;
            let elapsed = start.elapsed();
            let due = ((elapsed.as_secs_f64() * rate).floor() as u64).min(total_due);
            if k < due {
                let scheduled = Duration::from_secs_f64(k as f64 / rate);
                behind = behind.max(elapsed.saturating_sub(scheduled));
            }
            while k < due {
                self.one(plan, k, &mut buf, counters).await;
                k += 1;
                counters.sent.set(k);
            }
            if elapsed > duration + Duration::from_secs(5) {
                break; // hopelessly behind: stop rather than overrun the run's bound
            }
        }
        self.finish(counters).await;
        Published { published: k, errors: counters.errors.get(), behind_max_ms: behind.as_secs_f64() * 1000.0 }
    }

    async fn one(&self, plan: &Plan, k: u64, buf: &mut Vec<u8>, counters: &Counters) {
        // The send time of every way of publishing: now, as the schedule issues it.
        let issued_ns = payload::now_ns();
        match self {
            Publisher::Nats { client, prefix } => {
                let (_, name, seq) = plan.route(k);
                payload::encode(buf, issued_ns, seq, 0);
                let subject = subject(prefix, "live", plan, &name);
                if client.publish(subject, bytes::Bytes::copy_from_slice(buf)).await.is_err() {
                    counters.errors.set(counters.errors.get() + 1);
                }
            }
            Publisher::Jetstream { js, prefix, in_flight } => {
                let (_, name, seq) = plan.route(k);
                payload::encode(buf, issued_ns, seq, 0);
                let subject = subject(prefix, "events", plan, &name);
                let permit = in_flight.clone().acquire_owned().await.ok();
                match js.publish(subject, bytes::Bytes::copy_from_slice(buf)).await {
                    Ok(ack) => {
                        let errors = counters.errors.clone();
                        tokio::task::spawn_local(async move {
                            if ack.await.is_err() {
                                errors.set(errors.get() + 1);
                            }
                            drop(permit);
                        });
                    }
                    Err(_) => counters.errors.set(counters.errors.get() + 1),
                }
            }
            Publisher::Http { lanes, pending } => {
                let (i, _, _) = plan.route(k);
                pending.set(pending.get() + 1);
                let _ = lanes[(i % lanes.len() as u64) as usize].send((k, issued_ns));
            }
        }
    }

    /// Waits for queued publishes and outstanding acknowledgements (bounded).
    async fn finish(&self, _counters: &Counters) {
        let end = Instant::now() + Duration::from_secs(10);
        match self {
            Publisher::Nats { client, .. } => {
                let _ = tokio::time::timeout(Duration::from_secs(10), client.flush()).await;
            }
            Publisher::Jetstream { in_flight, .. } => {
                while in_flight.available_permits() < 4096 && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
            Publisher::Http { pending, .. } => {
                while pending.get() > 0 && Instant::now() < end {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    }
}

fn subject(prefix: &str, kind: &str, plan: &Plan, name: &str) -> String {
    if plan.fanout || !plan.by_user {
        format!("{prefix}.{kind}.channel.{name}")
    } else {
        format!("{prefix}.{kind}.user.{name}")
    }
}

async fn http_lane(
    cfg: Rc<HttpPublish>,
    plan: Plan,
    mut rx: mpsc::UnboundedReceiver<(u64, u64)>,
    errors: Rc<Cell<u64>>,
    pending: Rc<Cell<u64>>,
) {
    let mut conns: Vec<Option<Conn>> = (0..cfg.targets.len().max(1)).map(|_| None).collect();
    let mut payload_buf = Vec::with_capacity(64);
    let auth = cfg.key.as_ref().map(|k| format!("Bearer {k}"));
    while let Some((k, issued_ns)) = rx.recv().await {
        let (i, name, seq) = plan.route(k);
        let t = (i as usize) % cfg.targets.len().max(1);
        payload::encode(&mut payload_buf, issued_ns, seq, 0);
        let payload = std::str::from_utf8(&payload_buf).unwrap_or("{}");
        let (url, body) = if cfg.herald {
            let field = if !plan.fanout && plan.by_user { "users" } else { "channels" };
            let body =
                format!(r#"{{"type":"loadtest","data":{payload},"{field}":["{name}"],"durable":{}}}"#, cfg.durable);
            (format!("{}/v1/publish", cfg.targets[t]), body)
        } else {
            let fill = |s: &str| {
                s.replace("{target}", &cfg.targets[t]).replace("{channel}", &name).replace("{i}", &i.to_string())
            };
            (fill(&cfg.url_template), fill(&cfg.body_template).replace("{payload}", payload))
        };
        let ok = match Target::parse(&url) {
            Ok(target) => {
                let conn = conns[t].get_or_insert_with(|| Conn::new(&target.authority));
                let mut headers: Vec<(&str, &str)> = Vec::new();
                if let Some(a) = &auth {
                    headers.push(("Authorization", a));
                }
                if cfg.herald {
                    headers.push(("Content-Type", "application/json"));
                }
                for (hk, hv) in &cfg.headers {
                    headers.push((hk, hv));
                }
                matches!(
                    conn.request(&cfg.method, &target, &headers, body.as_bytes(), Duration::from_secs(10)).await,
                    Ok((200..=299, _))
                )
            }
            Err(_) => false,
        };
        if !ok {
            errors.set(errors.get() + 1);
        }
        pending.set(pending.get().saturating_sub(1));
    }
}
