//! `kind = "kafka"` keys: raw (serde) -> validated [`KafkaExportConfig`], every problem with its
//! key path. The partition key, the topic template, TLS and the password keep the names and
//! meanings they have in the Kinesis and MQTT exports.

use std::time::Duration;

use serde::Deserialize;

use super::partition::valid_topic_literal;
use crate::config::Errors;
use crate::exporters::Limits;
use crate::exporters::secret::Secret;
use crate::exporters::template::{Field, KeyTemplate, Template};
use crate::exporters::tls::{RawTls, TlsConfig};

/// Sends in flight per export, as for Kinesis (Apache Kafka's own producer allows 5 per
/// connection); with 4 the export kept up at 50,000 samples/s to a local broker
/// (docs/kafka.md, benches/kafka_vs_mqtt).
pub const DEFAULT_IN_FLIGHT_REQUESTS: usize = 4;
pub const MAX_IN_FLIGHT_REQUESTS: usize = 16;
/// Records per send: one produce request per partition they fall on.
pub const DEFAULT_BATCH_SIZE: usize = 1_000;
pub const MAX_BATCH_SIZE: usize = 10_000;
/// Bytes per send: at most Apache Kafka's default `message.max.bytes` (1 MiB + 12 B), the
/// largest record batch a broker takes unless the topic allows more, so a send's batch for one
/// partition is never refused for its size as a whole.
pub const MAX_BATCH_BYTES: u64 = 1 << 20;
/// How long one produce (or metadata) request may take, with the client's own retries inside
/// it (leader moved, reconnects), before its records are retried by the export: a healthy
/// cluster answers in milliseconds, and a broker that is gone shows in `status` within this.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// A Kafka topic name: at most 249 characters of `[a-zA-Z0-9._-]`.
pub const MAX_TOPIC_CHARS: usize = 249;
/// Longest message key sent (a longer rendered key is cut, stable per key).
pub const MAX_KEY_CHARS: usize = 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKafkaExport {
    pub bootstrap_servers: Vec<String>,
    pub topic: String,
    pub partition_key: Option<String>,
    pub acks: Option<String>,
    pub compression: Option<String>,
    pub client_id: Option<String>,
    pub request_timeout: Option<String>,
    pub tls: Option<bool>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub sasl_mechanism: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
}

/// Record batch compression (Kafka's `compression.type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SaslMechanism {
    Plain,
    ScramSha256,
    ScramSha512,
}

