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
    for w in &config.warnings {
        tracing::warn!(key = %w.path, line = w.line, "config: {}", w.message);
    }
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
            RunError::Queue(
                QueueError::ReadOnly { .. }
                | QueueError::DataDir { .. }
                | QueueError::NewerSchema { .. },
            ) => exit::DATA_DIR,
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

/// Logs one progress line per stream and one per export every `every`: samples in and out
/// per second, queued, dropped; per export what it delivered per second, its backlog and lag,
/// and while a backlog drains (after an outage) how much is left and when it should be done.
fn spawn_progress(handle: QueueHandle, every: Duration, stop: CancellationToken) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        tick.tick().await;
        let mut last: Option<Vec<crate::queue::StreamStatus>> = None;
        loop {
            tokio::select! { _ = tick.tick() => {}, _ = stop.cancelled() => return }
            let Ok(status) = handle.status().await else {
                return;
            };
            let secs = every.as_secs_f64();
            for (i, s) in status.iter().enumerate() {
                // A reload may add streams: they have no previous figures yet.
                let prev = last
                    .as_ref()
                    .and_then(|p| p.get(i))
                    .filter(|p| p.name == s.name);
                let delivered = |st: &crate::queue::StreamStatus| -> u64 {
                    st.exports.iter().map(|e| e.delivered).sum()
                };
                let (inn, out) = match prev {
                    Some(p) => (
                        (s.last_id as u64).saturating_sub(p.last_id as u64),
                        delivered(s).saturating_sub(delivered(p)),
                    ),
                    None => (0, 0),
                };
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
            for e in export_progress(last.as_deref(), &status, every, crate::time::now_ms()) {
                tracing::info!(
                    stream = %e.stream,
                    export = %e.export,
                    out_per_s = e.out_per_s.round(),
                    backlog = e.backlog,
                    lag_s = e.lag_s,
                    "export progress"
                );
                if let Some(eta) = e.drain_eta_s {
                    tracing::info!(
                        stream = %e.stream,
                        export = %e.export,
                        left = e.backlog,
                        eta_s = eta,
                        "draining the backlog"
                    );
                }
            }
            last = Some(status);
        }
    });
}

/// One export's progress between two status snapshots.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ExportProgress {
    pub stream: String,
    pub export: String,
    /// Records acknowledged per second since the last report.
    pub out_per_s: f64,
    pub backlog: u64,
    /// Age of the oldest record not yet acknowledged, in whole seconds (0: none).
    pub lag_s: u64,
    /// While the backlog shrinks: seconds until it is gone at the current pace.
    pub drain_eta_s: Option<u64>,
}

/// The progress of every enabled, configured export: pure (two snapshots `every` apart).
pub(crate) fn export_progress(
    prev: Option<&[crate::queue::StreamStatus]>,
    now: &[crate::queue::StreamStatus],
    every: Duration,
    now_ms: i64,
) -> Vec<ExportProgress> {
    let secs = every.as_secs_f64().max(0.001);
    let mut out = Vec::new();
    for s in now {
        for e in s.exports.iter().filter(|e| e.enabled && e.in_config) {
            let before = prev
                .and_then(|p| p.iter().find(|ps| ps.name == s.name))
                .and_then(|ps| ps.exports.iter().find(|pe| pe.name == e.name));
            let out_per_s = before.map_or(0.0, |b| {
                e.delivered.saturating_sub(b.delivered) as f64 / secs
            });
            let drain_eta_s = before.and_then(|b| {
                let shrunk = b.backlog.checked_sub(e.backlog).filter(|d| *d > 0)?;
                (e.backlog > 0).then(|| (e.backlog as f64 * secs / shrunk as f64).ceil() as u64)
            });
            out.push(ExportProgress {
                stream: s.name.clone(),
                export: e.name.clone(),
                out_per_s,
                backlog: e.backlog,
                lag_s: e
                    .oldest_unacked_ms
                    .map_or(0, |t| ((now_ms - t).max(0) / 1000) as u64),
                drain_eta_s,
            });
        }
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::queue::{ExportStatus, StreamStatus};

    fn status(delivered: u64, backlog: u64, oldest: Option<i64>) -> Vec<StreamStatus> {
        vec![StreamStatus {
            name: "line".into(),
            in_config: true,
            priority: 1,
            records: backlog,
            bytes: 0,
            max_size: 0,
            oldest_at_ms: oldest,
            last_id: 0,
            dropped_full: 0,
            dropped_overwritten: 0,
            dropped_ttl: 0,
            dropped_disk_full: 0,
            exports: vec![ExportStatus {
                name: "cloud".into(),
                enabled: true,
                in_config: true,
                acked_upto: 0,
                backlog,
                oldest_unacked_ms: oldest,
                delivered,
                retries: 0,
                dead_lettered: 0,
                last_export_ms: None,
                last_error: None,
                last_error_ms: None,
                state: None,
            }],
        }]
    }

    #[test]
    fn a_shrinking_backlog_reports_its_eta() {
        let every = Duration::from_secs(10);
        // First report: no previous figures, no rate, no drain.
        let first = export_progress(None, &status(0, 100_000, Some(40_000)), every, 100_000);
        assert_eq!(first[0].out_per_s, 0.0);
        assert_eq!(first[0].lag_s, 60);
        assert_eq!(first[0].drain_eta_s, None);
        // 10 s later: 20,000 delivered while 5,000 came in, 85,000 left: 1,500/s net.
        let prev = status(0, 100_000, Some(40_000));
        let now = status(20_000, 85_000, Some(50_000));
        let p = export_progress(Some(&prev), &now, every, 110_000);
        assert_eq!(p[0].out_per_s, 2_000.0);
        assert_eq!(p[0].backlog, 85_000);
        assert_eq!(p[0].lag_s, 60);
        assert_eq!(p[0].drain_eta_s, Some(57)); // 85,000 / 1,500 per s
        // Growing or empty backlogs have no ETA.
        let grew = export_progress(
            Some(&now),
            &status(20_000, 90_000, Some(50_000)),
            every,
            120_000,
        );
        assert_eq!(grew[0].drain_eta_s, None);
        let done = export_progress(Some(&now), &status(105_000, 0, None), every, 120_000);
        assert_eq!((done[0].drain_eta_s, done[0].lag_s), (None, 0));
    }
}
