//! The gateway's configuration file: one TOML file, read in two steps.
//!
//! 1. [`raw`]: serde structs that mirror the file (`deny_unknown_fields`, human units as text).
//! 2. [`validate`]: a pure function that turns the raw file into typed values (`Duration`,
//!    sizes in bytes, enums, stream indices), collecting *every* error with its key path and line.
//!
//! This module assembles the sections; each source and export kind validates its own keys
//! (in its folder), with the shared error collector and units of [`crate::config`].
//! Nothing is started before a config has validated; `streamgate validate` runs only these steps.

pub mod raw;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::config::ConfigError;
pub use validate::validate;

use crate::config::locate;

use crate::exporters::{BatchConfig, ExportKind, RetryConfig};
use crate::metrics::MetricsConfig;
use crate::queue::{Durability, StrategyOnFull};
use crate::readers::SourceKind;
use crate::telemetry::LogFormat;

/// Everything wrong with one configuration file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{} has {} error(s):\n{}", .path.display(), .errors.len(), list(.errors))]
    Invalid {
        path: PathBuf,
        errors: Vec<ConfigError>,
    },
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Reads, parses and validates a configuration file.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    let text = std::fs::read_to_string(path).map_err(|source| LoadError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text).map_err(|errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    })
}

/// Parses and validates configuration text.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let raw: raw::RawConfig = match toml::from_str(text) {
        Ok(raw) => raw,
        Err(e) => {
            let span = e.span();
            let mut path = span
                .clone()
                .and_then(|s| locate::path_at(text, s))
                .unwrap_or_default();
            let mut line = span.map(|s| locate::line_at(text, s.start));
            // "unknown field `x`": point at the key itself.
            if let Some(field) = e
                .message()
                .strip_prefix("unknown field `")
                .and_then(|m| m.split('`').next())
            {
                let full = if path.is_empty() {
                    field.to_string()
                } else {
                    format!("{path}.{field}")
                };
                if let Some(l) = locate::line_of(text, &full) {
                    path = full;
                    line = Some(l);
                }
            }
            let message = with_common_keys(&path, e.message().trim().replace('\n', " "))
                .replace("expected i64", "expected an integer")
                .replace("expected f64", "expected a number")
                .replace("expected a string", "expected a string in quotes");
            return Err(vec![ConfigError {
                path,
                message,
                line,
            }]);
        }
    };
    validate(&raw).map_err(|mut errors| {
        for e in &mut errors {
            if e.line.is_none() && !e.path.is_empty() {
                e.line = locate::line_of(text, &e.path);
            }
        }
        errors
    })
}

/// Keys every export / source has besides its kind's own (serde lists only the kind's keys
/// in an "unknown field" error, since the common ones are parsed first).
const COMMON_EXPORT_KEYS: &str = "`kind`, `name`, `batch_size`, `batch_interval`, `batch_bytes`, `disabled`, `initial_backoff`, `max_backoff`";
const COMMON_SOURCE_KEYS: &str = "`kind`, `id`, `equipment_id`, `stream`, `heartbeat_interval`";

fn with_common_keys(path: &str, message: String) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let common = match parts.as_slice() {
        [s, e, _] if s.starts_with("streams[") && e.starts_with("exports[") => COMMON_EXPORT_KEYS,
        [s, _] if s.starts_with("sources[") => COMMON_SOURCE_KEYS,
        _ => return message,
    };
    if !message.starts_with("unknown field") {
        return message;
    }
    match message.split_once("expected one of ") {
        Some((head, rest)) => format!("{head}expected one of {common}, {rest}"),
        None => match message.split_once("expected ") {
            Some((head, rest)) => format!("{head}expected one of {common}, {rest}"),
            None => message,
        },
    }
}

/// A validated configuration: every value typed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub streams: Vec<StreamConfig>,
    pub sources: Vec<SourceConfig>,
    pub metrics: MetricsConfig,
}

impl Config {
    pub fn stream_index(&self, name: &str) -> Option<usize> {
        self.streams.iter().position(|s| s.name == name)
    }

    /// Key paths of the secrets written into the file itself (not taken from the environment
    /// or a key file): a file holding them must not be readable by every user.
    pub fn inline_secrets(&self) -> Vec<String> {
        let mut keys = Vec::new();
        for (s, stream) in self.streams.iter().enumerate() {
            for (e, export) in stream.exports.iter().enumerate() {
                if export.kind.has_inline_secret() {
                    keys.push(format!("streams[{s}].exports[{e}].password"));
                }
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            if source.kind.has_inline_secret() {
                keys.push(format!("sources[{i}].password"));
            }
        }
        keys
    }
}

/// What the permission check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExposedSecrets {
    pub path: PathBuf,
    pub mode: u32,
    pub keys: Vec<String>,
}

impl fmt::Display for ExposedSecrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} holds secrets ({}) and is readable by every user on this machine (mode {:04o}); \
             run `chmod o-rwx {}` (and keep it owned by root, group streamgate), or move the secrets \
             to the environment (password_env)",
            self.path.display(),
            self.keys.join(", "),
            self.mode & 0o7777,
            self.path.display()
        )
    }
}

/// Checks that a config file holding inline secrets is not world-readable.
pub fn check_secret_permissions(path: &Path, config: &Config) -> Result<(), ExposedSecrets> {
    use std::os::unix::fs::PermissionsExt;
    let keys = config.inline_secrets();
    if keys.is_empty() {
        return Ok(());
    }
    let Ok(meta) = std::fs::metadata(path) else {
        return Ok(());
    };
    let mode = meta.permissions().mode();
    if mode & 0o004 != 0 {
        return Err(ExposedSecrets {
            path: path.to_owned(),
            mode,
            keys,
        });
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct GatewayConfig {
    pub data_dir: PathBuf,
    pub equipment_id: Option<String>,
    /// Bytes per second over all exports, or unlimited.
    pub max_export_bandwidth: Option<u64>,
    pub shutdown_timeout: Duration,
    pub log_format: LogFormat,
    /// How often counters, cursors and export status are written for `streamgate status`.
    pub status_interval: Duration,
    /// How often a progress line is logged (zero: never).
    pub report_interval: Duration,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    pub name: String,
    /// 1 is the highest, 10 the lowest.
    pub priority: u8,
    /// Bytes of payload the stream may hold.
    pub max_size: u64,
    pub strategy_on_full: StrategyOnFull,
    pub time_to_live: Option<Duration>,
    pub durability: Durability,
    pub exports: Vec<ExportConfig>,
}

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub name: String,
    pub batch: BatchConfig,
    pub disabled: bool,
    pub retry: RetryConfig,
    pub kind: ExportKind,
}

#[derive(Debug, Clone)]
pub struct SourceConfig {
    pub id: String,
    pub equipment_id: String,
    /// Index into [`Config::streams`].
    pub stream: usize,
    /// Emit a `Wmk` record per stream when nothing was sent for this long.
    pub heartbeat_interval: Option<Duration>,
    pub kind: SourceKind,
}
