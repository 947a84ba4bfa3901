//! Token-bucket rate limits keyed by client address or account, with a bounded key table.

use std::collections::HashMap;
use std::sync::Mutex;

/// Distinct keys one limiter tracks; past this the fullest buckets are forgotten.
const KEYS_MAX: usize = 100_000;

#[derive(Debug)]
pub struct RateLimiter {
    burst: f64,
    refill_per_ms: f64,
    buckets: Mutex<HashMap<String, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated_at_ms: i64,
}

impl RateLimiter {
    /// Allows `per_minute` events a minute, in bursts of up to `per_minute`.
    pub fn per_minute(per_minute: u32) -> RateLimiter {
        assert!(
            per_minute > 0,
            "a rate limit of zero would refuse everything"
        );
        RateLimiter {
            burst: f64::from(per_minute),
            refill_per_ms: f64::from(per_minute) / 60_000.0,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token for `key`, or says how many seconds until one is available.
    pub fn check(&self, key: &str, now_ms: i64) -> Result<(), u64> {
        let mut buckets = self.buckets.lock().expect("rate limiter lock");
        if buckets.len() >= KEYS_MAX && !buckets.contains_key(key) {
            self.forget_full_buckets(&mut buckets, now_ms);
        }
        let bucket = buckets.entry(key.to_owned()).or_insert(Bucket {
            tokens: self.burst,
            updated_at_ms: now_ms,
        });
        let elapsed_ms = (now_ms - bucket.updated_at_ms).max(0) as f64;
        bucket.tokens = (bucket.tokens + elapsed_ms * self.refill_per_ms).min(self.burst);
        bucket.updated_at_ms = now_ms;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            return Ok(());
        }
        let wait_ms = (1.0 - bucket.tokens) / self.refill_per_ms;
        Err((wait_ms / 1000.0).ceil() as u64)
    }

    fn forget_full_buckets(&self, buckets: &mut HashMap<String, Bucket>, now_ms: i64) {
        let refill_all_ms = self.burst / self.refill_per_ms;
        buckets.retain(|_, b| ((now_ms - b.updated_at_ms) as f64) < refill_all_ms);
        if buckets.len() >= KEYS_MAX {
            // Everyone is active: forget all rather than grow without bound.
            buckets.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_is_refused_then_recovers() {
        let limiter = RateLimiter::per_minute(3);
        for _ in 0..3 {
            assert_eq!(limiter.check("a", 0), Ok(()));
        }
        let retry_after_s = limiter.check("a", 0).unwrap_err();
        assert_eq!(retry_after_s, 20);
        assert_eq!(limiter.check("b", 0), Ok(()), "keys are independent");
        assert_eq!(limiter.check("a", 20_000), Ok(()));
    }
}
