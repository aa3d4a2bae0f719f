//! `kind = "opcua"`: subscribes to (or polls) OPC UA nodes and turns each data change into a
//! sample that keeps the device's SourceTimestamp and StatusCode.
//!
//! One task per source owns everything: the async-opcua session event loop is polled inside
//! this task's `select!` (never spawned), so cancelling the reader ends the session, its
//! keep-alives and its publish requests with it. Each (re)connect builds a fresh session,
//! resolves `nsu=` namespace URIs against the server's current NamespaceArray and creates the
//! subscription and monitored items again; reconnects back off with jitter
//! ([`crate::backoff::Backoff`]). Data changes reach the task through a channel that
//! the subscription callback fills while this task polls the event loop, so it holds at most
//! one publish response: while the queue pushes back, the event loop is not polled and the
//! server keeps the values in its monitored-item queues.
//!
//! Connections go through [`limit::LimitedConnector`]: a message header announcing more than
//! `max_message_size` fails the connection before async-opcua buffers that message.

pub mod browse;
pub mod config;
pub mod limit;
pub mod mapping;
pub mod nodeid;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use opcua::client::{
    ANONYMOUS_USER_TOKEN_ID, ClientBuilder, ClientEndpoint, DataChangeCallback, IdentityToken,
    MonitoredItem, Session, SessionActivity, SessionConnectMode, SessionEventLoop,
    SessionPollResult,
};
use opcua::crypto::{CertificateStore, X509};
use opcua::types::{
    AttributeId, DataChangeFilter, DataChangeTrigger, DataValue, DeadbandType, EndpointDescription,
    ExtensionObject, MessageSecurityMode, MonitoredItemCreateRequest, MonitoringMode,
    MonitoringParameters, NodeId, NumericRange, QualifiedName, ReadValueId, StatusCode,
    TimestampsToReturn, UserTokenPolicy,
};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use config::{Deadband, Identity, Mode, OpcuaTag, SecurityMode};
pub use config::{OpcuaConfig, RawOpcua};
use nodeid::Namespace;

use super::{Sample, SourceContext};
use crate::backoff::Backoff;
use crate::payload::{Flags, Quality, Value};

/// How long the reader waits for the session to close at shutdown.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// Monitored items per CreateMonitoredItems request (servers limit the operations per call).
const ITEMS_PER_REQUEST: usize = 500;
/// Failed keep-alives (each bounded by request_timeout) before the session counts as dead.
const MAX_FAILED_KEEP_ALIVES: u64 = 2;

/// Why a session ended or could not start.
#[derive(Debug, thiserror::Error)]
pub enum OpcuaError {
    #[error("{0}")]
    Connect(String),
    #[error("connection lost: {0}")]
    Lost(StatusCode),
    #[error("could not set up subscriptions: {0}")]
    Setup(String),
    #[error("the queue is closed")]
    Queue,
}

/// The reader of one `kind = "opcua"` source.
pub struct OpcuaReader {
    config: Arc<OpcuaConfig>,
    source_id: String,
    pki_dir: PathBuf,
}

/// Serialises first-start creation of the shared client certificate between sources.
static PKI_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A session built on the endpoint the config asks for, not yet connected.
struct Opened {
    session: Arc<Session>,
    event_loop: SessionEventLoop<limit::LimitedConnector>,
    /// The server certificate's file name in the PKI folder, to explain a refused connect.
    server_cert_file: Option<String>,
    /// The server certificate is trusted on this first use (`trust_on_first_use`).
    first_use: bool,
    marker: PathBuf,
}

/// A session for one-shot use, its event loop running in a task until [`OneShot::close`].
pub struct OneShot {
    pub session: Arc<Session>,
    event_loop: tokio::task::JoinHandle<StatusCode>,
}

impl OneShot {
    /// Closes the session on the server, bounded in time.
    pub async fn close(self) {
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.session.disconnect()).await;
        self.event_loop.abort();
    }
}

/// What a (re)connect set up: the polled nodes and the tags that failed.
struct Setup {
    subscription: Option<u32>,
    poll: Vec<(usize, ReadValueId)>,
    failed: Vec<(usize, StatusCode, String)>,
}

