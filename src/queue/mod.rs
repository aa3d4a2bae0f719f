//! The durable, prioritised store-and-forward queue: the only meeting point of readers and
//! exporters, and the only owner of durability.
//!
//! # Design
//!
//! * **One SQLite database** (`<data_dir>/queue.db`, WAL, bundled SQLite) and **one connection**,
//!   owned by one thread (the *queue thread*). Everything else talks to it through channels.
//!   Two connections let a fast writer keep the WAL from resetting (it grew past 1 GB in our
//!   trials); one owner also makes every state change a single, ordered transaction.
//! * **A log per stream**: table `q_<n>(id INTEGER PRIMARY KEY, at_ms, payload)`. Ids are
//!   assigned by the queue, strictly increasing, never reused (the next id is persisted in
//!   `streams.next_id`). Rows are only removed from the head, so a stream is always the
//!   contiguous range `head..next_id`.
//! * **A cursor per export** (`exports.acked_upto`), not delete-on-send. Exports acknowledge
//!   records one by one, in any order; [`cursor::Cursor`] folds them into the contiguous prefix.
//!   A record is deleted once every enabled export of its stream has acknowledged it. Acks above
//!   the prefix are kept as compact ranges (`exports.acked_ranges`), written in the same
//!   transaction as the prefix, and reads skip them: after a crash an export resends only the
//!   records that were in flight (unacknowledged) at that moment, at least once.
//! * **Batched commits.** Each turn of the queue thread applies everything that arrived since the
//!   last one (appends from readers, acks and dead letters from exporters, TTL expiry, status) in
//!   ONE transaction, so a busy gateway commits thousands of samples per fsync. A quiet one
//!   groups small appends for up to 50 ms (or 2,000 records) into one transaction; anything an
//!   export or an operator asks ends that wait at once. Appends wait in a bounded channel: when
//!   the queue thread is behind, readers feel backpressure instead of the process growing.
//! * **Durability per stream.** `power_loss` commits with `synchronous=FULL` (fsync per commit);
//!   `process_crash` with `synchronous=NORMAL` (fsync at checkpoints). Either way a reader's
//!   sample counts as committed only after its transaction committed; the source's next sequence
//!   number is written in the same transaction, so sequence numbers are never reused.
//! * **Fair service.** Each turn serves exporter requests (reads, acks) before taking more
//!   appends, and reads are answered in stream-priority order. While an export is behind (its
//!   reads come back full), appends are paced to 1.25x what the exports read: an unthrottled
//!   producer slows down instead of taking the CPU from the exports, and an outage (nobody
//!   reading) still buffers at full speed. At most 4 append batches wait in the channel and 8,000
//!   records go into one transaction, which bounds the memory held for appends. Gateway-wide
//!   bandwidth is shared out by the exporters (`exporters::bandwidth`), not here.
//! * **Full and old data.** `max_size` (payload bytes per stream) with `reject_new` (the new
//!   record is dropped) or `overwrite_oldest` (the oldest records are deleted, cursors move past
//!   them); `time_to_live` drops records older than it. Every drop is counted per reason, logged,
//!   and shows downstream as a gap in `meta.sequenceNumber`.
//! * **Errors** (I/O): a failed transaction is rolled back in the database *and* in memory; the
//!   same work is retried after a pause. Nothing is acknowledged to anyone meanwhile.
//! * **Disk full** (SQLITE_FULL, see [`disk`]): `<data_dir>/reserve` (8 MiB of real zeros, made
//!   while there is room) is deleted at once, so SQLite can still grow the WAL, checkpoint and
//!   delete. The failed work is committed again in [`sqlite::AppendMode::DiskFull`]: streams
//!   with `overwrite_oldest` delete their oldest records to make room (SQLite reuses the pages),
//!   streams with `reject_new` drop the new records. If even that fails, every new record is
//!   dropped ([`sqlite::AppendMode::DiskFullDropAll`]) and only sequence numbers, acks and
//!   counters are written; if *that* fails, the work waits in memory (readers feel
//!   backpressure). Drops are counted as `dropped_disk_full`, and the sources' next sequence
//!   numbers are still persisted: dropped samples are gaps, never reused numbers. One ERROR line
//!   per episode (path, free space); `streamgate status` shows it. Once a second the free space
//!   is checked; with [`disk::RESUME_FREE_BYTES`] free a normal commit is tried, and when it
//!   succeeds the episode ends (one INFO line with the totals) and the reserve is made again.
//! * **Corruption** (see [`recover`]): at open, `PRAGMA quick_check` (reads every page, about
//!   1 s per GB) or SQLITE_CORRUPT/NOTADB moves `queue.db*` to `<data_dir>/corrupt-<ms>/`
//!   (never deleted), opens a fresh queue and imports every readable record (read errors are
//!   skipped by seeking past them); sources' counters are kept, or jump to `now_ms * 1000` when
//!   unreadable. Corruption met while running writes `<data_dir>/queue.db.corrupt` and exits
//!   the process (code 75): the next start recovers even if quick_check passes, so a damaged
//!   file cannot crash-loop the service.
//! * **Read-only data directory**: [`QueueError::ReadOnly`] names the path and the fix.

