//! `kind = "s7"`: reads Siemens S7-300/400/1200/1500 PLCs with S7comm over ISO-on-TCP
//! (RFC 1006, port 102). The protocol client is our own (no dependency beyond tokio):
//! - [`codec`]: TPKT, COTP and S7 frames as pure functions,
//! - [`address`]: `DB1.DBX0.0`, `DB1,REAL8`, `MW20` ... parsed into area, byte, type,
//! - [`value`]: bytes -> payload values,
//! - [`plan`]: tags -> multi-variable read requests that fit the negotiated PDU,
//! - [`client`]: the connection (tokio), one job in flight, a timeout on every step,
//! - this module: the poll loop, per-tag errors, reconnects with backoff.
//!
//! Device errors (a return code per item: object does not exist, access denied, address out of
//! range) are per tag: one `Bad` sample naming the code, one log line, then the tag rests for
//! `failed_tag_retry` so a wrong address does not cost a request every round. When a merged
//! range fails, its tags are isolated and re-read one by one to find which is at fault.
//! Transport errors (connection refused or lost, timeouts, malformed frames) drop the
//! connection: `Lst` for every tag, reconnect with exponential backoff and jitter, `Fst` after.

pub mod address;
pub mod client;
pub mod codec;
pub mod config;
pub mod plan;
pub mod value;

use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub use client::{Client, ConnectOptions, S7Error};
pub use config::{RawS7, S7Config};

use super::{Sample, SourceContext};
use crate::backoff::Backoff;
use crate::payload::{Flags, Quality, Value};
use crate::readers::signal::Reporter;
use codec::{CodecError, HeaderError, ItemResult};
use plan::{Limits, Plan, TagSpan};

/// Why the PLC would not give a tag's value.
/// Pause between rounds with nothing to read when `interval` is zero.
const IDLE_WAIT: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The item's return code.
    Item(u8),
    /// The whole job was refused (error class and code in the header).
    Job(HeaderError),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Item(code) => write!(f, "{} (0x{code:02X})", codec::return_code_name(*code)),
            Failure::Job(e) => write!(f, "job refused: {e}"),
        }
    }
}

#[derive(Debug, Default)]
struct TagState {
    /// Not merged with neighbours (a range it was part of failed).
    isolated: bool,
    /// Refused by the PLC: left out of the plan until this instant.
    resting_until: Option<Instant>,
    /// The failure last reported (logged and sent as `Bad`), so it is reported once.
    reported: Option<String>,
    /// Report by exception (deadband, max_silence).
    reporter: Reporter,
}

impl S7Config {
    /// Where and how the reader (and `streamgate read`) connect.
    pub fn connect_options(&self) -> ConnectOptions {
        ConnectOptions {
            host: self.host.clone(),
            port: self.port,
            local_tsap: self.local_tsap,
            remote_tsap: self.remote_tsap,
            pdu_size: self.pdu_size,
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
        }
    }

    /// The read of one tag alone: its bytes, from its first byte.
    fn item(&self, t: usize) -> codec::Item {
        let a = &self.tags[t].address;
        codec::Item {
            area: a.area.code(),
            db: a.area.db_number(),
            start: a.byte,
            len: a.data_type.size() as u16,
        }
    }

    /// A tag's value from its bytes, scaled as configured; `Err`: the text of its `Bad` sample.
    fn value(&self, t: usize, bytes: &[u8]) -> Result<Value, String> {
        let tag = &self.tags[t];
        let v = value::decode(tag.address.data_type, bytes)
            .map_err(|e| format!("cannot decode: {e}"))?;
        Ok(match tag.scaling {
            Some(s) => s.apply(v),
            None => v,
        })
    }
}

