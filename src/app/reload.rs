//! Reload (SIGHUP): the new file is validated first, then only what changed restarts. Each
//! component says what it was started with ([`SourceKind::fingerprint`],
//! [`ExportKind::fingerprint`]); sources that share a connection restart together.
//!
//! [`SourceKind::fingerprint`]: crate::readers::SourceKind::fingerprint
//! [`ExportKind::fingerprint`]: crate::exporters::ExportKind::fingerprint

use std::fmt;
use std::path::Path;

use super::config::Config;
use super::pipeline::{Pipeline, bandwidth_of, join_all, stream_specs};
use crate::queue::QueueError;

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
        self.readers.forget_changed(
            &self
                .config
                .sources
                .iter()
                .map(|s| &s.kind)
                .collect::<Vec<_>>(),
            &new.sources.iter().map(|s| &s.kind).collect::<Vec<_>>(),
        );

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
        self.publish();
        Ok(report)
    }
}

/// Everything a running source depends on: its common settings, its kind's own
/// [`fingerprint`](crate::readers::SourceKind::fingerprint), and the fingerprints of the
/// sources it shares a connection with (a change to one restarts them all). Stream indices are
/// resolved to names, so a reordering elsewhere in the file changes nothing.
pub(super) fn source_fingerprint(config: &Config, i: usize) -> String {
    let src = &config.sources[i];
    let streams: Vec<&str> = config.streams.iter().map(|s| s.name.as_str()).collect();
    let mut fp = format!(
        "{}|{}|{}|{:?}|{}|streams={streams:?}",
        src.id,
        src.equipment_id,
        src.stream,
        src.heartbeat_interval,
        src.kind.fingerprint()
    );
    if let Some(key) = src.kind.connection_key() {
        for other in &config.sources {
            if other.kind.connection_key().as_ref() == Some(&key) {
                fp.push('|');
                fp.push_str(&other.kind.fingerprint());
            }
        }
    }
    fp
}

/// Everything a running export depends on: its common settings and its kind's own
/// [`fingerprint`](crate::exporters::ExportKind::fingerprint).
pub(super) fn export_fingerprint(config: &Config, s: usize, e: usize) -> String {
    let stream = &config.streams[s];
    let export = &stream.exports[e];
    format!(
        "{}|{:?}|{:?}|{}|stream={}|priority={}|{}",
        export.name,
        export.batch,
        export.retry,
        export.disabled,
        stream.name,
        stream.priority,
        export.kind.fingerprint()
    )
}

/// Reads, validates and applies the config file; a broken file changes nothing.
pub(super) async fn reload_from_file(pipeline: &mut Pipeline, path: &Path) {
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
