//! The configuration language every component shares: the error collector that validation
//! writes into (every error with its key path, never only the first), units (durations, sizes)
//! and the lookup of key paths to lines. A leaf: it knows no component. Each component
//! validates its own keys with [`Errors`]; `app::config` assembles the whole file.

pub mod csv;

/// The names of the kinds this build has, from (name, built) pairs (`cfg!(feature = ..)`):
/// what `kind = "..."` accepts, and what the error for an unknown kind lists.
pub fn built(kinds: &[(&'static str, bool)]) -> Vec<&'static str> {
    kinds
        .iter()
        .filter_map(|&(kind, built)| built.then_some(kind))
        .collect()
}
pub mod locate;
pub mod table;
pub mod units;

use std::fmt;
use std::time::Duration;

use units::{parse_duration, parse_size};

/// One problem in a configuration file, with the key path it is about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// `streams[1].exports[0].batch_size`; empty for problems with the whole file.
    pub path: String,
    pub message: String,
    /// 1-based line in the file, where it could be found.
    pub line: Option<usize>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)?;
        } else {
            write!(f, "{}: {}", self.path, self.message)?;
        }
        if let Some(line) = self.line {
            write!(f, " (line {line})")?;
        }
        Ok(())
    }
}

/// Collects configuration errors with their key paths.
#[derive(Debug, Default)]
pub struct Errors {
    list: Vec<ConfigError>,
}

