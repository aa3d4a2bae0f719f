//! Readers (sources): talk to devices and hand [`Sample`]s to their [`SourceContext`], which
//! normalises them into the unified payload, numbers them, flags them and appends them to the
//! queue. A reader knows nothing of queues beyond its context, nothing of exporters at all.

#[cfg(feature = "modbus")]
pub mod modbus;
mod normalise;
#[cfg(feature = "opcua")]
pub mod opcua;
#[cfg(feature = "s7")]
pub mod s7;
pub mod signal;
pub mod simulator;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicU64;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Errors, StreamNames};
use crate::payload::{Flags, Quality, Value};

pub use normalise::SourceContext;

/// The kind-specific keys of `[[sources]]`, selected by `kind`.
#[derive(Debug)]
pub enum RawSourceKind {
    Simulator(simulator::RawSimulator),
    #[cfg(feature = "s7")]
    S7(Box<s7::RawS7>),
    #[cfg(feature = "modbus")]
    ModbusTcp(modbus::RawModbus),
    #[cfg(feature = "modbus")]
    ModbusRtu(modbus::RawModbus),
    #[cfg(feature = "opcua")]
    Opcua(Box<opcua::RawOpcua>),
}

/// One tag read once (`streamgate read`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct TagRead {
    pub tag: String,
    /// `None` when the read failed (see `error`).
    pub value: Option<crate::payload::Value>,
    pub quality: crate::payload::Quality,
    /// When the request went out (gateway clock, ms since the Unix epoch).
    pub timestamp: i64,
    pub latency_ms: f64,
    /// The message the daemon would log for this tag's failure.
    pub error: Option<String>,
}

impl TagRead {
    pub fn good(
        tag: &str,
        value: crate::payload::Value,
        quality: crate::payload::Quality,
        timestamp: i64,
        latency_ms: f64,
    ) -> TagRead {
        TagRead {
            tag: tag.to_string(),
            value: Some(value),
            quality,
            timestamp,
            latency_ms,
            error: None,
        }
    }

    pub fn failed(tag: &str, timestamp: i64, latency_ms: f64, error: String) -> TagRead {
        TagRead {
            tag: tag.to_string(),
            value: None,
            quality: crate::payload::Quality::Bad,
            timestamp,
            latency_ms,
            error: Some(error),
        }
    }
}

/// A validated source kind with its settings.
#[derive(Debug, Clone)]
pub enum SourceKind {
    Simulator(simulator::SimulatorConfig),
    #[cfg(feature = "s7")]
    S7(s7::S7Config),
    #[cfg(feature = "modbus")]
    ModbusTcp(modbus::ModbusConfig),
    #[cfg(feature = "modbus")]
    ModbusRtu(modbus::ModbusConfig),
    #[cfg(feature = "opcua")]
    Opcua(Box<opcua::OpcuaConfig>),
}

impl RawSourceKind {
    /// The kinds this build has, as written in `kind = "..."`.
    pub fn kinds() -> Vec<&'static str> {
        crate::config::built(&[
            ("simulator", true),
            ("s7", cfg!(feature = "s7")),
            ("modbus_tcp", cfg!(feature = "modbus")),
            ("modbus_rtu", cfg!(feature = "modbus")),
            ("opcua", cfg!(feature = "opcua")),
        ])
    }

    /// Reads the kind's own keys (`keys`, the table at `path` without the common ones).
    /// `None`: no such kind in this build; `Some(None)`: the keys had errors (recorded).
    pub fn read(
        kind: &str,
        keys: toml::Value,
        path: &str,
        r: &mut crate::config::table::TableReader,
    ) -> Option<Option<RawSourceKind>> {
        Some(match kind {
            "simulator" => r.read(keys, path).map(RawSourceKind::Simulator),
            #[cfg(feature = "s7")]
            "s7" => r.read(keys, path).map(|s| RawSourceKind::S7(Box::new(s))),
            #[cfg(feature = "modbus")]
            "modbus_tcp" => r.read(keys, path).map(RawSourceKind::ModbusTcp),
            #[cfg(feature = "modbus")]
            "modbus_rtu" => r.read(keys, path).map(RawSourceKind::ModbusRtu),
            #[cfg(feature = "opcua")]
            "opcua" => r
                .read(keys, path)
                .map(|o| RawSourceKind::Opcua(Box::new(o))),
            _ => return None,
        })
    }

    pub fn validate(&self, path: &str, streams: &StreamNames, errs: &mut Errors) -> SourceKind {
        match self {
            RawSourceKind::Simulator(s) => SourceKind::Simulator(s.validate(path, streams, errs)),
            #[cfg(feature = "s7")]
            RawSourceKind::S7(s) => SourceKind::S7(s.validate(path, streams, errs)),
            #[cfg(feature = "modbus")]
            RawSourceKind::ModbusTcp(m) => {
                SourceKind::ModbusTcp(m.validate(path, false, streams, errs))
            }
            #[cfg(feature = "modbus")]
            RawSourceKind::ModbusRtu(m) => {
                SourceKind::ModbusRtu(m.validate(path, true, streams, errs))
            }
            #[cfg(feature = "opcua")]
            RawSourceKind::Opcua(s) => SourceKind::Opcua(Box::new(s.validate(path, streams, errs))),
        }
    }
}

