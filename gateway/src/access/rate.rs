//! A token bucket per user, for client events.
//!
//! Each user may spend `burst` tokens at once, refilled at `rate` per second. Buckets live in
//! one map; full buckets are dropped when the map is swept, so a user who stopped sending costs
//! nothing, and the map holds at most the users who sent within the last `burst / rate` seconds.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// How many buckets may accumulate before a sweep drops the full ones.
const SWEEP_AT: usize = 4096;

pub struct RateLimiter {
    rate: f64,
    burst: f64,
    buckets: Mutex<Buckets>,
}

struct Buckets {
    map: HashMap<String, Bucket>,
    sweep_at: usize,
}

#[derive(Clone, Copy)]
struct Bucket {
    tokens: f64,
    at: Instant,
}

impl RateLimiter {
    pub fn new(rate: u32, burst: u32) -> Self {
        RateLimiter {
            rate: f64::from(rate.max(1)),
            burst: f64::from(burst.max(1)),
            buckets: Mutex::new(Buckets { map: HashMap::new(), sweep_at: SWEEP_AT }),
        }
    }

    /// Takes one token of `user`'s bucket at `now`; when it is empty, says how long until the
    /// next token.
    pub fn take(&self, user: &str, now: Instant) -> Result<(), Duration> {
        let mut b = self.buckets.lock();
        if b.map.len() >= b.sweep_at {
            let (rate, burst) = (self.rate, self.burst);
            b.map.retain(|_, bucket| level(bucket, now, rate, burst) < burst);
            b.sweep_at = (b.map.len() * 2).max(SWEEP_AT);
        }
        let bucket = b.map.entry(user.to_owned()).or_insert(Bucket { tokens: self.burst, at: now });
        let tokens = level(bucket, now, self.rate, self.burst);
        if tokens >= 1.0 {
            *bucket = Bucket { tokens: tokens - 1.0, at: now };
            Ok(())
        } else {
            *bucket = Bucket { tokens, at: now };
            Err(Duration::from_secs_f64((1.0 - tokens) / self.rate))
        }
    }

    /// Buckets held now (for tests).
    pub fn len(&self) -> usize {
        self.buckets.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn level(bucket: &Bucket, now: Instant, rate: f64, burst: f64) -> f64 {
    let elapsed = now.saturating_duration_since(bucket.at).as_secs_f64();
    (bucket.tokens + elapsed * rate).min(burst)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_sustained_rate() {
        let limiter = RateLimiter::new(20, 40);
        let t0 = Instant::now();
        for _ in 0..40 {
            assert!(limiter.take("ana", t0).is_ok());
        }
        let wait = limiter.take("ana", t0).unwrap_err();
        assert_eq!(wait, Duration::from_millis(50), "one token every 1/20 s");
        // Another user has a bucket of their own.
        assert!(limiter.take("ben", t0).is_ok());
        // 100 ms later: two tokens.
        let t1 = t0 + Duration::from_millis(100);
        assert!(limiter.take("ana", t1).is_ok());
        assert!(limiter.take("ana", t1).is_ok());
        assert!(limiter.take("ana", t1).is_err());
        // Refills up to the burst, not beyond.
        let t2 = t1 + Duration::from_secs(60);
        for _ in 0..40 {
            assert!(limiter.take("ana", t2).is_ok());
        }
        assert!(limiter.take("ana", t2).is_err());
    }

    #[test]
    fn idle_full_buckets_are_swept() {
        let limiter = RateLimiter::new(10, 10);
        let t0 = Instant::now();
        for i in 0..SWEEP_AT {
            limiter.take(&format!("u{i}"), t0).unwrap();
        }
        assert_eq!(limiter.len(), SWEEP_AT);
        // A second later every bucket is full again: the next insertion sweeps them.
        limiter.take("late", t0 + Duration::from_secs(1)).unwrap();
        assert_eq!(limiter.len(), 1);
    }
}
