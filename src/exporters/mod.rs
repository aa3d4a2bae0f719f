//! Exporters: take batches of records from the queue, send them somewhere, and report an
//! outcome per record. An exporter knows nothing of PLCs; [`driver`] knows nothing of
//! destinations. Adding a destination = a folder/file with its config and an [`Exporter`].

#[cfg(any(feature = "kinesis", feature = "firehose"))]
pub mod aws;
pub mod bandwidth;
pub mod driver;
pub mod file;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(feature = "mqtt")]
pub mod mqtt;
pub mod rate;
pub mod reconnect;
#[cfg(any(feature = "mqtt", feature = "kafka"))]
pub mod secret;
pub mod stats;
pub mod stdout;
pub mod template;
pub mod throttle;
#[cfg(any(feature = "mqtt", feature = "kafka", feature = "aws-common"))]
pub mod tls;

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use crate::config::Errors;
use crate::queue::Record;

/// What happened to one record of a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The destination has it (durably, as far as it promises).
    Delivered,
    /// A transient failure (a failed entry of a partial batch, a lost connection): send it
    /// again, first in a later batch.
    Retry(String),
    /// The destination refused it for throughput (Kinesis ProvisionedThroughputExceeded,
    /// Firehose ServiceUnavailable): sent again like `Retry`, and the export's adaptive rate
    /// ([`throttle`]) slows down instead of its failure backoff.
    Throttled(String),
    /// Refused for throughput by one shard the exporter paces itself (Kinesis per-shard
    /// rates, `aws/shards.rs`): sent again like `Retry` and counted as throttled, but the
    /// export-wide adaptive rate does not slow down (the other shards keep their pace).
    ThrottledShard(String),
    /// Not sent: the exporter held it back because its shard is at its send rate. First in a
    /// later batch; neither a failure nor throttling.
    Held,
    /// The destination will never take it (too large, malformed): dead-letter it.
    Rejected(String),
}

/// A failure of a whole send (or of one call of it): every record it carried is sent again.
/// Records the destination will never take are not a send error but a per-record
/// [`Outcome::Rejected`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SendError {
    /// Failed this time (connection lost, timeout, server error, no credentials yet): sent
    /// again after the export's failure backoff.
    #[error("{0}")]
    Transient(String),
    /// Refused for throughput: sent again, and the export's adaptive rate ([`throttle`]) slows
    /// down.
    #[error("{0}")]
    Throttled(String),
    /// The destination cannot be reached (no connection, connection refused, DNS): a retry
    /// costs a connect attempt only, so it comes at most [`driver::UNREACHABLE_RETRY_CAP`]
    /// apart, and at once when the exporter says the destination is back
    /// ([`Exporter::reachable`]).
    #[error("{0}")]
    Unreachable(String),
}

impl SendError {
    pub fn transient(message: impl Into<String>) -> SendError {
        SendError::Transient(message.into())
    }

    pub fn throttled(message: impl Into<String>) -> SendError {
        SendError::Throttled(message.into())
    }

    pub fn unreachable(message: impl Into<String>) -> SendError {
        SendError::Unreachable(message.into())
    }

    pub fn is_unreachable(&self) -> bool {
        matches!(self, SendError::Unreachable(_))
    }

    pub fn is_throttled(&self) -> bool {
        matches!(self, SendError::Throttled(_))
    }

    /// What happened and what to do, in one line.
    pub fn message(&self) -> &str {
        match self {
            SendError::Transient(m) | SendError::Throttled(m) | SendError::Unreachable(m) => m,
        }
    }

    /// What it means for each record the failed call carried.
    pub fn outcome(&self) -> Outcome {
        match self {
            SendError::Transient(m) | SendError::Unreachable(m) => Outcome::Retry(m.clone()),
            SendError::Throttled(m) => Outcome::Throttled(m.clone()),
        }
    }
}

