//! The export driver, generic over [`Exporter`]: reads batches from the queue (by count, bytes
//! and interval), asks the gateway's bandwidth, sends up to `max_in_flight_requests` batches at
//! once, and turns per-record outcomes into acks, retries and dead letters.
//!
//! A record is acknowledged only when its exporter said `Delivered` (or it was dead-lettered
//! with a reason). Records to send again (failed or throttled entries of a partial failure)
//! go first into the next batch, which is filled up with new records; records that succeeded
//! are never sent again by the driver. Acks of concurrent sends arrive out of order; the
//! queue's cursor folds them (and persists those above the prefix).
//!
//! Two ways to slow down, for two different things:
//! - **failure backoff** (exponential, with jitter, `initial_backoff`..`max_backoff`): only a
//!   send that made no progress at all (nothing delivered: a whole-request error, or every
//!   entry failed) grows it; any progress resets it;
//! - **adaptive rate** ([`super::throttle::SendRate`]): throttled entries lower the export's
//!   send rate (multiplicative decrease), clean windows raise it (additive increase), so a
//!   throttled export runs at the rate the destination accepts instead of stalling.

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use rand::Rng;
use tokio::sync::oneshot;
use tokio::task::{JoinError, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::bandwidth::Bandwidth;
use super::reconnect::{Reconnects, Slot};
use super::stats::ExportStats;
use super::throttle::SendRate;
use super::{BatchConfig, RetryConfig};
use super::{Exporter, Outcome, SendError};
use crate::backoff::Backoff;
use crate::queue::{AckBatch, DeadLetter, ExportId, QueueError, QueueHandle, Record};

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
    /// The gateway-wide reconnect order (see [`super::reconnect`]).
    pub reconnects: Reconnects,
    pub stats: Arc<ExportStats>,
    /// The gateway clock (exporters report the time cloud endpoints tell them).
    pub clock: crate::clock::Clock,
    /// Cancelled at shutdown: finish the sends in progress, then stop.
    pub shutdown: CancellationToken,
}

impl DriverContext {
    /// A number unique per export of the pipeline (for the bandwidth and reconnect order).
    pub fn export_key(&self) -> u64 {
        ((self.id.stream as u64) << 32) | self.id.export as u64
    }

    /// This export's place in the reconnect order.
    pub fn reconnect_slot(&self) -> Slot {
        self.reconnects
            .slot(self.export_key(), self.queue.priority(self.id.stream))
    }
}

/// Runs one export until shutdown.
pub async fn run<E: Exporter>(exporter: E, ctx: DriverContext) {
    let span =
        tracing::info_span!("export", stream = %ctx.stream, name = %ctx.name, kind = ctx.kind);
    let mut driver = Driver::new(exporter, &ctx);
    tracing::Instrument::instrument(driver.drive(), span.clone()).await;
    driver.reconnect.up();
    for mut lane in driver.idle {
        tracing::Instrument::instrument(lane.close(), span.clone()).await;
    }
}

/// The longest wait before a retry when the destination could not be reached at all: a
/// retry then costs a connect attempt only, so an export is sending again within seconds of
/// its destination coming back, whatever `max_backoff` says (that one paces retries of
/// requests the destination received and failed).
pub const UNREACHABLE_RETRY_CAP: Duration = Duration::from_secs(5);

/// How often an idle export's state line is written again.
const STATE_REFRESH: Duration = Duration::from_secs(1);

/// What a send task hands back: its exporter handle and the outcomes.
type Sent<E> = (E, Result<Vec<Outcome>, SendError>);

/// A batch being sent.
struct InFlight {
    batch: Arc<Vec<Record>>,
    /// Records of it that are sent again.
    retries: u64,
}

