//! AWS credentials from the gateway's own X.509 certificate: the AWS IoT credentials provider
//! (`https://<endpoint>/role-aliases/<alias>/credentials`, mutual TLS, the thing name in
//! `x-amzn-iot-thingname`) answers with a temporary access key, secret, session token and
//! expiration. No long-lived key sits on the gateway.
//!
//! [`IotCredentials`] is the Kinesis / Firehose client's credentials provider: it keeps the
//! current credentials in memory and fetches new ones when [`Refresh`] says so (at 70-80 % of
//! their lifetime, jittered). A failed refresh is retried with backoff while the old
//! credentials still hold; only when none are valid does a call fail (the export then waits
//! with its backlog). [`Refresh`] and the parsing are pure and unit-tested; the one HTTPS GET is
//! [`fetch`].

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use aws_credential_types::Credentials;
use aws_credential_types::provider::{self, ProvideCredentials, error::CredentialsError};
use serde::Deserialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Errors;
use crate::exporters::tls::{RawTls, TlsConfig};

/// Credentials are used until this long before they expire, never closer.
const SAFETY_MARGIN: Duration = Duration::from_secs(5);
/// One fetch (connect, TLS, answer) at most.
const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// Retries of a failed refresh: from 1 s doubling up to this.
const MAX_RETRY: Duration = Duration::from_secs(60);
/// Largest answer read from the provider.
const MAX_ANSWER: usize = 64 * 1024;

/// `[streams.exports.iot_credentials]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIotCredentials {
    pub endpoint: String,
    pub role_alias: String,
    pub thing_name: String,
    pub client_cert: String,
    pub client_key: String,
    pub ca_file: Option<String>,
}

#[derive(Debug, Clone)]
pub struct IotConfig {
    /// Host name of the account's credentials endpoint (`aws iot describe-endpoint
    /// --endpoint-type iot:CredentialProvider`).
    pub host: String,
    pub port: u16,
    pub role_alias: String,
    pub thing_name: String,
    /// Client certificate and key (mutual TLS), and the CA that signs the endpoint's certificate.
    pub tls: TlsConfig,
}

impl RawIotCredentials {
    pub fn validate(&self, path: &str, errs: &mut Errors) -> IotConfig {
        let endpoint = self
            .endpoint
            .trim_start_matches("https://")
            .trim_end_matches('/');
        let (host, port) = match endpoint.rsplit_once(':') {
            Some((h, p)) => match p.parse::<u16>() {
                Ok(p) if p > 0 => (h.to_string(), p),
                _ => {
                    errs.push(format!("{path}.endpoint"), format!("\"{p}\" is not a port"));
                    (h.to_string(), 443)
                }
            },
            None => (endpoint.to_string(), 443),
        };
        if host.is_empty() || host.contains('/') {
            errs.push(
                format!("{path}.endpoint"),
                "must be the credentials endpoint's host name (aws iot describe-endpoint --endpoint-type iot:CredentialProvider), e.g. \"c2abc123.credentials.iot.eu-west-1.amazonaws.com\"",
            );
        }
        for (key, value) in [
            ("role_alias", &self.role_alias),
            ("thing_name", &self.thing_name),
        ] {
            if value.is_empty() {
                errs.push(format!("{path}.{key}"), "must not be empty");
            } else if value.contains(['/', ' ', '\r', '\n']) {
                errs.push(
                    format!("{path}.{key}"),
                    "must not contain '/', spaces or line breaks",
                );
            }
        }
        let tls = RawTls {
            ca_file: self.ca_file.as_ref(),
            client_cert: Some(&self.client_cert),
            client_key: Some(&self.client_key),
            alpn: None,
        }
        .validate(path, true, errs)
        .expect("TLS on");
        IotConfig {
            host,
            port,
            role_alias: self.role_alias.clone(),
            thing_name: self.thing_name.clone(),
            tls,
        }
    }
}

