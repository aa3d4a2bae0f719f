//! `kind = "mqtt"` keys: raw (serde) -> validated [`MqttExportConfig`], every problem with
//! its key path. AWS IoT Core's limits are named constants, applied when `aws_iot = true`.

use std::time::Duration;

use serde::Deserialize;

use super::topic::{
    AWS_IOT_MAX_TOPIC_BYTES, AWS_IOT_MAX_TOPIC_SLASHES, MQTT_MAX_TOPIC_BYTES, TopicTemplate,
};
use crate::config::Errors;
pub use crate::exporters::secret::Secret;
use crate::exporters::tls::RawTls;
pub use crate::exporters::tls::TlsConfig;

/// AWS IoT Core: at most 128 KiB per publish payload.
pub const AWS_IOT_MAX_PAYLOAD: u64 = 128 * 1024;
/// AWS IoT Core: at most 100 unacknowledged QoS 1 publishes per client.
pub const AWS_IOT_MAX_IN_FLIGHT: u16 = 100;
/// AWS IoT Core: at most 100 publishes per second per connection.
pub const AWS_IOT_MAX_PUBLISH_RATE: u64 = 100;
/// AWS IoT Core: at most 512 KiB per second per connection.
pub const AWS_IOT_MAX_BYTES_PER_SECOND: u64 = 512 * 1024;
/// AWS IoT Core: a client id is at most 128 bytes.
pub const AWS_IOT_MAX_CLIENT_ID: usize = 128;
/// AWS IoT Core: keep-alive between 30 s and 1200 s.
pub const AWS_IOT_KEEP_ALIVE: (Duration, Duration) =
    (Duration::from_secs(30), Duration::from_secs(1200));
/// AWS IoT Core: 1 CONNECT per second per client id, so never reconnect faster.
pub const AWS_IOT_MIN_RECONNECT: Duration = Duration::from_secs(1);
/// MQTT 3.1.1: the remaining length of a packet is at most 268,435,455 bytes.
pub const MQTT_MAX_PAYLOAD: u64 = 268_435_455 - MQTT_MAX_TOPIC_BYTES as u64 - 16;
/// Default payload limit: AWS IoT Core's, which most brokers accept.
pub const DEFAULT_MAX_PAYLOAD: u64 = AWS_IOT_MAX_PAYLOAD;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMqttExport {
    pub host: String,
    pub port: Option<i64>,
    pub client_id: String,
    pub topic: String,
    pub protocol: Option<String>,
    pub qos: Option<i64>,
    pub keep_alive: Option<String>,
    pub clean_session: Option<bool>,
    pub max_in_flight: Option<i64>,
    pub ack_timeout: Option<String>,
    pub connect_timeout: Option<String>,
    pub reconnect_min: Option<String>,
    pub reconnect_max: Option<String>,
    pub payload: Option<String>,
    pub max_payload_size: Option<String>,
    pub publish_rate: Option<i64>,
    pub publish_bandwidth: Option<String>,
    pub aws_iot: Option<bool>,
    pub tls: Option<bool>,
    pub ca_file: Option<String>,
    pub client_cert: Option<String>,
    pub client_key: Option<String>,
    pub alpn: Option<Vec<String>>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub password_env: Option<String>,
}

/// One sample per message, or samples packed as newline-delimited JSON.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Packing {
    Sample,
    Ndjson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Qos {
    AtMostOnce,
    AtLeastOnce,
}

#[derive(Debug, Clone)]
pub struct MqttExportConfig {
    pub host: String,
    pub port: u16,
    pub client_id: String,
    pub topic: TopicTemplate,
    pub qos: Qos,
    pub keep_alive: Duration,
    pub clean_session: bool,
    pub max_in_flight: u16,
    pub ack_timeout: Duration,
    pub connect_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    pub packing: Packing,
    pub max_payload: usize,
    pub publish_rate: Option<u64>,
    pub publish_bandwidth: Option<u64>,
    pub aws_iot: bool,
    pub tls: Option<TlsConfig>,
    pub username: Option<String>,
    pub password: Option<Secret>,
}

