//! Readers (sources): talk to devices and hand [`Sample`]s to their [`SourceContext`], which
//! normalises them into the unified payload, numbers them, flags them and appends them to the
//! queue. A reader knows nothing of queues beyond its context, nothing of exporters at all.

#[cfg(feature = "modbus")]
pub mod modbus;
#[cfg(feature = "opcua")]
pub mod opcua;
#[cfg(feature = "s7")]
pub mod s7;
pub mod signal;
pub mod simulator;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Deserialize;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::{Errors, StreamNames};
use crate::payload::{Flags, Meta, PAYLOAD_VERSION, Payload, Quality, Value};
use crate::queue::{AppendBatch, Appender, NewRecord, QueueError};

/// The kind-specific keys of `[[sources]]`, selected by `kind`.
#[derive(Debug, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
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
    /// Samples per tag, in the source's tag order (empty when made with `default()`).
    pub tags: Box<[(String, AtomicU64)]>,
}

impl SourceStats {
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

struct TagState {
    name: String,
    stream: usize,
    /// Sent since the source (re)connected: the next sample carries `Fst` when false.
    seen: bool,
    last: Option<(Value, i64)>,
}

/// Normalises one source's samples and appends them to the queue.
pub struct SourceContext {
    source_index: usize,
    id: String,
    equipment_id: String,
    tags: Vec<TagState>,
    next_seq: u64,
    appender: Appender,
    pending: Vec<NewRecord>,
    /// Streams this source feeds, with when each last got a record.
    streams: Vec<(usize, Instant)>,
    heartbeat: Option<Duration>,
    stats: Arc<SourceStats>,
}

/// How many records a context buffers before it appends them on its own.
const FLUSH_RECORDS: usize = 2_000;

impl SourceContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source_index: usize,
        id: &str,
        equipment_id: &str,
        default_stream: usize,
        tags: Vec<(String, Option<usize>)>,
        next_seq: u64,
        heartbeat: Option<Duration>,
        appender: Appender,
        stats: Arc<SourceStats>,
    ) -> SourceContext {
        let tags: Vec<TagState> = tags
            .into_iter()
            .map(|(name, stream)| TagState {
                name,
                stream: stream.unwrap_or(default_stream),
                seen: false,
                last: None,
            })
            .collect();
        let mut streams: Vec<(usize, Instant)> = vec![(default_stream, Instant::now())];
        for t in &tags {
            if !streams.iter().any(|(s, _)| *s == t.stream) {
                streams.push((t.stream, Instant::now()));
            }
        }
        SourceContext {
            source_index,
            id: id.to_string(),
            equipment_id: equipment_id.to_string(),
            tags,
            next_seq,
            appender,
            pending: Vec::new(),
            streams,
            heartbeat,
            stats,
        }
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Normalises a sample into the pending batch. `Fst` is added to the first sample of each
    /// tag after (re)connect; non-finite floats become `Bad` with their text as value.
    pub fn push(&mut self, mut sample: Sample) {
        let Some(tag) = self.tags.get_mut(sample.tag) else {
            tracing::error!(tag = sample.tag, source = %self.id, "sample for an unknown tag index ignored");
            return;
        };
        if !tag.seen {
            sample.flags.insert(Flags::FST);
            tag.seen = true;
        }
        // Stamped by (or judged against) a gateway clock known to be wrong.
        if crate::clock::known_wrong() {
            sample.flags.insert(Flags::ATS);
        }
        if let Value::Float(f) = sample.value
            && !f.is_finite()
        {
            sample.value = Value::Text(f.to_string());
            sample.quality = Quality::Bad;
        }
        tag.last = Some((sample.value.clone(), sample.timestamp_ms));
        let stream = tag.stream;
        let now = crate::time::now_ms();
        let mut payload = Vec::with_capacity(256);
        Payload {
            version: PAYLOAD_VERSION,
            timestamp: sample.timestamp_ms,
            equipment_id: self.equipment_id.as_str(),
            tag: tag.name.as_str(),
            value: sample.value,
            quality: sample.quality,
            meta: Meta {
                sequence_number: self.next_seq,
                flags: sample.flags,
                created_at: now,
                source_id: self.id.as_str(),
            },
        }
        .encode(&mut payload);
        self.next_seq += 1;
        self.pending.push(NewRecord {
            stream,
            created_ms: now,
            payload,
        });
        self.touch(stream);
        self.stats.samples.fetch_add(1, Ordering::Relaxed);
        if let Some((_, n)) = self.stats.tags.get(sample.tag) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn touch(&mut self, stream: usize) {
        if let Some(s) = self.streams.iter_mut().find(|(s, _)| *s == stream) {
            s.1 = Instant::now();
        }
    }

    /// The source (re)connected: the next sample of every tag carries `Fst`.
    pub fn connected(&mut self) {
        for t in &mut self.tags {
            t.seen = false;
        }
    }

    /// The source was lost: every tag that sent since the last connect gets one synthetic
    /// `Bad` sample flagged `Lst` (with its last value), so consumers can tell "no data" from
    /// "no change".
    pub fn lost(&mut self, timestamp_ms: i64) {
        self.stats.losses.fetch_add(1, Ordering::Relaxed);
        let lost: Vec<(usize, Value)> = self
            .tags
            .iter()
            .enumerate()
            .filter(|(_, t)| t.seen)
            .filter_map(|(i, t)| t.last.as_ref().map(|(v, _)| (i, v.clone())))
            .collect();
        for (i, value) in lost {
            self.push(Sample {
                tag: i,
                value,
                quality: Quality::Bad,
                timestamp_ms,
                flags: Flags::LST | Flags::SYN,
            });
        }
        self.connected();
    }

    /// When the next heartbeat is due, if heartbeats are on.
    pub fn heartbeat_due(&self) -> Option<Instant> {
        let interval = self.heartbeat?;
        self.streams.iter().map(|(_, at)| *at + interval).min()
    }

    /// Appends a `Wmk`+`Syn` record to every stream that got nothing for a heartbeat interval:
    /// the source is alive and its event time has reached `timestamp_ms`.
    pub fn heartbeats(&mut self, timestamp_ms: i64) {
        let Some(interval) = self.heartbeat else {
            return;
        };
        let now = Instant::now();
        let idle: Vec<usize> = self
            .streams
            .iter()
            .filter(|(_, at)| now >= *at + interval)
            .map(|(s, _)| *s)
            .collect();
        for stream in idle {
            let created = crate::time::now_ms();
            let mut payload = Vec::with_capacity(200);
            Payload {
                version: PAYLOAD_VERSION,
                timestamp: timestamp_ms,
                equipment_id: self.equipment_id.as_str(),
                tag: WATERMARK_TAG,
                value: Value::Bool(true),
                quality: Quality::Ok,
                meta: Meta {
                    sequence_number: self.next_seq,
                    flags: if crate::clock::known_wrong() {
                        Flags::WMK | Flags::SYN | Flags::ATS
                    } else {
                        Flags::WMK | Flags::SYN
                    },
                    created_at: created,
                    source_id: self.id.as_str(),
                },
            }
            .encode(&mut payload);
            self.next_seq += 1;
            self.pending.push(NewRecord {
                stream,
                created_ms: created,
                payload,
            });
            self.touch(stream);
            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Records waiting to be appended.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether enough is pending that the reader should flush before reading more.
    pub fn should_flush(&self) -> bool {
        self.pending.len() >= FLUSH_RECORDS
    }

    /// Appends what is pending; waits when the queue is behind (backpressure).
    pub async fn flush(&mut self) -> Result<(), QueueError> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending);
        self.appender
            .append(AppendBatch {
                source: self.source_index,
                next_seq: self.next_seq,
                records,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::decode;

    fn ctx(
        heartbeat: Option<Duration>,
    ) -> (SourceContext, tokio::sync::mpsc::Receiver<AppendBatch>) {
        let (appender, rx) = Appender::detached(16);
        let tags = vec![("a".to_string(), None), ("b".to_string(), Some(1))];
        let c = SourceContext::new(
            0,
            "src",
            "eq",
            0,
            tags,
            7,
            heartbeat,
            appender,
            Arc::default(),
        );
        (c, rx)
    }

    fn sample(tag: usize, v: f64) -> Sample {
        Sample {
            tag,
            value: Value::Float(v),
            quality: Quality::Ok,
            timestamp_ms: 1000,
            flags: Flags::empty(),
        }
    }

    #[tokio::test]
    async fn numbers_flags_and_routes_samples() {
        let (mut c, mut rx) = ctx(None);
        c.push(sample(0, 1.0));
        c.push(sample(1, 2.0));
        c.push(sample(0, f64::NAN));
        c.lost(2000);
        c.push(sample(0, 3.0));
        c.flush().await.unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch.next_seq, 7 + 6);
        let p: Vec<_> = batch
            .records
            .iter()
            .map(|r| decode(&r.payload).unwrap())
            .collect();
        let seqs: Vec<u64> = p.iter().map(|p| p.meta.sequence_number).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10, 11, 12]);
        assert_eq!(
            batch.records.iter().map(|r| r.stream).collect::<Vec<_>>(),
            vec![0, 1, 0, 0, 1, 0]
        );
        assert_eq!(p[0].meta.flags, Flags::FST);
        assert_eq!(p[1].meta.flags, Flags::FST);
        assert_eq!(p[2].meta.flags, Flags::empty());
        assert_eq!(
            (p[2].quality, p[2].value.clone()),
            (Quality::Bad, Value::Text("NaN".into()))
        );
        // Loss: one Bad Lst+Syn sample per tag with its last value, then Fst again.
        assert_eq!(p[3].meta.flags, Flags::LST | Flags::SYN);
        assert_eq!(p[3].quality, Quality::Bad);
        assert_eq!(p[4].tag, "b");
        assert_eq!(p[4].value, Value::Float(2.0));
        assert_eq!(p[5].meta.flags, Flags::FST);
        assert_eq!(
            (p[5].equipment_id.as_str(), p[5].meta.source_id.as_str()),
            ("eq", "src")
        );
    }

    #[tokio::test]
    async fn heartbeats_go_to_idle_streams_only() {
        let (mut c, mut rx) = ctx(Some(Duration::from_millis(30)));
        assert!(c.heartbeat_due().is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        c.push(sample(0, 1.0)); // stream 0 is busy now
        c.heartbeats(5000);
        c.flush().await.unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch.records.len(), 2);
        let wmk = decode(&batch.records[1].payload).unwrap();
        assert_eq!(batch.records[1].stream, 1);
        assert_eq!(wmk.tag, WATERMARK_TAG);
        assert_eq!(wmk.meta.flags, Flags::WMK | Flags::SYN);
        assert_eq!(wmk.timestamp, 5000);
        c.heartbeats(5001);
        assert_eq!(c.pending(), 0, "no second heartbeat within the interval");
    }
}