pub mod cursor;
pub mod disk;
pub mod inspect;
pub mod recover;
mod sqlite;
pub use sqlite::SCHEMA_VERSION;
mod worker;

pub use sqlite::Slots;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

use sqlite::Store;
use worker::Worker;

/// Append batches that may wait for the queue thread before readers feel backpressure. Each
/// holds up to 2,000 records (~0.5 MB with their payloads); 4 kept ~2 MB more resident in
/// overload for no measurable throughput (`streamgate bench`).
const APPEND_CHANNEL_BATCHES: usize = 2;

#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    #[error("queue database error: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("queue database failed its integrity check: {0}")]
    Corrupt(String),
    #[error("cannot use data directory {path}")] // the cause follows in the error chain
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "another streamgate process is using {path} (its lock file is held); stop it or use another gateway.data_dir"
    )]
    Locked { path: PathBuf },
    #[error(
        "data directory {path} is not writable; mount it read-write, give the service user write access (e.g. chown -R streamgate {path}), or set gateway.data_dir to a writable directory"
    )]
    ReadOnly {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "the queue database {path} was written by a newer streamgate (schema version {found}; this one knows up to {known}); it is left as it is: run that version again (its records are kept), or move the file away to start an empty queue"
    )]
    NewerSchema {
        path: PathBuf,
        found: i64,
        known: i64,
    },
    #[error("the queue has shut down")]
    Closed,
    #[error(
        "the queue database was found damaged while running ({0}); the next start moves it aside and salvages every readable record"
    )]
    CorruptWhileRunning(String),
}

/// What a full stream does with a new record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrategyOnFull {
    RejectNew,
    OverwriteOldest,
}

/// What a committed record survives.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is fsynced (SQLite `synchronous=FULL`): survives power loss.
    PowerLoss,
    /// Commits reach the OS but are fsynced only at checkpoints (`synchronous=NORMAL`):
    /// survives a crash of the process, may lose the last commits on power loss.
    ProcessCrash,
}

/// What a stream is, as far as the queue is concerned (the app builds it from the config).
#[derive(Debug, Clone)]
pub struct StreamSpec {
    pub name: String,
    pub priority: u8,
    pub max_size: u64,
    pub strategy_on_full: StrategyOnFull,
    pub time_to_live: Option<Duration>,
    pub durability: Durability,
    /// (name, kind, enabled) of each export, in config order.
    pub exports: Vec<(String, String, bool)>,
}

/// An export, by its stream's and its own position in the config.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExportId {
    pub stream: usize,
    pub export: usize,
}

/// A normalised sample on its way into the queue.
#[derive(Debug, Clone)]
pub struct NewRecord {
    pub stream: usize,
    /// Gateway time when the sample was normalised (ms); stored as the record's queue time.
    pub created_ms: i64,
    pub payload: Vec<u8>,
}

/// Records from one source, with the source's next sequence number after them.
#[derive(Debug, Clone)]
pub struct AppendBatch {
    /// Index of the source in the config.
    pub source: usize,
    pub next_seq: u64,
    pub records: Vec<NewRecord>,
}

/// A stored record as exporters see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: i64,
    /// When the record was queued (ms since epoch).
    pub at_ms: i64,
    pub payload: Vec<u8>,
}

/// A record an export gave up on, with the reason.
#[derive(Debug, Clone)]
pub struct DeadLetter {
    pub record: Record,
    pub reason: String,
}

/// What an export reports back after a send.
#[derive(Debug, Clone)]
pub struct AckBatch {
    pub export: ExportId,
    pub delivered: Vec<i64>,
    pub dead: Vec<DeadLetter>,
    /// Records that were sent again in this round.
    pub retries: u64,
    pub error: Option<String>,
}

