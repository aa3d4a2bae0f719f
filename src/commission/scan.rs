//! `streamgate scan modbus`: which addresses of one area answer, their raw values and what they
//! read as in the common types and word orders; `--toml` prints a source to paste into a config.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use streamgate::payload::Value;
use streamgate::readers::modbus::address::Area;
use streamgate::readers::modbus::config::{Parity, Transport};
use streamgate::readers::modbus::decode::{self, ByteOrder, DataType};
use streamgate::readers::modbus::line::Lines;
use streamgate::readers::modbus::scan::{self, Found, Scan};

use super::{UNREACHABLE, toml_string};

/// The arguments of `scan modbus`, checked by clap.
#[derive(clap::Args, Debug)]
pub struct ModbusArgs {
    /// HOST or HOST:PORT of a Modbus TCP device or gateway (port 502 when left out). Leave it
    /// out with --serial.
    pub target: Option<String>,
    /// Serial device of a Modbus RTU line instead of TCP, e.g. /dev/ttyUSB0.
    #[arg(long, conflicts_with = "target")]
    pub serial: Option<String>,
    #[arg(long, default_value_t = 9600)]
    pub baud: u32,
    #[arg(long, default_value = "none", value_parser = ["none", "even", "odd"])]
    pub parity: String,
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u8).range(7..=8))]
    pub data_bits: u8,
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=2))]
    pub stop_bits: u8,
    /// Unit id (slave address) asked.
    #[arg(long, default_value_t = 1)]
    pub unit: u8,
    /// Area: holding_register (holding), input_register (input), coil, discrete_input
    /// (discrete).
    #[arg(long, default_value = "holding_register", value_parser = parse_area)]
    pub area: Area,
    /// Addresses to scan, 0-based and inclusive: "0-99", or one address.
    #[arg(long, default_value = "0-99", value_parser = parse_range)]
    pub range: (u16, u16),
    /// Time to wait for each answer, e.g. "500ms".
    #[arg(long, default_value = "1s", value_parser = crate::parse_interval)]
    pub timeout: Duration,
    /// One JSON object per address that answered instead of a table.
    #[arg(long, conflicts_with = "toml")]
    pub json: bool,
    /// Print a `[[sources]]` block with one tag per answering address (or pair, for 32-bit
    /// types), ready to paste into a config.
    #[arg(long)]
    pub toml: bool,
    /// The tags' type for --toml (as `type` in the config): u16, i16, u32, i32, f32, ...
    #[arg(long = "type", default_value = "u16", requires = "toml")]
    pub data_type: String,
    /// The tags' byte order for --toml: ABCD, CDAB, BADC, DCBA.
    #[arg(long, default_value = "ABCD", requires = "toml")]
    pub byte_order: String,
}

fn parse_area(text: &str) -> Result<Area, String> {
    let name = match text {
        "holding" => "holding_register",
        "input" => "input_register",
        "discrete" => "discrete_input",
        other => other,
    };
    Area::ALL
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, a)| *a)
        .ok_or_else(|| {
            format!(
                "\"{text}\" is no area: holding_register, input_register, coil or discrete_input"
            )
        })
}

fn parse_range(text: &str) -> Result<(u16, u16), String> {
    let number = |t: &str| {
        t.trim().parse::<u16>().map_err(|_| {
            format!("\"{t}\" is not an address from 0 to 65535 (scan addresses are 0-based)")
        })
    };
    let (first, last) = match text.split_once('-') {
        Some((a, b)) => (number(a)?, number(b)?),
        None => (number(text)?, number(text)?),
    };
    if first > last {
        return Err(format!("\"{text}\": the range ends before it starts"));
    }
    Ok((first, last))
}

/// HOST, HOST:PORT or [V6]:PORT.
fn parse_target(text: &str) -> Result<(String, u16), String> {
    let port = |p: &str| {
        p.parse::<u16>()
            .map_err(|_| format!("\"{text}\": \"{p}\" is not a port number"))
    };
    if let Some(rest) = text.strip_prefix('[') {
        let (host, after) = rest
            .split_once(']')
            .ok_or_else(|| format!("\"{text}\": missing `]`"))?;
        return match after.strip_prefix(':') {
            Some(p) => Ok((host.to_string(), port(p)?)),
            None => Ok((host.to_string(), 502)),
        };
    }
    match text.split_once(':') {
        Some((host, p)) if !p.contains(':') => Ok((host.to_string(), port(p)?)),
        _ => Ok((text.to_string(), 502)),
    }
}

