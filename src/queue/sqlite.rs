//! The SQLite store behind the queue: synchronous, owned by the queue thread alone.
//! See the design notes in `queue/mod.rs`.

use std::path::Path;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};

use super::cursor::Cursor;
use super::{
    AckBatch, AppendBatch, DeadLetter, ExportId, ExportStatus, QueueError, Record, StreamSpec,
    StreamStatus,
};
use super::{Durability, StateCell, StrategyOnFull};

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS streams(
    name TEXT PRIMARY KEY,
    tbl INTEGER NOT NULL UNIQUE,
    priority INTEGER NOT NULL,
    max_size INTEGER NOT NULL,
    in_config INTEGER NOT NULL DEFAULT 1,
    next_id INTEGER NOT NULL DEFAULT 1,
    bytes INTEGER NOT NULL DEFAULT 0,
    dropped_full INTEGER NOT NULL DEFAULT 0,
    dropped_overwritten INTEGER NOT NULL DEFAULT 0,
    dropped_ttl INTEGER NOT NULL DEFAULT 0,
    dropped_disk_full INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS exports(
    stream TEXT NOT NULL,
    name TEXT NOT NULL,
    kind TEXT NOT NULL,
    in_config INTEGER NOT NULL DEFAULT 1,
    acked_upto INTEGER NOT NULL,
    acked_ranges TEXT NOT NULL DEFAULT '',
    delivered INTEGER NOT NULL DEFAULT 0,
    retries INTEGER NOT NULL DEFAULT 0,
    dead_lettered INTEGER NOT NULL DEFAULT 0,
    last_export_ms INTEGER,
    last_error TEXT,
    last_error_ms INTEGER,
    state TEXT,
    PRIMARY KEY(stream, name)
);
CREATE TABLE IF NOT EXISTS sources(id TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS dead_letters(
    id INTEGER PRIMARY KEY,
    stream TEXT NOT NULL,
    export TEXT NOT NULL,
    record_id INTEGER NOT NULL,
    reason TEXT NOT NULL,
    at_ms INTEGER NOT NULL,
    payload BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS gateway(key TEXT PRIMARY KEY, value);
";

#[derive(Debug, Clone)]
struct ExportState {
    name: String,
    enabled: bool,
    /// False once a reload removed the export: it no longer holds records back.
    in_config: bool,
    cursor: Cursor,
    persisted_upto: i64,
    /// The ranges text last written (see [`Cursor::ranges_text`]).
    persisted_ranges: String,
    delivered: u64,
    retries: u64,
    dead_lettered: u64,
    last_export_ms: Option<i64>,
    last_error: Option<String>,
    last_error_ms: Option<i64>,
    /// The export's state line, written by its driver (see [`super::StateCell`]).
    state: StateCell,
}

#[derive(Debug, Clone)]
struct StreamState {
    spec: StreamSpec,
    /// False once a reload removed the stream: its records stay until it comes back or is purged.
    in_config: bool,
    table: String,
    /// Built once: the hot path must not format SQL per record.
    insert_sql: String,
    /// Lowest id present; equals `next_id` when the stream is empty. Ids in the table are
    /// always the contiguous range `head..next_id`: rows are only ever removed from the head.
    head: i64,
    next_id: i64,
    bytes: u64,
    dropped_full: u64,
    dropped_overwritten: u64,
    dropped_ttl: u64,
    dropped_disk_full: u64,
    /// Drops since the last log line, so a full stream logs once in a while, not per record.
    unlogged_drops: u64,
    exports: Vec<ExportState>,
}

/// How a commit treats new records; the queue thread picks the mode after SQLITE_FULL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendMode {
    /// Insert them (subject to `max_size` and `strategy_on_full`).
    Normal,
    /// The disk is full: streams with `overwrite_oldest` delete their oldest records to make
    /// room (SQLite reuses the freed pages), streams with `reject_new` drop the new records.
    /// Either way the dropped records are counted as `dropped_disk_full`.
    DiskFull,
    /// The disk is full and overwriting did not help: every new record is dropped and
    /// counted; only sequence numbers, acknowledgements and counters are written.
    DiskFullDropAll,
}

/// Where a (re)loaded configuration's streams, exports and sources live in the store, by
/// their position in the config: `streams[i]` is the slot of `config.streams[i]`, and so on.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Slots {
    pub streams: Vec<usize>,
    pub exports: Vec<Vec<usize>>,
    pub sources: Vec<usize>,
}

/// What one commit changed, for notifications and logs.
#[derive(Debug, Default)]
pub struct CommitReport {
    /// Streams whose tail moved: (stream, last id).
    pub tails: Vec<(usize, i64)>,
}

pub struct Store {
    conn: Connection,
    streams: Vec<StreamState>,
    source_seq: Vec<(String, u64)>,
    sources_dirty: Vec<bool>,
    /// Each source's health line (JSON), written by its reader, persisted with the status.
    source_states: Vec<StateCell>,
    synchronous_full: Option<bool>,
    /// Since when (ms) the disk is full, written with the status for `streamgate status`.
    pub disk_full_since_ms: Option<i64>,
}

/// The queue database's schema version (`PRAGMA user_version`), raised by every release that
/// changes the schema, with a step in [`migrate`]. 0 is a database written before versions
/// were kept (streamgate 0.1.0 up to December 2026).
pub const SCHEMA_VERSION: i64 = 1;

/// Brings the database to [`SCHEMA_VERSION`] in one transaction (all steps or none), or
/// refuses a database from a newer streamgate, whose format this one cannot know.
fn migrate(conn: &Connection, path: &Path) -> Result<(), QueueError> {
    let found: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if found > SCHEMA_VERSION {
        return Err(QueueError::NewerSchema {
            path: path.to_path_buf(),
            found,
            known: SCHEMA_VERSION,
        });
    }
    if found == SCHEMA_VERSION {
        return Ok(());
    }
    let tx = conn.unchecked_transaction()?;
    tx.execute_batch(SCHEMA)?;
    // 0 -> 1: the columns added before versions were kept, to whichever of them is missing:
    // the disk-full counter, the sources' health line, acknowledgements above the prefix.
    for (probe, add) in [
        (
            "SELECT dropped_disk_full FROM streams LIMIT 0",
            "ALTER TABLE streams ADD COLUMN dropped_disk_full INTEGER NOT NULL DEFAULT 0",
        ),
        (
            "SELECT state FROM sources LIMIT 0",
            "ALTER TABLE sources ADD COLUMN state TEXT",
        ),
        (
            "SELECT acked_ranges FROM exports LIMIT 0",
            "ALTER TABLE exports ADD COLUMN acked_ranges TEXT NOT NULL DEFAULT ''",
        ),
    ] {
        if tx.prepare(probe).is_err() {
            tx.execute_batch(add)?;
        }
    }
    tx.pragma_update(None, "user_version", SCHEMA_VERSION)?;
    tx.commit()?;
    if found > 0 || conn.query_row("SELECT count(*) FROM streams", [], |r| r.get::<_, i64>(0))? > 0
    {
        tracing::info!(
            from = found,
            to = SCHEMA_VERSION,
            "queue database schema upgraded"
        );
    }
    Ok(())
}

impl Store {
    /// Opens (or creates) the queue database and loads cursors, counters and sequences.
    pub fn open(
        path: &Path,
        specs: Vec<StreamSpec>,
        sources: &[String],
    ) -> Result<Store, QueueError> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // KiB: keeps RSS small with big queues. Queue access is sequential (appends at the
        // tail, reads and deletes at the head), so a small cache costs little: 1 MiB instead
        // of 4 measured the same throughput in `streamgate bench` (fill, drain, sustained,
        // overload; alternating runs) and 3 MiB less resident in its overload phase.
        conn.pragma_update(None, "cache_size", -1024)?;
        // Checkpoint every ~16 MiB of WAL instead of 4 MiB: queue pages are rewritten often
        // (appends at the tail, deletes at the head), a longer interval copies each fewer times.
        conn.pragma_update(None, "wal_autocheckpoint", 4000)?;
        conn.busy_timeout(Duration::from_secs(5))?;
        // Several statements per stream are cached; the default of 16 would thrash.
        conn.set_prepared_statement_cache_capacity(128);
        // quick_check reads every page (O(size), no index cross-checks): ~1 s per GB here.
        let check: String = conn.query_row("PRAGMA quick_check", [], |r| r.get(0))?;
        if check != "ok" {
            return Err(QueueError::Corrupt(check));
        }
        migrate(&conn, path)?;
        conn.execute("UPDATE streams SET in_config = 0", [])?;
        conn.execute("UPDATE exports SET in_config = 0", [])?;

        let mut streams = Vec::new();
        for spec in specs {
            streams.push(Self::load_stream(&conn, spec)?);
        }
        let mut source_seq = Vec::new();
        for id in sources {
            let next: Option<i64> = conn
                .query_row("SELECT next_seq FROM sources WHERE id = ?1", [id], |r| {
                    r.get(0)
                })
                .optional()?;
            source_seq.push((id.clone(), next.unwrap_or(1).max(1) as u64));
        }
        let n = source_seq.len();
        Ok(Store {
            conn,
            streams,
            source_seq,
            sources_dirty: vec![false; n],
            source_states: (0..n).map(|_| StateCell::default()).collect(),
            synchronous_full: Some(true),
            disk_full_since_ms: None,
        })
    }

    #[allow(clippy::type_complexity)] // rows read as tuples
    fn load_stream(conn: &Connection, spec: StreamSpec) -> Result<StreamState, QueueError> {
        let row: Option<(i64, i64)> = conn
            .query_row(
                "SELECT tbl, next_id FROM streams WHERE name = ?1",
                [&spec.name],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()?;
        let (tbl, persisted_next) = match row {
            Some(r) => r,
            None => {
                let tbl: i64 =
                    conn.query_row("SELECT COALESCE(MAX(tbl), 0) + 1 FROM streams", [], |r| {
                        r.get(0)
                    })?;
                conn.execute(
                    "INSERT INTO streams(name, tbl, priority, max_size) VALUES (?1, ?2, ?3, ?4)",
                    params![spec.name, tbl, spec.priority, spec.max_size as i64],
                )?;
                (tbl, 1)
            }
        };
        conn.execute(
            "UPDATE streams SET in_config = 1, priority = ?2, max_size = ?3 WHERE name = ?1",
            params![spec.name, spec.priority, spec.max_size as i64],
        )?;
        let table = format!("q_{tbl}");
        conn.execute_batch(&format!(
            "CREATE TABLE IF NOT EXISTS {table}(id INTEGER PRIMARY KEY, at_ms INTEGER NOT NULL, payload BLOB NOT NULL)"
        ))?;
        let (min_id, max_id, bytes): (Option<i64>, Option<i64>, Option<i64>) = conn.query_row(
            &format!("SELECT MIN(id), MAX(id), SUM(length(payload)) FROM {table}"),
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?;
        let next_id = persisted_next.max(max_id.map_or(1, |m| m + 1));
        let head = min_id.unwrap_or(next_id);
        let (dropped_full, dropped_overwritten, dropped_ttl, dropped_disk_full): (i64, i64, i64, i64) =
            conn.query_row(
                "SELECT dropped_full, dropped_overwritten, dropped_ttl, dropped_disk_full FROM streams WHERE name = ?1",
                [&spec.name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
            )?;

        let mut exports = Vec::new();
        for (name, kind, enabled) in &spec.exports {
            exports.push(Self::load_export(
                conn, &spec.name, name, kind, *enabled, head, next_id,
            )?);
        }
        Ok(StreamState {
            spec,
            in_config: true,
            insert_sql: format!("INSERT INTO {table}(id, at_ms, payload) VALUES (?1, ?2, ?3)"),
            table,
            head,
            next_id,
            bytes: bytes.unwrap_or(0) as u64,
            dropped_full: dropped_full as u64,
            dropped_overwritten: dropped_overwritten as u64,
            dropped_ttl: dropped_ttl as u64,
            dropped_disk_full: dropped_disk_full as u64,
            unlogged_drops: 0,
            exports,
        })
    }

    /// Loads (or creates) an export's cursor and counters. A new export starts at the head:
    /// it exports everything the stream holds.
    #[allow(clippy::type_complexity)] // rows read as tuples
    fn load_export(
        conn: &Connection,
        stream: &str,
        name: &str,
        kind: &str,
        enabled: bool,
        head: i64,
        next_id: i64,
    ) -> Result<ExportState, QueueError> {
        let row: Option<(i64, i64, i64, i64, Option<i64>, Option<String>, Option<i64>, String)> = conn
            .query_row(
                "SELECT acked_upto, delivered, retries, dead_lettered, last_export_ms, last_error, last_error_ms, acked_ranges
                 FROM exports WHERE stream = ?1 AND name = ?2",
                [stream, name],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?, r.get(7)?)),
            )
            .optional()?;
        let row = row.unwrap_or((head - 1, 0, 0, 0, None, None, None, String::new()));
        let acked = row.0.max(head - 1).min(next_id - 1);
        let mut cursor = Cursor::restore(acked, &row.7);
        // Rows below the head are gone (acknowledged by every export, expired or overwritten).
        cursor.skip_to(head - 1);
        conn.execute(
            "INSERT INTO exports(stream, name, kind, acked_upto) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT(stream, name) DO UPDATE SET kind = ?3, in_config = 1",
            params![stream, name, kind, acked],
        )?;
        Ok(ExportState {
            name: name.to_string(),
            enabled,
            in_config: true,
            persisted_ranges: row.7,
            cursor,
            persisted_upto: row.0,
            delivered: row.1 as u64,
            retries: row.2 as u64,
            dead_lettered: row.3 as u64,
            last_export_ms: row.4,
            last_error: row.5,
            last_error_ms: row.6,
            state: StateCell::default(),
        })
    }

    /// Applies a reloaded configuration: streams, exports and sources are matched by name, so
    /// the slots (indices) of everything that stays keep their meaning for the readers and
    /// exports that keep running; new ones get new slots at the end; removed ones keep their
    /// slot and their records (a removed stream keeps its data until it is configured again or
    /// purged; a removed export no longer holds records back). Transactional: on error nothing
    /// changed, in the database or in memory.
    pub fn reconfigure(
        &mut self,
        specs: Vec<StreamSpec>,
        sources: &[String],
    ) -> Result<Slots, QueueError> {
        let saved = (
            self.streams.clone(),
            self.source_seq.clone(),
            self.sources_dirty.clone(),
        );
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        match self.reconfigure_inner(specs, sources) {
            Ok(slots) => match self.conn.execute_batch("COMMIT") {
                Ok(()) => Ok(slots),
                Err(e) => {
                    let _ = self.conn.execute_batch("ROLLBACK");
                    (self.streams, self.source_seq, self.sources_dirty) = saved;
                    self.source_states.truncate(self.source_seq.len());
                    Err(e.into())
                }
            },
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                (self.streams, self.source_seq, self.sources_dirty) = saved;
                self.source_states.truncate(self.source_seq.len());
                Err(e)
            }
        }
    }

    fn reconfigure_inner(
        &mut self,
        specs: Vec<StreamSpec>,
        sources: &[String],
    ) -> Result<Slots, QueueError> {
        self.conn.execute("UPDATE streams SET in_config = 0", [])?;
        self.conn.execute("UPDATE exports SET in_config = 0", [])?;
        for st in &mut self.streams {
            st.in_config = false;
            for e in &mut st.exports {
                e.in_config = false;
            }
        }
        let mut slots = Slots::default();
        for spec in specs {
            let slot = match self.streams.iter().position(|st| st.spec.name == spec.name) {
                Some(slot) => {
                    self.conn.execute(
                        "UPDATE streams SET in_config = 1, priority = ?2, max_size = ?3 WHERE name = ?1",
                        params![spec.name, spec.priority, spec.max_size as i64],
                    )?;
                    let st = &mut self.streams[slot];
                    let mut export_slots = Vec::new();
                    for (name, kind, enabled) in &spec.exports {
                        let e = match st.exports.iter().position(|e| &e.name == name) {
                            Some(e) => {
                                self.conn.execute(
                                    "UPDATE exports SET in_config = 1, kind = ?3 WHERE stream = ?1 AND name = ?2",
                                    params![spec.name, name, kind],
                                )?;
                                st.exports[e].enabled = *enabled;
                                st.exports[e].in_config = true;
                                e
                            }
                            None => {
                                st.exports.push(Self::load_export(
                                    &self.conn, &spec.name, name, kind, *enabled, st.head,
                                    st.next_id,
                                )?);
                                st.exports.len() - 1
                            }
                        };
                        export_slots.push(e);
                    }
                    st.in_config = true;
                    st.spec = spec;
                    slots.exports.push(export_slots);
                    slot
                }
                None => {
                    let n = spec.exports.len();
                    self.streams.push(Self::load_stream(&self.conn, spec)?);
                    slots.exports.push((0..n).collect());
                    self.streams.len() - 1
                }
            };
            slots.streams.push(slot);
        }
        for id in sources {
            let slot = match self.source_seq.iter().position(|(s, _)| s == id) {
                Some(slot) => slot,
                None => {
                    let next: Option<i64> = self
                        .conn
                        .query_row("SELECT next_seq FROM sources WHERE id = ?1", [id], |r| {
                            r.get(0)
                        })
                        .optional()?;
                    self.source_seq
                        .push((id.clone(), next.unwrap_or(1).max(1) as u64));
                    self.sources_dirty.push(false);
                    self.source_states.push(StateCell::default());
                    self.source_seq.len() - 1
                }
            };
            slots.sources.push(slot);
        }
        Ok(slots)
    }

    /// The next sequence number of each source, in the order given to `open`.
    pub fn source_next_seq(&self) -> Vec<u64> {
        self.source_seq.iter().map(|(_, s)| *s).collect()
    }

    /// The first unacknowledged id of every export, by stream and export slot.
    /// Where each source's reader writes its health line, by source slot.
    pub fn source_state_cells(&self) -> Vec<StateCell> {
        self.source_states.clone()
    }

    /// Where each export's driver writes its state line.
    pub fn state_cells(&self) -> Vec<Vec<StateCell>> {
        self.streams
            .iter()
            .map(|st| st.exports.iter().map(|e| e.state.clone()).collect())
            .collect()
    }

    pub fn export_starts(&self) -> Vec<Vec<i64>> {
        self.streams
            .iter()
            .map(|st| {
                st.exports
                    .iter()
                    .map(|e| e.cursor.acked_upto() + 1)
                    .collect()
            })
            .collect()
    }

    /// The priority of every stream slot.
    pub fn priorities(&self) -> Vec<u8> {
        self.streams.iter().map(|st| st.spec.priority).collect()
    }

    /// The last id of each stream (0 when nothing was ever written).
    pub fn tails(&self) -> Vec<i64> {
        self.streams.iter().map(|s| s.next_id - 1).collect()
    }

    /// Applies appends, acknowledgements and (when `maintain`) TTL expiry and status in ONE
    /// transaction. On error nothing changed, in the database or in memory: call again.
    pub fn commit(
        &mut self,
        appends: &[AppendBatch],
        acks: &mut [AckBatch],
        now_ms: i64,
        maintain: bool,
        mode: AppendMode,
    ) -> Result<CommitReport, QueueError> {
        let saved = (
            self.streams.clone(),
            self.source_seq.clone(),
            self.sources_dirty.clone(),
        );
        match self.commit_inner(appends, acks, now_ms, maintain, mode) {
            Ok(report) => Ok(report),
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                (self.streams, self.source_seq, self.sources_dirty) = saved;
                Err(e)
            }
        }
    }

    #[allow(clippy::needless_range_loop)] // several per-stream vectors share the index
    fn commit_inner(
        &mut self,
        appends: &[AppendBatch],
        acks: &mut [AckBatch],
        now_ms: i64,
        maintain: bool,
        mode: AppendMode,
    ) -> Result<CommitReport, QueueError> {
        let want_full = appends.iter().any(|b| {
            b.records
                .iter()
                .any(|r| self.streams[r.stream].spec.durability == Durability::PowerLoss)
        });
        if self.synchronous_full != Some(want_full) {
            self.conn.pragma_update(
                None,
                "synchronous",
                if want_full { "FULL" } else { "NORMAL" },
            )?;
            self.synchronous_full = Some(want_full);
        }
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let mut report = CommitReport::default();
        let mut appended = vec![false; self.streams.len()];
        // Disk full, overwrite_oldest: bytes each stream wants to add in this commit; its
        // oldest records are deleted once (twice that much) before the first insert.
        let mut disk_need: Vec<Option<u64>> = vec![None; self.streams.len()];
        if mode == AppendMode::DiskFull {
            for rec in appends.iter().flat_map(|b| &b.records) {
                let n = disk_need[rec.stream].get_or_insert(0);
                *n += rec.payload.len() as u64;
            }
        }

        for batch in appends {
            for rec in &batch.records {
                let size = rec.payload.len() as u64;
                let s = rec.stream;
                let overwrite =
                    self.streams[s].spec.strategy_on_full == StrategyOnFull::OverwriteOldest;
                if mode == AppendMode::DiskFullDropAll
                    || (mode == AppendMode::DiskFull && !overwrite)
                {
                    self.streams[s].dropped_disk_full += 1;
                    continue;
                }
                if let Some(need) = disk_need[s].take() {
                    self.free_oldest(s, (2 * need).max(64 * 1024), true)?;
                }
                if self.streams[s].bytes + size > self.streams[s].spec.max_size {
                    let fits = self.streams[s].spec.strategy_on_full
                        == StrategyOnFull::OverwriteOldest
                        && size <= self.streams[s].spec.max_size
                        && {
                            let st = &self.streams[s];
                            let need = st.bytes + size - st.spec.max_size;
                            // Free a little more than needed so the next records do not each pay a delete.
                            self.free_oldest(s, need.max(st.spec.max_size / 100), false)?;
                            self.streams[s].bytes + size <= self.streams[s].spec.max_size
                        };
                    if !fits {
                        let st = &mut self.streams[s];
                        st.dropped_full += 1;
                        st.unlogged_drops += 1;
                        continue;
                    }
                }
                let st = &mut self.streams[s];
                let mut stmt = self.conn.prepare_cached(&st.insert_sql)?;
                stmt.execute(params![st.next_id, rec.created_ms, rec.payload])?;
                st.next_id += 1;
                st.bytes += size;
                appended[s] = true;
            }
            if let Some(src) = self.source_seq.get_mut(batch.source)
                && batch.next_seq > src.1
            {
                src.1 = batch.next_seq;
                self.sources_dirty[batch.source] = true;
            }
        }
        for (i, (id, next)) in self.source_seq.iter().enumerate() {
            if self.sources_dirty[i] {
                let mut stmt = self.conn.prepare_cached(
                    "INSERT INTO sources(id, next_seq) VALUES (?1, ?2)
                     ON CONFLICT(id) DO UPDATE SET next_seq = ?2",
                )?;
                stmt.execute(params![id, *next as i64])?;
            }
        }

        for ack in acks.iter_mut() {
            self.apply_ack(ack, now_ms)?;
        }
        for s in 0..self.streams.len() {
            if maintain && let Some(ttl) = self.streams[s].spec.time_to_live {
                self.expire(s, now_ms - ttl.as_millis() as i64)?;
            }
            self.trim(s)?;
            let st = &mut self.streams[s];
            if appended[s] {
                self.conn
                    .prepare_cached("UPDATE streams SET next_id = ?2 WHERE name = ?1")?
                    .execute(params![st.spec.name, st.next_id])?;
                report.tails.push((s, st.next_id - 1));
            }
            for e in &mut st.exports {
                // Acks above the prefix are written in the same transaction as the prefix, so
                // a crash resends only what was really unacknowledged.
                let text = e.cursor.ranges_text();
                if e.cursor.acked_upto() != e.persisted_upto || text != e.persisted_ranges {
                    self.conn
                        .prepare_cached(
                            "UPDATE exports SET acked_upto = ?3, acked_ranges = ?4 WHERE stream = ?1 AND name = ?2",
                        )?
                        .execute(params![st.spec.name, e.name, e.cursor.acked_upto(), text])?;
                    e.persisted_ranges = text;
                }
            }
            if maintain {
                self.write_status(s)?;
            }
        }
        if maintain {
            self.write_source_states()?;
        }
        self.conn.execute_batch("COMMIT")?;
        for st in &mut self.streams {
            for e in &mut st.exports {
                e.persisted_upto = e.cursor.acked_upto();
            }
        }
        self.sources_dirty.iter_mut().for_each(|d| *d = false);
        for st in &mut self.streams {
            if maintain && st.unlogged_drops > 0 {
                tracing::warn!(
                    stream = %st.spec.name,
                    dropped = st.unlogged_drops,
                    total = st.dropped_full,
                    max_size = st.spec.max_size,
                    "stream is full: new records rejected (strategy_on_full = reject_new); they show downstream as sequence gaps"
                );
                st.unlogged_drops = 0;
            }
        }
        Ok(report)
    }

    fn apply_ack(&mut self, ack: &mut AckBatch, now_ms: i64) -> Result<(), QueueError> {
        let st = &mut self.streams[ack.export.stream];
        let table_name = st.spec.name.clone();
        let e = &mut st.exports[ack.export.export];
        for id in &ack.delivered {
            e.cursor.ack(*id);
        }
        e.delivered += ack.delivered.len() as u64;
        e.retries += ack.retries;
        if !ack.delivered.is_empty() {
            e.last_export_ms = Some(now_ms);
        }
        if let Some(err) = ack.error.take() {
            e.last_error = Some(err);
            e.last_error_ms = Some(now_ms);
        }
        for DeadLetter { record, reason } in &ack.dead {
            self.conn
                .prepare_cached(
                    "INSERT INTO dead_letters(stream, export, record_id, reason, at_ms, payload)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )?
                .execute(params![
                    table_name,
                    e.name,
                    record.id,
                    reason,
                    now_ms,
                    &record.payload[..]
                ])?;
            e.cursor.ack(record.id);
            e.dead_lettered += 1;
        }
        Ok(())
    }

    /// Deletes records every enabled export has acknowledged.
    fn trim(&mut self, s: usize) -> Result<(), QueueError> {
        let st = &self.streams[s];
        let Some(upto) = st
            .exports
            .iter()
            .filter(|e| e.enabled && e.in_config)
            .map(|e| e.cursor.acked_upto())
            .min()
        else {
            return Ok(());
        };
        if upto < st.head {
            return Ok(());
        }
        let freed = self.delete_upto(s, upto)?;
        let st = &mut self.streams[s];
        st.bytes = st.bytes.saturating_sub(freed);
        Ok(())
    }

    /// Deletes rows `head..=upto`, returns their payload bytes and moves `head`.
    fn delete_upto(&mut self, s: usize, upto: i64) -> Result<u64, QueueError> {
        let st = &mut self.streams[s];
        let freed: Option<i64> = self
            .conn
            .prepare_cached(&format!(
                "SELECT SUM(length(payload)) FROM {} WHERE id <= ?1",
                st.table
            ))?
            .query_row([upto], |r| r.get(0))?;
        self.conn
            .prepare_cached(&format!("DELETE FROM {} WHERE id <= ?1", st.table))?
            .execute([upto])?;
        st.head = upto + 1;
        Ok(freed.unwrap_or(0) as u64)
    }

    /// Drops records `head..=upto` before every export acknowledged them (full or expired):
    /// cursors move past them. Returns how many were dropped.
    fn drop_head(&mut self, s: usize, upto: i64) -> Result<u64, QueueError> {
        let count = (upto - self.streams[s].head + 1) as u64;
        let freed = self.delete_upto(s, upto)?;
        let st = &mut self.streams[s];
        st.bytes = st.bytes.saturating_sub(freed);
        for e in &mut st.exports {
            e.cursor.skip_to(upto);
        }
        Ok(count)
    }

    /// Removes the oldest records until at least `need` bytes are free (overwrite_oldest), for
    /// the stream's `max_size` or, with `disk_full`, because the disk is full.
    fn free_oldest(&mut self, s: usize, need: u64, disk_full: bool) -> Result<(), QueueError> {
        let st = &self.streams[s];
        let mut freed = 0u64;
        let mut upto = st.head - 1;
        {
            let mut stmt = self.conn.prepare_cached(&format!(
                "SELECT id, length(payload) FROM {} WHERE id >= ?1 ORDER BY id",
                st.table
            ))?;
            let mut rows = stmt.query([st.head])?;
            while let Some(row) = rows.next()? {
                upto = row.get(0)?;
                freed += row.get::<_, i64>(1)? as u64;
                if freed >= need {
                    break;
                }
            }
        }
        if upto < self.streams[s].head {
            return Ok(());
        }
        let count = self.drop_head(s, upto)?;
        let st = &mut self.streams[s];
        if disk_full {
            // Logged once per episode by the queue thread, not per commit.
            st.dropped_disk_full += count;
            return Ok(());
        }
        st.dropped_overwritten += count;
        tracing::warn!(
            stream = %st.spec.name,
            overwritten = count,
            total = st.dropped_overwritten,
            "stream is full: oldest records overwritten (strategy_on_full = overwrite_oldest); they show downstream as sequence gaps"
        );
        Ok(())
    }

    /// Drops records enqueued before `cutoff_ms` (time_to_live).
    fn expire(&mut self, s: usize, cutoff_ms: i64) -> Result<(), QueueError> {
        let st = &self.streams[s];
        if st.head >= st.next_id {
            return Ok(());
        }
        let first_young: Option<i64> = self
            .conn
            .prepare_cached(&format!(
                "SELECT id FROM {} WHERE id >= ?1 AND at_ms >= ?2 ORDER BY id LIMIT 1",
                st.table
            ))?
            .query_row(params![st.head, cutoff_ms], |r| r.get(0))
            .optional()?;
        let upto = first_young.unwrap_or(st.next_id) - 1;
        if upto < st.head {
            return Ok(());
        }
        let count = self.drop_head(s, upto)?;
        let st = &mut self.streams[s];
        st.dropped_ttl += count;
        tracing::warn!(
            stream = %st.spec.name,
            expired = count,
            total = st.dropped_ttl,
            "records older than time_to_live dropped before export; they show downstream as sequence gaps"
        );
        Ok(())
    }

    fn write_source_states(&self) -> Result<(), QueueError> {
        for ((id, next), cell) in self.source_seq.iter().zip(&self.source_states) {
            let Some(state) = cell.lock().ok().and_then(|c| c.clone()) else {
                continue;
            };
            self.conn
                .prepare_cached(
                    "INSERT INTO sources(id, next_seq, state) VALUES (?1, ?2, ?3)
                     ON CONFLICT(id) DO UPDATE SET state = ?3",
                )?
                .execute(params![id, *next as i64, state])?;
        }
        Ok(())
    }

    fn write_status(&self, s: usize) -> Result<(), QueueError> {
        let st = &self.streams[s];
        self.conn
            .prepare_cached(
                "UPDATE streams SET bytes = ?2, dropped_full = ?3, dropped_overwritten = ?4, dropped_ttl = ?5,
                 dropped_disk_full = ?6 WHERE name = ?1",
            )?
            .execute(params![
                st.spec.name,
                st.bytes as i64,
                st.dropped_full as i64,
                st.dropped_overwritten as i64,
                st.dropped_ttl as i64,
                st.dropped_disk_full as i64
            ])?;
        for e in &st.exports {
            self.conn
                .prepare_cached(
                    "UPDATE exports SET delivered = ?3, retries = ?4, dead_lettered = ?5, last_export_ms = ?6,
                     last_error = ?7, last_error_ms = ?8, state = ?9 WHERE stream = ?1 AND name = ?2",
                )?
                .execute(params![
                    st.spec.name,
                    e.name,
                    e.delivered as i64,
                    e.retries as i64,
                    e.dead_lettered as i64,
                    e.last_export_ms,
                    e.last_error,
                    e.last_error_ms,
                    e.state.lock().ok().and_then(|s| s.clone())
                ])?;
        }
        self.conn
            .prepare_cached("INSERT INTO gateway(key, value) VALUES ('updated_ms', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1")?
            .execute([crate::time::now_ms()])?;
        self.conn
            .prepare_cached("INSERT INTO gateway(key, value) VALUES ('disk_full_since_ms', ?1) ON CONFLICT(key) DO UPDATE SET value = ?1")?
            .execute([self.disk_full_since_ms])?;
        Ok(())
    }

    /// Reads up to `max_records` / `max_bytes` (at least one record) from `from` on.
    pub fn read(
        &mut self,
        export: ExportId,
        from: i64,
        max_records: usize,
        max_bytes: usize,
    ) -> Result<Vec<Record>, QueueError> {
        let st = &self.streams[export.stream];
        let Some(cursor) = st.exports.get(export.export).map(|e| &e.cursor) else {
            return Ok(Vec::new());
        };
        let mut stmt = self.conn.prepare_cached(&format!(
            "SELECT id, at_ms, payload FROM {} WHERE id >= ?1 AND id < ?2 ORDER BY id LIMIT ?3",
            st.table
        ))?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        // Runs of unacknowledged ids: records acknowledged above the prefix (before a restart,
        // or out of order) are not read again.
        let mut from = cursor.next_unacked(from.max(st.head));
        while from < st.next_id && out.len() < max_records {
            let end = cursor
                .next_acked_after(from)
                .unwrap_or(st.next_id)
                .min(st.next_id);
            let mut rows = stmt.query(params![from, end, (max_records - out.len()) as i64])?;
            while let Some(row) = rows.next()? {
                let payload: Vec<u8> = row.get(2)?;
                if !out.is_empty() && bytes + payload.len() > max_bytes {
                    return Ok(out);
                }
                bytes += payload.len();
                out.push(Record {
                    id: row.get(0)?,
                    at_ms: row.get(1)?,
                    payload,
                });
            }
            from = cursor.next_unacked(end);
        }
        Ok(out)
    }

    /// A snapshot of every stream and export, for `status`, tests and the benchmark.
    pub fn status(&self) -> Result<Vec<StreamStatus>, QueueError> {
        let mut out = Vec::new();
        for st in &self.streams {
            let oldest: Option<i64> = self
                .conn
                .prepare_cached(&format!("SELECT at_ms FROM {} WHERE id = ?1", st.table))?
                .query_row([st.head], |r| r.get(0))
                .optional()?;
            let mut exports = Vec::with_capacity(st.exports.len());
            for e in &st.exports {
                let first = e.cursor.acked_upto() + 1;
                let oldest_unacked_ms: Option<i64> = if first < st.next_id {
                    self.conn
                        .prepare_cached(&format!("SELECT at_ms FROM {} WHERE id = ?1", st.table))?
                        .query_row([first.max(st.head)], |r| r.get(0))
                        .optional()?
                } else {
                    None
                };
                exports.push(ExportStatus {
                    name: e.name.clone(),
                    enabled: e.enabled,
                    in_config: e.in_config,
                    acked_upto: e.cursor.acked_upto(),
                    backlog: (st.next_id
                        - 1
                        - e.cursor.acked_upto()
                        - e.cursor.acked_above() as i64)
                        .max(0) as u64,
                    oldest_unacked_ms,
                    delivered: e.delivered,
                    retries: e.retries,
                    dead_lettered: e.dead_lettered,
                    last_export_ms: e.last_export_ms,
                    last_error: e.last_error.clone(),
                    last_error_ms: e.last_error_ms,
                    state: e.state.lock().ok().and_then(|s| s.clone()),
                });
            }
            out.push(StreamStatus {
                name: st.spec.name.clone(),
                in_config: st.in_config,
                priority: st.spec.priority,
                records: (st.next_id - st.head) as u64,
                bytes: st.bytes,
                max_size: st.spec.max_size,
                oldest_at_ms: oldest,
                last_id: st.next_id - 1,
                dropped_full: st.dropped_full,
                dropped_overwritten: st.dropped_overwritten,
                dropped_ttl: st.dropped_ttl,
                dropped_disk_full: st.dropped_disk_full,
                exports,
            });
        }
        Ok(out)
    }

    /// Checkpoints the WAL into the database file (at shutdown).
    pub fn checkpoint(&self) -> Result<(), QueueError> {
        self.conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")?;
        Ok(())
    }
}

