//! `kind = "modbus_tcp"` and `kind = "modbus_rtu"`: polls a register map (TOML) from one unit
//! id and turns it into samples.
//!
//! - [`address`], [`decode`], [`plan`] and [`report`] are pure: address notations, types x
//!   byte orders, request coalescing, report by exception.
//! - [`line`] owns a connection shared by every source behind the same TCP endpoint or
//!   serial device; requests on it are serialised.
//! - [`ModbusReader`] polls tag groups (tags with the same interval), one coalesced read at a
//!   time. Device exceptions and malformed answers are per tag (Bad, logged, the tag left out
//!   for `failed_tag_retry`); timeouts and transport errors are per source: every tag gets one
//!   Bad+`Lst` sample, the source backs off, and the first samples after reconnect carry `Fst`.
//!
//! Timestamps: Modbus carries no device time, so `timestamp` is the gateway's clock when the
//! tag's own request went out ([`line::Line::read`]), and every sample carries `Ats`
//! as FIELD.md defines it ("the gateway replaced the device's timestamp: no device time"), the
//! same rule as the S7 reader: consumers can tell gateway-stamped from device-stamped data.

pub mod address;
pub mod config;
pub mod decode;
pub mod line;
pub mod plan;
pub mod scan;
pub mod unit;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_modbus::ExceptionCode;
use tokio_util::sync::CancellationToken;

use crate::readers::signal::Reporter;
pub use config::{ModbusConfig, RawModbus};
use decode::DataType;
use line::{Data, Line, Lines, ReadError, Sent};
use plan::{Need, Read};

use super::{Sample, SourceContext};
use crate::backoff::Backoff;
use crate::payload::{Flags, Quality, Value};

/// Tags polled at the same interval, with their coalesced reads.
struct Group {
    interval: Duration,
    tags: Vec<usize>,
    next: Instant,
    reads: Vec<Read>,
    replan: bool,
}

#[derive(Default)]
struct TagRun {
    reporter: Reporter,
    /// Left out of the reads until then, after a permanent exception or a malformed answer.
    excluded_until: Option<Instant>,
    /// The fault last logged, so a failing tag is logged once, not every retry.
    fault: Option<Fault>,
    /// A read of this tag failed at transport level (timeout, wrong answer) and was sent as
    /// `Bad`; cleared when it reads again.
    transport_reported: bool,
}

/// Why the device did not serve one tag's read, while the connection held.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Fault {
    Exception(ExceptionCode),
    /// An answer with another register count than asked.
    Malformed,
}

impl Fault {
    /// The fault of a per-read error ([`ReadError::per_read`]); `None` for the others.
    fn of(error: &ReadError) -> Option<Fault> {
        match error {
            ReadError::Exception(code) => Some(Fault::Exception(*code)),
            ReadError::Malformed(_) => Some(Fault::Malformed),
            _ => None,
        }
    }

    /// About the request, not the device's state: retried only after `failed_tag_retry`.
    fn leave_out(self) -> bool {
        match self {
            Fault::Exception(code) => permanent(code),
            Fault::Malformed => true,
        }
    }
}

/// An error that ends a poll round: the connection or the device is gone, or it answered a
/// read with something that is not an answer. `tags`: those of the read that failed.
struct Outage {
    error: ReadError,
    tags: Vec<usize>,
}

pub struct ModbusReader {
    config: ModbusConfig,
    line: Arc<Line>,
    groups: Vec<Group>,
    tags: Vec<TagRun>,
}

/// Permanent exceptions: about the request (address, function, value), not the device's state.
fn permanent(code: ExceptionCode) -> bool {
    matches!(
        code,
        ExceptionCode::IllegalFunction
            | ExceptionCode::IllegalDataAddress
            | ExceptionCode::IllegalDataValue
    )
}

/// The value of `tag` in a read's `data`, `offset` registers (or bits) in: decoded in its
/// type and byte order, then scaled. `Bad` when the data is too short for it.
fn tag_value(tag: &config::ModbusTag, data: &Data, offset: u16) -> (Value, Quality) {
    let off = offset as usize;
    let decoded = match (data, tag.data_type) {
        (Data::Bits(bits), DataType::Bool) => bits.get(off).map(|b| decode::Decoded {
            value: Value::Bool(*b),
            quality: Quality::Ok,
        }),
        (Data::Words(words), ty) => words
            .get(off..)
            .and_then(|w| decode::decode(ty, tag.byte_order, w)),
        _ => None,
    };
    match decoded {
        Some(d) => {
            let value = match tag.scaling {
                Some(s) => s.apply(d.value),
                None => d.value,
            };
            (value, d.quality)
        }
        None => (Value::Text("short response".into()), Quality::Bad),
    }
}

