//! Settings of `kind = "kinesis"` and `kind = "firehose"`, and the service limits they are
//! checked against. Limits are named constants so a reviewer can compare them with the AWS
//! documentation in one place.

use std::time::Duration;

use serde::Deserialize;

use super::packer::{Compression, PackLimits};
use crate::config::Errors;
use crate::exporters::Limits;
use crate::exporters::template::KeyTemplate;

/// Kinesis PutRecords: records per call.
pub const KINESIS_MAX_RECORDS_PER_CALL: usize = 500;
/// Kinesis PutRecords: bytes per call, data and partition keys counted.
pub const KINESIS_MAX_BYTES_PER_CALL: usize = 5 << 20;
/// Kinesis: bytes per record (data blob before base64, plus partition key).
pub const KINESIS_MAX_RECORD_BYTES: usize = 1 << 20;
/// Kinesis: a partition key has 1 to 256 Unicode characters.
pub const KINESIS_MAX_KEY_CHARS: usize = 256;

/// Firehose PutRecordBatch: records per call.
pub const FIREHOSE_MAX_RECORDS_PER_CALL: usize = 500;
/// Firehose PutRecordBatch: bytes per call.
pub const FIREHOSE_MAX_BYTES_PER_CALL: usize = 4 << 20;
/// Firehose: bytes per record (1,000 KiB, not 1 MiB).
pub const FIREHOSE_MAX_RECORD_BYTES: usize = 1_000 * 1024;

/// Calls in flight at once per export (`max_in_flight_requests`). One call at a time caps an
/// export near 6.5k records/s against a server that answers in ~77 ms (kinesalite here; real
/// Kinesis from a gateway far away is no faster): several are needed. With 4 the export
/// reached kinesalite's own ceiling in `benches/kinesis_vs_fluentbit` (docs/aws.md).
pub const DEFAULT_IN_FLIGHT_REQUESTS: usize = 4;
pub const MAX_IN_FLIGHT_REQUESTS: usize = 64;

/// Samples a driver batch may hold when packing is on: bounded by memory, not by the service
/// (the exporter splits a batch into as many calls as its limits need).
const PACKING_MAX_BATCH_SIZE: usize = 100_000;
const PACKING_DEFAULT_BATCH_SIZE: usize = 5_000;
const PACKING_MAX_BATCH_BYTES: u64 = 32 << 20;
/// Default size of one packed record (uncompressed NDJSON).
const DEFAULT_PACK_RECORD_SIZE: u64 = 256 << 10;

/// Which service an export writes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Kinesis,
    Firehose,
}

impl Service {
    pub fn name(self) -> &'static str {
        match self {
            Service::Kinesis => "Kinesis",
            Service::Firehose => "Firehose",
        }
    }

    fn max_records_per_call(self) -> usize {
        match self {
            Service::Kinesis => KINESIS_MAX_RECORDS_PER_CALL,
            Service::Firehose => FIREHOSE_MAX_RECORDS_PER_CALL,
        }
    }

    fn max_bytes_per_call(self) -> usize {
        match self {
            Service::Kinesis => KINESIS_MAX_BYTES_PER_CALL,
            Service::Firehose => FIREHOSE_MAX_BYTES_PER_CALL,
        }
    }

    fn max_record_bytes(self) -> usize {
        match self {
            Service::Kinesis => KINESIS_MAX_RECORD_BYTES,
            Service::Firehose => FIREHOSE_MAX_RECORD_BYTES,
        }
    }
}

/// `[[streams.exports]]` with `kind = "kinesis"` or `kind = "firehose"`: one struct for both
/// (serde cannot deny unknown keys through a flattened common part), the kind-specific keys
/// are checked by [`RawAwsExport::validate`].
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAwsExport {
    /// Kinesis only.
    pub stream_name: Option<String>,
    /// Kinesis only.
    pub partition_key: Option<String>,
    /// Firehose only.
    pub delivery_stream_name: Option<String>,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    pub max_request_bytes: Option<String>,
    pub packing: Option<bool>,
    pub pack_record_size: Option<String>,
    pub compression: Option<String>,
    pub request_timeout: Option<String>,
    pub ca_file: Option<String>,
    /// `[streams.exports.iot_credentials]`: credentials from the AWS IoT credentials provider.
    pub iot_credentials: Option<super::iot::RawIotCredentials>,
}

