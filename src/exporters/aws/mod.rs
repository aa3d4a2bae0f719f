//! `kind = "kinesis"` (PutRecords) and `kind = "firehose"` (PutRecordBatch).
//!
//! One exporter for both services: [`packer`] turns a driver batch into calls within the
//! service's limits (pure, unit-tested), [`AwsExporter`] makes the calls and maps every
//! record's result back to ALL the samples it carries, index-aligned:
//! - entry accepted -> `Delivered`;
//! - entry failed (throttling, internal failure) -> `Retry` for its samples only, never the
//!   whole batch again (fluent-bit#6369) and never counted as delivered (vector#359);
//! - a sample no record can hold -> `Rejected` (dead-letter table);
//! - the whole call failed (network, auth, KMS, clock) -> every sample of it is retried, with
//!   an error that says what to do about it.
//!
//! Throttled entries come back as `Throttled`: the driver's adaptive rate slows the export down
//! to what the stream accepts (see `exporters/throttle.rs`). After a throttled call the rest of
//! the batch is not sent (`Retry`, first in the next batch). The driver keeps several calls in
//! flight (`max_in_flight_requests`), one per handle ([`Exporter::another`]); the handles share
//! one SDK client (connection pool) and one set of counters. The SDK's own retries are off so
//! that every failure reaches the driver's backoff, `status` and the logs.

pub mod config;
mod errors;
pub mod iot;
pub mod packer;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls;
use rand::Rng;

pub use config::{AwsExportConfig, RawAwsExport, Service};
use errors::{EntryFailure, entry_failure};
use packer::PackedRecord;

use super::{Exporter, Outcome, SendError};
use crate::exporters::stats::ExportStats;
use crate::queue::Record;

/// The service client; a variant exists only when its feature is built (`kinesis`,
/// `firehose`), and config validation refuses the kind of a service that is not built.
#[derive(Clone)]
enum Client {
    #[cfg(feature = "kinesis")]
    Kinesis(aws_sdk_kinesis::Client),
    #[cfg(feature = "firehose")]
    Firehose(aws_sdk_firehose::Client),
}

pub struct AwsExporter {
    config: Arc<AwsExportConfig>,
    /// Made at the first send, shared by every handle of the export.
    client: Arc<tokio::sync::OnceCell<Client>>,
    stats: Arc<ExportStats>,
    /// The gateway clock: every error response tells the endpoint's time.
    clock: crate::clock::Clock,
    /// Credentials from the AWS IoT credentials provider, shared by every handle.
    iot: Option<iot::IotCredentials>,
}

/// Why the AWS client could not be made (the export retries with its failure backoff).
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("ca_file {}: cannot read it: {source}", .path.display())]
    CaFileUnreadable {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("ca_file {}: no PEM certificate (-----BEGIN CERTIFICATE-----) in it", .path.display())]
    CaFileNotPem { path: std::path::PathBuf },
    #[error("ca_file {}: {message}", .path.display())]
    CaFileRejected {
        path: std::path::PathBuf,
        message: String,
    },
    #[error("this streamgate was built without the {0} exporter (cargo feature)")]
    NotBuilt(&'static str),
}

/// Loads the SDK configuration: the standard credential chain (environment, profile, web
/// identity, container and instance metadata), a named profile or the AWS IoT credentials
/// provider ([`iot`]), rustls with ring, and the
/// system's CA certificates or only those of `ca_file`.
pub async fn sdk_config(
    config: &AwsExportConfig,
    iot: Option<&iot::IotCredentials>,
) -> Result<aws_config::SdkConfig, ClientError> {
    let mut builder = aws_smithy_http_client::Builder::new().tls_provider(tls::Provider::Rustls(
        tls::rustls_provider::CryptoMode::Ring,
    ));
    if let Some(path) = &config.ca_file {
        let pem = std::fs::read(path).map_err(|source| ClientError::CaFileUnreadable {
            path: path.clone(),
            source,
        })?;
        if !pem
            .windows(b"-----BEGIN CERTIFICATE-----".len())
            .any(|w| w == b"-----BEGIN CERTIFICATE-----")
        {
            return Err(ClientError::CaFileNotPem { path: path.clone() });
        }
        let trust = tls::TrustStore::empty().with_pem_certificate(pem);
        let context = tls::TlsContext::builder()
            .with_trust_store(trust)
            .build()
            .map_err(|e| ClientError::CaFileRejected {
                path: path.clone(),
                message: e.to_string(),
            })?;
        builder = builder.tls_context(context);
    }
    let http = builder.build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(http)
        .retry_config(RetryConfig::disabled())
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(5).min(config.request_timeout))
                .operation_timeout(config.request_timeout)
                .build(),
        );
    if let Some(region) = &config.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some(profile) = &config.profile {
        loader = loader.profile_name(profile);
    }
    if let Some(iot) = iot {
        // Our provider keeps and refreshes the credentials itself: the SDK asks it every call.
        loader = loader
            .credentials_provider(iot.clone())
            .identity_cache(aws_config::identity::IdentityCache::no_cache());
    }
    if let Some(url) = &config.endpoint_url {
        loader = loader.endpoint_url(url);
    }
    Ok(loader.load().await)
}

