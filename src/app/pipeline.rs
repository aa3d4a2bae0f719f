//! Wires readers -> queue -> exporters and shuts them down in order:
//! 1. stop the readers (each flushes its last samples, flagged `Lst`),
//! 2. the queue commits everything the readers handed over,
//! 3. exporters finish the send in progress (up to `gateway.shutdown_timeout`),
//! 4. the queue writes its cursors and status, checkpoints and closes.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::app::config::Config;
use crate::exporters::ExportKind;
use crate::exporters::bandwidth::Bandwidth;
use crate::exporters::driver::{self, DriverContext, ExportStats};
use crate::exporters::file::FileExporter;
use crate::exporters::stdout::StdoutExporter;
use crate::metrics::{Published, Registry};
use crate::queue::{ExportId, Queue, QueueError, QueueHandle, QueueOptions, Slots, StreamSpec};
use crate::readers::simulator::Simulator;
use crate::readers::{SourceContext, SourceKind, SourceStats};

/// What to start; the benchmark fills a backlog before it starts the exports.
#[derive(Debug, Clone, Copy)]
pub struct StartOptions {
    pub sources: bool,
    pub exports: bool,
}

impl Default for StartOptions {
    fn default() -> Self {
        StartOptions {
            sources: true,
            exports: true,
        }
    }
}

/// A running pipeline.
pub struct Pipeline {
    config: Config,
    queue: Option<Queue>,
    pub handle: QueueHandle,
    /// Where the current config's streams, exports and sources live in the queue.
    slots: Slots,
    /// Next sequence number of each source slot, as the queue last told us.
    source_next_seq: Vec<u64>,
    sources: Vec<RunningSource>,
    exports: Vec<RunningExport>,
    /// Parents of every reader's / export's own stop token.
    sources_stop: CancellationToken,
    exports_stop: CancellationToken,
    bandwidth: Bandwidth,
    /// Modbus sources behind one TCP endpoint or serial line share its connection.
    #[cfg(feature = "modbus")]
    lines: crate::readers::modbus::line::Lines,
    pub source_stats: Vec<(String, Arc<SourceStats>)>,
    pub export_stats: Vec<(String, Arc<ExportStats>)>,
    /// Connection state and in-flight counters of the MQTT exports, by `stream/export`.
    #[cfg(feature = "mqtt")]
    pub mqtt_stats: Vec<(String, Arc<crate::exporters::mqtt::MqttStats>)>,
    /// What the metrics endpoint reads.
    registry: Arc<Registry>,
}

