//! Token bucket: the MQTT publish-rate and byte-rate limits (AWS IoT Core: 100 publishes/s and
//! 512 KiB/s per connection) and the adaptive send rate of a throttled export
//! ([`super::throttle`]). Pure: the caller passes the time.

use std::time::{Duration, Instant};

#[derive(Debug, Clone)]
pub struct RateLimit {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl RateLimit {
    /// `per_second` units per second, up to one second's worth in a burst.
    pub fn new(per_second: u64) -> RateLimit {
        let per_second = per_second.max(1) as f64;
        RateLimit {
            per_second,
            burst: per_second,
            tokens: per_second,
            last: None,
        }
    }

    /// Changes the rate (and the burst, one second's worth); tokens above it are dropped.
    pub fn set_rate(&mut self, per_second: f64) {
        self.per_second = per_second.max(f64::MIN_POSITIVE);
        self.burst = self.per_second;
        self.tokens = self.tokens.min(self.burst);
    }

    pub fn rate(&self) -> f64 {
        self.per_second
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let add = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + add).min(self.burst);
        }
        self.last = Some(now);
    }

    /// How long to wait before `cost` units may go (zero: now). A cost above the burst may
    /// go once the bucket is full; it runs the bucket into debt.
    pub fn wait(&mut self, now: Instant, cost: u64) -> Duration {
        self.refill(now);
        let need = (cost as f64).min(self.burst);
        if self.tokens >= need {
            Duration::ZERO
        } else {
            Duration::from_secs_f64((need - self.tokens) / self.per_second)
                .max(Duration::from_micros(100))
        }
    }

    /// Takes `cost` units (after [`RateLimit::wait`] said zero).
    pub fn consume(&mut self, cost: u64) {
        self.tokens -= cost as f64;
    }

    /// `wait`, and when it is zero, `consume`.
    pub fn take(&mut self, now: Instant, cost: u64) -> Duration {
        let w = self.wait(now, cost);
        if w.is_zero() {
            self.consume(cost);
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sustains_the_rate_after_a_burst() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(100);
        for _ in 0..100 {
            assert_eq!(r.take(t0, 1), Duration::ZERO);
        }
        let wait = r.take(t0, 1);
        assert!(wait >= Duration::from_millis(9) && wait <= Duration::from_millis(11));
        // Over 10 simulated seconds, no more than burst + 10 * rate go through.
        let mut now = t0;
        let mut sent = 100;
        let end = t0 + Duration::from_secs(10);
        while now < end {
            let w = r.take(now, 1);
            if w.is_zero() {
                sent += 1;
            } else {
                now += w;
            }
        }
        assert!((1090..=1101).contains(&sent), "{sent}");
    }

    #[test]
    fn large_costs_go_into_debt() {
        let t0 = Instant::now();
        let mut r = RateLimit::new(1000);
        assert_eq!(r.take(t0, 5000), Duration::ZERO);
        let w = r.take(t0, 1);
        assert!(w >= Duration::from_secs(4), "{w:?}");
    }
}