impl OpcuaReader {
    pub fn new(config: OpcuaConfig, source_id: &str, data_dir: &Path) -> OpcuaReader {
        let pki_dir = config
            .pki_dir
            .clone()
            .unwrap_or_else(|| data_dir.join("opcua-pki"));
        OpcuaReader {
            config: Arc::new(config),
            source_id: source_id.to_string(),
            pki_dir,
        }
    }

    /// Runs until `shutdown`: connects, subscribes, reconnects with backoff. On loss and on
    /// stop every tag that sent gets a `Bad`+`Lst`+`Syn` sample; the next values carry `Fst`.
    pub async fn run(self, mut ctx: SourceContext, shutdown: CancellationToken) {
        tracing::info!(endpoint = %self.config.endpoint, tags = self.config.tags.len(), "OPC UA reader started");
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        loop {
            let mut was_connected = false;
            let result = self.session(&mut ctx, &shutdown, &mut was_connected).await;
            if was_connected {
                backoff.reset();
            }
            match result {
                Ok(()) => break,
                Err(OpcuaError::Queue) => return,
                Err(e) => {
                    let delay = backoff.fail(rand::random::<f64>());
                    if ctx.failed(&e, crate::time::now_ms()) {
                        tracing::warn!(endpoint = %self.config.endpoint, retry_in = ?delay, "OPC UA: {e}");
                    } else {
                        tracing::debug!(endpoint = %self.config.endpoint, retry_in = ?delay, "OPC UA (again): {e}");
                    }
                    if ctx.flush().await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.cancelled() => break,
                    }
                }
            }
        }
        if let Err(e) = ctx.flush().await {
            tracing::warn!(error = %e, "could not queue the OPC UA reader's last samples");
        }
        tracing::info!(next_sequence = ctx.next_seq(), "OPC UA reader stopped");
    }

    fn client_builder(&self, trust_unknown: bool) -> ClientBuilder {
        let c = &self.config;
        ClientBuilder::new()
            .application_name("streamgate")
            .application_uri("urn:streamgate")
            .product_uri("urn:streamgate")
            .pki_dir(&self.pki_dir)
            .create_sample_keypair(true)
            .trust_server_certs(trust_unknown)
            .session_retry_limit(0)
            .session_retry_initial(c.reconnect_min)
            .session_retry_max(c.reconnect_max)
            .keep_alive_interval(c.keep_alive_interval)
            .max_failed_keep_alive_count(MAX_FAILED_KEEP_ALIVES)
            .request_timeout(c.request_timeout)
            .publish_timeout(c.request_timeout.max(c.publishing_interval * 3))
            .recreate_subscriptions(false)
            .session_name(format!("streamgate {}", self.source_id))
            .endpoint(
                "gateway",
                ClientEndpoint {
                    url: c.endpoint.clone(),
                    security_policy: c.security_policy.uri(),
                    security_mode: String::from(security_mode(c.security_mode)),
                    user_token_id: ANONYMOUS_USER_TOKEN_ID.to_string(),
                },
            )
    }

    /// The marker that records the server certificate trusted on first use by this source.
    fn first_use_marker(&self) -> PathBuf {
        self.pki_dir
            .join("first-use")
            .join(format!("{}.txt", self.source_id))
    }

    fn identity(&self) -> Result<IdentityToken, OpcuaError> {
        Ok(match &self.config.identity {
            Identity::Anonymous => IdentityToken::Anonymous,
            Identity::UserName { user, password } => {
                IdentityToken::new_user_name(user.clone(), password.clone())
            }
            Identity::Certificate { cert, key } => {
                let c = CertificateStore::read_cert(cert).map_err(|e| {
                    OpcuaError::Connect(format!("user_certificate {}: {e}", cert.display()))
                })?;
                let k = CertificateStore::read_pkey(key).map_err(|e| {
                    OpcuaError::Connect(format!("user_private_key {}: {e}", key.display()))
                })?;
                IdentityToken::X509(Box::new(c), Box::new(k))
            }
        })
    }

    /// Asks the server for its endpoints and builds a session on the one the config asks for
    /// (not connected yet: the event loop connects when it runs).
    async fn open(&self) -> Result<Opened, OpcuaError> {
        let c = &self.config;
        let marker = self.first_use_marker();
        let first_use = c.trust_on_first_use && !marker.exists();
        let client = {
            let _guard = PKI_LOCK.lock().unwrap_or_else(|p| p.into_inner());
            self.client_builder(first_use)
                .client()
                .map_err(|e| OpcuaError::Connect(format!("client settings: {}", e.join("; "))))?
        };
        let endpoints = match tokio::time::timeout(
            c.request_timeout * 2,
            client.get_server_endpoints_from_url(limit::LimitedConnector::new(&c.endpoint)),
        )
        .await
        {
            Ok(Ok(e)) => e,
            Ok(Err(e)) => {
                return Err(OpcuaError::Connect(format!(
                    "GetEndpoints from {} failed: {e}",
                    c.endpoint
                )));
            }
            Err(_) => {
                return Err(OpcuaError::Connect(format!(
                    "GetEndpoints from {} timed out after {:?}",
                    c.endpoint,
                    c.request_timeout * 2
                )));
            }
        };
        let mode = security_mode(c.security_mode);
        let wanted: EndpointDescription = (
            c.endpoint.as_str(),
            c.security_policy.uri().as_str(),
            mode,
            UserTokenPolicy::anonymous(),
        )
            .into();
        let server_cert_file = endpoints
            .iter()
            .find(|e| {
                e.security_mode == mode
                    && e.security_policy_uri
                        .as_ref()
                        .ends_with(c.security_policy.as_str())
            })
            .and_then(|e| X509::from_byte_string(&e.server_certificate).ok())
            .map(|x| CertificateStore::cert_file_name(&x));
        let builder = client
            .session_builder()
            .with_endpoints(endpoints.clone())
            .connect_to_matching_endpoint(wanted)
            .map_err(|_| {
                let offered: Vec<String> = endpoints
                    .iter()
                    .map(|e| {
                        format!(
                            "{} {:?}",
                            e.security_policy_uri
                                .as_ref()
                                .rsplit('#')
                                .next()
                                .unwrap_or_default(),
                            e.security_mode
                        )
                    })
                    .collect();
                OpcuaError::Connect(format!(
                    "{} offers no endpoint with security_policy \"{}\" and security_mode \"{:?}\"; it offers: {}",
                    c.endpoint,
                    c.security_policy.as_str(),
                    mode,
                    offered.join(", ")
                ))
            })?;
        let (session, event_loop) = builder
            .with_connector(limit::LimitedSource)
            .user_identity_token(self.identity()?)
            .build(client.certificate_store().clone())
            .map_err(|e| OpcuaError::Connect(format!("session for {}: {e}", c.endpoint)))?;

        Ok(Opened {
            session,
            event_loop,
            server_cert_file,
            first_use,
            marker,
        })
    }

    /// A connected session for one-shot use (commissioning), or why there is none, in the
    /// words the reader logs.
    pub async fn connect_once(&self) -> Result<OneShot, OpcuaError> {
        let c = &self.config;
        let opened = self.open().await?;
        let session = opened.session.clone();
        let mut event_loop = opened.event_loop.spawn();
        let within = c.request_timeout * 2;
        // The event loop ends (with its status) when the connect fails: watch both, and wait
        // for that status within the same time.
        let outcome = tokio::time::timeout(within, async {
            let connected = tokio::select! {
                connected = session.wait_for_connection() => connected,
                ended = &mut event_loop => return Err(ended),
            };
            if connected {
                Ok(())
            } else {
                Err((&mut event_loop).await)
            }
        })
        .await;
        let ended = match outcome {
            Ok(Ok(())) => {
                return Ok(OneShot {
                    session,
                    event_loop,
                });
            }
            Ok(Err(ended)) => ended,
            Err(_) => {
                event_loop.abort();
                return Err(OpcuaError::Connect(format!(
                    "could not connect to {} within {within:?}",
                    c.endpoint
                )));
            }
        };
        Err(match ended {
            Ok(status) => self.explain(status, opened.server_cert_file.as_deref()),
            Err(e) => OpcuaError::Connect(format!("could not connect to {}: {e}", c.endpoint)),
        })
    }

    /// One session: connect, subscribe, pump data changes until loss, error or shutdown.
    async fn session(
        &self,
        ctx: &mut SourceContext,
        shutdown: &CancellationToken,
        was_connected: &mut bool,
    ) -> Result<(), OpcuaError> {
        let c = &self.config;
        let opened = tokio::select! {
            r = self.open() => r?,
            _ = shutdown.cancelled() => return Ok(()),
        };
        let Opened {
            session,
            event_loop,
            server_cert_file,
            first_use,
            marker,
        } = opened;
        let (tx, mut rx) = mpsc::unbounded_channel::<(u32, DataValue)>();
        let stream = event_loop.enter();
        tokio::pin!(stream);
        let mut setup: Option<BoxFuture<'static, Result<Setup, OpcuaError>>> = None;
        let mut read: Option<BoxFuture<'static, Result<Vec<DataValue>, StatusCode>>> = None;
        let mut poll: Vec<(usize, ReadValueId)> = Vec::new();
        let mut poll_tick = tokio::time::interval(c.interval);
        poll_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut connected = false;
        // The subscription of the last setup, deleted at the next.
        let mut subscription: Option<u32> = None;
        let mut reported: Vec<bool> = vec![false; c.tags.len()];
        let skew = c.max_clock_skew.map(|d| d.as_millis() as i64);

        loop {
            let heartbeat = ctx.heartbeat_due();
            tokio::select! {
                biased;
                _ = shutdown.cancelled() => {
                    if connected {
                        ctx.lost(crate::time::now_ms());
                    }
                    // Close the session on the server (deletes its subscriptions) while the
                    // event loop keeps running, bounded in time.
                    let _ = tokio::time::timeout(CLOSE_TIMEOUT, async {
                        let close = session.disconnect();
                        tokio::pin!(close);
                        loop {
                            tokio::select! {
                                _ = &mut close => break,
                                ev = stream.next() => if ev.is_none() { break },
                            }
                        }
                    }).await;
                    return Ok(());
                }
                ev = stream.next() => match ev {
                    None => return Err(OpcuaError::Connect("session closed".into())),
                    Some(Err(status)) => {
                        if connected {
                            ctx.lost(crate::time::now_ms());
                            ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                            return Err(OpcuaError::Lost(status));
                        }
                        return Err(self.explain(status, server_cert_file.as_deref()));
                    }
                    Some(Ok(SessionPollResult::Reconnected(how))) => {
                        tracing::info!(endpoint = %c.endpoint, "OPC UA session {}", match &how {
                            SessionConnectMode::NewSession(_) => "created",
                            SessionConnectMode::ReactivatedSession(_) => "reactivated",
                        });
                        if first_use && !marker.exists() {
                            self.remember_first_use(&marker, server_cert_file.as_deref());
                        }
                        // Also for a reactivated session: its subscription may have expired on the
                        // server meanwhile (a frozen server runs its lifetime timers when it
                        // thaws). The old one is deleted, a fresh one made: a few repeated values
                        // (flagged Fst) instead of silence.
                        setup = Some(Box::pin(setup_items(
                            session.clone(),
                            c.clone(),
                            tx.clone(),
                            subscription,
                        )));
                    }
                    Some(Ok(SessionPollResult::ConnectionLost(status))) => {
                        tracing::warn!(endpoint = %c.endpoint, %status, "OPC UA connection lost; reconnecting");
                        if connected {
                            ctx.lost(crate::time::now_ms());
                            ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                        }
                        connected = false;
                        setup = None;
                        read = None;
                    }
                    Some(Ok(SessionPollResult::SessionActivity(SessionActivity::KeepAliveFailed(status)))) => {
                        tracing::warn!(endpoint = %c.endpoint, %status, "OPC UA keep-alive failed");
                    }
                    Some(Ok(_)) => {}
                },
                r = async { setup.as_mut().expect("guarded by the select condition").await }, if setup.is_some() => {
                    setup = None;
                    let s = r?;
                    *was_connected = true;
                    connected = true;
                    ctx.connected();
                    let now = crate::time::now_ms();
                    for (tag, status, why) in s.failed {
                        tracing::error!(tag = %c.tags[tag].name, node = %c.tags[tag].node, %status, "OPC UA tag unavailable: {why}");
                        ctx.push(Sample { tag, value: Value::Text(mapping::status_name(status).to_string()), quality: Quality::Bad, timestamp_ms: now, flags: Flags::ATS });
                    }
                    poll = s.poll;
                    subscription = s.subscription;
                    tracing::info!(endpoint = %c.endpoint, subscribed = c.tags.len() - poll.len(), polled = poll.len(), "OPC UA tags set up");
                    ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                }
                Some((handle, dv)) = rx.recv() => {
                    self.push(ctx, handle.wrapping_sub(1) as usize, &dv, skew, &mut reported);
                    while let Ok((handle, dv)) = rx.try_recv() {
                        self.push(ctx, handle.wrapping_sub(1) as usize, &dv, skew, &mut reported);
                        if ctx.should_flush() {
                            ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                        }
                    }
                    ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                }
                r = async { read.as_mut().expect("guarded by the select condition").await }, if read.is_some() => {
                    read = None;
                    match r {
                        Ok(values) => {
                            for ((tag, _), dv) in poll.iter().zip(values.iter()) {
                                self.push(ctx, *tag, dv, skew, &mut reported);
                            }
                            ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                        }
                        Err(status) => tracing::warn!(%status, "OPC UA poll read failed"),
                    }
                }
                _ = poll_tick.tick(), if connected && !poll.is_empty() && read.is_none() => {
                    let s = session.clone();
                    let nodes: Vec<ReadValueId> = poll.iter().map(|(_, r)| r.clone()).collect();
                    let timeout = c.request_timeout;
                    read = Some(Box::pin(async move {
                        match tokio::time::timeout(timeout, s.read(&nodes, TimestampsToReturn::Both, 0.0)).await {
                            Ok(Ok(v)) => Ok(v),
                            Ok(Err(e)) => Err(e.status()),
                            Err(_) => Err(StatusCode::BadTimeout),
                        }
                    }));
                }
                _ = tokio::time::sleep_until(heartbeat.unwrap_or_else(tokio::time::Instant::now)), if connected && heartbeat.is_some() => {
                    ctx.heartbeats(crate::time::now_ms());
                    ctx.flush().await.map_err(|_| OpcuaError::Queue)?;
                }
            }
        }
    }

    fn push(
        &self,
        ctx: &mut SourceContext,
        tag: usize,
        dv: &DataValue,
        skew: Option<i64>,
        reported: &mut [bool],
    ) {
        let Some(t) = self.config.tags.get(tag) else {
            return;
        };
        let now = crate::time::now_ms();
        // While our own clock is known wrong, the device's time is the better one: do not
        // replace it by ours for looking "skewed" (samples get Ats for our clock anyway).
        let skew = skew.filter(|_| !ctx.clock().known_wrong());
        let (timestamp_ms, flags) = mapping::timestamp(dv, now, skew);
        let (value, quality, unsupported) = tag_value(t, dv);
        if let Some(why) = unsupported
            && !reported[tag]
        {
            reported[tag] = true;
            tracing::error!(tag = %t.name, node = %t.node, "OPC UA value not supported: {why}");
        }
        ctx.push(Sample {
            tag,
            value,
            quality,
            timestamp_ms,
            flags,
        });
    }

    /// Turns a failed first connect into an actionable message.
    fn explain(&self, status: StatusCode, server_cert_file: Option<&str>) -> OpcuaError {
        let c = &self.config;
        let rejected = self.pki_dir.join("rejected");
        let trusted = self.pki_dir.join("trusted");
        let own = self.pki_dir.join("own").join("cert.der");
        if let Some(file) = server_cert_file
            && rejected.join(file).exists()
            && !trusted.join(file).exists()
        {
            return OpcuaError::Connect(format!(
                "the server certificate of {} is not trusted ({status}). It was saved as {}: check it is the server's, then move it to {} (or set trust_on_first_use = true to trust the first certificate this source sees)",
                c.endpoint,
                rejected.join(file).display(),
                trusted.display()
            ));
        }
        if matches!(
            status,
            StatusCode::BadCertificateHostNameInvalid | StatusCode::BadCertificateUriInvalid
        ) {
            return OpcuaError::Connect(format!(
                "the server certificate of {} does not name the host or application it was reached at ({status}); use the host name the certificate lists in `endpoint`, or have the server's certificate reissued",
                c.endpoint
            ));
        }
        if matches!(
            status,
            StatusCode::BadSecurityChecksFailed
                | StatusCode::BadCertificateUntrusted
                | StatusCode::BadCertificateInvalid
                | StatusCode::BadIdentityTokenRejected
                | StatusCode::BadUserAccessDenied
                | StatusCode::BadIdentityTokenInvalid
        ) {
            return OpcuaError::Connect(format!(
                "{} refused the connection ({status}): if the server does not trust streamgate's certificate, add {} to the server's trusted certificates; check username/password or the user certificate too",
                c.endpoint,
                own.display()
            ));
        }
        OpcuaError::Connect(format!("could not connect to {}: {status}", c.endpoint))
    }

    fn remember_first_use(&self, marker: &Path, server_cert_file: Option<&str>) {
        let text = format!(
            "trusted on first use by source {}: {}\n",
            self.source_id,
            server_cert_file.unwrap_or("(no server certificate)")
        );
        let written = marker
            .parent()
            .map(std::fs::create_dir_all)
            .unwrap_or(Ok(()))
            .and_then(|_| std::fs::write(marker, text));
        match written {
            Ok(()) => tracing::warn!(
                endpoint = %self.config.endpoint,
                certificate = server_cert_file.unwrap_or("-"),
                "OPC UA server certificate trusted on first use; later certificates must be trusted by hand"
            ),
            Err(e) => {
                tracing::error!(marker = %marker.display(), error = %e, "could not record the certificate trusted on first use")
            }
        }
    }
}

