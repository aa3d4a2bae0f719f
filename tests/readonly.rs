//! A read-only data directory (a tmpfs mounted `-o ro`: needs root, which tests/run has in CI;
//! skipped with a reason otherwise) stops the gateway at start with a clear error naming the
//! path and the fix, and a non-zero exit code: no panic, no bare SQLite message.

mod common;

use std::process::Command;

use common::Tmpfs;

fn run_expecting_failure(cfg: &std::path::Path, data: &std::path::Path, case: &str) {
    let out = Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["run", "--config"])
        .arg(cfg)
        .env("RUST_LOG", "warn")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{case}: exit {:?}, stderr:\n{stderr}", out.status.code());
    assert_eq!(
        out.status.code(),
        Some(73),
        "{case}: EX_CANTCREAT, which the unit does not restart in a loop"
    );
    assert!(!stderr.contains("panicked"), "{case}: no panic");
    assert!(
        stderr.contains("is not writable"),
        "{case}: says what is wrong"
    );
    assert!(
        stderr.contains(&data.display().to_string()),
        "{case}: names the path"
    );
    assert!(stderr.contains("read-write"), "{case}: says how to fix it");
}

#[test]
fn read_only_data_dir_fails_at_start_with_path_and_fix() {
    if !common::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "16m", "")
        .unwrap_or_else(|e| panic!("cannot mount the filesystem for the data dir: {e}"));
    let data = disk.path.join("data");
    let cfg = dir.path().join("readonly.toml");
    std::fs::write(&cfg, common::minimal_config(&data)).unwrap();

    // Empty and read-only: the directory cannot even be created.
    disk.remount("ro");
    run_expecting_failure(&cfg, &data, "empty read-only filesystem");

    // A queue from an earlier run, then the filesystem turned read-only.
    disk.remount("rw");
    let mut gw = common::Gateway::start(&cfg, "warn,streamgate::app=info");
    gw.wait_running();
    gw.sigterm();
    assert!(gw.wait_exit(std::time::Duration::from_secs(30)).success());
    assert!(data.join("queue.db").exists());
    disk.remount("ro");
    run_expecting_failure(&cfg, &data, "existing queue on a read-only filesystem");
}
