//! Disk full: the data directory is a small tmpfs (mounted by the test: needs root, which
//! tests/run has in CI; skipped with a reason otherwise). One export keeps exporting (files
//! outside the tmpfs), another can never deliver, so the queue grows until the disk is full.
//! The test then fills what is left with a filler file, checks that the gateway applies the
//! stream's strategy, counts `dropped_disk_full`, logs ONE error line naming the path, shows it
//! in `status`, keeps everything it had committed, and recovers BY ITSELF once the filler is
//! deleted: the episode is reported as ended and new samples are queued and exported again.

mod common;

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use common::{Gateway, Ledger, Tmpfs, wait_until};

const LOG: &str = "warn,streamgate::exporters=error,streamgate::queue=info";

fn config(disk: &Path, dir: &Path, strategy: &str) -> String {
    format!(
        r#"
[gateway]
data_dir = "{disk}/data"
equipment_id = "diskfull-test"
status_interval = "100ms"
report_interval = "0"

[[streams]]
name = "line"
durability = "process_crash"
max_size = "1GiB"
strategy_on_full = "{strategy}"

[[streams.exports]]
name = "files"
kind = "file"
path = "{dir}/out"
batch_size = 500
batch_interval = "10ms"

# Never delivers (a directory it cannot create): every record stays queued.
[[streams.exports]]
name = "stuck"
kind = "file"
path = "/proc/streamgate-cannot-write-here"

[[sources]]
kind = "simulator"
id = "sim"
interval = "5ms"

[[sources.tags]]
name = "t"
waveform = "sine"
repeat = 20
"#,
        disk = disk.display(),
        dir = dir.display()
    )
}

/// Writes zeros into `path` until the filesystem has less than `leave` bytes free.
fn fill(path: &Path, leave: u64) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 256 * 1024];
    let dir = path.parent().unwrap();
    while streamgate::queue::disk::free_bytes(dir).unwrap() > leave + chunk.len() as u64 {
        if f.write_all(&chunk).is_err() {
            break;
        }
    }
    let _ = f.sync_all();
}

fn status(disk: &Path) -> streamgate::status::StatusReport {
    streamgate::status::read(&disk.join("data")).expect("status readable during the episode")
}