/// A tag's value and quality from what the server sent; the third part: a value of a type
/// the payload cannot carry (logged once by the reader).
fn tag_value(t: &OpcuaTag, dv: &DataValue) -> (Value, Quality, Option<mapping::Unsupported>) {
    let mut quality = mapping::quality(dv.status);
    let element = dv
        .value
        .as_ref()
        .map(|v| mapping::element(v, t.index.as_deref()));
    if element.is_some_and(mapping::inexact) && quality == Quality::Ok {
        quality = Quality::Uncertain;
    }
    match element.map(mapping::value) {
        Some(Ok(v)) => (v, quality, None),
        Some(Err(why)) if why != mapping::Unsupported::Empty => {
            (Value::Text(why.short()), Quality::Bad, Some(why))
        }
        // No value (a Bad status carries none): the status name says why.
        _ => (
            Value::Text(mapping::status_name(dv.status.unwrap_or(StatusCode::Good)).to_string()),
            quality,
            None,
        ),
    }
}

/// Reads each of `tags` (indexes into `config.tags`) once, in Read requests of up to
/// `ITEMS_PER_REQUEST` nodes, on a session of its own: for commissioning (`streamgate read`),
/// never touching a queue. The PKI folder and the trust of the server certificate are the
/// source's (`source_id`'s).
pub async fn read_once(
    config: &OpcuaConfig,
    source_id: &str,
    data_dir: &Path,
    tags: &[usize],
) -> Vec<super::TagRead> {
    let reader = OpcuaReader::new(config.clone(), source_id, data_dir);
    let started = std::time::Instant::now();
    let timestamp = crate::time::now_ms();
    let failed_all = |why: String| -> Vec<super::TagRead> {
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        tags.iter()
            .map(|&t| {
                super::TagRead::failed(&config.tags[t].name, timestamp, latency_ms, why.clone())
            })
            .collect()
    };
    let once = match reader.connect_once().await {
        Ok(o) => o,
        Err(e) => return failed_all(e.to_string()),
    };
    let session = once.session.clone();
    let reads = async {
        let (nodes, refused) = resolve_nodes(&session, config).await?;
        let mut selected = vec![false; config.tags.len()];
        for &t in tags {
            selected[t] = true;
        }
        let wanted: Vec<(usize, ReadValueId)> =
            nodes.into_iter().filter(|(i, _)| selected[*i]).collect();
        let ids: Vec<ReadValueId> = wanted.iter().map(|(_, r)| r.clone()).collect();
        // Servers limit the operations per call: Read in chunks.
        let mut values = Vec::with_capacity(ids.len());
        for chunk in ids.chunks(ITEMS_PER_REQUEST) {
            match tokio::time::timeout(
                config.request_timeout,
                session.read(chunk, TimestampsToReturn::Both, 0.0),
            )
            .await
            {
                Ok(Ok(v)) => values.extend(v),
                Ok(Err(e)) => return Err(OpcuaError::Setup(format!("Read: {e}"))),
                Err(_) => {
                    return Err(OpcuaError::Setup(format!(
                        "Read timed out after {:?}",
                        config.request_timeout
                    )));
                }
            }
        }
        Ok((wanted, values, refused))
    }
    .await;
    let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
    let out = match reads {
        Err(e) => failed_all(e.to_string()),
        Ok((wanted, values, refused)) => {
            // By tag: the server's answer, or why the tag was not asked for.
            let mut answers: Vec<Option<&DataValue>> = vec![None; config.tags.len()];
            for ((t, _), dv) in wanted.iter().zip(&values) {
                answers[*t] = Some(dv);
            }
            let mut refusals: Vec<Option<String>> = vec![None; config.tags.len()];
            for (t, status, why) in refused {
                refusals[t] = Some(format!("{why} ({status})"));
            }
            tags.iter()
                .map(|&t| {
                    read_result(
                        config,
                        t,
                        answers[t],
                        refusals[t].take(),
                        timestamp,
                        latency_ms,
                    )
                })
                .collect()
        }
    };
    once.close().await;
    out
}