/// A source's `[[sources.tags]]`, the same for every reader: at least one and at most `max`
/// (`what` names the source in the message, "a Modbus source"), names unique in the source,
/// and each tag validated by `one` at its key path `{path}.tags[i]`.
pub fn validate_tags<R, T>(
    path: &str,
    raw: &[R],
    max: usize,
    what: &str,
    name: impl Fn(&R) -> &str,
    errs: &mut Errors,
    mut one: impl FnMut(&str, &R, &mut Errors) -> Option<T>,
) -> Vec<T> {
    errs.tag_count(path, raw.len(), max, what);
    let mut names = std::collections::HashSet::new();
    let mut tags = Vec::new();
    for (i, t) in raw.iter().enumerate() {
        let tpath = format!("{path}.tags[{i}]");
        if !names.insert(name(t)) {
            errs.push(
                format!("{tpath}.name"),
                format!("tag \"{}\" is defined twice in this source", name(t)),
            );
        }
        tags.extend(one(&tpath, t, errs));
    }
    tags
}

/// Checks that need several sources at once (after each validated on its own): sources on
/// one Modbus serial line must agree on its settings. `sources` are (key path, id, kind).
pub fn check_together(sources: &[(&str, &str, &SourceKind)], errs: &mut Errors) {
    #[cfg(feature = "modbus")]
    {
        let modbus: Vec<(&str, &str, &modbus::ModbusConfig)> = sources
            .iter()
            .filter_map(|(path, id, kind)| match kind {
                SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => Some((*path, *id, m)),
                _ => None,
            })
            .collect();
        modbus::config::check_shared_lines(&modbus, errs);
    }
    #[cfg(not(feature = "modbus"))]
    let _ = (sources, errs);
}

/// What readers share across sources and need from the gateway: the data directory (OPC UA
/// keeps its PKI there) and the connections of Modbus lines that several sources take turns on.
pub struct Readers {
    #[cfg_attr(not(feature = "opcua"), allow(dead_code))]
    data_dir: PathBuf,
    #[cfg(feature = "modbus")]
    lines: modbus::line::Lines,
}

impl Readers {
    pub fn new(data_dir: &Path) -> Readers {
        Readers {
            data_dir: data_dir.to_owned(),
            #[cfg(feature = "modbus")]
            lines: Default::default(),
        }
    }

    /// Starts the reader of source `id` (in its own `reader` span); it runs until `stop`.
    pub fn spawn(
        &self,
        id: &str,
        kind: &SourceKind,
        ctx: SourceContext,
        stop: CancellationToken,
    ) -> JoinHandle<()> {
        let span = tracing::info_span!("reader", id = %id, kind = kind.kind_name());
        match kind {
            SourceKind::Simulator(sim) => {
                let seed = crate::time::now_ms() as u64 ^ seed_of(id);
                let sim = simulator::Simulator::new(sim.clone(), seed);
                tokio::spawn(sim.run(ctx, stop).instrument(span))
            }
            #[cfg(feature = "s7")]
            SourceKind::S7(s7) => {
                let reader = s7::S7Reader::new(s7.clone());
                tokio::spawn(reader.run(ctx, stop).instrument(span))
            }
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                let reader = modbus::ModbusReader::new(m.clone(), &self.lines);
                tokio::spawn(reader.run(ctx, stop).instrument(span))
            }
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(ua) => {
                let reader = opcua::OpcuaReader::new(ua.as_ref().clone(), id, &self.data_dir);
                tokio::spawn(reader.run(ctx, stop).instrument(span))
            }
        }
    }

    /// A reload changed the sources: shared connections whose settings are gone are dropped,
    /// so the restarted sources open new ones.
    pub fn forget_changed(&self, old: &[&SourceKind], new: &[&SourceKind]) {
        #[cfg(feature = "modbus")]
        {
            let transports = |kinds: &[&SourceKind]| -> Vec<modbus::config::Transport> {
                kinds
                    .iter()
                    .filter_map(|k| match k {
                        SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                            Some(m.transport.clone())
                        }
                        _ => None,
                    })
                    .collect()
            };
            let now = transports(new);
            for t in transports(old) {
                if !now.contains(&t) {
                    self.lines.forget(&t.key());
                }
            }
        }
        #[cfg(not(feature = "modbus"))]
        let _ = (old, new);
    }
}

