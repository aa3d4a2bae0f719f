//! Settings of `kind = "opcua"`.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::nodeid::NodeRef;
use crate::config::{Errors, StreamNames};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpcua {
    pub endpoint: String,
    pub security_policy: Option<String>,
    pub security_mode: Option<String>,
    pub username: Option<String>,
    pub password: Option<String>,
    pub user_certificate: Option<String>,
    pub user_private_key: Option<String>,
    pub pki_dir: Option<String>,
    pub trust_on_first_use: Option<bool>,
    pub publishing_interval: Option<String>,
    pub sampling_interval: Option<String>,
    pub queue_size: Option<i64>,
    pub interval: Option<String>,
    pub keep_alive_interval: Option<String>,
    pub request_timeout: Option<String>,
    pub reconnect_min: Option<String>,
    pub reconnect_max: Option<String>,
    pub max_clock_skew: Option<String>,
    #[serde(default)]
    pub tags: Vec<RawOpcuaTag>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawOpcuaTag {
    pub name: String,
    pub node: String,
    pub stream: Option<String>,
    pub mode: Option<String>,
    pub sampling_interval: Option<String>,
    pub queue_size: Option<i64>,
    pub deadband_absolute: Option<f64>,
    pub deadband_percent: Option<f64>,
    pub index: Option<RawIndex>,
}

/// `index`: an integer (one-dimensional arrays) or text with one index per dimension ("1,1").
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawIndex {
    One(i64),
    PerDimension(String),
}

/// The security policies offered (names as in the OPC UA profiles, as the crate reads them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityPolicy {
    None,
    Basic256Sha256,
    Aes128Sha256RsaOaep,
    Aes256Sha256RsaPss,
}