/// Reads each of `tags` (indexes into `config.tags`) once, one request per tag, on a connection
/// of its own: for commissioning (`streamgate read`), never touching a queue. A failed connect
/// is every tag's error.
pub async fn read_once(config: &S7Config, tags: &[usize]) -> Vec<super::TagRead> {
    let mut out = Vec::with_capacity(tags.len());
    let started = std::time::Instant::now();
    let timestamp = crate::time::now_ms();
    let mut client = match Client::connect(&config.connect_options()).await {
        Ok(c) => c,
        Err(e) => {
            let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
            for &t in tags {
                out.push(super::TagRead::failed(
                    &config.tags[t].name,
                    timestamp,
                    latency_ms,
                    e.to_string(),
                ));
            }
            return out;
        }
    };
    let mut lost: Option<String> = None;
    for &t in tags {
        let name = &config.tags[t].name;
        let started = std::time::Instant::now();
        let timestamp = crate::time::now_ms();
        if let Some(why) = &lost {
            out.push(super::TagRead::failed(name, timestamp, 0.0, why.clone()));
            continue;
        }
        let answer = client.read(&[config.item(t)]).await;
        let latency_ms = started.elapsed().as_secs_f64() * 1000.0;
        let result = match answer {
            Ok(mut items) => match items.pop() {
                Some(Ok(bytes)) => config.value(t, &bytes),
                Some(Err(code)) => Err(Failure::Item(code).to_string()),
                None => Err(Failure::Item(0).to_string()),
            },
            Err(S7Error::Protocol(CodecError::Rejected(e))) => Err(Failure::Job(e).to_string()),
            Err(e) => {
                // The connection is gone: the tags after this one are not tried.
                lost = Some(e.to_string());
                Err(e.to_string())
            }
        };
        out.push(match result {
            Ok(v) => super::TagRead::good(name, v, Quality::Ok, timestamp, latency_ms),
            Err(why) => super::TagRead::failed(name, timestamp, latency_ms, why),
        });
    }
    out
}

pub struct S7Reader {
    config: S7Config,
    state: Vec<TagState>,
    plan: Option<Plan>,
}

impl S7Reader {
    pub fn new(config: S7Config) -> S7Reader {
        let state = config.tags.iter().map(|_| TagState::default()).collect();
        S7Reader {
            config,
            state,
            plan: None,
        }
    }

    /// Runs until `shutdown`; the last round is flagged `Lst` and flushed before returning.
    pub async fn run(mut self, mut ctx: SourceContext, shutdown: CancellationToken) {
        let c = &self.config;
        let mut backoff = Backoff::new(c.reconnect_min, c.reconnect_max);
        tracing::info!(
            host = %c.host, port = c.port, tags = c.tags.len(),
            remote_tsap = format_args!("0x{:04X}", c.remote_tsap),
            "s7 reader started"
        );
        let options = c.connect_options();
        let endpoint = format!("{}:{}", options.host, options.port);
        'connection: while !shutdown.is_cancelled() {
            let connected = tokio::select! {
                r = Client::connect(&options) => r,
                _ = shutdown.cancelled() => break,
            };
            let mut client = match connected {
                Ok(client) => client,
                Err(e) => {
                    let wait = backoff.fail(rand::rng().random());
                    if ctx.failed(&e, crate::time::now_ms()) {
                        tracing::warn!(%endpoint, error = %e, retry_in = ?wait, "cannot connect to the PLC");
                    } else {
                        tracing::debug!(%endpoint, error = %e, retry_in = ?wait, "cannot connect to the PLC (again)");
                    }
                    if ctx.flush().await.is_err() {
                        return;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue,
                        _ = shutdown.cancelled() => break,
                    }
                }
            };
            tracing::info!(%endpoint, pdu_size = client.pdu_size(), "connected to the PLC");
            // The backoff is reset by the first round that reads, not by the connect: a PLC
            // that completes the handshake but never answers a read must not be reconnected
            // to at the initial delay forever.
            ctx.connected();
            self.plan = None;
            for s in &mut self.state {
                s.reporter.reset();
                s.resting_until = None;
            }
            let interval = self.config.interval.max(Duration::from_millis(1));
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                if !self.config.interval.is_zero() {
                    let heartbeat = ctx.heartbeat_due();
                    tokio::select! {
                        _ = ticker.tick() => {}
                        _ = tokio::time::sleep_until(heartbeat.unwrap_or_else(Instant::now)), if heartbeat.is_some() => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                let last = shutdown.is_cancelled();
                let flags = if last { Flags::LST } else { Flags::empty() };
                let outcome = self.round(&mut client, &mut ctx, flags).await;
                if let Ok(0) = outcome
                    && self.config.interval.is_zero()
                    && !last
                {
                    // Every tag is resting: do not spin while reading back to back.
                    tokio::select! {
                        _ = tokio::time::sleep(IDLE_WAIT) => {}
                        _ = shutdown.cancelled() => {}
                    }
                }
                if outcome.is_ok() {
                    backoff.reset();
                }
                if let Err(e) = outcome {
                    let wait = backoff.fail(rand::rng().random());
                    if ctx.failed(&e, crate::time::now_ms()) {
                        tracing::warn!(%endpoint, error = %e, retry_in = ?wait, "connection to the PLC lost");
                    } else {
                        tracing::debug!(%endpoint, error = %e, retry_in = ?wait, "connection to the PLC lost (again)");
                    }
                    ctx.lost(crate::time::now_ms());
                    if ctx.flush().await.is_err() {
                        return;
                    }
                    if last {
                        break 'connection;
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(wait) => continue 'connection,
                        _ = shutdown.cancelled() => break 'connection,
                    }
                }
                ctx.heartbeats(crate::time::now_ms());
                if ctx.flush().await.is_err() {
                    return;
                }
                if last {
                    break 'connection;
                }
            }
        }
        if let Err(e) = ctx.flush().await {
            tracing::warn!(error = %e, "could not queue the s7 reader's last samples");
        }
        tracing::info!(next_sequence = ctx.next_seq(), "s7 reader stopped");
    }

