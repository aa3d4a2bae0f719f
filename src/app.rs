//! Wires readers -> queue -> exporters and shuts them down in order:
//! 1. stop the readers (each flushes its last samples, flagged `Lst`),
//! 2. the queue commits everything the readers handed over,
//! 3. exporters finish the send in progress (up to `gateway.shutdown_timeout`),
//! 4. the queue writes its cursors and status, checkpoints and closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::config::Config;
use crate::exporters::ExportKind;
use crate::exporters::bandwidth::Bandwidth;
use crate::exporters::driver::{self, DriverContext, ExportStats};
use crate::exporters::file::FileExporter;
use crate::exporters::stdout::StdoutExporter;
use crate::queue::{ExportId, Queue, QueueError, QueueHandle, QueueOptions, StreamSpec};
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
    sources: JoinSet<()>,
    exports: JoinSet<()>,
    sources_stop: CancellationToken,
    exports_stop: CancellationToken,
    bandwidth: Bandwidth,
    pub source_stats: Vec<(String, Arc<SourceStats>)>,
    pub export_stats: Vec<(String, Arc<ExportStats>)>,
    /// Connection state and in-flight counters of the MQTT exports, by `stream/export`.
    #[cfg(feature = "mqtt")]
    pub mqtt_stats: Vec<(String, Arc<crate::exporters::mqtt::MqttStats>)>,
}

impl Pipeline {
    /// Opens the queue and starts readers and exporters. Needs a tokio runtime.
    pub fn start(config: &Config, options: StartOptions) -> Result<Pipeline, QueueError> {
        let source_ids: Vec<String> = config.sources.iter().map(|s| s.id.clone()).collect();
        let queue = Queue::open(
            &config.gateway.data_dir,
            StreamSpec::from_config(config),
            &source_ids,
            QueueOptions {
                maintenance_interval: config.gateway.status_interval,
            },
        )?;
        let bandwidth = match config.gateway.max_export_bandwidth {
            Some(b) => Bandwidth::limited(b),
            None => Bandwidth::unlimited(),
        };
        let handle = queue.handle.clone();
        let mut pipeline = Pipeline {
            config: config.clone(),
            queue: Some(queue),
            handle,
            sources: JoinSet::new(),
            exports: JoinSet::new(),
            sources_stop: CancellationToken::new(),
            exports_stop: CancellationToken::new(),
            bandwidth,
            source_stats: Vec::new(),
            export_stats: Vec::new(),
            #[cfg(feature = "mqtt")]
            mqtt_stats: Vec::new(),
        };
        if options.exports {
            pipeline.start_exports();
        }
        if options.sources {
            pipeline.start_sources();
        }
        Ok(pipeline)
    }

    pub fn start_sources(&mut self) {
        let Some(queue) = &self.queue else { return };
        // Modbus sources behind one TCP endpoint or serial line share its connection.
        #[cfg(feature = "modbus")]
        let lines = crate::readers::modbus::line::Lines::default();
        for (i, src) in self.config.sources.iter().enumerate() {
            let stats = Arc::new(SourceStats::default());
            self.source_stats.push((src.id.clone(), stats.clone()));
            let ctx = SourceContext::new(
                i,
                &src.id,
                &src.equipment_id,
                src.stream,
                src.kind.tags(),
                queue.source_next_seq[i],
                src.heartbeat_interval,
                queue.appender.clone(),
                stats,
            );
            let stop = self.sources_stop.clone();
            let span = tracing::info_span!("reader", id = %src.id, kind = src.kind.kind_name());
            match &src.kind {
                SourceKind::Simulator(sim) => {
                    let seed = crate::time::now_ms() as u64 ^ ((i as u64) << 32);
                    let sim = Simulator::new(sim.clone(), seed);
                    self.sources.spawn(sim.run(ctx, stop).instrument(span));
                }
                #[cfg(feature = "s7")]
                SourceKind::S7(s7) => {
                    let reader = crate::readers::s7::S7Reader::new(s7.clone());
                    self.sources.spawn(reader.run(ctx, stop).instrument(span));
                }
                #[cfg(feature = "modbus")]
                SourceKind::ModbusTcp(m) | SourceKind::ModbusRtu(m) => {
                    let reader = crate::readers::modbus::ModbusReader::new(m.clone(), &lines);
                    self.sources.spawn(reader.run(ctx, stop).instrument(span));
                }
                #[cfg(feature = "opcua")]
                SourceKind::Opcua(ua) => {
                    let reader = crate::readers::opcua::OpcuaReader::new(
                        ua.as_ref().clone(),
                        &src.id,
                        &self.config.gateway.data_dir,
                    );
                    self.sources.spawn(reader.run(ctx, stop).instrument(span));
                }
            }
        }
    }

