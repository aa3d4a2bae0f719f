//! The counters of an export, in memory: the one place the driver, the exporters, the metrics
//! endpoint, `status` and the benchmarks read them from.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Counters of one export, shared with the app (metrics, benchmark).
#[derive(Debug, Default)]
pub struct ExportStats {
    /// Set for kinds that keep a connection ([`ExportKind::stats`](super::ExportKind::stats)).
    pub connection: Option<Arc<ConnectionStats>>,
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub sends: AtomicU64,
    pub failed_sends: AtomicU64,
    /// Requests made to the destination (Kinesis PutRecords / Firehose PutRecordBatch calls;
    /// a send may take several).
    pub requests: AtomicU64,
    /// Records as the destination counts them (packed records count once).
    pub wire_records: AtomicU64,
    /// Bytes of those records (after packing and compression).
    pub wire_bytes: AtomicU64,
    /// Records the destination refused for throughput (sent again).
    pub throttled: AtomicU64,
    /// Sends in flight now.
    pub in_flight: AtomicU64,
    /// The adaptive send limit, records/s (0: unlimited).
    pub rate_limit: AtomicU64,
    /// Throttled records/s in the last second of sending.
    pub throttled_per_s: AtomicU64,
    /// Records accepted per second in the last second of sending.
    pub send_rate: AtomicU64,
    /// When the current run of failed sends began (ms since the epoch; 0 while healthy).
    pub failing_since_ms: AtomicI64,
    /// The last send error, for the health endpoint.
    pub last_error: std::sync::Mutex<Option<String>>,
    pub latency: LatencyHistogram,
}

/// Milliseconds from queueing to acknowledgement: exact below 1 s, 100 ms steps up to 100 s.
#[derive(Debug)]
pub struct LatencyHistogram {
    buckets: Box<[AtomicU64]>,
}

const EXACT_MS: u64 = 1_000;
const COARSE_STEP_MS: u64 = 100;
const BUCKETS: usize = (EXACT_MS + (100_000 - EXACT_MS) / COARSE_STEP_MS + 1) as usize;

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            buckets: (0..BUCKETS).map(|_| AtomicU64::new(0)).collect(),
        }
    }
}

impl LatencyHistogram {
    pub fn record(&self, ms: u64) {
        let i = if ms < EXACT_MS {
            ms as usize
        } else {
            ((EXACT_MS + (ms - EXACT_MS) / COARSE_STEP_MS) as usize).min(BUCKETS - 1)
        };
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    fn bucket_ms(i: usize) -> u64 {
        let i = i as u64;
        if i < EXACT_MS {
            i
        } else {
            EXACT_MS + (i - EXACT_MS) * COARSE_STEP_MS
        }
    }

    /// The latency below which `q` (0..=1) of the records fall, in ms.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        let counts: Vec<u64> = self
            .buckets
            .iter()
            .map(|b| b.load(Ordering::Relaxed))
            .collect();
        let total: u64 = counts.iter().sum();
        if total == 0 {
            return None;
        }
        let target = ((total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in counts.iter().enumerate() {
            seen += c;
            if seen >= target {
                return Some(Self::bucket_ms(i));
            }
        }
        Some(Self::bucket_ms(BUCKETS - 1))
    }

    pub fn reset(&self) {
        for b in self.buckets.iter() {
            b.store(0, Ordering::Relaxed);
        }
    }
}

/// Counters of an export that keeps a connection (MQTT): its state, messages in flight, and
/// what a lost connection may have duplicated.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    pub connected: AtomicBool,
    /// Publishes handed to the connection and not settled.
    pub in_flight: AtomicU64,
    pub connects: AtomicU64,
    pub connection_losses: AtomicU64,
    /// Messages handed to the connection.
    pub published: AtomicU64,
    /// Messages acknowledged (PUBACK; for QoS 0: written).
    pub acked: AtomicU64,
    /// Messages written but not acknowledged when their connection was lost: the broker may
    /// have them, and their retry may make duplicates.
    pub lost_in_flight: AtomicU64,
    /// Records sent again after such a loss (upper bound of the duplicates downstream).
    pub possible_duplicates: AtomicU64,
    /// Settlements that came after their send had already decided (should stay 0).
    pub late_acks: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}