/// Recovery after corruption: filling a fresh store with what could be read from the old one.
impl Store {
    /// Appends salvaged records (queue time, payload) to a stream, in order, with fresh ids:
    /// every export starts before them, so they are all exported (again).
    pub fn import(&mut self, s: usize, rows: &[(i64, Vec<u8>)]) -> Result<(), QueueError> {
        self.conn.execute_batch("BEGIN IMMEDIATE")?;
        let result = (|| {
            let st = &mut self.streams[s];
            let mut next_id = st.next_id;
            let mut bytes = st.bytes;
            {
                let mut stmt = self.conn.prepare_cached(&st.insert_sql)?;
                for (at_ms, payload) in rows {
                    stmt.execute(params![next_id, at_ms, payload])?;
                    next_id += 1;
                    bytes += payload.len() as u64;
                }
            }
            self.conn.execute(
                "UPDATE streams SET next_id = ?2, bytes = ?3 WHERE name = ?1",
                params![st.spec.name, next_id, bytes as i64],
            )?;
            self.conn.execute_batch("COMMIT")?;
            Ok::<_, QueueError>((next_id, bytes))
        })();
        match result {
            Ok((next_id, bytes)) => {
                let st = &mut self.streams[s];
                st.next_id = next_id;
                st.bytes = bytes;
                Ok(())
            }
            Err(e) => {
                let _ = self.conn.execute_batch("ROLLBACK");
                Err(e)
            }
        }
    }