/// One tag's line of `streamgate read`: the server's answer as the reader would take it, or
/// why there is none.
fn read_result(
    config: &OpcuaConfig,
    t: usize,
    answer: Option<&DataValue>,
    refusal: Option<String>,
    asked_ms: i64,
    latency_ms: f64,
) -> super::TagRead {
    let name = &config.tags[t].name;
    if let Some(why) = refusal {
        return super::TagRead::failed(name, asked_ms, latency_ms, why);
    }
    let Some(dv) = answer else {
        return super::TagRead::failed(
            name,
            asked_ms,
            latency_ms,
            "the server answered no value".to_string(),
        );
    };
    let (ts, _) = mapping::timestamp(dv, crate::time::now_ms(), None);
    match tag_value(&config.tags[t], dv) {
        (v, Quality::Bad, _) => {
            let text = match v {
                Value::Text(text) => text,
                other => format!("{other:?}"),
            };
            super::TagRead::failed(name, ts, latency_ms, text)
        }
        (v, q, _) => super::TagRead::good(name, v, q, ts, latency_ms),
    }
}

fn security_mode(mode: SecurityMode) -> MessageSecurityMode {
    match mode {
        SecurityMode::None => MessageSecurityMode::None,
        SecurityMode::Sign => MessageSecurityMode::Sign,
        SecurityMode::SignAndEncrypt => MessageSecurityMode::SignAndEncrypt,
    }
}