/// An export's state line for `status` ("connected to ..., 3 of 4 sends in flight"): written
/// by the export's driver whenever it changes, read by the queue when it writes its status.
/// One place holds it; nothing carries it along with every acknowledgement.
pub type StateCell = Arc<std::sync::Mutex<Option<String>>>;

#[derive(Debug, Clone, PartialEq)]
pub struct ExportStatus {
    pub name: String,
    pub enabled: bool,
    /// False once a reload removed the export (it no longer holds records back).
    pub in_config: bool,
    pub acked_upto: i64,
    pub backlog: u64,
    /// Queue time of the first record not yet acknowledged: how far behind the export is.
    pub oldest_unacked_ms: Option<i64>,
    pub delivered: u64,
    pub retries: u64,
    pub dead_lettered: u64,
    pub last_export_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    pub state: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct StreamStatus {
    pub name: String,
    /// False once a reload removed the stream (its records are kept).
    pub in_config: bool,
    pub priority: u8,
    pub records: u64,
    pub bytes: u64,
    pub max_size: u64,
    pub oldest_at_ms: Option<i64>,
    pub last_id: i64,
    pub dropped_full: u64,
    pub dropped_overwritten: u64,
    pub dropped_ttl: u64,
    /// Records dropped because the disk was full (new ones, or the oldest with overwrite_oldest).
    pub dropped_disk_full: u64,
    pub exports: Vec<ExportStatus>,
}

enum Ctl {
    Read {
        export: ExportId,
        from: i64,
        max_records: usize,
        max_bytes: usize,
        reply: oneshot::Sender<Result<Vec<Record>, QueueError>>,
    },
    Ack(AckBatch),
    Status(oneshot::Sender<Result<Vec<StreamStatus>, QueueError>>),
    Reconfigure {
        streams: Vec<StreamSpec>,
        sources: Vec<String>,
        reply: oneshot::Sender<Result<Reconfigured, QueueError>>,
    },
}

/// The queue after a reload: a handle that knows the new streams, and where the new
/// config's streams, exports and sources live (see [`Slots`]).
pub struct Reconfigured {
    pub handle: QueueHandle,
    pub slots: Slots,
    /// Next sequence number of each source slot.
    pub source_next_seq: Vec<u64>,
}

/// Where readers put records. Dropping every appender is how the queue learns that the
/// readers have stopped.
#[derive(Clone)]
pub struct Appender {
    tx: mpsc::Sender<AppendBatch>,
}

impl Appender {
    /// An appender whose batches arrive on the returned receiver instead of a queue: for
    /// tests and tools that want to see what a reader produces.
    pub fn detached(capacity: usize) -> (Appender, mpsc::Receiver<AppendBatch>) {
        let (tx, rx) = mpsc::channel(capacity);
        (Appender { tx }, rx)
    }

    /// True when the queue thread has taken every batch handed over (it commits them before
    /// it answers the next status request).
    pub fn is_drained(&self) -> bool {
        self.tx.capacity() == self.tx.max_capacity()
    }

    /// Queues a batch; waits while the queue thread is behind (backpressure).
    pub async fn append(&self, batch: AppendBatch) -> Result<(), QueueError> {
        self.tx.send(batch).await.map_err(|_| QueueError::Closed)
    }
}

/// How exporters, `status` and the app talk to the queue thread.
#[derive(Clone)]
pub struct QueueHandle {
    ctl: mpsc::UnboundedSender<Ctl>,
    /// Cancelled when the queue thread stopped on a damaged database.
    failed: CancellationToken,
    tails: Vec<watch::Receiver<i64>>,
    starts: Vec<Vec<i64>>,
    states: Vec<Vec<StateCell>>,
    source_states: Vec<StateCell>,
    priorities: Vec<u8>,
}

impl QueueHandle {
    /// Cancelled when the queue stopped on its own because the database was found damaged
    /// (see [`Queue::failure`]); the app then shuts down in order.
    pub fn failed(&self) -> CancellationToken {
        self.failed.clone()
    }

    /// Where the reader of the source in `slot` writes its health line.
    pub fn source_state_cell(&self, slot: usize) -> StateCell {
        self.source_states.get(slot).cloned().unwrap_or_default()
    }

    /// Where export `id`'s driver writes its state line.
    pub fn state_cell(&self, id: ExportId) -> StateCell {
        self.states[id.stream][id.export].clone()
    }

