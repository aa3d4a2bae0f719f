//! A read-only look into a queue database, for `streamgate status`: the schema stays known in
//! this module only. The daemon writes counters, cursors and export states every
//! `gateway.status_interval`; this reads them without taking the queue's lock.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::time::now_ms;

#[derive(Debug, Serialize)]
pub struct StatusReport {
    /// When the daemon last wrote its status (ms), if ever.
    pub updated_ms: Option<i64>,
    /// Since when (ms) the data directory's disk is full, while it is.
    pub disk_full_since_ms: Option<i64>,
    pub streams: Vec<StreamReport>,
    pub sources: Vec<SourceReport>,
}

#[derive(Debug, Serialize)]
pub struct StreamReport {
    pub name: String,
    pub in_config: bool,
    pub priority: i64,
    pub records: i64,
    pub bytes: i64,
    pub max_size: i64,
    pub oldest_age_ms: Option<i64>,
    pub last_sequence_id: i64,
    pub dropped_full: i64,
    pub dropped_overwritten: i64,
    pub dropped_ttl: i64,
    /// Dropped because the disk was full (see docs/reliability.md).
    pub dropped_disk_full: i64,
    pub exports: Vec<ExportReport>,
}

#[derive(Debug, Serialize)]
pub struct ExportReport {
    pub name: String,
    pub kind: String,
    pub in_config: bool,
    pub acked_upto: i64,
    pub backlog: i64,
    pub delivered: i64,
    pub retries: i64,
    pub dead_lettered: i64,
    pub last_export_ms: Option<i64>,
    pub last_error: Option<String>,
    pub last_error_ms: Option<i64>,
    /// The exporter's own description of its connection, as of its last send.
    pub state: Option<String>,
    /// The latest dead letters: (record id, reason).
    pub recent_dead_letters: Vec<(i64, String)>,
}

#[derive(Debug, Serialize)]
pub struct SourceReport {
    pub id: String,
    pub next_sequence_number: i64,
    /// How the source was doing at the last status write (none: it never ran since this
    /// field exists, or it is no longer configured and ran before).
    pub health: Option<SourceHealth>,
}