    /// The plan of this round: rebuilt when tags were isolated or a resting tag is due again.
    fn current_plan(&mut self, pdu_size: u16) -> &Plan {
        let now = Instant::now();
        let mut dirty = self.plan.is_none();
        for s in &mut self.state {
            if s.resting_until.is_some_and(|t| now >= t) {
                s.resting_until = None;
                dirty = true;
            }
        }
        if dirty {
            let spans: Vec<Option<TagSpan>> = self
                .config
                .tags
                .iter()
                .zip(&self.state)
                .map(|(t, s)| {
                    s.resting_until.is_none().then_some(TagSpan {
                        area: t.address.area.code(),
                        db: t.address.area.db_number(),
                        start: t.address.byte,
                        len: t.address.data_type.size(),
                        isolated: s.isolated,
                    })
                })
                .collect();
            let limits = Limits {
                pdu_size,
                max_items: self.config.max_items_per_request,
                merge_gap: self.config.merge_gap,
            };
            let p = plan::plan(&spans, limits);
            tracing::debug!(
                requests = p.requests.len(),
                ranges = p.ranges.len(),
                "read plan"
            );
            self.plan = Some(p);
        }
        self.plan.get_or_insert_with(Plan::default)
    }

    /// One poll round: every request of the plan, then one sample per readable tag.
    /// Returns the number of read jobs sent.
    async fn round(
        &mut self,
        client: &mut Client,
        ctx: &mut SourceContext,
        flags: Flags,
    ) -> Result<usize, S7Error> {
        let timestamp_ms = crate::time::now_ms();
        let pdu_size = client.pdu_size();
        let requests = self.current_plan(pdu_size).requests.clone();
        let mut answers: Vec<Vec<Result<Vec<u8>, Failure>>> = Vec::with_capacity(requests.len());
        for items in &requests {
            match client.read(items).await {
                Ok(results) => answers.push(results.into_iter().map(item_failure).collect()),
                Err(S7Error::Protocol(CodecError::Rejected(e))) => {
                    answers.push(items.iter().map(|_| Err(Failure::Job(e))).collect());
                }
                Err(e) => return Err(e),
            }
        }
        let Some(plan) = self.plan.take() else {
            return Ok(requests.len());
        };
        let mut replan = false;
        // The flags of a device sample: the PLC gives no timestamp, the gateway's clock does.
        let flags = flags | Flags::ATS;
        for range in &plan.ranges {
            let mut bytes = Vec::with_capacity(range.len as usize);
            let mut failure = None;
            for &(r, i) in &range.chunks {
                match answers.get(r).and_then(|a| a.get(i)) {
                    Some(Ok(b)) => bytes.extend_from_slice(b),
                    Some(Err(f)) => {
                        failure = Some(*f);
                        break;
                    }
                    None => {
                        failure = Some(Failure::Item(0));
                        break;
                    }
                }
            }
            if let Some(f) = failure {
                if range.tags.len() > 1 {
                    // Which tag is at fault? Read them one by one from the next round on.
                    tracing::debug!(failure = %f, tags = range.tags.len(), "merged range refused; isolating its tags");
                    for &t in &range.tags {
                        self.state[t].isolated = true;
                    }
                } else {
                    for &t in &range.tags {
                        self.refused(ctx, t, &f.to_string(), timestamp_ms, flags);
                    }
                }
                replan = true;
                continue;
            }
            for &t in &range.tags {
                let Some((_, offset)) = plan.tags[t] else {
                    continue;
                };
                let from = (offset as usize).min(bytes.len());
                match self.config.value(t, &bytes[from..]) {
                    Ok(v) => self.good(ctx, t, v, timestamp_ms, flags),
                    Err(text) => self.bad(ctx, t, &text, timestamp_ms, flags),
                }
            }
        }
        self.plan = (!replan).then_some(plan);
        Ok(requests.len())
    }

