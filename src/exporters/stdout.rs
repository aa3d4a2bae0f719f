//! `kind = "stdout"`: one JSON payload per line on standard output, for the demo, for piping
//! into other tools, and for debugging. A record is delivered once the line was flushed.

use std::io::Write;
use std::time::Duration;

use serde::Deserialize;

use super::{Exporter, Limits, Outcome, SendError};
use crate::config::Errors;
use crate::queue::Record;

pub const LIMITS: Limits = Limits {
    max_batch_size: 10_000,
    default_batch_size: 100,
    max_batch_bytes: 16 << 20,
    default_batch_interval: Duration::from_millis(100),
    max_in_flight_requests: 1,
    default_in_flight_requests: 1,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawStdoutExport {}

#[derive(Debug, Clone)]
pub struct StdoutExportConfig {}

impl RawStdoutExport {
    pub fn validate(&self, _path: &str, _errs: &mut Errors) -> StdoutExportConfig {
        StdoutExportConfig {}
    }
}

#[derive(Default)]
pub struct StdoutExporter {
    buf: Vec<u8>,
}

impl Exporter for StdoutExporter {
    async fn send(&mut self, batch: &[Record]) -> Result<Vec<Outcome>, SendError> {
        self.buf.clear();
        for r in batch {
            self.buf.extend_from_slice(&r.payload);
            self.buf.push(b'\n');
        }
        let mut out = std::io::stdout().lock();
        out.write_all(&self.buf)
            .and_then(|_| out.flush())
            .map_err(|e| SendError::transient(format!("cannot write to standard output: {e}")))?;
        Ok(vec![Outcome::Delivered; batch.len()])
    }
}
