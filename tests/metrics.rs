//! Metrics and health: what a scrape shows equals what the run produced, record for record;
//! a failing export turns `/health` degraded after the configured limit; the real daemon
//! serves both on loopback.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

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
    tokio::time::sleep(Duration::from_millis(500)).await;
    p.stop_sources(Duration::from_secs(5)).await;
    // Wait until the export has everything (the queue empties).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let st = p.handle.status().await.unwrap();
        if st[0].records == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "export did not catch up: {st:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let (code, text) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
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
    let (code, body) = tokio::task::spawn_blocking(move || get(addr, "/health"))
        .await
        .unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("\"status\":\"ok\""), "{body}");
    let (code, _) = tokio::task::spawn_blocking(move || get(addr, "/nope"))
        .await
        .unwrap();
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
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (code, body) = tokio::task::spawn_blocking(move || get(addr, "/health"))
        .await
        .unwrap();
    assert_eq!(code, 200, "failing for less than degraded_after: {body}");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (code, body) = tokio::task::spawn_blocking(move || get(addr, "/health"))
        .await
        .unwrap();
    assert_eq!(code, 503, "{body}");
    assert!(
        body.contains("export line/broken has been failing"),
        "{body}"
    );
    let (_, text) = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .unwrap();
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
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["run", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "warn")
        .spawn()
        .unwrap();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let samples = loop {
        if TcpStream::connect(addr).is_ok() {
            let (code, text) = get(addr, "/metrics");
            assert_eq!(code, 200);
            let n = parse(&text)
                .get("streamgate_source_samples_total{source=\"filler\"}")
                .copied()
                .unwrap_or(0.0);
            if n > 20.0 {
                break n;
            }
        }
        assert!(Instant::now() < deadline, "no metrics from the daemon");
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(samples > 20.0);
    let (code, body) = get(addr, "/health");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(code, 200, "{body}");
}
