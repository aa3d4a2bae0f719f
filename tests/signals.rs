//! A daemon whose log reader goes away must still stop and reload: started as
//! `streamgate run ... 2>&1 | head -2`, the pipe closes after two lines. Every later log line
//! fails to write; that is counted (`streamgate_log_write_errors_total`), never fatal, and
//! SIGHUP and SIGTERM keep working.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::wait_until;

fn config(dir: &Path, port: u16, exports: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "signals"

[metrics]
enabled = true
listen = "127.0.0.1:{port}"

[[streams]]
name = "line"
{exports}

[[sources]]
kind = "simulator"
id = "sim"
interval = "20ms"

[[sources.tags]]
name = "t"
"#,
        dir = common::toml_path(dir)
    )
}

fn file_export(name: &str, dir: &Path) -> String {
    format!(
        "\n[[streams.exports]]\nname = \"{name}\"\nkind = \"file\"\npath = \"{}\"\n",
        common::toml_path(dir)
    )
}

/// Bytes written below `dir` so far.
fn written(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .flatten()
                .filter_map(|e| e.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn scrape(port: u16) -> String {
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("metrics listener");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut body = String::new();
    let _ = s.read_to_string(&mut body);
    body
}

fn metric(body: &str, name: &str) -> Option<u64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

#[test]
fn closed_stderr_does_not_stop_reload_or_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let (first, second) = (dir.path().join("first"), dir.path().join("second"));
    let cfg = dir.path().join("gw.toml");
    std::fs::write(
        &cfg,
        config(dir.path(), port, &file_export("first", &first)),
    )
    .unwrap();
    // Not common::Gateway: that one reads the whole log; this pipe must close after two lines.
    let mut child = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["run", "--log-format", "human", "--config"])
        .arg(&cfg)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start streamgate");
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    // Like `| head -2`: read two lines, then close the pipe.
    for _ in 0..2 {
        lines.next().expect("a log line").expect("utf-8");
    }
    drop(lines);
    wait_until(
        "samples in the first export",
        Duration::from_secs(30),
        || written(&first) > 0,
    );

    // Reload: a second export joins; it starts writing only if the reload happened.
    let both = file_export("first", &first) + &file_export("second", &second);
    std::fs::write(&cfg, config(dir.path(), port, &both)).unwrap();
    let pid = child.id().to_string();
    let status = Command::new("kill").args(["-HUP", &pid]).status().unwrap();
    assert!(status.success());
    wait_until(
        "the reloaded config's new export writes",
        Duration::from_secs(30),
        || written(&second) > 0,
    );
    let errors = metric(&scrape(port), "streamgate_log_write_errors_total");
    assert!(
        errors.is_some_and(|n| n > 0),
        "failed log writes are counted: {errors:?}"
    );

    let status = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    assert!(status.success());
    let mut exit = None;
    if !common::poll_until(Duration::from_secs(30), || {
        exit = child.try_wait().unwrap();
        exit.is_some()
    }) {
        let _ = child.kill();
        panic!("SIGTERM with a closed stderr did not stop the gateway within 30 s");
    }
    assert_eq!(exit.unwrap().code(), Some(0), "a clean stop");
}