/// The ReadValueId of a tag with its namespace resolved.
fn read_value_id(tag: &OpcuaTag, node: NodeId) -> ReadValueId {
    ReadValueId {
        node_id: node,
        attribute_id: AttributeId::Value as u32,
        index_range: match tag.index.as_deref() {
            None => NumericRange::None,
            Some([i]) => NumericRange::Index(*i),
            Some(many) => {
                NumericRange::MultipleRanges(many.iter().map(|i| NumericRange::Index(*i)).collect())
            }
        },
        data_encoding: QualifiedName::null(),
    }
}

fn filter(deadband: Deadband) -> ExtensionObject {
    let (kind, value) = match deadband {
        Deadband::None => return ExtensionObject::null(),
        Deadband::Absolute(v) => (DeadbandType::Absolute, v),
        Deadband::Percent(v) => (DeadbandType::Percent, v),
    };
    ExtensionObject::from_message(DataChangeFilter {
        trigger: DataChangeTrigger::StatusValue,
        deadband_type: kind as u32,
        deadband_value: value,
    })
}

/// The ReadValueId of every tag whose namespace the server knows, and the tags refused for
/// an unknown namespace (`nsu=` resolved through the server's NamespaceArray).
#[allow(clippy::type_complexity)]
async fn resolve_nodes(
    session: &Session,
    config: &OpcuaConfig,
) -> Result<(Vec<(usize, ReadValueId)>, Vec<(usize, StatusCode, String)>), OpcuaError> {
    let mut failed = Vec::new();
    let needs_map = config
        .tags
        .iter()
        .any(|t| matches!(t.node.namespace, Namespace::Uri(_)));
    let map = if needs_map {
        Some(
            session
                .read_namespace_array()
                .await
                .map_err(|e| OpcuaError::Setup(format!("reading the NamespaceArray: {e}")))?,
        )
    } else {
        None
    };
    let mut nodes = Vec::new();
    for (i, t) in config.tags.iter().enumerate() {
        let ns = match &t.node.namespace {
            Namespace::Index(n) => *n,
            Namespace::Uri(uri) => match map.as_ref().and_then(|m| m.get_index(uri)) {
                Some(n) => n,
                None => {
                    failed.push((
                        i,
                        StatusCode::BadNodeIdUnknown,
                        format!("the server has no namespace \"{uri}\""),
                    ));
                    continue;
                }
            },
        };
        nodes.push((i, read_value_id(t, t.node.to_node_id(ns))));
    }
    Ok((nodes, failed))
}

