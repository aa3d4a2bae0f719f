//! The adaptive send rate of one export: how a throttled export slows down to the rate its
//! destination accepts, and speeds up again, without ever stalling (a plain state machine,
//! tested without I/O; the driver feeds it outcomes and asks it before each send).
//!
//! Throttling is not failure. A Kinesis stream that refuses part of every PutRecords call
//! (a hot shard, a shard at 1,000 records/s) still accepts the rest; a backoff that grows on
//! "some entry failed" waits longer and longer and the export collapses (measured: 8 samples/s
//! against 1,000/s produced). Instead, per one-second window:
//! - **multiplicative decrease**: a window with throttled samples sets the limit to
//!   [`HEADROOM`] times the rate the destination accepted in it, but never below half the
//!   limit (at most halving per window) nor above the limit plus one step;
//! - **additive increase**: a window without throttling raises the limit by one step (a tenth
//!   of the limit set at the last decrease);
//! - after [`RELEASE_AFTER`] without throttling the limit is lifted altogether.
//!
//! Random partial failures (some entries of every call, independent of the rate) leave the
//! limit above what is sent, so they cost only their retries; real over-capacity brings the
//! limit down to about `HEADROOM` times the accepted rate in one or two windows. The unit is
//! the queue's records (samples), whatever the packing.

use std::time::{Duration, Instant};

use super::rate::RateLimit;

/// The limit after a throttled window, relative to the rate accepted in it (a whole export:
/// its throttled entries may be random, from any of its shards).
pub const HEADROOM: f64 = 1.5;
/// The same for one Kinesis shard ([`SendRate::for_shard`]): there throttling means the
/// shard is at its capacity, so the limit stays close to what it accepts.
pub const SHARD_HEADROOM: f64 = 1.1;
/// How long one measurement window lasts.
pub const WINDOW: Duration = Duration::from_secs(1);
/// Without throttling for this long, the limit is lifted.
pub const RELEASE_AFTER: Duration = Duration::from_secs(60);

#[derive(Debug, Clone)]
pub struct SendRate {
    /// The token bucket while limited; `None`: unlimited.
    limit: Option<RateLimit>,
    /// Additive step, records/s.
    step: f64,
    /// The lowest limit, records/s: about one batch per ten seconds, so a long-throttled
    /// export still probes.
    floor: f64,
    window_start: Option<Instant>,
    sent: u64,
    accepted: u64,
    throttled: u64,
    last_throttled: Option<Instant>,
    /// Throttled records per second over the last complete window (for status and metrics).
    throttled_rate: f64,
    /// Records accepted per second over the last complete window.
    accepted_rate: f64,
    headroom: f64,
}

impl SendRate {
    /// `batch` is the export's batch size (records): it sets the floor of the limit.
    pub fn new(batch: usize) -> SendRate {
        SendRate {
            limit: None,
            step: 0.0,
            floor: (batch as f64 / 10.0).max(1.0),
            window_start: None,
            sent: 0,
            accepted: 0,
            throttled: 0,
            last_throttled: None,
            throttled_rate: 0.0,
            accepted_rate: 0.0,
            headroom: HEADROOM,
        }
    }

    /// The rate of one shard of a stream: [`SHARD_HEADROOM`] instead of [`HEADROOM`].
    pub fn for_shard(batch: usize) -> SendRate {
        SendRate {
            headroom: SHARD_HEADROOM,
            ..SendRate::new(batch)
        }
    }

    /// The current limit in records/s (`None`: unlimited).
    pub fn limit(&self) -> Option<f64> {
        self.limit.as_ref().map(RateLimit::rate)
    }

    /// Throttled records per second in the last complete window.
    pub fn throttled_rate(&self) -> f64 {
        self.throttled_rate
    }

    /// Accepted records per second in the last complete window.
    pub fn accepted_rate(&self) -> f64 {
        self.accepted_rate
    }

    /// How long to wait before `records` may be sent (zero: now, and they are counted).
    pub fn take(&mut self, now: Instant, records: usize) -> Duration {
        self.roll(now);
        match &mut self.limit {
            Some(bucket) => bucket.take(now, records as u64),
            None => Duration::ZERO,
        }
    }

    /// A send finished: `accepted` records were taken by the destination, `throttled` were
    /// refused for throttling (whatever else happened to the rest).
    pub fn outcome(&mut self, now: Instant, accepted: usize, throttled: usize) {
        self.roll(now);
        self.sent += (accepted + throttled) as u64;
        self.accepted += accepted as u64;
        self.throttled += throttled as u64;
        if throttled > 0 {
            self.last_throttled = Some(now);
        }
    }

