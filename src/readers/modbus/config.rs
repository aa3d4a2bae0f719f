//! Settings of `kind = "modbus_tcp"` and `kind = "modbus_rtu"`.

use std::time::Duration;

use serde::Deserialize;

use super::address::{Area, parse_modicon};
use super::decode::{ByteOrder, DataType};
use super::plan::{Limits, MAX_BITS, MAX_REGISTERS};
use crate::config::{Errors, StreamNames};
use crate::readers::signal::{self, RawSignal, ReportPolicy, Scaling};

/// Keys of both Modbus kinds; the transport keys of the other kind are rejected at validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbus {
    // TCP
    pub host: Option<String>,
    pub port: Option<i64>,
    pub ignore_reply_unit_id: Option<bool>,
    // RTU
    pub device: Option<String>,
    pub baud: Option<i64>,
    pub parity: Option<String>,
    pub data_bits: Option<i64>,
    pub stop_bits: Option<i64>,
    // Both
    pub unit_id: Option<i64>,
    pub interval: Option<String>,
    pub request_timeout: Option<String>,
    pub max_gap: Option<i64>,
    pub max_gap_bits: Option<i64>,
    pub max_registers: Option<i64>,
    pub max_bits: Option<i64>,
    pub reconnect_min: Option<String>,
    pub reconnect_max: Option<String>,
    pub failed_tag_retry: Option<String>,
    #[serde(default)]
    pub tags: Vec<RawModbusTag>,
}

