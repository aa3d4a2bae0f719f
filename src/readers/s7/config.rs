//! Settings of `kind = "s7"`.

use std::time::Duration;

use serde::Deserialize;

use super::address::{self, Address};
use crate::config::{Errors, StreamNames};
use crate::readers::signal::{self, RawSignal, ReportPolicy, Scaling};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS7 {
    pub host: Option<String>,
    pub port: Option<i64>,
    pub rack: Option<i64>,
    pub slot: Option<i64>,
    pub connection_type: Option<String>,
    pub local_tsap: Option<i64>,
    pub remote_tsap: Option<i64>,
    pub pdu_size: Option<i64>,
    pub interval: Option<String>,
    pub connect_timeout: Option<String>,
    pub request_timeout: Option<String>,
    pub max_items_per_request: Option<i64>,
    pub merge_gap: Option<i64>,
    pub reconnect_min: Option<String>,
    pub reconnect_max: Option<String>,
    pub failed_tag_retry: Option<String>,
    #[serde(default)]
    pub tags: Vec<RawS7Tag>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawS7Tag {
    pub name: String,
    pub address: String,
    pub stream: Option<String>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub deadband: Option<f64>,
    pub max_silence: Option<String>,
}

/// The connection resource a TSAP asks for (high byte of the remote TSAP).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectionType {
    Pg = 1,
    Op = 2,
    S7Basic = 3,
}

#[derive(Debug, Clone)]
pub struct S7Config {
    pub host: String,
    pub port: u16,
    pub local_tsap: u16,
    pub remote_tsap: u16,
    /// The PDU size asked for; the PLC may grant less.
    pub pdu_size: u16,
    /// Time between two poll rounds; zero = back to back (benchmarks).
    pub interval: Duration,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_items_per_request: usize,
    pub merge_gap: u32,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long a tag the PLC refused (object does not exist, ...) rests before it is tried again.
    pub failed_tag_retry: Duration,
    pub tags: Vec<S7Tag>,
}

#[derive(Debug, Clone)]
pub struct S7Tag {
    pub name: String,
    pub stream: Option<usize>,
    /// As written in the config, for logs.
    pub address_text: String,
    pub address: Address,
    /// `value * scale + offset` (numeric addresses only).
    pub scaling: Option<Scaling>,
    /// Report by exception (`deadband`, `max_silence`), as for every polling reader.
    pub report: ReportPolicy,
}

/// Upper bound on the tags of one S7 source.
pub const MAX_TAGS: usize = 10_000;
/// PDU sizes S7 CPUs negotiate: 240 (S7-300, S7-1200) to 960 (S7-1500).
pub const MIN_PDU: i64 = 240;
pub const MAX_PDU: i64 = 960;
/// The item count of a read-var job is one byte, and (960 - 12) / 12 specifications fit.
pub const MAX_ITEMS_PER_REQUEST: i64 = 79;
/// The local TSAP of a client (PG-like, rack 0 slot 0).
pub const DEFAULT_LOCAL_TSAP: u16 = 0x0100;