impl RawMqttExport {
    pub fn validate(&self, path: &str, errs: &mut Errors) -> MqttExportConfig {
        let aws = self.aws_iot.unwrap_or(false);
        let tls_on = self.tls.unwrap_or(aws);
        if self.host.trim().is_empty() {
            errs.push(format!("{path}.host"), "must not be empty");
        }
        let port = errs.int(
            &format!("{path}.port"),
            self.port,
            if tls_on { 8883 } else { 1883 },
            1,
            65_535,
        ) as u16;
        if self.client_id.is_empty() {
            errs.push(format!("{path}.client_id"), "must not be empty");
        } else if aws && self.client_id.len() > AWS_IOT_MAX_CLIENT_ID {
            errs.push(
                format!("{path}.client_id"),
                format!(
                    "{} bytes is above AWS IoT Core's limit of {AWS_IOT_MAX_CLIENT_ID}",
                    self.client_id.len()
                ),
            );
        } else if self.client_id.len() > MQTT_MAX_TOPIC_BYTES {
            errs.push(format!("{path}.client_id"), "is too long");
        }
        let topic = match TopicTemplate::parse(&self.topic) {
            Ok(t) => {
                let lit = t.literal();
                if aws && lit.len() > AWS_IOT_MAX_TOPIC_BYTES {
                    errs.push(
                        format!("{path}.topic"),
                        format!("is above AWS IoT Core's limit of {AWS_IOT_MAX_TOPIC_BYTES} bytes before any field is filled in"),
                    );
                }
                let slashes = lit.matches('/').count();
                if aws && slashes > AWS_IOT_MAX_TOPIC_SLASHES {
                    errs.push(
                        format!("{path}.topic"),
                        format!("has {slashes} slashes, above AWS IoT Core's limit of {AWS_IOT_MAX_TOPIC_SLASHES}"),
                    );
                }
                if aws && self.topic.starts_with('$') {
                    errs.push(
                        format!("{path}.topic"),
                        "must not start with '$' (reserved by AWS IoT Core)",
                    );
                }
                t
            }
            Err(problems) => {
                for p in problems {
                    errs.push(format!("{path}.topic"), p);
                }
                TopicTemplate::fixed("invalid")
            }
        };
        if let Some(p) = &self.protocol
            && p != "3.1.1"
        {
            errs.push(
                format!("{path}.protocol"),
                format!("\"{p}\" is not supported; only \"3.1.1\" (MQTT 5 is not implemented)"),
            );
        }
        let qos = match self.qos {
            None | Some(1) => Qos::AtLeastOnce,
            Some(0) => Qos::AtMostOnce,
            Some(2) => {
                errs.push(
                    format!("{path}.qos"),
                    "QoS 2 is not supported (nor by AWS IoT Core); use 1",
                );
                Qos::AtLeastOnce
            }
            Some(n) => {
                errs.push(format!("{path}.qos"), format!("{n} is not 0 or 1"));
                Qos::AtLeastOnce
            }
        };
        let keep_alive_path = format!("{path}.keep_alive");
        let keep_alive = errs.duration(
            &keep_alive_path,
            self.keep_alive.as_deref(),
            Duration::from_secs(30),
            Duration::from_secs(5),
        );
        if keep_alive.subsec_nanos() != 0 {
            errs.push(&keep_alive_path, "must be whole seconds");
        } else if keep_alive > Duration::from_secs(u16::MAX as u64) {
            errs.push(&keep_alive_path, "is above MQTT's limit of 65535 s");
        } else if aws && !(AWS_IOT_KEEP_ALIVE.0..=AWS_IOT_KEEP_ALIVE.1).contains(&keep_alive) {
            errs.push(
                &keep_alive_path,
                "AWS IoT Core accepts keep-alive between 30s and 1200s",
            );
        }
        let max_in_flight_limit = if aws {
            AWS_IOT_MAX_IN_FLIGHT as i64
        } else {
            u16::MAX as i64
        };
        let max_in_flight = errs.int(
            &format!("{path}.max_in_flight"),
            self.max_in_flight,
            AWS_IOT_MAX_IN_FLIGHT as i64,
            1,
            max_in_flight_limit,
        ) as u16;
        let ack_timeout = errs.duration(
            &format!("{path}.ack_timeout"),
            self.ack_timeout.as_deref(),
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
        let connect_timeout_path = format!("{path}.connect_timeout");
        let connect_timeout = errs.duration(
            &connect_timeout_path,
            self.connect_timeout.as_deref(),
            Duration::from_secs(10),
            Duration::from_secs(1),
        );
        if connect_timeout.subsec_nanos() != 0 {
            errs.push(&connect_timeout_path, "must be whole seconds");
        }
        let min_reconnect = if aws {
            AWS_IOT_MIN_RECONNECT
        } else {
            Duration::from_millis(10)
        };
        let (reconnect_min, reconnect_max) = errs.reconnect_backoff(
            path,
            (self.reconnect_min.as_deref(), self.reconnect_max.as_deref()),
            (
                min_reconnect.max(Duration::from_millis(200)),
                Duration::from_secs(2),
            ),
            min_reconnect,
        );
        let packing = errs.choice(
            &format!("{path}.payload"),
            self.payload.as_deref(),
            Packing::Sample,
            &[("sample", Packing::Sample), ("ndjson", Packing::Ndjson)],
        );
        let max_payload = errs.size(
            &format!("{path}.max_payload_size"),
            self.max_payload_size.as_deref(),
            DEFAULT_MAX_PAYLOAD,
            1024,
            if aws {
                AWS_IOT_MAX_PAYLOAD
            } else {
                MQTT_MAX_PAYLOAD
            },
        ) as usize;
        let publish_rate = match self.publish_rate {
            None if aws => Some(AWS_IOT_MAX_PUBLISH_RATE),
            None => None,
            Some(n) => Some(errs.int(
                &format!("{path}.publish_rate"),
                Some(n),
                1,
                1,
                if aws {
                    AWS_IOT_MAX_PUBLISH_RATE as i64
                } else {
                    i64::MAX
                },
            ) as u64),
        };
        let publish_bandwidth = match &self.publish_bandwidth {
            None if aws => Some(AWS_IOT_MAX_BYTES_PER_SECOND),
            None => None,
            Some(v) => Some(errs.size(
                &format!("{path}.publish_bandwidth"),
                Some(v),
                1024,
                1024,
                if aws {
                    AWS_IOT_MAX_BYTES_PER_SECOND
                } else {
                    u64::MAX
                },
            )),
        };
        if let Some(bw) = publish_bandwidth
            && (bw as usize) < max_payload
            && self.publish_bandwidth.is_some()
        {
            errs.push(
                format!("{path}.publish_bandwidth"),
                "must be at least max_payload_size per second",
            );
        }

        let tls = RawTls {
            ca_file: self.ca_file.as_ref(),
            client_cert: self.client_cert.as_ref(),
            client_key: self.client_key.as_ref(),
            alpn: self.alpn.as_ref(),
        }
        .validate(path, tls_on, errs);
        if aws && !tls_on {
            errs.push(
                format!("{path}.tls"),
                "AWS IoT Core only accepts TLS connections",
            );
        }
        if aws && tls.as_ref().is_some_and(|t| t.client_auth.is_none()) && self.username.is_none() {
            errs.push(
                format!("{path}.client_cert"),
                "AWS IoT Core needs a client certificate (mutual TLS) or a username for a custom authorizer",
            );
        }
        let password = Secret::validate(
            path,
            self.password.as_ref(),
            self.password_env.as_ref(),
            self.username.as_ref(),
            errs,
        );
        MqttExportConfig {
            host: self.host.clone(),
            port,
            client_id: self.client_id.clone(),
            topic,
            qos,
            keep_alive,
            clean_session: self.clean_session.unwrap_or(false),
            max_in_flight,
            ack_timeout,
            connect_timeout,
            reconnect_min,
            reconnect_max,
            packing,
            max_payload,
            publish_rate,
            publish_bandwidth,
            aws_iot: aws,
            tls,
            username: self.username.clone(),
            password,
        }
    }
}

#[cfg(test)]
mod tests {
    use crate::app::config::{ConfigError, parse};
    use crate::exporters::ExportKind;

