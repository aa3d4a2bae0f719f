//! The normaliser: turns a reader's [`Sample`]s into the unified payload (docs: FIELD.md) —
//! numbering (`meta.sequenceNumber`, per source), flags (`Fst` after a (re)connect, `Lst` and
//! `Syn` on loss, `Ats` while the clock is wrong, watermarks), encoding (once per sample) —
//! and appends them to the queue in batches.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::{Sample, SourceState, SourceStats, WATERMARK_TAG};
use crate::clock::Clock;
use crate::payload::{Flags, Meta, PAYLOAD_VERSION, Payload, Quality, Value};
use crate::queue::{AppendBatch, Appender, NewRecord, QueueError, StateCell};

struct TagState {
    name: String,
    stream: usize,
    /// Sent since the source (re)connected: the next sample carries `Fst` when false.
    seen: bool,
    last: Option<(Value, i64)>,
}

/// Normalises one source's samples and appends them to the queue.
pub struct SourceContext {
    source_index: usize,
    id: String,
    equipment_id: String,
    tags: Vec<TagState>,
    next_seq: u64,
    /// Where each payload is encoded before it is copied out at its exact size.
    scratch: Vec<u8>,
    appender: Appender,
    pending: Vec<NewRecord>,
    /// Streams this source feeds, with when each last got a record.
    streams: Vec<(usize, Instant)>,
    heartbeat: Option<Duration>,
    stats: Arc<SourceStats>,
    /// The gateway clock's verdict (samples get `Ats` while it is known wrong).
    clock: Clock,
    /// Whether the source ever answered since the start.
    ever_connected: bool,
    /// The never-connected `Bad` samples went out.
    never_connected_sent: bool,
    /// Where the queue picks up this source's state line for `status`.
    state_cell: Option<StateCell>,
    /// When the state was last written (it is refreshed at most once a second).
    state_written: Option<Instant>,
}

/// How many records a context buffers before it appends them on its own.
const FLUSH_RECORDS: usize = 2_000;