impl RawS7 {
    pub fn validate(&self, path: &str, streams: &StreamNames, errs: &mut Errors) -> S7Config {
        let host = match self.host.as_deref().map(str::trim) {
            Some(h) if !h.is_empty() => h.to_string(),
            _ => {
                errs.push(format!("{path}.host"), "an s7 source needs a host");
                String::new()
            }
        };
        let port = errs.int(&format!("{path}.port"), self.port, 102, 1, 65535) as u16;
        let tsap_given = self.local_tsap.is_some() || self.remote_tsap.is_some();
        let slot_given =
            self.rack.is_some() || self.slot.is_some() || self.connection_type.is_some();
        if tsap_given && slot_given {
            errs.push(
                format!("{path}.remote_tsap"),
                "give either rack/slot/connection_type or local_tsap/remote_tsap, not both",
            );
        }
        let (local_tsap, remote_tsap) = if tsap_given {
            if self.remote_tsap.is_none() {
                errs.push(
                    format!("{path}.remote_tsap"),
                    "needed with local_tsap (e.g. 0x0301)",
                );
            }
            let local = errs.int(
                &format!("{path}.local_tsap"),
                self.local_tsap,
                i64::from(DEFAULT_LOCAL_TSAP),
                0,
                0xFFFF,
            ) as u16;
            let remote = errs.int(
                &format!("{path}.remote_tsap"),
                self.remote_tsap,
                0x0301,
                0,
                0xFFFF,
            ) as u16;
            (local, remote)
        } else {
            let rack = errs.int(&format!("{path}.rack"), self.rack, 0, 0, 7) as u16;
            let slot = errs.int(&format!("{path}.slot"), self.slot, 1, 0, 31) as u16;
            let kind = errs.choice(
                &format!("{path}.connection_type"),
                self.connection_type.as_deref(),
                ConnectionType::Pg,
                &[
                    ("pg", ConnectionType::Pg),
                    ("op", ConnectionType::Op),
                    ("s7_basic", ConnectionType::S7Basic),
                ],
            );
            (DEFAULT_LOCAL_TSAP, remote_tsap(kind, rack, slot))
        };
        let pdu_size = errs.int(
            &format!("{path}.pdu_size"),
            self.pdu_size,
            480,
            MIN_PDU,
            MAX_PDU,
        ) as u16;
        let interval = errs.duration(
            &format!("{path}.interval"),
            self.interval.as_deref(),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        let connect_timeout = errs.duration(
            &format!("{path}.connect_timeout"),
            self.connect_timeout.as_deref(),
            Duration::from_secs(5),
            Duration::from_millis(10),
        );
        let request_timeout = errs.duration(
            &format!("{path}.request_timeout"),
            self.request_timeout.as_deref(),
            Duration::from_secs(2),
            Duration::from_millis(10),
        );
        let max_items_per_request = errs.int(
            &format!("{path}.max_items_per_request"),
            self.max_items_per_request,
            20,
            1,
            MAX_ITEMS_PER_REQUEST,
        ) as usize;
        let merge_gap = errs.int(&format!("{path}.merge_gap"), self.merge_gap, 16, 0, 256) as u32;
        let (reconnect_min, reconnect_max) = errs.reconnect_backoff(
            path,
            (self.reconnect_min.as_deref(), self.reconnect_max.as_deref()),
            (Duration::from_millis(500), Duration::from_secs(30)),
            Duration::from_millis(10),
        );
        let failed_tag_retry = errs.duration(
            &format!("{path}.failed_tag_retry"),
            self.failed_tag_retry.as_deref(),
            Duration::from_secs(60),
            Duration::from_millis(100),
        );

        let tags = crate::readers::validate_tags(
            path,
            &self.tags,
            MAX_TAGS,
            "an s7 source",
            |t| &t.name,
            errs,
            |tpath, t, errs| tag(tpath, t, streams, errs),
        );
        S7Config {
            host,
            port,
            local_tsap,
            remote_tsap,
            pdu_size,
            interval,
            connect_timeout,
            request_timeout,
            max_items_per_request,
            merge_gap,
            reconnect_min,
            reconnect_max,
            failed_tag_retry,
            tags,
        }
    }
}

/// The remote TSAP of rack/slot: connection type in the high byte, rack * 32 + slot in the low.
pub fn remote_tsap(kind: ConnectionType, rack: u16, slot: u16) -> u16 {
    ((kind as u16) << 8) | (rack * 32 + slot)
}

fn tag(path: &str, t: &RawS7Tag, streams: &StreamNames, errs: &mut Errors) -> Option<S7Tag> {
    let stream = errs.tag_name_and_stream(path, &t.name, t.stream.as_deref(), streams);
    let address = match address::parse(&t.address) {
        Ok(a) => a,
        Err(e) => {
            errs.push(format!("{path}.address"), format!("\"{}\": {e}", t.address));
            return None;
        }
    };
    let (scaling, report) = signal::validate(
        path,
        RawSignal {
            scale: t.scale,
            offset: t.offset,
            deadband: t.deadband,
            max_silence: t.max_silence.as_deref(),
        },
        address.data_type.is_numeric(),
        errs,
    );
    Some(S7Tag {
        name: t.name.clone(),
        stream,
        address_text: t.address.trim().to_string(),
        address,
        scaling,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errors(source: &str) -> Vec<String> {
        let text = format!(
            "[gateway]\ndata_dir = \"/tmp/x\"\nequipment_id = \"e\"\n[[streams]]\nname = \"s\"\n[[sources]]\nkind = \"s7\"\nid = \"plc\"\nstream = \"s\"\n{source}"
        );
        match crate::app::config::parse(&text) {
            Ok(_) => Vec::new(),
            Err(e) => e
                .iter()
                .map(|e| format!("{}: {}", e.path, e.message))
                .collect(),
        }
    }

    #[test]
    fn every_error_with_its_path() {
        let errs = errors(
            r#"rack = 0
remote_tsap = 0x0301
pdu_size = 2000
[[sources.tags]]
name = "a"
address = "DB1.DBX0.9"
[[sources.tags]]
name = "b"
address = "DB1.DBX0.1"
scale = 2.0
[[sources.tags]]
name = "b"
address = "MW2"
deadband = -1.0
"#,
        );
        assert_eq!(
            errs,
            [
                "sources[0].host: an s7 source needs a host",
                "sources[0].remote_tsap: give either rack/slot/connection_type or local_tsap/remote_tsap, not both",
                "sources[0].pdu_size: 2000 is above the limit of 960",
                "sources[0].tags[0].address: \"DB1.DBX0.9\": bit \"9\" is out of range 0..=7",
                "sources[0].tags[1].scale: scale and offset apply to numeric types only",
                "sources[0].tags[2].name: tag \"b\" is defined twice in this source",
                "sources[0].tags[2].deadband: must be a number >= 0",
            ]
        );
        assert!(
            errors("host = \"10.0.0.1\"\n[[sources.tags]]\nname = \"a\"\naddress = \"MW2\"\n")
                .is_empty()
        );
    }

    #[test]
    fn tsaps() {
        assert_eq!(remote_tsap(ConnectionType::Pg, 0, 2), 0x0102);
        assert_eq!(remote_tsap(ConnectionType::Op, 0, 1), 0x0201);
        assert_eq!(remote_tsap(ConnectionType::S7Basic, 1, 3), 0x0323);
    }
}