impl SaslMechanism {
    pub fn name(self) -> &'static str {
        match self {
            SaslMechanism::Plain => "PLAIN",
            SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
            SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Sasl {
    pub mechanism: SaslMechanism,
    pub username: String,
    pub password: Secret,
}

#[derive(Debug, Clone)]
pub struct KafkaExportConfig {
    /// `host:port` of the brokers asked first for the cluster's metadata.
    pub bootstrap_servers: Vec<String>,
    pub topic: Template,
    pub partition_key: KeyTemplate,
    pub compression: Compression,
    pub client_id: String,
    pub request_timeout: Duration,
    pub tls: Option<TlsConfig>,
    pub sasl: Option<Sasl>,
}

impl RawKafkaExport {
    pub fn limits(&self) -> Limits {
        Limits {
            max_batch_size: MAX_BATCH_SIZE,
            default_batch_size: DEFAULT_BATCH_SIZE,
            max_batch_bytes: MAX_BATCH_BYTES,
            default_batch_interval: Duration::from_millis(200),
            max_in_flight_requests: MAX_IN_FLIGHT_REQUESTS,
            default_in_flight_requests: DEFAULT_IN_FLIGHT_REQUESTS,
        }
    }

    pub fn validate(&self, path: &str, errs: &mut Errors) -> KafkaExportConfig {
        let servers_path = format!("{path}.bootstrap_servers");
        if self.bootstrap_servers.is_empty() {
            errs.push(
                &servers_path,
                "must name at least one broker as \"host:port\"",
            );
        }
        for (i, s) in self.bootstrap_servers.iter().enumerate() {
            if let Err(problem) = check_host_port(s) {
                errs.push(format!("{servers_path}[{i}]"), problem);
            }
        }
        let topic_path = format!("{path}.topic");
        let fields = [Field::SourceId, Field::EquipmentId, Field::Tag];
        let topic = match Template::parse(&self.topic, &fields) {
            Ok(t) => {
                let literal = t.literal();
                if literal.is_empty() {
                    errs.push(&topic_path, "must not be empty");
                } else if let Err(problem) = valid_topic_literal(&literal, t.placeholders() > 0) {
                    errs.push(&topic_path, problem);
                }
                t
            }
            Err(problems) => {
                for p in problems {
                    errs.push(&topic_path, p);
                }
                Template::fixed("invalid")
            }
        };
        let partition_key = match self.partition_key.as_deref() {
            None | Some("random") => KeyTemplate::Random,
            Some("none") => KeyTemplate::None,
            Some(t) => KeyTemplate::parse(t).unwrap_or_else(|problems| {
                for p in problems {
                    errs.push(format!("{path}.partition_key"), p);
                }
                KeyTemplate::Random
            }),
        };
        if let Some(acks) = self.acks.as_deref()
            && acks != "all"
        {
            errs.push(
                format!("{path}.acks"),
                format!(
                    "\"{acks}\" is not supported: only \"all\" (the leader answers once every in-sync replica has the batch); with 1 or 0 a broker failure loses samples the gateway already deleted"
                ),
            );
        }
        let compression = errs.choice(
            &format!("{path}.compression"),
            self.compression.as_deref(),
            Compression::None,
            &[
                ("none", Compression::None),
                ("gzip", Compression::Gzip),
                ("snappy", Compression::Snappy),
                ("lz4", Compression::Lz4),
                ("zstd", Compression::Zstd),
            ],
        );
        let client_id = self
            .client_id
            .clone()
            .unwrap_or_else(|| "streamgate".into());
        if client_id.is_empty() {
            errs.push(format!("{path}.client_id"), "must not be empty");
        }
        let request_timeout = errs.duration(
            &format!("{path}.request_timeout"),
            self.request_timeout.as_deref(),
            DEFAULT_REQUEST_TIMEOUT,
            Duration::from_secs(1),
        );
        let tls = RawTls {
            ca_file: self.ca_file.as_ref(),
            client_cert: self.client_cert.as_ref(),
            client_key: self.client_key.as_ref(),
            alpn: None,
        }
        .validate(path, self.tls.unwrap_or(false), errs);
        let password = Secret::validate(
            path,
            self.password.as_ref(),
            self.password_env.as_ref(),
            self.username.as_ref(),
            errs,
        );
        let mechanism = self.sasl_mechanism.as_deref().map(|m| {
            errs.choice(
                &format!("{path}.sasl_mechanism"),
                Some(m),
                SaslMechanism::Plain,
                &[
                    ("plain", SaslMechanism::Plain),
                    ("scram-sha-256", SaslMechanism::ScramSha256),
                    ("scram-sha-512", SaslMechanism::ScramSha512),
                ],
            )
        });
        let sasl = match (mechanism, &self.username, password) {
            (Some(mechanism), Some(username), Some(password)) => Some(Sasl {
                mechanism,
                username: username.clone(),
                password,
            }),
            (Some(_), _, None) => {
                errs.push(
                    format!("{path}.sasl_mechanism"),
                    "needs username and password (or password_env)",
                );
                None
            }
            (None, Some(_), _) => {
                errs.push(
                    format!("{path}.username"),
                    "needs sasl_mechanism (\"plain\", \"scram-sha-256\" or \"scram-sha-512\")",
                );
                None
            }
            _ => None,
        };
        KafkaExportConfig {
            bootstrap_servers: self.bootstrap_servers.clone(),
            topic,
            partition_key,
            compression,
            client_id,
            request_timeout,
            tls,
            sasl,
        }
    }
}

/// `host:port` with a port in 1..=65535.
fn check_host_port(s: &str) -> Result<(), String> {
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(format!(
            "\"{s}\" has no port: write \"host:port\" (Kafka listens on 9092, MSK on 9092/9094/9096)"
        ));
    };
    if host.is_empty() {
        return Err(format!("\"{s}\" has no host"));
    }
    match port.parse::<u16>() {
        Ok(p) if p > 0 => Ok(()),
        _ => Err(format!("\"{s}\": \"{port}\" is not a port (1..65535)")),
    }
}

#[cfg(test)]
mod tests {
    use crate::app::config::{ConfigError, parse};
    use crate::exporters::ExportKind;

