//! An operator sees every source: a Modbus source pointed at a port where nothing listens
//! shows as "never connected" in `status` and `status --json`, `/health` turns degraded naming
//! it, the metrics say it is down, its tags reach the export as `Bad` samples (flagged `Syn`,
//! the error as value), and the log says it once (one WARN for the whole outage).

#![cfg(feature = "modbus")]

mod common;

use std::io::{Read, Write};
use std::process::Command;
use std::time::Duration;

use common::Gateway;

fn get(port: u16, path: &str) -> (u16, String) {
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return (0, String::new());
    };
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    );
    let mut text = String::new();
    let _ = s.read_to_string(&mut text);
    let code = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = text
        .split("\r\n\r\n")
        .nth(1)
        .unwrap_or_default()
        .to_string();
    (code, body)
}

#[test]
fn a_source_that_never_connects_is_visible_everywhere() {
    let dir = tempfile::tempdir().unwrap();
    let metrics = common::free_port();
    let device = common::free_port(); // nothing listens there
    let out = dir.path().join("out");
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[gateway]
data_dir = "{data}"
equipment_id = "line1"
status_interval = "200ms"

[metrics]
enabled = true
listen = "127.0.0.1:{metrics}"
degraded_after = "1s"

[[streams]]
name = "line"

[[streams.exports]]
name = "file"
kind = "file"
path = "{out}"
batch_interval = "100ms"

[[sources]]
kind = "modbus_tcp"
id = "plc"
host = "127.0.0.1"
port = {device}
interval = "100ms"
reconnect_min = "50ms"
reconnect_max = "200ms"

[[sources.tags]]
name = "temperature"
address = "40001"

[[sources.tags]]
name = "pressure"
address = "40002"
"#,
            data = common::toml_path(&dir.path().join("data")),
            out = common::toml_path(&out),
        ),
    )
    .unwrap();
    let mut gw = Gateway::start(&cfg, "info");
    gw.wait_running();

    // /health: degraded, naming the source and why.
    let mut health = String::new();
    common::wait_until("/health degraded", Duration::from_secs(30), || {
        let (code, body) = get(metrics, "/health");
        health = body;
        code == 503
    });
    assert!(
        health.contains("source plc has been never connected for") && health.contains("refused"),
        "{health}"
    );

    // Metrics: down, failing, no good reading ever.
    let (_, body) = get(metrics, "/metrics");
    assert!(
        body.contains("streamgate_source_up{source=\"plc\"} 0"),
        "{body}"
    );
    assert!(
        !body.contains("streamgate_source_last_success_timestamp_seconds{source=\"plc\"}"),
        "{body}"
    );

    // The export got one Bad sample per tag, flagged Syn, saying why.
    let bad = || common::exported_json(&out);
    common::wait_until("Bad samples exported", Duration::from_secs(30), || {
        bad().len() >= 2
    });
    let samples = bad();
    assert_eq!(samples.len(), 2, "one per tag, once: {samples:?}");
    for s in &samples {
        assert_eq!(s["quality"], "Bad", "{s}");
        assert_eq!(s["meta"]["flags"], serde_json::json!(["Syn"]), "{s}");
        assert!(
            s["value"].as_str().is_some_and(|v| v.contains("refused")),
            "{s}"
        );
    }

    // status --json: never connected, with its failures and last error.
    let mut report = serde_json::Value::Null;
    common::wait_until(
        "status shows the source failing",
        Duration::from_secs(30),
        || {
            let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
                .args(["status", "--json", "--config"])
                .arg(&cfg)
                .output()
                .unwrap();
            report = serde_json::from_slice(&out.stdout).unwrap_or_default();
            report["sources"][0]["health"]["failures"].as_u64() >= Some(5)
        },
    );
    let h = &report["sources"][0]["health"];
    assert_eq!(h["state"], "never connected", "{report}");
    assert!(
        h["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("refused")),
        "{report}"
    );
    assert!(h["failing_since_ms"].as_i64().is_some(), "{report}");
    let human = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["status", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let human = String::from_utf8_lossy(&human.stdout);
    assert!(human.contains("NEVER CONNECTED for"), "{human}");

    // Many failed attempts, one WARN line.
    gw.sigterm();
    assert!(gw.wait_exit(Duration::from_secs(30)).success());
    let failures = h["failures"].as_u64().unwrap_or(0);
    let warns = gw
        .log()
        .iter()
        .filter(|l| l.contains("WARN") && l.contains("device unreachable"))
        .count();
    assert_eq!(
        warns,
        1,
        "{failures} failed attempts, one WARN:\n{}",
        gw.log().join("\n")
    );
}