/// The Modicon number of a 0-based address ("400001" for holding register 0).
fn modicon(area: Area, address: u16) -> String {
    let digit = match area {
        Area::Coil => 0,
        Area::DiscreteInput => 1,
        Area::InputRegister => 3,
        Area::HoldingRegister => 4,
    };
    format!("{digit}{:05}", u32::from(address) + 1)
}

/// What a register (with the next one, for 32-bit types) reads as.
fn interpretations(scan: &Scan, address: u16) -> serde_json::Value {
    let word = |a: u16| match scan.found().get(&a) {
        Some(Found::Word(w)) => Some(*w),
        _ => None,
    };
    let Some(w) = word(address) else {
        return serde_json::Value::Null;
    };
    let mut out = serde_json::json!({
        "raw": format!("0x{w:04X}"),
        "u16": w,
        "i16": w as i16,
    });
    if let Some(next) = address.checked_add(1).and_then(word) {
        for (name, ty) in [
            ("u32", DataType::U32),
            ("i32", DataType::I32),
            ("f32", DataType::F32),
        ] {
            let mut by_order = serde_json::Map::new();
            for (order_name, order) in [
                ("ABCD", ByteOrder::Abcd),
                ("CDAB", ByteOrder::Cdab),
                ("BADC", ByteOrder::Badc),
                ("DCBA", ByteOrder::Dcba),
            ] {
                if let Some(d) = decode::decode(ty, order, &[w, next]) {
                    by_order.insert(order_name.to_string(), json_number(&d.value));
                }
            }
            out[name] = serde_json::Value::Object(by_order);
        }
    }
    out
}

fn json_number(v: &Value) -> serde_json::Value {
    serde_json::to_value(v).unwrap_or(serde_json::Value::Null)
}

fn cell(v: &serde_json::Value, ty: &str, order: &str) -> String {
    match &v[ty][order] {
        serde_json::Value::Null => String::new(),
        other => other.to_string(),
    }
}

