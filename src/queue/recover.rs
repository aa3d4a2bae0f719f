//! A damaged queue database: found at start (quick_check, SQLITE_CORRUPT / SQLITE_NOTADB) or
//! while running (then the process exits and this runs at the next start). The damaged files
//! are moved aside, never deleted; a fresh queue is filled with every record that can still be
//! read, and sequence numbers go on from a point no earlier sample can have used.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use rusqlite::{Connection, OpenFlags, OptionalExtension};

use super::sqlite::Store;
use super::{QueueError, StreamSpec, db_path};

/// Written by the queue thread when it meets corruption while running, before the process
/// exits: the next start recovers even if quick_check would pass (a damaged page that only a
/// particular read touches), so a damaged database cannot crash-loop the service.
pub const CORRUPT_MARKER: &str = "queue.db.corrupt";

/// When a source's saved counter cannot be read, its sequence numbers restart at
/// `now_ms * SEQ_JUMP_PER_MS`: above every number it can have issued unless it produced more
/// than 1000 samples per millisecond on average since 1970, and still far below 2^53, so
/// the numbers stay exact in JSON doubles (JavaScript, many stream processors) until ~2255.
pub const SEQ_JUMP_PER_MS: u64 = 1000;

/// What a recovery found.
#[derive(Debug, Default)]
pub struct Salvage {
    pub moved_to: PathBuf,
    pub records: u64,
    /// Read errors met (each may hide several rows) and rows that were not a valid payload.
    pub unreadable: u64,
    /// Sources whose counter was unreadable: their sequence numbers jumped.
    pub jumped: Vec<String>,
}

/// Marks the database as damaged: corruption found while running. The queue thread stops
/// using it and the gateway shuts down in order (readers, exports, queue); the next start (by
/// systemd or the user) moves the files aside and salvages what it can.
pub fn mark_corrupt_while_running(data_dir: &Path, e: &QueueError) {
    let _ = std::fs::write(data_dir.join(CORRUPT_MARKER), e.to_string());
    tracing::error!(
        path = %db_path(data_dir).display(),
        error = %e,
        "the queue database is damaged (found while running); shutting down: the next start moves it aside and salvages every readable record"
    );
}

