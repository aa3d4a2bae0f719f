//! Upgrades keep the queue: a queue database written by an earlier streamgate opens in this
//! one (migrated in one transaction) and every record it held is exported; a database from a
//! newer streamgate is refused, named, and left untouched.
//!
//! `tests/fixtures/queue-unversioned.db` was written by streamgate at `3aa144b` (the last
//! build before the schema version), with this file's `config()` but an MQTT
//! export to a closed port, so its 155 samples stayed queued: source `filler`, 5 tags, sequence
//! numbers 1 to 155, export `cloud` acknowledged up to 0. Keep it: when the schema changes
//! again, add the database of the release before that change beside it.

mod common;

use std::path::Path;
use std::time::Duration;

use streamgate::payload::decode;
use streamgate::queue::SCHEMA_VERSION;

const FIXTURE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/queue-unversioned.db"
);

/// The fixture's stream, export and source, the export now writing files.
fn config(dir: &Path) -> String {
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "fixture-line"

[[streams]]
name = "line"

[[streams.exports]]
name = "cloud"
kind = "file"
path = "{dir}/out"
batch_interval = "10ms"

[[sources]]
kind = "simulator"
id = "filler"
interval = "100ms"

[[sources.tags]]
name = "temp"
repeat = 5
"#,
        dir = dir.display()
    )
}

fn user_version(db: &Path) -> i64 {
    rusqlite::Connection::open(db)
        .unwrap()
        .query_row("PRAGMA user_version", [], |r| r.get(0))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_written_before_schema_versions_is_migrated_and_exported() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("queue.db");
    std::fs::copy(FIXTURE, &db).unwrap();
    assert_eq!(user_version(&db), 0, "the fixture predates versions");
    let cfg = streamgate::app::config::parse(&config(dir.path())).unwrap();
    // Exports only: what is exported is exactly what the old version had queued.
    common::drain_exports(&cfg).await;
    let mut seqs: Vec<u64> = Vec::new();
    for entry in std::fs::read_dir(dir.path().join("out")).unwrap() {
        for line in std::fs::read_to_string(entry.unwrap().path())
            .unwrap()
            .lines()
        {
            let p = decode(line.as_bytes()).unwrap();
            assert_eq!(p.meta.source_id, "filler");
            seqs.push(p.meta.sequence_number);
        }
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=155).collect::<Vec<u64>>(),
        "every queued record, once"
    );
    assert_eq!(user_version(&db), SCHEMA_VERSION);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_queue_from_a_newer_streamgate_is_refused_and_left_untouched() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    let db = data.join("queue.db");
    std::fs::copy(FIXTURE, &db).unwrap();
    rusqlite::Connection::open(&db)
        .unwrap()
        .pragma_update(None, "user_version", SCHEMA_VERSION + 1)
        .unwrap();
    let before = std::fs::read(&db).unwrap();
    let cfg_path = dir.path().join("gw.toml");
    std::fs::write(&cfg_path, config(dir.path())).unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_streamgate"))
        .args(["run", "--config"])
        .arg(&cfg_path)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // It must refuse at once; a gateway that starts on the database fails the test.
    let exited = common::poll_until(Duration::from_secs(20), || {
        child.try_wait().unwrap().is_some()
    });
    if !exited {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(exited, "the gateway started on a newer database: {stderr}");
    assert_eq!(out.status.code(), Some(73), "{stderr}");
    let want = format!(
        "written by a newer streamgate (schema version {}; this one knows up to {SCHEMA_VERSION})",
        SCHEMA_VERSION + 1
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(
        std::fs::read(&db).unwrap(),
        before,
        "the database is left as it was"
    );
    assert!(!data.join("queue.db.corrupt").exists());
}
