//! Logging: human-readable lines by default, JSON on request; `RUST_LOG` or `--log-level`
//! choose what is shown. Every component logs inside its span (`reader{id=..}`,
//! `export{stream=..,name=..,kind=..}`, `queue`), so a line says where it came from.

use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};

use tracing_subscriber::EnvFilter;

/// Log lines that could not be written (stderr closed or failing) since the start.
static LOG_WRITE_ERRORS: AtomicU64 = AtomicU64::new(0);

/// How many log lines could not be written since the start (a metric: the log is the one
/// place that cannot report its own failure).
pub fn log_write_errors() -> u64 {
    LOG_WRITE_ERRORS.load(Ordering::Relaxed)
}

/// Standard error for log lines: a failed write (the pipe's reader went away, journald is
/// gone) is counted and dropped, never returned. tracing-subscriber would otherwise report it
/// with `eprintln!`, which panics on the same closed stderr, in whatever task was logging
/// (the signal handler, for one): the daemon must keep stopping and reloading without its log.
struct LogWriter;

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if std::io::stderr().write_all(buf).is_err() {
            LOG_WRITE_ERRORS.fetch_add(1, Ordering::Relaxed);
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

/// Third-party libraries whose own log lines do not help an operator: async-opcua logs
/// several WARN lines at every connect and ERROR lines at every stop, rskafka a WARN line at
/// every retry of a broker connection, while the OPC UA reader and the Kafka export say once
/// what failed and what to do. A library named in `--log-level` (e.g.
/// `info,opcua_client=debug` or `info,rskafka=debug`) is shown again.
const QUIET_LIBRARIES: [(&str, &str); 2] = [
    (
        "opcua",
        "opcua_client=off,opcua_core=off,opcua_crypto=off,opcua_types=off,opcua_nodes=off",
    ),
    ("rskafka", "rskafka=off"),
];

/// The quiet directives of the libraries `level` does not name.
fn quiet_libraries(level: &str) -> String {
    QUIET_LIBRARIES
        .iter()
        .filter(|(name, _)| !level.contains(name))
        .map(|(_, directives)| *directives)
        .collect::<Vec<_>>()
        .join(",")
}

/// Installs the global subscriber (logs go to standard error). Safe to call once.
/// The levels a log filter names.
const LEVELS: [&str; 6] = ["trace", "debug", "info", "warn", "error", "off"];

/// Checks a `--log-level` value: a level, or a filter whose every directive names a level
/// (`info,streamgate=debug`). A bare word that is no level would be taken for a module name
/// and silence everything else, so it is refused.
pub fn check_log_filter(filter: &str) -> Result<String, String> {
    let levels = LEVELS.join(", ");
    if filter.trim().is_empty() {
        return Err(format!("empty; use one of {levels}"));
    }
    for directive in filter.split(',').map(str::trim) {
        let level = match directive.rsplit_once('=') {
            Some((target, level)) if !target.is_empty() => level,
            _ => directive,
        };
        if !LEVELS.contains(&level.to_ascii_lowercase().as_str()) {
            return Err(format!(
                "\"{level}\" is not a log level; use one of {levels}, or a filter such as \"info,streamgate=debug\""
            ));
        }
    }
    EnvFilter::try_new(filter).map_err(|e| e.to_string())?;
    Ok(filter.to_string())
}

pub fn init(format: LogFormat, level: Option<&str>) {
    // RUST_LOG when --log-level is not given; either way the quiet libraries stay quiet unless
    // the filter names them.
    let level = level.map(str::to_string).or_else(|| {
        std::env::var("RUST_LOG")
            .ok()
            .filter(|l| !l.trim().is_empty())
    });
    let filter = match level.as_deref() {
        Some(l) => match quiet_libraries(l) {
            quiet if quiet.is_empty() => EnvFilter::new(l),
            quiet => EnvFilter::new(format!("{l},{quiet}")),
        },
        None => EnvFilter::new(format!("info,{}", quiet_libraries(""))),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(|| LogWriter)
        .log_internal_errors(false)
        .with_target(false)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let result = match format {
        LogFormat::Human => builder.try_init(),
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .try_init(),
    };
    let _ = result;
}

/// Resident memory now and at its peak (VmRSS, VmHWM), in bytes, from /proc (Linux).
pub fn rss() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = status.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// Starts a new peak: the next [`rss`] reports the highest resident memory from now on
/// (Linux's `clear_refs` 5 resets `VmHWM`). False where the kernel does not allow it.
pub fn reset_rss_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_filters_must_name_levels() {
        for ok in ["debug", "INFO", "info,streamgate=trace", "warn,opcua=off"] {
            assert_eq!(check_log_filter(ok).as_deref(), Ok(ok), "{ok}");
        }
        for bad in ["chatty", "", "info,streamgate=loud", "info,"] {
            let e = check_log_filter(bad).unwrap_err();
            assert!(
                e.contains("trace, debug, info, warn, error, off"),
                "{bad}: {e}"
            );
        }
    }
}