/// Reads each of `tags` (indexes into `config.tags`) once, one request per tag, on a
/// connection of its own: for commissioning (`streamgate read`), never touching a queue.
pub async fn read_once(config: &ModbusConfig, tags: &[usize]) -> Vec<super::TagRead> {
    let lines = Lines::default();
    let line = lines.get(
        &config.transport,
        config.reconnect_min,
        config.reconnect_max,
    );
    let mut out = Vec::with_capacity(tags.len());
    for &t in tags {
        let tag = &config.tags[t];
        let started = std::time::Instant::now();
        let (sent, result) = line
            .read(
                config.unit_id,
                tag.area,
                tag.address,
                tag.data_type.width(),
                config.request_timeout,
            )
            .await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        out.push(match result {
            Ok(data) => {
                let (value, quality) = tag_value(tag, &data, 0);
                super::TagRead::good(&tag.name, value, quality, sent.ms, latency_ms)
            }
            Err(e) => super::TagRead::failed(&tag.name, sent.ms, latency_ms, e.to_string()),
        });
    }
    out
}

/// A failed coalesced read worth splitting into one read per tag: the fault is about the
/// request (a permanent exception, a malformed answer), so some of its tags may read alone.
fn isolate(error: &ReadError) -> bool {
    Fault::of(error).is_some_and(Fault::leave_out)
}

impl ModbusReader {
    pub fn new(config: ModbusConfig, lines: &Lines) -> ModbusReader {
        let line = lines.get(
            &config.transport,
            config.reconnect_min,
            config.reconnect_max,
        );
        let mut by_interval: BTreeMap<Duration, Vec<usize>> = BTreeMap::new();
        for (i, t) in config.tags.iter().enumerate() {
            by_interval.entry(t.interval).or_default().push(i);
        }
        let now = Instant::now();
        let groups = by_interval
            .into_iter()
            .map(|(interval, tags)| Group {
                interval,
                tags,
                next: now,
                reads: Vec::new(),
                replan: true,
            })
            .collect();
        let tags = config.tags.iter().map(|_| TagRun::default()).collect();
        ModbusReader {
            config,
            line,
            groups,
            tags,
        }
    }

    fn plan_group(&mut self, g: usize, now: Instant) {
        let group = &mut self.groups[g];
        for &t in &group.tags {
            if let Some(until) = self.tags[t].excluded_until
                && now >= until
            {
                self.tags[t].excluded_until = None;
                group.replan = true;
            }
        }
        if !group.replan {
            return;
        }
        let needs: Vec<Need> = group
            .tags
            .iter()
            .filter(|&&t| self.tags[t].excluded_until.is_none())
            .map(|&t| {
                let tag = &self.config.tags[t];
                Need {
                    tag: t,
                    area: tag.area,
                    address: tag.address,
                    count: tag.data_type.width(),
                }
            })
            .collect();
        group.reads = plan::plan(&needs, self.config.limits);
        group.replan = false;
    }

    fn emit(
        &mut self,
        ctx: &mut SourceContext,
        tag: usize,
        value: Value,
        quality: Quality,
        sent: Sent,
    ) {
        let policy = self.config.tags[tag].report;
        if let Some(flags) = self.tags[tag]
            .reporter
            .decide(&policy, &value, quality, sent.at)
        {
            ctx.push(Sample {
                tag,
                value,
                quality,
                timestamp_ms: sent.ms,
                flags: flags | Flags::ATS,
            });
        }
    }

    /// Decodes the tags a successful read served.
    fn deliver(&mut self, ctx: &mut SourceContext, read: &Read, data: &Data, sent: Sent) {
        for &(t, offset) in &read.tags {
            let tag = &self.config.tags[t];
            let (value, quality) = tag_value(tag, data, offset);
            if quality == Quality::Bad {
                tracing::error!(tag = %tag.name, "response too short for this tag");
            }
            self.tags[t].transport_reported = false;
            if let Some(fault) = self.tags[t].fault.take() {
                tracing::info!(tag = %tag.name, previous = ?fault, "tag reads again");
            }
            self.emit(ctx, t, value, quality, sent);
        }
    }

