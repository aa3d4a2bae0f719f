//! The application: the only module that knows every component.
//! - [`config`]: the configuration file as a whole (each component validates its own keys);
//! - [`pipeline`]: readers -> queue -> exporters, started and stopped in order; each component
//!   builds itself from its validated config (`readers::Readers::spawn`, `exporters::spawn`);
//! - [`reload`]: applying a new config while running, restarting only what changed;
//! - [`daemon`]: the service around the pipeline (signals' effects, systemd, metrics, progress).

pub mod config;
pub mod daemon;
pub mod pipeline;
pub mod reload;

pub use daemon::{ReloadRequests, RunError, run};
pub use pipeline::{Pipeline, StartOptions};
pub use reload::{ReloadError, ReloadReport};
