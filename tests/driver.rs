//! The export driver with a scripted exporter: partial failures retry only the failed records,
//! whole-batch errors retry the batch, rejected records are dead-lettered, nothing is lost and
//! nothing that was delivered is sent again.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use streamgate::exporters::bandwidth::Bandwidth;
use streamgate::exporters::driver::{self, DriverContext};
use streamgate::exporters::stats::ExportStats;
use streamgate::exporters::{BatchConfig, RetryConfig};
use streamgate::exporters::{Exporter, Outcome, SendError};
use streamgate::queue::{
    AppendBatch, ExportId, NewRecord, Queue, QueueOptions, Record, StreamSpec,
};
use streamgate::queue::{Durability, StrategyOnFull};
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Destination {
    /// Record id -> times it was delivered.
    delivered: HashMap<i64, u32>,
    /// Record id -> times it was offered.
    offered: HashMap<i64, u32>,
    calls: u32,
}

struct Scripted {
    dest: Arc<Mutex<Destination>>,
}

impl Exporter for Scripted {
    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        let mut d = self.dest.lock().unwrap();
        d.calls += 1;
        for r in batch {
            *d.offered.entry(r.id).or_default() += 1;
        }
        if d.calls.is_multiple_of(4) {
            return Err(SendError::transient("connection reset"));
        }
        let mut out = Vec::new();
        for r in batch {
            let first = d.offered[&r.id] == 1;
            if r.id % 50 == 0 {
                out.push(Outcome::Rejected("record too large".into()));
            } else if r.id % 7 == 0 && first {
                out.push(Outcome::Retry(
                    "ProvisionedThroughputExceededException".into(),
                ));
            } else {
                *d.delivered.entry(r.id).or_default() += 1;
                out.push(Outcome::Delivered);
            }
        }
        Ok(out)
    }
}

/// A queue in `dir` with one stream of one export, holding `n` records `{"n":i}`.
async fn queue_with(dir: &std::path::Path, n: usize) -> Queue {
    let spec = StreamSpec {
        name: "s".into(),
        priority: 1,
        max_size: 1 << 30,
        strategy_on_full: StrategyOnFull::RejectNew,
        time_to_live: None,
        durability: Durability::ProcessCrash,
        exports: vec![("x".into(), "test".into(), true)],
    };
    let q = Queue::open(dir, vec![spec], &["src".into()], QueueOptions::default()).unwrap();
    let records: Vec<NewRecord> = (0..n)
        .map(|i| NewRecord {
            stream: 0,
            created_ms: 0,
            payload: format!("{{\"n\":{i}}}").into_bytes(),
        })
        .collect();
    q.appender
        .append(AppendBatch {
            source: 0,
            next_seq: n as u64 + 1,
            records,
        })
        .await
        .unwrap();
    q
}

/// The driver's context for the queue's one export.
fn context(
    q: &Queue,
    batch: BatchConfig,
    retry: RetryConfig,
) -> (DriverContext, Arc<ExportStats>, CancellationToken) {
    let stop = CancellationToken::new();
    let stats = Arc::new(ExportStats::default());
    let ctx = DriverContext {
        id: ExportId {
            stream: 0,
            export: 0,
        },
        stream: "s".into(),
        name: "x".into(),
        kind: "test",
        batch,
        retry,
        queue: q.handle.clone(),
        bandwidth: Bandwidth::unlimited(),
        reconnects: Default::default(),
        stats: stats.clone(),
        clock: Default::default(),
        shutdown: stop.clone(),
    };
    (ctx, stats, stop)
}