    /// A read the device rejected (exception) or answered with something that is not an
    /// answer (malformed): about this tag, not the connection. The tag is sent `Bad` saying
    /// why, logged once per fault, and left out for `failed_tag_retry` when the fault is about
    /// the request (a permanent exception, a malformed answer).
    fn rejected(&mut self, ctx: &mut SourceContext, t: usize, error: &ReadError, sent: Sent) {
        let tag = &self.config.tags[t];
        let run = &mut self.tags[t];
        let Some(fault) = Fault::of(error) else {
            return;
        };
        let leave_out = fault.leave_out();
        if run.fault != Some(fault) {
            let end = tag.address as u32 + tag.data_type.width() as u32 - 1;
            match fault {
                Fault::Exception(code) if leave_out => tracing::error!(
                    tag = %tag.name, area = tag.area.name(), address = tag.address, last_address = end,
                    unit_id = self.config.unit_id, exception = %code,
                    retry_in = ?self.config.failed_tag_retry,
                    "device rejected the read of this tag; check the register map. The tag is sent as Bad and left out until retried"
                ),
                Fault::Exception(code) => {
                    tracing::warn!(tag = %tag.name, unit_id = self.config.unit_id, exception = %code, "device could not serve the read; tag sent as Bad")
                }
                Fault::Malformed => tracing::warn!(
                    tag = %tag.name, area = tag.area.name(), address = tag.address, last_address = end,
                    unit_id = self.config.unit_id, error = %error,
                    retry_in = ?self.config.failed_tag_retry,
                    "device answered the read of this tag with something that is not an answer; the tag is sent as Bad and left out until retried, the other tags read on"
                ),
            }
            run.fault = Some(fault);
        }
        if leave_out {
            run.excluded_until = Some(sent.at + self.config.failed_tag_retry);
        }
        let text = match error {
            ReadError::Exception(code) => format!("exception: {code}"),
            other => other.to_string(),
        };
        self.emit(ctx, t, Value::Text(text), Quality::Bad, sent);
    }

    /// The read's result and its timestamp (when the request went out).
    async fn read(&self, read: &Read) -> (Sent, Result<Data, ReadError>) {
        self.line
            .read(
                self.config.unit_id,
                read.area,
                read.address,
                read.count,
                self.config.request_timeout,
            )
            .await
    }

    /// Polls one group. An exception on a coalesced read is retried tag by tag, so one bad
    /// address does not take its neighbours down.
    async fn poll(&mut self, ctx: &mut SourceContext, g: usize) -> Result<(), Outage> {
        let now = Instant::now();
        self.plan_group(g, now);
        let reads = self.groups[g].reads.clone();
        for read in &reads {
            let (sent, result) = self.read(read).await;
            match result {
                Ok(data) => self.deliver(ctx, read, &data, sent),
                Err(error) if isolate(&error) && read.tags.len() > 1 => {
                    tracing::debug!(error = %error, address = read.address, count = read.count, "coalesced read failed; reading its tags one by one");
                    for &(t, _) in &read.tags {
                        let tag = &self.config.tags[t];
                        let single = Read {
                            area: tag.area,
                            address: tag.address,
                            count: tag.data_type.width(),
                            tags: vec![(t, 0)],
                        };
                        let (sent, result) = self.read(&single).await;
                        match result {
                            Ok(data) => self.deliver(ctx, &single, &data, sent),
                            Err(error) if error.per_read() => self.rejected(ctx, t, &error, sent),
                            Err(error) => {
                                return Err(Outage {
                                    error,
                                    tags: vec![t],
                                });
                            }
                        }
                    }
                    self.groups[g].replan = true;
                }
                Err(error) if error.per_read() => {
                    for &(t, _) in &read.tags {
                        self.rejected(ctx, t, &error, sent);
                    }
                    if isolate(&error) {
                        self.groups[g].replan = true;
                    }
                }
                Err(error) => {
                    return Err(Outage {
                        error,
                        tags: read.tags.iter().map(|(t, _)| *t).collect(),
                    });
                }
            }
            if ctx.should_flush() && ctx.flush().await.is_err() {
                return Ok(());
            }
        }
        Ok(())
    }

