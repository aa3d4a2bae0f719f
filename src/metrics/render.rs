//! Pure rendering of a [`Snapshot`]: Prometheus text exposition format 0.0.4, and health.

use std::fmt::Write;
use std::time::Duration;

use super::Snapshot;

/// Escapes a label value (backslash, double quote, newline).
fn esc(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

struct Out(String);

impl Out {
    fn head(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }
    fn line(&mut self, name: &str, labels: &[(&str, &str)], value: impl std::fmt::Display) {
        self.0.push_str(name);
        if !labels.is_empty() {
            self.0.push('{');
            for (i, (k, v)) in labels.iter().enumerate() {
                if i > 0 {
                    self.0.push(',');
                }
                let _ = write!(self.0, "{k}=\"{}\"", esc(v));
            }
            self.0.push('}');
        }
        let _ = writeln!(self.0, " {value}");
    }
}

fn split_key(key: &str) -> (&str, &str) {
    key.split_once('/').unwrap_or((key, ""))
}

/// One metric with a line per export that has a value for it.
fn per_export(
    o: &mut Out,
    s: &Snapshot,
    name: &str,
    kind: &str,
    help: &str,
    get: fn(&super::ExportSnapshot) -> Option<u64>,
) {
    o.head(name, kind, help);
    for e in &s.exports {
        if let Some(v) = get(e) {
            let (stream, export) = split_key(&e.key);
            o.line(name, &[("stream", stream), ("export", export)], v);
        }
    }
}

/// The Prometheus text for one scrape.
pub fn prometheus(s: &Snapshot) -> String {
    let mut o = Out(String::with_capacity(4096));
    o.head("streamgate_up", "gauge", "1 while the gateway runs.");
    o.line("streamgate_up", &[], 1);
    o.head(
        "streamgate_clock_suspect",
        "gauge",
        "1 while the gateway clock is known to be wrong (samples then carry Ats).",
    );
    o.line("streamgate_clock_suspect", &[], u8::from(s.clock.is_some()));
    if let Some(rss) = s.rss_bytes {
        o.head(
            "streamgate_resident_memory_bytes",
            "gauge",
            "Resident memory of the gateway process.",
        );
        o.line("streamgate_resident_memory_bytes", &[], rss);
    }
    o.head(
        "streamgate_log_write_errors_total",
        "counter",
        "Log lines that could not be written (standard error closed or failing); the gateway goes on without them.",
    );
    o.line("streamgate_log_write_errors_total", &[], s.log_write_errors);

    o.head(
        "streamgate_source_samples_total",
        "counter",
        "Samples read per source since it (re)started.",
    );
    for src in &s.sources {
        o.line(
            "streamgate_source_samples_total",
            &[("source", &src.id)],
            src.samples,
        );
    }
    o.head(
        "streamgate_tag_samples_total",
        "counter",
        "Samples read per tag since its source (re)started.",
    );
    for src in &s.sources {
        for (tag, n) in &src.tags {
            o.line(
                "streamgate_tag_samples_total",
                &[("source", &src.id), ("tag", tag)],
                n,
            );
        }
    }
    o.head(
        "streamgate_source_heartbeats_total",
        "counter",
        "Watermark (Wmk) records sent for idle streams.",
    );
    for src in &s.sources {
        o.line(
            "streamgate_source_heartbeats_total",
            &[("source", &src.id)],
            src.heartbeats,
        );
    }
    o.head(
        "streamgate_source_reconnects_total",
        "counter",
        "Connections to the device lost (each followed by a reconnect with backoff).",
    );
    for src in &s.sources {
        o.line(
            "streamgate_source_reconnects_total",
            &[("source", &src.id)],
            src.losses,
        );
    }
    o.head(
        "streamgate_source_up",
        "gauge",
        "1 while the source reads from its device, 0 while it connects or fails.",
    );
    for src in &s.sources {
        o.line(
            "streamgate_source_up",
            &[("source", &src.id)],
            u8::from(src.state == crate::readers::SourceState::Connected),
        );
    }
    o.head(
        "streamgate_source_failing_seconds",
        "gauge",
        "How long the source has been failing to connect or read (0 while it reads).",
    );
    for src in &s.sources {
        let failing = src
            .failing_since_ms
            .map_or(0, |t| (s.now_ms - t).max(0) / 1000);
        o.line(
            "streamgate_source_failing_seconds",
            &[("source", &src.id)],
            failing,
        );
    }
    o.head(
        "streamgate_source_last_success_timestamp_seconds",
        "gauge",
        "When the source last delivered a good reading (Unix time; absent: never).",
    );
    for src in &s.sources {
        if let Some(t) = src.last_good_ms {
            o.line(
                "streamgate_source_last_success_timestamp_seconds",
                &[("source", &src.id)],
                t / 1000,
            );
        }
    }

    o.head(
        "streamgate_queue_records",
        "gauge",
        "Records queued per stream.",
    );
    for st in &s.streams {
        o.line(
            "streamgate_queue_records",
            &[("stream", &st.name)],
            st.records,
        );
    }
    o.head(
        "streamgate_queue_bytes",
        "gauge",
        "Payload bytes queued per stream.",
    );
    for st in &s.streams {
        o.line("streamgate_queue_bytes", &[("stream", &st.name)], st.bytes);
    }
    o.head(
        "streamgate_queue_max_bytes",
        "gauge",
        "The stream's max_size.",
    );
    for st in &s.streams {
        o.line(
            "streamgate_queue_max_bytes",
            &[("stream", &st.name)],
            st.max_size,
        );
    }
    o.head(
        "streamgate_dropped_total",
        "counter",
        "Records the gateway dropped, by reason (they show downstream as sequence gaps).",
    );
    for st in &s.streams {
        for (reason, n) in [
            ("full", st.dropped_full),
            ("overwritten", st.dropped_overwritten),
            ("ttl", st.dropped_ttl),
            ("disk_full", st.dropped_disk_full),
        ] {
            o.line(
                "streamgate_dropped_total",
                &[("stream", &st.name), ("reason", reason)],
                n,
            );
        }
    }

    type Field = fn(&super::ExportSnapshot) -> Option<u64>;
    let counters: [(&str, &str, Field); 8] = [
        (
            "streamgate_export_delivered_total",
            "Records acknowledged by the destination.",
            |e| Some(e.delivered),
        ),
        (
            "streamgate_export_retried_total",
            "Records sent again after a failure.",
            |e| Some(e.retried),
        ),
        (
            "streamgate_export_dead_lettered_total",
            "Records the destination rejected for good (kept in the dead-letter table).",
            |e| Some(e.dead_lettered),
        ),
        (
            "streamgate_export_sends_total",
            "Send attempts (batches).",
            |e| Some(e.sends),
        ),
        (
            "streamgate_export_failed_sends_total",
            "Send attempts that made no progress (nothing delivered).",
            |e| Some(e.failed_sends),
        ),
        (
            "streamgate_export_throttled_total",
            "Records the destination refused for throughput (sent again at a lower rate).",
            |e| Some(e.throttled),
        ),
        (
            "streamgate_export_possible_duplicates_total",
            "Records sent again whose first send may have arrived (exports that can tell).",
            |e| e.possible_duplicates,
        ),
        (
            "streamgate_export_reconnects_total",
            "Connections to the destination lost (exports that keep one).",
            |e| e.connection_losses,
        ),
    ];
    for (name, help, get) in counters {
        per_export(&mut o, s, name, "counter", help, get);
    }
    let gauges: [(&str, &str, Field); 4] = [
        (
            "streamgate_export_in_flight_requests",
            "Sends (batches) in flight now.",
            |e| Some(e.in_flight),
        ),
        (
            "streamgate_export_rate_limit",
            "The adaptive send limit in records/s while the destination throttles (0: unlimited).",
            |e| Some(e.rate_limit),
        ),
        (
            "streamgate_export_throttled_per_second",
            "Records refused for throughput per second, over the last second of sending.",
            |e| Some(e.throttled_per_s),
        ),
        (
            "streamgate_export_send_rate",
            "Records acknowledged per second, over the last second of sending.",
            |e| Some(e.send_rate),
        ),
    ];
    for (name, help, get) in gauges {
        per_export(&mut o, s, name, "gauge", help, get);
    }
    o.head(
        "streamgate_export_failing_seconds",
        "gauge",
        "How long the export has been failing (0 while healthy).",
    );
    for e in &s.exports {
        let (stream, export) = split_key(&e.key);
        let secs = e
            .failing_since_ms
            .map_or(0.0, |t| (s.now_ms - t).max(0) as f64 / 1000.0);
        o.line(
            "streamgate_export_failing_seconds",
            &[("stream", stream), ("export", export)],
            secs,
        );
    }
    o.head(
        "streamgate_export_backlog_records",
        "gauge",
        "Records queued that the export has not acknowledged.",
    );
    let configured = || {
        s.streams.iter().flat_map(|st| {
            st.exports
                .iter()
                .filter(|e| e.in_config && e.enabled)
                .map(move |e| (st.name.as_str(), e))
        })
    };
    for (stream, e) in configured() {
        o.line(
            "streamgate_export_backlog_records",
            &[("stream", stream), ("export", &e.name)],
            e.backlog,
        );
    }
    o.head(
        "streamgate_export_lag_seconds",
        "gauge",
        "Age of the oldest record the export has not acknowledged (0 when caught up).",
    );
    for (stream, e) in configured() {
        let secs = e
            .oldest_unacked_ms
            .map_or(0.0, |t| (s.now_ms - t).max(0) as f64 / 1000.0);
        o.line(
            "streamgate_export_lag_seconds",
            &[("stream", stream), ("export", &e.name)],
            secs,
        );
    }
    o.0
}

/// The health verdict: degraded when an export has failed for longer than `degraded_after`
/// or the clock is known to be wrong.
pub fn health(s: &Snapshot, degraded_after: Duration) -> (bool, String) {
    let mut problems: Vec<String> = Vec::new();
    for src in &s.sources {
        if let Some(since) = src.failing_since_ms {
            let failing = Duration::from_millis((s.now_ms - since).max(0) as u64);
            if failing > degraded_after {
                problems.push(format!(
                    "source {} has been {} for {} s (limit {} s): {}",
                    src.id,
                    src.state.name(),
                    failing.as_secs(),
                    degraded_after.as_secs(),
                    src.last_error.as_deref().unwrap_or("unknown error")
                ));
            }
        }
    }
    for e in &s.exports {
        if let Some(since) = e.failing_since_ms {
            let failing = Duration::from_millis((s.now_ms - since).max(0) as u64);
            if failing > degraded_after {
                problems.push(format!(
                    "export {} has been failing for {} s (limit {} s): {}",
                    e.key,
                    failing.as_secs(),
                    degraded_after.as_secs(),
                    e.last_error.as_deref().unwrap_or("unknown error")
                ));
            }
        }
    }
    if let Some(v) = &s.clock {
        problems.push(v.to_string());
    }
    let ok = problems.is_empty();
    let body = serde_json::json!({
        "status": if ok { "ok" } else { "degraded" },
        "problems": problems,
        "sources": s.sources.len(),
        "exports": s.exports.len(),
        "queued": s.streams.iter().map(|st| st.records).sum::<u64>(),
    });
    (ok, format!("{body}\n"))
}

#[cfg(test)]
mod tests {
    use super::super::{ExportSnapshot, SourceSnapshot};
    use super::*;
    use crate::queue::{ExportStatus, StreamStatus};

    fn snapshot() -> Snapshot {
        Snapshot {
            now_ms: 100_000,
            sources: vec![SourceSnapshot {
                id: "filler".into(),
                samples: 30,
                heartbeats: 2,
                losses: 1,
                tags: vec![("temp\"1".into(), 20), ("speed".into(), 10)],
                state: crate::readers::SourceState::Failing,
                failing_since_ms: Some(10_000),
                last_error: Some("no response within 1s".into()),
                last_good_ms: Some(5_000),
            }],
            exports: vec![ExportSnapshot {
                key: "line/cloud".into(),
                delivered: 25,
                retried: 4,
                failed_sends: 2,
                sends: 9,
                failing_since_ms: Some(40_000),
                last_error: Some("connection refused".into()),
                possible_duplicates: Some(3),
                throttled: 7,
                in_flight: 3,
                rate_limit: 850,
                ..Default::default()
            }],
            streams: vec![StreamStatus {
                name: "line".into(),
                in_config: true,
                priority: 1,
                records: 5,
                bytes: 500,
                max_size: 1000,
                oldest_at_ms: Some(90_000),
                last_id: 30,
                dropped_full: 7,
                dropped_overwritten: 0,
                dropped_ttl: 1,
                dropped_disk_full: 0,
                exports: vec![ExportStatus {
                    name: "cloud".into(),
                    enabled: true,
                    in_config: true,
                    acked_upto: 25,
                    backlog: 5,
                    oldest_unacked_ms: Some(88_000),
                    delivered: 25,
                    retries: 4,
                    dead_lettered: 0,
                    last_export_ms: None,
                    last_error: None,
                    last_error_ms: None,
                    state: None,
                }],
            }],
            clock: None,
            rss_bytes: Some(1 << 20),
            log_write_errors: 2,
        }
    }

    #[test]
    fn prometheus_text_has_every_family_with_labels() {
        let text = prometheus(&snapshot());
        for line in [
            "streamgate_source_samples_total{source=\"filler\"} 30",
            "streamgate_tag_samples_total{source=\"filler\",tag=\"temp\\\"1\"} 20",
            "streamgate_tag_samples_total{source=\"filler\",tag=\"speed\"} 10",
            "streamgate_source_reconnects_total{source=\"filler\"} 1",
            "streamgate_log_write_errors_total 2",
            "streamgate_source_up{source=\"filler\"} 0",
            "streamgate_source_failing_seconds{source=\"filler\"} 90",
            "streamgate_source_last_success_timestamp_seconds{source=\"filler\"} 5",
            "streamgate_queue_records{stream=\"line\"} 5",
            "streamgate_queue_bytes{stream=\"line\"} 500",
            "streamgate_dropped_total{stream=\"line\",reason=\"full\"} 7",
            "streamgate_dropped_total{stream=\"line\",reason=\"ttl\"} 1",
            "streamgate_export_delivered_total{stream=\"line\",export=\"cloud\"} 25",
            "streamgate_export_retried_total{stream=\"line\",export=\"cloud\"} 4",
            "streamgate_export_failed_sends_total{stream=\"line\",export=\"cloud\"} 2",
            "streamgate_export_throttled_total{stream=\"line\",export=\"cloud\"} 7",
            "streamgate_export_in_flight_requests{stream=\"line\",export=\"cloud\"} 3",
            "streamgate_export_rate_limit{stream=\"line\",export=\"cloud\"} 850",
            "streamgate_export_possible_duplicates_total{stream=\"line\",export=\"cloud\"} 3",
            "streamgate_export_failing_seconds{stream=\"line\",export=\"cloud\"} 60",
            "streamgate_export_backlog_records{stream=\"line\",export=\"cloud\"} 5",
            "streamgate_export_lag_seconds{stream=\"line\",export=\"cloud\"} 12",
            "streamgate_clock_suspect 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in:\n{text}"
            );
        }
        // Every sample line follows its own family's TYPE line.
        let mut family = String::new();
        for l in text.lines() {
            if let Some(rest) = l.strip_prefix("# TYPE ") {
                family = rest.split(' ').next().unwrap().to_string();
            } else if !l.starts_with('#') {
                let name = l.split(['{', ' ']).next().unwrap();
                assert_eq!(name, family, "line `{l}` outside its family");
            }
        }
    }

    #[test]
    fn health_degrades_after_the_limit_and_names_the_export_or_source() {
        let s = snapshot();
        let (ok, body) = health(&s, Duration::from_secs(120));
        assert!(ok, "failing 60 s < 120 s: {body}");
        let (ok, body) = health(&s, Duration::from_secs(30));
        assert!(!ok);
        assert!(body.contains("\"status\":\"degraded\""), "{body}");
        assert!(
            body.contains("export line/cloud has been failing for 60 s"),
            "{body}"
        );
        assert!(body.contains("connection refused"), "{body}");
        // The source has failed for 90 s: named once the limit is below that.
        assert!(
            body.contains(
                "source filler has been failing for 90 s (limit 30 s): no response within 1s"
            ),
            "{body}"
        );
        let (ok, body) = health(&s, Duration::from_secs(75));
        assert!(!ok, "source failing 90 s > 75 s: {body}");
        assert!(
            body.contains("source filler") && !body.contains("export line/cloud"),
            "{body}"
        );
    }
}
