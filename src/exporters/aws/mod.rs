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
pub mod shards;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_smithy_http_client::tls;
use rand::Rng;

pub use config::{AwsExportConfig, RawAwsExport, Service};
use errors::{EntryFailure, entry_failure};
use packer::PackedRecord;
use shards::ShardRates;

use super::{Exporter, Outcome, SendError};
use crate::exporters::stats::ExportStats;
use crate::exporters::template::KeyTemplate;
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
    /// Per-shard send rates (Kinesis with a template partition key), shared by every handle.
    shards: Option<Arc<Mutex<ShardRates>>>,
}

/// One entry's answer: its failure (None: accepted) and the shard that answered, where the
/// service says (Kinesis: `ShardId` of an accepted entry, named in a throttled one's message).
struct EntryResult {
    failure: Option<EntryFailure>,
    shard: Option<String>,
}

/// The longest an exporter waits for a hot shard before sending what it may.
const MAX_SHARD_WAIT: Duration = Duration::from_secs(1);

/// The shared shard rates. A handle that panicked while holding them left plain numbers
/// behind, still usable: pacing goes on (refusing the lock would hold every record back).
fn lock(shards: &Mutex<ShardRates>) -> std::sync::MutexGuard<'_, ShardRates> {
    shards.lock().unwrap_or_else(|e| e.into_inner())
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
        let shards = (config.service == Service::Kinesis
            && matches!(config.partition_key, KeyTemplate::Template(_)))
        // A shard takes 1,000 records/s: its limit never drops below 10/s (see SendRate).
        .then(|| Arc::new(Mutex::new(ShardRates::new(100))));
        AwsExporter {
            config: Arc::new(config),
            client: Arc::default(),
            stats,
            clock,
            iot,
            shards,
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

    /// One call. `Ok` holds one entry result per record.
    async fn put(&self, records: Vec<PackedRecord>) -> Result<Vec<EntryResult>, SendError> {
        let service = self.config.service;
        let target = self.config.target.clone();
        let n = records.len();
        let client = self
            .client()
            .await
            .map_err(|e| SendError::transient(e.to_string()))?;
        // Per entry: (error code and message, shard id of an accepted entry).
        type Answer = (Option<(String, String)>, Option<String>);
        let results: Vec<Answer> = match client {
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
                        let failure = e.error_code().map(|code| {
                            (
                                code.to_string(),
                                e.error_message().unwrap_or("").to_string(),
                            )
                        });
                        (failure, e.shard_id().map(str::to_string))
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
                        let failure = e.error_code().map(|code| {
                            (
                                code.to_string(),
                                e.error_message().unwrap_or("").to_string(),
                            )
                        });
                        (failure, None)
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
            .map(|(failure, shard)| match failure {
                Some((code, msg)) => EntryResult {
                    shard: shards::shard_in_message(&msg).map(str::to_string),
                    failure: Some(entry_failure(service, &code, &msg)),
                },
                None => EntryResult {
                    failure: None,
                    shard,
                },
            })
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
            shards: self.shards.clone(),
        })
    }

    fn state(&self) -> Option<String> {
        let shards = self.shards.as_deref().and_then(|s| lock(s).describe());
        match (self.iot.as_ref().map(|i| i.state()), shards) {
            (Some(iot), Some(shards)) => Some(format!("{iot}; {shards}")),
            (iot, shards) => iot.or(shards),
        }
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
            let Some(call) = self.pace(call, first_call, &mut outcomes).await else {
                continue;
            };
            let members: Vec<Vec<usize>> = call.iter().map(|r| r.samples.clone()).collect();
            let keys: Vec<Option<String>> = match &self.shards {
                Some(_) => call.iter().map(|r| r.key.clone()).collect(),
                None => Vec::new(),
            };
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
                    let now = Instant::now();
                    let mut paced = self.shards.as_deref().map(lock);
                    for (n, (result, members)) in results.into_iter().zip(members).enumerate() {
                        // The shard pacing learns the key's shard and its answer.
                        let key = keys.get(n).and_then(Option::as_deref);
                        let by_shard = match (&mut paced, key, result.shard.as_deref()) {
                            (Some(rates), Some(key), Some(shard)) => {
                                let (ok, thr) = match &result.failure {
                                    None => (members.len(), 0),
                                    Some(f) if f.throttled => (0, members.len()),
                                    Some(_) => (0, 0),
                                };
                                rates.outcome(now, key, shard, ok, thr);
                                true
                            }
                            _ => false,
                        };
                        let outcome = match result.failure {
                            None => Outcome::Delivered,
                            Some(f) => {
                                failed += 1;
                                if f.throttled && by_shard {
                                    Outcome::ThrottledShard(f.message)
                                } else if f.throttled {
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
    /// Per-shard pacing of one call: the records whose shard is at its limit are held back
    /// (`Outcome::Held`, first in a later batch). The first call of a send waits (at most
    /// [`MAX_SHARD_WAIT`] at a time) until some record may go, so every send makes progress;
    /// a later call that would send nothing is dropped (`None`).
    async fn pace(
        &self,
        mut call: Vec<PackedRecord>,
        first_call: bool,
        outcomes: &mut [Option<Outcome>],
    ) -> Option<Vec<PackedRecord>> {
        let Some(shards) = &self.shards else {
            return Some(call);
        };
        loop {
            let now = Instant::now();
            let mut go = Vec::with_capacity(call.len());
            let mut held = Vec::new();
            let mut wait = MAX_SHARD_WAIT;
            {
                let mut rates = lock(shards);
                for r in call.drain(..) {
                    let w = match &r.key {
                        Some(key) => rates.take(now, key, r.samples.len()),
                        None => Duration::ZERO,
                    };
                    if w.is_zero() {
                        go.push(r);
                    } else {
                        wait = wait.min(w);
                        held.push(r);
                    }
                }
            }
            if go.is_empty() && first_call {
                tokio::time::sleep(wait).await;
                call = held;
                continue;
            }
            for r in &held {
                for &i in &r.samples {
                    outcomes[i] = Some(Outcome::Held);
                }
            }
            return (!go.is_empty()).then_some(go);
        }
    }

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
