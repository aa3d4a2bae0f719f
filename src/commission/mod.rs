//! Commissioning commands: what an engineer runs against a device before writing a config.
//! Each uses the readers' own connection and decoding code, prints a table (or `--json`),
//! never touches a queue, and exits non-zero with the reason when the device cannot be reached.
//! - [`read`]: the tags of a config, read once,
//! - [`scan`]: which Modbus addresses answer, with their values in the common types,
//! - [`browse`]: an OPC UA server's address space, with config-ready node ids,
//! - [`info`]: what an S7 PLC says about itself.
// Built without any device reader, the commissioning helpers have no user.
#![cfg_attr(
    not(any(feature = "modbus", feature = "s7", feature = "opcua")),
    allow(dead_code)
)]

#[cfg(feature = "opcua")]
pub mod browse;
#[cfg(feature = "s7")]
pub mod info;
pub mod read;
#[cfg(feature = "modbus")]
pub mod scan;

/// Exit code when the device could not be reached or read (EX_UNAVAILABLE).
pub const UNREACHABLE: u8 = streamgate::app::daemon::exit::UNAVAILABLE;
/// Exit code for arguments that name nothing to work on.
pub const USAGE: u8 = 2;

/// Quotes `text` as a TOML basic string.
pub fn toml_string(text: &str) -> String {
    toml::Value::String(text.to_string()).to_string()
}

/// The errors of a source's own validation, named as the command-line options they came
/// from: `opt.security_policy` -> `--security-policy`, any tag's key -> `--{tag_option}`. A
/// source needs tags and these commands do not: that error is left out.
#[cfg_attr(not(any(feature = "s7", feature = "opcua")), allow(dead_code))]
pub fn option_errors(errs: streamgate::config::Errors, tag_option: &str) -> Vec<String> {
    errs.into_vec()
        .into_iter()
        .filter(|e| e.path != "opt.tags")
        .map(|e| {
            let path = e.path.trim_start_matches("opt.");
            let option = if path.starts_with("tags[") {
                tag_option.to_string()
            } else {
                path.replace('_', "-")
            };
            format!("--{option}: {}", e.message)
        })
        .collect()
}

/// A read value as the tables print it: its JSON text, or nothing.
pub fn value_text(value: Option<&streamgate::payload::Value>) -> String {
    value
        .map(|v| serde_json::to_string(v).unwrap_or_default())
        .unwrap_or_default()
}