/// Waits (up to `timeout`) until the export acknowledged `n` records; returns how far it got.
async fn acked_upto(q: &Queue, n: i64, timeout: Duration) -> i64 {
    let mut acked = 0;
    common::poll_until_async(timeout, async || {
        acked = q.handle.status().await.unwrap()[0].exports[0].acked_upto;
        acked == n
    })
    .await;
    acked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_retry_only_failed_records_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let q = queue_with(dir.path(), 300).await;
    let dest = Arc::new(Mutex::new(Destination::default()));
    let (ctx, _stats, stop) = context(
        &q,
        BatchConfig {
            max_records: 40,
            max_bytes: 1 << 20,
            interval: Duration::from_millis(5),
            max_in_flight: 1,
        },
        RetryConfig {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(5),
        },
    );
    let task = tokio::spawn(driver::run(Scripted { dest: dest.clone() }, ctx));
    let acked = acked_upto(&q, 300, Duration::from_secs(30)).await;
    stop.cancel();
    task.await.unwrap();
    assert_eq!(acked, 300, "every record acknowledged or dead-lettered");

    let d = std::mem::take(&mut *dest.lock().unwrap());
    for id in 1..=300i64 {
        if id % 50 == 0 {
            assert_eq!(d.delivered.get(&id), None, "record {id} was rejected");
        } else {
            assert_eq!(
                d.delivered.get(&id),
                Some(&1),
                "record {id} delivered exactly once"
            );
        }
        if id % 7 == 0 && id % 50 != 0 {
            assert!(d.offered[&id] >= 2, "throttled record {id} was retried");
        }
    }
    let st = q.handle.status().await.unwrap();
    assert_eq!(st[0].exports[0].dead_lettered, 6);
    assert_eq!(st[0].records, 0, "acknowledged records are deleted");
    assert!(st[0].exports[0].retries > 0);
    q.close();
    let report = streamgate::status::read(dir.path()).unwrap();
    let e = &report.streams[0].exports[0];
    assert_eq!(e.dead_lettered, 6);
    assert_eq!(e.recent_dead_letters[0].1, "record too large");
    assert!(e.last_error.is_some());
}

/// A slow destination that takes several sends at once and throttles a fifth of every send's
/// records (at random, independent of the rate).
struct Concurrent {
    dest: Arc<Mutex<Destination>>,
    now: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    /// Sends in which every record was throttled (no progress).
    fruitless: Arc<std::sync::atomic::AtomicUsize>,
    seed: u64,
}

impl Exporter for Concurrent {
    fn another(&self) -> Option<Self> {
        Some(Concurrent {
            dest: self.dest.clone(),
            now: self.now.clone(),
            peak: self.peak.clone(),
            fruitless: self.fruitless.clone(),
            seed: self.seed.wrapping_mul(31).wrapping_add(7),
        })
    }

    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        use std::sync::atomic::Ordering::SeqCst;
        let n = self.now.fetch_add(1, SeqCst) + 1;
        self.peak.fetch_max(n, SeqCst);
        // The destination's latency (the scenario: sends overlap), not synchronisation.
        tokio::time::sleep(Duration::from_millis(20)).await;
        self.now.fetch_sub(1, SeqCst);
        let mut d = self.dest.lock().unwrap();
        let mut out = Vec::new();
        for r in batch {
            *d.offered.entry(r.id).or_default() += 1;
            self.seed ^= self.seed << 13;
            self.seed ^= self.seed >> 7;
            self.seed ^= self.seed << 17;
            if self.seed.is_multiple_of(5) {
                out.push(Outcome::Throttled("slow down".into()));
            } else {
                *d.delivered.entry(r.id).or_default() += 1;
                out.push(Outcome::Delivered);
            }
        }
        if !out.contains(&Outcome::Delivered) {
            self.fruitless.fetch_add(1, SeqCst);
        }
        Ok(out)
    }
}

/// Several sends in flight, a fifth of every send throttled, the default backoff (100 ms up
/// to 60 s): everything is delivered exactly once and quickly, because throttling with progress
/// never grows the failure backoff, and the acks of concurrent sends fold into the cursor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_with_throttling_deliver_everything_once() {
    let dir = tempfile::tempdir().unwrap();
    const N: usize = 4_000;
    let q = queue_with(dir.path(), N).await;
    let dest = Arc::new(Mutex::new(Destination::default()));
    let peak = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let fruitless = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (ctx, stats, stop) = context(
        &q,
        BatchConfig {
            max_records: 100,
            max_bytes: 1 << 20,
            interval: Duration::from_millis(5),
            max_in_flight: 4,
        },
        RetryConfig {
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(60),
        },
    );
    let exporter = Concurrent {
        dest: dest.clone(),
        now: Arc::default(),
        peak: peak.clone(),
        fruitless: fruitless.clone(),
        seed: 0x2545_f491_4f6c_dd1d,
    };
    let started = std::time::Instant::now();
    let task = tokio::spawn(driver::run(exporter, ctx));
    let acked = acked_upto(&q, N as i64, Duration::from_secs(30)).await;
    let took = started.elapsed();
    stop.cancel();
    task.await.unwrap();
    assert_eq!(acked, N as i64, "every record acknowledged");
    let d = dest.lock().unwrap();
    for id in 1..=N as i64 {
        assert_eq!(d.delivered.get(&id), Some(&1), "record {id} delivered once");
    }
    let throttled = stats.throttled.load(std::sync::atomic::Ordering::Relaxed);
    let failed = stats
        .failed_sends
        .load(std::sync::atomic::Ordering::Relaxed);
    let peak = peak.load(std::sync::atomic::Ordering::SeqCst);
    eprintln!("{N} records in {took:?}, {throttled} throttled, peak {peak} sends in flight");
    assert!(throttled > N as u64 / 10, "throttled only {throttled}");
    let fruitless = fruitless.load(std::sync::atomic::Ordering::SeqCst) as u64;
    assert_eq!(
        failed, fruitless,
        "only sends that delivered nothing are failures"
    );
    assert!(peak >= 3, "sends ran one at a time (peak {peak} in flight)");
    q.close();
}