struct Driver<'a, E: Exporter> {
    ctx: &'a DriverContext,
    /// Exporter handles not sending now.
    idle: Vec<E>,
    sends: JoinSet<Sent<E>>,
    in_flight: HashMap<tokio::task::Id, InFlight>,
    /// The next id to read from the queue.
    next: i64,
    tail: tokio::sync::watch::Receiver<i64>,
    /// Records to send again, first in the next batches.
    retry: VecDeque<Record>,
    /// Records read ahead but not yet put into a batch.
    carry: VecDeque<Record>,
    ahead: Option<oneshot::Receiver<Result<Vec<Record>, QueueError>>>,
    backoff: Backoff,
    /// No new send starts before this (after a send that made no progress).
    paused_until: Option<Instant>,
    /// The last failed send could not reach the destination: the pause ends early when the
    /// exporter says it is reachable again.
    unreachable: bool,
    /// When the state line is written again even if nothing was sent (a connection lost while
    /// the export is idle shows within a second).
    state_due: Instant,
    rate: SendRate,
    /// Whether the adaptive rate limited the export at the last look (for one log line when
    /// throttling starts and one when it ends).
    limited: bool,
    priority: u8,
    export_key: u64,
    /// The order in which exports reconnect after an outage (used here for exporters that
    /// connect when they send; the others report from their own connection task).
    reconnect: Slot,
    /// The exporter reconnects in a task of its own ([`Exporter::connects_in_background`]).
    background: bool,
    /// The queue is gone: stop.
    closed: bool,
}

/// Why a wait ended.
enum Woke {
    /// What the wait was for happened (a timer, new records).
    Ready,
    /// A send finished (and was handled).
    Finished,
    /// Shutdown, or the queue closed.
    Stop,
}

