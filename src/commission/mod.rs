//! Commissioning commands: what an engineer runs against a device before writing a config.
//! Each uses the readers' own connection and decoding code, prints a table (or `--json`),
//! never touches a queue, and exits non-zero with the reason when the device cannot be reached.
//! - [`read`]: the tags of a config, read once,
//! - [`scan`]: which Modbus addresses answer, with their values in the common types,
//! - [`browse`]: an OPC UA server's address space, with config-ready node ids,
//! - [`info`]: what an S7 PLC says about itself.

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
