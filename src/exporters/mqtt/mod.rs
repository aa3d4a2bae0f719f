//! `kind = "mqtt"`: publishes samples to an MQTT 3.1.1 broker (mosquitto, EMQX, HiveMQ, AWS IoT
//! Core) with rumqttc over rustls.
//!
//! The promise is the one of every export: a record leaves the queue only when the broker
//! acknowledged it. With QoS 1 that is its PUBACK, never the return of `publish()`. One `send`
//! pipelines its batch: it keeps up to `max_in_flight` publishes unacknowledged, tops the window
//! up as PUBACKs arrive (within the publish-rate limits), and returns when every message is
//! settled: acknowledged -> `Delivered`; lost with the connection or stuck past `ack_timeout`
//! -> `Retry` (the driver sends it again: at least once, duplicates are counted);
//! never publishable (too large, bad topic) -> `Rejected`.
//!
//! Files: [`config`] (keys, limits), [`topic`] (templates), [`pack`] (records -> messages),
//! [`inflight`] (which PUBACK settles what), [`rate`] (token buckets), [`connection`] (the
//! task owning rumqttc's event loop).

pub mod config;
pub mod connection;
pub mod inflight;
pub mod pack;
pub mod rate;
pub mod topic;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Exporter, Limits, Outcome, SendError};
use crate::queue::Record;
use config::{MqttExportConfig, Qos};
use connection::{Settled, Shared, State};
use pack::Packer;
use rate::RateLimit;

pub use config::RawMqttExport;

pub const LIMITS: Limits = Limits {
    max_batch_size: 10_000,
    default_batch_size: 1_000,
    max_batch_bytes: 64 << 20,
    default_batch_interval: Duration::from_millis(50),
};

/// Counters of one MQTT export: connection state and in-flight publishes for `status`.
#[derive(Debug, Default)]
pub struct MqttStats {
    pub connected: AtomicBool,
    /// Publishes handed to the connection and not settled.
    pub in_flight: AtomicU64,
    pub connects: AtomicU64,
    pub connection_losses: AtomicU64,
    /// Messages handed to the connection.
    pub published: AtomicU64,
    /// Messages acknowledged (PUBACK; for QoS 0: written).
    pub acked: AtomicU64,
    /// Messages written but not acknowledged when their connection was lost: the broker may
    /// have them, and their retry may make duplicates.
    pub lost_in_flight: AtomicU64,
    /// Records sent again after such a loss (upper bound of the duplicates downstream).
    pub possible_duplicates: AtomicU64,
    /// Settlements that came after their send had already decided (should stay 0).
    pub late_acks: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

pub struct MqttExporter {
    config: MqttExportConfig,
    shared: Arc<Shared>,
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
    _stop_on_drop: DropGuard,
    messages: Option<RateLimit>,
    bytes: Option<RateLimit>,
}

impl MqttExporter {
    /// Starts the connection task (needs a tokio runtime).
    pub fn new(config: MqttExportConfig, stats: Arc<MqttStats>) -> MqttExporter {
        let window = config.max_in_flight as usize;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                window,
                refill_step: 1,
                ..State::default()
            }),
            progress: Default::default(),
            kill: Default::default(),
            stats,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(tracing::Instrument::instrument(
            connection::run(config.clone(), shared.clone(), stop.clone()),
            tracing::Span::current(),
        ));
        MqttExporter {
            messages: config.publish_rate.map(RateLimit::new),
            bytes: config.publish_bandwidth.map(RateLimit::new),
            config,
            shared,
            task: Some(task),
            _stop_on_drop: stop.clone().drop_guard(),
            stop,
        }
    }

    pub fn stats(&self) -> Arc<MqttStats> {
        self.shared.stats.clone()
    }

    /// Waits until connected, up to `connect_timeout`.
    async fn connected(&self) -> Result<(), SendError> {
        let deadline = Instant::now() + self.config.connect_timeout;
        loop {
            let notified = self.shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if st.client.is_some() {
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    return Err(SendError::new(format!(
                        "not connected to mqtt broker {}:{}: {}",
                        self.config.host,
                        self.config.port,
                        st.last_error.as_deref().unwrap_or("still connecting")
                    )));
                }
            }
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep_until(deadline) => {}
            }
        }
    }

    /// How long the rate limits want us to wait before a message of `len` bytes (zero: go,
    /// and the tokens are taken).
    fn rate_wait(&mut self, len: usize) -> Duration {
        let now = std::time::Instant::now();
        let m = self
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |r| r.wait(now, 1));
        let b = self
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |r| r.wait(now, len as u64));
        let wait = m.max(b);
        if wait.is_zero() {
            if let Some(r) = self.messages.as_mut() {
                r.consume(1);
            }
            if let Some(r) = self.bytes.as_mut() {
                r.consume(len as u64);
            }
        }
        wait
    }
}