/// An address is an integer (0-based, with `area`) or a string in Modicon notation.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawAddress {
    Offset(i64),
    Modicon(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModbusTag {
    pub name: String,
    pub stream: Option<String>,
    pub area: Option<String>,
    pub address: RawAddress,
    #[serde(rename = "type")]
    pub data_type: Option<String>,
    pub bit: Option<i64>,
    pub registers: Option<i64>,
    pub byte_order: Option<String>,
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub unit: Option<String>,
    pub interval: Option<String>,
    pub deadband: Option<f64>,
    pub max_silence: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Transport {
    Tcp {
        host: String,
        port: u16,
        /// Take replies whatever unit id they carry (devices that always answer 0 or 255).
        ignore_reply_unit_id: bool,
    },
    Rtu {
        device: String,
        baud: u32,
        parity: Parity,
        data_bits: u8,
        stop_bits: u8,
    },
}

impl Transport {
    /// Sources with the same key share one connection (a TCP gateway or a serial line).
    pub fn key(&self) -> String {
        match self {
            Transport::Tcp { host, port, .. } => format!("tcp://{host}:{port}"),
            Transport::Rtu { device, .. } => format!("rtu://{device}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Parity {
    None,
    Even,
    Odd,
}

#[derive(Debug, Clone)]
pub struct ModbusConfig {
    pub transport: Transport,
    pub unit_id: u8,
    pub request_timeout: Duration,
    pub limits: Limits,
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
    /// How long a tag that got a permanent exception (illegal address/function/value) is
    /// left out before it is tried again.
    pub failed_tag_retry: Duration,
    pub tags: Vec<ModbusTag>,
}

#[derive(Debug, Clone)]
pub struct ModbusTag {
    pub name: String,
    pub stream: Option<usize>,
    pub area: Area,
    /// 0-based protocol address.
    pub address: u16,
    pub data_type: DataType,
    pub byte_order: ByteOrder,
    /// `raw * scale + offset`, numeric types only; `None` leaves the raw value.
    pub scaling: Option<Scaling>,
    /// Engineering unit, for documentation (the payload has no unit field yet).
    pub unit: Option<String>,
    pub interval: Duration,
    pub report: ReportPolicy,
}

/// Upper bound on tags per Modbus source.
pub const MAX_TAGS: usize = 10_000;

const ORDERS: [(&str, ByteOrder); 4] = [
    ("ABCD", ByteOrder::Abcd),
    ("CDAB", ByteOrder::Cdab),
    ("BADC", ByteOrder::Badc),
    ("DCBA", ByteOrder::Dcba),
];

impl RawModbus {
    pub fn validate(
        &self,
        path: &str,
        rtu: bool,
        streams: &StreamNames,
        errs: &mut Errors,
    ) -> ModbusConfig {
        let misplaced = |errs: &mut Errors, key: &str, present: bool, kind: &str| {
            if present {
                errs.push(
                    format!("{path}.{key}"),
                    format!("only applies to kind = \"{kind}\""),
                );
            }
        };
        let transport = if rtu {
            misplaced(errs, "host", self.host.is_some(), "modbus_tcp");
            misplaced(errs, "port", self.port.is_some(), "modbus_tcp");
            misplaced(
                errs,
                "ignore_reply_unit_id",
                self.ignore_reply_unit_id.is_some(),
                "modbus_tcp",
            );
            let device = self.device.clone().unwrap_or_default();
            if device.trim().is_empty() {
                errs.push(
                    format!("{path}.device"),
                    "missing: the serial device, e.g. \"/dev/ttyUSB0\"",
                );
            }
            Transport::Rtu {
                device,
                baud: errs.int(&format!("{path}.baud"), self.baud, 9600, 300, 4_000_000) as u32,
                parity: errs.choice(
                    &format!("{path}.parity"),
                    self.parity.as_deref(),
                    Parity::None,
                    &[
                        ("none", Parity::None),
                        ("even", Parity::Even),
                        ("odd", Parity::Odd),
                    ],
                ),
                data_bits: errs.int(&format!("{path}.data_bits"), self.data_bits, 8, 7, 8) as u8,
                stop_bits: errs.int(&format!("{path}.stop_bits"), self.stop_bits, 1, 1, 2) as u8,
            }
        } else {
            for (key, present) in [
                ("device", self.device.is_some()),
                ("baud", self.baud.is_some()),
                ("parity", self.parity.is_some()),
                ("data_bits", self.data_bits.is_some()),
                ("stop_bits", self.stop_bits.is_some()),
            ] {
                misplaced(errs, key, present, "modbus_rtu");
            }
            let host = self.host.clone().unwrap_or_default();
            if host.trim().is_empty() {
                errs.push(
                    format!("{path}.host"),
                    "missing: the device's host name or IP address",
                );
            }
            Transport::Tcp {
                host,
                port: errs.int(&format!("{path}.port"), self.port, 502, 1, 65535) as u16,
                ignore_reply_unit_id: self.ignore_reply_unit_id.unwrap_or(false),
            }
        };
        // RTU: 1..=247 (0 is broadcast, which has no responses). TCP: 0..=255 (0 and 255 are
        // what many TCP-native devices expect).
        let (unit_min, unit_max, unit_default) = if rtu { (1, 247, 1) } else { (0, 255, 1) };
        let unit_id = errs.int(
            &format!("{path}.unit_id"),
            self.unit_id,
            unit_default,
            unit_min,
            unit_max,
        ) as u8;
        let interval = errs.duration(
            &format!("{path}.interval"),
            self.interval.as_deref(),
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        let request_timeout = errs.duration(
            &format!("{path}.request_timeout"),
            self.request_timeout.as_deref(),
            Duration::from_secs(1),
            Duration::from_millis(1),
        );
        let limits = Limits {
            max_gap_registers: errs.int(
                &format!("{path}.max_gap"),
                self.max_gap,
                10,
                0,
                MAX_REGISTERS as i64,
            ) as u16,
            max_gap_bits: errs.int(
                &format!("{path}.max_gap_bits"),
                self.max_gap_bits,
                64,
                0,
                MAX_BITS as i64,
            ) as u16,
            max_registers: errs.int(
                &format!("{path}.max_registers"),
                self.max_registers,
                MAX_REGISTERS as i64,
                1,
                MAX_REGISTERS as i64,
            ) as u16,
            max_bits: errs.int(
                &format!("{path}.max_bits"),
                self.max_bits,
                MAX_BITS as i64,
                1,
                MAX_BITS as i64,
            ) as u16,
        };
        let (reconnect_min, reconnect_max) = errs.reconnect_backoff(
            path,
            (self.reconnect_min.as_deref(), self.reconnect_max.as_deref()),
            (Duration::from_millis(500), Duration::from_secs(30)),
            Duration::from_millis(1),
        );
        let failed_tag_retry = errs.duration(
            &format!("{path}.failed_tag_retry"),
            self.failed_tag_retry.as_deref(),
            Duration::from_secs(60),
            Duration::from_secs(1),
        );
        let tags = crate::readers::validate_tags(
            path,
            &self.tags,
            MAX_TAGS,
            "a Modbus source",
            |t| &t.name,
            errs,
            |tpath, t, errs| tag(tpath, t, interval, &limits, streams, errs),
        );
        ModbusConfig {
            transport,
            unit_id,
            request_timeout,
            limits,
            reconnect_min,
            reconnect_max,
            failed_tag_retry,
            tags,
        }
    }
}

/// Sources on one serial device share the port: its settings must agree. `sources` are
/// (key path, id, config) of every Modbus source, in config order.
pub fn check_shared_lines(sources: &[(&str, &str, &ModbusConfig)], errs: &mut Errors) {
    for (n, (path, _, m)) in sources.iter().enumerate() {
        let first = sources[..n]
            .iter()
            .find(|(_, _, o)| o.transport.key() == m.transport.key());
        let Some((_, id, first)) = first else {
            continue;
        };
        if first.transport == m.transport {
            continue;
        }
        match &m.transport {
            Transport::Rtu { device, .. } => errs.push(
                format!("{path}.baud"),
                format!(
                    "serial device {device:?} is shared with source \"{id}\" whose baud/parity/data_bits/stop_bits differ; sources on one line must agree"
                ),
            ),
            Transport::Tcp { host, port, .. } => errs.push(
                format!("{path}.ignore_reply_unit_id"),
                format!(
                    "{host}:{port} is shared with source \"{id}\" (one connection), which sets ignore_reply_unit_id otherwise; sources on one connection must agree"
                ),
            ),
        }
    }
}

fn tag(
    path: &str,
    t: &RawModbusTag,
    default_interval: Duration,
    limits: &Limits,
    streams: &StreamNames,
    errs: &mut Errors,
) -> Option<ModbusTag> {
    let stream = errs.tag_name_and_stream(path, &t.name, t.stream.as_deref(), streams);
    let area_key = t.area.as_deref().map(|a| {
        errs.choice(
            &format!("{path}.area"),
            Some(a),
            Area::HoldingRegister,
            &Area::ALL,
        )
    });
    let (area, address) = match &t.address {
        RawAddress::Offset(a) => {
            let address = errs.int(&format!("{path}.address"), Some(*a), 0, 0, 65535) as u16;
            let Some(area) = area_key else {
                errs.push(
                    format!("{path}.area"),
                    "missing: with an integer (0-based) address, name the area: \"coil\", \"discrete_input\", \"input_register\" or \"holding_register\"",
                );
                return None;
            };
            (area, address)
        }
        RawAddress::Modicon(text) => match parse_modicon(text) {
            Ok((area, address)) => {
                if let Some(named) = area_key
                    && named != area
                {
                    errs.push(
                        format!("{path}.area"),
                        format!(
                            "\"{}\" contradicts address \"{text}\", which is a {}",
                            named.name(),
                            area.name()
                        ),
                    );
                }
                (area, address)
            }
            Err(e) => {
                errs.push(format!("{path}.address"), e);
                return None;
            }
        },
    };
    let type_name = t
        .data_type
        .as_deref()
        .unwrap_or(if area.is_bits() { "bool" } else { "u16" });
    let data_type = match type_name {
        "bool" => DataType::Bool,
        "bit" => {
            let bit = errs.int(&format!("{path}.bit"), t.bit, 0, 0, 15);
            if t.bit.is_none() {
                errs.push(
                    format!("{path}.bit"),
                    "missing: type = \"bit\" needs the bit number, 0 (least significant) to 15",
                );
            }
            DataType::Bit(bit as u8)
        }
        "u16" => DataType::U16,
        "i16" => DataType::I16,
        "u32" => DataType::U32,
        "i32" => DataType::I32,
        "u64" => DataType::U64,
        "i64" => DataType::I64,
        "f32" => DataType::F32,
        "f64" => DataType::F64,
        "string" => {
            if t.registers.is_none() {
                errs.push(
                    format!("{path}.registers"),
                    "missing: type = \"string\" needs its length in registers (2 characters each)",
                );
            }
            DataType::Str(errs.int(
                &format!("{path}.registers"),
                t.registers,
                1,
                1,
                limits.max_registers as i64,
            ) as u16)
        }
        other => {
            errs.push(
                format!("{path}.type"),
                format!("\"{other}\" is not one of \"bool\", \"bit\", \"u16\", \"i16\", \"u32\", \"i32\", \"u64\", \"i64\", \"f32\", \"f64\", \"string\""),
            );
            return None;
        }
    };
    if t.bit.is_some() && type_name != "bit" {
        errs.push(format!("{path}.bit"), "only applies to type = \"bit\"");
    }
    if t.registers.is_some() && type_name != "string" {
        errs.push(
            format!("{path}.registers"),
            "only applies to type = \"string\"",
        );
    }
    if area.is_bits() != matches!(data_type, DataType::Bool) {
        let msg = if area.is_bits() {
            format!("a {} holds one bit: use type = \"bool\"", area.name())
        } else {
            format!(
                "type = \"bool\" is for coils and discrete inputs; for a bit of a {} use type = \"bit\" with `bit`",
                area.name()
            )
        };
        errs.push(format!("{path}.type"), msg);
    }
    if (address as u32 + data_type.width() as u32) > 65536 {
        errs.push(
            format!("{path}.address"),
            "the value runs past address 65535",
        );
    }
    let byte_order = errs.choice(
        &format!("{path}.byte_order"),
        t.byte_order.as_deref(),
        ByteOrder::Abcd,
        &ORDERS,
    );
    if matches!(data_type, DataType::Str(_))
        && matches!(byte_order, ByteOrder::Cdab | ByteOrder::Dcba)
    {
        errs.push(
            format!("{path}.byte_order"),
            "strings take \"ABCD\" or \"BADC\" (bytes swapped within each register)",
        );
    }
    if t.byte_order.is_some() && matches!(data_type, DataType::Bool | DataType::Bit(_)) {
        errs.push(
            format!("{path}.byte_order"),
            "does not apply to bool or bit tags",
        );
    }
    let interval = errs.duration(
        &format!("{path}.interval"),
        t.interval.as_deref(),
        default_interval,
        Duration::from_millis(1),
    );
    let (scaling, report) = signal::validate(
        path,
        RawSignal {
            scale: t.scale,
            offset: t.offset,
            deadband: t.deadband,
            max_silence: t.max_silence.as_deref(),
        },
        data_type.is_numeric(),
        errs,
    );
    if let Some(u) = &t.unit
        && u.len() > 32
    {
        errs.push(format!("{path}.unit"), "must be at most 32 characters");
    }
    Some(ModbusTag {
        name: t.name.clone(),
        stream,
        area,
        address,
        data_type,
        byte_order,
        scaling,
        unit: t.unit.clone(),
        interval,
        report,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::readers::SourceKind;

    fn parse(sources: &str) -> Result<crate::app::config::Config, Vec<crate::config::ConfigError>> {
        crate::app::config::parse(&format!(
            "[gateway]\ndata_dir = \"/tmp/x\"\nequipment_id = \"e\"\n[[streams]]\nname = \"s\"\n{sources}"
        ))
    }

    #[test]
    fn defaults_and_notations() {
        let cfg = parse(
            "[[sources]]\nkind = \"modbus_tcp\"\nid = \"m\"\nhost = \"h\"\n\
             [[sources.tags]]\nname = \"a\"\naddress = \"40010\"\n\
             [[sources.tags]]\nname = \"b\"\narea = \"input_register\"\naddress = 7\ntype = \"f32\"\nbyte_order = \"DCBA\"\ninterval = \"5s\"\n\
             [[sources.tags]]\nname = \"c\"\naddress = \"100001\"\n",
        )
        .unwrap();
        let SourceKind::ModbusTcp(m) = &cfg.sources[0].kind else {
            panic!("not modbus_tcp")
        };
        assert_eq!(
            m.transport,
            Transport::Tcp {
                host: "h".into(),
                port: 502,
                ignore_reply_unit_id: false,
            }
        );
        assert_eq!((m.unit_id, m.request_timeout), (1, Duration::from_secs(1)));
        let t = &m.tags;
        assert_eq!(
            (t[0].area, t[0].address, t[0].data_type),
            (Area::HoldingRegister, 9, DataType::U16)
        );
        assert_eq!(
            (t[1].area, t[1].address, t[1].byte_order),
            (Area::InputRegister, 7, ByteOrder::Dcba)
        );
        assert_eq!(t[1].interval, Duration::from_secs(5));
        assert_eq!(
            (t[2].area, t[2].data_type),
            (Area::DiscreteInput, DataType::Bool)
        );
    }

    #[test]
    fn units_on_one_serial_line_must_agree_on_its_settings() {
        let rtu = |id: &str, baud: u32| {
            format!(
                "[[sources]]\nkind = \"modbus_rtu\"\nid = \"{id}\"\ndevice = \"/dev/ttyS0\"\nbaud = {baud}\n[[sources.tags]]\nname = \"a\"\naddress = \"40001\"\n"
            )
        };
        assert!(parse(&(rtu("a", 19200) + &rtu("b", 19200))).is_ok());
        let errs = parse(&(rtu("a", 19200) + &rtu("b", 9600))).unwrap_err();
        assert_eq!(errs.len(), 1, "{errs:?}");
        assert_eq!(errs[0].path, "sources[1].baud");
    }

    #[test]
    fn every_error_with_its_path() {
        let errs = parse(
            "[[sources]]\nkind = \"modbus_rtu\"\nid = \"m\"\nhost = \"h\"\nunit_id = 0\nparity = \"mark\"\n\
             [[sources.tags]]\nname = \"a\"\naddress = \"40001\"\ntype = \"bit\"\n\
             [[sources.tags]]\nname = \"b\"\naddress = \"40001\"\ntype = \"bool\"\nscale = 2.0\n\
             [[sources.tags]]\nname = \"c\"\naddress = \"465536\"\ntype = \"u32\"\nmax_silence = \"5s\"\n",
        )
        .unwrap_err();
        let paths: Vec<&str> = errs.iter().map(|e| e.path.as_str()).collect();
        for p in [
            "sources[0].host",
            "sources[0].device",
            "sources[0].parity",
            "sources[0].unit_id",
            "sources[0].tags[0].bit",
            "sources[0].tags[1].type",
            "sources[0].tags[1].scale",
            "sources[0].tags[2].address",
            "sources[0].tags[2].max_silence",
        ] {
            assert!(paths.contains(&p), "{p} missing in {errs:?}");
        }
    }
}