/// A destination. `send` returns one outcome per record, index-aligned with `batch`.
///
/// The driver calls `send` on one exporter at a time. An exporter that can have several sends
/// in flight (`max_in_flight_requests`) hands out more handles on the same destination with
/// [`Exporter::another`]; each handle then sends one batch at a time.
pub trait Exporter: Send + 'static {
    fn send(
        &mut self,
        batch: &[Record],
    ) -> impl Future<Output = Result<Vec<Outcome>, SendError>> + Send;

    /// A short, human description of the connection state for `streamgate status`
    /// (e.g. "connected to 10.0.0.5:8883, 37 in flight"); reported after every send.
    fn state(&self) -> Option<String> {
        None
    }

    /// Resolves when the destination, unreachable at the last send, may be reachable again
    /// (an MQTT connection was re-established): the export then retries at once instead of
    /// waiting out its backoff. Owned, so the driver can wait on it beside other things. By
    /// default it never resolves (the backoff decides).
    fn reachable(&self) -> Pin<Box<dyn Future<Output = ()> + Send + 'static>> {
        Box::pin(std::future::pending())
    }

    /// Whether the exporter keeps its connection in a task of its own (MQTT), which then
    /// takes part in the reconnect order ([`reconnect`]) itself; by default a send is the
    /// connect attempt and the driver does.
    fn connects_in_background(&self) -> bool {
        false
    }

    /// Another handle on the same destination (shared client and counters), for one more send
    /// in flight. `None`: this kind sends one batch at a time, in order.
    fn another(&self) -> Option<Self>
    where
        Self: Sized,
    {
        None
    }

    /// Called once per handle when the export stops (flush, close connections).
    fn close(&mut self) -> impl Future<Output = ()> + Send {
        async {}
    }
}

/// Batching settings common to every export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchConfig {
    pub max_records: usize,
    pub max_bytes: usize,
    pub interval: Duration,
    /// Batches sent at once (`max_in_flight_requests`).
    pub max_in_flight: usize,
}

/// Backoff for failed sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryConfig {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

/// Per-kind batching limits, checked at validation.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_batch_size: usize,
    pub default_batch_size: usize,
    pub max_batch_bytes: u64,
    pub default_batch_interval: Duration,
    /// Sends in flight at once (`max_in_flight_requests`): the most this kind allows, and
    /// its default. Kinds without [`Exporter::another`] allow 1.
    pub max_in_flight_requests: usize,
    pub default_in_flight_requests: usize,
}

/// The kind-specific keys of `[[streams.exports]]`, selected by `kind`.
#[derive(Debug)]
pub enum RawExportKind {
    #[cfg(feature = "kinesis")]
    Kinesis(aws::RawAwsExport),
    #[cfg(feature = "firehose")]
    Firehose(aws::RawAwsExport),
    File(file::RawFileExport),
    Stdout(stdout::RawStdoutExport),
    #[cfg(feature = "mqtt")]
    Mqtt(Box<mqtt::RawMqttExport>),
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::RawKafkaExport>),
}

/// A validated export kind with its settings.
#[derive(Debug, Clone)]
pub enum ExportKind {
    /// Kinesis or Firehose (the service is in the config).
    #[cfg(any(feature = "kinesis", feature = "firehose"))]
    Aws(aws::AwsExportConfig),
    File(file::FileExportConfig),
    Stdout(stdout::StdoutExportConfig),
    #[cfg(feature = "mqtt")]
    Mqtt(Box<mqtt::config::MqttExportConfig>),
    #[cfg(feature = "kafka")]
    Kafka(Box<kafka::KafkaExportConfig>),
}