struct RunningSource {
    id: String,
    /// What the source was started with; a reload restarts it when this changes.
    fingerprint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

struct RunningExport {
    /// `stream/export`
    key: String,
    fingerprint: String,
    stop: CancellationToken,
    task: JoinHandle<()>,
}

/// What a reload changed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    pub sources_started: Vec<String>,
    pub sources_restarted: Vec<String>,
    pub sources_stopped: Vec<String>,
    pub sources_kept: Vec<String>,
    pub exports_started: Vec<String>,
    pub exports_restarted: Vec<String>,
    pub exports_stopped: Vec<String>,
    pub exports_kept: Vec<String>,
    /// Settings that only take effect at the next start.
    pub needs_restart: Vec<String>,
    /// Streams no longer in the config whose records are kept in the queue.
    pub streams_removed: Vec<String>,
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        write!(
            f,
            "sources started: {}; restarted: {}; stopped: {}; unchanged: {}. exports started: {}; restarted: {}; stopped: {}; unchanged: {}",
            list(&self.sources_started),
            list(&self.sources_restarted),
            list(&self.sources_stopped),
            self.sources_kept.len(),
            list(&self.exports_started),
            list(&self.exports_restarted),
            list(&self.exports_stopped),
            self.exports_kept.len(),
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("{0} cannot change while running; restart the service to use the new value")]
    NeedsRestart(&'static str),
    #[error("the queue could not apply the new streams: {0}")]
    Queue(#[from] QueueError),
}

impl Pipeline {
    /// Opens the queue and starts readers and exporters. Needs a tokio runtime.
    pub fn start(config: &Config, options: StartOptions) -> Result<Pipeline, QueueError> {
        let source_ids: Vec<String> = config.sources.iter().map(|s| s.id.clone()).collect();
        let queue = Queue::open(
            &config.gateway.data_dir,
            stream_specs(config),
            &source_ids,
            QueueOptions {
                maintenance_interval: config.gateway.status_interval,
            },
        )?;
        let handle = queue.handle.clone();
        let slots = Slots {
            streams: (0..config.streams.len()).collect(),
            exports: config
                .streams
                .iter()
                .map(|s| (0..s.exports.len()).collect())
                .collect(),
            sources: (0..config.sources.len()).collect(),
        };
        let mut pipeline = Pipeline {
            config: config.clone(),
            source_next_seq: queue.source_next_seq.clone(),
            queue: Some(queue),
            handle,
            slots,
            sources: Vec::new(),
            exports: Vec::new(),
            sources_stop: CancellationToken::new(),
            exports_stop: CancellationToken::new(),
            bandwidth: bandwidth_of(config),
            #[cfg(feature = "modbus")]
            lines: Default::default(),
            source_stats: Vec::new(),
            export_stats: Vec::new(),
            #[cfg(feature = "mqtt")]
            mqtt_stats: Vec::new(),
            registry: Arc::default(),
        };
        if options.exports {
            pipeline.start_exports();
        }
        if options.sources {
            pipeline.start_sources();
        }
        pipeline.publish();
        Ok(pipeline)
    }

    /// The counters the metrics endpoint shows; kept current across reloads.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    fn publish(&self) {
        self.registry.publish(Published {
            sources: self.source_stats.clone(),
            exports: self.export_stats.clone(),
            #[cfg(feature = "mqtt")]
            mqtt: self.mqtt_stats.clone(),
            queue: Some(self.handle.clone()),
        });
    }

    /// The configuration the pipeline runs with (the last one reloaded).
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// Starts every configured source that is not running.
    pub fn start_sources(&mut self) {
        if self.queue.is_none() {
            return;
        }
        for i in 0..self.config.sources.len() {
            let id = &self.config.sources[i].id;
            if !self.sources.iter().any(|r| &r.id == id) {
                self.start_source(i);
            }
        }
        self.publish();
    }

    fn start_source(&mut self, i: usize) {
        let src = &self.config.sources[i];
        let Some(queue) = &self.queue else { return };
        let slot = self.slots.sources[i];
        let stream_slot = |s: usize| self.slots.streams[s];
        let tags: Vec<(String, Option<usize>)> = src
            .kind
            .tags()
            .into_iter()
            .map(|(name, stream)| (name, stream.map(stream_slot)))
            .collect();
        let stats = Arc::new(SourceStats::with_tags(tags.iter().map(|(n, _)| n.as_str())));
        self.source_stats.retain(|(id, _)| id != &src.id);
        self.source_stats.push((src.id.clone(), stats.clone()));
        let ctx = SourceContext::new(
            slot,
            &src.id,
            &src.equipment_id,
            stream_slot(src.stream),
            tags,
            self.source_next_seq[slot],
            src.heartbeat_interval,
            queue.appender.clone(),
            stats,
        );
        let stop = self.sources_stop.child_token();
        let span = tracing::info_span!("reader", id = %src.id, kind = src.kind.kind_name());
        let task = match &src.kind {
            SourceKind::Simulator(sim) => {
                let seed = crate::time::now_ms() as u64 ^ ((i as u64) << 32);
                let sim = Simulator::new(sim.clone(), seed);
                tokio::spawn(sim.run(ctx, stop.clone()).instrument(span))
            }
            #[cfg(feature = "s7")]
            SourceKind::S7(s7) => {
                let reader = crate::readers::s7::S7Reader::new(s7.clone());
                tokio::spawn(reader.run(ctx, stop.clone()).instrument(span))
            }
            #[cfg(feature = "modbus")]
            SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                let reader = crate::readers::modbus::ModbusReader::new(m.clone(), &self.lines);
                tokio::spawn(reader.run(ctx, stop.clone()).instrument(span))
            }
            #[cfg(feature = "opcua")]
            SourceKind::Opcua(ua) => {
                let reader = crate::readers::opcua::OpcuaReader::new(
                    ua.as_ref().clone(),
                    &src.id,
                    &self.config.gateway.data_dir,
                );
                tokio::spawn(reader.run(ctx, stop.clone()).instrument(span))
            }
        };
        self.sources.push(RunningSource {
            id: src.id.clone(),
            fingerprint: source_fingerprint(&self.config, i),
            stop,
            task,
        });
    }

