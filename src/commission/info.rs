//! `streamgate info s7`: connect as the reader would, show the negotiated PDU size and what
//! the PLC says about itself (module identification, SZL 0x0011), and test-read addresses in
//! the config's notation.

use std::process::ExitCode;
use std::time::Duration;

use streamgate::config::{Errors, StreamNames};
use streamgate::readers::s7::config::{RawS7, RawS7Tag, S7Config};
use streamgate::readers::s7::{self, Client};

use super::UNREACHABLE;

/// The arguments of `info s7`, named as the `kind = "s7"` source keys (docs/s7.md).
#[derive(clap::Args, Debug)]
pub struct S7Args {
    /// The PLC's host name or address.
    pub host: String,
    #[arg(long, default_value_t = 102)]
    pub port: u16,
    /// Rack of the CPU (0 for S7-1200/1500).
    #[arg(long)]
    pub rack: Option<i64>,
    /// Slot of the CPU (S7-300: 2; S7-1200/1500: 1 or 0).
    #[arg(long)]
    pub slot: Option<i64>,
    /// pg, op or s7_basic.
    #[arg(long)]
    pub connection_type: Option<String>,
    /// Instead of rack/slot: the TSAPs, e.g. 0x0100 and 0x0201 (hex with 0x, or decimal).
    #[arg(long, value_parser = parse_tsap)]
    pub local_tsap: Option<i64>,
    #[arg(long, value_parser = parse_tsap)]
    pub remote_tsap: Option<i64>,
    /// The PDU size to ask for (240 to 960).
    #[arg(long)]
    pub pdu_size: Option<i64>,
    /// Time for the connection setup and for each request, e.g. "3s".
    #[arg(long, default_value = "3s", value_parser = crate::parse_interval)]
    pub timeout: Duration,
    /// An address to test-read, as `address` in the config (DB1,REAL8, MW20, ...);
    /// repeat the option.
    #[arg(long = "read")]
    pub reads: Vec<String>,
    /// One JSON object instead of text.
    #[arg(long)]
    pub json: bool,
}