/// Resolves namespaces, creates the subscription and its monitored items; returns the
/// polled nodes and the tags the server refused (bad node id, unknown namespace ...).
async fn setup_items(
    session: Arc<Session>,
    config: Arc<OpcuaConfig>,
    tx: mpsc::UnboundedSender<(u32, DataValue)>,
    old_subscription: Option<u32>,
) -> Result<Setup, OpcuaError> {
    if let Some(old) = old_subscription {
        // Gone with the old session, or expired: drop it (server side if still there, and the
        // crate's local state either way).
        let _ = session.delete_subscription(old).await;
    }
    let (nodes, mut failed) = resolve_nodes(&session, &config).await?;
    let mut subscribe = Vec::new();
    let mut poll = Vec::new();
    for (i, rv) in nodes {
        let t = &config.tags[i];
        match t.mode {
            Mode::Poll => poll.push((i, rv)),
            Mode::Subscribe => subscribe.push(MonitoredItemCreateRequest {
                item_to_monitor: rv,
                monitoring_mode: MonitoringMode::Reporting,
                requested_parameters: MonitoringParameters {
                    client_handle: i as u32 + 1,
                    sampling_interval: t.sampling_interval.as_secs_f64() * 1000.0,
                    filter: filter(t.deadband),
                    queue_size: t.queue_size,
                    discard_oldest: true,
                },
            }),
        }
    }
    let mut subscription = None;
    if !subscribe.is_empty() {
        let keep_alive_count = (config.keep_alive_interval.as_millis()
            / config.publishing_interval.as_millis().max(1))
        .clamp(1, 1000) as u32;
        let sub = session
            .create_subscription(
                config.publishing_interval,
                // Survives short outages (a reactivated session keeps it), at least 3 keep-alives.
                (keep_alive_count * 3)
                    .max((30_000 / config.publishing_interval.as_millis().max(1)) as u32),
                keep_alive_count,
                0,
                0,
                true,
                DataChangeCallback::new(move |dv: DataValue, item: &MonitoredItem| {
                    let _ = tx.send((item.client_handle(), dv));
                }),
            )
            .await
            .map_err(|e| OpcuaError::Setup(format!("CreateSubscription: {e}")))?;
        subscription = Some(sub);
        for chunk in subscribe.chunks(ITEMS_PER_REQUEST) {
            let results = session
                .create_monitored_items(sub, TimestampsToReturn::Both, chunk.to_vec())
                .await
                .map_err(|e| OpcuaError::Setup(format!("CreateMonitoredItems: {e}")))?;
            for (req, res) in chunk.iter().zip(results.iter()) {
                if !res.result.status_code.is_good() {
                    let tag = req.requested_parameters.client_handle as usize - 1;
                    failed.push((
                        tag,
                        res.result.status_code,
                        format!(
                            "the server refused to monitor {}",
                            req.item_to_monitor.node_id
                        ),
                    ));
                }
            }
        }
    }
    Ok(Setup {
        subscription,
        poll,
        failed,
    })
}