    /// Starts every configured, enabled export that is not running.
    pub fn start_exports(&mut self) {
        for s in 0..self.config.streams.len() {
            for e in 0..self.config.streams[s].exports.len() {
                let stream = &self.config.streams[s];
                let export = &stream.exports[e];
                let key = format!("{}/{}", stream.name, export.name);
                if export.disabled {
                    tracing::info!(stream = %stream.name, export = %export.name, "export disabled in config; not started");
                    continue;
                }
                if !self.exports.iter().any(|r| r.key == key) {
                    self.start_export(s, e);
                }
            }
        }
        self.publish();
    }

    fn start_export(&mut self, s: usize, e: usize) {
        let stream = &self.config.streams[s];
        let export = &stream.exports[e];
        let key = format!("{}/{}", stream.name, export.name);
        let stats = Arc::new(ExportStats::default());
        self.export_stats.retain(|(k, _)| k != &key);
        self.export_stats.push((key.clone(), stats.clone()));
        let stop = self.exports_stop.child_token();
        let ctx = DriverContext {
            id: ExportId {
                stream: self.slots.streams[s],
                export: self.slots.exports[s][e],
            },
            stream: stream.name.clone(),
            name: export.name.clone(),
            kind: export.kind.kind_name(),
            batch: export.batch,
            retry: export.retry,
            queue: self.handle.clone(),
            bandwidth: self.bandwidth.clone(),
            stats,
            shutdown: stop.clone(),
        };
        let task = match &export.kind {
            #[cfg(any(feature = "kinesis", feature = "firehose"))]
            ExportKind::Aws(a) => {
                let exporter = crate::exporters::aws::AwsExporter::new(a.clone());
                tokio::spawn(driver::run(exporter, ctx))
            }
            ExportKind::File(f) => {
                let prefix = format!("{}-{}", stream.name, export.name);
                tokio::spawn(driver::run(FileExporter::new(f.clone(), &prefix), ctx))
            }
            ExportKind::Stdout(_) => tokio::spawn(driver::run(StdoutExporter::default(), ctx)),
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(m) => {
                let stats = Arc::new(crate::exporters::mqtt::MqttStats::default());
                self.mqtt_stats.retain(|(k, _)| k != &key);
                self.mqtt_stats.push((key.clone(), stats.clone()));
                let span = tracing::info_span!("export", stream = %stream.name, name = %export.name, kind = "mqtt");
                let exporter = span
                    .in_scope(|| crate::exporters::mqtt::MqttExporter::new((**m).clone(), stats));
                tokio::spawn(driver::run(exporter, ctx))
            }
        };
        self.exports.push(RunningExport {
            fingerprint: export_fingerprint(&self.config, s, e),
            key,
            stop,
            task,
        });
    }

    /// Samples produced by all readers so far.
    pub fn samples_read(&self) -> u64 {
        self.source_stats
            .iter()
            .map(|(_, s)| s.samples.load(Ordering::Relaxed))
            .sum()
    }

    /// Records acknowledged by all exports so far.
    pub fn records_delivered(&self) -> u64 {
        self.export_stats
            .iter()
            .map(|(_, s)| s.delivered.load(Ordering::Relaxed))
            .sum()
    }

    /// Stops the readers and waits until they have handed over their last samples.
    pub async fn stop_sources(&mut self, deadline: Duration) {
        self.sources_stop.cancel();
        let running = std::mem::take(&mut self.sources);
        join_all("readers", running.into_iter().map(|r| r.task), deadline).await;
        self.sources_stop = CancellationToken::new();
    }