/// A per-source part of the simulator's seed, so two simulators do not produce the same data.
fn seed_of(id: &str) -> u64 {
    id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl SourceKind {
    /// Everything the reader was started with, for the reload diff: equal text means equal
    /// settings (the derived `Debug` is complete and has no maps; secrets are hashed).
    pub fn fingerprint(&self) -> String {
        let secret = match self {
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(ua) => match &ua.identity {
                opcua::config::Identity::UserName { password, .. } => {
                    crate::config::secret_fingerprint(password)
                }
                _ => String::new(),
            },
            _ => String::new(),
        };
        format!("{self:?}|secret={secret}")
    }

    /// Sources with the same key share one connection (a Modbus TCP gateway or serial line):
    /// a change to one restarts them all.
    pub fn connection_key(&self) -> Option<String> {
        match self {
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => Some(m.transport.key()),
            _ => None,
        }
    }

    /// The stream of each tag that names its own (`None`: the source's).
    pub fn tag_streams(&self) -> Vec<Option<usize>> {
        match self {
            SourceKind::Simulator(s) => s.tags.iter().map(|t| t.stream).collect(),
            #[cfg(feature = "s7")]
            SourceKind::S7(s) => s.tags.iter().map(|t| t.stream).collect(),
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                m.tags.iter().map(|t| t.stream).collect()
            }
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(o) => o.tags.iter().map(|t| t.stream).collect(),
        }
    }

    /// Reads the tags named in `names` (every tag when empty) once, on a connection of its
    /// own, never touching a queue (`streamgate read`). `Err`: this kind has no device to read
    /// (the simulator).
    pub async fn read_once(
        &self,
        source_id: &str,
        data_dir: &std::path::Path,
        names: &[String],
    ) -> Result<Vec<TagRead>, String> {
        let selected = |all: Vec<&str>| -> Vec<usize> {
            (0..all.len())
                .filter(|&i| names.is_empty() || names.iter().any(|n| n == all[i]))
                .collect()
        };
        match self {
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                let idx = selected(m.tags.iter().map(|t| t.name.as_str()).collect());
                Ok(modbus::read_once(m, &idx).await)
            }
            #[cfg(feature = "s7")]
            SourceKind::S7(c) => {
                let idx = selected(c.tags.iter().map(|t| t.name.as_str()).collect());
                Ok(s7::read_once(c, &idx).await)
            }
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(o) => {
                let idx = selected(o.tags.iter().map(|t| t.name.as_str()).collect());
                Ok(opcua::read_once(o, source_id, data_dir, &idx).await)
            }
            SourceKind::Simulator(_) => {
                // Built without any device reader, these are unused.
                let _ = (source_id, data_dir, &selected);
                Err("a simulator has no device to read; `run` shows its samples".to_string())
            }
        }
    }

    /// What the source will do, one line for `streamgate validate`.
    pub fn summary(&self) -> String {
        use crate::config::units::format_duration as d;
        use std::time::Duration;
        let polled = |intervals: Vec<Duration>| {
            let (Some(fastest), Some(slowest)) = (intervals.iter().min(), intervals.iter().max())
            else {
                return "no tags".to_string();
            };
            let every = if fastest == slowest {
                d(*fastest)
            } else {
                format!("{} to {}", d(*fastest), d(*slowest))
            };
            format!("{} tag(s), polled every {every}", intervals.len())
        };
        match self {
            SourceKind::Simulator(s) => polled(vec![s.interval; s.tags.len()]),
            #[cfg(feature = "s7")]
            SourceKind::S7(s) => polled(vec![s.interval; s.tags.len()]),
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                polled(m.tags.iter().map(|t| t.interval).collect())
            }
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(o) => o.summary(),
        }
    }

    /// The files this source reads (key, path), which must exist when it starts.
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path)> {
        match self {
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(ua) => match &ua.identity {
                opcua::config::Identity::Certificate { cert, key } => {
                    vec![("user_certificate", cert), ("user_private_key", key)]
                }
                _ => Vec::new(),
            },
            _ => Vec::new(),
        }
    }

    /// Whether a password is written into the config file itself (see `Config::inline_secrets`).
    pub fn has_inline_secret(&self) -> bool {
        match self {
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(ua) => {
                matches!(ua.identity, opcua::config::Identity::UserName { .. })
            }
            _ => false,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            SourceKind::Simulator(_) => "simulator",
            #[cfg(feature = "s7")]
            SourceKind::S7(_) => "s7",
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(_) => "modbus_tcp",
            #[cfg(feature = "modbus")]
            SourceKind::ModbusRtu(_) => "modbus_rtu",
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(_) => "opcua",
        }
    }

    /// Names and stream overrides of the tags, in the order readers index them.
    pub fn tags(&self) -> Vec<(String, Option<usize>)> {
        match self {
            SourceKind::Simulator(s) => s.tags.iter().map(|t| (t.name.clone(), t.stream)).collect(),
            #[cfg(feature = "s7")]
            SourceKind::S7(s) => s.tags.iter().map(|t| (t.name.clone(), t.stream)).collect(),
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                m.tags.iter().map(|t| (t.name.clone(), t.stream)).collect()
            }
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(s) => s.tags.iter().map(|t| (t.name.clone(), t.stream)).collect(),
        }
    }
}