    fn with_export(keys: &str) -> Result<crate::app::config::Config, Vec<ConfigError>> {
        parse(&format!(
            "[gateway]\ndata_dir = \"/tmp/x\"\n[[streams]]\nname = \"s\"\n[[streams.exports]]\nkind = \"kafka\"\n{keys}\n"
        ))
    }

    fn errors(keys: &str) -> Vec<String> {
        with_export(keys)
            .expect_err("invalid")
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    #[test]
    fn a_minimal_export_gets_the_defaults() {
        let c = with_export("bootstrap_servers = [\"k1:9092\"]\ntopic = \"line\"").unwrap();
        let ExportKind::Kafka(k) = &c.streams[0].exports[0].kind else {
            panic!("kafka")
        };
        assert_eq!(k.bootstrap_servers, ["k1:9092"]);
        assert_eq!(k.client_id, "streamgate");
        assert_eq!(k.compression, super::Compression::None);
        assert_eq!(
            k.partition_key,
            crate::exporters::template::KeyTemplate::Random
        );
        assert!(k.tls.is_none() && k.sasl.is_none());
        let e = &c.streams[0].exports[0];
        assert_eq!(e.batch.max_in_flight, super::DEFAULT_IN_FLIGHT_REQUESTS);
        assert_eq!(e.batch.max_records, super::DEFAULT_BATCH_SIZE);
    }

    #[test]
    fn every_error_with_its_path() {
        let e = errors(
            r#"bootstrap_servers = ["k1", "k2:0", ":9092"]
topic = "lines/{tag}"
acks = "1"
compression = "brotli"
partition_key = "{nope}"
sasl_mechanism = "scram-sha-256"
ca_file = "/x.pem""#,
        );
        let joined = e.join("\n");
        for needle in [
            "streams[0].exports[0].bootstrap_servers[0]: \"k1\" has no port",
            "streams[0].exports[0].bootstrap_servers[1]: \"k2:0\": \"0\" is not a port",
            "streams[0].exports[0].bootstrap_servers[2]: \":9092\" has no host",
            "streams[0].exports[0].topic: ",
            "streams[0].exports[0].acks: \"1\" is not supported",
            "streams[0].exports[0].compression: ",
            "streams[0].exports[0].partition_key: ",
            "streams[0].exports[0].sasl_mechanism: needs username and password",
            "streams[0].exports[0].ca_file: needs tls = true",
        ] {
            assert!(joined.contains(needle), "missing {needle:?} in:\n{joined}");
        }
    }

    #[test]
    fn sasl_and_tls_together() {
        let c = with_export(
            r#"bootstrap_servers = ["b-1.msk.example:9096"]
topic = "line-{equipmentId}"
tls = true
sasl_mechanism = "scram-sha-512"
username = "gw"
password_env = "KAFKA_PASSWORD"
compression = "zstd"
partition_key = "{equipmentId}/{tag}""#,
        )
        .unwrap();
        let ExportKind::Kafka(k) = &c.streams[0].exports[0].kind else {
            panic!("kafka")
        };
        let sasl = k.sasl.as_ref().unwrap();
        assert_eq!(sasl.mechanism, super::SaslMechanism::ScramSha512);
        assert_eq!(format!("{:?}", sasl.password), "Secret(env KAFKA_PASSWORD)");
        assert!(k.tls.is_some());
        assert_eq!(k.compression, super::Compression::Zstd);
    }

    #[test]
    fn a_username_without_a_mechanism_is_refused() {
        let e = errors(
            "bootstrap_servers = [\"k:9092\"]\ntopic = \"t\"\nusername = \"u\"\npassword = \"p\"",
        );
        assert!(
            e.iter()
                .any(|m| m.contains("username: needs sasl_mechanism")),
            "{e:?}"
        );
    }
}