/// Moves the damaged database aside and opens a fresh one holding what could be read.
pub fn recover(
    data_dir: &Path,
    cause: &QueueError,
    specs: Vec<StreamSpec>,
    sources: &[String],
) -> Result<(Store, Salvage), QueueError> {
    let started = std::time::Instant::now();
    let moved_to = move_aside(data_dir)?;
    tracing::error!(
        path = %db_path(data_dir).display(),
        moved_to = %moved_to.display(),
        error = %cause,
        "the queue database is damaged: moved it aside and started a fresh one; salvaging readable records. \
         Check the disk (power supply, SD card wear, dmesg); keep the moved files for analysis and delete them when no longer needed"
    );
    let mut store = Store::open(&db_path(data_dir), specs.clone(), sources)?;
    let mut salvage = Salvage {
        moved_to: moved_to.clone(),
        ..Salvage::default()
    };
    let old = open_old(&moved_to.join("queue.db"));
    // Counters first, before any record is imported: if the recovery stops half way (full
    // disk, power cut), the fresh queue already continues above every number used before.
    for (i, id) in sources.iter().enumerate() {
        let saved: Option<i64> = old.as_ref().and_then(|old| {
            old.query_row("SELECT next_seq FROM sources WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .ok()
            .flatten()
        });
        let next = match saved {
            Some(n) => n.max(1) as u64,
            None => {
                // Unreadable (or missing, which in a damaged file may be the same): the safe
                // restart point. A source that never ran just starts high; that is harmless.
                salvage.jumped.push(id.clone());
                crate::time::now_ms().max(0) as u64 * SEQ_JUMP_PER_MS
            }
        };
        store.raise_source_seq(i, next)?;
    }
    // Highest sequence number seen in salvaged payloads, per source id.
    let mut max_seq: HashMap<String, u64> = HashMap::new();
    if let Some(old) = &old {
        for (s, spec) in specs.iter().enumerate() {
            salvage_stream(old, &mut store, s, spec, &mut max_seq, &mut salvage)?;
        }
        salvage_dead_letters(old, &mut store);
    }
    // A salvaged sample above its source's saved counter (should not happen): go on above it.
    for (i, id) in sources.iter().enumerate() {
        if let Some(m) = max_seq.get(id) {
            store.raise_source_seq(i, m + 1)?;
        }
    }
    tracing::error!(
        moved_to = %moved_to.display(),
        salvaged_records = salvage.records,
        unreadable = salvage.unreadable,
        sequence_jumped = ?salvage.jumped,
        took_ms = started.elapsed().as_millis() as u64,
        "queue recovery finished: salvaged records are exported again (duplicates downstream carry the same sequence number); \
         records that could not be read are lost and show downstream as sequence gaps"
    );
    Ok((store, salvage))
}

fn move_aside(data_dir: &Path) -> Result<PathBuf, QueueError> {
    let io = |source| QueueError::DataDir {
        path: data_dir.to_owned(),
        source,
    };
    let stamp = crate::time::now_ms();
    let mut dir = data_dir.join(format!("corrupt-{stamp}"));
    let mut n = 1;
    while dir.exists() {
        dir = data_dir.join(format!("corrupt-{stamp}-{n}"));
        n += 1;
    }
    std::fs::create_dir(&dir).map_err(io)?;
    for name in ["queue.db", "queue.db-wal", "queue.db-shm", CORRUPT_MARKER] {
        let from = data_dir.join(name);
        if from.exists() {
            std::fs::rename(&from, dir.join(name)).map_err(io)?;
        }
    }
    Ok(dir)
}

/// Opens the moved copy without changing it: read-only (WAL replayed in memory), or, if
/// that fails, as immutable (the WAL ignored).
/// `writable_schema` (the connection never writes) lets SQLite read a truncated file: without
/// it, a file shorter than its header's page count is refused as a whole.
fn open_old(path: &Path) -> Option<Connection> {
    let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_URI;
    let usable = |c: &Connection| {
        let _ = c.pragma_update(None, "writable_schema", "ON");
        c.query_row("SELECT count(*) FROM sqlite_master", [], |r| {
            r.get::<_, i64>(0)
        })
        .is_ok()
    };
    if let Ok(c) = Connection::open_with_flags(path, ro)
        && usable(&c)
    {
        return Some(c);
    }
    let uri = format!("file:{}?immutable=1", path.display());
    Connection::open_with_flags(uri, ro).ok().filter(usable)
}

fn salvage_stream(
    old: &Connection,
    store: &mut Store,
    s: usize,
    spec: &StreamSpec,
    max_seq: &mut HashMap<String, u64>,
    salvage: &mut Salvage,
) -> Result<(), QueueError> {
    let row: Option<(i64, i64, i64, i64)> = old
        .query_row(
            "SELECT tbl, dropped_full, dropped_overwritten, dropped_ttl FROM streams WHERE name = ?1",
            [&spec.name],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .ok();
    let Some((tbl, full, over, ttl)) = row else {
        tracing::error!(stream = %spec.name, "stream's entry unreadable in the damaged queue: its records cannot be salvaged");
        salvage.unreadable += 1;
        return Ok(());
    };
    let disk: i64 = old
        .query_row(
            "SELECT dropped_disk_full FROM streams WHERE name = ?1",
            [&spec.name],
            |r| r.get(0),
        )
        .unwrap_or(0);
    store.import_counters(s, [full, over, ttl, disk].map(|n| n.max(0) as u64))?;
    let mut batch: Vec<(i64, Vec<u8>)> = Vec::new();
    let mut result = Ok(());
    let errors = read_skipping(old, &format!("q_{tbl}"), |at_ms, payload| {
        match crate::payload::decode(&payload) {
            Ok(p) => {
                let m = max_seq.entry(p.meta.source_id).or_insert(0);
                *m = (*m).max(p.meta.sequence_number);
                batch.push((at_ms, payload));
            }
            Err(_) => salvage.unreadable += 1,
        }
        if batch.len() >= 10_000 && result.is_ok() {
            salvage.records += batch.len() as u64;
            result = store.import(s, &std::mem::take(&mut batch));
        }
    });
    result?;
    salvage.records += batch.len() as u64;
    store.import(s, &batch)?;
    salvage.unreadable += errors;
    Ok(())
}

/// Calls `f(at_ms, payload)` for every readable row of a queue table, in id order. A read
/// error (damaged page) is skipped by seeking past it, ever further, until rows read again.
/// Returns how many read errors were met.
fn read_skipping(old: &Connection, table: &str, mut f: impl FnMut(i64, Vec<u8>)) -> u64 {
    let sql = format!("SELECT id, at_ms, payload FROM {table} WHERE id > ?1 ORDER BY id");
    let mut after = i64::MIN;
    let mut step: i64 = 1;
    let mut errors = 0u64;
    loop {
        let pass = (|| -> rusqlite::Result<()> {
            let mut stmt = old.prepare(&sql)?;
            let mut rows = stmt.query([after])?;
            while let Some(r) = rows.next()? {
                let id: i64 = r.get(0)?;
                let at_ms: i64 = r.get(1)?;
                let payload: Vec<u8> = r.get(2)?;
                after = id;
                step = 1;
                f(at_ms, payload);
            }
            Ok(())
        })();
        match pass {
            Ok(()) => return errors,
            Err(_) => {
                errors += 1;
                if errors > 10_000 || after == i64::MAX {
                    return errors;
                }
                after = after.saturating_add(step);
                step = step.saturating_mul(2);
            }
        }
    }
}

fn salvage_dead_letters(old: &Connection, store: &mut Store) {
    let rows = (|| -> rusqlite::Result<Vec<_>> {
        let mut stmt = old.prepare(
            "SELECT stream, export, record_id, reason, at_ms, payload FROM dead_letters ORDER BY id",
        )?;
        let rows = stmt.query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?;
        Ok(rows.map_while(Result::ok).collect())
    })();
    for row in rows.unwrap_or_default() {
        if store.import_dead_letter(row).is_err() {
            return;
        }
    }
}
