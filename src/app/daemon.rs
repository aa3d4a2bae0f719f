//! The daemon: runs the pipeline until a stop signal, with what a service needs around it
//! (systemd readiness and watchdog, the metrics listener, clock checks, progress lines,
//! reloads on request).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::config::Config;
use super::pipeline::{Pipeline, StartOptions};
use super::reload::reload_from_file;
use crate::metrics::Registry;
use crate::queue::{QueueError, QueueHandle};

/// Runs the gateway until `shutdown` is cancelled; logs progress every `report` interval.
pub async fn run(
    config: Config,
    shutdown: CancellationToken,
    report: Option<Duration>,
    reload: Option<ReloadRequests>,
) -> Result<(), RunError> {
    let mut pipeline = Pipeline::start(&config, StartOptions::default())?;
    let mut metrics = match MetricsTask::start(&config, pipeline.registry()).await {
        Ok(m) => m,
        Err(e) => {
            pipeline.stop().await;
            return Err(e.into());
        }
    };
    spawn_clock_checks(pipeline.clock().clone(), shutdown.clone());
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
        spawn_progress(pipeline.handle.clone(), every, shutdown.clone());
    }
    // The queue stops on its own when it finds its database damaged: shut down in order.
    let queue_failed = pipeline.handle.failed();
    match reload {
        Some(mut reload) => loop {
            tokio::select! {
                _ = shutdown.cancelled() => break,
                _ = queue_failed.cancelled() => break,
                req = reload.requests.recv() => match req {
                    Some(()) => {
                        reload_from_file(&mut pipeline, &reload.path).await;
                        metrics.follow(pipeline.config(), pipeline.registry()).await;
                    }
                    None => {
                        tokio::select! { _ = shutdown.cancelled() => {}, _ = queue_failed.cancelled() => {} }
                        break;
                    }
                },
            }
        },
        None => {
            tokio::select! { _ = shutdown.cancelled() => {}, _ = queue_failed.cancelled() => {} }
        }
    }
    let failure = pipeline.queue_failure();
    crate::systemd::notify_or_log("STOPPING=1");
    metrics.stop().await;
    pipeline.stop().await;
    match failure {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error(transparent)]
    Metrics(#[from] crate::metrics::server::BindError),
}

/// Exit codes of `streamgate run` (sysexits.h). systemd restarts the service on failure except
/// on the codes listed in the unit's `RestartPreventExitStatus=` (78 73 69): a restart every
/// 5 s cannot fix those, an operator must act (docs/operations.md lists them).
pub mod exit {
    /// EX_CONFIG: the configuration is invalid (or refused: secrets readable by everyone).
    pub const CONFIG: u8 = 78;
    /// EX_CANTCREAT: the data directory cannot be created or written (read-only, no access).
    pub const DATA_DIR: u8 = 73;
    /// EX_UNAVAILABLE: something the gateway needs is held by someone else: another process
    /// uses the data directory, or the metrics address cannot be bound.
    pub const UNAVAILABLE: u8 = 69;
    /// EX_TEMPFAIL: the queue database was found damaged while running; the restart moves it
    /// aside and salvages every readable record (restarted by systemd on purpose).
    pub const CORRUPT_WHILE_RUNNING: u8 = 75;
    /// Any other failure (systemd restarts the service).
    pub const FAILURE: u8 = 1;
}

impl RunError {
    /// The exit code of the process when `run` fails with this error (see [`exit`]).
    pub fn exit_code(&self) -> u8 {
        match self {
            RunError::Queue(QueueError::Locked { .. }) => exit::UNAVAILABLE,
            RunError::Queue(QueueError::CorruptWhileRunning(_)) => exit::CORRUPT_WHILE_RUNNING,
            RunError::Queue(QueueError::ReadOnly { .. } | QueueError::DataDir { .. }) => {
                exit::DATA_DIR
            }
            RunError::Queue(_) => exit::FAILURE,
            RunError::Metrics(_) => exit::UNAVAILABLE,
        }
    }
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

/// Logs one progress line per stream every `every`: samples in and out per second, queued,
/// dropped.
fn spawn_progress(handle: QueueHandle, every: Duration, stop: CancellationToken) {
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

/// Re-checks the clock every minute (NTP may fix it, or a peer may show it is off).
fn spawn_clock_checks(clock: crate::clock::Clock, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        tick.tick().await;
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            clock.check();
        }
    });
}

/// Where a running gateway gets its reload requests (SIGHUP) and which file it reloads.
pub struct ReloadRequests {
    pub path: PathBuf,
    pub requests: tokio::sync::mpsc::Receiver<()>,
}
