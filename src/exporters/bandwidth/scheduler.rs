//! The gateway-wide export bandwidth: which export may send next, and when.
//!
//! Rule (documented in README): a token bucket refills at `max_export_bandwidth` bytes/s (one
//! second of burst). When exports wait for it, the one with the best *effective priority* goes
//! first, where effective priority = stream priority − whole `aging` periods waited (1 s by
//! default). Ties go to the one waiting longest. A priority-10 export behind a saturating
//! priority-1 stream therefore waits at most about nine aging periods plus one batch: high
//! priority is served first, low priority is never starved. A request larger than the bucket is
//! granted when the bucket is full and drives it negative, so the average rate holds.
//!
//! An export is between two requests most of the time (it is sending, fsyncing, reading the
//! queue). So that priority means something under load, an export that asked within the last
//! `HOLD` (100 ms) still counts as contending: a lower effective priority waits for it. An
//! export that goes quiet releases the bandwidth after `HOLD`.
//!
//! Plain state machine: time comes in as microseconds, no tokio, tested below. The byte budget
//! is the exports' one token bucket ([`RateLimit`]).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::exporters::rate::RateLimit;

/// How long an export counts as contending after its last request.
pub const HOLD: Duration = Duration::from_millis(100);

#[derive(Debug, Clone)]
struct Waiter {
    ticket: u64,
    export: u64,
    priority: u8,
    bytes: u64,
    since_us: u64,
    /// Arrival order: ties go to the request that came first.
    order: u64,
}

#[derive(Debug)]
pub struct BandwidthScheduler {
    /// The byte budget; the scheduler's microseconds are counted from `origin`.
    bucket: RateLimit,
    origin: Instant,
    aging_us: u64,
    waiters: Vec<Waiter>,
    arrivals: u64,
    /// Export -> (priority, time of its last request).
    recent: HashMap<u64, (u8, u64)>,
}

impl BandwidthScheduler {
    pub fn new(bytes_per_sec: u64, aging: Duration, now_us: u64) -> BandwidthScheduler {
        let origin = Instant::now();
        let mut bucket = RateLimit::new(bytes_per_sec);
        bucket.wait(origin + Duration::from_micros(now_us), 0);
        BandwidthScheduler {
            bucket,
            origin,
            aging_us: aging.as_micros().max(1) as u64,
            waiters: Vec::new(),
            arrivals: 0,
            recent: HashMap::new(),
        }
    }

    /// `export` asks to send `bytes`; `ticket` names this request.
    pub fn request(&mut self, ticket: u64, export: u64, priority: u8, bytes: u64, now_us: u64) {
        self.arrivals += 1;
        self.recent.insert(export, (priority, now_us));
        self.waiters.push(Waiter {
            ticket,
            export,
            priority,
            bytes,
            since_us: now_us,
            order: self.arrivals,
        });
    }

    /// Forgets a request whose export went away.
    pub fn cancel(&mut self, ticket: u64) {
        self.waiters.retain(|w| w.ticket != ticket);
    }

    pub fn waiting(&self) -> usize {
        self.waiters.len()
    }

    /// The effective priority of a waiter: lower is served first.
    fn effective(&self, w: &Waiter, now_us: u64) -> i64 {
        w.priority as i64 - (now_us.saturating_sub(w.since_us) / self.aging_us) as i64
    }

