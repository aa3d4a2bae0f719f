//! A damaged queue database (truncated, garbage in the middle, garbage header, or marked
//! damaged by a run that met corruption) is detected at start, moved aside into
//! `<data_dir>/corrupt-<ms>/` (never deleted), reported with an ERROR naming the path, every
//! readable record is salvaged into a fresh queue, and the gateway keeps running. Sequence
//! numbers never repeat: salvaged samples keep theirs, new samples continue above every
//! number the old database had committed (or jump to `now_ms * 1000` when the counter is
//! unreadable).

mod common;

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::path::Path;
use std::time::Duration;

use common::Gateway;

/// `streamgate::app` at info: the "streamgate running" line.
const LOG: &str = "warn,streamgate::exporters=error,streamgate::app=info";

fn config(dir: &Path) -> String {
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "corruption-test"
status_interval = "100ms"
report_interval = "0"

[[streams]]
name = "line"

# Never delivers: every sample stays queued, so the queue is the whole record.
[[streams.exports]]
name = "stuck"
kind = "file"
path = "/proc/streamgate-cannot-write-here"

[[sources]]
kind = "simulator"
id = "sim"
interval = "1ms"

[[sources.tags]]
name = "t"
waveform = "sine"
repeat = 20
"#,
        dir = dir.display()
    )
}

/// seq -> payload of every queued sample.
fn queued_by_seq(db: &Path) -> BTreeMap<u64, Vec<u8>> {
    common::queued(db)
        .into_iter()
        .map(|p| {
            (
                streamgate::payload::decode(&p)
                    .unwrap()
                    .meta
                    .sequence_number,
                p,
            )
        })
        .collect()
}

/// How long a test waits for a condition before it fails.
const T: Duration = Duration::from_secs(30);

/// The source's next sequence number as the running gateway committed it (0 while unknown).
fn committed_now(data: &Path) -> u64 {
    common::status(data)
        .and_then(|s| s.sources.into_iter().find(|s| s.id == "sim"))
        .map_or(0, |s| s.next_sequence_number as u64)
}

/// Runs the gateway until it is running and `cond` holds, stops it gracefully (exit 0
/// required); returns its log.
fn run_until(cfg: &Path, what: &str, cond: impl FnMut() -> bool) -> Vec<String> {
    let mut gw = Gateway::start(cfg, LOG);
    gw.wait_running();
    common::wait_until(what, T, cond);
    gw.sigterm();
    let exit = gw.wait_exit(Duration::from_secs(30));
    assert!(
        exit.success(),
        "exit {exit:?}; log:\n{}",
        gw.log().join("\n")
    );
    gw.log()
}

/// Fills a queue, damages it with `damage`, restarts and checks the recovery. Returns
/// (samples before, salvaged samples, first new sequence number).
fn damaged_then_recovered(damage: impl FnOnce(&Path)) -> (usize, usize, u64) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("corruption.toml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    let data = dir.path().join("data");
    let db = data.join("queue.db");
    run_until(&cfg, "25,000 samples queued", || {
        committed_now(&data) > 25_000
    });
    let before = queued_by_seq(&db);
    let committed = common::next_seq(&db, "sim") - 1;
    assert!(before.len() > 10_000, "a sizeable queue: {}", before.len());
    assert!(
        !db.with_extension("db-wal").exists()
            || std::fs::metadata(db.with_extension("db-wal"))
                .unwrap()
                .len()
                == 0
    );
    damage(&db);
    let damaged_len = std::fs::metadata(&db).unwrap().len();

    // Until new samples are committed above the old ones (the recovery is done by then).
    let log = run_until(&cfg, "new samples after the recovery", || {
        committed_now(&data) > committed + 1
    });
    let moved = log
        .iter()
        .find(|l| l.contains("the queue database is damaged"))
        .unwrap_or_else(|| panic!("no corruption report; log:\n{}", log.join("\n")));
    assert!(moved.contains("ERROR"), "{moved}");
    assert!(
        moved.contains(&db.display().to_string()),
        "names the path: {moved}"
    );
    assert!(moved.contains("moved_to="), "{moved}");
    assert!(log.iter().any(|l| l.contains("queue recovery finished")));
    assert!(!log.iter().any(|l| l.contains("panicked")));
    // The damaged file is kept, untouched, beside the fresh queue.
    let aside: Vec<_> = std::fs::read_dir(&data)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "{aside:?}");
    assert_eq!(
        std::fs::metadata(aside[0].join("queue.db")).unwrap().len(),
        damaged_len
    );

    // The fresh queue is sound and holds the salvaged samples unchanged plus new ones, whose
    // sequence numbers are above everything committed before.
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
    drop(conn);
    let after = queued_by_seq(&db);
    let mut salvaged = 0;
    let mut first_new = u64::MAX;
    for (seq, p) in &after {
        if *seq <= committed {
            assert_eq!(
                before.get(seq),
                Some(p),
                "sequence number {seq} carries a different sample after recovery"
            );
            salvaged += 1;
        } else {
            first_new = first_new.min(*seq);
        }
    }
    assert!(
        first_new != u64::MAX,
        "the gateway kept running and queued new samples"
    );
    eprintln!(
        "{} samples before, {salvaged} salvaged, new samples from sequence number {first_new} (committed before: {committed})",
        before.len()
    );
    (before.len(), salvaged, first_new)
}

