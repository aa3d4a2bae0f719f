//! The connection task: owns rumqttc's `EventLoop`, polls it continuously, turns its events
//! into settled publishes ([`InFlight`]), reconnects with backoff, and explains failures in
//! words an operator can act on. Shares [`State`] with the exporter behind one mutex.
//!
//! Each connection gets a fresh `EventLoop`: when a connection is lost, every publish without
//! a PUBACK is settled as lost (the driver sends it again, in a later batch), so rumqttc never
//! re-sends anything on its own and each record's outcome is decided exactly once.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, EventLoop, Incoming, MqttOptions,
    Outgoing, StateError, TlsConfiguration, TlsError, Transport,
};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::config::MqttExportConfig;
use super::inflight::{InFlight, Tag};
use crate::backoff::Backoff;
use crate::exporters::rate::RateLimit;
use crate::exporters::reconnect::Slot;
use crate::exporters::stats::ConnectionStats;

/// How one message of the current send ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Settled {
    /// PUBACK received (QoS 1) or written to the connection (QoS 0).
    Acked,
    /// No PUBACK before the connection went; `sent`: it was written, the broker may have it.
    Lost { sent: bool, reason: String },
}

/// What the exporter and the connection task share.
#[derive(Default)]
pub struct State {
    /// The client of the live connection; `None` while disconnected (nothing is submitted).
    pub client: Option<AsyncClient>,
    pub inflight: InFlight,
    /// The sends under way (several handles of the export may send at once, sharing the
    /// connection and its window), by generation; tags of finished sends settle nothing.
    pub sends: HashMap<u64, Pending>,
    pub next_generation: u64,
    /// Messages settled on this export, any send: progress for the `ack_timeout` watch.
    pub settled_total: u64,
    pub last_error: Option<String>,
    /// Counts connections; a kill request names the connection it is meant for.
    pub epoch: u64,
    pub kill: Option<u64>,
    /// The in-flight window and how much room in it is worth waking the exporter for.
    pub window: usize,
    pub refill_step: usize,
    /// The publish-rate and byte-rate limits of the connection, shared by every send.
    pub messages: Option<RateLimit>,
    pub bytes: Option<RateLimit>,
}

/// One send's messages: how each ended, and how many did.
#[derive(Debug, Default)]
pub struct Pending {
    pub results: Vec<Option<Settled>>,
    pub settled: usize,
}

impl Pending {
    pub fn done(&self) -> bool {
        self.settled >= self.results.len()
    }
}

impl State {
    /// Wake the exporter when the window has `refill_step` free slots or its send is complete.
    /// `refill_step` is 1 on purpose: brokers with Nagle on (mosquitto's default) hold their
    /// next PUBACK until our TCP ACK, and our kernel delays that ACK unless we send data; so a
    /// publish must follow every PUBACK. Larger steps measured 2.5k instead of 35k samples/s.
    fn wants_wakeup(&self) -> bool {
        self.inflight.len() + self.refill_step <= self.window
            || self.sends.values().any(Pending::done)
    }

    /// Starts a send of `n` messages; returns its generation.
    pub fn begin(&mut self, n: usize) -> u64 {
        self.next_generation += 1;
        self.sends.insert(
            self.next_generation,
            Pending {
                results: vec![None; n],
                settled: 0,
            },
        );
        self.next_generation
    }

