//! `streamgate status`: what the queue holds and how each export is doing, read from the
//! queue database (the daemon writes it every `gateway.status_interval`). Works while the
//! daemon runs (SQLite WAL readers do not block it) and when it is stopped.

use std::path::Path;

use rusqlite::{Connection, OpenFlags, OptionalExtension};
use serde::Serialize;

use crate::config::units::{format_bytes, format_duration};
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
}

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error("no queue database at {0}: has streamgate run with this data_dir?")]
    Missing(String),
    #[error("cannot read the queue database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

/// Reads the status from the queue database in `data_dir`.
#[allow(clippy::type_complexity)] // rows read as tuples
pub fn read(data_dir: &Path) -> Result<StatusReport, StatusError> {
    let path = crate::queue::db_path(data_dir);
    if !path.exists() {
        return Err(StatusError::Missing(path.display().to_string()));
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
                let above = crate::queue::cursor::Cursor::restore(acked, &r.get::<_, String>(11)?)
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
    let mut sstmt = conn.prepare("SELECT id, next_seq FROM sources ORDER BY id")?;
    let sources = sstmt
        .query_map([], |r| {
            Ok(SourceReport {
                id: r.get(0)?,
                next_sequence_number: r.get(1)?,
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

fn age(ms: Option<i64>) -> String {
    match ms {
        Some(at) => format!(
            "{} ago",
            format_duration(std::time::Duration::from_millis(
                (now_ms() - at).max(0) as u64
            ))
        ),
        None => "never".into(),
    }
}

/// Renders the report for people.
pub fn render(report: &StatusReport) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(out, "status written {}", age(report.updated_ms));
    if let Some(since) = report.disk_full_since_ms {
        let _ = writeln!(
            out,
            "DISK FULL since {}: new records are being dropped (see dropped ... disk full); free space in the data directory",
            age(Some(since))
        );
    }
    for s in &report.streams {
        let _ = writeln!(
            out,
            "\nstream {} (priority {}){}",
            s.name,
            s.priority,
            if s.in_config {
                ""
            } else {
                "  [not in the config: kept until exported or purged]"
            }
        );
        let _ = writeln!(
            out,
            "  queued      {} records, {} of {} ({:.1}%)",
            s.records,
            format_bytes(s.bytes as u64),
            format_bytes(s.max_size as u64),
            if s.max_size > 0 {
                s.bytes as f64 * 100.0 / s.max_size as f64
            } else {
                0.0
            }
        );
        let _ = writeln!(
            out,
            "  oldest      {}",
            s.oldest_age_ms
                .map(|a| format_duration(std::time::Duration::from_millis(a as u64)))
                .unwrap_or_else(|| "-".into())
        );
        let _ = writeln!(
            out,
            "  dropped     {} full (rejected), {} overwritten, {} expired (time_to_live), {} disk full",
            s.dropped_full, s.dropped_overwritten, s.dropped_ttl, s.dropped_disk_full
        );
        for e in &s.exports {
            let _ = writeln!(
                out,
                "  export {} ({}){}",
                e.name,
                e.kind,
                if e.in_config {
                    ""
                } else {
                    "  [not in the config]"
                }
            );
            let _ = writeln!(
                out,
                "    acknowledged up to record {}, backlog {} records",
                e.acked_upto, e.backlog
            );
            let _ = writeln!(
                out,
                "    delivered {}, retried {}, dead-lettered {}",
                e.delivered, e.retries, e.dead_lettered
            );
            let _ = writeln!(out, "    last export {}", age(e.last_export_ms));
            if let Some(state) = &e.state {
                let _ = writeln!(out, "    state       {state}");
            }
            if let Some(err) = &e.last_error {
                let _ = writeln!(out, "    last error  {} ({})", err, age(e.last_error_ms));
            }
            for (id, reason) in &e.recent_dead_letters {
                let _ = writeln!(out, "    dead letter record {id}: {reason}");
            }
        }
    }
    if !report.sources.is_empty() {
        let _ = writeln!(out, "\nsources");
        for s in &report.sources {
            let _ = writeln!(
                out,
                "  {:<24} next sequence number {}",
                s.id, s.next_sequence_number
            );
        }
    }
    out
}