    fn with_export(keys: &str) -> Result<crate::app::config::Config, Vec<ConfigError>> {
        parse(&format!(
            "[gateway]\ndata_dir = \"/tmp/x\"\n[[streams]]\nname = \"s\"\n[[streams.exports]]\nkind = \"mqtt\"\n{keys}\n"
        ))
    }

    fn mqtt(keys: &str) -> super::MqttExportConfig {
        let cfg = with_export(keys).unwrap_or_else(|e| panic!("{e:?}"));
        match &cfg.streams[0].exports[0].kind {
            ExportKind::Mqtt(m) => (**m).clone(),
            _ => panic!("not mqtt"),
        }
    }

    fn errors(keys: &str) -> Vec<String> {
        with_export(keys)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect()
    }

    const BASE: &str = "host = \"b\"\nclient_id = \"c\"\ntopic = \"t/{tag}\"";

    #[test]
    fn defaults() {
        let m = mqtt(BASE);
        assert_eq!(m.port, 1883);
        assert_eq!(m.qos, super::Qos::AtLeastOnce);
        assert!(!m.clean_session);
        assert_eq!(m.max_in_flight, 100);
        assert_eq!(m.max_payload, 128 * 1024);
        assert_eq!(m.publish_rate, None);
        assert!(m.tls.is_none());
    }

