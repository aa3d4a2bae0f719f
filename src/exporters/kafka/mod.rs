//! `kind = "kafka"`: Apache Kafka, Amazon MSK and Kafka-compatible brokers, through rskafka (a
//! pure-Rust client: no librdkafka, the same rustls + ring as the MQTT export).
//!
//! A send routes every record of the driver's batch to a topic (the `topic` template) and a
//! partition (the `partition_key`, partitioned as Apache Kafka's own producer does:
//! [`partition`]), then sends one produce request per partition, all at once, each with
//! `acks = all`. The answer of each partition is the outcome of its records:
//! - acknowledged -> `Delivered`;
//! - a record batch too large for the topic (`MessageTooLarge`) is sent again record by record
//!   in the same send, and a record still too large alone is `Rejected` (dead-letter table),
//!   as are records for a topic the cluster does not have and records the broker calls invalid;
//! - anything else (leader moved, broker down, not enough replicas, timeout) -> `Retry`: the
//!   records go first into the next batch. rskafka follows leader changes itself within
//!   `request_timeout`; when no broker answers at all the send fails as unreachable.
//!
//! Several sends may be in flight (`max_in_flight_requests`): the handles share one client,
//! its connections and the topic metadata ([`Exporter::another`]).

pub mod config;
pub mod partition;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rskafka::BackoffConfig;
use rskafka::chrono::{TimeZone, Utc};
use rskafka::client::error::{Error as KafkaError, ProtocolError};
use rskafka::client::partition::{Compression as KafkaCompression, PartitionClient};
use rskafka::client::{Client, ClientBuilder, Credentials, SaslConfig};

use config::{Compression, MAX_KEY_CHARS, SaslMechanism};
pub use config::{KafkaExportConfig, RawKafkaExport};

use super::template::KeyTemplate;
use super::{Exporter, Outcome, SendError};
use crate::queue::Record;

/// Topic metadata older than this is asked again (Apache Kafka's `metadata.max.age.ms`).
const METADATA_MAX_AGE: Duration = Duration::from_secs(300);
/// A topic missing from the metadata is asked for again when the metadata is older than this,
/// before its records are dead-lettered (a topic created a moment ago).
const MISSING_TOPIC_RECHECK: Duration = Duration::from_secs(1);

pub struct KafkaExporter {
    inner: Arc<Inner>,
}

struct Inner {
    config: KafkaExportConfig,
    /// Made at the first send; dropped when the cluster could not be reached, so the next send
    /// starts from the bootstrap servers again.
    client: tokio::sync::Mutex<Option<Arc<Client>>>,
    metadata: Mutex<Metadata>,
    partitions: Mutex<HashMap<(String, i32), Arc<PartitionClient>>>,
    state: Mutex<String>,
}

#[derive(Default)]
struct Metadata {
    /// Partitions per topic.
    topics: HashMap<String, usize>,
    fetched: Option<Instant>,
}

/// Why a produce request (or the client) failed, as the export acts on it.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Failure {
    /// No broker answered: retried after the export's backoff, at most 5 s apart.
    Unreachable(String),
    /// Sent again first in the next batch.
    Retry(String),
    /// The record batch is above the topic's `max.message.bytes`.
    TooLarge(String),
    /// The broker will never take these records.
    Rejected(String),
}

impl Failure {
    fn message(&self) -> &str {
        match self {
            Failure::Unreachable(m)
            | Failure::Retry(m)
            | Failure::TooLarge(m)
            | Failure::Rejected(m) => m,
        }
    }
}

impl KafkaExporter {
    pub fn new(config: KafkaExportConfig) -> KafkaExporter {
        let state = format!(
            "not connected yet ({})",
            config.bootstrap_servers.join(", ")
        );
        KafkaExporter {
            inner: Arc::new(Inner {
                config,
                client: Default::default(),
                metadata: Default::default(),
                partitions: Default::default(),
                state: Mutex::new(state),
            }),
        }
    }
}