    /// The first record id this export has not acknowledged (where it starts after a restart).
    pub fn export_start(&self, id: ExportId) -> i64 {
        self.starts[id.stream][id.export]
    }

    /// Notified with the last id each time records are committed to `stream`.
    pub fn tail(&self, stream: usize) -> watch::Receiver<i64> {
        self.tails[stream].clone()
    }

    pub fn priority(&self, stream: usize) -> u8 {
        self.priorities[stream]
    }

    pub async fn read(
        &self,
        export: ExportId,
        from: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        self.read_ahead(export, from, max_records, max_bytes)?
            .await
            .map_err(|_| QueueError::Closed)?
    }

    /// Like [`read`](Self::read), but sends the request now and returns a receiver: an export
    /// reads its next batch while it is still sending the current one.
    pub fn read_ahead(
        &self,
        export: ExportId,
        from: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<oneshot::Receiver<Result<Vec<Record>, QueueError>>, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Read {
                export,
                from,
                max_records,
                max_bytes,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        Ok(rx)
    }

    /// Reports delivered and dead-lettered records; applied in the next transaction.
    pub fn ack(&self, ack: AckBatch) -> Result<(), QueueError> {
        self.ctl.send(Ctl::Ack(ack)).map_err(|_| QueueError::Closed)
    }

    /// Applies a reloaded configuration (see `Store::reconfigure`): first commits every batch
    /// the readers have handed over, so a restarted source continues with the right sequence
    /// number, then matches streams, exports and sources by name.
    pub async fn reconfigure(
        &self,
        streams: Vec<StreamSpec>,
        sources: Vec<String>,
    ) -> Result<Reconfigured, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Reconfigure {
                streams,
                sources,
                reply,
            })
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }

    pub async fn status(&self) -> Result<Vec<StreamStatus>, QueueError> {
        let (reply, rx) = oneshot::channel();
        self.ctl
            .send(Ctl::Status(reply))
            .map_err(|_| QueueError::Closed)?;
        rx.await.map_err(|_| QueueError::Closed)?
    }
}

/// The running queue: its thread and what was read at open.
pub struct Queue {
    pub handle: QueueHandle,
    pub appender: Appender,
    /// Next sequence number of each source (config order).
    pub source_next_seq: Vec<u64>,
    thread: JoinHandle<()>,
    _lock: std::fs::File,
    /// Why the queue thread stopped on its own, once it did.
    failure: Arc<std::sync::Mutex<Option<String>>>,
}

/// Tuning of the queue thread.
#[derive(Debug, Clone, Copy)]
pub struct QueueOptions {
    /// How often TTL expiry runs and status is written.
    pub maintenance_interval: Duration,
}

impl Default for QueueOptions {
    fn default() -> Self {
        QueueOptions {
            maintenance_interval: Duration::from_secs(1),
        }
    }
}

/// Path of the queue database inside a data directory.
pub fn db_path(data_dir: &Path) -> PathBuf {
    data_dir.join("queue.db")
}

/// An I/O error on the data directory; "not writable" gets its own message with the fix.
fn dir_error(data_dir: &Path, source: std::io::Error) -> QueueError {
    if disk::is_not_writable(&source) {
        QueueError::ReadOnly {
            path: data_dir.to_owned(),
            source,
        }
    } else {
        QueueError::DataDir {
            path: data_dir.to_owned(),
            source,
        }
    }
}

/// Takes the data directory's lock: one process at a time uses a queue.
fn lock_data_dir(data_dir: &Path) -> Result<std::fs::File, QueueError> {
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(data_dir.join("streamgate.lock"))
        .map_err(|source| dir_error(data_dir, source))?;
    if lock.try_lock().is_err() {
        return Err(QueueError::Locked {
            path: data_dir.to_owned(),
        });
    }
    Ok(lock)
}

/// What `purge_stream` deleted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Purged {
    pub records: u64,
    pub bytes: u64,
}

/// Deletes a stream that is no longer configured, with every record it still holds, its
/// export cursors and counters. Needs the data directory's lock: the gateway must be stopped.
pub fn purge_stream(data_dir: &Path, name: &str) -> Result<Option<Purged>, QueueError> {
    let path = db_path(data_dir);
    if !path.exists() {
        return Ok(None);
    }
    let _lock = lock_data_dir(data_dir)?;
    sqlite::purge_stream(&path, name)
}

