//! The application: the configuration file as a whole ([`config`]) and the running gateway
//! ([`pipeline`]: readers -> queue -> exporters, started and stopped in order). The only
//! module that knows every component; each component builds itself from its validated config.

pub mod config;
pub mod pipeline;

pub use pipeline::*;
