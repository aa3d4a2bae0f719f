//! Metrics and health: what a scrape shows equals what the run produced, record for record;
//! a failing export turns `/health` degraded after the configured limit; the real daemon
//! serves both on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::Duration;

use common::{Gateway, poll_until_async, stop_sources_and_drain, wait_until, wait_until_async};
use streamgate::app::{Pipeline, StartOptions};
use streamgate::payload::decode;

/// A plain HTTP GET; returns (status code, body).
fn get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n").unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("a full HTTP response");
    let code = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    (code, body.to_string())
}

/// `name{labels} value` lines -> value, keyed by `name{labels}`.
fn parse(text: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| {
            let (k, v) = l.rsplit_once(' ').unwrap();
            (k.to_string(), v.parse().unwrap())
        })
        .collect()
}

fn config(dir: &Path, port: u16, bad_export: bool) -> String {
    let bad = if bad_export {
        // A file export whose directory cannot be created (its parent is a file): every
        // send fails, nothing is lost, the export stays failing.
        std::fs::write(dir.join("not-a-dir"), b"x").unwrap();
        format!(
            r#"
[[streams.exports]]
name = "broken"
kind = "file"
path = "{}/not-a-dir/out"
initial_backoff = "50ms"
max_backoff = "200ms"
"#,
            dir.display()
        )
    } else {
        String::new()
    };
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "metrics-test"
status_interval = "100ms"
report_interval = "0"

[metrics]
listen = "127.0.0.1:{port}"
degraded_after = "1s"

[[streams]]
name = "line"

[[streams.exports]]
name = "files"
kind = "file"
path = "{dir}/out"
batch_interval = "10ms"
{bad}
[[sources]]
kind = "simulator"
id = "filler"
interval = "5ms"

[[sources.tags]]
name = "temperature"
waveform = "sine"

[[sources.tags]]
name = "speed"
waveform = "counter"
"#,
        dir = dir.display()
    )
}

/// How long a test waits for a condition before it fails.
const T: Duration = Duration::from_secs(20);

/// A GET from an async test.
async fn get_async(addr: SocketAddr, path: &'static str) -> (u16, String) {
    tokio::task::spawn_blocking(move || get(addr, path))
        .await
        .unwrap()
}

fn exported_per_tag(dir: &Path) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read(e.unwrap().path()).unwrap();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            *out.entry(decode(line).unwrap().tag).or_default() += 1;
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_counts_equal_what_the_run_produced() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = streamgate::app::config::parse(&config(dir.path(), port, false)).unwrap();
    let mut p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server =
        streamgate::metrics::server::start(cfg.metrics.clone(), p.registry(), stop.clone())
            .await
            .unwrap();
    wait_until_async("200 samples", T, async || p.samples_read() >= 200).await;
    // Until the export has everything (the queue empties).
    stop_sources_and_drain(&mut p, T).await;
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (code, text) = get_async(addr, "/metrics").await;
    assert_eq!(code, 200);
    let m = parse(&text);
    let files = exported_per_tag(&dir.path().join("out"));
    let produced: u64 = files.values().sum();
    assert!(produced > 50, "the run produced samples: {files:?}");
    for tag in ["temperature", "speed"] {
        assert_eq!(
            m[&format!("streamgate_tag_samples_total{{source=\"filler\",tag=\"{tag}\"}}")],
            files[tag] as f64,
            "tag {tag}: scraped count = samples exported"
        );
    }
    assert_eq!(
        m["streamgate_source_samples_total{source=\"filler\"}"],
        produced as f64
    );
    assert_eq!(
        m["streamgate_export_delivered_total{stream=\"line\",export=\"files\"}"],
        produced as f64
    );
    assert_eq!(m["streamgate_queue_records{stream=\"line\"}"], 0.0);
    assert_eq!(
        m["streamgate_export_backlog_records{stream=\"line\",export=\"files\"}"],
        0.0
    );
    assert_eq!(
        m["streamgate_dropped_total{stream=\"line\",reason=\"full\"}"],
        0.0
    );
    assert_eq!(
        m["streamgate_export_failed_sends_total{stream=\"line\",export=\"files\"}"],
        0.0
    );
    let (code, body) = get_async(addr, "/health").await;
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (code, _) = get_async(addr, "/nope").await;
    assert_eq!(code, 404);
    stop.cancel();
    server.await.unwrap();
    p.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_export_degrades_health_after_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = streamgate::app::config::parse(&config(dir.path(), port, true)).unwrap();
    let p = Pipeline::start(&cfg, StartOptions::default()).unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let server =
        streamgate::metrics::server::start(cfg.metrics.clone(), p.registry(), stop.clone())
            .await
            .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let failed_sends = async || {
        let (_, text) = get_async(addr, "/metrics").await;
        parse(&text)
            .get("streamgate_export_failed_sends_total{stream=\"line\",export=\"broken\"}")
            .copied()
            .unwrap_or(0.0)
    };
    wait_until_async("the first failed send", T, async || {
        failed_sends().await >= 1.0
    })
    .await;
    let (code, body) = get_async(addr, "/health").await;
    assert_eq!(code, 200, "failing for less than degraded_after: {body}");
    let mut health = (0, String::new());
    poll_until_async(T, async || {
        health = get_async(addr, "/health").await;
        health.0 != 200
    })
    .await;
    let (code, body) = health;
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("export line/broken has been failing"),
        "{body}"
    );
    let (_, text) = get_async(addr, "/metrics").await;
    let m = parse(&text);
    assert!(m["streamgate_export_failed_sends_total{stream=\"line\",export=\"broken\"}"] >= 2.0);
    assert!(m["streamgate_export_failing_seconds{stream=\"line\",export=\"broken\"}"] >= 1.0);
    assert!(m["streamgate_export_lag_seconds{stream=\"line\",export=\"broken\"}"] >= 1.0);
    assert!(m["streamgate_export_delivered_total{stream=\"line\",export=\"files\"}"] > 0.0);
    assert_eq!(
        m["streamgate_export_delivered_total{stream=\"line\",export=\"broken\"}"],
        0.0
    );
    stop.cancel();
    server.await.unwrap();
    p.stop().await;
}

#[test]
fn the_daemon_serves_metrics_on_loopback() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, config(dir.path(), port, false)).unwrap();
    let mut gw = Gateway::start(&cfg, "warn");
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let samples = || {
        if TcpStream::connect(addr).is_err() {
            return 0.0;
        }
        let (code, text) = get(addr, "/metrics");
        assert_eq!(code, 200);
        parse(&text)
            .get("streamgate_source_samples_total{source=\"filler\"}")
            .copied()
            .unwrap_or(0.0)
    };
    wait_until("samples counted by the daemon's metrics", T, || {
        samples() > 20.0
    });
    let (code, body) = get(addr, "/health");
    gw.sigkill();
    assert_eq!(code, 200, "{body}");
}
