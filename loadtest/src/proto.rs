//! What a coordinator and its shares say to each other. A share is the part of a run that holds
//! connections: the coordinator's own process, a child process (`--processes`, over
//! stdin/stdout as JSON lines), or a remote worker (over NATS). All three speak these messages,
//! so one coordinator drives them all and merges their histograms.

use std::path::PathBuf;

use base64::Engine as _;
use hdrhistogram::Histogram;
use hdrhistogram::serialization::{Deserializer, Serializer as _, V2Serializer};
use serde::{Deserialize, Serialize};

/// Which scenario a run is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Scenario {
    Connect,
    Fanout,
    Targeted,
    Churn,
    Resume,
    Soak,
}

impl Scenario {
    pub fn name(self) -> &'static str {
        match self {
            Scenario::Connect => "connect",
            Scenario::Fanout => "fanout",
            Scenario::Targeted => "targeted",
            Scenario::Churn => "churn",
            Scenario::Resume => "resume",
            Scenario::Soak => "soak",
        }
    }

    /// Scenarios that publish and count deliveries.
    pub fn delivers(self) -> bool {
        matches!(self, Scenario::Fanout | Scenario::Targeted | Scenario::Resume | Scenario::Soak)
    }
}

/// One share of a run: clients `first..first+count` of `total`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Job {
    pub run_id: String,
    pub scenario: Scenario,
    pub share: usize,
    pub first: u64,
    pub count: u64,
    pub total: u64,
    /// Base URLs, without a trailing slash.
    pub targets: Vec<String>,
    /// SSE URL with `{target}`, `{channel}`, `{user}`, `{i}`.
    pub sse_template: String,
    /// Herald mode: wait for `event: connected`, send a token when a secret is configured.
    pub herald: bool,
    pub jwt_secret_file: Option<PathBuf>,
    /// One channel for everyone (fanout) rather than one per client.
    pub fanout: bool,
    pub channel: String,
    pub prefix: String,
    /// Connections opening at once, in this share.
    pub connect_concurrency: usize,
    /// New connections per second for this share (0: unlimited).
    pub connect_rate: f64,
    pub connect_timeout_secs: u64,
    /// Reconnect (to the next target, with the last event id) when a stream ends.
    pub reconnect: bool,
    /// Every client starts on the first target (resume: that is the one killed).
    pub start_on_first: bool,
    pub cycles: u32,
    pub grace_secs: u64,
}

impl Job {
    pub fn channel_of(&self, i: u64) -> String {
        if self.fanout { self.channel.clone() } else { format!("{}-{i}", self.prefix) }
    }

    pub fn user_of(&self, i: u64) -> String {
        format!("{}-{i}", self.prefix)
    }
}

/// Share → coordinator.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum FromShare {
    /// Every connection of the share has been attempted.
    Ready {
        share: usize,
        connected: u64,
        failed: u64,
    },
    /// Once a second.
    Sample {
        share: usize,
        unix_ms: u64,
        connections: u64,
        deliveries: u64,
        latency: Hist,
    },
    Done {
        share: usize,
        report: Box<ShareReport>,
    },
    Failed {
        share: usize,
        message: String,
    },
}

/// Coordinator → share.
#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ToShare {
    /// The first target was killed after `published` publishes.
    Killed { published: u64, unix_ns: u64 },
    /// Publishing is over: `published` publishes in total. Finish and report.
    Stop { published: u64 },
    /// Give up at once.
    Abort,
}

/// A share's final numbers.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct ShareReport {
    pub counters: Counters,
    pub latency: Hist,
    pub connect_latency: Hist,
    /// Time from the kill to each caught-up client's catching up (resume).
    pub catch_up: Hist,
    pub cpu_seconds: f64,
    pub wall_seconds: f64,
    /// Unix ms of the first connect attempt and of the last successful connect.
    pub connect_start_ms: u64,
    pub connect_end_ms: u64,
    /// CPU seconds the process had used by the last successful connect (since the share began).
    #[serde(default)]
    pub connect_cpu_seconds: f64,
    /// The first few events that never arrived, to look into a loss.
    #[serde(default)]
    pub missing_examples: Vec<MissingEvent>,
}

/// One event a client never received.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MissingEvent {
    /// The client's index in the run.
    pub client: u64,
    /// The sequence number of the event on the client's target.
    pub seq: u64,
    /// How many events were published to the client's target.
    pub expected: u64,
    /// Every event up to this sequence arrived.
    pub contiguous: u64,
    /// Resume: whether the client caught up with the events published before the kill.
    pub caught_up: bool,
}