#[test]
fn truncated_queue_is_moved_aside_and_salvaged() {
    let (before, salvaged, first_new) = damaged_then_recovered(|db| {
        let len = std::fs::metadata(db).unwrap().len();
        let f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        f.set_len(len * 6 / 10).unwrap();
    });
    assert!(
        salvaged > before / 3,
        "the readable part is salvaged: {salvaged} of {before}"
    );
    assert!(salvaged < before, "a truncated file lost its tail");
    assert!(
        first_new < 1_000_000_000,
        "the counter was readable: no jump ({first_new})"
    );
}

#[test]
fn garbage_in_the_middle_is_moved_aside_and_salvaged() {
    let (before, salvaged, _) = damaged_then_recovered(|db| {
        let len = std::fs::metadata(db).unwrap().len();
        let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        f.seek(SeekFrom::Start(len / 2)).unwrap();
        let garbage: Vec<u8> = (0..256 * 1024u32)
            .map(|i| (i.wrapping_mul(2654435761) >> 13) as u8)
            .collect();
        f.write_all(&garbage).unwrap();
        f.sync_all().unwrap();
    });
    // Rows on both sides of the damage are read (the reader seeks past it).
    assert!(salvaged > before / 2, "salvaged {salvaged} of {before}");
    assert!(salvaged < before);
}

#[test]
fn unreadable_counters_make_sequence_numbers_jump() {
    let started_ms = streamgate::time::now_ms() as u64;
    let (_, salvaged, first_new) = damaged_then_recovered(|db| {
        let mut f = std::fs::OpenOptions::new().write(true).open(db).unwrap();
        f.write_all(&[0xA5; 4096]).unwrap(); // the header and the schema page: NOTADB
        f.sync_all().unwrap();
    });
    assert_eq!(salvaged, 0);
    assert!(
        first_new >= started_ms * streamgate::queue::recover::SEQ_JUMP_PER_MS,
        "unreadable counter: sequence numbers jump past any number used before ({first_new})"
    );
}

#[test]
fn queue_marked_damaged_by_a_running_gateway_is_recovered_at_start() {
    // What the queue thread leaves behind when a read or commit hits SQLITE_CORRUPT: the next
    // start recovers even though quick_check passes, so the service cannot crash-loop.
    let (before, salvaged, first_new) = damaged_then_recovered(|db| {
        std::fs::write(
            db.with_file_name(streamgate::queue::recover::CORRUPT_MARKER),
            "test",
        )
        .unwrap();
    });
    assert_eq!(salvaged, before, "an intact file is salvaged completely");
    assert!(first_new < 1_000_000_000, "counter readable: no jump");
}

#[test]
fn corruption_met_while_running_shuts_down_in_order_and_the_restart_recovers() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let db = data.join("queue.db");
    let cfg = dir.path().join("running.toml");
    // A slow export: the backlog grows, and its reads reach pages that left SQLite's cache
    // long ago, so damage written under the running gateway is met by a read.
    let text = config(dir.path())
        .replace(
            "report_interval = \"0\"",
            "report_interval = \"0\"\nmax_export_bandwidth = \"300KiB\"",
        )
        .replace(
            "path = \"/proc/streamgate-cannot-write-here\"",
            &format!("path = \"{}/out\"", dir.path().display()),
        );
    std::fs::write(&cfg, text).unwrap();
    // The app's info lines show the shutdown order (LOG has streamgate::app at info).
    let mut gw = Gateway::start(&cfg, LOG);
    // A queue of at least 12 MiB (about 4 s): the damage below (at 1-3 MiB) is in pages the
    // slow export reaches only long after they left SQLite's cache.
    common::wait_until("a 12 MiB queue", T, || {
        std::fs::metadata(&db).is_ok_and(|m| m.len() > 12 << 20)
    });
    {
        let mut f = std::fs::OpenOptions::new().write(true).open(&db).unwrap();
        let len = f.metadata().unwrap().len();
        assert!(len > 4 << 20, "db large enough: {len}");
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(&vec![0x5A; 2 << 20]).unwrap();
        f.sync_all().unwrap();
    }
    let exit = gw.wait_exit(Duration::from_secs(60));
    assert_eq!(
        exit.code(),
        Some(streamgate::app::daemon::exit::CORRUPT_WHILE_RUNNING as i32),
        "log:\n{}",
        gw.log().join("\n")
    );
    // Not an exit from inside the queue: the readers and exports stop in the normal order.
    let log = gw.log();
    let at = |needle: &str| log.iter().position(|l| l.contains(needle));
    let (found, readers, done) = (
        at("found while running"),
        at("shutting down: stopping readers"),
        at("shutdown complete"),
    );
    assert!(
        found.is_some() && found < readers && readers < done,
        "damage found, then the ordered shutdown: {found:?} {readers:?} {done:?}\n{}",
        log.join("\n")
    );
    let line = gw
        .log()
        .into_iter()
        .find(|l| l.contains("found while running"));
    eprintln!("{line:?}");
    assert!(line.is_some_and(|l| l.contains("ERROR") && l.contains(&db.display().to_string())));
    assert!(
        data.join(streamgate::queue::recover::CORRUPT_MARKER)
            .exists()
    );
    // The restart (systemd's Restart=on-failure) recovers and keeps running: no crash loop.
    let committed = committed_now(&data);
    let log = run_until(&cfg, "new samples after the recovery", || {
        committed_now(&data) > committed + 1
    });
    assert!(
        log.iter().any(|l| l.contains("queue recovery finished")),
        "{}",
        log.join("\n")
    );
    assert!(
        !data
            .join(streamgate::queue::recover::CORRUPT_MARKER)
            .exists()
    );
    let committed = committed_now(&data);
    let log = run_until(&cfg, "new samples", || committed_now(&data) > committed + 1);
    assert!(
        !log.iter().any(|l| l.contains("damaged")),
        "healthy after one recovery"
    );
}