impl<'a, E: Exporter> Driver<'a, E> {
    fn new(first: E, ctx: &'a DriverContext) -> Driver<'a, E> {
        let background = first.connects_in_background();
        let mut idle = Vec::with_capacity(ctx.batch.max_in_flight);
        while idle.len() + 1 < ctx.batch.max_in_flight.max(1) {
            match first.another() {
                Some(more) => idle.push(more),
                None => break,
            }
        }
        idle.push(first);
        Driver {
            ctx,
            idle,
            sends: JoinSet::new(),
            in_flight: HashMap::new(),
            next: ctx.queue.export_start(ctx.id),
            tail: ctx.queue.tail(ctx.id.stream),
            retry: VecDeque::new(),
            carry: VecDeque::new(),
            ahead: None,
            backoff: Backoff::new(ctx.retry.initial_backoff, ctx.retry.max_backoff),
            paused_until: None,
            unreachable: false,
            state_due: Instant::now(),
            rate: SendRate::new(ctx.batch.max_records),
            limited: false,
            priority: ctx.queue.priority(ctx.id.stream),
            export_key: ctx.export_key(),
            reconnect: ctx.reconnect_slot(),
            background,
            closed: false,
        }
    }

    async fn drive(&mut self) {
        tracing::debug!(from = self.next, lanes = self.idle.len(), "export started");
        while !self.closed && !self.ctx.shutdown.is_cancelled() {
            if self.idle.is_empty() {
                if self.sends.is_empty() {
                    tracing::error!(
                        "every handle of this export failed; the export stops (restart the gateway)"
                    );
                    break;
                }
                if let Woke::Stop = self.wait_until(None).await {
                    break;
                }
                continue;
            }
            if let Some(until) = self.paused_until {
                let back = if self.unreachable {
                    self.idle.last().map(|lane| lane.reachable())
                } else {
                    None
                };
                match self.wait_for(Some(until), back).await {
                    Woke::Stop => break,
                    Woke::Ready => self.paused_until = None,
                    Woke::Finished => {}
                }
                continue;
            }
            let Some((batch, bytes, retries)) = self.fill().await else {
                break;
            };
            // A send that finished meanwhile may have paused the export; then the adaptive
            // rate (throttling) and the gateway-wide bandwidth.
            loop {
                let wait = match self.paused_until {
                    Some(until) if until > Instant::now() => until - Instant::now(),
                    _ => {
                        let wait = self.rate.take(std::time::Instant::now(), batch.len());
                        self.publish_rate();
                        wait
                    }
                };
                if wait.is_zero() {
                    break;
                }
                let back = if self.unreachable && self.paused_until.is_some() {
                    self.idle.last().map(|lane| lane.reachable())
                } else {
                    None
                };
                match self.wait_for(Some(Instant::now() + wait), back).await {
                    Woke::Stop => {
                        self.retry.extend(batch);
                        return self.finish_in_flight().await;
                    }
                    // Reachable again (or the pause is over): no more waiting for this pause.
                    Woke::Ready if self.paused_until.is_some() => self.paused_until = None,
                    _ => {}
                }
            }
            self.paused_until = None;
            if self.unreachable && !self.background {
                // Exports of higher-priority streams that are down try first.
                tokio::select! {
                    _ = self.reconnect.turn() => {}
                    _ = self.ctx.shutdown.cancelled() => {
                        self.retry.extend(batch);
                        break;
                    }
                }
            }
            tokio::select! {
                _ = self.ctx.bandwidth.acquire(self.export_key, self.priority, bytes as u64) => {}
                _ = self.ctx.shutdown.cancelled() => break,
            }
            self.start(batch, retries);
        }
        self.finish_in_flight().await;
    }

    /// At shutdown: let the sends in flight finish (the app bounds this with
    /// `shutdown_timeout`) so their acks are committed.
    async fn finish_in_flight(&mut self) {
        while let Some(done) = self.sends.join_next_with_id().await {
            self.finished(done);
        }
        self.ctx.stats.in_flight.store(0, Ordering::Relaxed);
    }

    fn start(&mut self, batch: Vec<Record>, retries: u64) {
        let Some(mut lane) = self.idle.pop() else {
            // Cannot happen: drive() only fills a batch with a lane free.
            self.retry.extend(batch);
            return;
        };
        self.ctx.stats.sends.fetch_add(1, Ordering::Relaxed);
        let batch = Arc::new(batch);
        let shared = batch.clone();
        let span = tracing::Span::current();
        let handle = self.sends.spawn(tracing::Instrument::instrument(
            async move {
                let result = lane.send(&shared).await;
                (lane, result)
            },
            span,
        ));
        self.in_flight
            .insert(handle.id(), InFlight { batch, retries });
        self.ctx
            .stats
            .in_flight
            .store(self.sends.len() as u64, Ordering::Relaxed);
    }

    /// Waits for `until` (or for nothing but a finished send), handling finished sends.
    async fn wait_until(&mut self, until: Option<Instant>) -> Woke {
        self.wait_for(until, None).await
    }

    /// Writes the state line (`status`) from an idle handle's view of the destination.
    fn refresh_state(&mut self) {
        self.state_due = Instant::now() + STATE_REFRESH;
        let Some(lane) = self.idle.last() else { return };
        let state = self.state(lane.state());
        if let Ok(mut cell) = self.ctx.queue.state_cell(self.ctx.id).lock()
            && *cell != state
        {
            *cell = state;
        }
    }

    /// [`Driver::wait_until`], or until `back` resolves (the destination is reachable again).
    /// Also wakes (as `Finished`) to refresh the state line.
    async fn wait_for(
        &mut self,
        until: Option<Instant>,
        back: Option<std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>>,
    ) -> Woke {
        let has_back = back.is_some();
        let back = async move {
            if let Some(back) = back {
                back.await
            }
        };
        let state_due = self.state_due;
        tokio::select! {
            _ = tokio::time::sleep_until(state_due) => {
                self.refresh_state();
                Woke::Finished
            }
            _ = back, if has_back => {
                tracing::debug!("the destination is reachable again; retrying now");
                Woke::Ready
            }
            Some(done) = self.sends.join_next_with_id(), if !self.sends.is_empty() => {
                self.finished(done);
                if self.closed { Woke::Stop } else { Woke::Finished }
            }
            _ = tokio::time::sleep_until(until.unwrap_or_else(Instant::now)), if until.is_some() => Woke::Ready,
            _ = self.ctx.shutdown.cancelled() => Woke::Stop,
        }
    }

    /// Builds the next batch: records to send again first, then records read ahead, then from
    /// the queue, until it is full by count or bytes, or `batch_interval` after its first
    /// record. `None`: stop.
    async fn fill(&mut self) -> Option<(Vec<Record>, usize, u64)> {
        let max_records = self.ctx.batch.max_records;
        let max_bytes = self.ctx.batch.max_bytes;
        let mut batch: Vec<Record> = Vec::with_capacity(max_records.min(4096));
        let mut bytes = 0usize;
        let fits = |batch: &Vec<Record>, bytes: usize, r: &Record| {
            batch.is_empty()
                || batch.len() < max_records && bytes + r.payload.len() <= max_bytes.max(1)
        };
        while let Some(r) = self.retry.front() {
            if !fits(&batch, bytes, r) {
                break;
            }
            bytes += r.payload.len();
            batch.extend(self.retry.pop_front());
        }
        let mut retries = batch.len() as u64;
        let mut deadline: Option<Instant> = (!batch.is_empty()).then(Instant::now);
        loop {
            while let Some(r) = self.carry.front() {
                if !fits(&batch, bytes, r) {
                    break;
                }
                bytes += r.payload.len();
                batch.extend(self.carry.pop_front());
                // Records read ahead have waited already: the batch is due now.
                deadline.get_or_insert_with(Instant::now);
            }
            let mut full = batch.len() >= max_records || bytes >= max_bytes;
            if !full && self.carry.is_empty() {
                let read = match self.ahead.take() {
                    // Issued before the last tail notification was marked seen: a commit after
                    // it still wakes the wait below.
                    Some(rx) => rx.await.unwrap_or(Err(QueueError::Closed)),
                    None => {
                        self.tail.borrow_and_update();
                        self.ctx
                            .queue
                            .read(self.ctx.id, self.next, max_records, max_bytes)
                            .await
                    }
                };
                let got = match read {
                    Ok(got) => got,
                    Err(e) => {
                        tracing::debug!(error = %e, "queue closed; export stops");
                        self.closed = true;
                        self.retry.extend(batch);
                        return None;
                    }
                };
                if let Some(last) = got.last() {
                    self.next = last.id + 1;
                    deadline.get_or_insert_with(|| Instant::now() + self.ctx.batch.interval);
                    self.carry.extend(got);
                    continue;
                }
            }
            full |= !self.carry.is_empty();
            let due = deadline.is_some_and(|d| Instant::now() >= d);
            // A partial batch goes out at its deadline only when nothing else is in flight:
            // concurrency is for a backlog (full batches); a trickle is sent one batch at a
            // time, each filled for as long as the previous one took (fewer, fuller calls and
            // packed messages).
            if full || due && self.sends.is_empty() {
                break;
            }
            let woke = tokio::select! {
                changed = self.tail.changed() => if changed.is_err() { Woke::Stop } else { Woke::Ready },
                Some(done) = self.sends.join_next_with_id(), if !self.sends.is_empty() => {
                    self.finished(done);
                    Woke::Finished
                }
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() && !due => Woke::Ready,
                _ = tokio::time::sleep_until(self.state_due) => {
                    self.refresh_state();
                    Woke::Finished
                }
                _ = self.ctx.shutdown.cancelled() => Woke::Stop,
            };
            if matches!(woke, Woke::Stop) || self.closed {
                self.retry.extend(batch);
                return None;
            }
            // Records to resend that a finished send left: they go first, into this batch if
            // it has room.
            while let Some(r) = self.retry.front() {
                if !fits(&batch, bytes, r) {
                    break;
                }
                bytes += r.payload.len();
                batch.extend(self.retry.pop_front());
                retries += 1;
                deadline.get_or_insert_with(Instant::now);
            }
        }
        // Read the next batch while this one is sent, if there is more waiting.
        if self.carry.is_empty() && *self.tail.borrow() >= self.next {
            self.ahead = self
                .ctx
                .queue
                .read_ahead(self.ctx.id, self.next, max_records, max_bytes)
                .ok();
        }
        Some((batch, bytes, retries))
    }

    /// A send finished: acks, retries, dead letters, the backoff and the adaptive rate.
    fn finished(&mut self, done: Result<(tokio::task::Id, Sent<E>), JoinError>) {
        let ctx = self.ctx;
        let (id, result) = match done {
            Ok((id, (lane, result))) => {
                self.idle.push(lane);
                (id, result)
            }
            Err(e) => {
                // The exporter panicked (a bug): its records are sent again by another handle;
                // that handle is gone.
                let id = e.id();
                tracing::error!(error = %e, "an export send task failed; its records are sent again");
                (
                    id,
                    Err(SendError::transient(format!("send task failed: {e}"))),
                )
            }
        };
        ctx.stats
            .in_flight
            .store(self.sends.len() as u64, Ordering::Relaxed);
        let Some(InFlight { batch, retries }) = self.in_flight.remove(&id) else {
            return;
        };
        let batch = Arc::try_unwrap(batch).unwrap_or_else(|shared| (*shared).clone());
        let now_ms = crate::time::now_ms();
        let mut ack = AckBatch {
            export: ctx.id,
            delivered: Vec::with_capacity(batch.len()),
            dead: Vec::new(),
            retries,
            error: None,
        };
        let mut resend = 0usize;
        let mut throttled = 0usize;
        // Throttled by a shard the exporter paces itself, and held back by that pacing: the
        // export-wide rate and the failure backoff leave them alone.
        let mut shard_throttled = 0usize;
        let mut held = 0usize;
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
                            resend += 1;
                            self.retry.push_back(record);
                        }
                        Outcome::Throttled(reason) => {
                            ack.error = Some(reason);
                            resend += 1;
                            throttled += 1;
                            self.retry.push_back(record);
                        }
                        Outcome::ThrottledShard(reason) => {
                            ack.error = Some(reason);
                            resend += 1;
                            shard_throttled += 1;
                            self.retry.push_back(record);
                        }
                        Outcome::Held => {
                            held += 1;
                            self.retry.push_back(record);
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
                resend = batch.len();
                self.retry.extend(batch);
            }
            Err(e) => {
                self.unreachable = e.is_unreachable();
                if self.unreachable && !self.background {
                    self.reconnect.failed();
                }
                let throttled_call = e.is_throttled();
                ack.error = Some(e.message().to_string());
                resend = batch.len();
                if throttled_call {
                    throttled = resend;
                }
                self.retry.extend(batch);
            }
        }
        let delivered = ack.delivered.len();
        let settled = delivered + ack.dead.len();
        self.rate
            .outcome(std::time::Instant::now(), delivered, throttled);
        ctx.stats
            .delivered
            .fetch_add(delivered as u64, Ordering::Relaxed);
        ctx.stats
            .dead_lettered
            .fetch_add(ack.dead.len() as u64, Ordering::Relaxed);
        ctx.stats.retried.fetch_add(retries, Ordering::Relaxed);
        ctx.stats
            .throttled
            .fetch_add((throttled + shard_throttled) as u64, Ordering::Relaxed);
        self.publish_rate();
        let error = ack.error.clone();
        self.refresh_state();
        if ctx.queue.ack(ack).is_err() {
            self.closed = true;
            return;
        }
        if resend == 0 || settled > 0 || resend == shard_throttled {
            // Progress (or nothing to resend): the failure backoff starts over. Throttled
            // entries of a send that delivered others are the adaptive rate's business.
            let since = ctx.stats.failing_since_ms.swap(0, Ordering::Relaxed);
            if self.backoff.failures() > 0 {
                tracing::info!(
                    failed_sends = self.backoff.failures(),
                    failing_for = ?Duration::from_millis((now_ms - since).max(0) as u64),
                    "export recovered: sending again"
                );
            }
            self.backoff.reset();
            self.unreachable = false;
            if !self.background {
                self.reconnect.up();
            }
            if resend > 0 || held > 0 {
                if resend > 0
                    && let Ok(mut last) = ctx.stats.last_error.lock()
                {
                    last.clone_from(&error);
                }
                tracing::debug!(
                    resend,
                    throttled = throttled + shard_throttled,
                    held,
                    error = error.as_deref().unwrap_or("unknown"),
                    "part of a send failed; those records go first in the next batch"
                );
            }
            return;
        }
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
        let mut wait = self.backoff.fail(rand::rng().random());
        if self.unreachable {
            wait = wait.min(UNREACHABLE_RETRY_CAP);
        }
        let until = Instant::now() + wait;
        self.paused_until = Some(self.paused_until.map_or(until, |p| p.max(until)));
        let retry_in = Duration::from_millis(wait.as_millis() as u64);
        let error = error.as_deref().unwrap_or("unknown");
        // One WARN when a failure episode starts (and one INFO when it ends, above); the
        // repeats are DEBUG: `status`, /health and the metrics show the episode meanwhile.
        if self.backoff.failures() == 1 {
            tracing::warn!(
                error,
                records = resend,
                retry_in = ?retry_in,
                "export failing: send failed; records stay queued and are retried"
            );
        } else {
            tracing::debug!(
                error,
                records = resend,
                attempt = self.backoff.failures(),
                retry_in = ?retry_in,
                "send failed again"
            );
        }
    }

    fn publish_rate(&mut self) {
        let stats = &self.ctx.stats;
        match (self.limited, self.rate.limit()) {
            (false, Some(limit)) => tracing::warn!(
                limit = format!("{limit:.0} records/s"),
                throttled = format!("{:.0} records/s", self.rate.throttled_rate()),
                "the destination throttles this export: sending at the rate it accepts; throttled records are resent"
            ),
            (true, None) => {
                tracing::info!("throttling ended: the export sends at full speed again")
            }
            _ => {}
        }
        self.limited = self.rate.limit().is_some();
        let limit = self.rate.limit().map_or(0, |l| l.round().max(1.0) as u64);
        stats.rate_limit.store(limit, Ordering::Relaxed);
        stats
            .throttled_per_s
            .store(self.rate.throttled_rate().round() as u64, Ordering::Relaxed);
        stats
            .send_rate
            .store(self.rate.accepted_rate().round() as u64, Ordering::Relaxed);
    }

    /// The export's state line for `status`: the exporter's own, plus sends in flight and the
    /// adaptive rate when it limits.
    fn state(&self, exporter: Option<String>) -> Option<String> {
        let mut parts: Vec<String> = exporter.into_iter().collect();
        if self.ctx.batch.max_in_flight > 1 {
            parts.push(format!(
                "{} of {} sends in flight",
                self.sends.len(),
                self.ctx.batch.max_in_flight
            ));
        }
        if self.rate.accepted_rate() > 0.0 {
            parts.push(format!(
                "delivering {:.0} records/s",
                self.rate.accepted_rate()
            ));
        }
        if let Some(limit) = self.rate.limit() {
            parts.push(format!(
                "throttled: limited to {:.0} records/s ({:.0} throttled/s, {:.0} accepted/s)",
                limit,
                self.rate.throttled_rate(),
                self.rate.accepted_rate()
            ));
        }
        (!parts.is_empty()).then(|| parts.join(", "))
    }
}