    /// Restores a stream's drop counters from the old database.
    pub fn import_counters(&mut self, s: usize, dropped: [u64; 4]) -> Result<(), QueueError> {
        let st = &mut self.streams[s];
        st.dropped_full += dropped[0];
        st.dropped_overwritten += dropped[1];
        st.dropped_ttl += dropped[2];
        st.dropped_disk_full += dropped[3];
        self.write_status(s)
    }

    /// Raises a source's next sequence number (never lowers it) and persists it.
    pub fn raise_source_seq(&mut self, source: usize, next: u64) -> Result<(), QueueError> {
        let Some((id, cur)) = self.source_seq.get_mut(source) else {
            return Ok(());
        };
        if next > *cur {
            *cur = next;
            self.conn.execute(
                "INSERT INTO sources(id, next_seq) VALUES (?1, ?2) ON CONFLICT(id) DO UPDATE SET next_seq = ?2",
                params![&*id, next as i64],
            )?;
        }
        Ok(())
    }

    /// Keeps a salvaged dead letter.
    pub fn import_dead_letter(
        &mut self,
        row: (String, String, i64, String, i64, Vec<u8>),
    ) -> Result<(), QueueError> {
        self.conn.execute(
            "INSERT INTO dead_letters(stream, export, record_id, reason, at_ms, payload) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            params![row.0, row.1, row.2, row.3, row.4, row.5],
        )?;
        Ok(())
    }
}