    pub fn settle(&mut self, tag: Tag, result: Settled, stats: &ConnectionStats) {
        if let Settled::Lost { sent: true, .. } = &result {
            stats.lost_in_flight.fetch_add(1, Ordering::Relaxed);
        }
        if result == Settled::Acked {
            stats.acked.fetch_add(1, Ordering::Relaxed);
        }
        self.settled_total += 1;
        let pending = self.sends.get_mut(&tag.0);
        let slot = match pending {
            Some(p) => p
                .results
                .get_mut(tag.1 as usize)
                .map(|slot| (slot, &mut p.settled)),
            None => None,
        };
        match slot {
            Some((slot @ None, settled)) => {
                *slot = Some(result);
                *settled += 1;
            }
            _ => {
                stats.late_acks.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
}

pub struct Shared {
    pub state: Mutex<State>,
    /// Wakes the exporter's sends (all of them: each checks its own): something settled, or
    /// the connection came or went. Waiters register (`enable`) before they look at the state,
    /// so no wakeup is missed.
    pub progress: Notify,
    /// Asks the connection task to drop the connection (no PUBACK within ack_timeout).
    pub kill: Notify,
    pub stats: Arc<ConnectionStats>,
}

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind; keep going with it.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs until `stop` is cancelled.
/// After a failure, a reconnect waits for its turn in the reconnect order (the exports of
/// higher-priority streams try first).
pub async fn run(
    config: MqttExportConfig,
    shared: Arc<Shared>,
    stop: CancellationToken,
    reconnect: Slot,
) {
    let mut backoff = Backoff::new(config.reconnect_min, config.reconnect_max);
    let broker = format!("{}:{}", config.host, config.port);
    while !stop.is_cancelled() {
        if backoff.failures() > 0 {
            tokio::select! {
                _ = reconnect.turn() => {}
                _ = stop.cancelled() => break,
            }
        }
        let failure = match options(&config) {
            Err(e) => e.to_string(),
            Ok(opts) => {
                let cap = config.max_in_flight as usize + 16;
                let (client, mut el) = AsyncClient::new(opts, cap);
                let mut net = el.network_options();
                // Nagle + waiting for PUBACKs collapses throughput (FIELD.md).
                net.set_tcp_nodelay(true);
                net.set_connection_timeout(config.connect_timeout.as_secs().max(1));
                el.set_network_options(net);
                let connected = connection(
                    &config,
                    &shared,
                    &stop,
                    client,
                    &mut el,
                    &mut backoff,
                    &reconnect,
                );
                match connected.await {
                    Some(reason) => reason,
                    None => break,
                }
            }
        };
        lost(&shared, &failure);
        reconnect.failed();
        let wait = backoff.fail(rand::random());
        let retry_in = Duration::from_millis(wait.as_millis() as u64);
        // One WARN when an outage starts (the first failure after a working connection, or
        // the first attempt), the attempts after it at DEBUG; "connected" ends it (INFO).
        if backoff.failures() == 1 {
            tracing::warn!(broker = %broker, error = %failure, retry_in = ?retry_in, "mqtt broker connection failed or lost; reconnecting");
        } else {
            tracing::debug!(broker = %broker, error = %failure, retry_in = ?retry_in, attempt = backoff.failures(), "mqtt broker still unreachable");
        }
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => break,
        }
    }
    reconnect.up();
}

/// Polls one connection until it fails (returns why) or `stop` (returns `None`).
async fn connection(
    config: &MqttExportConfig,
    shared: &Shared,
    stop: &CancellationToken,
    client: AsyncClient,
    el: &mut EventLoop,
    backoff: &mut Backoff,
    reconnect: &Slot,
) -> Option<String> {
    let stats = &shared.stats;
    // The backoff is reset by the first packet after CONNACK (PUBACK, PINGRESP, ...), not by
    // the CONNACK: a broker that accepts and then breaks every connection (garbage, an
    // oversized packet, a kicked client id) must not be reconnected to at the minimum delay
    // forever (AWS IoT allows one CONNECT per second per client id).
    let mut proven = false;
    loop {
        let event = tokio::select! {
            biased;
            _ = stop.cancelled() => {
                goodbye(&client, el).await;
                drain(shared, el);
                lost(shared, STOPPED);
                return None;
            }
            _ = shared.kill.notified() => {
                let st = shared.lock();
                if st.kill.is_some() && st.kill == Some(st.epoch) && st.client.is_some() {
                    drop(st);
                    drain(shared, el);
                    return Some(format!(
                        "no PUBACK from the broker within ack_timeout ({:?}); dropping the connection",
                        config.ack_timeout
                    ));
                }
                continue;
            }
            event = el.poll() => event,
        };
        match event {
            Ok(Event::Incoming(Incoming::ConnAck(ack))) => {
                let mut st = shared.lock();
                st.client = Some(client.clone());
                st.epoch += 1;
                st.kill = None;
                stats.connected.store(true, Ordering::Relaxed);
                stats.connects.fetch_add(1, Ordering::Relaxed);
                drop(st);
                reconnect.up();
                shared.progress.notify_waiters();
                tracing::info!(
                    broker = %format!("{}:{}", config.host, config.port),
                    client_id = %config.client_id,
                    session_present = ack.session_present,
                    tls = config.tls.is_some(),
                    "connected to mqtt broker"
                );
            }
            Ok(event) => {
                if !proven && matches!(event, Event::Incoming(_)) {
                    backoff.reset();
                    proven = true;
                }
                let mut st = shared.lock();
                if handle(&mut st, &event, stats) && st.wants_wakeup() {
                    drop(st);
                    shared.progress.notify_waiters();
                }
            }
            Err(e) => {
                drain(shared, el);
                return Some(describe(&e, config));
            }
        }
    }
}

/// Applies one event; true when something settled.
fn handle(st: &mut State, event: &Event, stats: &ConnectionStats) -> bool {
    let settled = match event {
        Event::Incoming(Incoming::PubAck(ack)) => st.inflight.puback(ack.pkid),
        Event::Outgoing(Outgoing::Publish(pkid)) => st.inflight.written(*pkid),
        Event::Outgoing(Outgoing::AwaitAck(pkid)) => {
            st.inflight.parked(*pkid);
            None
        }
        _ => None,
    };
    stats
        .in_flight
        .store(st.inflight.len() as u64, Ordering::Relaxed);
    match settled {
        Some(tag) => {
            st.settle(tag, Settled::Acked, stats);
            true
        }
        None => false,
    }
}

/// Events rumqttc buffered before the connection ended are real (PUBACKs among them): apply
/// them before the rest is declared lost.
fn drain(shared: &Shared, el: &mut EventLoop) {
    let mut st = shared.lock();
    while let Some(event) = el.state.events.pop_front() {
        handle(&mut st, &event, &shared.stats);
    }
}

const STOPPED: &str = "export stopped";

/// Everything without a PUBACK is lost with `reason`; nothing more is submitted.
fn lost(shared: &Shared, reason: &str) {
    let stats = &shared.stats;
    let mut st = shared.lock();
    let was_connected = st.client.take().is_some();
    let lost = st.inflight.connection_lost();
    let (sent, unsent) = (lost.sent.len(), lost.unsent.len());
    for tag in lost.sent {
        st.settle(
            tag,
            Settled::Lost {
                sent: true,
                reason: format!("no PUBACK before the connection was lost: {reason}"),
            },
            stats,
        );
    }
    for tag in lost.unsent {
        st.settle(
            tag,
            Settled::Lost {
                sent: false,
                reason: format!("not sent, connection lost: {reason}"),
            },
            stats,
        );
    }
    if reason != STOPPED {
        st.last_error = Some(reason.to_string());
        if let Ok(mut e) = stats.last_error.lock() {
            *e = Some(reason.to_string());
        }
    }
    stats.in_flight.store(0, Ordering::Relaxed);
    stats.connected.store(false, Ordering::Relaxed);
    drop(st);
    if was_connected && reason == STOPPED {
        tracing::info!("disconnected from mqtt broker (export stopped)");
    } else if was_connected {
        stats.connection_losses.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(
            without_puback = sent,
            not_sent = unsent,
            error = %reason,
            "disconnected from mqtt broker; publishes without PUBACK go back to the queue for retry"
        );
    }
    shared.progress.notify_waiters();
}

/// A polite DISCONNECT at shutdown (nothing is in flight then: the driver finished its send).
async fn goodbye(client: &AsyncClient, el: &mut EventLoop) {
    if client.try_disconnect().is_err() {
        return;
    }
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        loop {
            match el.poll().await {
                Ok(Event::Outgoing(Outgoing::Disconnect)) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
}

/// Why a connection could not be set up (before any network traffic): the files or the
/// password it needs. The export retries with its backoff; the message names what to fix.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    #[error("password_env: environment variable {0} is not set or not UTF-8")]
    PasswordEnv(String),
    #[error(transparent)]
    Tls(#[from] crate::exporters::tls::TlsError),
}

/// rumqttc options for one connection; reads the certificate files and the password.
fn options(config: &MqttExportConfig) -> Result<MqttOptions, SetupError> {
    let mut o = MqttOptions::new(&config.client_id, &config.host, config.port);
    o.set_keep_alive(config.keep_alive);
    o.set_clean_session(config.clean_session);
    o.set_inflight(config.max_in_flight);
    let max_packet = config.max_payload + super::topic::MQTT_MAX_TOPIC_BYTES + 64;
    o.set_max_packet_size(max_packet, max_packet);
    if let Some(user) = &config.username {
        let password = match &config.password {
            None => String::new(),
            Some(secret) => secret.reveal().map_err(SetupError::PasswordEnv)?,
        };
        o.set_credentials(user, password);
    }
    if let Some(tls) = &config.tls {
        let client_config = tls.client_config()?;
        o.set_transport(Transport::tls_with_config(TlsConfiguration::Rustls(
            Arc::new(client_config),
        )));
    }
    Ok(o)
}

/// An error an operator can act on.
pub fn describe(e: &ConnectionError, config: &MqttExportConfig) -> String {
    let broker = format!("{}:{}", config.host, config.port);
    let io = match e {
        ConnectionError::Io(io) => Some(io),
        ConnectionError::Tls(TlsError::Io(io)) => Some(io),
        ConnectionError::MqttState(StateError::Io(io)) => Some(io),
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(io))) => Some(io),
        _ => None,
    };
    let tls_cause = match e {
        ConnectionError::Tls(TlsError::TLS(r)) => Some(r),
        _ => io
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
    };
    if let Some(r) = tls_cause {
        return crate::exporters::tls::describe(r, "broker", &broker, &config.host);
    }
    match e {
        ConnectionError::ConnectionRefused(code) => match code {
            ConnectReturnCode::BadUserNamePassword => format!(
                "{broker} refused the connection: bad user name or password (check username and password)"
            ),
            ConnectReturnCode::NotAuthorized => format!(
                "{broker} refused the connection: not authorised (check username/password, or the client certificate and the policy attached to it)"
            ),
            ConnectReturnCode::BadClientId => format!(
                "{broker} refused the connection: client id \"{}\" rejected",
                config.client_id
            ),
            other => format!("{broker} refused the connection: {other:?}"),
        },
        ConnectionError::NetworkTimeout => format!(
            "no answer (CONNACK) from {broker} within connect_timeout ({:?})",
            config.connect_timeout
        ),
        ConnectionError::FlushTimeout => format!("writing to {broker} timed out"),
        ConnectionError::Tls(TlsError::DNSName(_)) => format!(
            "TLS: \"{}\" is not a valid server name for TLS",
            config.host
        ),
        ConnectionError::Tls(other) => format!("TLS with {broker}: {other}"),
        ConnectionError::MqttState(StateError::AwaitPingResp) => {
            format!("{broker} did not answer the keep-alive ping; connection presumed dead")
        }
        ConnectionError::MqttState(StateError::ConnectionAborted) => {
            format!("{broker} closed the connection")
        }
        ConnectionError::MqttState(StateError::Deserialization(rumqttc::Error::Io(_))) => {
            // Handled with `io` below.
            describe_io(io, &broker, e)
        }
        ConnectionError::MqttState(other) => format!("MQTT protocol error with {broker}: {other}"),
        _ => describe_io(io, &broker, e),
    }
}

fn describe_io(io: Option<&std::io::Error>, broker: &str, e: &ConnectionError) -> String {
    match io {
        Some(io) => match io.kind() {
            std::io::ErrorKind::ConnectionRefused => format!(
                "connection refused by {broker}: is the broker running and listening on that port?"
            ),
            std::io::ErrorKind::UnexpectedEof
            | std::io::ErrorKind::ConnectionReset
            | std::io::ErrorKind::ConnectionAborted
            | std::io::ErrorKind::BrokenPipe => {
                format!("{broker} closed the connection ({io})")
            }
            _ => format!("I/O error with {broker}: {io}"),
        },
        None => format!("{broker}: {e}"),
    }
}