/// Most missing events a report lists.
pub const MISSING_EXAMPLES: usize = 20;

/// Counts that add up across shares.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct Counters {
    pub expected: u64,
    pub delivered: u64,
    pub received: u64,
    pub missing: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub connect_attempts: u64,
    pub connected: u64,
    pub connect_failed: u64,
    pub disconnects: u64,
    pub reconnects: u64,
    pub resets: u64,
    pub caught_up: u64,
    pub not_caught_up: u64,
    /// Clients that had every expected event.
    pub complete_clients: u64,
}

impl Counters {
    pub fn add(&mut self, o: &Counters) {
        self.expected += o.expected;
        self.delivered += o.delivered;
        self.received += o.received;
        self.missing += o.missing;
        self.duplicates += o.duplicates;
        self.out_of_order += o.out_of_order;
        self.connect_attempts += o.connect_attempts;
        self.connected += o.connected;
        self.connect_failed += o.connect_failed;
        self.disconnects += o.disconnects;
        self.reconnects += o.reconnects;
        self.resets += o.resets;
        self.caught_up += o.caught_up;
        self.not_caught_up += o.not_caught_up;
        self.complete_clients += o.complete_clients;
    }
}

/// A latency histogram in microseconds (1 µs to 1 hour, 3 significant digits), serialized as
/// base64 of HdrHistogram's V2 format.
#[derive(Debug, Clone)]
pub struct Hist(pub Histogram<u64>);

pub const HIST_MAX_US: u64 = 3_600_000_000;

impl Default for Hist {
    fn default() -> Self {
        Hist(Histogram::new_with_bounds(1, HIST_MAX_US, 3).expect("valid histogram bounds"))
    }
}

impl Hist {
    pub fn record_us(&mut self, us: u64) {
        self.0.saturating_record(us.clamp(1, HIST_MAX_US));
    }

    pub fn merge(&mut self, other: &Hist) {
        // Same bounds on both sides, so this cannot fail.
        let _ = self.0.add(&other.0);
    }

    /// `{p50,p90,p99,p999,max,mean}` in milliseconds, and the count.
    pub fn summary_ms(&self) -> serde_json::Value {
        let h = &self.0;
        let ms = |us: u64| (us as f64 / 1000.0 * 1000.0).round() / 1000.0;
        if h.is_empty() {
            return serde_json::json!({"count": 0, "p50": null, "p90": null, "p99": null, "p999": null, "max": null, "mean": null});
        }
        serde_json::json!({
            "count": h.len(),
            "p50": ms(h.value_at_quantile(0.5)),
            "p90": ms(h.value_at_quantile(0.9)),
            "p99": ms(h.value_at_quantile(0.99)),
            "p999": ms(h.value_at_quantile(0.999)),
            "max": ms(h.max()),
            "mean": (h.mean() / 1000.0 * 1000.0).round() / 1000.0,
        })
    }
}

impl Serialize for Hist {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2Serializer::new().serialize(&self.0, &mut bytes).map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }
}

impl<'de> Deserialize<'de> for Hist {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD.decode(text).map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> =
            Deserializer::new().deserialize(&mut &bytes[..]).map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        let mut out = Hist::default();
        out.0.add(&h).map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_survive_serialization_and_merge() {
        let mut a = Hist::default();
        for us in 1..=1000 {
            a.record_us(us * 1000);
        }
        let json = serde_json::to_string(&a).unwrap();
        let mut b: Hist = serde_json::from_str(&json).unwrap();
        assert_eq!(b.0.len(), 1000);
        assert_eq!(b.0.value_at_quantile(0.99) / 1000, 990);
        b.merge(&a);
        assert_eq!(b.0.len(), 2000);
        let s = b.summary_ms();
        assert!((s["p50"].as_f64().unwrap() - 500.0).abs() < 1.0, "{s}");
        assert!((s["max"].as_f64().unwrap() - 1000.0).abs() < 1.0, "{s}");
    }

    #[test]
    fn messages_round_trip_as_json_lines() {
        let m = FromShare::Sample { share: 2, unix_ms: 5, connections: 7, deliveries: 9, latency: Hist::default() };
        let line = serde_json::to_string(&m).unwrap();
        assert!(!line.contains('\n'));
        assert!(matches!(serde_json::from_str(&line).unwrap(), FromShare::Sample { share: 2, .. }));
    }
}
