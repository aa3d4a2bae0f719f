//! Per-shard send rates of a Kinesis export whose partition key is a template: the key tells
//! the shard, so a hot shard (one key at its 1,000 records/s) slows only its own records
//! instead of the whole export. A plain state machine (the caller passes the time), shared by
//! the export's handles.
//!
//! The shard of a key is learnt from Kinesis's answers, so no ListShards call (and no IAM
//! permission for it) is needed: an accepted entry carries its `ShardId`, a throttled one says
//! "Rate exceeded for shard shardId-... in stream ...". A key not seen yet is sent and learnt;
//! after a reshard a key's new shard is learnt from the next answer. Each shard has its own
//! [`SendRate`] (the export's adaptive rate rules, per shard, with less headroom: a throttled
//! shard is at its capacity). With random partition keys the
//! records spread evenly over the shards and the export-wide rate does the job.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::exporters::throttle::SendRate;

/// Keys remembered at most; beyond it the map starts over (a template with more distinct keys
/// than this is close to random keys, which the export-wide rate handles).
pub const MAX_KEYS: usize = 50_000;

#[derive(Debug)]
struct Shard {
    id: String,
    rate: SendRate,
}

#[derive(Debug)]
pub struct ShardRates {
    keys: HashMap<String, usize>,
    shards: Vec<Shard>,
    /// The export's batch size: the floor of each shard's limit (see [`SendRate::new`]).
    batch: usize,
}

/// The shard a Kinesis per-entry error message names
/// ("Rate exceeded for shard shardId-000000000001 in stream s under account 1.").
pub fn shard_in_message(message: &str) -> Option<&str> {
    let start = message.find("shardId-")?;
    let rest = &message[start..];
    let end = rest
        .find(|c: char| !(c.is_ascii_alphanumeric() || c == '-' || c == '_'))
        .unwrap_or(rest.len());
    (end > "shardId-".len()).then(|| &rest[..end])
}

impl ShardRates {
    pub fn new(batch: usize) -> ShardRates {
        ShardRates {
            keys: HashMap::new(),
            shards: Vec::new(),
            batch,
        }
    }

    fn shard_index(&mut self, id: &str) -> usize {
        match self.shards.iter().position(|s| s.id == id) {
            Some(i) => i,
            None => {
                self.shards.push(Shard {
                    id: id.to_string(),
                    rate: SendRate::for_shard(self.batch),
                });
                self.shards.len() - 1
            }
        }
    }

    /// How long `records` with this partition key must wait for their shard (zero: they may
    /// go now, and are counted against the shard's limit). A key whose shard is not known yet
    /// goes at once.
    pub fn take(&mut self, now: Instant, key: &str, records: usize) -> Duration {
        match self.keys.get(key) {
            Some(&i) => self.shards[i].rate.take(now, records),
            None => Duration::ZERO,
        }
    }

    /// An entry's answer: `shard` took it (or throttled it); the key's shard is learnt.
    pub fn outcome(
        &mut self,
        now: Instant,
        key: &str,
        shard: &str,
        accepted: usize,
        throttled: usize,
    ) {
        let i = self.shard_index(shard);
        match self.keys.get_mut(key) {
            Some(known) => *known = i,
            None => {
                if self.keys.len() >= MAX_KEYS {
                    self.keys.clear();
                }
                self.keys.insert(key.to_string(), i);
            }
        }
        self.shards[i].rate.outcome(now, accepted, throttled);
    }

    /// Shards sending under a limit: (shard id, limit records/s, throttled records/s).
    pub fn limited(&self) -> Vec<(&str, f64, f64)> {
        self.shards
            .iter()
            .filter_map(|s| {
                s.rate
                    .limit()
                    .map(|l| (s.id.as_str(), l, s.rate.throttled_rate()))
            })
            .collect()
    }

    /// One line for `status`: the limited shards, or `None` when every shard sends freely.
    pub fn describe(&self) -> Option<String> {
        let limited = self.limited();
        if limited.is_empty() {
            return None;
        }
        let shown: Vec<String> = limited
            .iter()
            .take(4)
            .map(|(id, limit, thr)| format!("{id} limited to {limit:.0}/s ({thr:.0}/s throttled)"))
            .collect();
        let more = limited.len().saturating_sub(shown.len());
        Some(format!(
            "hot shard(s): {}{}",
            shown.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shard_is_read_from_kinesis_messages() {
        assert_eq!(
            shard_in_message(
                "Rate exceeded for shard shardId-000000000001 in stream s under account 1."
            ),
            Some("shardId-000000000001")
        );
        assert_eq!(
            shard_in_message("Rate exceeded for shard shardId-7"),
            Some("shardId-7")
        );
        assert_eq!(shard_in_message("Internal service failure."), None);
        assert_eq!(shard_in_message("shardId- is odd"), None);
    }

    /// Two keys on two shards; shard B takes 100 records/s, the export offers 1,000/s of each
    /// key. B's key slows to about what B takes; A's key is never held.
    #[test]
    fn a_hot_shard_slows_only_its_own_keys() {
        let t0 = Instant::now();
        let mut rates = ShardRates::new(100);
        let mut b_budget = 0.0f64;
        let (mut a_sent, mut b_sent, mut b_accepted_late) = (0usize, 0usize, 0usize);
        let tick = Duration::from_millis(100);
        for n in 0..300u32 {
            let now = t0 + tick * n;
            b_budget = (b_budget + 10.0).min(100.0);
            // 100 records of each key per tick, in calls of 10.
            for _ in 0..10 {
                if rates.take(now, "a", 10).is_zero() {
                    a_sent += 10;
                    rates.outcome(now, "a", "shardId-A", 10, 0);
                }
                if rates.take(now, "b", 10).is_zero() {
                    b_sent += 10;
                    let ok = (b_budget as usize).min(10);
                    b_budget -= ok as f64;
                    rates.outcome(now, "b", "shardId-B", ok, 10 - ok);
                    if n >= 200 {
                        b_accepted_late += ok;
                    }
                }
            }
        }
        assert_eq!(a_sent, 300 * 100, "the cold shard's key was held back");
        assert!(
            b_sent < 300 * 100 / 3,
            "the hot shard's key was not slowed: {b_sent} sent"
        );
        // The last 10 s: B still gets about its capacity (100/s), it is not starved.
        assert!(
            b_accepted_late >= 800,
            "the hot shard was starved: {b_accepted_late} accepted in 10 s"
        );
        let limited = rates.limited();
        assert_eq!(limited.len(), 1, "{limited:?}");
        assert_eq!(limited[0].0, "shardId-B");
        assert!(rates.describe().unwrap().contains("shardId-B limited to"));
    }

    #[test]
    fn unknown_keys_go_and_moved_keys_follow_their_new_shard() {
        let now = Instant::now();
        let mut rates = ShardRates::new(10);
        assert!(rates.take(now, "k", 1_000_000).is_zero());
        rates.outcome(now, "k", "shardId-1", 0, 10);
        rates.outcome(now, "k", "shardId-2", 10, 0);
        assert_eq!(rates.keys["k"], 1);
        assert_eq!(rates.shards.len(), 2);
    }

    #[test]
    fn the_key_map_is_bounded() {
        let now = Instant::now();
        let mut rates = ShardRates::new(10);
        for i in 0..MAX_KEYS + 10 {
            rates.outcome(now, &format!("k{i}"), "shardId-1", 1, 0);
        }
        assert!(rates.keys.len() <= MAX_KEYS);
        assert_eq!(rates.shards.len(), 1);
    }
}