    #[test]
    fn aws_iot_limits_and_defaults() {
        let m = mqtt(&format!(
            "{BASE}\naws_iot = true\nclient_cert = \"c.pem\"\nclient_key = \"k.pem\""
        ));
        assert_eq!(m.port, 8883);
        assert!(m.tls.is_some());
        assert_eq!(m.publish_rate, Some(100));
        assert_eq!(m.publish_bandwidth, Some(512 * 1024));
        let errs = errors(
            "host = \"b\"\nclient_id = \"c\"\ntopic = \"a/b/c/d/e/f/g/h/{tag}\"\naws_iot = true\ntls = false\nmax_in_flight = 1000\nmax_payload_size = \"256KiB\"\npublish_rate = 500\nkeep_alive = \"10s\"\nqos = 2",
        );
        for want in [
            "streams[0].exports[0].topic: has 8 slashes",
            "streams[0].exports[0].max_in_flight: 1000 is above the limit of 100",
            "streams[0].exports[0].max_payload_size: 256KiB is above",
            "streams[0].exports[0].publish_rate: 500 is above the limit of 100",
            "streams[0].exports[0].keep_alive: AWS IoT Core accepts",
            "streams[0].exports[0].tls: AWS IoT Core only accepts TLS",
            "streams[0].exports[0].qos: QoS 2",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
    }

    #[test]
    fn every_problem_with_its_path() {
        let errs = errors(
            "host = \"\"\nclient_id = \"\"\ntopic = \"t/{nope}/#\"\nca_file = \"ca.pem\"\nclient_key = \"k\"\npassword = \"p\"\nprotocol = \"5\"\npayload = \"csv\"",
        );
        for want in [
            "streams[0].exports[0].host",
            "streams[0].exports[0].client_id",
            "streams[0].exports[0].topic: unknown placeholder {nope}",
            "streams[0].exports[0].topic: must not contain the wildcards",
            "streams[0].exports[0].ca_file: needs tls = true",
            "streams[0].exports[0].client_cert: is required with client_key",
            "streams[0].exports[0].username: is required when a password is set",
            "streams[0].exports[0].protocol",
            "streams[0].exports[0].payload",
        ] {
            assert!(
                errs.iter().any(|e| e.starts_with(want)),
                "missing {want:?} in {errs:#?}"
            );
        }
        assert!(
            errors(&format!("{BASE}\nunknown_key = 1"))
                .iter()
                .any(|e| e.contains("unknown_key"))
        );
        assert!(
            errors(&format!("{BASE}\nbatch_size = 20000"))
                .iter()
                .any(|e| e.contains("batch_size"))
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let m = mqtt(&format!(
            "{BASE}\nusername = \"u\"\npassword = \"hunter2-secret\""
        ));
        let shown = format!("{m:?}");
        assert!(!shown.contains("hunter2-secret"), "{shown}");
        assert!(shown.contains("***"));
    }
}