impl Inner {
    fn set_state(&self, text: String) {
        *self.state.lock().unwrap() = text;
    }

    async fn client(&self) -> Result<Arc<Client>, SendError> {
        let mut slot = self.client.lock().await;
        if let Some(c) = &*slot {
            return Ok(c.clone());
        }
        let c = &self.config;
        let mut builder = ClientBuilder::new(c.bootstrap_servers.clone())
            .client_id(c.client_id.as_str())
            .backoff_config(backoff(c.request_timeout));
        if let Some(tls) = &c.tls {
            let tls = tls
                .client_config()
                .map_err(|e| SendError::transient(e.to_string()))?;
            builder = builder.tls_config(Arc::new(tls));
        }
        if let Some(sasl) = &c.sasl {
            let password = sasl.password.reveal().map_err(|var| {
                SendError::transient(format!(
                    "password_env: environment variable {var} is not set (under systemd: /etc/default/streamgate)"
                ))
            })?;
            let credentials = Credentials::new(sasl.username.clone(), password);
            builder = builder.sasl_config(match sasl.mechanism {
                SaslMechanism::Plain => SaslConfig::Plain(credentials),
                SaslMechanism::ScramSha256 => SaslConfig::ScramSha256(credentials),
                SaslMechanism::ScramSha512 => SaslConfig::ScramSha512(credentials),
            });
        }
        // The bootstrap retries stop at the deadline of `backoff`; the timeout covers a broker
        // that accepts the connection and never answers.
        let built =
            tokio::time::timeout(c.request_timeout + Duration::from_secs(1), builder.build())
                .await
                .unwrap_or(Err(KafkaError::Timeout));
        match built {
            Ok(client) => {
                let client = Arc::new(client);
                tracing::info!(
                    bootstrap = %c.bootstrap_servers.join(","),
                    tls = c.tls.is_some(),
                    sasl = c.sasl.as_ref().map(|s| s.mechanism.name()).unwrap_or("none"),
                    "connected to the kafka cluster"
                );
                *slot = Some(client.clone());
                Ok(client)
            }
            Err(e) => {
                let message = format!(
                    "kafka cluster ({}): {}",
                    c.bootstrap_servers.join(", "),
                    describe(&e, &self.config)
                );
                self.set_state(format!("unreachable: {message}"));
                Err(match failure(&e, &self.config) {
                    Failure::Unreachable(_) => SendError::unreachable(message),
                    _ => SendError::transient(message),
                })
            }
        }
    }

    /// Forgets the client (all brokers unreachable): the next send starts from the bootstrap
    /// servers.
    async fn reset(&self) {
        *self.client.lock().await = None;
        self.partitions.lock().unwrap().clear();
        self.metadata.lock().unwrap().fetched = None;
    }

    /// Partitions per topic for `wanted`, from metadata at most [`METADATA_MAX_AGE`] old (and
    /// asked again when a wanted topic is missing and the metadata is older than
    /// [`MISSING_TOPIC_RECHECK`]).
    async fn topics(
        &self,
        client: &Client,
        wanted: &BTreeSet<&str>,
    ) -> Result<HashMap<String, usize>, Failure> {
        let refresh = {
            let m = self.metadata.lock().unwrap();
            match m.fetched {
                None => true,
                Some(at) => {
                    at.elapsed() > METADATA_MAX_AGE
                        || (at.elapsed() > MISSING_TOPIC_RECHECK
                            && wanted.iter().any(|t| !m.topics.contains_key(*t)))
                }
            }
        };
        if refresh {
            let listed = tokio::time::timeout(self.config.request_timeout, client.list_topics())
                .await
                .unwrap_or(Err(KafkaError::Timeout))
                .map_err(|e| failure(&e, &self.config))?;
            let mut m = self.metadata.lock().unwrap();
            m.topics = listed
                .into_iter()
                .map(|t| (t.name, t.partitions.len()))
                .collect();
            m.fetched = Some(Instant::now());
        }
        let m = self.metadata.lock().unwrap();
        Ok(wanted
            .iter()
            .filter_map(|t| m.topics.get(*t).map(|n| (t.to_string(), *n)))
            .collect())
    }

