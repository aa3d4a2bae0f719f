//! The queue thread: the only user of the database connection. Each turn it serves exports
//! (reads, acks) first, takes appends (paced while an export is behind, grouped into one
//! transaction), commits, and answers status and reconfiguration requests. See the module
//! docs of [`super`] for the design.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use super::sqlite::{self, AppendMode, Store};
use super::{
    AckBatch, AppendBatch, Ctl, ExportId, QueueError, QueueHandle, QueueOptions, Reconfigured,
    Record, StreamSpec, StreamStatus, disk, recover,
};

/// How many appended records one transaction takes at most.
const MAX_TXN_RECORDS: usize = 8_000;
/// While an export is behind (its reads come back full), appends are taken at most this much
/// faster than exports read: a producer faster than its exports slows down (backpressure
/// through the append channel) instead of taking the CPU the exports need, while an outage
/// (nobody reading) still buffers at full speed.
const PACING_RATIO: f64 = 1.25;
/// How long an export counts as behind after a full read.
const PACING_HOLD: Duration = Duration::from_millis(250);
/// Group commit: how long a small append waits for more before its transaction, and how many
/// records end the wait. 5,000 samples/s flushed every 10 ms cost 6.5 % of a core committed
/// one batch at a time, 3.5 % in 50 ms groups (file export, process_crash, our build machine).
const GROUP_COMMIT_DELAY: Duration = Duration::from_millis(50);
const GROUP_COMMIT_RECORDS: usize = 2_000;
/// A disk-full episode: from the first SQLITE_FULL until a normal commit works again.
pub(super) struct DiskFull {
    since: Instant,
    dropped_at_start: u64,
    next_probe: Instant,
}

pub(super) struct Worker {
    pub(super) data_dir: PathBuf,
    pub(super) disk_full: Option<DiskFull>,
    pub(super) store: Store,
    pub(super) app_rx: mpsc::Receiver<AppendBatch>,
    pub(super) ctl_rx: mpsc::UnboundedReceiver<Ctl>,
    /// Weak, so the channel still closes when every handle is gone; used to hand out a new
    /// handle after a reload.
    pub(super) ctl_tx: mpsc::WeakUnboundedSender<Ctl>,
    pub(super) tail_tx: Vec<watch::Sender<i64>>,
    pub(super) priorities: Vec<u8>,
    pub(super) options: QueueOptions,
    /// Set when the database was found damaged: the thread stops using it.
    pub(super) corrupt: Option<QueueError>,
    pub(super) failed: CancellationToken,
    pub(super) failure: Arc<std::sync::Mutex<Option<String>>>,
}

impl Worker {
    /// The database is damaged: mark it for recovery at the next start, stop serving, and
    /// tell the app (which shuts down in order).
    fn corrupted(&mut self, e: QueueError) {
        if self.corrupt.is_some() {
            return;
        }
        recover::mark_corrupt_while_running(&self.data_dir, &e);
        if let Ok(mut f) = self.failure.lock() {
            *f = Some(e.to_string());
        }
        self.corrupt = Some(e);
        self.failed.cancel();
    }

    pub(super) fn run(mut self) {
        let rt = match tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
        {
            Ok(rt) => rt,
            Err(e) => {
                tracing::error!(error = %e, "cannot start the queue thread's runtime");
                return;
            }
        };
        let span = tracing::info_span!("queue");
        let _enter = span.enter();
        rt.block_on(self.serve());
        if self.corrupt.is_some() {
            tracing::info!("queue stopped on a damaged database; not checkpointing it");
            return;
        }
        tracing::debug!("final WAL checkpoint started");
        if let Err(e) = self.store.checkpoint() {
            tracing::warn!(error = %e, "final WAL checkpoint failed (harmless: SQLite replays the WAL at next start)");
        }
        tracing::debug!("queue closed");
    }