    /// Polls until `shutdown`; then every tag gets its `Lst` sample.
    pub async fn run(mut self, mut ctx: SourceContext, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(self.config.reconnect_min, self.config.reconnect_max);
        let mut connected = false;
        let mut outage_logged = false;
        tracing::info!(line = %self.line.key(), unit_id = self.config.unit_id, tags = self.config.tags.len(), groups = self.groups.len(), "modbus reader started");
        'run: while let Some(next) = self.groups.iter().map(|g| g.next).min() {
            let heartbeat = ctx.heartbeat_due();
            tokio::select! {
                _ = tokio::time::sleep_until(next) => {}
                _ = tokio::time::sleep_until(heartbeat.unwrap_or(next)), if heartbeat.is_some() => {}
                _ = shutdown.cancelled() => break,
            }
            let now = Instant::now();
            for g in 0..self.groups.len() {
                if self.groups[g].next > now {
                    continue;
                }
                let interval = self.groups[g].interval;
                // No catch-up burst after a stall: the next poll is one interval from now.
                self.groups[g].next = (self.groups[g].next + interval).max(now);
                let result = tokio::select! {
                    r = self.poll(&mut ctx, g) => r,
                    _ = shutdown.cancelled() => break 'run,
                };
                match result {
                    Ok(()) => {
                        if !connected {
                            tracing::info!(line = %self.line.key(), unit_id = self.config.unit_id, "reading");
                            connected = true;
                            outage_logged = false;
                        }
                        backoff.reset();
                    }
                    Err(Outage { error, tags }) => {
                        // The loss below sends Lst for the tags that sent since the connect.
                        let covered: Vec<bool> =
                            tags.iter().map(|t| connected && ctx.has_sent(*t)).collect();
                        if connected {
                            ctx.lost(crate::time::now_ms());
                            connected = false;
                        }
                        // Tags whose own read failed and that the loss did not cover (they
                        // never read since the source last did): one Bad sample per episode,
                        // saying why, so the consumers see them too. (A source that never
                        // read at all sends its own Bad samples, see SourceContext::failed.)
                        if ctx.ever_read() {
                            for (t, covered) in tags.into_iter().zip(covered) {
                                let reported =
                                    std::mem::replace(&mut self.tags[t].transport_reported, true);
                                if !reported && !covered {
                                    ctx.push(Sample {
                                        tag: t,
                                        value: Value::Text(error.to_string()),
                                        quality: Quality::Bad,
                                        timestamp_ms: crate::time::now_ms(),
                                        flags: Flags::SYN | Flags::ATS,
                                    });
                                }
                            }
                        }
                        for t in &mut self.tags {
                            t.reporter.reset();
                        }
                        let mut until = Instant::now() + backoff.fail(rand::random::<f64>());
                        if let ReadError::Down { until: line_until } = error {
                            until = until.max(line_until);
                        }
                        // One WARN per outage (the context tracks the episode; `status`,
                        // /health and the metrics show it meanwhile), the repeats at DEBUG.
                        // Sources sharing a line that is backing off report the line's error.
                        if !matches!(error, ReadError::Down { .. }) || !outage_logged {
                            let retry_in = until.saturating_duration_since(Instant::now());
                            if ctx.failed(&error, crate::time::now_ms()) {
                                tracing::warn!(line = %self.line.key(), unit_id = self.config.unit_id, error = %error, retry_in = ?retry_in, "device unreachable; tags sent as Bad/Lst, reconnecting with backoff");
                            } else {
                                tracing::debug!(line = %self.line.key(), unit_id = self.config.unit_id, error = %error, retry_in = ?retry_in, "device still unreachable");
                            }
                            outage_logged = true;
                        }
                        for g in &mut self.groups {
                            g.next = g.next.max(until);
                        }
                        break;
                    }
                }
            }
            ctx.heartbeats(crate::time::now_ms());
            if ctx.flush().await.is_err() {
                return;
            }
        }
        ctx.lost(crate::time::now_ms());
        if let Err(e) = ctx.flush().await {
            tracing::warn!(error = %e, "could not queue the modbus reader's last samples");
        }
        tracing::info!(next_sequence = ctx.next_seq(), "modbus reader stopped");
    }
}