/// The tag name of watermark (heartbeat) records.
pub const WATERMARK_TAG: &str = "_watermark";

/// One reading, before normalisation. `tag` indexes the source's tag list.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub tag: usize,
    pub value: Value,
    pub quality: Quality,
    /// Event time in ms (the device's time if it gives one).
    pub timestamp_ms: i64,
    pub flags: Flags,
}

/// Counters of one source, shared with the app (status, metrics, benchmark).
#[derive(Debug, Default)]
pub struct SourceStats {
    pub samples: AtomicU64,
    pub heartbeats: AtomicU64,
    /// Connections lost (each one is followed by a reconnect with backoff).
    pub losses: AtomicU64,
    /// The source's health: [`SourceState`] as a number.
    pub state: std::sync::atomic::AtomicU8,
    /// When the current failure episode began (ms since the epoch; 0 while healthy).
    pub failing_since_ms: std::sync::atomic::AtomicI64,
    /// Failed connects or reads in the current episode.
    pub failures: AtomicU64,
    /// When the source last delivered a good (`Ok`) reading (ms since the epoch; 0: never).
    pub last_good_ms: std::sync::atomic::AtomicI64,
    /// The last failure, as the reader logged it.
    pub last_error: std::sync::Mutex<Option<String>>,
    /// Samples per tag, in the source's tag order (empty when made with `default()`).
    pub tags: Box<[(String, AtomicU64)]>,
}

/// Where a source stands, for `status`, the metrics and `/health`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[repr(u8)]
pub enum SourceState {
    /// Started, no answer yet.
    #[default]
    Connecting = 0,
    /// Reading.
    Connected = 1,
    /// Was reading; now failing (reconnecting with backoff).
    Failing = 2,
    /// Has never answered since the start.
    NeverConnected = 3,
}

impl SourceState {
    pub fn from_u8(v: u8) -> SourceState {
        match v {
            1 => SourceState::Connected,
            2 => SourceState::Failing,
            3 => SourceState::NeverConnected,
            _ => SourceState::Connecting,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SourceState::Connecting => "connecting",
            SourceState::Connected => "connected",
            SourceState::Failing => "failing",
            SourceState::NeverConnected => "never connected",
        }
    }
}

impl SourceStats {
    pub fn state(&self) -> SourceState {
        SourceState::from_u8(self.state.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// The last failure, if any.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Counters with one per-tag counter for each of `names`.
    pub fn with_tags<'a>(names: impl IntoIterator<Item = &'a str>) -> SourceStats {
        SourceStats {
            tags: names
                .into_iter()
                .map(|n| (n.to_string(), AtomicU64::new(0)))
                .collect(),
            ..SourceStats::default()
        }
    }
}