impl SecurityPolicy {
    pub fn as_str(self) -> &'static str {
        match self {
            SecurityPolicy::None => "None",
            SecurityPolicy::Basic256Sha256 => "Basic256Sha256",
            SecurityPolicy::Aes128Sha256RsaOaep => "Aes128_Sha256_RsaOaep",
            SecurityPolicy::Aes256Sha256RsaPss => "Aes256_Sha256_RsaPss",
        }
    }

    /// The policy URI (the crate's short names differ: "Aes128-Sha256-RsaOaep").
    pub fn uri(self) -> String {
        format!(
            "http://opcfoundation.org/UA/SecurityPolicy#{}",
            self.as_str()
        )
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SecurityMode {
    None,
    Sign,
    SignAndEncrypt,
}

/// How the gateway authenticates itself as a user. `Debug` never shows the password.
#[derive(Clone, PartialEq)]
pub enum Identity {
    Anonymous,
    UserName { user: String, password: String },
    Certificate { cert: PathBuf, key: PathBuf },
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Identity::Anonymous => f.write_str("Anonymous"),
            Identity::UserName { user, .. } => write!(f, "UserName({user}, password ***)"),
            Identity::Certificate { cert, key } => f
                .debug_struct("Certificate")
                .field("cert", cert)
                .field("key", key)
                .finish(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Deadband {
    None,
    Absolute(f64),
    Percent(f64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Subscribe,
    Poll,
}

#[derive(Debug, Clone)]
pub struct OpcuaTag {
    pub name: String,
    pub stream: Option<usize>,
    pub node: NodeRef,
    pub mode: Mode,
    pub sampling_interval: Duration,
    pub queue_size: u32,
    pub deadband: Deadband,
    /// One element of an array node, one index per dimension (sent to the server as
    /// IndexRange "1,1").
    pub index: Option<Vec<u32>>,
}

#[derive(Debug, Clone)]
pub struct OpcuaConfig {
    pub endpoint: String,
    pub security_policy: SecurityPolicy,
    pub security_mode: SecurityMode,
    pub identity: Identity,
    /// None: `<gateway.data_dir>/opcua-pki`.
    pub pki_dir: Option<PathBuf>,
    pub trust_on_first_use: bool,
    pub publishing_interval: Duration,
    /// Whether the source sets `sampling_interval` (otherwise it is `publishing_interval`).
    pub sampling_interval_set: bool,
    pub interval: Duration,
    pub keep_alive_interval: Duration,
    pub request_timeout: Duration,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// None: no check of event times ahead of the gateway clock.
    pub max_clock_skew: Option<Duration>,
    pub tags: Vec<OpcuaTag>,
}

/// Upper bound on the tags of one OPC UA source (monitored items of one subscription; servers
/// commonly cap a subscription at a few thousand to tens of thousands of items).
pub const MAX_TAGS: usize = 10_000;
/// Upper bound on a monitored item's server-side queue.
pub const MAX_QUEUE_SIZE: i64 = 10_000;

impl OpcuaConfig {
    /// What the source will do, for `streamgate validate`: the effective sampling (saying when
    /// it is the default, the publishing interval) and polling intervals.
    pub fn summary(&self) -> String {
        use crate::config::units::format_duration as d;
        let subscribed: Vec<&OpcuaTag> = self
            .tags
            .iter()
            .filter(|t| t.mode == Mode::Subscribe)
            .collect();
        let polled = self.tags.len() - subscribed.len();
        let mut parts = Vec::new();
        if let (Some(fastest), Some(slowest)) = (
            subscribed.iter().map(|t| t.sampling_interval).min(),
            subscribed.iter().map(|t| t.sampling_interval).max(),
        ) {
            let one = |x: Duration| {
                if x.is_zero() {
                    "0 (every change)".to_string()
                } else {
                    d(x)
                }
            };
            let sampled = if fastest == slowest {
                one(fastest)
            } else {
                format!("{} to {}", one(fastest), one(slowest))
            };
            let default = if self.sampling_interval_set {
                ""
            } else {
                " (sampling_interval not set: the publishing_interval)"
            };
            parts.push(format!(
                "{} subscribed, sampled every {sampled}{default}, published every {}",
                subscribed.len(),
                d(self.publishing_interval)
            ));
        }
        if polled > 0 {
            parts.push(format!("{polled} polled every {}", d(self.interval)));
        }
        format!("{} tag(s): {}", self.tags.len(), parts.join("; "))
    }
}

impl RawOpcua {
    pub fn validate(&self, path: &str, streams: &StreamNames, errs: &mut Errors) -> OpcuaConfig {
        if !self.endpoint.starts_with("opc.tcp://") || self.endpoint.len() <= "opc.tcp://".len() {
            errs.push(
                format!("{path}.endpoint"),
                format!(
                    "\"{}\" is not an OPC UA endpoint; write it as \"opc.tcp://host:4840\" (with the server's path if it has one)",
                    self.endpoint
                ),
            );
        }
        let security_policy = errs.choice(
            &format!("{path}.security_policy"),
            self.security_policy.as_deref(),
            SecurityPolicy::None,
            &[
                ("None", SecurityPolicy::None),
                ("Basic256Sha256", SecurityPolicy::Basic256Sha256),
                ("Aes128_Sha256_RsaOaep", SecurityPolicy::Aes128Sha256RsaOaep),
                ("Aes256_Sha256_RsaPss", SecurityPolicy::Aes256Sha256RsaPss),
            ],
        );
        let default_mode = if security_policy == SecurityPolicy::None {
            SecurityMode::None
        } else {
            SecurityMode::SignAndEncrypt
        };
        let security_mode = errs.choice(
            &format!("{path}.security_mode"),
            self.security_mode.as_deref(),
            default_mode,
            &[
                ("None", SecurityMode::None),
                ("Sign", SecurityMode::Sign),
                ("SignAndEncrypt", SecurityMode::SignAndEncrypt),
            ],
        );
        match (
            security_policy == SecurityPolicy::None,
            security_mode == SecurityMode::None,
        ) {
            (true, false) => errs.push(
                format!("{path}.security_mode"),
                "Sign and SignAndEncrypt need a security_policy other than \"None\"",
            ),
            (false, true) => errs.push(
                format!("{path}.security_mode"),
                format!(
                    "security_policy \"{}\" needs security_mode \"Sign\" or \"SignAndEncrypt\"",
                    security_policy.as_str()
                ),
            ),
            _ => {}
        }
        let identity = match (
            &self.username,
            &self.password,
            &self.user_certificate,
            &self.user_private_key,
        ) {
            (None, None, None, None) => Identity::Anonymous,
            (Some(user), Some(password), None, None) => Identity::UserName {
                user: user.clone(),
                password: password.clone(),
            },
            (None, None, Some(cert), Some(key)) => Identity::Certificate {
                cert: PathBuf::from(cert),
                key: PathBuf::from(key),
            },
            (Some(_), None, _, _) | (None, Some(_), _, _)
                if self.user_certificate.is_none() && self.user_private_key.is_none() =>
            {
                errs.push(
                    format!("{path}.password"),
                    "username and password go together",
                );
                Identity::Anonymous
            }
            (None, None, _, _) => {
                errs.push(
                    format!("{path}.user_private_key"),
                    "user_certificate (DER or PEM) and user_private_key (PEM) go together",
                );
                Identity::Anonymous
            }
            _ => {
                errs.push(
                    format!("{path}.username"),
                    "choose one identity: username/password or user_certificate/user_private_key (neither = anonymous)",
                );
                Identity::Anonymous
            }
        };
        let d = |errs: &mut Errors, key: &str, v: &Option<String>, default: u64, min: u64| {
            errs.duration(
                &format!("{path}.{key}"),
                v.as_deref(),
                Duration::from_millis(default),
                Duration::from_millis(min),
            )
        };
        let publishing_interval = d(
            errs,
            "publishing_interval",
            &self.publishing_interval,
            1000,
            10,
        );
        let sampling_interval = errs.duration(
            &format!("{path}.sampling_interval"),
            self.sampling_interval.as_deref(),
            publishing_interval,
            Duration::ZERO,
        );
        let queue_size = errs.int(
            &format!("{path}.queue_size"),
            self.queue_size,
            10,
            1,
            MAX_QUEUE_SIZE,
        ) as u32;
        let interval = d(errs, "interval", &self.interval, 1000, 10);
        let keep_alive_interval = d(
            errs,
            "keep_alive_interval",
            &self.keep_alive_interval,
            5000,
            100,
        );
        let request_timeout = d(errs, "request_timeout", &self.request_timeout, 5000, 100);
        let (reconnect_min, reconnect_max) = errs.reconnect_backoff(
            path,
            (self.reconnect_min.as_deref(), self.reconnect_max.as_deref()),
            (Duration::from_secs(1), Duration::from_secs(30)),
            Duration::from_millis(10),
        );
        let max_clock_skew = match errs.duration(
            &format!("{path}.max_clock_skew"),
            self.max_clock_skew.as_deref(),
            Duration::from_secs(300),
            Duration::ZERO,
        ) {
            d if d.is_zero() => None,
            d => Some(d),
        };

        let one = |tpath: &str, t: &RawOpcuaTag, errs: &mut Errors| {
            let tpath = tpath.to_string();
            let node = match t.node.parse::<NodeRef>() {
                Ok(n) => Some(n),
                Err(e) => {
                    errs.push(format!("{tpath}.node"), e);
                    None
                }
            };
            let stream = errs.tag_name_and_stream(&tpath, &t.name, t.stream.as_deref(), streams);
            let mode = errs.choice(
                &format!("{tpath}.mode"),
                t.mode.as_deref(),
                Mode::Subscribe,
                &[("subscribe", Mode::Subscribe), ("poll", Mode::Poll)],
            );
            let deadband = match (t.deadband_absolute, t.deadband_percent) {
                (None, None) => Deadband::None,
                (Some(a), None) if a.is_finite() && a >= 0.0 => Deadband::Absolute(a),
                (None, Some(p)) if p.is_finite() && (0.0..=100.0).contains(&p) => {
                    Deadband::Percent(p)
                }
                (Some(_), Some(_)) => {
                    errs.push(
                        format!("{tpath}.deadband_percent"),
                        "set deadband_absolute or deadband_percent, not both",
                    );
                    Deadband::None
                }
                (Some(a), None) => {
                    errs.push(
                        format!("{tpath}.deadband_absolute"),
                        format!("{a} must be a number of 0 or more"),
                    );
                    Deadband::None
                }
                (None, Some(p)) => {
                    errs.push(
                        format!("{tpath}.deadband_percent"),
                        format!(
                            "{p} must be a number from 0 to 100 (percent of the node's EURange)"
                        ),
                    );
                    Deadband::None
                }
            };
            if mode == Mode::Poll {
                for (key, set) in [
                    ("sampling_interval", t.sampling_interval.is_some()),
                    ("queue_size", t.queue_size.is_some()),
                    ("deadband_absolute", t.deadband_absolute.is_some()),
                    ("deadband_percent", t.deadband_percent.is_some()),
                ] {
                    if set {
                        errs.push(
                            format!("{tpath}.{key}"),
                            "only applies to mode = \"subscribe\"; polled tags are read every `interval` of the source",
                        );
                    }
                }
            }
            let tag_sampling = errs.duration(
                &format!("{tpath}.sampling_interval"),
                t.sampling_interval.as_deref(),
                sampling_interval,
                Duration::ZERO,
            );
            let tag_queue = errs.int(
                &format!("{tpath}.queue_size"),
                t.queue_size,
                i64::from(queue_size),
                1,
                MAX_QUEUE_SIZE,
            ) as u32;
            let index = t.index.as_ref().map(|i| match i {
                RawIndex::One(i) => vec![errs.int(
                    &format!("{tpath}.index"),
                    Some(*i),
                    0,
                    0,
                    i64::from(u32::MAX),
                ) as u32],
                RawIndex::PerDimension(text) => {
                    let parsed: Option<Vec<u32>> = text
                        .split(',')
                        .map(|p| p.trim().parse::<u32>().ok())
                        .collect();
                    match parsed {
                        Some(v) if !v.is_empty() && v.len() <= 8 => v,
                        _ => {
                            errs.push(
                                format!("{tpath}.index"),
                                format!(
                                    "\"{text}\" is not an element: one 0-based index per dimension, separated by commas (\"3\", \"1,1\"), at most 8; ranges (\"1:3\") are not supported, a tag is one value"
                                ),
                            );
                            Vec::new()
                        }
                    }
                }
            });
            node.map(|node| OpcuaTag {
                name: t.name.clone(),
                stream,
                node,
                mode,
                sampling_interval: tag_sampling,
                queue_size: tag_queue,
                deadband,
                index,
            })
        };
        let tags = crate::readers::validate_tags(
            path,
            &self.tags,
            MAX_TAGS,
            "an OPC UA source",
            |t| &t.name,
            errs,
            one,
        );
        OpcuaConfig {
            endpoint: self.endpoint.clone(),
            security_policy,
            security_mode,
            identity,
            pki_dir: self.pki_dir.as_ref().map(PathBuf::from),
            trust_on_first_use: self.trust_on_first_use.unwrap_or(false),
            publishing_interval,
            sampling_interval_set: self.sampling_interval.is_some(),
            interval,
            keep_alive_interval,
            request_timeout,
            reconnect_min,
            reconnect_max,
            max_clock_skew,
            tags,
        }
    }
}