/// Temporary credentials as the provider gave them.
#[derive(Clone, PartialEq, Eq)]
pub struct Fetched {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: String,
    pub expiration: SystemTime,
}

impl std::fmt::Debug for Fetched {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "Fetched({}, expires {:?})",
            self.access_key_id, self.expiration
        )
    }
}

#[derive(Deserialize)]
struct Answer {
    credentials: AnswerCredentials,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct AnswerCredentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: String,
    expiration: String,
}

/// The JSON body of a 200 answer.
pub fn parse_credentials(body: &[u8]) -> Result<Fetched, String> {
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the answer is not the credentials JSON AWS documents ({e})"))?;
    let c = a.credentials;
    let expiration = aws_smithy_types::DateTime::from_str(
        &c.expiration,
        aws_smithy_types::date_time::Format::DateTime,
    )
    .ok()
    .and_then(|d| SystemTime::try_from(d).ok())
    .ok_or_else(|| format!("expiration \"{}\" is not an RFC 3339 time", c.expiration))?;
    if c.access_key_id.is_empty() || c.secret_access_key.is_empty() || c.session_token.is_empty() {
        return Err("the answer has an empty access key, secret or session token".into());
    }
    Ok(Fetched {
        access_key_id: c.access_key_id,
        secret_access_key: c.secret_access_key,
        session_token: c.session_token,
        expiration,
    })
}

/// Status code and body of an HTTP/1.1 answer read to its end (`Connection: close`),
/// with `Content-Length` or chunked transfer encoding.
pub fn parse_http(raw: &[u8]) -> Result<(u16, Vec<u8>), String> {
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .ok_or("the answer has no complete HTTP header")?;
    let head = std::str::from_utf8(&raw[..end]).map_err(|_| "the HTTP header is not text")?;
    let mut lines = head.split("\r\n");
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|c| c.parse::<u16>().ok())
        .ok_or("the answer has no HTTP status line")?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "content-length" {
            length = value.parse::<usize>().ok();
        } else if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let mut body = &raw[end + 4..];
    if chunked {
        let mut out = Vec::new();
        loop {
            let line_end = body
                .windows(2)
                .position(|w| w == b"\r\n")
                .ok_or("a chunk size line is cut")?;
            let size_text = std::str::from_utf8(&body[..line_end]).map_err(|_| "bad chunk size")?;
            let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
                .map_err(|_| "bad chunk size")?;
            body = &body[line_end + 2..];
            if size == 0 {
                break;
            }
            if body.len() < size {
                return Err("a chunk is cut".into());
            }
            out.extend_from_slice(&body[..size]);
            body = body.get(size + 2..).unwrap_or(&[]);
        }
        return Ok((status, out));
    }
    if let Some(n) = length {
        if body.len() < n {
            return Err("the body is shorter than its Content-Length".into());
        }
        body = &body[..n];
    }
    Ok((status, body.to_vec()))
}

/// When to fetch: a pure state machine over the time, tested without I/O.
#[derive(Debug, Clone, Default)]
pub struct Refresh {
    held: Option<Held>,
    /// No fetch before this (after a failed one).
    retry_at: Option<SystemTime>,
    failures: u32,
    /// Since when a refresh is under way while the held credentials are still good: use them
    /// meanwhile. Stale after a fetch's timeout (a refresh whose caller was cancelled).
    refreshing: Option<SystemTime>,
}

#[derive(Debug, Clone)]
struct Held {
    fetched: Fetched,
    refresh_at: SystemTime,
}

/// What [`Refresh::decide`] says to do now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Use these (no fetch).
    Use(Fetched),
    /// Fetch; if it fails, use these meanwhile (still valid).
    FetchOrUse(Fetched),
    /// Fetch; there is nothing valid to fall back on.
    Fetch,
    /// Nothing valid, and the last fetch failed too recently to try again.
    Wait,
}