/// A source's health as its reader last wrote it (see `readers::normalise`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct SourceHealth {
    /// `connecting`, `connected`, `failing` or `never connected`.
    pub state: String,
    /// When the current failure episode began (ms since the epoch).
    pub failing_since_ms: Option<i64>,
    /// Failed connects or reads in the current episode.
    pub failures: u64,
    pub last_error: Option<String>,
    /// When it last delivered a good reading (ms since the epoch).
    pub last_good_ms: Option<i64>,
    /// Connections lost since the gateway started.
    pub reconnects: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum InspectError {
    #[error("no queue database at {0}: has streamgate run with this data_dir?")]
    Missing(String),
    #[error("cannot read the queue database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Reads what a queue database in `data_dir` holds, read-only (the daemon may be running).
#[allow(clippy::type_complexity)] // rows read as tuples
pub fn read(data_dir: &Path) -> Result<StatusReport, InspectError> {
    let path = super::db_path(data_dir);
    if !path.exists() {
        return Err(InspectError::Missing(path.display().to_string()));
    }
    let conn = Connection::open_with_flags(&path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let updated_ms: Option<i64> = conn
        .query_row(
            "SELECT value FROM gateway WHERE key = 'updated_ms'",
            [],
            |r| r.get(0),
        )
        .optional()?;
    // Older databases have no such key (or column below): read as none.
    let disk_full_since_ms: Option<i64> = conn
        .query_row(
            "SELECT value FROM gateway WHERE key = 'disk_full_since_ms'",
            [],
            |r| r.get(0),
        )
        .optional()
        .ok()
        .flatten()
        .flatten();
    let now = now_ms();
    let mut streams = Vec::new();
    let mut stmt = conn.prepare(
        "SELECT name, tbl, in_config, priority, max_size, next_id, bytes, dropped_full, dropped_overwritten, dropped_ttl
         FROM streams ORDER BY in_config DESC, priority, name",
    )?;
    let rows: Vec<(String, i64, bool, i64, i64, i64, i64, i64, i64, i64)> = stmt
        .query_map([], |r| {
            Ok((
                r.get(0)?,
                r.get(1)?,
                r.get(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
                r.get(6)?,
                r.get(7)?,
                r.get(8)?,
                r.get(9)?,
            ))
        })?
        .collect::<Result<_, _>>()?;
    for (
        name,
        tbl,
        in_config,
        priority,
        max_size,
        next_id,
        bytes,
        dropped_full,
        dropped_overwritten,
        dropped_ttl,
    ) in rows
    {
        let table = format!("q_{tbl}");
        let (min_id, max_id): (Option<i64>, Option<i64>) =
            conn.query_row(&format!("SELECT MIN(id), MAX(id) FROM {table}"), [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })?;
        let records = match (min_id, max_id) {
            (Some(a), Some(b)) => b - a + 1,
            _ => 0,
        };
        let last_id = max_id.unwrap_or(next_id - 1).max(next_id - 1);
        let oldest_age_ms: Option<i64> = match min_id {
            Some(id) => conn
                .query_row(
                    &format!("SELECT at_ms FROM {table} WHERE id = ?1"),
                    [id],
                    |r| r.get::<_, i64>(0),
                )
                .optional()?
                .map(|at| (now - at).max(0)),
            None => None,
        };
        // Queues written before acknowledgements above the prefix were kept have no ranges.
        let ranges = if conn
            .prepare("SELECT acked_ranges FROM exports LIMIT 0")
            .is_ok()
        {
            "acked_ranges"
        } else {
            "''"
        };
        let mut estmt = conn.prepare(&format!(
            "SELECT name, kind, in_config, acked_upto, delivered, retries, dead_lettered, last_export_ms, last_error, last_error_ms, state, {ranges}
             FROM exports WHERE stream = ?1 ORDER BY in_config DESC, name"
        ))?;
        let mut exports: Vec<ExportReport> = estmt
            .query_map([&name], |r| {
                let acked: i64 = r.get(3)?;
                let above = super::cursor::Cursor::restore(acked, &r.get::<_, String>(11)?)
                    .acked_above() as i64;
                Ok(ExportReport {
                    name: r.get(0)?,
                    kind: r.get(1)?,
                    in_config: r.get(2)?,
                    acked_upto: acked,
                    backlog: (last_id - acked - above).max(0),
                    delivered: r.get(4)?,
                    retries: r.get(5)?,
                    dead_lettered: r.get(6)?,
                    last_export_ms: r.get(7)?,
                    last_error: r.get(8)?,
                    last_error_ms: r.get(9)?,
                    state: r.get(10)?,
                    recent_dead_letters: Vec::new(),
                })
            })?
            .collect::<Result<_, _>>()?;
        for e in &mut exports {
            let mut d = conn.prepare(
                "SELECT record_id, reason FROM dead_letters WHERE stream = ?1 AND export = ?2 ORDER BY id DESC LIMIT 3",
            )?;
            e.recent_dead_letters = d
                .query_map([&name, &e.name], |r| Ok((r.get(0)?, r.get(1)?)))?
                .collect::<Result<_, _>>()?;
        }
        let dropped_disk_full: i64 = conn
            .query_row(
                "SELECT dropped_disk_full FROM streams WHERE name = ?1",
                [&name],
                |r| r.get(0),
            )
            .unwrap_or(0);
        streams.push(StreamReport {
            name,
            in_config,
            priority,
            records,
            bytes,
            max_size,
            oldest_age_ms,
            last_sequence_id: last_id,
            dropped_full,
            dropped_overwritten,
            dropped_ttl,
            dropped_disk_full,
            exports,
        });
    }
    // Databases written before sources had a health line have no such column.
    let state = if conn.prepare("SELECT state FROM sources LIMIT 0").is_ok() {
        "state"
    } else {
        "NULL"
    };
    let mut sstmt = conn.prepare(&format!(
        "SELECT id, next_seq, {state} FROM sources ORDER BY id"
    ))?;
    let sources = sstmt
        .query_map([], |r| {
            let health: Option<String> = r.get(2)?;
            Ok(SourceReport {
                id: r.get(0)?,
                next_sequence_number: r.get(1)?,
                health: health.and_then(|h| serde_json::from_str(&h).ok()),
            })
        })?
        .collect::<Result<_, _>>()?;
    Ok(StatusReport {
        updated_ms,
        disk_full_since_ms,
        streams,
        sources,
    })
}