    pub fn start_exports(&mut self) {
        for (s, stream) in self.config.streams.iter().enumerate() {
            for (e, export) in stream.exports.iter().enumerate() {
                if export.disabled {
                    tracing::info!(stream = %stream.name, export = %export.name, "export disabled in config; not started");
                    continue;
                }
                let stats = Arc::new(ExportStats::default());
                self.export_stats
                    .push((format!("{}/{}", stream.name, export.name), stats.clone()));
                let ctx = DriverContext {
                    id: ExportId {
                        stream: s,
                        export: e,
                    },
                    stream: stream.name.clone(),
                    name: export.name.clone(),
                    kind: export.kind.kind_name(),
                    batch: export.batch,
                    retry: export.retry,
                    queue: self.handle.clone(),
                    bandwidth: self.bandwidth.clone(),
                    stats,
                    shutdown: self.exports_stop.clone(),
                };
                match &export.kind {
                    #[cfg(any(feature = "kinesis", feature = "firehose"))]
                    ExportKind::Aws(a) => {
                        let exporter = crate::exporters::aws::AwsExporter::new(a.clone());
                        self.exports.spawn(driver::run(exporter, ctx));
                    }
                    ExportKind::File(f) => {
                        let prefix = format!("{}-{}", stream.name, export.name);
                        self.exports
                            .spawn(driver::run(FileExporter::new(f.clone(), &prefix), ctx));
                    }
                    ExportKind::Stdout(_) => {
                        self.exports
                            .spawn(driver::run(StdoutExporter::default(), ctx));
                    }
                    #[cfg(feature = "mqtt")]
                    ExportKind::Mqtt(m) => {
                        let stats = Arc::new(crate::exporters::mqtt::MqttStats::default());
                        self.mqtt_stats
                            .push((format!("{}/{}", stream.name, export.name), stats.clone()));
                        let span = tracing::info_span!("export", stream = %stream.name, name = %export.name, kind = "mqtt");
                        let exporter = span.in_scope(|| {
                            crate::exporters::mqtt::MqttExporter::new((**m).clone(), stats)
                        });
                        self.exports.spawn(driver::run(exporter, ctx));
                    }
                }
            }
        }
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
        if tokio::time::timeout(deadline, async {
            while self.sources.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!("readers did not stop within the shutdown timeout; aborting them");
            self.sources.abort_all();
        }
    }

    /// Shuts everything down in order; see the module docs.
    pub async fn stop(mut self) {
        let deadline = self.config.gateway.shutdown_timeout;
        tracing::info!("shutting down: stopping readers");
        self.stop_sources(deadline).await;
        tracing::info!("readers stopped; letting exports finish what is in flight");
        self.exports_stop.cancel();
        if tokio::time::timeout(deadline, async {
            while self.exports.join_next().await.is_some() {}
        })
        .await
        .is_err()
        {
            tracing::warn!(
                timeout = ?deadline,
                "exports did not finish within the shutdown timeout; aborting (unacknowledged records stay queued)"
            );
            self.exports.abort_all();
            while self.exports.join_next().await.is_some() {}
        }
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

/// Runs the gateway until `shutdown` is cancelled; logs progress every `report` interval.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    report: Option<Duration>,
) -> Result<(), QueueError> {
    let pipeline = Pipeline::start(&config, StartOptions::default())?;
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
                    let (inn, out) = match &last {
                        Some(prev) => (now[i].0 - prev[i].0, now[i].1.saturating_sub(prev[i].1)),
                        None => (0, 0),
                    };
                    let secs = every.as_secs_f64();
                    tracing::info!(
                        stream = %s.name,
                        in_per_s = (inn as f64 / secs).round(),
                        out_per_s = (out as f64 / secs).round(),
                        queued = s.records,
                        queued_bytes = s.bytes,
                        dropped = s.dropped_full + s.dropped_overwritten + s.dropped_ttl,
                        "progress"
                    );
                }
                last = Some(now);
            }
        });
    }
    shutdown.cancelled().await;
    crate::systemd::notify_or_log("STOPPING=1");
    pipeline.stop().await;
    Ok(())
}