/// Validated settings of a Kinesis or Firehose export.
#[derive(Debug, Clone)]
pub struct AwsExportConfig {
    pub service: Service,
    /// Kinesis stream or Firehose delivery stream name.
    pub target: String,
    pub region: Option<String>,
    pub endpoint_url: Option<String>,
    pub profile: Option<String>,
    /// Temporary credentials from the gateway's X.509 certificate instead of the standard chain.
    pub iot: Option<Box<super::iot::IotConfig>>,
    pub request_timeout: Duration,
    /// Trust only the CA certificates of this PEM file (private endpoints, test servers)
    /// instead of the system's; the same meaning as the MQTT export's `ca_file`.
    pub ca_file: Option<std::path::PathBuf>,
    pub partition_key: KeyTemplate,
    pub pack: PackLimits,
}

impl RawAwsExport {
    pub fn limits(&self, service: Service) -> Limits {
        if self.packing.unwrap_or(false) {
            Limits {
                max_batch_size: PACKING_MAX_BATCH_SIZE,
                default_batch_size: PACKING_DEFAULT_BATCH_SIZE,
                max_batch_bytes: PACKING_MAX_BATCH_BYTES,
                default_batch_interval: Duration::from_millis(500),
                max_in_flight_requests: MAX_IN_FLIGHT_REQUESTS,
                default_in_flight_requests: DEFAULT_IN_FLIGHT_REQUESTS,
            }
        } else {
            Limits {
                max_batch_size: service.max_records_per_call(),
                default_batch_size: service.max_records_per_call(),
                max_batch_bytes: service.max_bytes_per_call() as u64,
                default_batch_interval: Duration::from_millis(200),
                max_in_flight_requests: MAX_IN_FLIGHT_REQUESTS,
                default_in_flight_requests: DEFAULT_IN_FLIGHT_REQUESTS,
            }
        }
    }

    pub fn validate(&self, path: &str, service: Service, errs: &mut Errors) -> AwsExportConfig {
        let (target, partition_key) = match service {
            Service::Kinesis => {
                let key = match self.partition_key.as_deref() {
                    None | Some("random") => KeyTemplate::Random,
                    Some(t) => KeyTemplate::parse(t).unwrap_or_else(|problems| {
                        for p in problems {
                            errs.push(format!("{path}.partition_key"), p);
                        }
                        KeyTemplate::Random
                    }),
                };
                if self.delivery_stream_name.is_some() {
                    errs.push(
                        format!("{path}.delivery_stream_name"),
                        "only applies to kind = \"firehose\"; a Kinesis export names its stream_name",
                    );
                }
                (
                    required_name(path, "stream_name", self.stream_name.as_deref(), 128, errs),
                    key,
                )
            }
            Service::Firehose => {
                if self.stream_name.is_some() {
                    errs.push(
                        format!("{path}.stream_name"),
                        "only applies to kind = \"kinesis\"; a Firehose export names its delivery_stream_name",
                    );
                }
                if self.partition_key.is_some() {
                    errs.push(
                        format!("{path}.partition_key"),
                        "only applies to kind = \"kinesis\" (Firehose has no partition keys)",
                    );
                }
                (
                    required_name(
                        path,
                        "delivery_stream_name",
                        self.delivery_stream_name.as_deref(),
                        64,
                        errs,
                    ),
                    KeyTemplate::None,
                )
            }
        };
        self.validate_common(path, service, target, partition_key, errs)
    }
}

fn required_name(
    path: &str,
    key: &str,
    value: Option<&str>,
    max: usize,
    errs: &mut Errors,
) -> String {
    match value {
        Some(v) => {
            stream_name(&format!("{path}.{key}"), v, max, errs);
            v.to_string()
        }
        None => {
            errs.push(
                format!("{path}.{key}"),
                "missing: name the stream to write to",
            );
            String::new()
        }
    }
}