    /// Grants the next request if the bucket allows it now: `Ok(ticket)`. Otherwise
    /// `Err(wait)`: ask again after `wait`. `None` when nobody waits.
    pub fn poll(&mut self, now_us: u64) -> Option<Result<u64, Duration>> {
        if self.waiters.is_empty() {
            return None;
        }
        let best = (0..self.waiters.len())
            .min_by_key(|&i| {
                let w = &self.waiters[i];
                (self.effective(w, now_us), w.order)
            })
            .unwrap_or(0);
        // A better-priority export that asked recently (and is busy sending) holds it back.
        let hold_us = HOLD.as_micros() as u64;
        self.recent
            .retain(|_, (_, at)| now_us.saturating_sub(*at) < hold_us);
        let beff = self.effective(&self.waiters[best], now_us);
        let held = self.recent.iter().any(|(export, (p, _))| {
            (*p as i64) < beff && !self.waiters.iter().any(|w| w.export == *export)
        });
        if held {
            return Some(Err(Duration::from_millis(2)));
        }
        let now = self.origin + Duration::from_micros(now_us);
        let wait = self.bucket.take(now, self.waiters[best].bytes);
        if wait.is_zero() {
            Some(Ok(self.waiters.swap_remove(best).ticket))
        } else {
            // Re-check at least every aging period: another waiter may overtake.
            Some(Err(wait.min(Duration::from_micros(self.aging_us))))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the scheduler on a virtual clock. Each export asks again `think_us` after each
    /// grant (the time it spends sending); its ticket is its index.
    fn simulate_with(exports: &[(u8, u64)], rate: u64, secs: u64, think_us: u64) -> Vec<u64> {
        let mut s = BandwidthScheduler::new(rate, Duration::from_secs(1), 0);
        let mut sent = vec![0u64; exports.len()];
        let mut again: Vec<Option<u64>> = vec![None; exports.len()];
        for (i, (p, b)) in exports.iter().enumerate() {
            s.request(i as u64, i as u64, *p, *b, 0);
        }
        let mut now = 0u64;
        while now < secs * 1_000_000 {
            for (i, at) in again.iter_mut().enumerate() {
                if at.is_some_and(|t| t <= now) {
                    let (p, b) = exports[i];
                    s.request(i as u64, i as u64, p, b, now);
                    *at = None;
                }
            }
            match s.poll(now) {
                Some(Ok(t)) => {
                    sent[t as usize] += exports[t as usize].1;
                    again[t as usize] = Some(now + think_us);
                }
                Some(Err(wait)) => now += (wait.as_micros() as u64).clamp(1, 1_000),
                None => now += 1_000,
            }
        }
        sent
    }

    fn simulate(exports: &[(u8, u64)], rate: u64, secs: u64) -> Vec<u64> {
        simulate_with(exports, rate, secs, 0)
    }

    #[test]
    fn a_busy_high_priority_export_keeps_precedence_between_its_requests() {
        // Each export spends 20 ms sending between requests; the bucket could serve both.
        let sent = simulate_with(&[(1, 10_000), (10, 10_000)], 200_000, 3, 20_000);
        assert!(
            sent[0] > sent[1] * 5,
            "priority 1 should not be undercut while it sends: {sent:?}"
        );
    }

    #[test]
    fn an_idle_high_priority_export_releases_the_bandwidth() {
        // The high export sends once and goes quiet; the low one gets the rest.
        let mut s = BandwidthScheduler::new(100_000, Duration::from_secs(1), 0);
        s.request(1, 1, 1, 10_000, 0);
        assert_eq!(s.poll(0), Some(Ok(1)));
        s.request(2, 2, 10, 10_000, 0);
        assert!(
            matches!(s.poll(1_000), Some(Err(_))),
            "held while priority 1 may come back"
        );
        assert_eq!(s.poll(HOLD.as_micros() as u64 + 1_000), Some(Ok(2)));
    }

    #[test]
    fn high_priority_goes_first_under_contention() {
        let sent = simulate(&[(1, 10_000), (10, 10_000)], 100_000, 5);
        assert!(
            sent[0] > sent[1] * 3,
            "priority 1 should get most of the bandwidth: {sent:?}"
        );
    }

    #[test]
    fn low_priority_is_never_starved() {
        let sent = simulate(&[(1, 10_000), (1, 10_000), (10, 10_000)], 100_000, 60);
        assert!(
            sent[2] > 0,
            "priority 10 must be served within a minute: {sent:?}"
        );
    }

    #[test]
    fn rate_holds_on_average() {
        let sent = simulate(&[(5, 50_000)], 100_000, 10);
        let total: u64 = sent.iter().sum();
        // 10 s at 100 kB/s plus the one-second burst.
        assert!((1_000_000..=1_150_000).contains(&total), "sent {total}");
    }

    #[test]
    fn equal_priorities_share() {
        let sent = simulate(&[(3, 10_000), (3, 10_000)], 100_000, 10);
        let diff = sent[0].abs_diff(sent[1]);
        assert!(
            diff <= 20_000,
            "equal priorities should share evenly: {sent:?}"
        );
    }
}