impl Errors {
    /// One error at `path`: a message, or a typed error whose text says what is wrong.
    pub fn push(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.list.push(ConfigError {
            path: path.into(),
            message: message.to_string(),
            line: None,
        });
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Every error collected, in the order found.
    pub fn into_vec(self) -> Vec<ConfigError> {
        self.list
    }

    /// A duration at `path`, or `default` when absent; `min` is the smallest allowed.
    pub fn duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: Duration,
        min: Duration,
    ) -> Duration {
        match value.map(parse_duration) {
            None => default,
            Some(Ok(d)) if d < min => {
                self.push(
                    path,
                    format!(
                        "{} is below the minimum of {}",
                        value.unwrap_or_default(),
                        units::format_duration(min)
                    ),
                );
                default
            }
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                self.push(path, e);
                default
            }
        }
    }

    /// An optional duration at `path`.
    pub fn opt_duration(
        &mut self,
        path: &str,
        value: Option<&str>,
        min: Duration,
    ) -> Option<Duration> {
        value.map(|v| self.duration(path, Some(v), min, min))
    }

    /// A size at `path` within `min..=max`, or `default` when absent.
    pub fn size(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: u64,
        min: u64,
        max: u64,
    ) -> u64 {
        match value.map(parse_size) {
            None => default,
            Some(Ok(n)) if n < min => {
                self.push(
                    path,
                    format!(
                        "{} is below the minimum of {min} bytes",
                        value.unwrap_or_default()
                    ),
                );
                default
            }
            Some(Ok(n)) if n > max => {
                self.push(
                    path,
                    format!(
                        "{} is above the limit of {max} bytes",
                        value.unwrap_or_default()
                    ),
                );
                default
            }
            Some(Ok(n)) => n,
            Some(Err(e)) => {
                self.push(path, e);
                default
            }
        }
    }

    /// An integer at `path` within `min..=max`, or `default` when absent.
    pub fn int(&mut self, path: &str, value: Option<i64>, default: i64, min: i64, max: i64) -> i64 {
        match value {
            None => default,
            Some(v) if v < min => {
                self.push(path, format!("{v} is below the minimum of {min}"));
                default
            }
            Some(v) if v > max => {
                self.push(path, format!("{v} is above the limit of {max}"));
                default
            }
            Some(v) => v,
        }
    }

    /// One of `choices` at `path` (listed in the error), or `default` when absent.
    pub fn choice<T: Copy>(
        &mut self,
        path: &str,
        value: Option<&str>,
        default: T,
        choices: &[(&str, T)],
    ) -> T {
        let Some(v) = value else { return default };
        match choices.iter().find(|(name, _)| *name == v) {
            Some((_, t)) => *t,
            None => {
                let names: Vec<String> = choices.iter().map(|(n, _)| format!("\"{n}\"")).collect();
                self.push(path, format!("\"{v}\" is not one of {}", names.join(", ")));
                default
            }
        }
    }

    /// The pause between retries of a failed send: `<path>.initial_backoff` doubling up to
    /// `<path>.max_backoff` (every export).
    pub fn retry_backoff(
        &mut self,
        path: &str,
        initial: Option<&str>,
        max: Option<&str>,
        defaults: (Duration, Duration),
        min: Duration,
    ) -> (Duration, Duration) {
        self.backoff(
            path,
            ("initial_backoff", "max_backoff"),
            (initial, max),
            defaults,
            min,
        )
    }

    /// The pause between reconnects to a device or broker: `<path>.reconnect_min` doubling up
    /// to `<path>.reconnect_max` (every reader, and the MQTT export's connection).
    pub fn reconnect_backoff(
        &mut self,
        path: &str,
        min_max: (Option<&str>, Option<&str>),
        defaults: (Duration, Duration),
        min: Duration,
    ) -> (Duration, Duration) {
        self.backoff(
            path,
            ("reconnect_min", "reconnect_max"),
            min_max,
            defaults,
            min,
        )
    }

    /// Both ends at least `min`, the ceiling not below the start.
    fn backoff(
        &mut self,
        path: &str,
        keys: (&str, &str),
        values: (Option<&str>, Option<&str>),
        defaults: (Duration, Duration),
        min: Duration,
    ) -> (Duration, Duration) {
        let initial = self.duration(&format!("{path}.{}", keys.0), values.0, defaults.0, min);
        let max = self.duration(&format!("{path}.{}", keys.1), values.1, defaults.1, min);
        if max < initial {
            self.push(
                format!("{path}.{}", keys.1),
                format!("must not be below {}", keys.0),
            );
        }
        (initial, max)
    }

    /// A source's `[[sources.tags]]` list: at least one, at most `max`. `what` names the source
    /// in the message ("a Modbus source").
    pub fn tag_count(&mut self, path: &str, count: usize, max: usize, what: &str) {
        if count == 0 {
            self.push(
                format!("{path}.tags"),
                format!("{what} needs at least one [[sources.tags]]"),
            );
        }
        if count > max {
            self.push(
                format!("{path}.tags"),
                format!("{count} tags is above the limit of {max}"),
            );
        }
    }

    /// A tag's `name` (1 to 256 characters) and optional `stream` override, resolved to the
    /// stream's index. Shared by every reader's `[[sources.tags]]`.
    pub fn tag_name_and_stream(
        &mut self,
        path: &str,
        name: &str,
        stream: Option<&str>,
        streams: &StreamNames,
    ) -> Option<usize> {
        if name.trim().is_empty() || name.len() > 256 {
            self.push(format!("{path}.name"), "must be 1 to 256 characters");
        }
        let name = stream?;
        let index = streams.index(name);
        if index.is_none() {
            self.push(format!("{path}.stream"), streams.unknown(name));
        }
        index
    }

    /// Checks a name used in file names, status and metrics.
    pub fn name(&mut self, path: &str, value: &str) {
        let ok = !value.is_empty()
            && value.len() <= 64
            && value
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
        if !ok {
            self.push(
                path,
                format!(
                    "\"{value}\" is not a valid name: use 1 to 64 letters, digits, '_', '-' or '.'"
                ),
            );
        }
    }
}

/// A fingerprint of a secret for "did the config change" checks (reload): a hash that stays
/// in memory and is never shown, so `Debug` output can keep hiding the secret itself.
pub fn secret_fingerprint(secret: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    secret.hash(&mut h);
    format!("{:x}", h.finish())
}

/// The streams a component may name (`stream = "..."` on a source or tag), in config order:
/// what a component's validation needs to know of the rest of the file.
#[derive(Debug, Clone, Default)]
pub struct StreamNames {
    names: Vec<String>,
}

impl StreamNames {
    pub fn new(names: impl IntoIterator<Item = String>) -> StreamNames {
        StreamNames {
            names: names.into_iter().collect(),
        }
    }

    pub fn len(&self) -> usize {
        self.names.len()
    }

    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The index of the stream named `name`.
    pub fn index(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }

    /// The message for a reference to a stream that is not defined.
    pub fn unknown(&self, name: &str) -> String {
        let known: Vec<String> = self.names.iter().map(|s| format!("\"{s}\"")).collect();
        format!(
            "no stream is named \"{name}\" (defined: {})",
            known.join(", ")
        )
    }
}
