//! Raw file -> typed [`Config`]: pure, no I/O, every error collected with its key path.

use std::collections::HashSet;
use std::path::PathBuf;
use std::time::Duration;

use super::raw::{RawConfig, RawExport, RawSource, RawStream};
use super::{Config, ExportConfig, GatewayConfig, SourceConfig, StreamConfig};
use crate::config::{ConfigError, Errors, StreamNames};
use crate::exporters::{BatchConfig, RetryConfig};
use crate::metrics::MetricsConfig;
use crate::queue::{Durability, StrategyOnFull};
use crate::telemetry::LogFormat;

/// Turns a raw configuration into a validated one, or every error found.
pub fn validate(raw: &RawConfig) -> Result<Config, Vec<ConfigError>> {
    let mut errs = Errors::default();
    let gateway = gateway(raw, &mut errs);

    if raw.streams.is_empty() {
        errs.push("streams", "at least one [[streams]] table is required");
    }
    let mut names = HashSet::new();
    let mut streams = Vec::new();
    for (i, s) in raw.streams.iter().enumerate() {
        let path = format!("streams[{i}]");
        if !names.insert(s.name.as_str()) {
            errs.push(
                format!("{path}.name"),
                format!("stream \"{}\" is defined twice", s.name),
            );
        }
        streams.push(stream(&path, s, &mut errs));
    }
    let exports: Vec<(String, &crate::exporters::ExportKind)> = streams
        .iter()
        .enumerate()
        .flat_map(|(i, s): (usize, &StreamConfig)| {
            s.exports
                .iter()
                .enumerate()
                .map(move |(j, e)| (format!("streams[{i}].exports[{j}]"), &e.kind))
        })
        .collect();
    crate::exporters::check_together(&exports, &mut errs);

    let stream_names = StreamNames::new(raw.streams.iter().map(|s| s.name.clone()));
    let mut ids = HashSet::new();
    let mut sources = Vec::new();
    for (i, s) in raw.sources.iter().enumerate() {
        let path = format!("sources[{i}]");
        if !ids.insert(s.common.id.as_str()) {
            errs.push(
                format!("{path}.id"),
                format!("source \"{}\" is defined twice", s.common.id),
            );
        }
        if let Some(src) = source(&path, s, &stream_names, &gateway, &mut errs) {
            sources.push((path, src));
        }
    }
    let kinds: Vec<(&str, &str, &crate::readers::SourceKind)> = sources
        .iter()
        .map(|(p, s)| (p.as_str(), s.id.as_str(), &s.kind))
        .collect();
    crate::readers::check_together(&kinds, &mut errs);
    let sources: Vec<SourceConfig> = sources.into_iter().map(|(_, s)| s).collect();

    let metrics = metrics(raw.metrics.as_ref(), &mut errs);
    if errs.is_empty() {
        Ok(Config {
            gateway,
            streams,
            sources,
            metrics,
            warnings: Vec::new(),
        })
    } else {
        Err(errs.into_vec())
    }
}

fn metrics(raw: Option<&super::raw::RawMetrics>, errs: &mut Errors) -> MetricsConfig {
    let default = super::raw::RawMetrics::default();
    let m = raw.unwrap_or(&default);
    let listen_text = m
        .listen
        .as_deref()
        .unwrap_or(crate::metrics::DEFAULT_METRICS_LISTEN);
    let listen = match listen_text.parse::<std::net::SocketAddr>() {
        Ok(a) => a,
        Err(_) => {
            errs.push(
                "metrics.listen",
                format!(
                    "\"{listen_text}\" is not an IP address and port; write it like \"127.0.0.1:9464\" (use 0.0.0.0:PORT only if the network may see the metrics)"
                ),
            );
            std::net::SocketAddr::from(([127, 0, 0, 1], 9464))
        }
    };
    MetricsConfig {
        enabled: m.enabled.unwrap_or(raw.is_some()),
        listen,
        degraded_after: errs.duration(
            "metrics.degraded_after",
            m.degraded_after.as_deref(),
            Duration::from_secs(300),
            Duration::from_secs(1),
        ),
    }
}

fn gateway(raw: &RawConfig, errs: &mut Errors) -> GatewayConfig {
    let g = &raw.gateway;
    let data_dir = g
        .data_dir
        .clone()
        .unwrap_or_else(|| "/var/lib/streamgate".into());
    if data_dir.trim().is_empty() {
        errs.push("gateway.data_dir", "must not be empty");
    }
    if let Some(id) = &g.equipment_id
        && id.trim().is_empty()
    {
        errs.push("gateway.equipment_id", "must not be empty");
    }
    let max_export_bandwidth = g
        .max_export_bandwidth
        .as_deref()
        .map(|v| errs.size("gateway.max_export_bandwidth", Some(v), 0, 1024, u64::MAX));
    GatewayConfig {
        data_dir: PathBuf::from(data_dir),
        equipment_id: g.equipment_id.clone(),
        max_export_bandwidth,
        shutdown_timeout: errs.duration(
            "gateway.shutdown_timeout",
            g.shutdown_timeout.as_deref(),
            Duration::from_secs(10),
            Duration::ZERO,
        ),
        log_format: errs.choice(
            "gateway.log_format",
            g.log_format.as_deref(),
            LogFormat::Human,
            &[("human", LogFormat::Human), ("json", LogFormat::Json)],
        ),
        status_interval: errs.duration(
            "gateway.status_interval",
            g.status_interval.as_deref(),
            Duration::from_secs(1),
            Duration::from_millis(100),
        ),
        report_interval: errs.duration(
            "gateway.report_interval",
            g.report_interval.as_deref(),
            Duration::from_secs(10),
            Duration::ZERO,
        ),
    }
}