impl RawExportKind {
    /// The kinds this build has, as written in `kind = "..."`.
    pub fn kinds() -> Vec<&'static str> {
        crate::config::built(&[
            ("kinesis", cfg!(feature = "kinesis")),
            ("firehose", cfg!(feature = "firehose")),
            ("file", true),
            ("stdout", true),
            ("mqtt", cfg!(feature = "mqtt")),
            ("kafka", cfg!(feature = "kafka")),
        ])
    }

    /// Reads the kind's own keys (`keys`, the table at `path` without the common ones).
    /// `None`: no such kind in this build; `Some(None)`: the keys had errors (recorded).
    pub fn read(
        kind: &str,
        keys: toml::Value,
        path: &str,
        r: &mut crate::config::table::TableReader,
    ) -> Option<Option<RawExportKind>> {
        Some(match kind {
            #[cfg(feature = "kinesis")]
            "kinesis" => r.read(keys, path).map(RawExportKind::Kinesis),
            #[cfg(feature = "firehose")]
            "firehose" => r.read(keys, path).map(RawExportKind::Firehose),
            "file" => r.read(keys, path).map(RawExportKind::File),
            "stdout" => r.read(keys, path).map(RawExportKind::Stdout),
            #[cfg(feature = "mqtt")]
            "mqtt" => r.read(keys, path).map(|m| RawExportKind::Mqtt(Box::new(m))),
            #[cfg(feature = "kafka")]
            "kafka" => r
                .read(keys, path)
                .map(|k| RawExportKind::Kafka(Box::new(k))),
            _ => return None,
        })
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            #[cfg(feature = "kinesis")]
            RawExportKind::Kinesis(_) => "kinesis",
            #[cfg(feature = "firehose")]
            RawExportKind::Firehose(_) => "firehose",
            RawExportKind::File(_) => "file",
            RawExportKind::Stdout(_) => "stdout",
            #[cfg(feature = "mqtt")]
            RawExportKind::Mqtt(_) => "mqtt",
            #[cfg(feature = "kafka")]
            RawExportKind::Kafka(_) => "kafka",
        }
    }

    pub fn limits(&self) -> Limits {
        match self {
            #[cfg(feature = "kinesis")]
            RawExportKind::Kinesis(a) => a.limits(aws::Service::Kinesis),
            #[cfg(feature = "firehose")]
            RawExportKind::Firehose(a) => a.limits(aws::Service::Firehose),
            RawExportKind::File(_) => file::LIMITS,
            RawExportKind::Stdout(_) => stdout::LIMITS,
            #[cfg(feature = "mqtt")]
            RawExportKind::Mqtt(_) => mqtt::LIMITS,
            #[cfg(feature = "kafka")]
            RawExportKind::Kafka(k) => k.limits(),
        }
    }

    pub fn validate(&self, path: &str, errs: &mut Errors) -> ExportKind {
        match self {
            #[cfg(feature = "kinesis")]
            RawExportKind::Kinesis(a) => {
                ExportKind::Aws(a.validate(path, aws::Service::Kinesis, errs))
            }
            #[cfg(feature = "firehose")]
            RawExportKind::Firehose(a) => {
                ExportKind::Aws(a.validate(path, aws::Service::Firehose, errs))
            }
            RawExportKind::File(f) => ExportKind::File(f.validate(path, errs)),
            RawExportKind::Stdout(s) => ExportKind::Stdout(s.validate(path, errs)),
            #[cfg(feature = "mqtt")]
            RawExportKind::Mqtt(m) => ExportKind::Mqtt(Box::new(m.validate(path, errs))),
            #[cfg(feature = "kafka")]
            RawExportKind::Kafka(k) => ExportKind::Kafka(Box::new(k.validate(path, errs))),
        }
    }
}

/// Starts export `ctx` of kind `kind`: builds its exporter (inside the export's span) and
/// runs the [`driver`] until `ctx.shutdown`.
pub fn spawn(kind: &ExportKind, ctx: driver::DriverContext) -> tokio::task::JoinHandle<()> {
    let span =
        tracing::info_span!("export", stream = %ctx.stream, name = %ctx.name, kind = ctx.kind);
    match kind {
        #[cfg(any(feature = "kinesis", feature = "firehose"))]
        ExportKind::Aws(a) => {
            let exporter = span.in_scope(|| {
                aws::AwsExporter::new(a.clone(), ctx.clock.clone(), ctx.stats.clone())
            });
            tokio::spawn(driver::run(exporter, ctx))
        }
        ExportKind::File(f) => {
            let prefix = format!("{}-{}", ctx.stream, ctx.name);
            let exporter = span.in_scope(|| file::FileExporter::new(f.clone(), &prefix));
            tokio::spawn(driver::run(exporter, ctx))
        }
        ExportKind::Stdout(_) => tokio::spawn(driver::run(stdout::StdoutExporter::default(), ctx)),
        #[cfg(feature = "mqtt")]
        ExportKind::Mqtt(m) => {
            let connection = ctx.stats.connection.clone().unwrap_or_default();
            let slot = ctx.reconnect_slot();
            let exporter =
                span.in_scope(|| mqtt::MqttExporter::new((**m).clone(), connection, slot));
            tokio::spawn(driver::run(exporter, ctx))
        }
        #[cfg(feature = "kafka")]
        ExportKind::Kafka(k) => {
            let exporter = span.in_scope(|| kafka::KafkaExporter::new((**k).clone()));
            tokio::spawn(driver::run(exporter, ctx))
        }
    }
}