    async fn serve(&mut self) {
        let mut appends: Vec<AppendBatch> = Vec::new();
        let mut acks: Vec<AckBatch> = Vec::new();
        let mut reads = Vec::new();
        let mut statuses = Vec::new();
        let mut reconfigs = Vec::new();
        let mut next_maintenance = Instant::now() + self.options.maintenance_interval;
        let mut app_open = true;
        let mut ctl_open = true;
        let mut failing_since: Option<Instant> = None;
        // Producer pacing (see PACING_RATIO): records appends may still take while paced.
        let mut credit: f64 = 0.0;
        let mut behind_until: Option<Instant> = None;
        loop {
            let paced = behind_until.is_some_and(|t| Instant::now() < t);
            let may_append = !paced || credit > 0.0;
            let pending = !appends.is_empty()
                || !acks.is_empty()
                || !statuses.is_empty()
                || !reconfigs.is_empty();
            if !pending && !app_open && !ctl_open {
                // Final status write.
                let _ = self.store.commit(
                    &[],
                    &mut [],
                    crate::time::now_ms(),
                    true,
                    AppendMode::Normal,
                );
                return;
            }
            // Wait for work, favouring exporters' requests over new appends.
            if !pending {
                let mut deadline = next_maintenance;
                if let Some(t) = behind_until.filter(|_| !may_append) {
                    deadline = deadline.min(t);
                }
                let deadline = tokio::time::Instant::from_std(deadline);
                tokio::select! {
                    biased;
                    c = self.ctl_rx.recv(), if ctl_open => match c {
                        Some(c) => sort_ctl(c, &mut reads, &mut acks, &mut statuses, &mut reconfigs),
                        None => ctl_open = false,
                    },
                    a = self.app_rx.recv(), if app_open && may_append => match a {
                        Some(a) => {
                            credit -= a.records.len() as f64;
                            appends.push(a);
                        }
                        None => app_open = false,
                    },
                    _ = tokio::time::sleep_until(deadline) => {}
                }
                // Group commit: woken by a small append batch, wait up to GROUP_COMMIT_DELAY
                // for more, so a trickle of batches (a reader flushing every few ms) shares
                // one transaction: fewer WAL pages rewritten, fewer fsyncs and wakeups.
                // Anything from an export or an operator ends the wait at once.
                if !appends.is_empty() && may_append {
                    let until = tokio::time::Instant::now() + GROUP_COMMIT_DELAY;
                    let mut records: usize = appends.iter().map(|a| a.records.len()).sum();
                    while records < GROUP_COMMIT_RECORDS && app_open {
                        tokio::select! {
                            biased;
                            c = self.ctl_rx.recv(), if ctl_open => {
                                match c {
                                    Some(c) => sort_ctl(c, &mut reads, &mut acks, &mut statuses, &mut reconfigs),
                                    None => ctl_open = false,
                                }
                                break;
                            }
                            a = self.app_rx.recv() => match a {
                                Some(a) => {
                                    records += a.records.len();
                                    credit -= a.records.len() as f64;
                                    appends.push(a);
                                }
                                None => app_open = false,
                            },
                            _ = tokio::time::sleep_until(until) => break,
                        }
                    }
                }
            }
            while let Ok(c) = self.ctl_rx.try_recv() {
                sort_ctl(c, &mut reads, &mut acks, &mut statuses, &mut reconfigs);
            }
            // Exports waiting for records are served first, from what is already committed.
            let (read, full) = self.answer_reads(&mut reads);
            if self.corrupt.is_some() {
                return;
            }
            if full {
                behind_until = Some(Instant::now() + PACING_HOLD);
            }
            credit = (credit + PACING_RATIO * read as f64).min(MAX_TXN_RECORDS as f64);
            let paced = behind_until.is_some_and(|t| Instant::now() < t);
            let mut taken: usize = appends.iter().map(|a| a.records.len()).sum();
            while taken < MAX_TXN_RECORDS && (!paced || credit > 0.0) {
                match self.app_rx.try_recv() {
                    Ok(a) => {
                        taken += a.records.len();
                        credit -= a.records.len() as f64;
                        appends.push(a);
                    }
                    Err(_) => break,
                }
            }
            if !paced {
                credit = credit.max(0.0);
            }

            let now = Instant::now();
            let maintain = now >= next_maintenance;
            if !appends.is_empty() || !acks.is_empty() || maintain {
                match self.commit(&appends, &mut acks, maintain) {
                    Ok(report) => {
                        appends.clear();
                        acks.clear();
                        if failing_since.take().is_some() {
                            tracing::info!("queue database writable again; commits resumed");
                        }
                        for (s, tail) in report.tails {
                            self.tail_tx[s].send_replace(tail);
                        }
                        if maintain {
                            next_maintenance = now + self.options.maintenance_interval;
                        }
                    }
                    Err(e) => {
                        if disk::is_corruption(&e) {
                            // What was not committed is lost, as on a crash: the readers
                            // stop, the export acks never made it.
                            self.corrupted(e);
                            return;
                        }
                        // Keep the work and try again: nothing is lost, readers feel backpressure.
                        if failing_since.is_none() {
                            failing_since = Some(now);
                        }
                        if self.disk_full.is_some() {
                            // Reported once when the episode began.
                            tracing::debug!(error = %e, "disk full, not even counters could be written; retrying in 1 s");
                        } else {
                            tracing::error!(error = %e, "queue commit failed; keeping the batch in memory and retrying in 1 s");
                        }
                        self.answer_reads(&mut reads);
                        self.answer_statuses(&mut statuses);
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        continue;
                    }
                }
            }
            // Status requests taken before the commit see everything they were sent after.
            self.answer_statuses(&mut statuses);
            for req in reconfigs.drain(..) {
                self.reconfigure(req, &mut appends, &mut acks);
            }
            // Reads that arrived during the commit are served now; acks and status requests
            // that came with them wait for the next turn's commit.
            while let Ok(c) = self.ctl_rx.try_recv() {
                sort_ctl(c, &mut reads, &mut acks, &mut statuses, &mut reconfigs);
            }
            self.answer_reads(&mut reads);
            if self.corrupt.is_some() {
                return;
            }
        }
    }