impl AwsExporter {
    pub fn new(
        config: AwsExportConfig,
        clock: crate::clock::Clock,
        stats: Arc<ExportStats>,
    ) -> AwsExporter {
        let iot = config.iot.clone().map(|c| iot::IotCredentials::new(*c));
        AwsExporter {
            config: Arc::new(config),
            client: Arc::default(),
            stats,
            clock,
            iot,
        }
    }

    pub fn stats(&self) -> Arc<ExportStats> {
        self.stats.clone()
    }

    async fn client(&self) -> Result<&Client, ClientError> {
        self.client
            .get_or_try_init(|| async {
                let sdk = sdk_config(&self.config, self.iot.as_ref()).await?;
                if sdk.region().is_none() {
                    tracing::warn!(
                        "no AWS region: set `region` on the export or AWS_REGION; every call will fail"
                    );
                }
                tracing::info!(
                    target = %self.config.target,
                    region = sdk.region().map(|r| r.as_ref()).unwrap_or("none"),
                    endpoint = self.config.endpoint_url.as_deref().unwrap_or("default"),
                    packing = self.config.pack.packing,
                    "{} client ready",
                    self.config.service.name()
                );
                Ok(match self.config.service {
                    #[cfg(feature = "kinesis")]
                    Service::Kinesis => Client::Kinesis(aws_sdk_kinesis::Client::new(&sdk)),
                    #[cfg(feature = "firehose")]
                    Service::Firehose => Client::Firehose(aws_sdk_firehose::Client::new(&sdk)),
                    #[allow(unreachable_patterns)]
                    other => {
                        return Err(ClientError::NotBuilt(other.name()));
                    }
                })
            })
            .await
    }

    /// One call. `Ok` holds one entry result per record (None = accepted).
    async fn put(
        &self,
        records: Vec<PackedRecord>,
    ) -> Result<Vec<Option<EntryFailure>>, SendError> {
        let service = self.config.service;
        let target = self.config.target.clone();
        let n = records.len();
        let client = self
            .client()
            .await
            .map_err(|e| SendError::transient(e.to_string()))?;
        let results: Vec<Option<(String, String)>> = match client {
            #[cfg(feature = "kinesis")]
            Client::Kinesis(c) => {
                let mut entries = Vec::with_capacity(n);
                for r in records {
                    let entry = aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                        .data(aws_sdk_kinesis::primitives::Blob::new(r.data))
                        .partition_key(r.key.unwrap_or_else(|| "-".into()))
                        .build()
                        .map_err(|e| {
                            SendError::transient(format!("cannot build a Kinesis record: {e}"))
                        })?;
                    entries.push(entry);
                }
                let out = c
                    .put_records()
                    .stream_name(&target)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .map_err(|e| errors::describe_call_error(service, &target, &e, &self.clock))?;
                out.records()
                    .iter()
                    .map(|e| {
                        e.error_code().map(|code| {
                            (
                                code.to_string(),
                                e.error_message().unwrap_or("").to_string(),
                            )
                        })
                    })
                    .collect()
            }
            #[cfg(feature = "firehose")]
            Client::Firehose(c) => {
                let mut entries = Vec::with_capacity(n);
                for r in records {
                    let entry = aws_sdk_firehose::types::Record::builder()
                        .data(aws_sdk_firehose::primitives::Blob::new(r.data))
                        .build()
                        .map_err(|e| {
                            SendError::transient(format!("cannot build a Firehose record: {e}"))
                        })?;
                    entries.push(entry);
                }
                let out = c
                    .put_record_batch()
                    .delivery_stream_name(&target)
                    .set_records(Some(entries))
                    .send()
                    .await
                    .map_err(|e| errors::describe_call_error(service, &target, &e, &self.clock))?;
                out.request_responses()
                    .iter()
                    .map(|e| {
                        e.error_code().map(|code| {
                            (
                                code.to_string(),
                                e.error_message().unwrap_or("").to_string(),
                            )
                        })
                    })
                    .collect()
            }
        };
        if results.len() != n {
            return Err(SendError::transient(format!(
                "{} answered {} entry results for {n} records; resending them",
                service.name(),
                results.len()
            )));
        }
        Ok(results
            .into_iter()
            .map(|r| r.map(|(code, msg)| entry_failure(service, &code, &msg)))
            .collect())
    }
}

