//! The configuration file as written: serde structs, unknown keys rejected, units as text.
//! Kind-specific keys live with their component (`exporters::*`, `readers::*`). The tables are
//! read one by one (`sections`), so every error keeps its key path.

use serde::Deserialize;
use toml::Table;

use crate::exporters::RawExportKind;
use crate::readers::RawSourceKind;

/// The file's top level, each section still a table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawTop {
    pub gateway: Option<Table>,
    pub streams: Option<Vec<Table>>,
    pub sources: Option<Vec<Table>>,
    pub metrics: Option<Table>,
}

#[derive(Debug, Default)]
pub struct RawConfig {
    pub gateway: RawGateway,
    pub streams: Vec<RawStream>,
    pub sources: Vec<RawSource>,
    pub metrics: Option<RawMetrics>,
    /// Where tags came from a `tags_file`, to name its rows in errors.
    pub tag_files: Vec<TagFile>,
}

/// The tags of one source read from its `tags_file`: `source.tags[first..]` are its rows.
#[derive(Debug, Clone)]
pub struct TagFile {
    /// `sources[2]`.
    pub source: String,
    pub file: String,
    pub first: usize,
    /// The file's row of each of these tags.
    pub rows: Vec<usize>,
}

impl TagFile {
    /// An error about one of these tags, moved to the file's row and column (the key path
    /// becomes the source's `tags_file`); `None` when it is about another key.
    pub fn place(&self, path: &str, message: &str) -> Option<(String, String)> {
        let rest = path.strip_prefix(&format!("{}.tags[", self.source))?;
        let (index, rest) = rest.split_once(']')?;
        let row = self
            .rows
            .get(index.parse::<usize>().ok()?.checked_sub(self.first)?)?;
        let column = rest
            .strip_prefix('.')
            .map(|c| c.split(['.', '[']).next().unwrap_or(c));
        Some((
            format!("{}.tags_file", self.source),
            crate::config::csv::at(&self.file, *row, column, message),
        ))
    }
}

/// `[metrics]`: the optional HTTP listener for Prometheus metrics and health.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMetrics {
    pub enabled: Option<bool>,
    pub listen: Option<String>,
    pub degraded_after: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub data_dir: Option<String>,
    pub equipment_id: Option<String>,
    pub max_export_bandwidth: Option<String>,
    pub shutdown_timeout: Option<String>,
    pub log_format: Option<String>,
    pub status_interval: Option<String>,
    pub report_interval: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStream {
    pub name: String,
    pub priority: Option<i64>,
    pub max_size: Option<String>,
    pub strategy_on_full: Option<String>,
    pub time_to_live: Option<String>,
    pub durability: Option<String>,
    /// Read on their own (`sections`).
    #[serde(skip)]
    pub exports: Vec<RawExport>,
}

/// The keys every export has, whatever its kind ([`RawExportCommon`]).
pub const COMMON_EXPORT_KEYS: &[&str] = &[
    "name",
    "batch_size",
    "batch_interval",
    "batch_bytes",
    "max_in_flight_requests",
    "disabled",
    "initial_backoff",
    "max_backoff",
];

/// The keys every source has, whatever its kind ([`RawSourceCommon`]).
pub const COMMON_SOURCE_KEYS: &[&str] = &["id", "equipment_id", "stream", "heartbeat_interval"];

/// Keys common to every export (exactly [`COMMON_EXPORT_KEYS`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawExportCommon {
    pub name: Option<String>,
    pub batch_size: Option<i64>,
    pub batch_interval: Option<String>,
    pub batch_bytes: Option<String>,
    pub max_in_flight_requests: Option<i64>,
    pub disabled: Option<bool>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
}

#[derive(Debug)]
pub struct RawExport {
    pub common: RawExportCommon,
    pub kind: RawExportKind,
}

/// Keys common to every source (exactly [`COMMON_SOURCE_KEYS`]).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSourceCommon {
    pub id: String,
    pub equipment_id: Option<String>,
    pub stream: Option<String>,
    pub heartbeat_interval: Option<String>,
}

#[derive(Debug)]
pub struct RawSource {
    pub common: RawSourceCommon,
    pub kind: RawSourceKind,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every listed common key is one the common struct takes (a key listed but not taken
    /// would be rejected as unknown; one taken but not listed would go to the kind's table).
    #[test]
    fn the_common_key_lists_match_the_common_structs() {
        let table = |keys: &[&str], value: &dyn Fn(&str) -> toml::Value| -> toml::Value {
            toml::Value::Table(keys.iter().map(|k| (k.to_string(), value(k))).collect())
        };
        let export = table(COMMON_EXPORT_KEYS, &|k| match k {
            "batch_size" | "max_in_flight_requests" => toml::Value::Integer(1),
            "disabled" => toml::Value::Boolean(false),
            _ => toml::Value::String("x".into()),
        });
        let e: RawExportCommon = export.clone().try_into().expect("every common export key");
        assert_eq!(e.batch_size, Some(1));
        let source = table(COMMON_SOURCE_KEYS, &|_| toml::Value::String("x".into()));
        let s: RawSourceCommon = source.clone().try_into().expect("every common source key");
        assert_eq!(s.heartbeat_interval.as_deref(), Some("x"));
        // And nothing else: any other key is refused by the structs.
        for (mut t, name) in [(export, "export"), (source, "source")] {
            if let toml::Value::Table(t) = &mut t {
                t.insert("kind".into(), toml::Value::String("x".into()));
            }
            let refused = match name {
                "export" => t.try_into::<RawExportCommon>().is_err(),
                _ => t.try_into::<RawSourceCommon>().is_err(),
            };
            assert!(refused, "{name}: an unlisted key is refused");
        }
    }
}
