//! The export driver, generic over [`Exporter`]: reads batches from the queue (by count, bytes
//! and interval), asks the gateway's bandwidth, sends, and turns per-record outcomes into acks,
//! retries (with exponential backoff and jitter) and dead letters.
//!
//! A record is acknowledged only when its exporter said `Delivered` (or it was dead-lettered
//! with a reason). Failed records of a partial failure are retried alone, first in the next
//! batch; records that succeeded are never sent again by the driver.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

use rand::Rng;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bandwidth::Bandwidth;
use super::retry::Backoff;
use super::{Exporter, Outcome};
use crate::config::{BatchConfig, RetryConfig};
use crate::queue::{AckBatch, DeadLetter, ExportId, QueueError, QueueHandle, Record};

/// Counters of one export, shared with the app (metrics, benchmark).
#[derive(Debug, Default)]
pub struct ExportStats {
    pub delivered: AtomicU64,
    pub retried: AtomicU64,
    pub dead_lettered: AtomicU64,
    pub sends: AtomicU64,
    pub failed_sends: AtomicU64,
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

/// Everything the driver needs besides the exporter.
pub struct DriverContext {
    pub id: ExportId,
    pub stream: String,
    pub name: String,
    pub kind: &'static str,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    pub queue: QueueHandle,
    pub bandwidth: Bandwidth,
    pub stats: Arc<ExportStats>,
    /// Cancelled at shutdown: finish the send in progress, then stop.
    pub shutdown: CancellationToken,
}

/// Runs one export until shutdown.
pub async fn run<E: Exporter>(mut exporter: E, ctx: DriverContext) {
    let span =
        tracing::info_span!("export", stream = %ctx.stream, name = %ctx.name, kind = ctx.kind);
    tracing::Instrument::instrument(drive(&mut exporter, &ctx), span.clone()).await;
    tracing::Instrument::instrument(exporter.close(), span).await;
}

async fn drive<E: Exporter>(exporter: &mut E, ctx: &DriverContext) {
    let mut next = ctx.queue.export_start(ctx.id);
    let mut tail = ctx.queue.tail(ctx.id.stream);
    let mut retry: Vec<Record> = Vec::new();
    let mut backoff = Backoff::new(ctx.retry.initial_backoff, ctx.retry.max_backoff);
    let priority = ctx.queue.priority(ctx.id.stream);
    let export_key = ((ctx.id.stream as u64) << 32) | ctx.id.export as u64;
    tracing::debug!(from = next, "export started");

    // Records read ahead (while the previous batch was being sent) but not yet sent.
    let mut carry: VecDeque<Record> = VecDeque::new();
    let mut ahead: Option<oneshot::Receiver<Result<Vec<Record>, QueueError>>> = None;

    while !ctx.shutdown.is_cancelled() {
        let retries = retry.len() as u64;
        let mut batch = std::mem::take(&mut retry);
        let mut bytes: usize = batch.iter().map(|r| r.payload.len()).sum();
        while batch.len() < ctx.batch.max_records
            && bytes < ctx.batch.max_bytes
            && let Some(r) = carry.pop_front()
        {
            bytes += r.payload.len();
            batch.push(r);
        }
        let mut deadline: Option<Instant> = (!batch.is_empty()).then(Instant::now);
        // Fill the batch: by count, bytes, or until batch_interval after its first record.
        loop {
            if batch.len() < ctx.batch.max_records && bytes < ctx.batch.max_bytes {
                let read = match ahead.take() {
                    // Issued before the last tail notification was marked seen: a commit after
                    // it still wakes the wait below.
                    Some(rx) => rx.await.unwrap_or(Err(QueueError::Closed)),
                    None => {
                        tail.borrow_and_update();
                        ctx.queue
                            .read(ctx.id, next, ctx.batch.max_records, ctx.batch.max_bytes)
                            .await
                    }
                };
                let got = match read {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(error = %e, "queue closed; export stops");
                        return;
                    }
                };
                if let Some(last) = got.last() {
                    next = last.id + 1;
                    deadline.get_or_insert_with(|| Instant::now() + ctx.batch.interval);
                    for r in got {
                        if batch.len() < ctx.batch.max_records
                            && bytes + r.payload.len() <= ctx.batch.max_bytes.max(1)
                            || batch.is_empty()
                        {
                            bytes += r.payload.len();
                            batch.push(r);
                        } else {
                            carry.push_back(r);
                        }
                    }
                    if carry.is_empty() {
                        continue;
                    }
                }
            }
            let full = batch.len() >= ctx.batch.max_records
                || bytes >= ctx.batch.max_bytes
                || !carry.is_empty();
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            if full || due {
                break;
            }
            tokio::select! {
                changed = tail.changed() => if changed.is_err() { return },
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {}
                _ = ctx.shutdown.cancelled() => return,
            }
        }
        // Read the next batch while this one is sent, if there is more waiting.
        if carry.is_empty() && *tail.borrow() >= next {
            ahead = ctx
                .queue
                .read_ahead(ctx.id, next, ctx.batch.max_records, ctx.batch.max_bytes)
                .ok();
        }

        tokio::select! {
            _ = ctx.bandwidth.acquire(export_key, priority, bytes as u64) => {}
            _ = ctx.shutdown.cancelled() => return,
        }
        ctx.stats.sends.fetch_add(1, Ordering::Relaxed);
        let result = exporter.send(&batch).await;
        let now_ms = crate::time::now_ms();
        let mut ack = AckBatch {
            export: ctx.id,
            delivered: Vec::with_capacity(batch.len()),
            dead: Vec::new(),
            retries,
            error: None,
            state: exporter.state(),
        };
        match result {
            Ok(outcomes) if outcomes.len() == batch.len() => {
                for (record, outcome) in batch.into_iter().zip(outcomes) {
                    match outcome {
                        Outcome::Delivered => {
                            ctx.stats
                                .latency
                                .record((now_ms - record.at_ms).max(0) as u64);
                            ack.delivered.push(record.id);
                        }
                        Outcome::Retry(reason) => {
                            ack.error = Some(reason);
                            retry.push(record);
                        }
                        Outcome::Rejected(reason) => {
                            tracing::warn!(record = record.id, %reason, "record rejected by the destination; moved to the dead-letter table");
                            ack.dead.push(DeadLetter { record, reason });
                        }
                    }
                }
            }
            Ok(outcomes) => {
                let msg = format!(
                    "exporter returned {} outcomes for {} records; retrying the batch",
                    outcomes.len(),
                    batch.len()
                );
                tracing::error!("{msg}");
                ack.error = Some(msg);
                retry = batch;
            }
            Err(e) => {
                ack.error = Some(e.message);
                retry = batch;
            }
        }
        ctx.stats
            .delivered
            .fetch_add(ack.delivered.len() as u64, Ordering::Relaxed);
        ctx.stats
            .dead_lettered
            .fetch_add(ack.dead.len() as u64, Ordering::Relaxed);
        ctx.stats.retried.fetch_add(retries, Ordering::Relaxed);
        let error = ack.error.clone();
        if ctx.queue.ack(ack).is_err() {
            return;
        }
        if retry.is_empty() {
            ctx.stats.failing_since_ms.store(0, Ordering::Relaxed);
            if backoff.failures() > 0 {
                tracing::info!(after_failures = backoff.failures(), "export recovered");
            }
            backoff.reset();
        } else {
            ctx.stats.failed_sends.fetch_add(1, Ordering::Relaxed);
            let _ = ctx.stats.failing_since_ms.compare_exchange(
                0,
                now_ms,
                Ordering::Relaxed,
                Ordering::Relaxed,
            );
            if let Ok(mut last) = ctx.stats.last_error.lock() {
                last.clone_from(&error);
            }
            let wait = backoff.fail(rand::rng().random());
            tracing::warn!(
                error = error.as_deref().unwrap_or("unknown"),
                records = retry.len(),
                attempt = backoff.failures(),
                retry_in = ?Duration::from_millis(wait.as_millis() as u64),
                "send failed; records stay queued and are retried"
            );
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = ctx.shutdown.cancelled() => return,
            }
        }
    }
}