/// Paces its own shards: the first time a third of the records is held back (not sent), a
/// third is throttled by its shard; the rest is delivered. Every third send is throttled by its
/// shard as a whole (nothing delivered), as a send to a paced shard can be.
struct ShardPaced {
    dest: Arc<Mutex<Destination>>,
    throttled: Arc<std::sync::atomic::AtomicU64>,
}

impl Exporter for ShardPaced {
    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        // The destination's latency, so the run spans several of the rate's 1 s windows.
        tokio::time::sleep(Duration::from_millis(30)).await;
        let mut d = self.dest.lock().unwrap();
        d.calls += 1;
        let whole = d.calls.is_multiple_of(3);
        let mut out = Vec::new();
        for r in batch {
            let offered = d.offered.entry(r.id).or_default();
            *offered += 1;
            let first = *offered == 1;
            out.push(if first && r.id % 3 == 0 && !whole {
                Outcome::Held
            } else if whole || first && r.id % 3 == 1 {
                self.throttled
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Outcome::ThrottledShard("Rate exceeded for shard shardId-1".into())
            } else {
                *d.delivered.entry(r.id).or_default() += 1;
                Outcome::Delivered
            });
        }
        Ok(out)
    }
}

/// Issue 13, per-shard pacing: records an exporter held back or that its paced shard
/// throttled are sent again, neither grows the failure backoff (not even a send with nothing
/// delivered), the throttled ones are counted but the export-wide rate stays unlimited (the
/// exporter paces that shard itself).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_and_shard_throttled_records_are_resent_without_backoff_or_export_limit() {
    let dir = tempfile::tempdir().unwrap();
    const N: usize = 3_000;
    let q = queue_with(dir.path(), N).await;
    let dest = Arc::new(Mutex::new(Destination::default()));
    let throttled = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (ctx, stats, stop) = context(
        &q,
        BatchConfig {
            max_records: 20,
            max_bytes: 1 << 20,
            interval: Duration::from_millis(5),
            max_in_flight: 2,
        },
        RetryConfig {
            initial_backoff: Duration::from_secs(5),
            max_backoff: Duration::from_secs(60),
        },
    );
    let exporter = ShardPaced {
        dest: dest.clone(),
        throttled: throttled.clone(),
    };
    let started = std::time::Instant::now();
    let task = tokio::spawn(driver::run(exporter, ctx));
    // A failure backoff of 5 s per fruitless send would take minutes: 30 s is plenty without.
    let acked = acked_upto(&q, N as i64, Duration::from_secs(30)).await;
    stop.cancel();
    task.await.unwrap();
    let took = started.elapsed();
    assert_eq!(acked, N as i64, "every record acknowledged");
    let d = dest.lock().unwrap();
    for id in 1..=N as i64 {
        assert_eq!(d.delivered.get(&id), Some(&1), "record {id} delivered once");
    }
    use std::sync::atomic::Ordering::Relaxed;
    eprintln!("{N} records in {took:?}, {} sends", d.calls);
    assert!(
        took > Duration::from_secs(2),
        "too short to see the rate's windows: {took:?}"
    );
    assert_eq!(
        stats.failed_sends.load(Relaxed),
        0,
        "held/throttled counted as failures"
    );
    assert_eq!(
        stats.throttled.load(Relaxed),
        throttled.load(Relaxed),
        "every shard-throttled record is counted as throttled"
    );
    assert_eq!(
        stats.rate_limit.load(Relaxed),
        0,
        "the export-wide rate was limited for one shard's throttling"
    );
}
