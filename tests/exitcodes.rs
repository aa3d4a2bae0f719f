//! `streamgate run` exits with a code the systemd unit can act on: the failures a restart
//! every 5 s cannot fix (another process holds the data directory, the metrics address is
//! taken) exit 69, which `RestartPreventExitStatus=` in systemd/streamgate.service lists. The
//! read-only data directory (73) is in tests/readonly.rs (needs root), an invalid config (78)
//! in tests/security.rs.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

fn run(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run streamgate");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code(), stderr)
}

/// The code the unit must not restart on, read from the unit itself.
fn unit_prevents_restart_on(code: i32) -> bool {
    let unit = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/systemd/streamgate.service"
    ))
    .expect("read the unit");
    unit.lines()
        .filter_map(|l| l.strip_prefix("RestartPreventExitStatus="))
        .flat_map(|l| l.split_whitespace())
        .any(|c| c == code.to_string())
}

#[test]
fn a_locked_data_dir_exits_69_and_is_not_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gw.toml");
    std::fs::write(&cfg, common::minimal_config(&dir.path().join("data"))).unwrap();
    let mut first = common::Gateway::start(&cfg, "info");
    assert!(
        first.wait_for("streamgate running", 1, Duration::from_secs(30)),
        "the first gateway did not start: {:?}",
        first.log()
    );
    let (code, stderr) = run(&cfg);
    assert_eq!(
        code,
        Some(69),
        "second gateway on the same data_dir: {stderr}"
    );
    assert!(stderr.contains("another streamgate process"), "{stderr}");
    assert!(unit_prevents_restart_on(69));
    first.sigterm();
    assert!(first.wait_exit(Duration::from_secs(30)).success());
}

#[test]
fn a_metrics_address_in_use_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let cfg = dir.path().join("gw.toml");
    let metrics = format!("\n[metrics]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n");
    let text = common::minimal_config(&dir.path().join("data")) + &metrics;
    std::fs::write(&cfg, text).unwrap();
    let (code, stderr) = run(&cfg);
    assert_eq!(code, Some(69), "metrics address taken: {stderr}");
    assert!(
        stderr.contains(&port.to_string()),
        "names the address: {stderr}"
    );
    assert!(unit_prevents_restart_on(69) && unit_prevents_restart_on(73));
    drop(taken);
}