impl SourceContext {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        source_index: usize,
        id: &str,
        equipment_id: &str,
        default_stream: usize,
        tags: Vec<(String, Option<usize>)>,
        next_seq: u64,
        heartbeat: Option<Duration>,
        appender: Appender,
        stats: Arc<SourceStats>,
    ) -> SourceContext {
        let tags: Vec<TagState> = tags
            .into_iter()
            .map(|(name, stream)| TagState {
                name,
                stream: stream.unwrap_or(default_stream),
                seen: false,
                last: None,
            })
            .collect();
        let mut streams: Vec<(usize, Instant)> = vec![(default_stream, Instant::now())];
        for t in &tags {
            if !streams.iter().any(|(s, _)| *s == t.stream) {
                streams.push((t.stream, Instant::now()));
            }
        }
        SourceContext {
            source_index,
            id: id.to_string(),
            equipment_id: equipment_id.to_string(),
            tags,
            next_seq,
            scratch: Vec::with_capacity(512),
            appender,
            pending: Vec::new(),
            streams,
            heartbeat,
            stats,
            clock: Clock::default(),
            ever_connected: false,
            never_connected_sent: false,
            state_cell: None,
            state_written: None,
        }
    }

    /// Writes the source's state line into `cell`, which the queue persists for `status`.
    pub fn with_state_cell(mut self, cell: StateCell) -> SourceContext {
        self.state_cell = Some(cell);
        self
    }

    /// Judges samples against the gateway's clock (the app's; a fresh one never says wrong).
    pub fn with_clock(mut self, clock: Clock) -> SourceContext {
        self.clock = clock;
        self
    }

    /// The gateway clock the samples are judged against.
    pub fn clock(&self) -> &Clock {
        &self.clock
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// Normalises a sample into the pending batch. `Fst` is added to the first sample of each
    /// tag after (re)connect; non-finite floats become `Bad` with their text as value.
    pub fn push(&mut self, mut sample: Sample) {
        let Some(tag) = self.tags.get_mut(sample.tag) else {
            tracing::error!(tag = sample.tag, source = %self.id, "sample for an unknown tag index ignored");
            return;
        };
        if !tag.seen {
            sample.flags.insert(Flags::FST);
            tag.seen = true;
        }
        if let Value::Float(f) = sample.value
            && !f.is_finite()
        {
            sample.value = Value::Text(f.to_string());
            sample.quality = Quality::Bad;
        }
        tag.last = Some((sample.value.clone(), sample.timestamp_ms));
        let (stream, index) = (tag.stream, sample.tag);
        let good = !sample.flags.contains(Flags::SYN);
        if good {
            self.reading();
        }
        let ok = good && sample.quality == Quality::Ok;
        let now = self.append(stream, Some(index), sample);
        if ok {
            self.stats.last_good_ms.store(now, Ordering::Relaxed);
        }
        self.stats.samples.fetch_add(1, Ordering::Relaxed);
        if let Some((_, n)) = self.stats.tags.get(index) {
            n.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn touch(&mut self, stream: usize) {
        if let Some(s) = self.streams.iter_mut().find(|(s, _)| *s == stream) {
            s.1 = Instant::now();
        }
    }

    /// The source (re)connected: the next sample of every tag carries `Fst`.
    pub fn connected(&mut self) {
        self.first_again();
    }

    /// Whether tag `tag` sent a sample since the source last (re)connected.
    pub fn has_sent(&self, tag: usize) -> bool {
        self.tags.get(tag).is_some_and(|t| t.seen)
    }

    /// Whether the device answered at least once since the start.
    pub fn ever_read(&self) -> bool {
        self.ever_connected
    }

    /// The device answered (a sample that is not synthetic): the source is reading, and a
    /// failure episode ends (one INFO line saying how long it lasted).
    fn reading(&mut self) {
        let stats = &self.stats;
        if stats.state() == SourceState::Connected {
            return;
        }
        let since = stats.failing_since_ms.swap(0, Ordering::Relaxed);
        let failures = stats.failures.swap(0, Ordering::Relaxed);
        if since != 0 {
            tracing::info!(
                source = %self.id,
                failed_attempts = failures,
                failing_for = ?Duration::from_millis((crate::time::now_ms() - since).max(0) as u64),
                "source reading again"
            );
        }
        stats
            .state
            .store(SourceState::Connected as u8, Ordering::Relaxed);
        self.ever_connected = true;
        self.write_state();
    }

    /// A connect or read failed (the reader retries with its backoff). Returns true when this
    /// starts a failure episode: the reader then logs one WARN line saying what failed, and
    /// the repeats at DEBUG (the episode's end is logged here, at the first answer). A source
    /// that never answered since the start sends one `Bad` sample per tag, flagged `Syn`, with
    /// the error as value, so the consumers see it too. A source that was reading also calls
    /// [`SourceContext::lost`].
    pub fn failed(&mut self, error: &dyn std::fmt::Display, timestamp_ms: i64) -> bool {
        let text = error.to_string();
        let stats = self.stats.clone();
        stats.failures.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut last) = stats.last_error.lock() {
            *last = Some(text.clone());
        }
        let starts = stats
            .failing_since_ms
            .compare_exchange(
                0,
                crate::time::now_ms(),
                Ordering::Relaxed,
                Ordering::Relaxed,
            )
            .is_ok();
        let state = if self.ever_connected {
            SourceState::Failing
        } else {
            SourceState::NeverConnected
        };
        stats.state.store(state as u8, Ordering::Relaxed);
        if !self.ever_connected && !self.never_connected_sent {
            self.never_connected_sent = true;
            // Not a first reading (`Fst`): the first real value of each tag still is.
            for t in &mut self.tags {
                t.seen = true;
            }
            for i in 0..self.tags.len() {
                self.push(Sample {
                    tag: i,
                    value: Value::Text(text.clone()),
                    quality: Quality::Bad,
                    timestamp_ms,
                    flags: Flags::SYN,
                });
            }
            self.first_again();
        }
        self.write_state();
        starts
    }

    /// The source's health as `status` shows it (JSON, written where the queue persists it:
    /// see `queue::inspect::SourceHealth`).
    fn write_state(&mut self) {
        self.state_written = Some(Instant::now());
        let Some(cell) = &self.state_cell else { return };
        let stats = &self.stats;
        let health = serde_json::json!({
            "state": stats.state().name(),
            "failing_since_ms": match stats.failing_since_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            "failures": stats.failures.load(Ordering::Relaxed),
            "last_error": stats.last_error(),
            "last_good_ms": match stats.last_good_ms.load(Ordering::Relaxed) {
                0 => None,
                ms => Some(ms),
            },
            "reconnects": stats.losses.load(Ordering::Relaxed),
        });
        if let Ok(mut c) = cell.lock() {
            *c = Some(health.to_string());
        }
    }

    /// The next sample of every tag carries `Fst`.
    fn first_again(&mut self) {
        for t in &mut self.tags {
            t.seen = false;
        }
    }

    /// The source was lost: every tag that sent since the last connect gets one synthetic
    /// `Bad` sample flagged `Lst` (with its last value), so consumers can tell "no data" from
    /// "no change".
    pub fn lost(&mut self, timestamp_ms: i64) {
        self.stats.losses.fetch_add(1, Ordering::Relaxed);
        let lost: Vec<(usize, Value)> = self
            .tags
            .iter()
            .enumerate()
            .filter(|(_, t)| t.seen)
            .filter_map(|(i, t)| t.last.as_ref().map(|(v, _)| (i, v.clone())))
            .collect();
        for (i, value) in lost {
            self.push(Sample {
                tag: i,
                value,
                quality: Quality::Bad,
                timestamp_ms,
                flags: Flags::LST | Flags::SYN,
            });
        }
        self.first_again();
    }

    /// When the next heartbeat is due, if heartbeats are on.
    pub fn heartbeat_due(&self) -> Option<Instant> {
        let interval = self.heartbeat?;
        self.streams.iter().map(|(_, at)| *at + interval).min()
    }

    /// Appends a `Wmk`+`Syn` record to every stream that got nothing for a heartbeat interval:
    /// the source is alive and its event time has reached `timestamp_ms`.
    pub fn heartbeats(&mut self, timestamp_ms: i64) {
        let Some(interval) = self.heartbeat else {
            return;
        };
        let now = Instant::now();
        let idle: Vec<usize> = self
            .streams
            .iter()
            .filter(|(_, at)| now >= *at + interval)
            .map(|(s, _)| *s)
            .collect();
        for stream in idle {
            let watermark = Sample {
                tag: usize::MAX,
                value: Value::Bool(true),
                quality: Quality::Ok,
                timestamp_ms,
                flags: Flags::WMK | Flags::SYN,
            };
            self.append(stream, None, watermark);
            self.stats.heartbeats.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The one place a payload is built: numbers the sample, adds `Ats` while the gateway
    /// clock is known wrong (its time stamped or judged the sample), encodes it once and queues
    /// it for `stream`. `tag`: the tag's index, `None` for a watermark.
    /// Returns the gateway time it stamped (`meta.createdAt`).
    fn append(&mut self, stream: usize, tag: Option<usize>, mut sample: Sample) -> i64 {
        if self.clock.known_wrong() {
            sample.flags.insert(Flags::ATS);
        }
        let name = match tag.and_then(|t| self.tags.get(t)) {
            Some(t) => t.name.as_str(),
            None => WATERMARK_TAG,
        };
        let now = crate::time::now_ms();
        self.scratch.clear();
        Payload {
            version: PAYLOAD_VERSION,
            timestamp: sample.timestamp_ms,
            equipment_id: self.equipment_id.as_str(),
            tag: name,
            value: sample.value,
            quality: sample.quality,
            meta: Meta {
                sequence_number: self.next_seq,
                flags: sample.flags,
                created_at: now,
                source_id: self.id.as_str(),
            },
        }
        .encode(&mut self.scratch);
        // Encoded once into the reused scratch buffer, then copied into an exact-size
        // allocation: a payload waits in memory (append channel, transaction, export batches)
        // and a guessed capacity wasted a fifth of it (or doubled to 512 bytes past 256).
        let payload = self.scratch.as_slice().to_vec();
        self.next_seq += 1;
        self.pending.push(NewRecord {
            stream,
            created_ms: now,
            payload,
        });
        self.touch(stream);
        now
    }

    /// Records waiting to be appended.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Whether enough is pending that the reader should flush before reading more.
    pub fn should_flush(&self) -> bool {
        self.pending.len() >= FLUSH_RECORDS
    }

    /// Appends what is pending; waits when the queue is behind (backpressure).
    pub async fn flush(&mut self) -> Result<(), QueueError> {
        if self.state_cell.is_some()
            && self
                .state_written
                .is_none_or(|at| at.elapsed() >= Duration::from_secs(1))
        {
            self.write_state();
        }
        if self.pending.is_empty() {
            return Ok(());
        }
        let records = std::mem::take(&mut self.pending);
        self.appender
            .append(AppendBatch {
                source: self.source_index,
                next_seq: self.next_seq,
                records,
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::payload::decode;

    fn ctx(
        heartbeat: Option<Duration>,
    ) -> (SourceContext, tokio::sync::mpsc::Receiver<AppendBatch>) {
        let (appender, rx) = Appender::detached(16);
        let tags = vec![("a".to_string(), None), ("b".to_string(), Some(1))];
        let c = SourceContext::new(
            0,
            "src",
            "eq",
            0,
            tags,
            7,
            heartbeat,
            appender,
            Arc::default(),
        );
        (c, rx)
    }

    fn sample(tag: usize, v: f64) -> Sample {
        Sample {
            tag,
            value: Value::Float(v),
            quality: Quality::Ok,
            timestamp_ms: 1000,
            flags: Flags::empty(),
        }
    }

    #[tokio::test]
    async fn numbers_flags_and_routes_samples() {
        let (mut c, mut rx) = ctx(None);
        c.push(sample(0, 1.0));
        c.push(sample(1, 2.0));
        c.push(sample(0, f64::NAN));
        c.lost(2000);
        c.push(sample(0, 3.0));
        c.flush().await.unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch.next_seq, 7 + 6);
        let p: Vec<_> = batch
            .records
            .iter()
            .map(|r| decode(&r.payload).unwrap())
            .collect();
        let seqs: Vec<u64> = p.iter().map(|p| p.meta.sequence_number).collect();
        assert_eq!(seqs, vec![7, 8, 9, 10, 11, 12]);
        assert_eq!(
            batch.records.iter().map(|r| r.stream).collect::<Vec<_>>(),
            vec![0, 1, 0, 0, 1, 0]
        );
        assert_eq!(p[0].meta.flags, Flags::FST);
        assert_eq!(p[1].meta.flags, Flags::FST);
        assert_eq!(p[2].meta.flags, Flags::empty());
        assert_eq!(
            (p[2].quality, p[2].value.clone()),
            (Quality::Bad, Value::Text("NaN".into()))
        );
        // Loss: one Bad Lst+Syn sample per tag with its last value, then Fst again.
        assert_eq!(p[3].meta.flags, Flags::LST | Flags::SYN);
        assert_eq!(p[3].quality, Quality::Bad);
        assert_eq!(p[4].tag, "b");
        assert_eq!(p[4].value, Value::Float(2.0));
        assert_eq!(p[5].meta.flags, Flags::FST);
        assert_eq!(
            (p[5].equipment_id.as_str(), p[5].meta.source_id.as_str()),
            ("eq", "src")
        );
    }

    #[tokio::test]
    async fn heartbeats_go_to_idle_streams_only() {
        let (mut c, mut rx) = ctx(Some(Duration::from_millis(30)));
        assert!(c.heartbeat_due().is_some());
        tokio::time::sleep(Duration::from_millis(40)).await;
        c.push(sample(0, 1.0)); // stream 0 is busy now
        c.heartbeats(5000);
        c.flush().await.unwrap();
        let batch = rx.recv().await.unwrap();
        assert_eq!(batch.records.len(), 2);
        let wmk = decode(&batch.records[1].payload).unwrap();
        assert_eq!(batch.records[1].stream, 1);
        assert_eq!(wmk.tag, WATERMARK_TAG);
        assert_eq!(wmk.meta.flags, Flags::WMK | Flags::SYN);
        assert_eq!(wmk.timestamp, 5000);
        c.heartbeats(5001);
        assert_eq!(c.pending(), 0, "no second heartbeat within the interval");
    }
}