impl Refresh {
    /// `jitter` in 0.0..1.0 places the refresh between 70 % and 80 % of the lifetime.
    pub fn fetched(&mut self, now: SystemTime, fetched: Fetched, jitter: f64) {
        let lifetime = fetched.expiration.duration_since(now).unwrap_or_default();
        let refresh_at = now + lifetime.mul_f64(0.7 + 0.1 * jitter.clamp(0.0, 1.0));
        self.held = Some(Held {
            fetched,
            refresh_at,
        });
        self.retry_at = None;
        self.failures = 0;
    }

    /// A fetch failed: the next one waits 1 s, 2 s, 4 s ... up to [`MAX_RETRY`].
    pub fn failed(&mut self, now: SystemTime) {
        let wait = Duration::from_secs(1)
            .saturating_mul(1 << self.failures.min(6))
            .min(MAX_RETRY);
        self.failures += 1;
        self.retry_at = Some(now + wait);
    }

    pub fn failures(&self) -> u32 {
        self.failures
    }

    fn refreshing_at(&self, now: SystemTime) -> bool {
        self.refreshing
            .is_some_and(|since| now < since + FETCH_TIMEOUT + Duration::from_secs(1))
    }

    pub fn decide(&self, now: SystemTime) -> Step {
        let may_fetch = self.retry_at.is_none_or(|at| now >= at);
        let valid = self
            .held
            .as_ref()
            .filter(|h| now + SAFETY_MARGIN < h.fetched.expiration);
        match valid {
            Some(h) if now < h.refresh_at || !may_fetch || self.refreshing_at(now) => {
                Step::Use(h.fetched.clone())
            }
            Some(h) => Step::FetchOrUse(h.fetched.clone()),
            None if may_fetch => Step::Fetch,
            None => Step::Wait,
        }
    }
}

/// Why a fetch failed, in words an operator can act on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct FetchError(pub String);

/// One GET of the credentials, over mutual TLS.
pub async fn fetch(config: &IotConfig) -> Result<Fetched, FetchError> {
    let peer = format!("{}:{}", config.host, config.port);
    let tls = config
        .tls
        .client_config()
        .map_err(|e| FetchError(format!("iot_credentials: {e}")))?;
    let name = rustls::pki_types::ServerName::try_from(config.host.clone()).map_err(|_| {
        FetchError(format!(
            "iot_credentials.endpoint: \"{}\" is not a host name",
            config.host
        ))
    })?;
    let work = async {
        let tcp = tokio::net::TcpStream::connect(&peer).await.map_err(|e| {
            FetchError(format!(
                "cannot connect to the credentials provider {peer}: {e}"
            ))
        })?;
        let mut stream = tokio_rustls::TlsConnector::from(Arc::new(tls))
            .connect(name, tcp)
            .await
            .map_err(|e| FetchError(describe_io(&e, config, &peer)))?;
        let request = format!(
            "GET /role-aliases/{}/credentials HTTP/1.1\r\nHost: {}\r\nx-amzn-iot-thingname: {}\r\nUser-Agent: streamgate/{}\r\nAccept: application/json\r\nConnection: close\r\n\r\n",
            config.role_alias,
            config.host,
            config.thing_name,
            env!("CARGO_PKG_VERSION")
        );
        stream
            .write_all(request.as_bytes())
            .await
            .map_err(|e| FetchError(describe_io(&e, config, &peer)))?;
        let mut raw = Vec::new();
        let mut limited = (&mut stream).take(MAX_ANSWER as u64);
        match limited.read_to_end(&mut raw).await {
            Ok(_) => {}
            // A server that closes without close_notify: what arrived counts.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
            Err(e) => return Err(FetchError(describe_io(&e, config, &peer))),
        }
        answer(&raw, config, &peer)
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .unwrap_or_else(|_| {
            Err(FetchError(format!(
                "the credentials provider {peer} did not answer within {FETCH_TIMEOUT:?}"
            )))
        })
}

/// What an answer means.
fn answer(raw: &[u8], config: &IotConfig, peer: &str) -> Result<Fetched, FetchError> {
    let (status, body) = parse_http(raw).map_err(|e| FetchError(format!("{peer}: {e}")))?;
    let message = || {
        serde_json::from_slice::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["message"].as_str().map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&body).chars().take(200).collect())
    };
    let cert = config
        .tls
        .client_auth
        .as_ref()
        .map(|(c, _)| c.display().to_string())
        .unwrap_or_default();
    match status {
        200 => parse_credentials(&body).map_err(|e| FetchError(format!("{peer}: {e}"))),
        400 | 401 | 403 => Err(FetchError(format!(
            "the credentials provider refused the certificate {cert} ({status}: {}): check that it is ACTIVE, attached to thing \"{}\", and that the thing's policy allows iot:AssumeRoleWithCertificate on role alias \"{}\"",
            message(),
            config.thing_name,
            config.role_alias
        ))),
        404 => Err(FetchError(format!(
            "the credentials provider knows no role alias \"{}\" ({status}: {}): check iot_credentials.role_alias and the region of the endpoint",
            config.role_alias,
            message()
        ))),
        _ => Err(FetchError(format!(
            "the credentials provider {peer} answered {status}: {}",
            message()
        ))),
    }
}

