//! The configuration file as written: serde structs, unknown keys rejected, units as text.
//! Kind-specific keys live with their component (`exporters::*`, `readers::*`).

use serde::Deserialize;

use crate::exporters::RawExportKind;
use crate::readers::RawSourceKind;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub gateway: RawGateway,
    #[serde(default)]
    pub streams: Vec<RawStream>,
    #[serde(default)]
    pub sources: Vec<RawSource>,
    pub metrics: Option<RawMetrics>,
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
    #[serde(default)]
    pub exports: Vec<RawExport>,
}

/// Keys common to every export; the kind's own keys are in `kind`.
#[derive(Debug, Deserialize)]
pub struct RawExport {
    pub name: Option<String>,
    pub batch_size: Option<i64>,
    pub batch_interval: Option<String>,
    pub batch_bytes: Option<String>,
    pub max_in_flight_requests: Option<i64>,
    pub disabled: Option<bool>,
    pub initial_backoff: Option<String>,
    pub max_backoff: Option<String>,
    #[serde(flatten)]
    pub kind: RawExportKind,
}

/// Keys common to every source; the kind's own keys are in `kind`.
#[derive(Debug, Deserialize)]
pub struct RawSource {
    pub id: String,
    pub equipment_id: Option<String>,
    pub stream: Option<String>,
    pub heartbeat_interval: Option<String>,
    #[serde(flatten)]
    pub kind: RawSourceKind,
}
