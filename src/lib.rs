//! streamgate: an edge gateway daemon.
//!
//! Data flows one way: `readers` produce samples, the `payload` module normalises them into
//! the unified JSON payload, the `queue` keeps them durably (SQLite) and `exporters` ship them,
//! acknowledging each record back to the queue. The queue is the only meeting point.

pub mod app;
pub mod backoff;
#[cfg(feature = "bench")]
pub mod bench;
pub mod clock;
pub mod config;
pub mod exporters;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod metrics;
pub mod payload;
pub mod queue;
pub mod readers;
pub mod runtime;
pub mod status;
pub mod systemd;
pub mod telemetry;
pub mod time;