    async fn partition_client(
        &self,
        client: &Client,
        topic: &str,
        partition: i32,
    ) -> Result<Arc<PartitionClient>, Failure> {
        let key = (topic.to_string(), partition);
        if let Some(p) = self.partitions.lock().unwrap().get(&key) {
            return Ok(p.clone());
        }
        let made = tokio::time::timeout(
            self.config.request_timeout,
            client.partition_client(
                topic,
                partition,
                rskafka::client::partition::UnknownTopicHandling::Error,
            ),
        )
        .await
        .unwrap_or(Err(KafkaError::Timeout))
        .map_err(|e| failure(&e, &self.config))?;
        let made = Arc::new(made);
        self.partitions.lock().unwrap().insert(key, made.clone());
        Ok(made)
    }

    /// One produce request for the records of one partition; a batch too large for the topic
    /// is split into single records. One outcome per record.
    async fn produce(
        &self,
        client: &Client,
        topic: &str,
        partition: i32,
        records: Vec<rskafka::record::Record>,
    ) -> Vec<Result<(), Failure>> {
        let n = records.len();
        let p = match self.partition_client(client, topic, partition).await {
            Ok(p) => p,
            Err(f) => return vec![Err(f); n],
        };
        let compression = compression(self.config.compression);
        let timeout = self.config.request_timeout;
        let once = |records: Vec<rskafka::record::Record>| {
            let p = p.clone();
            async move {
                tokio::time::timeout(timeout, p.produce(records, compression))
                    .await
                    .unwrap_or(Err(KafkaError::Timeout))
                    .map(|_| ())
                    .map_err(|e| failure(&e, &self.config))
            }
        };
        let results = split_too_large(records, once).await;
        if results
            .iter()
            .any(|r| matches!(r, Err(Failure::Retry(_) | Failure::Unreachable(_))))
        {
            // The partition may have moved or gone: ask the metadata again next time.
            self.partitions
                .lock()
                .unwrap()
                .remove(&(topic.to_string(), partition));
            self.metadata.lock().unwrap().fetched = None;
        }
        results
    }
}

/// Sends `records` in one request; when the broker finds the batch too large for the topic,
/// sends them again one by one, so that only a record too large on its own is refused. One
/// result per record, in order.
async fn split_too_large<R, F, Fut>(records: Vec<R>, once: F) -> Vec<Result<(), Failure>>
where
    R: Clone,
    F: Fn(Vec<R>) -> Fut,
    Fut: std::future::Future<Output = Result<(), Failure>>,
{
    let n = records.len();
    match once(records.clone()).await {
        Ok(()) => vec![Ok(()); n],
        Err(Failure::TooLarge(_)) if n > 1 => {
            let mut out = Vec::with_capacity(n);
            for r in records {
                out.push(once(vec![r]).await);
            }
            out
        }
        Err(f) => vec![Err(f); n],
    }
}

/// How long rskafka's own retries (leader moved, connection lost or refused, SASL refused) go on
/// before the error reaches the export: its backoff, `status` and the log then show it.
const CLIENT_RETRY_WINDOW: Duration = Duration::from_secs(5);

/// rskafka's retries stop at [`CLIENT_RETRY_WINDOW`] (or the request timeout, if shorter).
fn backoff(request_timeout: Duration) -> BackoffConfig {
    BackoffConfig {
        init_backoff: Duration::from_millis(100),
        max_backoff: Duration::from_secs(1),
        base: 2.0,
        deadline: Some(request_timeout.min(CLIENT_RETRY_WINDOW)),
    }
}