/// `streamgate scan modbus`: exit 0 when the whole range was scanned, 69 when the device could
/// not be reached or stopped answering (what was found until then is printed).
pub fn modbus(args: &ModbusArgs) -> anyhow::Result<ExitCode> {
    let (transport, kind, place) = match (&args.target, &args.serial) {
        (Some(target), None) => {
            let (host, port) = match parse_target(target) {
                Ok(t) => t,
                Err(e) => {
                    say!("error: {e}");
                    return Ok(ExitCode::from(super::USAGE));
                }
            };
            let place = format!("host = {}\nport = {port}\n", toml_string(&host));
            (
                Transport::Tcp {
                    host,
                    port,
                    ignore_reply_unit_id: false,
                },
                "modbus_tcp",
                place,
            )
        }
        (None, Some(device)) => {
            let parity = match args.parity.as_str() {
                "even" => Parity::Even,
                "odd" => Parity::Odd,
                _ => Parity::None,
            };
            let place = format!(
                "device = {}\nbaud = {}\nparity = \"{}\"\ndata_bits = {}\nstop_bits = {}\n",
                toml_string(device),
                args.baud,
                args.parity,
                args.data_bits,
                args.stop_bits
            );
            (
                Transport::Rtu {
                    device: device.clone(),
                    baud: args.baud,
                    parity,
                    data_bits: args.data_bits,
                    stop_bits: args.stop_bits,
                },
                "modbus_rtu",
                place,
            )
        }
        _ => {
            say!("error: name a device: HOST[:PORT] for Modbus TCP, or --serial DEVICE for RTU");
            return Ok(ExitCode::from(super::USAGE));
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let started = Instant::now();
    let lines = Lines::default();
    let line = lines.get(
        &transport,
        Duration::from_millis(100),
        Duration::from_millis(500),
    );
    let (first, last) = args.range;
    let (scan, stopped) = rt.block_on(scan::run(
        &line,
        args.unit,
        args.area,
        first,
        last,
        args.timeout,
    ));
    let area = args.area;
    if args.toml {
        print_toml(args, &scan, kind, &place);
    } else if args.json {
        for (address, found) in scan.found() {
            let mut v = match found {
                Found::Bit(b) => serde_json::json!({ "value": b }),
                Found::Word(_) => interpretations(&scan, *address),
            };
            v["address"] = (*address).into();
            v["modicon"] = modicon(area, *address).into();
            out!("{v}");
        }
    } else if area.is_bits() {
        out!("{:>7} {:>8} {:>6}", "address", "modicon", "value");
        for (address, found) in scan.found() {
            if let Found::Bit(b) = found {
                out!("{:>7} {:>8} {:>6}", address, modicon(area, *address), b);
            }
        }
    } else {
        out!(
            "{:>7} {:>8} {:>6} {:>6} {:>6} {:>11} {:>11} {:>11} {:>11} {:>14} {:>14}",
            "address",
            "modicon",
            "raw",
            "u16",
            "i16",
            "u32 ABCD",
            "u32 CDAB",
            "i32 ABCD",
            "i32 CDAB",
            "f32 ABCD",
            "f32 CDAB"
        );
        for address in scan.found().keys() {
            let v = interpretations(&scan, *address);
            out!(
                "{:>7} {:>8} {:>6} {:>6} {:>6} {:>11} {:>11} {:>11} {:>11} {:>14} {:>14}",
                address,
                modicon(area, *address),
                v["raw"].as_str().unwrap_or_default(),
                v["u16"].to_string(),
                v["i16"].to_string(),
                cell(&v, "u32", "ABCD"),
                cell(&v, "u32", "CDAB"),
                cell(&v, "i32", "ABCD"),
                cell(&v, "i32", "CDAB"),
                cell(&v, "f32", "ABCD"),
                cell(&v, "f32", "CDAB")
            );
        }
    }
    let absent: Vec<String> = scan
        .absent()
        .iter()
        .map(|(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    say!(
        "scanned {first}-{last} of unit {} {}s on {}: {} answered, {}; {} requests ({} answered) in {:.2} s",
        args.unit,
        area.name(),
        transport.key(),
        scan.found().len(),
        if absent.is_empty() {
            "none missing".to_string()
        } else {
            format!("missing: {}", absent.join(", "))
        },
        scan.requests(),
        scan.answered_requests(),
        started.elapsed().as_secs_f64()
    );
    if let Some(e) = stopped {
        say!("error: scan stopped: {e}");
        return Ok(ExitCode::from(UNREACHABLE));
    }
    Ok(ExitCode::SUCCESS)
}

/// A source block with one tag per answering address (per run of `width` answering
/// addresses for wider types), named after its area and address.
fn print_toml(args: &ModbusArgs, scan: &Scan, kind: &str, place: &str) {
    let area = args.area;
    let width = match (area.is_bits(), args.data_type.as_str()) {
        (true, _) => 1,
        (false, "u32" | "i32" | "f32") => 2,
        (false, "u64" | "i64" | "f64") => 4,
        _ => 1,
    };
    out!(
        "[[sources]]\nkind = \"{kind}\"\nid = \"scan_unit{}\"\n{place}unit_id = {}\nrequest_timeout = \"{}ms\"",
        args.unit,
        args.unit,
        args.timeout.as_millis()
    );
    let mut next_free = 0u32;
    for address in scan.found().keys() {
        let a = u32::from(*address);
        if a < next_free
            || !(a..a + width)
                .all(|x| u16::try_from(x).is_ok_and(|x| scan.found().contains_key(&x)))
        {
            continue;
        }
        next_free = a + width;
        out!(
            "\n[[sources.tags]]\nname = \"{}_{address}\"\narea = \"{}\"\naddress = {address}",
            area.name(),
            area.name()
        );
        if !area.is_bits() {
            out!("type = {}", toml_string(&args.data_type));
            if width > 1 {
                out!("byte_order = {}", toml_string(&args.byte_order));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arguments() {
        assert_eq!(parse_range("0-99"), Ok((0, 99)));
        assert_eq!(parse_range("7"), Ok((7, 7)));
        assert!(parse_range("9-3").unwrap_err().contains("ends before"));
        assert!(parse_range("0-70000").unwrap_err().contains("0 to 65535"));
        assert_eq!(parse_target("plc:1502"), Ok(("plc".into(), 1502)));
        assert_eq!(parse_target("10.0.0.5"), Ok(("10.0.0.5".into(), 502)));
        assert_eq!(parse_target("[::1]:5020"), Ok(("::1".into(), 5020)));
        assert!(parse_target("plc:x").is_err());
        assert_eq!(parse_area("holding"), Ok(Area::HoldingRegister));
        assert!(parse_area("inputs").is_err());
        assert_eq!(modicon(Area::HoldingRegister, 0), "400001");
        assert_eq!(modicon(Area::Coil, 9), "000010");
    }
}