fn stream_name(path: &str, name: &str, max: usize, errs: &mut Errors) {
    let ok = !name.is_empty()
        && name.len() <= max
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        errs.push(
            path,
            format!(
                "\"{name}\" is not a valid name: AWS allows 1 to {max} letters, digits, '_', '-' or '.'"
            ),
        );
    }
}

impl RawAwsExport {
    fn validate_common(
        &self,
        path: &str,
        service: Service,
        target: String,
        partition_key: KeyTemplate,
        errs: &mut Errors,
    ) -> AwsExportConfig {
        if let Some(r) = &self.region
            && (r.is_empty()
                || !r
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
        {
            errs.push(
                format!("{path}.region"),
                format!("\"{r}\" is not an AWS region such as \"eu-central-1\""),
            );
        }
        if let Some(u) = &self.endpoint_url
            && !(u.starts_with("https://") || u.starts_with("http://"))
        {
            errs.push(
                format!("{path}.endpoint_url"),
                format!("\"{u}\" must start with https:// (or http:// for a local test server)"),
            );
        }
        if let Some(p) = &self.profile
            && p.trim().is_empty()
        {
            errs.push(format!("{path}.profile"), "must not be empty");
        }
        let iot = self
            .iot_credentials
            .as_ref()
            .map(|i| Box::new(i.validate(&format!("{path}.iot_credentials"), errs)));
        if iot.is_some() && self.profile.is_some() {
            errs.push(
                format!("{path}.profile"),
                "set either profile or iot_credentials: both name where the credentials come from",
            );
        }
        let max_request_bytes = errs.size(
            &format!("{path}.max_request_bytes"),
            self.max_request_bytes.as_deref(),
            service.max_bytes_per_call() as u64,
            64 << 10,
            service.max_bytes_per_call() as u64,
        ) as usize;
        let packing = self.packing.unwrap_or(false);
        // Room for the partition key and, when compressing, for incompressible data.
        let record_room = service.max_record_bytes() - KINESIS_MAX_KEY_CHARS * 4 - 1024;
        let pack_record_size = errs.size(
            &format!("{path}.pack_record_size"),
            self.pack_record_size.as_deref(),
            DEFAULT_PACK_RECORD_SIZE.min(record_room as u64),
            1024,
            record_room as u64,
        ) as usize;
        if !packing && self.pack_record_size.is_some() {
            errs.push(
                format!("{path}.pack_record_size"),
                "only applies with packing = true",
            );
        }
        let compression = errs.choice(
            &format!("{path}.compression"),
            self.compression.as_deref(),
            Compression::None,
            &[
                ("none", Compression::None),
                ("gzip", Compression::Gzip),
                ("zstd", Compression::Zstd),
            ],
        );
        if !packing && compression != Compression::None {
            errs.push(
                format!("{path}.compression"),
                "only applies with packing = true (compressing one small sample gains nothing)",
            );
        }
        let request_timeout = errs.duration(
            &format!("{path}.request_timeout"),
            self.request_timeout.as_deref(),
            Duration::from_secs(30),
            Duration::from_millis(100),
        );
        let ca_file = self.ca_file.as_deref().map(|f| {
            if f.trim().is_empty() {
                errs.push(format!("{path}.ca_file"), "must not be empty");
            } else if self
                .endpoint_url
                .as_deref()
                .is_some_and(|u| u.starts_with("http://"))
            {
                errs.push(
                    format!("{path}.ca_file"),
                    "endpoint_url is plain http://; a CA file only applies to https://",
                );
            }
            std::path::PathBuf::from(f)
        });
        AwsExportConfig {
            service,
            target,
            ca_file,
            region: self.region.clone(),
            endpoint_url: self.endpoint_url.clone(),
            profile: self.profile.clone(),
            iot,
            request_timeout,
            partition_key,
            pack: PackLimits {
                packing,
                pack_record_size,
                compression,
                max_record_bytes: service.max_record_bytes(),
                max_records_per_call: service.max_records_per_call(),
                max_bytes_per_call: max_request_bytes,
                newline_terminated: service == Service::Firehose,
                max_key_chars: KINESIS_MAX_KEY_CHARS,
            },
        }
    }
}