fn disk_full_episode(strategy: &str) {
    let test = format!("diskfull ({strategy})");
    if !common::require_root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(&dir.path().join("disk"), "48m", "").unwrap_or_else(|e| {
        panic!("{test}: cannot mount the small filesystem for the data dir: {e}")
    });
    let cfg = dir.path().join("diskfull.toml");
    std::fs::write(&cfg, config(&disk.path, dir.path(), strategy)).unwrap();
    let db = disk.path.join("data/queue.db");
    let out = dir.path().join("out");

    let mut gw = Gateway::start(&cfg, LOG);
    let started =
        || out.join("line-files.ndjson").exists() && disk.path.join("data/reserve").exists();
    assert!(
        common::poll_until(Duration::from_secs(20), started),
        "{test}: nothing exported; log:\n{}",
        gw.log().join("\n")
    );
    // Leave a little room: the queue (which cannot shrink: one export never acks) fills it.
    let filler = disk.path.join("filler");
    fill(&filler, 1024 * 1024);
    assert!(
        gw.wait_for("disk full:", 1, Duration::from_secs(60)),
        "{test}: no disk-full report; log:\n{}",
        gw.log().join("\n")
    );
    let line = gw
        .log()
        .into_iter()
        .find(|l| l.contains("disk full:"))
        .unwrap();
    assert!(line.contains("ERROR"), "{line}");
    assert!(
        line.contains(&disk.path.join("data").display().to_string()),
        "names the path: {line}"
    );
    assert!(line.contains("free_bytes="), "says the free space: {line}");
    assert!(!gw.log().iter().any(|l| l.contains("panicked")));

    // During the episode: drops are counted and shown, samples keep flowing for the working
    // export (reject_new: existing backlog; overwrite_oldest: new records too).
    let mut during = status(&disk.path);
    let shown = common::poll_until(Duration::from_secs(20), || {
        during = status(&disk.path);
        during.disk_full_since_ms.is_some() && during.streams[0].dropped_disk_full > 0
    });
    assert!(shown, "{test}: status never showed the episode: {during:?}");
    let dropped_during = during.streams[0].dropped_disk_full;
    let seq_during = during.sources[0].next_sequence_number as u64;
    // Drops go on being counted while the disk is full; 4,000 more (about a second of
    // samples) are also the window in which no second error line may come.
    let more = common::poll_until(Duration::from_secs(30), || {
        status(&disk.path).streams[0].dropped_disk_full >= dropped_during + 4_000
    });
    assert!(
        more,
        "{test}: drops go on being counted while the disk is full"
    );
    assert_eq!(
        gw.count("disk full:"),
        1,
        "{test}: one error line per episode"
    );

    // Space returns: the gateway notices by itself.
    std::fs::remove_file(&filler).unwrap();
    assert!(
        gw.wait_for("disk-full episode ended", 1, Duration::from_secs(30)),
        "{test}: the episode never ended; log:\n{}",
        gw.log().join("\n")
    );
    let after = status(&disk.path);
    let mut ledger = Ledger::default();
    let resumed_from = after.sources[0].next_sequence_number as u64;
    wait_until(
        &format!("{test}: new samples exported after the episode ended"),
        Duration::from_secs(20),
        || {
            ledger.read_exports(&out);
            ledger.exported.keys().any(|s| *s > resumed_from)
        },
    );
    // The status table is rewritten every status_interval.
    let ended = common::poll_until(Duration::from_secs(10), || {
        status(&disk.path).disk_full_since_ms.is_none()
    });
    assert!(ended, "status shows the episode ended");
    assert!(resumed_from > seq_during);

    gw.sigterm();
    let exit = gw.wait_exit(Duration::from_secs(30));
    for l in gw
        .log()
        .iter()
        .filter(|l| l.contains("disk") || l.contains("queue"))
    {
        eprintln!("{test} log: {l}");
    }
    assert!(exit.success(), "{test}: graceful exit, got {exit:?}");
    // Nothing corrupted, nothing committed lost: every sequence number is exported, queued,
    // or counted as dropped because of the disk (reject_new drops only new records, so
    // there the count is exact).
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    let present = ledger.present(&db, &out);
    let final_status = status(&disk.path);
    let next_seq = final_status.sources[0].next_sequence_number as u64;
    let dropped = final_status.streams[0].dropped_disk_full;
    let missing = (1..next_seq).filter(|s| !present.contains_key(s)).count() as i64;
    eprintln!(
        "{test}: {} samples, {dropped} dropped (disk full), {missing} not present, {} exported",
        next_seq - 1,
        ledger.exported.len()
    );
    assert!(dropped > 0);
    if strategy == "reject_new" {
        assert_eq!(
            missing, dropped,
            "{test}: every missing sample is a counted disk-full drop"
        );
    } else {
        // overwrite_oldest drops queued records, some of which the working export had
        // already exported (so they are present); never more missing than dropped.
        assert!(
            missing <= dropped,
            "{test}: {missing} missing but {dropped} dropped"
        );
        // The oldest records were the ones replaced: the stuck export (which acknowledges
        // nothing) no longer finds the first samples in the queue. (Whether any sample is
        // missing altogether depends on how fast the working export was: not asserted.)
        let oldest_queued = common::queued(&db)
            .iter()
            .filter_map(|p| serde_json::from_slice::<serde_json::Value>(p).ok())
            .filter_map(|p| p["meta"]["sequenceNumber"].as_u64())
            .min();
        assert!(
            oldest_queued.is_some_and(|s| s > 1),
            "{test}: the oldest records were replaced, the queue starts at {oldest_queued:?}"
        );
    }
    assert!(
        present.keys().next_back().copied() <= Some(next_seq - 1),
        "nothing beyond what was committed"
    );
}

#[test]
fn disk_full_reject_new_drops_new_records_and_recovers() {
    disk_full_episode("reject_new");
}

#[test]
fn disk_full_overwrite_oldest_replaces_queued_records_and_recovers() {
    disk_full_episode("overwrite_oldest");
}