fn describe_io(e: &std::io::Error, config: &IotConfig, peer: &str) -> String {
    if let Some(r) = e.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
        let text = crate::exporters::tls::describe(r, "credentials provider", peer, &config.host);
        return match r {
            rustls::Error::AlertReceived(_) => format!(
                "{text}; the provider refuses this client certificate (inactive, revoked, from another account, or its key does not match)"
            ),
            _ => text,
        };
    }
    format!("credentials provider {peer}: {e}")
}

/// The Kinesis / Firehose client's credentials provider (see the module doc).
#[derive(Clone)]
pub struct IotCredentials {
    inner: Arc<Inner>,
}

struct Inner {
    config: IotConfig,
    refresh: tokio::sync::Mutex<Refresh>,
    /// Why the last fetch failed, while it is the last word.
    last_error: Mutex<Option<String>>,
    /// For `status`: where the credentials come from and until when.
    state: Mutex<String>,
}

impl std::fmt::Debug for IotCredentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "IotCredentials(role alias {}, thing {})",
            self.inner.config.role_alias, self.inner.config.thing_name
        )
    }
}

fn rfc3339(t: SystemTime) -> String {
    aws_smithy_types::DateTime::from(t)
        .fmt(aws_smithy_types::date_time::Format::DateTime)
        .unwrap_or_else(|_| "?".into())
}

impl IotCredentials {
    pub fn new(config: IotConfig) -> IotCredentials {
        let state = format!(
            "credentials: AWS IoT role alias {} for thing {}, not fetched yet",
            config.role_alias, config.thing_name
        );
        IotCredentials {
            inner: Arc::new(Inner {
                config,
                refresh: Default::default(),
                last_error: Default::default(),
                state: Mutex::new(state),
            }),
        }
    }

    /// One line for `status`.
    pub fn state(&self) -> String {
        self.inner.state.lock().unwrap().clone()
    }

    fn set_state(&self, text: String) {
        *self.inner.state.lock().unwrap() = text;
    }