    /// One commit, disk-full aware: after SQLITE_FULL the same work is committed again with
    /// the streams' full strategies (see the design notes), and a normal commit is only tried
    /// again (once a second) when the filesystem has room.
    fn commit(
        &mut self,
        appends: &[AppendBatch],
        acks: &mut [AckBatch],
        maintain: bool,
    ) -> Result<sqlite::CommitReport, QueueError> {
        let now = Instant::now();
        let now_ms = crate::time::now_ms();
        let probe = match &mut self.disk_full {
            None => true,
            Some(ep) if now >= ep.next_probe => {
                ep.next_probe = now + Duration::from_secs(1);
                disk::free_bytes(&self.data_dir).is_some_and(|f| f >= disk::RESUME_FREE_BYTES)
            }
            Some(_) => false,
        };
        if probe {
            match self
                .store
                .commit(appends, acks, now_ms, maintain, AppendMode::Normal)
            {
                Ok(report) => {
                    if let Some(ep) = self.disk_full.take() {
                        self.end_disk_full(ep);
                    }
                    return Ok(report);
                }
                Err(e) if disk::is_disk_full(&e, &self.data_dir) => self.start_disk_full(&e),
                Err(e) => return Err(e),
            }
        }
        let mut last = None;
        for mode in [AppendMode::DiskFull, AppendMode::DiskFullDropAll] {
            match self.store.commit(appends, acks, now_ms, maintain, mode) {
                Ok(report) => return Ok(report),
                Err(e) if disk::is_disk_full(&e, &self.data_dir) => last = Some(e),
                Err(e) => return Err(e),
            }
        }
        Err(last.unwrap_or(QueueError::Closed))
    }

    fn dropped_disk_full(&self) -> u64 {
        self.store
            .status()
            .map(|s| s.iter().map(|s| s.dropped_disk_full).sum())
            .unwrap_or(0)
    }

    fn start_disk_full(&mut self, e: &QueueError) {
        if self.disk_full.is_some() {
            return;
        }
        let now = Instant::now();
        let free = disk::free_bytes(&self.data_dir);
        let released = disk::release_reserve(&self.data_dir);
        tracing::error!(
            path = %self.data_dir.display(),
            free_bytes = free,
            reserve_released = released,
            error = %e,
            "disk full: the queue cannot grow; new records are dropped (reject_new) or replace the oldest (overwrite_oldest) and counted as dropped_disk_full until space returns. Free space on this filesystem"
        );
        self.store.disk_full_since_ms = Some(crate::time::now_ms());
        self.disk_full = Some(DiskFull {
            since: now,
            dropped_at_start: self.dropped_disk_full(),
            next_probe: now + Duration::from_secs(1),
        });
    }

