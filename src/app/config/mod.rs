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
mod sections;
mod validate;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use crate::config::ConfigError;
pub use validate::validate;

use crate::config::locate;
use crate::config::table::TableReader;

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

impl LoadError {
    /// The file exists but this user may not read it (the package's config is 0640 root:streamgate).
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, LoadError::Read { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied)
    }
}

fn list(errors: &[ConfigError]) -> String {
    errors
        .iter()
        .map(|e| format!("  {e}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The largest configuration file read: a config is a few kB to a few MB (10,000 tags); a
/// bigger file is refused before it is read, so a mistake (a log or a database given as the
/// config) cannot exhaust a small gateway's memory in `ExecStartPre`.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;

/// Reads, parses and validates a configuration file, and checks that the files it names
/// (certificates, keys) can be read.
pub fn load(path: &Path) -> Result<Config, LoadError> {
    load_checked(path, true)
}

/// [`load`]; `check_files: false` skips the check of the files the config names (validating
/// on another machine than the gateway).
pub fn load_checked(path: &Path, check_files: bool) -> Result<Config, LoadError> {
    let read_error = |source| LoadError::Read {
        path: path.to_owned(),
        source,
    };
    let file = std::fs::File::open(path).map_err(read_error)?;
    let mut text = String::new();
    std::io::Read::read_to_string(
        &mut std::io::Read::take(&file, MAX_CONFIG_BYTES + 1),
        &mut text,
    )
    .map_err(read_error)?;
    let invalid = |errors| LoadError::Invalid {
        path: path.to_owned(),
        errors,
    };
    if text.len() as u64 > MAX_CONFIG_BYTES {
        return Err(invalid(vec![ConfigError {
            path: String::new(),
            message: format!(
                "the file is larger than {} MiB, the most a configuration may be; is it the right file?",
                MAX_CONFIG_BYTES >> 20
            ),
            line: None,
        }]));
    }
    let config = parse(&text).map_err(invalid)?;
    if check_files {
        let mut errors = config.unreadable_files();
        if !errors.is_empty() {
            locate::add_lines(&text, &mut errors);
            return Err(invalid(errors));
        }
    }
    Ok(config)
}

/// Parses and validates configuration text: every error of the file in one run, each at its
/// key path and line, in the order of the file.
pub fn parse(text: &str) -> Result<Config, Vec<ConfigError>> {
    let doc: toml::Table = match toml::from_str(text) {
        Ok(doc) => doc,
        Err(e) => return Err(vec![syntax_error(text, &e)]),
    };
    let mut reader = TableReader::default();
    let raw = sections::read(doc, &mut reader);
    let mut errors = std::mem::take(&mut reader.errors);
    let config = if reader.incomplete {
        None
    } else {
        match validate(&raw) {
            Ok(config) => Some(config),
            Err(more) => {
                // A key taken out for its type is now missing: validation would report the
                // same mistake again, less precisely.
                let repeats = |e: &ConfigError| {
                    reader.quiet.contains(&e.path)
                        || reader.removed.iter().any(|r| {
                            e.path == *r
                                || e.path.strip_prefix(r.as_str()).is_some_and(|rest| {
                                    rest.starts_with('.') || rest.starts_with('[')
                                })
                        })
                };
                errors.extend(more.into_iter().filter(|e| !repeats(e)));
                None
            }
        }
    };
    // In the order of the file: by line, then (errors on one line, as the rows of a tags
    // file are) by the indexes of their key paths.
    let order: Vec<Vec<usize>> = errors.iter().map(|e| indexes(&e.path)).collect();
    // Errors about tags read from a tags_file name its row and column.
    for e in &mut errors {
        if let Some((path, message)) = raw
            .tag_files
            .iter()
            .find_map(|f| f.place(&e.path, &e.message))
        {
            e.path = path;
            e.message = message;
        }
    }
    match config {
        Some(mut config) if errors.is_empty() => {
            config.warnings = config.check_warnings();
            locate::add_lines(text, &mut config.warnings);
            Ok(config)
        }
        _ => {
            locate::add_lines(text, &mut errors);
            let mut errors: Vec<(ConfigError, Vec<usize>)> =
                errors.into_iter().zip(order).collect();
            errors.sort_by(|(a, ai), (b, bi)| {
                (a.line.unwrap_or(usize::MAX), ai).cmp(&(b.line.unwrap_or(usize::MAX), bi))
            });
            Err(errors.into_iter().map(|(e, _)| e).collect())
        }
    }
}

/// The array indexes in a key path (`sources[1].tags[10].min` -> [1, 10]).
fn indexes(path: &str) -> Vec<usize> {
    path.split('[')
        .skip(1)
        .filter_map(|p| p.split(']').next()?.parse().ok())
        .collect()
}

/// A TOML syntax error: where it is, in the words of the parser.
fn syntax_error(text: &str, e: &toml::de::Error) -> ConfigError {
    let span = e.span();
    let path = span
        .clone()
        .and_then(|s| locate::path_at(text, s))
        .unwrap_or_default();
    ConfigError {
        path,
        message: crate::config::table::plain(e.message()),
        line: span.map(|s| locate::line_at(text, s.start)),
    }
}

/// A validated configuration: every value typed and checked.
#[derive(Debug, Clone)]
pub struct Config {
    pub gateway: GatewayConfig,
    pub streams: Vec<StreamConfig>,
    pub sources: Vec<SourceConfig>,
    pub metrics: MetricsConfig,
    /// Valid but likely mistakes (see [`Config::check_warnings`]), with their lines: shown by
    /// `validate` and logged at start.
    pub warnings: Vec<ConfigError>,
}

impl Config {
    pub fn stream_index(&self, name: &str) -> Option<usize> {
        self.streams.iter().position(|s| s.name == name)
    }

    /// What is valid but likely a mistake: a stream that sources feed but no enabled export
    /// drains (it fills up to `max_size`, then drops by `strategy_on_full`), and a stream that
    /// no source feeds (its exports never send anything).
    pub fn check_warnings(&self) -> Vec<ConfigError> {
        let mut fed = vec![false; self.streams.len()];
        for s in &self.sources {
            let tags = s.kind.tag_streams();
            if tags.is_empty() || tags.iter().any(Option::is_none) {
                fed[s.stream] = true;
            }
            for t in tags.into_iter().flatten() {
                fed[t] = true;
            }
        }
        let mut warnings = Vec::new();
        for (i, (stream, fed)) in self.streams.iter().zip(fed).enumerate() {
            let drained = stream.exports.iter().any(|e| !e.disabled);
            let message = match (fed, drained) {
                (true, false) => format!(
                    "stream \"{}\" has sources but no enabled export: its samples stay queued until it holds max_size ({} MiB), then {}",
                    stream.name,
                    stream.max_size >> 20,
                    match stream.strategy_on_full {
                        StrategyOnFull::RejectNew =>
                            "new samples are dropped (strategy_on_full = \"reject_new\")",
                        StrategyOnFull::OverwriteOldest =>
                            "the oldest are overwritten (strategy_on_full = \"overwrite_oldest\")",
                    }
                ),
                (false, _) => format!(
                    "no source sends to stream \"{}\"; set `stream = \"{}\"` on a source or a tag, or remove the stream",
                    stream.name, stream.name
                ),
                (true, true) => continue,
            };
            warnings.push(ConfigError {
                path: format!("streams[{i}]"),
                message,
                line: None,
            });
        }
        warnings
    }

    /// The files the config names (certificates, keys) with their key paths.
    pub fn files(&self) -> Vec<(String, PathBuf)> {
        let mut files = Vec::new();
        for (s, stream) in self.streams.iter().enumerate() {
            for (e, export) in stream.exports.iter().enumerate() {
                for (key, file) in export.kind.files() {
                    files.push((format!("streams[{s}].exports[{e}].{key}"), file.to_owned()));
                }
            }
        }
        for (i, source) in self.sources.iter().enumerate() {
            for (key, file) in source.kind.files() {
                files.push((format!("sources[{i}].{key}"), file.to_owned()));
            }
        }
        files
    }

    /// An error for every file the config names that cannot be read (by this user, now), and
    /// for TLS files that do not fit together (a key that is not the certificate's, a PEM file
    /// without a certificate).
    pub fn unreadable_files(&self) -> Vec<ConfigError> {
        #[cfg_attr(
            not(any(feature = "mqtt", feature = "kafka", feature = "aws-common")),
            allow(unused_mut)
        )]
        let mut errors = self.unopenable_files();
        #[cfg(any(feature = "mqtt", feature = "kafka", feature = "aws-common"))]
        for (s, stream) in self.streams.iter().enumerate() {
            for (e, export) in stream.exports.iter().enumerate() {
                let at = format!("streams[{s}].exports[{e}].");
                if errors.iter().any(|err| err.path.starts_with(&at)) {
                    continue;
                }
                // Only where a client certificate is named: the pair must fit.
                for (prefix, tls) in export.kind.tls_configs() {
                    if tls.client_auth.is_none() {
                        continue;
                    }
                    if let Err(problem) = tls.client_config() {
                        errors.push(ConfigError {
                            path: format!("{at}{prefix}{}", problem.key()),
                            message: problem.to_string(),
                            line: None,
                        });
                    }
                }
            }
        }
        errors
    }

    fn unopenable_files(&self) -> Vec<ConfigError> {
        self.files()
            .into_iter()
            .filter_map(|(path, file)| {
                let problem = match std::fs::File::open(&file) {
                    Ok(f) if f.metadata().is_ok_and(|m| m.is_dir()) => "is a directory".to_string(),
                    Ok(_) => return None,
                    Err(e) => e.to_string(),
                };
                Some(ConfigError {
                    path,
                    message: format!(
                        "cannot read {}: {problem} (run `streamgate validate --no-file-checks` to validate on another machine)",
                        file.display()
                    ),
                    line: None,
                })
            })
            .collect()
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