    /// Applies a new, already validated configuration while running: sources and exports
    /// whose settings changed are restarted, new ones started, removed ones stopped; the rest
    /// keep running untouched. Readers hand over their last samples (`Lst`) before the queue
    /// applies the new streams, so nothing read is lost and sequence numbers continue. A
    /// stream that is no longer configured keeps its records (see `streamgate purge`).
    pub async fn reload(&mut self, new: Config) -> Result<ReloadReport, ReloadError> {
        let old = &self.config;
        if new.gateway.data_dir != old.gateway.data_dir {
            return Err(ReloadError::NeedsRestart("gateway.data_dir"));
        }
        let mut report = ReloadReport::default();
        if new.gateway.log_format != old.gateway.log_format {
            report.needs_restart.push("gateway.log_format".into());
        }
        if new.gateway.status_interval != old.gateway.status_interval {
            report.needs_restart.push("gateway.status_interval".into());
        }
        if new.gateway.report_interval != old.gateway.report_interval {
            report.needs_restart.push("gateway.report_interval".into());
        }
        let new_bandwidth = new.gateway.max_export_bandwidth != old.gateway.max_export_bandwidth;

        // What must stop: gone, or started with other settings.
        let deadline = new.gateway.shutdown_timeout;
        let new_sources: Vec<(String, String)> = (0..new.sources.len())
            .map(|i| (new.sources[i].id.clone(), source_fingerprint(&new, i)))
            .collect();
        let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.sources)
            .into_iter()
            .partition(|r| new_sources.contains(&(r.id.clone(), r.fingerprint.clone())));
        self.sources = keep;
        report.sources_kept = self.sources.iter().map(|r| r.id.clone()).collect();
        for r in &stop {
            if new_sources.iter().any(|(id, _)| id == &r.id) {
                report.sources_restarted.push(r.id.clone());
            } else {
                report.sources_stopped.push(r.id.clone());
            }
            r.stop.cancel();
        }
        join_all("readers", stop.into_iter().map(|r| r.task), deadline).await;
        #[cfg(feature = "modbus")]
        self.forget_changed_modbus_lines(&new);

        let mut new_exports = Vec::new();
        for (s, stream) in new.streams.iter().enumerate() {
            for (e, export) in stream.exports.iter().enumerate() {
                if !export.disabled {
                    new_exports.push((
                        format!("{}/{}", stream.name, export.name),
                        export_fingerprint(&new, s, e),
                    ));
                }
            }
        }
        let (keep, stop): (Vec<_>, Vec<_>) = std::mem::take(&mut self.exports)
            .into_iter()
            .partition(|r| {
                !new_bandwidth && new_exports.contains(&(r.key.clone(), r.fingerprint.clone()))
            });
        self.exports = keep;
        report.exports_kept = self.exports.iter().map(|r| r.key.clone()).collect();
        for r in &stop {
            if new_exports.iter().any(|(k, _)| k == &r.key) {
                report.exports_restarted.push(r.key.clone());
            } else {
                report.exports_stopped.push(r.key.clone());
            }
            r.stop.cancel();
        }
        join_all("exports", stop.into_iter().map(|r| r.task), deadline).await;