impl Queue {
    /// Opens the queue in `data_dir` (created if missing) and starts its thread.
    pub fn open(
        data_dir: &Path,
        streams: Vec<StreamSpec>,
        sources: &[String],
        options: QueueOptions,
    ) -> Result<Queue, QueueError> {
        let dir_err = |source| dir_error(data_dir, source);
        std::fs::create_dir_all(data_dir).map_err(dir_err)?;
        let lock = lock_data_dir(data_dir)?;
        let priorities: Vec<u8> = streams.iter().map(|s| s.priority).collect();
        let marked = data_dir.join(recover::CORRUPT_MARKER).exists();
        let opened = if marked {
            Err(QueueError::Corrupt(
                "marked damaged by the previous run (queue.db.corrupt)".into(),
            ))
        } else {
            Store::open(&db_path(data_dir), streams.clone(), sources)
        };
        let store = match opened {
            Ok(store) => store,
            // Started on a full disk: the reserve left by the last run makes room to open.
            Err(e) if disk::is_disk_full(&e, data_dir) && disk::release_reserve(data_dir) => {
                tracing::error!(
                    path = %data_dir.display(),
                    free_bytes = disk::free_bytes(data_dir),
                    "disk full at start: released the reserve file to open the queue; free space on this filesystem"
                );
                Store::open(&db_path(data_dir), streams.clone(), sources)?
            }
            Err(e) if disk::is_corruption(&e) => {
                recover::recover(data_dir, &e, streams.clone(), sources)?.0
            }
            Err(e) if disk::is_read_only(&e) => {
                return Err(QueueError::ReadOnly {
                    path: db_path(data_dir),
                    source: std::io::Error::new(
                        std::io::ErrorKind::ReadOnlyFilesystem,
                        e.to_string(),
                    ),
                });
            }
            Err(e) => return Err(e),
        };
        if !disk::create_reserve(data_dir) {
            tracing::warn!(
                path = %data_dir.join(disk::RESERVE_FILE).display(),
                bytes = disk::RESERVE_BYTES,
                "no room for the disk-full reserve file; the queue has less room to recover if the disk fills"
            );
        }
        let source_next_seq = store.source_next_seq();
        let starts = store.export_starts();
        let states = store.state_cells();
        let source_states = store.source_state_cells();
        let (tail_tx, tails): (Vec<_>, Vec<_>) =
            store.tails().into_iter().map(watch::channel).unzip();
        let (app_tx, app_rx) = mpsc::channel(APPEND_CHANNEL_BATCHES);
        let (ctl_tx, ctl_rx) = mpsc::unbounded_channel();
        let dir = data_dir.to_owned();
        let weak_ctl = ctl_tx.downgrade();
        let failed = CancellationToken::new();
        let failure = Arc::new(std::sync::Mutex::new(None));
        let (worker_failed, worker_failure) = (failed.clone(), failure.clone());
        let thread = std::thread::Builder::new()
            .name("queue".into())
            .spawn(move || {
                let worker = Worker {
                    data_dir: dir,
                    disk_full: None,
                    store,
                    app_rx,
                    ctl_rx,
                    ctl_tx: weak_ctl,
                    tail_tx,
                    priorities: streams.iter().map(|s| s.priority).collect(),
                    options,
                    corrupt: None,
                    failed: worker_failed,
                    failure: worker_failure,
                };
                worker.run();
            })
            .map_err(dir_err)?;
        Ok(Queue {
            handle: QueueHandle {
                ctl: ctl_tx,
                failed,
                tails,
                starts,
                states,
                source_states,
                priorities,
            },
            appender: Appender { tx: app_tx },
            source_next_seq,
            thread,
            _lock: lock,
            failure,
        })
    }

    /// Why the queue stopped on its own (a damaged database), if it did: the process should
    /// exit with [`QueueError::CorruptWhileRunning`] after shutting down.
    pub fn failure(&self) -> Option<QueueError> {
        let text = self.failure.lock().ok()?.clone()?;
        Some(QueueError::CorruptWhileRunning(text))
    }

    /// Waits for the queue thread to commit what it has and close the database. Every
    /// `Appender` and `QueueHandle` clone must be dropped first, or this waits for them.
    pub fn close(self) {
        let Queue {
            handle,
            appender,
            thread,
            _lock,
            ..
        } = self;
        drop(handle);
        drop(appender);
        if thread.join().is_err() {
            tracing::error!("the queue thread panicked");
        }
        drop(_lock);
    }
}
