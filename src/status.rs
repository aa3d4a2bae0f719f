//! `streamgate status`: what the queue holds and how each export is doing. The queue module
//! reads its own database ([`crate::queue::inspect`]); this module renders it for people.
//! Works while the daemon runs (SQLite WAL readers do not block it) and when it is stopped.

use std::path::Path;

use crate::config::units::{format_bytes, format_duration};
pub use crate::queue::inspect::{
    ExportReport, InspectError as StatusError, SourceReport, StatusReport, StreamReport,
};
use crate::time::now_ms;

/// Reads the status from the queue database in `data_dir`.
pub fn read(data_dir: &Path) -> Result<StatusReport, StatusError> {
    crate::queue::inspect::read(data_dir)
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
            let Some(h) = &s.health else { continue };
            let _ = write!(out, "    {}", h.state.to_uppercase());
            if let Some(since) = h.failing_since_ms {
                let _ = write!(
                    out,
                    " for {} ({} failed attempts)",
                    age(Some(since)).trim_end_matches(" ago"),
                    h.failures
                );
            }
            let _ = writeln!(
                out,
                ", last good reading {}, {} reconnects",
                age(h.last_good_ms),
                h.reconnects
            );
            if let Some(e) = &h.last_error
                && h.failing_since_ms.is_some()
            {
                let _ = writeln!(out, "    last error: {e}");
            }
        }
    }
    out
}