        // The queue commits what the stopped readers handed over, then takes the new streams.
        let source_ids: Vec<String> = new.sources.iter().map(|s| s.id.clone()).collect();
        let reconfigured = self
            .handle
            .reconfigure(stream_specs(&new), source_ids)
            .await;
        let reconfigured = match reconfigured {
            Ok(r) => r,
            Err(e) => {
                // Keep going with the old config: restart what was stopped.
                tracing::error!(error = %e, "reload failed in the queue; restarting the stopped readers and exports with the old config");
                self.start_exports();
                self.start_sources();
                return Err(e.into());
            }
        };
        report.streams_removed = old
            .streams
            .iter()
            .filter(|s| new.stream_index(&s.name).is_none())
            .map(|s| s.name.clone())
            .collect();
        self.handle = reconfigured.handle;
        self.slots = reconfigured.slots;
        self.source_next_seq = reconfigured.source_next_seq;
        if new_bandwidth {
            self.bandwidth = bandwidth_of(&new);
        }
        self.config = new;
        let running: Vec<String> = self.sources.iter().map(|r| r.id.clone()).collect();
        let running_exports: Vec<String> = self.exports.iter().map(|r| r.key.clone()).collect();
        self.start_exports();
        self.start_sources();
        report.sources_started = self
            .sources
            .iter()
            .map(|r| r.id.clone())
            .filter(|id| !running.contains(id) && !report.sources_restarted.contains(id))
            .collect();
        report.exports_started = self
            .exports
            .iter()
            .map(|r| r.key.clone())
            .filter(|k| !running_exports.contains(k) && !report.exports_restarted.contains(k))
            .collect();
        let ids: Vec<&String> = self.sources.iter().map(|r| &r.id).collect();
        self.source_stats.retain(|(id, _)| ids.contains(&id));
        let keys: Vec<&String> = self.exports.iter().map(|r| &r.key).collect();
        self.export_stats.retain(|(k, _)| keys.contains(&k));
        #[cfg(feature = "mqtt")]
        self.mqtt_stats.retain(|(k, _)| keys.contains(&k));
        self.publish();
        Ok(report)
    }

    /// Sources sharing a Modbus line take turns on one connection; when the settings of a line
    /// changed, its connection is dropped so the restarted sources open a new one.
    #[cfg(feature = "modbus")]
    fn forget_changed_modbus_lines(&self, new: &Config) {
        let transports = |c: &Config| -> Vec<crate::readers::modbus::config::Transport> {
            c.sources
                .iter()
                .filter_map(|s| match &s.kind {
                    SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                        Some(m.transport.clone())
                    }
                    _ => None,
                })
                .collect()
        };
        let now = transports(new);
        for t in transports(&self.config) {
            if !now.contains(&t) {
                self.lines.forget(&t.key());
            }
        }
    }

    /// Shuts everything down in order; see the module docs.
    pub async fn stop(mut self) {
        let deadline = self.config.gateway.shutdown_timeout;
        tracing::info!("shutting down: stopping readers");
        self.stop_sources(deadline).await;
        tracing::info!("readers stopped; letting exports finish what is in flight");
        self.exports_stop.cancel();
        let exports = std::mem::take(&mut self.exports);
        if !join_all("exports", exports.into_iter().map(|r| r.task), deadline).await {
            tracing::warn!(
                timeout = ?deadline,
                "exports did not finish within the shutdown timeout; aborted (unacknowledged records stay queued)"
            );
        }
        // The metrics registry may outlive us: it must not keep the queue open.
        self.registry.publish(Published::default());
        let Pipeline {
            queue,
            handle,
            bandwidth,
            ..
        } = self;
        drop(handle);
        drop(bandwidth);
        if let Some(queue) = queue {
            let closed = tokio::task::spawn_blocking(move || queue.close()).await;
            if closed.is_err() {
                tracing::error!("closing the queue failed");
            }
        }
        tracing::info!("shutdown complete");
    }
}

/// What the queue needs to know of each configured stream.
fn stream_specs(config: &Config) -> Vec<StreamSpec> {
    config
        .streams
        .iter()
        .map(|s| StreamSpec {
            name: s.name.clone(),
            priority: s.priority,
            max_size: s.max_size,
            strategy_on_full: s.strategy_on_full,
            time_to_live: s.time_to_live,
            durability: s.durability,
            exports: s
                .exports
                .iter()
                .map(|e| (e.name.clone(), e.kind.kind_name().to_string(), !e.disabled))
                .collect(),
        })
        .collect()
}

fn bandwidth_of(config: &Config) -> Bandwidth {
    match config.gateway.max_export_bandwidth {
        Some(b) => Bandwidth::limited(b),
        None => Bandwidth::unlimited(),
    }
}

/// Everything a running source depends on. The derived `Debug` of the validated config is
/// complete and deterministic (no maps), so equal text means equal settings; stream indices
/// are resolved to names so a reordering elsewhere in the file changes nothing.
fn source_fingerprint(config: &Config, i: usize) -> String {
    let src = &config.sources[i];
    let streams: Vec<&str> = config.streams.iter().map(|s| s.name.as_str()).collect();
    #[cfg_attr(not(feature = "modbus"), allow(unused_mut))]
    let mut fp = format!("{src:?}|streams={streams:?}");
    // Sources on one Modbus line share a connection: a change to one restarts them all.
    #[cfg(feature = "modbus")]
    if let SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) = &src.kind {
        for other in &config.sources {
            if let SourceKind::ModbusTcp(o) | SourceKind::ModbusRtu(o) = &other.kind
                && o.transport.key() == m.transport.key()
            {
                fp.push_str(&format!("|{other:?}"));
            }
        }
    }
    fp
}