/// Checks what no export can check alone: two MQTT exports with the same `client_id` on one
/// broker (the broker keeps one connection per client id and drops the other: they would take
/// turns, reconnecting all the time).
pub fn check_together(exports: &[(String, &ExportKind)], errs: &mut crate::config::Errors) {
    #[cfg(feature = "mqtt")]
    {
        let mut seen: std::collections::HashMap<(&str, u16, &str), &str> = Default::default();
        for (path, kind) in exports {
            let ExportKind::Mqtt(m) = kind else { continue };
            let key = (m.host.as_str(), m.port, m.client_id.as_str());
            match seen.get(&key) {
                Some(first) => errs.push(
                    format!("{path}.client_id"),
                    format!(
                        "client_id \"{}\" is also used by {first} on {}:{}; a broker keeps one connection per client id and drops the other, so the two would keep reconnecting: give each export its own",
                        m.client_id, m.host, m.port
                    ),
                ),
                None => {
                    seen.insert(key, path.as_str());
                }
            }
        }
    }
    #[cfg(not(feature = "mqtt"))]
    let _ = (exports, errs);
}

impl ExportKind {
    /// Everything the export was started with, for the reload diff: equal text means equal
    /// settings (the derived `Debug` is complete and has no maps; secrets are hashed).
    pub fn fingerprint(&self) -> String {
        let secret = match self {
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(m) => match &m.password {
                Some(secret::Secret::Value(v)) => crate::config::secret_fingerprint(v),
                _ => String::new(),
            },
            #[cfg(feature = "kafka")]
            ExportKind::Kafka(k) => match k.sasl.as_ref().map(|s| &s.password) {
                Some(secret::Secret::Value(v)) => crate::config::secret_fingerprint(v),
                _ => String::new(),
            },
            _ => String::new(),
        };
        format!("{self:?}|secret={secret}")
    }

    /// Fresh counters for an export of this kind (with connection counters where it keeps one).
    pub fn stats(&self) -> stats::ExportStats {
        let connection = match self {
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(_) => Some(Default::default()),
            _ => None,
        };
        stats::ExportStats {
            connection,
            ..Default::default()
        }
    }

    /// The files this export reads (key, path), which must exist when it starts.
    pub fn files(&self) -> Vec<(&'static str, &std::path::Path)> {
        match self {
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(m) => m.tls.as_ref().map(|t| t.files()).unwrap_or_default(),
            #[cfg(feature = "kafka")]
            ExportKind::Kafka(k) => k.tls.as_ref().map(|t| t.files()).unwrap_or_default(),
            #[cfg(any(feature = "kinesis", feature = "firehose"))]
            ExportKind::Aws(a) => {
                let mut files: Vec<(&'static str, &std::path::Path)> =
                    a.ca_file.iter().map(|f| ("ca_file", f.as_path())).collect();
                if let Some(iot) = &a.iot {
                    files.extend(iot.tls.files().into_iter().map(|(key, path)| {
                        (
                            match key {
                                "ca_file" => "iot_credentials.ca_file",
                                "client_cert" => "iot_credentials.client_cert",
                                _ => "iot_credentials.client_key",
                            },
                            path,
                        )
                    }));
                }
                files
            }
            _ => Vec::new(),
        }
    }

    /// The TLS client settings this export reads certificate files for, with the key prefix
    /// they sit under, so that validation can check the files fit together.
    #[cfg(any(feature = "mqtt", feature = "kafka", feature = "aws-common"))]
    pub fn tls_configs(&self) -> Vec<(&'static str, &tls::TlsConfig)> {
        match self {
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(m) => m.tls.iter().map(|t| ("", t)).collect(),
            #[cfg(feature = "kafka")]
            ExportKind::Kafka(k) => k.tls.iter().map(|t| ("", t)).collect(),
            #[cfg(any(feature = "kinesis", feature = "firehose"))]
            ExportKind::Aws(a) => a.iot.iter().map(|i| ("iot_credentials.", &i.tls)).collect(),
            _ => Vec::new(),
        }
    }

    /// Whether a password is written into the config file itself (see `Config::inline_secrets`).
    pub fn has_inline_secret(&self) -> bool {
        match self {
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(m) => m.password.as_ref().is_some_and(|p| p.is_inline()),
            #[cfg(feature = "kafka")]
            ExportKind::Kafka(k) => k.sasl.as_ref().is_some_and(|s| s.password.is_inline()),
            _ => false,
        }
    }

    pub fn kind_name(&self) -> &'static str {
        match self {
            #[cfg(any(feature = "kinesis", feature = "firehose"))]
            ExportKind::Aws(a) => match a.service {
                aws::Service::Kinesis => "kinesis",
                aws::Service::Firehose => "firehose",
            },
            ExportKind::File(_) => "file",
            ExportKind::Stdout(_) => "stdout",
            #[cfg(feature = "mqtt")]
            ExportKind::Mqtt(_) => "mqtt",
            #[cfg(feature = "kafka")]
            ExportKind::Kafka(_) => "kafka",
        }
    }
}
