//! `kind = "mqtt"`: publishes samples to an MQTT 3.1.1 broker (mosquitto, EMQX, HiveMQ, AWS IoT
//! Core) with rumqttc over rustls.
//!
//! The promise is the one of every export: a record leaves the queue only when the broker
//! acknowledged it. With QoS 1 that is its PUBACK, never the return of `publish()`. One `send`
//! pipelines its batch: it keeps up to `max_in_flight` publishes unacknowledged, tops the window
//! up as PUBACKs arrive (within the publish-rate limits), and returns when every message is
//! settled. The driver runs `max_in_flight_requests` sends at once (default 2) on handles that
//! share the one connection, its window and its rate limits, so the window stays full across
//! batches instead of draining at the end of each. A message ends acknowledged -> `Delivered`;
//! lost with the connection or stuck past `ack_timeout` -> `Retry` (the driver sends it again:
//! at least once, duplicates are counted); never publishable (too large, bad topic) ->
//! `Rejected`.
//!
//! Files: [`config`] (keys, limits), [`topic`] (templates), [`pack`] (records -> messages),
//! [`inflight`] (which PUBACK settles what), [`connection`] (the task owning rumqttc's event
//! loop); the token buckets are [`crate::exporters::rate`].

pub mod config;
pub mod connection;
pub mod inflight;
pub mod pack;
pub mod topic;

use std::sync::atomic::Ordering;

use crate::exporters::stats::ConnectionStats;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::QoS;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

use super::{Exporter, Limits, Outcome, SendError};
use crate::exporters::rate::RateLimit;
use crate::exporters::reconnect::Slot;
use crate::queue::Record;
use config::{MqttExportConfig, Qos};
use connection::{Settled, Shared, State};
use pack::Packer;

pub use config::RawMqttExport;

pub const LIMITS: Limits = Limits {
    max_batch_size: 10_000,
    default_batch_size: 1_000,
    max_batch_bytes: 64 << 20,
    default_batch_interval: Duration::from_millis(50),
    // Two batches share the connection's window of `max_in_flight` publishes: while the last
    // PUBACKs of one batch are awaited, the next batch keeps the window full.
    max_in_flight_requests: 16,
    default_in_flight_requests: 2,
};

pub struct MqttExporter {
    config: Arc<MqttExportConfig>,
    shared: Arc<Shared>,
    /// The connection task; only the first handle has it (and stops it).
    task: Option<JoinHandle<()>>,
    stop: CancellationToken,
    _stop_on_drop: Option<DropGuard>,
}

impl MqttExporter {
    /// Starts the connection task (needs a tokio runtime).
    pub fn new(
        config: MqttExportConfig,
        stats: Arc<ConnectionStats>,
        reconnect: Slot,
    ) -> MqttExporter {
        let window = config.max_in_flight as usize;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                window,
                refill_step: 1,
                messages: config.publish_rate.map(RateLimit::new),
                bytes: config.publish_bandwidth.map(RateLimit::new),
                ..State::default()
            }),
            progress: Default::default(),
            kill: Default::default(),
            stats,
        });
        let stop = CancellationToken::new();
        let task = tokio::spawn(tracing::Instrument::instrument(
            connection::run(config.clone(), shared.clone(), stop.clone(), reconnect),
            tracing::Span::current(),
        ));
        MqttExporter {
            config: Arc::new(config),
            shared,
            task: Some(task),
            _stop_on_drop: Some(stop.clone().drop_guard()),
            stop,
        }
    }

    pub fn stats(&self) -> Arc<ConnectionStats> {
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
                    return Err(SendError::unreachable(format!(
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
    fn rate_wait(st: &mut State, len: usize) -> Duration {
        let now = std::time::Instant::now();
        let m = st
            .messages
            .as_mut()
            .map_or(Duration::ZERO, |r| r.wait(now, 1));
        let b = st
            .bytes
            .as_mut()
            .map_or(Duration::ZERO, |r| r.wait(now, len as u64));
        let wait = m.max(b);
        if wait.is_zero() {
            if let Some(r) = st.messages.as_mut() {
                r.consume(1);
            }
            if let Some(r) = st.bytes.as_mut() {
                r.consume(len as u64);
            }
        }
        wait
    }
}

impl Exporter for MqttExporter {
    fn reachable(
        &self,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + 'static>> {
        let shared = self.shared.clone();
        Box::pin(async move {
            loop {
                let notified = shared.progress.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if shared.lock().client.is_some() {
                    return;
                }
                notified.await;
            }
        })
    }

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
        let generation = self.shared.lock().begin(n);
        let shared = self.shared.clone();
        let stats = shared.stats.clone();
        let mut next = 0usize;
        let mut seen = u64::MAX;
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
                    rate_wait = Self::rate_wait(&mut st, messages[next].payload.len());
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
                            let lost = Settled::Lost {
                                sent: false,
                                reason: format!("mqtt client refused the publish: {e}"),
                            };
                            st.settle((generation, next as u32), lost, &stats);
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
                    for i in next..n {
                        let lost = Settled::Lost {
                            sent: false,
                            reason: reason.clone(),
                        };
                        st.settle((generation, i as u32), lost, &stats);
                    }
                    next = n;
                }
                if st.settled_total != seen {
                    seen = st.settled_total;
                    last_progress = Instant::now();
                }
                if st.sends.get(&generation).is_none_or(|p| p.done()) {
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
                    if st.settled_total == seen {
                        st.kill = Some(st.epoch);
                        drop(st);
                        self.shared.kill.notify_one();
                    }
                    last_progress = Instant::now();
                }
            }
        }

        let results = self
            .shared
            .lock()
            .sends
            .remove(&generation)
            .map(|p| p.results)
            .unwrap_or_else(|| vec![None; n]);
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

    fn connects_in_background(&self) -> bool {
        true
    }

    fn another(&self) -> Option<MqttExporter> {
        Some(MqttExporter {
            config: self.config.clone(),
            shared: self.shared.clone(),
            task: None,
            stop: self.stop.clone(),
            _stop_on_drop: None,
        })
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
        if let Some(task) = self.task.take() {
            self.stop.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(3), task).await;
        }
    }
}