/// See [`super::purge_stream`].
pub fn purge_stream(path: &Path, name: &str) -> Result<Option<super::Purged>, QueueError> {
    let mut conn = Connection::open(path)?;
    conn.busy_timeout(Duration::from_secs(5))?;
    let tx = conn.transaction()?;
    let tbl: Option<i64> = tx
        .query_row("SELECT tbl FROM streams WHERE name = ?1", [name], |r| {
            r.get(0)
        })
        .optional()?;
    let Some(tbl) = tbl else {
        return Ok(None);
    };
    let table = format!("q_{tbl}");
    let (records, bytes): (i64, Option<i64>) = tx.query_row(
        &format!("SELECT COUNT(*), SUM(length(payload)) FROM {table}"),
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    tx.execute_batch(&format!("DROP TABLE {table}"))?;
    tx.execute("DELETE FROM exports WHERE stream = ?1", [name])?;
    tx.execute("DELETE FROM streams WHERE name = ?1", [name])?;
    tx.commit()?;
    Ok(Some(super::Purged {
        records: records as u64,
        bytes: bytes.unwrap_or(0) as u64,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::NewRecord;

    fn spec(strategy: StrategyOnFull) -> Vec<StreamSpec> {
        vec![StreamSpec {
            name: "s".into(),
            priority: 1,
            max_size: 1 << 30,
            strategy_on_full: strategy,
            time_to_live: None,
            durability: Durability::ProcessCrash,
            exports: vec![("e".into(), "file".into(), true)],
        }]
    }

    fn batch(from_seq: u64, n: u64) -> AppendBatch {
        AppendBatch {
            source: 0,
            next_seq: from_seq + n,
            records: (0..n)
                .map(|i| NewRecord {
                    stream: 0,
                    created_ms: 1,
                    payload: vec![b'x'; 1000 + i as usize],
                })
                .collect(),
        }
    }

    fn store(strategy: StrategyOnFull) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::open(
            &dir.path().join("q.db"),
            spec(strategy),
            &["src".to_string()],
        )
        .unwrap();
        (dir, s)
    }

    #[test]
    fn disk_full_reject_new_counts_drops_and_still_commits_sequence_numbers() {
        let (_dir, mut s) = store(StrategyOnFull::RejectNew);
        s.commit(&[batch(1, 10)], &mut [], 0, true, AppendMode::Normal)
            .unwrap();
        s.commit(&[batch(11, 5)], &mut [], 0, true, AppendMode::DiskFull)
            .unwrap();
        let st = &s.status().unwrap()[0];
        assert_eq!((st.records, st.dropped_disk_full), (10, 5));
        assert_eq!(
            s.source_next_seq(),
            vec![16],
            "dropped samples are a gap, not reused"
        );
    }

    #[test]
    fn disk_full_overwrite_oldest_replaces_queued_records() {
        let (_dir, mut s) = store(StrategyOnFull::OverwriteOldest);
        s.commit(&[batch(1, 200)], &mut [], 0, true, AppendMode::Normal)
            .unwrap();
        s.commit(&[batch(201, 5)], &mut [], 0, true, AppendMode::DiskFull)
            .unwrap();
        let st = &s.status().unwrap()[0];
        assert!(st.dropped_disk_full > 0, "{st:?}");
        assert_eq!(
            st.records,
            205 - st.dropped_disk_full,
            "new records inserted"
        );
        assert_eq!(st.last_id, 205);
        assert_eq!(
            st.exports[0].acked_upto, st.dropped_disk_full as i64,
            "cursor moved past"
        );
        s.commit(
            &[batch(206, 5)],
            &mut [],
            0,
            true,
            AppendMode::DiskFullDropAll,
        )
        .unwrap();
        let after = &s.status().unwrap()[0];
        assert_eq!(after.dropped_disk_full, st.dropped_disk_full + 5);
        assert_eq!(after.last_id, 205);
        assert_eq!(s.source_next_seq(), vec![211]);
    }
}
