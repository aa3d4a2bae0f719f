//! Metrics and health over HTTP (optional, `[metrics]`): Prometheus text at `/metrics`, a
//! health verdict at `/health`. The pipeline publishes its counters into a [`Registry`]; a
//! scrape takes a [`Snapshot`] (counters plus the queue's status) and renders it with pure
//! functions ([`render`]), so what is shown is tested without sockets.

pub mod render;
pub mod server;

use std::sync::atomic::Ordering;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use crate::exporters::stats::ExportStats;
use crate::queue::{QueueHandle, StreamStatus};
use crate::readers::SourceStats;

/// `[metrics]`: Prometheus metrics and a health endpoint over HTTP (off by default).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsConfig {
    pub enabled: bool,
    /// Loopback by default; anything else is exposed to the network (logged at start).
    pub listen: std::net::SocketAddr,
    /// An export failing for longer than this makes `/health` report degraded.
    pub degraded_after: Duration,
}

/// Where the metrics listener binds unless told otherwise.
pub const DEFAULT_METRICS_LISTEN: &str = "127.0.0.1:9464";

/// What the running pipeline exposes; replaced wholesale when it starts or reloads parts.
#[derive(Default)]
pub struct Registry {
    inner: RwLock<Published>,
}

/// The live counters of the pipeline.
#[derive(Default, Clone)]
pub struct Published {
    pub sources: Vec<(String, Arc<SourceStats>)>,
    pub exports: Vec<(String, Arc<ExportStats>)>,
    pub queue: Option<QueueHandle>,
    /// The gateway clock's verdict.
    pub clock: Option<crate::clock::Clock>,
}

impl Registry {
    pub fn publish(&self, p: Published) {
        match self.inner.write() {
            Ok(mut w) => *w = p,
            Err(poisoned) => *poisoned.into_inner() = p,
        }
    }

    fn published(&self) -> Published {
        match self.inner.read() {
            Ok(r) => r.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    /// Reads every counter now (and asks the queue for its status).
    pub async fn snapshot(&self) -> Snapshot {
        let p = self.published();
        let streams = match &p.queue {
            Some(q) => q.status().await.unwrap_or_default(),
            None => Vec::new(),
        };
        let load = |a: &std::sync::atomic::AtomicU64| a.load(Ordering::Relaxed);
        let sources = p
            .sources
            .iter()
            .map(|(id, s)| SourceSnapshot {
                id: id.clone(),
                samples: load(&s.samples),
                heartbeats: load(&s.heartbeats),
                losses: load(&s.losses),
                tags: s.tags.iter().map(|(n, c)| (n.clone(), load(c))).collect(),
                state: s.state(),
                failing_since_ms: match s.failing_since_ms.load(Ordering::Relaxed) {
                    0 => None,
                    ms => Some(ms),
                },
                last_error: s.last_error(),
                last_good_ms: match s.last_good_ms.load(Ordering::Relaxed) {
                    0 => None,
                    ms => Some(ms),
                },
            })
            .collect();
        let exports = p
            .exports
            .iter()
            .map(|(key, s)| {
                #[allow(unused_mut)]
                let mut e = ExportSnapshot {
                    key: key.clone(),
                    delivered: load(&s.delivered),
                    retried: load(&s.retried),
                    dead_lettered: load(&s.dead_lettered),
                    sends: load(&s.sends),
                    failed_sends: load(&s.failed_sends),
                    failing_since_ms: match s.failing_since_ms.load(Ordering::Relaxed) {
                        0 => None,
                        ms => Some(ms),
                    },
                    last_error: s.last_error.lock().ok().and_then(|e| e.clone()),
                    possible_duplicates: None,
                    connection_losses: None,
                    throttled: load(&s.throttled),
                    in_flight: load(&s.in_flight),
                    rate_limit: load(&s.rate_limit),
                    throttled_per_s: load(&s.throttled_per_s),
                    send_rate: load(&s.send_rate),
                };
                if let Some(c) = &s.connection {
                    e.possible_duplicates = Some(load(&c.possible_duplicates));
                    e.connection_losses = Some(load(&c.connection_losses));
                }
                e
            })
            .collect();
        Snapshot {
            now_ms: crate::time::now_ms(),
            sources,
            exports,
            streams,
            clock: p
                .clock
                .as_ref()
                .and_then(|c| c.last_verdict())
                .filter(|v| v.is_wrong()),
            rss_bytes: crate::telemetry::rss().map(|(rss, _)| rss),
            log_write_errors: crate::telemetry::log_write_errors(),
        }
    }
}

/// Everything one scrape shows.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now_ms: i64,
    pub sources: Vec<SourceSnapshot>,
    pub exports: Vec<ExportSnapshot>,
    pub streams: Vec<StreamStatus>,
    /// Set while the clock is known to be wrong.
    pub clock: Option<crate::clock::Verdict>,
    pub rss_bytes: Option<u64>,
    /// Log lines that could not be written since the start.
    pub log_write_errors: u64,
}

#[derive(Debug, Clone, Default)]
pub struct SourceSnapshot {
    pub id: String,
    pub samples: u64,
    pub heartbeats: u64,
    pub losses: u64,
    pub tags: Vec<(String, u64)>,
    pub state: crate::readers::SourceState,
    /// When the current failure episode began (ms since the epoch).
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
    /// When the source last delivered a good reading (ms since the epoch).
    pub last_good_ms: Option<i64>,
}

#[derive(Debug, Clone, Default)]
pub struct ExportSnapshot {
    /// `stream/export`
    pub key: String,
    pub delivered: u64,
    pub retried: u64,
    pub dead_lettered: u64,
    pub sends: u64,
    pub failed_sends: u64,
    pub failing_since_ms: Option<i64>,
    pub last_error: Option<String>,
    /// Exports that can tell (MQTT): records sent again after a lost acknowledgement.
    pub possible_duplicates: Option<u64>,
    pub connection_losses: Option<u64>,
    /// Records the destination refused for throughput.
    pub throttled: u64,
    pub in_flight: u64,
    /// The adaptive send limit, records/s (0: unlimited).
    pub rate_limit: u64,
    pub throttled_per_s: u64,
    pub send_rate: u64,
}