fn compression(c: Compression) -> KafkaCompression {
    match c {
        Compression::None => KafkaCompression::NoCompression,
        Compression::Gzip => KafkaCompression::Gzip,
        Compression::Snappy => KafkaCompression::Snappy,
        Compression::Lz4 => KafkaCompression::Lz4,
        Compression::Zstd => KafkaCompression::Zstd,
    }
}

/// A random message key (as the Kinesis export's `partition_key = "random"`): spreads records
/// evenly over the partitions.
fn random_key() -> Vec<u8> {
    format!("{:016x}", rand::random::<u64>()).into_bytes()
}

/// How the export acts on an rskafka error.
fn failure(e: &KafkaError, config: &KafkaExportConfig) -> Failure {
    let text = describe(e, config);
    match e {
        KafkaError::Connection(c) => connection_failure(c, text),
        KafkaError::Request(_) | KafkaError::Timeout => Failure::Unreachable(text),
        KafkaError::RetryFailed(b) => match gave_up_on(b) {
            GaveUpOn::Client(inner) => failure(inner, config),
            GaveUpOn::Connection(c) => connection_failure(c, text),
            GaveUpOn::Other if is_login_refused(&b.to_string()) => Failure::Retry(text),
            GaveUpOn::Other => Failure::Unreachable(text),
        },
        KafkaError::ServerError { protocol_error, .. } => match protocol_error {
            ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge => {
                Failure::TooLarge(text)
            }
            ProtocolError::InvalidRecord
            | ProtocolError::CorruptMessage
            | ProtocolError::InvalidTopicException => Failure::Rejected(text),
            _ => Failure::Retry(text),
        },
        _ => Failure::Retry(text),
    }
}

/// A refused login is not an unreachable cluster: it is retried with the failure backoff.
fn connection_failure(c: &rskafka::ConnectionError, text: String) -> Failure {
    match c {
        rskafka::ConnectionError::SaslFailed(_) => Failure::Retry(text),
        rskafka::ConnectionError::RetryFailed(b) => match gave_up_on(b) {
            GaveUpOn::Connection(inner) => connection_failure(inner, text),
            _ if is_login_refused(&b.to_string()) => Failure::Retry(text),
            _ => Failure::Unreachable(text),
        },
        _ => Failure::Unreachable(text),
    }
}

/// The error rskafka's retries gave up on (their deadline passed).
enum GaveUpOn<'a> {
    Client(&'a KafkaError),
    Connection(&'a rskafka::ConnectionError),
    Other,
}

fn gave_up_on(b: &rskafka::BackoffError) -> GaveUpOn<'_> {
    let rskafka::BackoffError::DeadlineExceded { source, .. } = b;
    if let Some(e) = source.downcast_ref::<KafkaError>() {
        GaveUpOn::Client(e)
    } else if let Some(e) = source.downcast_ref::<rskafka::ConnectionError>() {
        GaveUpOn::Connection(e)
    } else {
        GaveUpOn::Other
    }
}

/// What happened and what to do, in one line (no secret in it).
fn describe(e: &KafkaError, config: &KafkaExportConfig) -> String {
    match e {
        KafkaError::Connection(c) => describe_connection(c, config),
        KafkaError::RetryFailed(b) => gave_up(b, config),
        KafkaError::Timeout => format!(
            "no answer within request_timeout ({:?})",
            config.request_timeout
        ),
        KafkaError::ServerError {
            protocol_error,
            error_message,
            ..
        } => {
            let hint = match protocol_error {
                ProtocolError::MessageTooLarge | ProtocolError::RecordListTooLarge => {
                    " (larger than the topic's max.message.bytes)"
                }
                ProtocolError::TopicAuthorizationFailed => {
                    " (not allowed to write to this topic: check the ACLs for this user)"
                }
                ProtocolError::NotEnoughReplicas | ProtocolError::NotEnoughReplicasAfterAppend => {
                    " (fewer in-sync replicas than the topic's min.insync.replicas)"
                }
                _ => "",
            };
            match error_message {
                Some(m) => format!("broker answered {protocol_error}: {m}{hint}"),
                None => format!("broker answered {protocol_error}{hint}"),
            }
        }
        other => format!("{other}"),
    }
}