fn export_fingerprint(config: &Config, s: usize, e: usize) -> String {
    let stream = &config.streams[s];
    #[allow(unused_mut)]
    let mut fp = format!(
        "{:?}|stream={}|priority={}",
        stream.exports[e], stream.name, stream.priority
    );
    // `Debug` hides passwords; a changed one must still restart the export. The hash stays
    // in memory (it is never shown).
    #[cfg(feature = "mqtt")]
    if let ExportKind::Mqtt(m) = &stream.exports[e].kind
        && let Some(crate::exporters::mqtt::config::Secret::Value(v)) = &m.password
    {
        use std::hash::{Hash, Hasher};
        let mut h = std::collections::hash_map::DefaultHasher::new();
        v.hash(&mut h);
        fp.push_str(&format!("|secret={:x}", h.finish()));
    }
    fp
}

/// Waits for tasks up to `deadline`, then aborts the rest. True if all finished in time.
async fn join_all(
    what: &str,
    tasks: impl IntoIterator<Item = JoinHandle<()>>,
    deadline: Duration,
) -> bool {
    let mut tasks: Vec<JoinHandle<()>> = tasks.into_iter().collect();
    let all = async {
        for t in &mut tasks {
            let _ = t.await;
        }
    };
    if tokio::time::timeout(deadline, all).await.is_ok() {
        return true;
    }
    tracing::warn!(timeout = ?deadline, "{what} did not stop within the shutdown timeout; aborting them");
    for t in tasks {
        // Finished ones were awaited above (polling them again is not allowed).
        if !t.is_finished() {
            t.abort();
            let _ = t.await;
        }
    }
    false
}

/// Runs the gateway until `shutdown` is cancelled; logs progress every `report` interval.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    report: Option<Duration>,
    reload: Option<ReloadRequests>,
) -> Result<(), RunError> {
    crate::clock::check();
    let mut pipeline = Pipeline::start(&config, StartOptions::default())?;
    let mut metrics = match MetricsTask::start(&config, pipeline.registry()).await {
        Ok(m) => m,
        Err(e) => {
            pipeline.stop().await;
            return Err(e.into());
        }
    };
    spawn_clock_checks(shutdown.clone());
    tracing::info!(
        data_dir = %config.gateway.data_dir.display(),
        streams = config.streams.len(),
        sources = config.sources.len(),
        "streamgate running"
    );
    // Ready once the queue is open and the readers and exports are started.
    crate::systemd::notify_or_log(&format!(
        "READY=1\nSTATUS=running: {} stream(s), {} source(s)",
        config.streams.len(),
        config.sources.len()
    ));
    crate::systemd::spawn_watchdog(pipeline.handle.clone(), shutdown.clone());
    if let Some(every) = report.filter(|d| !d.is_zero()) {
        let handle = pipeline.handle.clone();
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.tick().await;
            let mut last: Option<Vec<(u64, u64)>> = None;
            loop {
                tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
                let Ok(status) = handle.status().await else {
                    return;
                };
                let now: Vec<(u64, u64)> = status
                    .iter()
                    .map(|s| {
                        (
                            s.last_id as u64,
                            s.exports.iter().map(|e| e.delivered).sum(),
                        )
                    })
                    .collect();
                for (i, s) in status.iter().enumerate() {
                    // A reload may add streams: they have no previous figures yet.
                    let (inn, out) = match last.as_ref().and_then(|p| p.get(i)) {
                        Some(prev) => (
                            now[i].0.saturating_sub(prev.0),
                            now[i].1.saturating_sub(prev.1),
                        ),
                        None => (0, 0),
                    };
                    let secs = every.as_secs_f64();
                    tracing::info!(
                        stream = %s.name,
                        in_per_s = (inn as f64 / secs).round(),
                        out_per_s = (out as f64 / secs).round(),
                        queued = s.records,
                        queued_bytes = s.bytes,
                        dropped = s.dropped_full + s.dropped_overwritten + s.dropped_ttl + s.dropped_disk_full,
                        "progress"
                    );
                }
                last = Some(now);
            }
        });
    }
    match reload {
        Some(mut reload) => loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                req = reload.requests.recv() => match req {
                    Some(()) => {
                        reload_from_file(&mut pipeline, &reload.path).await;
                        metrics.follow(pipeline.config(), pipeline.registry()).await;
                    }
                    None => { shutdown.cancelled().await; break; }
                },
            }
        },
        None => shutdown.cancelled().await,
    }
    crate::systemd::notify_or_log("STOPPING=1");
    metrics.stop().await;
    pipeline.stop().await;
    Ok(())
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::server::BindError),
}

