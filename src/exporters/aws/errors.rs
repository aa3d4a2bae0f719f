//! What Kinesis and Firehose errors mean for the records, and messages that say what to do.
//! Pure functions over error codes and messages (plus the response's `Date` header for clock
//! skew), so they are tested without a service.

// Both SDK crates re-export the same smithy types; take them from whichever is built.
#[cfg(not(feature = "kinesis"))]
use aws_sdk_firehose as sdk;
#[cfg(feature = "kinesis")]
use aws_sdk_kinesis as sdk;
use sdk::config::http::HttpResponse;
use sdk::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use sdk::primitives::{DateTime, DateTimeFormat};

use super::config::Service;
use crate::exporters::SendError;

/// A failed entry of a partially failed call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EntryFailure {
    pub message: String,
    pub retryable: bool,
    pub throttled: bool,
}

const THROTTLE_MARK: &str = "slowing down";

/// Classifies one entry's `ErrorCode` of PutRecords / PutRecordBatch.
pub fn entry_failure(service: Service, code: &str, message: &str) -> EntryFailure {
    let name = service.name();
    match code {
        "ProvisionedThroughputExceededException"
        | "ServiceUnavailableException"
        | "ThrottlingException" => EntryFailure {
            message: format!("throttled by {name} ({code}): {THROTTLE_MARK}"),
            retryable: true,
            throttled: true,
        },
        // The service says the record itself is wrong: sending it again cannot help.
        "ValidationException" | "InvalidArgumentException" | "SerializationException" => {
            EntryFailure {
                message: format!("{name} refused the record ({code}): {message}"),
                retryable: false,
                throttled: false,
            }
        }
        _ => EntryFailure {
            message: format!("{name} failed the record ({code}: {message}); resending it"),
            retryable: true,
            throttled: false,
        },
    }
}

/// Error codes of a whole call refused for throughput.
const THROTTLING_CODES: &[&str] = &[
    "ProvisionedThroughputExceededException",
    "ThrottlingException",
    "LimitExceededException",
    "ServiceUnavailableException",
    "KMSThrottlingException",
];

/// True for the error codes of a call refused for throughput.
pub fn is_throttling_code(code: &str) -> bool {
    THROTTLING_CODES.contains(&code)
}

/// A whole call failed: what happened and what to do.
pub fn describe_call_error<E>(
    service: Service,
    target: &str,
    err: &SdkError<E, HttpResponse>,
    clock: &crate::clock::Clock,
) -> SendError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let name = service.name();
    match err {
        SdkError::ServiceError(se) => {
            let code = se.err().code().unwrap_or("unknown");
            let message = se.err().message().unwrap_or("");
            let server_date = se.raw().headers().get("date");
            // Every error response tells the endpoint's time: the clock check uses it.
            if let Some(server) =
                server_date.and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok())
            {
                clock.report_peer_time(service.name(), server.secs() * 1000);
            }
            let text = describe_code(service, target, code, message, server_date);
            if text.contains("clock") {
                tracing::error!("{text}");
            }
            if is_throttling_code(code) {
                SendError::Throttled(text)
            } else {
                SendError::Transient(text)
            }
        }
        SdkError::TimeoutError(_) => SendError::transient(format!(
            "{name} did not answer within request_timeout; resending (network slow or down?)"
        )),
        SdkError::DispatchFailure(_) => {
            let detail = chain(err);
            if detail.contains("AWS IoT role alias") {
                // The IoT credentials provider's own message says what to do.
                SendError::Transient(format!("no usable AWS credentials for {name}: {detail}"))
            } else if detail.contains("credential") {
                SendError::Transient(format!(
                    "no usable AWS credentials for {name}: {detail}; set them in the environment, a profile, web identity or the instance/container role"
                ))
            } else {
                SendError::Unreachable(format!(
                    "cannot reach {name}: {detail}; resending every few seconds until it answers"
                ))
            }
        }
        _ => SendError::transient(format!("{name} call failed: {}", DisplayErrorContext(err))),
    }
}

/// The error and its causes, "a: b: c", without the Debug dump `DisplayErrorContext` adds.
fn chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut out = err.to_string();
    let mut cause = err.source();
    while let Some(c) = cause {
        let text = c.to_string();
        if !out.ends_with(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        cause = c.source();
    }
    out
}