fn describe_connection(c: &rskafka::ConnectionError, config: &KafkaExportConfig) -> String {
    use rskafka::ConnectionError as C;
    match c {
        C::Transport { broker, error } => transport(broker, error),
        C::SaslFailed(s) => match &config.sasl {
            Some(sasl) => format!(
                "SASL {} login as \"{}\" refused ({s}): check username, password (password_env) and the mechanism the listener offers",
                sasl.mechanism.name(),
                sasl.username
            ),
            None => format!("SASL failed: {s}"),
        },
        C::RetryFailed(b) => gave_up(b, config),
        other => format!("{other}"),
    }
}

/// The last error of rskafka's retries.
fn gave_up(b: &rskafka::BackoffError, config: &KafkaExportConfig) -> String {
    match gave_up_on(b) {
        GaveUpOn::Client(e) => describe(e, config),
        GaveUpOn::Connection(c) => describe_connection(c, config),
        // The errors of every bootstrap broker, type-erased by rskafka: only their text is left.
        GaveUpOn::Other => {
            let text = b.to_string();
            let detail = text
                .strip_prefix("Retry exceeded deadline. Source: ")
                .unwrap_or(&text);
            match hint(detail, config) {
                Some(hint) => format!("{hint} ({detail})"),
                None => detail.to_string(),
            }
        }
    }
}

fn is_login_refused(text: &str) -> bool {
    text.contains("Sasl handshake failed")
}

/// What to do about a failure known only by its text (see [`gave_up`]).
fn hint(text: &str, config: &KafkaExportConfig) -> Option<String> {
    if is_login_refused(text) {
        return Some(match &config.sasl {
            Some(sasl) => format!(
                "SASL {} login as \"{}\" refused: check username, password (password_env) and the mechanism the listener offers",
                sasl.mechanism.name(),
                sasl.username
            ),
            None => "the broker asked for a SASL login: set sasl_mechanism, username and password"
                .into(),
        });
    }
    let hint = if text.contains("UnknownIssuer") {
        "the broker's certificate is not signed by a CA we trust (check ca_file)"
    } else if text.contains("NotValidForName") {
        "the broker's certificate is not valid for the name in bootstrap_servers (or the name the cluster advertises)"
    } else if text.contains("Expired") {
        "the broker's certificate has expired, or the gateway's clock is wrong"
    } else if text.contains("Connection refused") {
        "the broker refused the connection: is Kafka running and listening on that port?"
    } else if text.contains("lookup") || text.contains("not known") {
        "the broker's name does not resolve (check bootstrap_servers and DNS)"
    } else if text.contains("InvalidContentType") || text.contains("CorruptMessage") {
        "the broker does not speak TLS on that port, or tls = true is missing"
    } else {
        return None;
    };
    Some(hint.into())
}

/// A connection to `broker` failed: refused, TLS, name resolution; the I/O error is found in
/// the error's chain.
fn transport(broker: &str, error: &(dyn std::error::Error + 'static)) -> String {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                let host = broker.rsplit_once(':').map_or(broker, |(h, _)| h);
                return crate::exporters::tls::describe(tls, "broker", broker, host);
            }
            return match io.kind() {
                std::io::ErrorKind::ConnectionRefused => format!(
                    "broker {broker} refused the connection: is Kafka running and listening on that port?"
                ),
                _ => format!("cannot connect to broker {broker}: {io}"),
            };
        }
        cause = e.source();
    }
    format!("cannot connect to broker {broker}: {error}")
}