    async fn get(&self) -> Result<Fetched, CredentialsError> {
        let c = &self.inner.config;
        let source = format!(
            "AWS IoT role alias {} for thing {}",
            c.role_alias, c.thing_name
        );
        let mut refresh = self.inner.refresh.lock().await;
        let now = SystemTime::now();
        let fallback = match refresh.decide(now) {
            Step::Use(f) => return Ok(f),
            Step::Wait => {
                let why = self
                    .inner
                    .last_error
                    .lock()
                    .unwrap()
                    .clone()
                    .unwrap_or_default();
                return Err(CredentialsError::provider_error(format!(
                    "none valid from {source}: {why} (retrying)"
                )));
            }
            Step::FetchOrUse(f) => Some(f),
            Step::Fetch => None,
        };
        // A refresh while the held credentials are good runs without the lock: the export's
        // other sends go on with them. With nothing valid, the others wait for this fetch.
        let mut held_lock = if fallback.is_some() {
            refresh.refreshing = Some(now);
            drop(refresh);
            None
        } else {
            Some(refresh)
        };
        // Credentials that expire before the gateway's "now": its clock is wrong (TLS and request
        // signatures will fail too), and fetching again at once would not help.
        let fetched = fetch(c).await.and_then(|f| {
            if f.expiration > now + SAFETY_MARGIN {
                Ok(f)
            } else {
                Err(FetchError(format!(
                    "the credentials expire at {}, which is already past by the gateway's clock ({}): is the gateway's clock right? (NTP)",
                    rfc3339(f.expiration),
                    rfc3339(now)
                )))
            }
        });
        let mut refresh = match held_lock.take() {
            Some(guard) => guard,
            None => self.inner.refresh.lock().await,
        };
        refresh.refreshing = None;
        match fetched {
            Ok(fetched) => {
                *self.inner.last_error.lock().unwrap() = None;
                if refresh.failures() > 0 {
                    tracing::info!(
                        failed_fetches = refresh.failures(),
                        "AWS credentials from the IoT credentials provider again"
                    );
                } else {
                    tracing::debug!(expires = %rfc3339(fetched.expiration), "AWS credentials fetched");
                }
                refresh.fetched(now, fetched.clone(), rand::random::<f64>());
                self.set_state(format!(
                    "credentials: {source}, expire {}",
                    rfc3339(fetched.expiration)
                ));
                Ok(fetched)
            }
            Err(e) => {
                *self.inner.last_error.lock().unwrap() = Some(e.to_string());
                if refresh.failures() == 0 {
                    tracing::warn!(
                        error = %e,
                        "cannot fetch AWS credentials from the IoT credentials provider"
                    );
                }
                refresh.failed(now);
                match fallback {
                    Some(f) => {
                        self.set_state(format!(
                            "credentials: {source}, expire {} (refresh failing: {e})",
                            rfc3339(f.expiration)
                        ));
                        Ok(f)
                    }
                    None => {
                        let text = format!("none valid from {source}: {e}");
                        self.set_state(format!("credentials: {text}"));
                        Err(CredentialsError::provider_error(text))
                    }
                }
            }
        }
    }
}