impl Exporter for MqttExporter {
    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        let mut outcomes = vec![Outcome::Delivered; batch.len()];
        let packed = Packer {
            template: &self.config.topic,
            packing: self.config.packing,
            max_payload: self.config.max_payload,
            aws_iot: self.config.aws_iot,
        }
        .pack(batch);
        for (i, reason) in packed.rejected {
            outcomes[i] = Outcome::Rejected(reason);
        }
        let mut messages = packed.messages;
        let n = messages.len();
        if n == 0 {
            return Ok(outcomes);
        }
        self.connected().await?;

        let qos = match self.config.qos {
            Qos::AtMostOnce => QoS::AtMostOnce,
            Qos::AtLeastOnce => QoS::AtLeastOnce,
        };
        let window = self.config.max_in_flight as usize;
        let generation = {
            let mut st = self.shared.lock();
            st.generation += 1;
            st.results = vec![None; n];
            st.settled = 0;
            st.generation
        };
        let shared = self.shared.clone();
        let stats = shared.stats.clone();
        let mut next = 0usize;
        let mut seen = 0usize;
        let mut last_progress = Instant::now();
        loop {
            let notified = shared.progress.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let mut rate_wait = Duration::ZERO;
            let in_flight;
            {
                let mut st = shared.lock();
                while next < n && st.inflight.len() < window {
                    let Some(client) = st.client.clone() else {
                        break;
                    };
                    rate_wait = self.rate_wait(messages[next].payload.len());
                    if !rate_wait.is_zero() {
                        break;
                    }
                    let msg = &mut messages[next];
                    let payload = std::mem::take(&mut msg.payload);
                    let topic = std::mem::take(&mut msg.topic);
                    match client.try_publish(topic, qos, false, payload) {
                        Ok(()) => {
                            st.inflight.submitted((generation, next as u32));
                            stats.published.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(e) => {
                            // Cannot happen with the channel sized to the window; settle it
                            // anyway so the send ends.
                            st.results[next] = Some(Settled::Lost {
                                sent: false,
                                reason: format!("mqtt client refused the publish: {e}"),
                            });
                            st.settled += 1;
                        }
                    }
                    next += 1;
                    last_progress = Instant::now();
                }
                stats
                    .in_flight
                    .store(st.inflight.len() as u64, Ordering::Relaxed);
                if st.client.is_none() && st.inflight.is_empty() && next < n {
                    // The connection went mid-send: the rest goes back to the queue.
                    let reason = format!(
                        "not sent, connection lost: {}",
                        st.last_error.as_deref().unwrap_or("unknown")
                    );
                    for slot in &mut st.results[next..] {
                        *slot = Some(Settled::Lost {
                            sent: false,
                            reason: reason.clone(),
                        });
                    }
                    st.settled += n - next;
                    next = n;
                }
                if st.settled != seen {
                    seen = st.settled;
                    last_progress = Instant::now();
                }
                if st.settled >= n {
                    break;
                }
                in_flight = st.inflight.len();
            }
            let ack_deadline = last_progress + self.config.ack_timeout;
            tokio::select! {
                _ = notified => {}
                _ = tokio::time::sleep(rate_wait), if !rate_wait.is_zero() => {}
                _ = tokio::time::sleep_until(ack_deadline), if in_flight > 0 => {
                    let mut st = self.shared.lock();
                    if st.settled == seen {
                        st.kill = Some(st.epoch);
                        drop(st);
                        self.shared.kill.notify_one();
                    }
                    last_progress = Instant::now();
                }
            }
        }

        let mut st = self.shared.lock();
        let results = std::mem::take(&mut st.results);
        drop(st);
        for (msg, result) in messages.iter().zip(results) {
            match result {
                Some(Settled::Acked) => {}
                Some(Settled::Lost { sent, reason }) => {
                    if sent {
                        stats
                            .possible_duplicates
                            .fetch_add(msg.records.len() as u64, Ordering::Relaxed);
                    }
                    for &r in &msg.records {
                        outcomes[r as usize] = Outcome::Retry(reason.clone());
                    }
                }
                None => {
                    for &r in &msg.records {
                        outcomes[r as usize] = Outcome::Retry("not settled".to_string());
                    }
                }
            }
        }
        Ok(outcomes)
    }

    fn state(&self) -> Option<String> {
        let st = &self.shared.stats;
        let (host, port) = (&self.config.host, self.config.port);
        let connected = if st.connected.load(Ordering::Relaxed) {
            "connected to"
        } else {
            "disconnected from"
        };
        Some(format!(
            "{connected} {host}:{port}, {} in flight, {} connects, {} connection losses, {} possible duplicates",
            st.in_flight.load(Ordering::Relaxed),
            st.connects.load(Ordering::Relaxed),
            st.connection_losses.load(Ordering::Relaxed),
            st.possible_duplicates.load(Ordering::Relaxed),
        ))
    }

    async fn close(&mut self) {
        self.stop.cancel();
        if let Some(task) = self.task.take() {
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}