/// Smallest `max_size` a stream may have: a few batches of records.
pub const MIN_STREAM_SIZE: u64 = 64 * 1024;

fn stream(path: &str, s: &RawStream, errs: &mut Errors) -> StreamConfig {
    errs.name(&format!("{path}.name"), &s.name);
    let priority = errs.int(&format!("{path}.priority"), s.priority, 5, 1, 10) as u8;
    let max_size = errs.size(
        &format!("{path}.max_size"),
        s.max_size.as_deref(),
        256 << 20,
        MIN_STREAM_SIZE,
        u64::MAX,
    );
    let strategy_on_full = errs.choice(
        &format!("{path}.strategy_on_full"),
        s.strategy_on_full.as_deref(),
        StrategyOnFull::RejectNew,
        &[
            ("reject_new", StrategyOnFull::RejectNew),
            ("overwrite_oldest", StrategyOnFull::OverwriteOldest),
        ],
    );
    let time_to_live = errs.opt_duration(
        &format!("{path}.time_to_live"),
        s.time_to_live.as_deref(),
        Duration::from_secs(1),
    );
    let durability = errs.choice(
        &format!("{path}.durability"),
        s.durability.as_deref(),
        Durability::PowerLoss,
        &[
            ("power_loss", Durability::PowerLoss),
            ("process_crash", Durability::ProcessCrash),
        ],
    );
    let mut names = HashSet::new();
    let mut exports = Vec::new();
    for (j, e) in s.exports.iter().enumerate() {
        let epath = format!("{path}.exports[{j}]");
        let export = export(&epath, e, errs);
        if !names.insert(export.name.clone()) {
            errs.push(
                format!("{epath}.name"),
                format!(
                    "export \"{}\" is defined twice in stream \"{}\"; give each export its own name",
                    export.name, s.name
                ),
            );
        }
        exports.push(export);
    }
    StreamConfig {
        name: s.name.clone(),
        priority,
        max_size,
        strategy_on_full,
        time_to_live,
        durability,
        exports,
    }
}

fn export(path: &str, e: &RawExport, errs: &mut Errors) -> ExportConfig {
    let limits = e.kind.limits();
    let name = e
        .common
        .name
        .clone()
        .unwrap_or_else(|| e.kind.kind_name().to_string());
    errs.name(&format!("{path}.name"), &name);
    let max_records = errs.int(
        &format!("{path}.batch_size"),
        e.common.batch_size,
        limits.default_batch_size as i64,
        1,
        limits.max_batch_size as i64,
    ) as usize;
    let max_bytes = errs.size(
        &format!("{path}.batch_bytes"),
        e.common.batch_bytes.as_deref(),
        limits.max_batch_bytes,
        1024,
        limits.max_batch_bytes,
    ) as usize;
    let interval = errs.duration(
        &format!("{path}.batch_interval"),
        e.common.batch_interval.as_deref(),
        limits.default_batch_interval,
        Duration::ZERO,
    );
    let max_in_flight = if limits.max_in_flight_requests <= 1 {
        if e.common.max_in_flight_requests.is_some_and(|n| n != 1) {
            errs.push(
                format!("{path}.max_in_flight_requests"),
                format!(
                    "{} exports send one batch at a time, in order; remove the key or set 1",
                    e.kind.kind_name()
                ),
            );
        }
        1
    } else {
        errs.int(
            &format!("{path}.max_in_flight_requests"),
            e.common.max_in_flight_requests,
            limits.default_in_flight_requests as i64,
            1,
            limits.max_in_flight_requests as i64,
        ) as usize
    };
    let (initial_backoff, max_backoff) = errs.retry_backoff(
        path,
        e.common.initial_backoff.as_deref(),
        e.common.max_backoff.as_deref(),
        (Duration::from_millis(100), Duration::from_secs(60)),
        Duration::from_millis(1),
    );
    let kind = e.kind.validate(path, errs);
    ExportConfig {
        name,
        batch: BatchConfig {
            max_records,
            max_bytes,
            interval,
            max_in_flight,
        },
        disabled: e.common.disabled.unwrap_or(false),
        retry: RetryConfig {
            initial_backoff,
            max_backoff,
        },
        kind,
    }
}

fn source(
    path: &str,
    s: &RawSource,
    streams: &StreamNames,
    gateway: &GatewayConfig,
    errs: &mut Errors,
) -> Option<SourceConfig> {
    errs.name(&format!("{path}.id"), &s.common.id);
    let equipment_id = match s
        .common
        .equipment_id
        .clone()
        .or_else(|| gateway.equipment_id.clone())
    {
        Some(id) if !id.trim().is_empty() => id,
        Some(_) => {
            errs.push(format!("{path}.equipment_id"), "must not be empty");
            String::new()
        }
        None => {
            errs.push(
                format!("{path}.equipment_id"),
                "missing: set it on the source or as gateway.equipment_id",
            );
            String::new()
        }
    };
    let stream = match s.common.stream.as_deref() {
        Some(name) => streams.index(name).or_else(|| {
            errs.push(format!("{path}.stream"), streams.unknown(name));
            None
        }),
        None if streams.len() == 1 => Some(0),
        None => {
            errs.push(
                format!("{path}.stream"),
                "missing: name the stream this source writes to (there is more than one)",
            );
            None
        }
    };
    let heartbeat_interval = errs.opt_duration(
        &format!("{path}.heartbeat_interval"),
        s.common.heartbeat_interval.as_deref(),
        Duration::from_millis(10),
    );
    let kind = s.kind.validate(path, streams, errs);
    Some(SourceConfig {
        id: s.common.id.clone(),
        equipment_id,
        stream: stream?,
        heartbeat_interval,
        kind,
    })
}