/// The message for a service error `code`; `server_date` is the response's `Date` header.
pub fn describe_code(
    service: Service,
    target: &str,
    code: &str,
    message: &str,
    server_date: Option<&str>,
) -> String {
    let name = service.name();
    let what = match service {
        Service::Kinesis => "stream",
        Service::Firehose => "delivery stream",
    };
    if code == "InvalidSignatureException" && message.to_ascii_lowercase().contains("expired")
        || code == "RequestExpired"
        || code == "SignatureDoesNotMatch" && message.to_ascii_lowercase().contains("expired")
    {
        let skew = server_date
            .and_then(|d| DateTime::from_str(d, DateTimeFormat::HttpDate).ok())
            .map(|server| {
                let off = crate::time::now_ms() / 1000 - server.secs();
                format!(
                    "the gateway clock is off by {off} s ({}) against {name}'s",
                    if off > 0 { "ahead" } else { "behind" }
                )
            })
            .unwrap_or_else(|| "the gateway clock is off".into());
        return format!(
            "request signature expired: {skew}; fix the clock (NTP; boards without a real-time clock boot with a wrong one) ({code}: {message})"
        );
    }
    match code {
        c if is_throttling_code(c) => {
            format!("throttled by {name} ({code}): {THROTTLE_MARK}")
        }
        "ResourceNotFoundException" => format!(
            "{name} {what} \"{target}\" does not exist in this account and region ({message}); create it or fix the export's name/region"
        ),
        "ResourceInUseException" => {
            format!("{name} {what} \"{target}\" is not active yet ({message}); waiting")
        }
        "UnrecognizedClientException"
        | "AccessDeniedException"
        | "InvalidSignatureException"
        | "IncompleteSignature"
        | "MissingAuthenticationToken"
        | "ExpiredTokenException" => format!(
            "{name} refused the credentials ({code}: {message}); check the access key, role and IAM policy (kinesis:PutRecords / firehose:PutRecordBatch)"
        ),
        c if c.starts_with("KMS") => format!(
            "{name} cannot use the stream's KMS key ({code}: {message}); check the key's state and policy"
        ),
        _ => format!("{name} failed the call ({code}: {message}); resending with backoff"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn throttling_is_retried_and_flagged() {
        let f = entry_failure(
            Service::Kinesis,
            "ProvisionedThroughputExceededException",
            "Rate exceeded for shard shardId-000000000001",
        );
        assert!(f.retryable && f.throttled);
        assert_eq!(
            f.message,
            "throttled by Kinesis (ProvisionedThroughputExceededException): slowing down"
        );
        let f = entry_failure(
            Service::Firehose,
            "ServiceUnavailableException",
            "Slow down.",
        );
        assert!(f.retryable && f.throttled);
        let f = entry_failure(
            Service::Kinesis,
            "InternalFailure",
            "Internal service failure.",
        );
        assert!(f.retryable && !f.throttled);
        let f = entry_failure(Service::Firehose, "ValidationException", "too big");
        assert!(!f.retryable);
    }

    #[test]
    fn expired_signature_names_the_clock() {
        let now = crate::time::now_ms() / 1000;
        let server = DateTime::from_secs(now - 600)
            .fmt(DateTimeFormat::HttpDate)
            .unwrap();
        let m = describe_code(
            Service::Kinesis,
            "s",
            "InvalidSignatureException",
            "Signature expired: 20260101T000000Z is now earlier than ...",
            Some(&server),
        );
        assert!(
            m.starts_with("request signature expired: the gateway clock is off by 6"),
            "{m}"
        );
        assert!(m.contains("ahead"));
        let m = describe_code(
            Service::Kinesis,
            "s",
            "InvalidSignatureException",
            "The request signature we calculated does not match",
            None,
        );
        assert!(m.contains("refused the credentials"), "{m}");
    }

    #[test]
    fn whole_call_errors_say_what_to_do() {
        let m = describe_code(
            Service::Kinesis,
            "line1",
            "ResourceNotFoundException",
            "Stream line1 under account 1 not found.",
            None,
        );
        assert!(m.contains("\"line1\" does not exist"), "{m}");
        let m = describe_code(
            Service::Kinesis,
            "s",
            "KMSAccessDeniedException",
            "no",
            None,
        );
        assert!(m.contains("KMS key"));
        let m = describe_code(
            Service::Kinesis,
            "s",
            "ProvisionedThroughputExceededException",
            "",
            None,
        );
        assert!(m.contains("throttled by Kinesis"), "{m}");
        assert!(is_throttling_code("ProvisionedThroughputExceededException"));
        assert!(!is_throttling_code("ResourceNotFoundException"));
    }
}