    fn good(&mut self, ctx: &mut SourceContext, t: usize, v: Value, ts: i64, flags: Flags) {
        let tag = &self.config.tags[t];
        let state = &mut self.state[t];
        if let Some(was) = state.reported.take() {
            tracing::info!(tag = %tag.name, address = %tag.address_text, was = %was, "tag readable again");
        }
        let now = Instant::now();
        // The last round before a stop (`Lst`) is sent whatever the deadband says.
        let flags = if flags.contains(Flags::LST) {
            state.reporter.sent(&v, Quality::Ok, now);
            flags
        } else {
            match state.reporter.decide(&tag.report, &v, Quality::Ok, now) {
                Some(more) => flags | more,
                None => return,
            }
        };
        ctx.push(Sample {
            tag: t,
            value: v,
            quality: Quality::Ok,
            timestamp_ms: ts,
            flags,
        });
    }

    /// A value that could not be decoded: one `Bad` sample and one log line per new reason.
    fn bad(&mut self, ctx: &mut SourceContext, t: usize, reason: &str, ts: i64, flags: Flags) {
        let tag = &self.config.tags[t];
        let state = &mut self.state[t];
        state.reporter.reset();
        if state.reported.as_deref() == Some(reason) && !flags.contains(Flags::LST) {
            return;
        }
        tracing::warn!(tag = %tag.name, address = %tag.address_text, error = %reason, "bad value");
        state.reported = Some(reason.to_string());
        ctx.push(Sample {
            tag: t,
            value: Value::Text(reason.to_string()),
            quality: Quality::Bad,
            timestamp_ms: ts,
            flags,
        });
    }

    /// The PLC refused a tag: report it once, then let it rest.
    fn refused(&mut self, ctx: &mut SourceContext, t: usize, reason: &str, ts: i64, flags: Flags) {
        let retry = self.config.failed_tag_retry;
        let state = &mut self.state[t];
        state.resting_until = Some(Instant::now() + retry);
        state.reporter.reset();
        if state.reported.as_deref() == Some(reason) {
            return;
        }
        let tag = &self.config.tags[t];
        tracing::warn!(
            tag = %tag.name, address = %tag.address_text, error = %reason, retry_in = ?retry,
            "the PLC refused the tag"
        );
        state.reported = Some(reason.to_string());
        ctx.push(Sample {
            tag: t,
            value: Value::Text(reason.to_string()),
            quality: Quality::Bad,
            timestamp_ms: ts,
            flags,
        });
    }
}

fn item_failure(r: ItemResult) -> Result<Vec<u8>, Failure> {
    r.map_err(Failure::Item)
}