impl ProvideCredentials for IotCredentials {
    fn provide_credentials<'a>(&'a self) -> provider::future::ProvideCredentials<'a>
    where
        Self: 'a,
    {
        provider::future::ProvideCredentials::new(async move {
            let f = self.get().await?;
            Ok(Credentials::new(
                f.access_key_id,
                f.secret_access_key,
                Some(f.session_token),
                Some(f.expiration),
                "AwsIotCredentialsProvider",
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000 + s)
    }

    fn creds(expires: u64) -> Fetched {
        Fetched {
            access_key_id: "ASIA".into(),
            secret_access_key: "s".into(),
            session_token: "tok".into(),
            expiration: t(expires),
        }
    }

    #[test]
    fn refresh_at_70_to_80_percent_and_retry_with_backoff_while_valid() {
        let mut r = Refresh::default();
        assert_eq!(r.decide(t(0)), Step::Fetch);
        r.fetched(t(0), creds(100), 0.5);
        assert_eq!(r.decide(t(74)), Step::Use(creds(100)));
        assert_eq!(r.decide(t(75)), Step::FetchOrUse(creds(100)));
        // A failed refresh: the old credentials go on, the next fetch waits 1 s, then 2 s.
        r.failed(t(75));
        assert_eq!(r.decide(t(75)), Step::Use(creds(100)));
        assert_eq!(r.decide(t(76)), Step::FetchOrUse(creds(100)));
        r.failed(t(76));
        assert_eq!(r.decide(t(77)), Step::Use(creds(100)));
        assert_eq!(r.decide(t(78)), Step::FetchOrUse(creds(100)));
        // Never used within the safety margin of their expiry.
        assert_eq!(r.decide(t(95)), Step::Fetch);
        r.failed(t(95));
        assert_eq!(r.decide(t(96)), Step::Wait);
        assert_eq!(r.decide(t(99)), Step::Fetch);
        // While one caller refreshes, the others use what is held.
        r.refreshing = Some(t(99));
        assert_eq!(
            r.decide(t(99)),
            Step::Fetch,
            "nothing valid: every caller waits"
        );
        r.refreshing = None;
        // Success resets the backoff.
        r.fetched(t(99), creds(199), 0.0);
        assert_eq!(r.failures(), 0);
        assert_eq!(r.decide(t(168)), Step::Use(creds(199)));
        assert_eq!(r.decide(t(169)), Step::FetchOrUse(creds(199)));
        r.refreshing = Some(t(169));
        assert_eq!(r.decide(t(169)), Step::Use(creds(199)));
        // A refresh whose caller was cancelled does not block refreshing for good.
        assert_eq!(r.decide(t(180)), Step::FetchOrUse(creds(199)));
    }

    #[test]
    fn backoff_is_capped() {
        let mut r = Refresh::default();
        for _ in 0..20 {
            r.failed(t(0));
        }
        assert_eq!(r.decide(t(59)), Step::Wait);
        assert_eq!(r.decide(t(60)), Step::Fetch);
    }

    #[test]
    fn answers_are_parsed() {
        let body = br#"{"credentials":{"accessKeyId":"ASIAXYZ","secretAccessKey":"sec","sessionToken":"tok","expiration":"2026-12-07T13:00:00Z"}}"#;
        let raw = [
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
                body.len()
            )
            .as_bytes(),
            body,
        ]
        .concat();
        let (status, got) = parse_http(&raw).unwrap();
        assert_eq!(status, 200);
        let f = parse_credentials(&got).unwrap();
        assert_eq!(f.access_key_id, "ASIAXYZ");
        assert_eq!(
            f.expiration,
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_648_400)
        );
        // Chunked.
        let raw = b"HTTP/1.1 403 Forbidden\r\nTransfer-Encoding: chunked\r\n\r\n5\r\n{\"mes\r\nf\r\nsage\":\"no way\"}\r\n0\r\n\r\n";
        let (status, got) = parse_http(raw).unwrap();
        assert_eq!(
            (status, got.as_slice()),
            (403, &br#"{"message":"no way"}"#[..])
        );
        assert!(parse_credentials(b"{}").is_err());
        assert!(parse_http(b"HTTP/1.1 200 OK\r\n").is_err());
    }

    #[test]
    fn config_errors_name_the_key() {
        let mut errs = Errors::default();
        let raw = RawIotCredentials {
            endpoint: "https://c2abc.credentials.iot.eu-west-1.amazonaws.com/".into(),
            role_alias: "".into(),
            thing_name: "line 1".into(),
            client_cert: "/c.pem".into(),
            client_key: "/k.pem".into(),
            ca_file: None,
        };
        let c = raw.validate("e.iot_credentials", &mut errs);
        assert_eq!(c.host, "c2abc.credentials.iot.eu-west-1.amazonaws.com");
        assert_eq!(c.port, 443);
        let text: Vec<String> = errs
            .into_vec()
            .into_iter()
            .map(|e| format!("{}: {}", e.path, e.message))
            .collect();
        assert_eq!(text.len(), 2, "{text:?}");
        assert!(text[0].starts_with("e.iot_credentials.role_alias: must not be empty"));
        assert!(text[1].starts_with("e.iot_credentials.thing_name: must not contain"));
    }
}
