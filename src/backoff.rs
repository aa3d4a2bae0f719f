//! Exponential backoff with full jitter, as a plain state machine.

use std::time::Duration;

#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    failures: u32,
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            failures: 0,
        }
    }

    /// Consecutive failures so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    pub fn reset(&mut self) {
        self.failures = 0;
    }

    /// The ceiling of the next delay: `initial * 2^failures`, capped at `max`.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.failures.min(30)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }

    /// Records a failure and returns how long to wait: uniformly random in
    /// `[ceiling/2, ceiling]` (jitter keeps many gateways from retrying in step, the half
    /// floor keeps the delay growing).
    pub fn fail(&mut self, unit: f64) -> Duration {
        let ceiling = self.ceiling();
        self.failures = self.failures.saturating_add(1);
        let unit = unit.clamp(0.0, 1.0);
        ceiling.mul_f64(0.5 + unit / 2.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_caps() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        assert_eq!(b.fail(1.0), Duration::from_millis(100));
        assert_eq!(b.fail(1.0), Duration::from_millis(200));
        assert_eq!(b.fail(1.0), Duration::from_millis(400));
        assert_eq!(b.fail(0.0), Duration::from_millis(400));
        assert_eq!(b.fail(1.0), Duration::from_secs(1));
        for _ in 0..100 {
            assert!(b.fail(1.0) <= Duration::from_secs(1));
        }
        b.reset();
        assert_eq!(b.fail(1.0), Duration::from_millis(100));
    }
}