/// The metrics listener, restarted when a reload changes `[metrics]`.
struct MetricsTask {
    config: crate::metrics::MetricsConfig,
    running: Option<(CancellationToken, JoinHandle<()>)>,
}

impl MetricsTask {
    async fn start(
        config: &Config,
        registry: Arc<Registry>,
    ) -> Result<MetricsTask, crate::metrics::server::BindError> {
        let mut task = MetricsTask {
            config: config.metrics.clone(),
            running: None,
        };
        if config.metrics.enabled {
            let stop = CancellationToken::new();
            let handle =
                crate::metrics::server::start(config.metrics.clone(), registry, stop.clone())
                    .await?;
            task.running = Some((stop, handle));
        }
        Ok(task)
    }

    async fn follow(&mut self, config: &Config, registry: Arc<Registry>) {
        if config.metrics == self.config {
            return;
        }
        self.stop().await;
        match MetricsTask::start(config, registry).await {
            Ok(t) => *self = t,
            Err(e) => {
                tracing::error!("{e}; running without the metrics listener");
                self.config = config.metrics.clone();
            }
        }
    }

    async fn stop(&mut self) {
        if let Some((stop, handle)) = self.running.take() {
            stop.cancel();
            let _ = handle.await;
        }
    }
}

/// Re-checks the clock every minute (NTP may fix it, or a peer may show it is off).
fn spawn_clock_checks(stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            crate::clock::check();
        }
    });
}

/// Where a running gateway gets its reload requests (SIGHUP) and which file it reloads.
pub struct ReloadRequests {
    pub path: PathBuf,
    pub requests: tokio::sync::mpsc::Receiver<()>,
}

/// Reads, validates and applies the config file; a broken file changes nothing.
async fn reload_from_file(pipeline: &mut Pipeline, path: &Path) {
    tracing::info!(config = %path.display(), "reloading the configuration");
    let new = match crate::app::config::load(path) {
        Ok(c) => c,
        Err(crate::app::config::LoadError::Invalid { path, errors }) => {
            tracing::error!(
                "config reload rejected: {} has {} error(s); the gateway keeps running with the previous config",
                path.display(),
                errors.len()
            );
            for e in &errors {
                tracing::error!("config reload rejected: {e}");
            }
            crate::systemd::notify_or_log(
                "STATUS=config reload rejected: the file has errors (see the log); running the previous config",
            );
            return;
        }
        Err(e) => {
            tracing::error!(
                "config reload rejected; the gateway keeps running with the previous config: {e}"
            );
            crate::systemd::notify_or_log(
                "STATUS=config reload rejected: the file has errors (see the log); running the previous config",
            );
            return;
        }
    };
    match pipeline.reload(new).await {
        Ok(report) => {
            for key in &report.needs_restart {
                tracing::warn!(key = %key, "changed setting takes effect at the next restart of the service");
            }
            for stream in &report.streams_removed {
                tracing::warn!(stream = %stream, "stream removed from the config: its queued records are kept; add it back to export them, or stop the service and run `streamgate purge --stream {stream}`");
            }
            tracing::info!("config reloaded: {report}");
            let c = pipeline.config();
            crate::systemd::notify_or_log(&format!(
                "READY=1\nSTATUS=running: {} stream(s), {} source(s) (config reloaded)",
                c.streams.len(),
                c.sources.len()
            ));
        }
        Err(e) => {
            tracing::error!(error = %e, "config reload rejected; the gateway keeps running with the previous config");
        }
    }
}