impl Exporter for KafkaExporter {
    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        let inner = &self.inner;
        let config = &inner.config;
        let client = inner.client().await?;
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        // Topic and key of every record.
        let mut routes: Vec<Option<(String, Option<Vec<u8>>)>> = Vec::with_capacity(batch.len());
        for (i, r) in batch.iter().enumerate() {
            let mut topic = String::new();
            if config.topic.render(&r.payload, &mut topic).is_err() {
                outcomes[i] = Some(Outcome::Rejected(
                    "the payload lacks a field the topic template names".into(),
                ));
                routes.push(None);
                continue;
            }
            if let Err(problem) = partition::valid_topic_name(&topic) {
                outcomes[i] = Some(Outcome::Rejected(problem));
                routes.push(None);
                continue;
            }
            let key = match &config.partition_key {
                KeyTemplate::None => None,
                KeyTemplate::Random => Some(random_key()),
                template => Some(
                    template
                        .render(&r.payload, MAX_KEY_CHARS)
                        .map(String::into_bytes)
                        .unwrap_or_else(random_key),
                ),
            };
            routes.push(Some((topic, key)));
        }
        let wanted: BTreeSet<&str> = routes.iter().flatten().map(|(t, _)| t.as_str()).collect();
        let partitions = match inner.topics(&client, &wanted).await {
            Ok(p) => p,
            Err(Failure::Unreachable(m)) => {
                inner.reset().await;
                inner.set_state(format!("unreachable: {m}"));
                return Err(SendError::unreachable(format!("kafka metadata: {m}")));
            }
            Err(f) => {
                return Err(SendError::transient(format!(
                    "kafka metadata: {}",
                    f.message()
                )));
            }
        };
        // One group per partition; records without a key stick to one random partition per
        // topic in this send.
        let mut groups: BTreeMap<(String, i32), Vec<usize>> = BTreeMap::new();
        let mut sticky: HashMap<&str, i32> = HashMap::new();
        for (i, route) in routes.iter().enumerate() {
            let Some((topic, key)) = route else { continue };
            let count = match partitions.get(topic) {
                Some(&n) if n > 0 => n,
                _ => {
                    outcomes[i] = Some(Outcome::Rejected(format!(
                        "topic \"{topic}\" does not exist on the cluster (streamgate does not create topics: create it, with the partitions and retention you want)"
                    )));
                    continue;
                }
            };
            let p = match key {
                Some(k) => partition::for_key(k, count),
                None => *sticky
                    .entry(topic.as_str())
                    .or_insert_with(|| rand::random_range(0..count) as i32),
            };
            groups.entry((topic.clone(), p)).or_default().push(i);
        }
        let sends = groups.into_iter().map(|((topic, p), members)| {
            let records = members
                .iter()
                .map(|&i| rskafka::record::Record {
                    key: routes[i].as_ref().and_then(|(_, k)| k.clone()),
                    value: Some(batch[i].payload.clone()),
                    headers: BTreeMap::new(),
                    timestamp: Utc
                        .timestamp_millis_opt(batch[i].at_ms)
                        .single()
                        .unwrap_or_default(),
                })
                .collect();
            let client = client.clone();
            async move {
                let results = inner.produce(&client, &topic, p, records).await;
                (members, results)
            }
        });
        let done = futures_util::future::join_all(sends).await;
        let (mut delivered, mut unreachable, mut failed) = (0usize, None, 0usize);
        for (members, results) in done {
            for (i, result) in members.into_iter().zip(results) {
                outcomes[i] = Some(match result {
                    Ok(()) => {
                        delivered += 1;
                        Outcome::Delivered
                    }
                    Err(Failure::TooLarge(m) | Failure::Rejected(m)) => Outcome::Rejected(m),
                    Err(Failure::Retry(m)) => {
                        failed += 1;
                        Outcome::Retry(m)
                    }
                    Err(Failure::Unreachable(m)) => {
                        failed += 1;
                        unreachable.get_or_insert(m.clone());
                        Outcome::Retry(m)
                    }
                });
            }
        }
        if delivered == 0
            && failed > 0
            && let Some(m) = unreachable
        {
            inner.reset().await;
            inner.set_state(format!("unreachable: {m}"));
            return Err(SendError::unreachable(format!("kafka: {m}")));
        }
        let in_use = inner.partitions.lock().unwrap().len();
        inner.set_state(format!(
            "connected ({}), {in_use} partition(s) in use{}",
            config.bootstrap_servers.join(", "),
            if failed > 0 {
                format!(", {failed} record(s) of the last send to retry")
            } else {
                String::new()
            }
        ));
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not sent".into())))
            .collect())
    }

    fn state(&self) -> Option<String> {
        Some(self.inner.state.lock().unwrap().clone())
    }

    fn another(&self) -> Option<Self> {
        Some(KafkaExporter {
            inner: self.inner.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> KafkaExportConfig {
        let mut errs = crate::config::Errors::default();
        let c = RawKafkaExport {
            bootstrap_servers: vec!["k:9092".into()],
            topic: "t".into(),
            ..Default::default()
        }
        .validate("e", &mut errs);
        assert!(errs.into_vec().is_empty());
        c
    }

    fn server(e: ProtocolError) -> KafkaError {
        KafkaError::ServerError {
            protocol_error: e,
            error_message: None,
            request: rskafka::client::error::RequestContext::Partition("t".into(), 0),
            response: None,
            is_virtual: false,
        }
    }

    /// A broker that refuses any request holding a record above 10 bytes, and counts requests.
    #[tokio::test]
    async fn a_batch_too_large_is_split_and_only_the_large_record_refused() {
        let calls = std::sync::atomic::AtomicUsize::new(0);
        let once = |records: Vec<Vec<u8>>| {
            calls.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            async move {
                if records.iter().any(|r| r.len() > 10) {
                    Err(Failure::TooLarge("too large".into()))
                } else {
                    Ok(())
                }
            }
        };
        let batch = vec![b"small".to_vec(), vec![b'x'; 100], b"also small".to_vec()];
        let results = split_too_large(batch, once).await;
        assert_eq!(
            results,
            [Ok(()), Err(Failure::TooLarge("too large".into())), Ok(())]
        );
        assert_eq!(
            calls.load(std::sync::atomic::Ordering::Relaxed),
            4,
            "1 + 3 singles"
        );
        // A batch that fits is one request; any other failure is the whole batch's.
        calls.store(0, std::sync::atomic::Ordering::Relaxed);
        assert_eq!(
            split_too_large(vec![b"a".to_vec(), b"b".to_vec()], once).await,
            [Ok(()), Ok(())]
        );
        assert_eq!(calls.load(std::sync::atomic::Ordering::Relaxed), 1);
        let down = |_: Vec<Vec<u8>>| async { Err(Failure::Unreachable("down".into())) };
        assert_eq!(
            split_too_large(vec![b"a".to_vec(), b"b".to_vec()], down).await,
            vec![Err(Failure::Unreachable("down".into())); 2]
        );
    }

    #[test]
    fn broker_answers_are_classified() {
        let c = config();
        assert!(matches!(
            failure(&server(ProtocolError::MessageTooLarge), &c),
            Failure::TooLarge(m) if m.contains("max.message.bytes")
        ));
        assert!(matches!(
            failure(&server(ProtocolError::InvalidRecord), &c),
            Failure::Rejected(_)
        ));
        assert!(matches!(
            failure(&server(ProtocolError::NotEnoughReplicas), &c),
            Failure::Retry(m) if m.contains("min.insync.replicas")
        ));
        assert!(matches!(
            failure(&server(ProtocolError::TopicAuthorizationFailed), &c),
            Failure::Retry(m) if m.contains("ACLs")
        ));
        assert!(matches!(
            failure(&KafkaError::Timeout, &c),
            Failure::Unreachable(m) if m.contains("request_timeout")
        ));
    }
}
