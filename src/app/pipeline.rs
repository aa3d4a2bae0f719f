//! Wires readers -> queue -> exporters and shuts them down in order:
//! 1. stop the readers (each flushes its last samples, flagged `Lst`),
//! 2. the queue commits everything the readers handed over,
//! 3. exports deliver what is queued, the readers' last samples included, while their
//!    destination answers (up to `gateway.shutdown_timeout`), then finish the sends in flight,
//! 4. the queue writes its cursors and status, checkpoints and closes.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::app::config::Config;
use crate::clock::Clock;
use crate::exporters::bandwidth::Bandwidth;
use crate::exporters::driver::DriverContext;
use crate::exporters::reconnect::Reconnects;
use crate::exporters::stats::ExportStats;
use crate::metrics::{Published, Registry};
use crate::queue::{ExportId, Queue, QueueError, QueueHandle, QueueOptions, Slots, StreamSpec};
use crate::readers::{Readers, SourceContext, SourceStats};

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
    pub(super) config: Config,
    pub(super) queue: Option<Queue>,
    pub handle: QueueHandle,
    /// Where the current config's streams, exports and sources live in the queue.
    pub(super) slots: Slots,
    /// Next sequence number of each source slot, as the queue last told us.
    pub(super) source_next_seq: Vec<u64>,
    pub(super) sources: Vec<RunningSource>,
    pub(super) exports: Vec<RunningExport>,
    /// Parents of every reader's / export's own stop token.
    pub(super) sources_stop: CancellationToken,
    pub(super) exports_stop: CancellationToken,
    pub(super) bandwidth: Bandwidth,
    /// Which export reconnects first after an outage (the higher-priority streams').
    pub(super) reconnects: Reconnects,
    /// What readers share (connections of Modbus lines, the data directory).
    pub(super) readers: Readers,
    /// The gateway clock's verdict: readers flag samples by it, exporters report to it.
    pub(super) clock: Clock,
    pub source_stats: Vec<(String, Arc<SourceStats>)>,
    /// Counters of each export, by `stream/export`.
    pub export_stats: Vec<(String, Arc<ExportStats>)>,
    /// What the metrics endpoint reads.
    pub(super) registry: Arc<Registry>,
}

pub(super) struct RunningSource {
    pub(super) id: String,
    /// What the source was started with; a reload restarts it when this changes.
    pub(super) fingerprint: String,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<()>,
}

pub(super) struct RunningExport {
    /// `stream/export`
    pub(super) key: String,
    pub(super) fingerprint: String,
    pub(super) stop: CancellationToken,
    pub(super) task: JoinHandle<()>,
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
        let clock = Clock::default();
        clock.check();
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
            reconnects: Reconnects::default(),
            readers: Readers::new(&config.gateway.data_dir),
            clock,
            source_stats: Vec::new(),
            export_stats: Vec::new(),
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

    /// Why the queue stopped on its own (a damaged database), if it did; see
    /// [`QueueHandle::failed`](crate::queue::QueueHandle::failed).
    pub fn queue_failure(&self) -> Option<QueueError> {
        self.queue.as_ref().and_then(|q| q.failure())
    }

    /// The gateway clock's verdict the pipeline's readers and exporters use.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    /// The counters the metrics endpoint shows; kept current across reloads.
    pub fn registry(&self) -> Arc<Registry> {
        self.registry.clone()
    }

    pub(super) fn publish(&self) {
        self.registry.publish(Published {
            sources: self.source_stats.clone(),
            exports: self.export_stats.clone(),
            queue: Some(self.handle.clone()),
            clock: Some(self.clock.clone()),
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
        )
        .with_clock(self.clock.clone())
        .with_state_cell(self.handle.source_state_cell(slot));
        let stop = self.sources_stop.child_token();
        let task = self.readers.spawn(&src.id, &src.kind, ctx, stop.clone());
        self.sources.push(RunningSource {
            id: src.id.clone(),
            fingerprint: super::reload::source_fingerprint(&self.config, i),
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
        let stats = Arc::new(export.kind.stats());
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
            reconnects: self.reconnects.clone(),
            stats,
            clock: self.clock.clone(),
            shutdown: stop.clone(),
        };
        let task = crate::exporters::spawn(&export.kind, ctx);
        self.exports.push(RunningExport {
            fingerprint: super::reload::export_fingerprint(&self.config, s, e),
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

    /// At a stop, after the readers handed over their last samples: waits (up to `until`)
    /// while the running exports deliver what is queued. An export is done when it caught up
    /// with the queue, or when it is failing (its destination does not answer: its records stay
    /// queued for the next start).
    async fn deliver_queued(&self, until: tokio::time::Instant) {
        // The readers' last batches: taken by the queue thread, then committed before it
        // answers the status requests below.
        if let Some(queue) = &self.queue {
            while !queue.appender.is_drained() && tokio::time::Instant::now() < until {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
        let running: Vec<(&str, &ExportStats)> = self
            .export_stats
            .iter()
            .filter(|(key, _)| self.exports.iter().any(|r| &r.key == key))
            .map(|(key, stats)| (key.as_str(), stats.as_ref()))
            .collect();
        let mut announced = false;
        loop {
            let Ok(status) = self.handle.status().await else {
                return;
            };
            let (mut waiting, mut queued, mut held) = (0usize, 0u64, Vec::new());
            for s in &status {
                for e in s.exports.iter().filter(|e| e.backlog > 0) {
                    let key = format!("{}/{}", s.name, e.name);
                    let Some((_, stats)) = running.iter().find(|(k, _)| *k == key) else {
                        continue;
                    };
                    if stats.failing_since_ms.load(Ordering::Relaxed) != 0 {
                        held.push(format!("{key} ({} records)", e.backlog));
                    } else {
                        waiting += 1;
                        queued += e.backlog;
                    }
                }
            }
            if waiting == 0 {
                if !held.is_empty() {
                    tracing::warn!(
                        "not waiting for failing exports at shutdown: {}; their records stay queued for the next start",
                        held.join(", ")
                    );
                } else if announced {
                    tracing::info!("exports delivered what was queued");
                }
                return;
            }
            if tokio::time::Instant::now() >= until {
                tracing::warn!(
                    records = queued,
                    "shutdown_timeout reached while exports delivered; the rest stays queued for the next start"
                );
                return;
            }
            if !announced {
                tracing::info!(
                    records = queued,
                    exports = waiting,
                    timeout = ?self.config.gateway.shutdown_timeout,
                    "readers stopped; exports deliver what is queued before the gateway stops"
                );
                announced = true;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Shuts everything down in order; see the module docs.
    pub async fn stop(mut self) {
        let deadline = self.config.gateway.shutdown_timeout;
        let until = tokio::time::Instant::now() + deadline;
        tracing::info!("shutting down: stopping readers");
        self.stop_sources(deadline).await;
        self.deliver_queued(until).await;
        self.exports_stop.cancel();
        let exports = std::mem::take(&mut self.exports);
        let left = until
            .saturating_duration_since(tokio::time::Instant::now())
            .max(Duration::from_secs(1));
        if !join_all("exports", exports.into_iter().map(|r| r.task), left).await {
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
pub(super) fn stream_specs(config: &Config) -> Vec<StreamSpec> {
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

pub(super) fn bandwidth_of(config: &Config) -> Bandwidth {
    match config.gateway.max_export_bandwidth {
        Some(b) => Bandwidth::limited(b),
        None => Bandwidth::unlimited(),
    }
}

/// Waits for tasks up to `deadline`, then aborts the rest. True if all finished in time.
pub(super) async fn join_all(
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