    fn end_disk_full(&mut self, ep: DiskFull) {
        self.store.disk_full_since_ms = None;
        let reserve = disk::create_reserve(&self.data_dir);
        tracing::info!(
            path = %self.data_dir.display(),
            free_bytes = disk::free_bytes(&self.data_dir),
            lasted_s = ep.since.elapsed().as_secs(),
            dropped = self.dropped_disk_full().saturating_sub(ep.dropped_at_start),
            reserve_restored = reserve,
            "disk space is back: the disk-full episode ended; new records are queued again"
        );
    }

    /// Commits everything waiting (so restarted sources see their last sequence number), then
    /// applies the new streams and answers with a handle that knows them.
    fn reconfigure(
        &mut self,
        (streams, sources, reply): ReconfigReq,
        appends: &mut Vec<AppendBatch>,
        acks: &mut Vec<AckBatch>,
    ) {
        while let Ok(a) = self.app_rx.try_recv() {
            appends.push(a);
        }
        if !appends.is_empty() || !acks.is_empty() {
            match self.commit(appends, acks, false) {
                Ok(report) => {
                    appends.clear();
                    acks.clear();
                    for (s, tail) in report.tails {
                        self.tail_tx[s].send_replace(tail);
                    }
                }
                Err(e) => {
                    let _ = reply.send(Err(e));
                    return;
                }
            }
        }
        let slots = match self.store.reconfigure(streams, &sources) {
            Ok(slots) => slots,
            Err(e) => {
                let _ = reply.send(Err(e));
                return;
            }
        };
        let known = self.tail_tx.len();
        for tail in self.store.tails().into_iter().skip(known) {
            self.tail_tx.push(watch::channel(tail).0);
        }
        self.priorities = self.store.priorities();
        // The request came through a handle, so a sender is alive to upgrade.
        let Some(ctl) = self.ctl_tx.upgrade() else {
            let _ = reply.send(Err(QueueError::Closed));
            return;
        };
        let handle = QueueHandle {
            ctl,
            failed: self.failed.clone(),
            tails: self.tail_tx.iter().map(|t| t.subscribe()).collect(),
            starts: self.store.export_starts(),
            states: self.store.state_cells(),
            source_states: self.store.source_state_cells(),
            priorities: self.priorities.clone(),
        };
        let _ = reply.send(Ok(Reconfigured {
            handle,
            slots,
            source_next_seq: self.store.source_next_seq(),
        }));
    }

    /// Serves reads, highest stream priority first. Returns the records handed out and whether
    /// any read came back full (its export is behind).
    fn answer_reads(&mut self, reads: &mut Vec<ReadReq>) -> (usize, bool) {
        reads.sort_by_key(|r| self.priorities[r.0.stream]);
        let (mut read, mut full) = (0, false);
        for (export, from, max_records, max_bytes, reply) in reads.drain(..) {
            let result = self.store.read(export, from, max_records, max_bytes);
            if let Err(e) = &result
                && disk::is_corruption(e)
            {
                self.corrupted(QueueError::Corrupt(e.to_string()));
            }
            if let Ok(records) = &result {
                read += records.len();
                full |= records.len() >= max_records;
            }
            let _ = reply.send(result);
        }
        (read, full)
    }

    fn answer_statuses(
        &mut self,
        statuses: &mut Vec<oneshot::Sender<Result<Vec<StreamStatus>, QueueError>>>,
    ) {
        for reply in statuses.drain(..) {
            let _ = reply.send(self.store.status());
        }
    }
}

type ReconfigReq = (
    Vec<StreamSpec>,
    Vec<String>,
    oneshot::Sender<Result<Reconfigured, QueueError>>,
);

type ReadReq = (
    ExportId,
    i64,
    usize,
    usize,
    oneshot::Sender<Result<Vec<Record>, QueueError>>,
);

fn sort_ctl(
    c: Ctl,
    reads: &mut Vec<ReadReq>,
    acks: &mut Vec<AckBatch>,
    statuses: &mut Vec<oneshot::Sender<Result<Vec<StreamStatus>, QueueError>>>,
    reconfigs: &mut Vec<ReconfigReq>,
) {
    match c {
        Ctl::Read {
            export,
            from,
            max_records,
            max_bytes,
            reply,
        } => reads.push((export, from, max_records, max_bytes, reply)),
        Ctl::Ack(a) => acks.push(a),
        Ctl::Status(reply) => statuses.push(reply),
        Ctl::Reconfigure {
            streams,
            sources,
            reply,
        } => reconfigs.push((streams, sources, reply)),
    }
}