fn parse_tsap(text: &str) -> Result<i64, String> {
    let parsed = match text.strip_prefix("0x").or_else(|| text.strip_prefix("0X")) {
        Some(hex) => i64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    parsed.map_err(|_| format!("\"{text}\" is not a TSAP: write it as 0x0201 or 513"))
}

/// The options as `kind = "s7"` keys, validated by the source's own rules; errors name the
/// command-line option (a test read's address: `--read`).
fn settings(args: &S7Args) -> Result<S7Config, Vec<String>> {
    let timeout = Some(format!("{}ms", args.timeout.as_millis()));
    let raw = RawS7 {
        host: Some(args.host.clone()),
        port: Some(i64::from(args.port)),
        rack: args.rack,
        slot: args.slot,
        connection_type: args.connection_type.clone(),
        local_tsap: args.local_tsap,
        remote_tsap: args.remote_tsap,
        pdu_size: args.pdu_size,
        interval: None,
        connect_timeout: timeout.clone(),
        request_timeout: timeout,
        max_items_per_request: None,
        merge_gap: None,
        reconnect_min: None,
        reconnect_max: None,
        failed_tag_retry: None,
        tags: args
            .reads
            .iter()
            .map(|a| RawS7Tag {
                name: a.clone(),
                address: a.clone(),
                stream: None,
                scale: None,
                offset: None,
                deadband: None,
                max_silence: None,
            })
            .collect(),
    };
    let mut errs = Errors::default();
    let c = raw.validate("opt", &StreamNames::new(Vec::new()), &mut errs);
    let errors = super::option_errors(errs, "read");
    if errors.is_empty() {
        Ok(c)
    } else {
        Err(errors)
    }
}

/// Text of an SZL string field: printable ASCII, trimmed.
fn text(bytes: &[u8]) -> String {
    let printable: String = bytes
        .iter()
        .map(|b| {
            if b.is_ascii_graphic() || *b == b' ' {
                *b as char
            } else {
                ' '
            }
        })
        .collect();
    printable.trim().to_string()
}

/// What the PLC says of itself: SZL 0x0011 (module identification) records as component,
/// order number and version. Records are 28 bytes on Siemens CPUs (index, order number,
/// module type, two version words) and 26 in python-snap7's server (index, order number, a
/// reserved byte, three version bytes); both end with the version.
async fn identification(client: &mut Client) -> Result<Vec<serde_json::Value>, String> {
    let szl = client
        .read_szl(0x0011, 0x0000)
        .await
        .map_err(|e| e.to_string())?;
    let records = szl.records.iter().filter(|r| r.len() >= 25).map(|r| {
        let component = match u16::from_be_bytes([r[0], r[1]]) {
            0x0001 => "module",
            0x0006 => "basic hardware",
            0x0007 => "basic firmware",
            _ => "other",
        };
        let n = r.len();
        serde_json::json!({
            "component": component,
            "order_number": text(&r[2..22]),
            "version": format!("V{}.{}.{}", r[n - 3], r[n - 2], r[n - 1]),
        })
    });
    Ok(records.collect())
}

/// `streamgate info s7`: exit 0 when the PLC answered and every test read succeeded, 69 when
/// it could not be reached or a read failed, 78 for options the source would refuse.
pub fn s7(args: &S7Args) -> anyhow::Result<ExitCode> {
    let config = match settings(args) {
        Ok(c) => c,
        Err(errors) => {
            for e in errors {
                say!("error: {e}");
            }
            return Ok(ExitCode::from(crate::EXIT_CONFIG));
        }
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let options = config.connect_options();
    let endpoint = format!("{}:{}", options.host, options.port);
    let result = rt.block_on(async {
        let mut client = Client::connect(&options).await?;
        let pdu = client.pdu_size();
        let ident = identification(&mut client).await;
        drop(client);
        let all: Vec<usize> = (0..config.tags.len()).collect();
        let reads = s7::read_once(&config, &all).await;
        Ok::<_, s7::S7Error>((pdu, ident, reads))
    });
    let (pdu, ident, reads) = match result {
        Ok(r) => r,
        Err(e) => {
            say!(
                "error: {endpoint} (remote TSAP 0x{:04X}): {e}",
                options.remote_tsap
            );
            return Ok(ExitCode::from(UNREACHABLE));
        }
    };
    let failed = reads.iter().any(|r| r.error.is_some());
    if args.json {
        let (modules, ident_error) = match &ident {
            Ok(m) => (m.clone(), None),
            Err(e) => (Vec::new(), Some(e.clone())),
        };
        let v = serde_json::json!({
            "endpoint": endpoint,
            "local_tsap": format!("0x{:04X}", options.local_tsap),
            "remote_tsap": format!("0x{:04X}", options.remote_tsap),
            "pdu_size": pdu,
            "identification": modules,
            "identification_error": ident_error,
            "reads": reads,
        });
        out!("{v}");
    } else {
        out!(
            "{endpoint}: connected (local TSAP 0x{:04X}, remote TSAP 0x{:04X}), PDU size {pdu} bytes",
            options.local_tsap,
            options.remote_tsap
        );
        match &ident {
            Ok(modules) if modules.is_empty() => {
                out!("identification: none given (SZL 0x0011 empty)")
            }
            Ok(modules) => {
                for m in modules {
                    out!(
                        "{:<15} {:<22} {}",
                        m["component"].as_str().unwrap_or_default(),
                        m["order_number"].as_str().unwrap_or_default(),
                        m["version"].as_str().unwrap_or_default()
                    );
                }
            }
            Err(e) => out!("identification: not given ({e})"),
        }
        for r in &reads {
            out!(
                "read {:<20} {:>16} {:>7.1} ms  {}",
                r.tag,
                super::value_text(r.value.as_ref()),
                r.latency_ms,
                r.error.as_deref().unwrap_or("")
            );
        }
    }
    if failed {
        return Ok(ExitCode::from(UNREACHABLE));
    }
    Ok(ExitCode::SUCCESS)
}