impl Exporter for AwsExporter {
    fn another(&self) -> Option<AwsExporter> {
        Some(AwsExporter {
            config: self.config.clone(),
            client: self.client.clone(),
            stats: self.stats.clone(),
            clock: self.clock.clone(),
            iot: self.iot.clone(),
        })
    }

    fn state(&self) -> Option<String> {
        self.iot.as_ref().map(|i| i.state())
    }

    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        let payloads: Vec<&[u8]> = batch.iter().map(|r| r.payload.as_slice()).collect();
        let plan = {
            let mut rng = rand::rng();
            packer::plan(
                &payloads,
                &self.config.pack,
                &self.config.partition_key,
                &mut || format!("{:032x}", rng.random::<u128>()),
            )
        };
        let mut outcomes: Vec<Option<Outcome>> = vec![None; batch.len()];
        for (i, reason) in plan.rejected {
            outcomes[i] = Some(Outcome::Rejected(reason));
        }
        let service = self.config.service.name();
        let mut stop: Option<String> = None;
        let mut throttled_now = 0u64;
        let mut first_call = true;
        for call in plan.calls {
            if let Some(reason) = &stop {
                for r in &call {
                    for &i in &r.samples {
                        outcomes[i] = Some(Outcome::Retry(reason.clone()));
                    }
                }
                continue;
            }
            let members: Vec<Vec<usize>> = call.iter().map(|r| r.samples.clone()).collect();
            let bytes: usize = call.iter().map(|r| r.data.len()).sum();
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            self.stats
                .wire_records
                .fetch_add(call.len() as u64, Ordering::Relaxed);
            self.stats
                .wire_bytes
                .fetch_add(bytes as u64, Ordering::Relaxed);
            match self.put(call).await {
                Ok(results) => {
                    let mut failed = 0;
                    for (result, members) in results.into_iter().zip(members) {
                        let outcome = match result {
                            None => Outcome::Delivered,
                            Some(f) => {
                                failed += 1;
                                if f.throttled {
                                    throttled_now += 1;
                                    Outcome::Throttled(f.message)
                                } else if f.retryable {
                                    Outcome::Retry(f.message)
                                } else {
                                    Outcome::Rejected(f.message)
                                }
                            }
                        };
                        for i in members {
                            outcomes[i] = Some(outcome.clone());
                        }
                    }
                    if throttled_now > 0 {
                        stop = Some(format!(
                            "not sent: {service} throttled an earlier call of this batch; slowing down"
                        ));
                    }
                    if failed > 0 {
                        tracing::debug!(failed, "{service} refused some entries of a call");
                    }
                }
                Err(e) => {
                    if e.is_throttled() {
                        throttled_now += members.len() as u64;
                    }
                    if first_call {
                        // Nothing of this batch was accepted yet: let the driver retry all of it.
                        self.note_throttled(throttled_now);
                        return Err(e);
                    }
                    for i in members.into_iter().flatten() {
                        outcomes[i] = Some(e.outcome());
                    }
                    stop = Some(e.message().to_string());
                }
            }
            first_call = false;
        }
        self.note_throttled(throttled_now);
        Ok(outcomes
            .into_iter()
            .map(|o| o.unwrap_or_else(|| Outcome::Retry("not planned into any call".into())))
            .collect())
    }
}

impl AwsExporter {
    fn note_throttled(&self, records: u64) {
        if records == 0 {
            return;
        }
        // Throttling is routine on a busy stream: the driver's adaptive rate handles it, counts
        // it and `status` shows it; the log says it at debug level only.
        tracing::debug!(
            records,
            "{} throttled this export; the throttled records are resent at a lower rate",
            self.config.service.name()
        );
    }
}