    /// Closes the window when it is over and adapts the limit.
    fn roll(&mut self, now: Instant) {
        let start = *self.window_start.get_or_insert(now);
        let elapsed = now.saturating_duration_since(start);
        if elapsed < WINDOW {
            return;
        }
        let secs = elapsed.as_secs_f64();
        let accepted = self.accepted as f64 / secs;
        let sent = self.sent as f64 / secs;
        self.accepted_rate = accepted;
        self.throttled_rate = self.throttled as f64 / secs;
        if self.throttled > 0 {
            let current = self.limit().unwrap_or(sent).max(self.floor);
            let step = if self.limit.is_some() { self.step } else { 0.0 };
            let next = (accepted * self.headroom)
                .min(current + step)
                .max(current / 2.0)
                .max(self.floor);
            if next < current || self.limit.is_none() {
                self.step = (next / 10.0).max(1.0);
            }
            self.set(now, next);
        } else if let Some(limit) = self.limit() {
            if self
                .last_throttled
                .is_some_and(|t| now.saturating_duration_since(t) >= RELEASE_AFTER)
            {
                self.limit = None;
            } else if self.sent > 0 {
                self.set(now, limit + self.step);
            }
        }
        self.window_start = Some(now);
        self.sent = 0;
        self.accepted = 0;
        self.throttled = 0;
    }

    fn set(&mut self, now: Instant, per_second: f64) {
        match &mut self.limit {
            Some(bucket) => bucket.set_rate(per_second),
            None => {
                let mut bucket = RateLimit::new(1);
                bucket.set_rate(per_second);
                // Start from a full bucket at `now`: no stall right after the decrease.
                let _ = bucket.wait(now, 0);
                self.limit = Some(bucket);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A destination that accepts `capacity` records/s and throttles the rest, plus a random
    /// share `random_fail` of every call; the export offers `offered` records/s (retries
    /// included, it always has more waiting). Returns the accepted rate over the last 20 s.
    fn simulate(capacity: f64, random_fail: f64, offered: f64, secs: u64) -> (f64, SendRate) {
        let t0 = Instant::now();
        let mut rate = SendRate::new(500);
        let tick = Duration::from_millis(50);
        let calls_per_tick = offered * tick.as_secs_f64();
        let mut accepted_total = 0.0;
        let mut carry_budget = 0.0;
        let mut now = t0;
        let end = t0 + Duration::from_secs(secs);
        let mut seed = 7u64;
        while now < end {
            // The destination's budget refills per tick.
            carry_budget = (carry_budget + capacity * tick.as_secs_f64()).min(capacity);
            let want = calls_per_tick as usize;
            let mut sendable = 0;
            for _ in 0..want.div_ceil(100) {
                if rate.take(now, 100).is_zero() {
                    sendable += 100;
                }
            }
            let mut accepted = 0usize;
            let mut throttled = 0usize;
            for _ in 0..sendable {
                seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                let r = (seed >> 33) as f64 / (1u64 << 31) as f64;
                if r < random_fail || carry_budget < 1.0 {
                    throttled += 1;
                } else {
                    carry_budget -= 1.0;
                    accepted += 1;
                }
            }
            rate.outcome(now, accepted, throttled);
            if now >= end - Duration::from_secs(20) {
                accepted_total += accepted as f64;
            }
            now += tick;
        }
        (accepted_total / 20.0, rate)
    }

    #[test]
    fn random_partial_failures_do_not_collapse_the_rate() {
        // 20 % of every call fails whatever the rate; no capacity limit.
        let (accepted, rate) = simulate(f64::INFINITY, 0.2, 10_000.0, 60);
        assert!(
            accepted >= 0.75 * 10_000.0,
            "accepted {accepted}/s of 10,000/s offered; limit {:?}",
            rate.limit()
        );
    }

    #[test]
    fn over_capacity_settles_near_the_accepted_rate() {
        // The stream takes 1,000 records/s; the export could send 20,000/s.
        let (accepted, rate) = simulate(1_000.0, 0.0, 20_000.0, 60);
        assert!(accepted >= 900.0, "accepted {accepted}/s");
        let limit = rate.limit().expect("limited");
        assert!(
            (1_000.0..=2_000.0).contains(&limit),
            "limit {limit}/s should sit a little above the 1,000/s accepted"
        );
        assert!(rate.throttled_rate() < 1_500.0, "{}", rate.throttled_rate());
    }

    #[test]
    fn limit_lifts_after_a_quiet_minute_and_grows_meanwhile() {
        let t0 = Instant::now();
        let mut r = SendRate::new(500);
        r.take(t0, 100);
        r.outcome(t0, 100, 900);
        let t1 = t0 + WINDOW;
        assert!(r.take(t1, 0).is_zero());
        let first = r.limit().expect("throttled: limited");
        let mut now = t1;
        for _ in 0..10 {
            now += WINDOW;
            r.outcome(now, 10, 0);
        }
        now += WINDOW;
        r.take(now, 0);
        let later = r.limit().expect("still limited");
        assert!(later > first, "additive increase: {first} -> {later}");
        now += RELEASE_AFTER;
        r.outcome(now, 10, 0);
        r.take(now + WINDOW, 0);
        assert_eq!(r.limit(), None);
    }

    #[test]
    fn total_throttling_halves_per_window_down_to_the_floor() {
        let t0 = Instant::now();
        let mut r = SendRate::new(500);
        let mut now = t0;
        r.outcome(now, 0, 8_000);
        let mut limits = Vec::new();
        for _ in 0..12 {
            now += WINDOW;
            r.take(now, 0);
            limits.push(r.limit().expect("limited"));
            r.outcome(now, 0, 10);
        }
        assert_eq!(limits[0], 4_000.0, "first window: half of what was sent");
        assert_eq!(limits[1], 2_000.0);
        assert_eq!(*limits.last().expect("some"), 50.0, "floor: batch / 10");
    }
}
