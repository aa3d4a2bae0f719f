//! Live reload (SIGHUP) of the real binary while samples flow: a changed source interval takes
//! effect, an added export starts with what is queued, an unchanged source keeps running
//! untouched, nothing is lost, and a broken file is rejected while the gateway keeps going.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::Gateway;

use streamgate::payload::{Flags, Payload, decode};

fn config(dir: &Path, fast_interval: &str, with_second_export: bool) -> String {
    let second = if with_second_export {
        format!(
            r#"
[[streams.exports]]
name = "added"
kind = "file"
path = "{}/out-added"
batch_interval = "20ms"
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
equipment_id = "reload-test"
status_interval = "100ms"
report_interval = "0"

[[streams]]
name = "line"

[[streams.exports]]
name = "files"
kind = "file"
path = "{dir}/out"
batch_interval = "20ms"
{second}
[[sources]]
kind = "simulator"
id = "changing"
stream = "line"
interval = "{fast_interval}"

[[sources.tags]]
name = "speed"
waveform = "counter"

[[sources]]
kind = "simulator"
id = "steady"
stream = "line"
interval = "40ms"

[[sources.tags]]
name = "temperature"
waveform = "sine"
"#,
        dir = dir.display()
    )
}

/// Every payload in the NDJSON files of a directory, in file order.
fn exported(dir: &Path) -> Vec<Payload> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().path()).collect())
        .unwrap_or_default();
    files.sort();
    let mut out = Vec::new();
    for f in files {
        let text = std::fs::read(&f).unwrap();
        for line in text.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            out.push(decode(line).expect("exported lines are whole payloads"));
        }
    }
    out
}

/// Sequence number -> payload per source; panics if a number is reused for another sample.
fn by_source(payloads: &[Payload]) -> BTreeMap<String, BTreeMap<u64, Payload>> {
    let mut out: BTreeMap<String, BTreeMap<u64, Payload>> = BTreeMap::new();
    for p in payloads {
        let seqs = out.entry(p.meta.source_id.clone()).or_default();
        if let Some(prev) = seqs.get(&p.meta.sequence_number) {
            assert_eq!(prev, p, "a sequence number was reused for another sample");
        }
        seqs.insert(p.meta.sequence_number, p.clone());
    }
    out
}

/// Every payload still queued (all streams).
fn queued_payloads(db: &Path) -> Vec<Payload> {
    common::queued(db)
        .iter()
        .map(|b| decode(b).unwrap())
        .collect()
}

fn median_gap_ms(samples: &[&Payload]) -> i64 {
    let mut gaps: Vec<i64> = samples
        .windows(2)
        .map(|w| w[1].timestamp - w[0].timestamp)
        .collect();
    gaps.sort();
    gaps[gaps.len() / 2]
}

/// Whole lines in the files of a directory (while the gateway writes them: not decoded).
fn count_lines(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .map(|d| {
            d.map(|e| {
                let text = std::fs::read(e.unwrap().path()).unwrap_or_default();
                text.iter().filter(|b| **b == b'\n').count()
            })
            .sum()
        })
        .unwrap_or(0)
}

fn wait_for(what: &str, cond: impl FnMut() -> bool) {
    common::wait_until(what, Duration::from_secs(20), cond);
}

/// Bytes in the files of a directory (partial last lines included).
fn bytes_in(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|d| d.map(|e| e.unwrap().metadata().unwrap().len()).sum())
        .unwrap_or(0)
}

#[test]
fn sighup_applies_changes_rejects_broken_files_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    std::fs::write(&cfg, config(dir.path(), "100ms", false)).unwrap();
    let gw = Gateway::start(&cfg, "info");
    let out = dir.path().join("out");
    wait_for("samples before the reload", || count_lines(&out) >= 40);

    // 1. Faster interval for one source, and a second export.
    std::fs::write(&cfg, config(dir.path(), "10ms", true)).unwrap();
    let mark = gw.log_len();
    gw.signal("HUP");
    let line = gw.wait_line(mark, &["config reloaded"]);
    assert!(
        line.contains("restarted: changing") && line.contains("started: line/added"),
        "the reload names what it restarted and started: {line}"
    );
    assert!(
        line.contains("sources started: -;"),
        "no source was new: {line}"
    );
    wait_for("samples in the added export", || {
        count_lines(&dir.path().join("out-added")) >= 100
    });

    // 2. A broken file: rejected with its error, the gateway goes on with what it had.
    std::fs::write(
        &cfg,
        config(dir.path(), "10ms", true)
            .replace("batch_interval = \"20ms\"", "batch_interval = \"soon\""),
    )
    .unwrap();
    let mark = gw.log_len();
    gw.signal("HUP");
    let rejected = gw.wait_line(
        mark,
        &[
            "config reload rejected",
            "streams[0].exports[0].batch_interval",
        ],
    );
    assert!(rejected.contains("is not a duration"), "{rejected}");
    let before = count_lines(&dir.path().join("out-added"));
    wait_for("samples still flowing after the rejected reload", || {
        count_lines(&dir.path().join("out-added")) >= before + 50
    });

    // 3. Graceful stop; then compare what arrived.
    gw.signal("TERM");
    let mut gw = gw;
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "graceful exit after reloads: {status:?}");

    let db = dir.path().join("data/queue.db");
    let queued = queued_payloads(&db);
    let added_lines = exported(&dir.path().join("out-added"));
    let added = by_source(&added_lines);
    // Everything each source produced: exported by the first export or still queued (and, for
    // the added export, exported by it or still queued). by_source panics on a reused number.
    let all = by_source(&[exported(&out), queued.clone()].concat());
    let added_all = by_source(&[added_lines, queued].concat());
    let missing = |got: &BTreeMap<u64, Payload>, from: u64, next_seq: u64| -> Vec<u64> {
        (from..next_seq)
            .filter(|s| !got.contains_key(s))
            .take(10)
            .collect()
    };
    let mut first_of_added = BTreeMap::new();
    for source in ["changing", "steady"] {
        let next_seq = common::next_seq(&db, source);
        let lost = missing(&all[source], 1, next_seq);
        assert!(lost.is_empty(), "{source}: lost {lost:?}");
        // The added export started with what was queued at the reload and has everything
        // since: each number from its first on is in it or still queued.
        let lo = *added[source].keys().next().unwrap();
        let lost = missing(&added_all[source], lo, next_seq);
        assert!(lost.is_empty(), "{source}: added export lost {lost:?}");
        first_of_added.insert(source, lo);
    }

    // The changed source was restarted (Lst then Fst) and runs faster since.
    let changing: Vec<&Payload> = all["changing"].values().collect();
    let restart = changing
        .iter()
        .position(|p| p.meta.flags.contains(Flags::LST))
        .expect("the restarted source flagged its last sample Lst");
    assert!(changing[restart + 1].meta.flags.contains(Flags::FST));
    assert!(
        first_of_added["changing"] <= changing[restart + 1].meta.sequence_number,
        "the added export got what was queued before it started, too"
    );
    let before = median_gap_ms(&changing[..restart]);
    let after = median_gap_ms(&changing[restart + 1..changing.len() - 1]);
    assert!(
        (90..=110).contains(&before) && (5..=20).contains(&after),
        "interval 100ms -> 10ms took effect: median gap {before} ms before, {after} ms after"
    );
    // The unchanged source was not restarted: Fst only at start, Lst only at the end.
    let steady: Vec<&Payload> = all["steady"].values().collect();
    let fst = steady
        .iter()
        .filter(|p| p.meta.flags.contains(Flags::FST))
        .count();
    let lst = steady
        .iter()
        .filter(|p| p.meta.flags.contains(Flags::LST))
        .count();
    assert_eq!((fst, lst), (1, 1), "unchanged source kept running");
    assert!(steady.last().unwrap().meta.flags.contains(Flags::LST));
}

#[test]
fn removed_stream_keeps_its_records_until_purged() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    // Stream "parked" has a disabled export, so its records stay queued.
    let with_parked = format!(
        r#"{}
[[streams]]
name = "parked"

[[streams.exports]]
name = "later"
kind = "file"
path = "{}/parked"
disabled = true

[[sources]]
kind = "simulator"
id = "parker"
stream = "parked"
interval = "5ms"

[[sources.tags]]
name = "x"
waveform = "counter"
"#,
        config(dir.path(), "50ms", false),
        dir.path().display()
    );
    // TOML: the `parked` stream must come before the sources; put streams first.
    let with_parked = reorder_streams_first(&with_parked);
    std::fs::write(&cfg, &with_parked).unwrap();
    let gw = Gateway::start(&cfg, "info");
    let db = dir.path().join("data/queue.db");
    let parked_rows = || -> i64 {
        if !db.exists() {
            return 0;
        }
        let conn = rusqlite::Connection::open(&db).unwrap();
        conn.query_row("SELECT COUNT(*) FROM q_2", [], |r| r.get(0))
            .unwrap_or(0)
    };
    wait_for("records in the parked stream", || parked_rows() >= 50);

    std::fs::write(&cfg, config(dir.path(), "50ms", false)).unwrap();
    let mark = gw.log_len();
    gw.signal("HUP");
    gw.wait_line(mark, &["config reloaded", "stopped: parker"]);
    gw.wait_line(mark, &["stream removed from the config", "parked", "purge"]);
    let kept = parked_rows();
    // A window in which nothing may arrive: while the other stream exports 15 more samples.
    let exported = count_lines(&dir.path().join("out"));
    wait_for("more samples of the other stream", || {
        count_lines(&dir.path().join("out")) >= exported + 15
    });
    assert_eq!(
        parked_rows(),
        kept,
        "nothing more arrives, nothing is deleted"
    );

    // Purge needs the gateway stopped: the queue is locked while it runs.
    let purge = |cfg: &Path| {
        Command::new(env!("CARGO_BIN_EXE_streamgate"))
            .args(["purge", "--stream", "parked", "--config"])
            .arg(cfg)
            .output()
            .unwrap()
    };
    let locked = purge(&cfg);
    assert!(!locked.status.success());
    assert!(
        String::from_utf8_lossy(&locked.stderr).contains("another streamgate process"),
        "{}",
        String::from_utf8_lossy(&locked.stderr)
    );
    gw.signal("TERM");
    let mut gw = gw;
    assert!(gw.child.wait().unwrap().success());
    assert_eq!(parked_rows(), kept, "a restart keeps them too");

    // A stream still in the config is never purged.
    let still = dir.path().join("still.toml");
    std::fs::write(&still, &with_parked).unwrap();
    let refused = purge(&still);
    assert_eq!(refused.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("is in the config"));

    let done = purge(&cfg);
    let text = String::from_utf8_lossy(&done.stdout);
    assert!(done.status.success(), "{text}");
    assert!(
        text.contains(&format!("{kept} record(s)")),
        "purge reports what it deleted: {text}"
    );
    let conn = rusqlite::Connection::open(&db).unwrap();
    let n: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM streams WHERE name = 'parked'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(n, 0);
}

/// Moves every `[[streams]]` block (with its exports) before the first `[[sources]]`.
fn reorder_streams_first(text: &str) -> String {
    let mut head = String::new();
    let mut streams = String::new();
    let mut sources = String::new();
    let mut section = 0; // 0 head, 1 streams, 2 sources
    for line in text.lines() {
        if line.starts_with("[[streams]]") {
            section = 1;
        } else if line.starts_with("[[sources]]") {
            section = 2;
        }
        let target = match section {
            0 => &mut head,
            1 => &mut streams,
            _ => &mut sources,
        };
        target.push_str(line);
        target.push('\n');
    }
    format!("{head}{streams}{sources}")
}

/// Power cut during reloads: SIGHUP, then SIGKILL a few milliseconds later, many times, with
/// configs that restart a source and add or remove an export. After a final clean run, every
/// committed sequence number is exported or queued and none was reused.
#[test]
fn sigkill_during_reload_loses_nothing() {
    use rand::Rng;
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("gateway.toml");
    let mut rng = rand::rng();
    let seed: u64 = rng.random();
    eprintln!("kill delays from seed {seed}");
    let mut delays = rand::rngs::SmallRng::seed_from_u64(seed);
    use rand::SeedableRng;
    for cycle in 0..8 {
        let even = cycle % 2 == 0;
        std::fs::write(
            &cfg,
            config(dir.path(), if even { "20ms" } else { "5ms" }, !even),
        )
        .unwrap();
        let gw = Gateway::start(&cfg, "info");
        gw.wait_running();
        // The kill moments are the scenario: random, not synchronisation.
        std::thread::sleep(Duration::from_millis(delays.random_range(100..400)));
        std::fs::write(
            &cfg,
            config(dir.path(), if even { "5ms" } else { "20ms" }, even),
        )
        .unwrap();
        gw.signal("HUP");
        // A kill moment during the reload (the scenario).
        std::thread::sleep(Duration::from_millis(delays.random_range(0..40)));
        gw.signal("KILL");
        let mut gw = gw;
        gw.child.wait().unwrap();
    }
    // A clean run repairs what the kills cut (a partial last line in the export file).
    std::fs::write(&cfg, config(dir.path(), "20ms", true)).unwrap();
    let out = dir.path().join("out");
    let before = bytes_in(&out);
    let gw = Gateway::start(&cfg, "info");
    gw.wait_running();
    // Its file export cuts a partial line at start, then appends whole ones.
    wait_for("the clean run exporting", || bytes_in(&out) > before);
    gw.signal("TERM");
    let mut gw = gw;
    assert!(gw.child.wait().unwrap().success());

    let db = dir.path().join("data/queue.db");
    // Exported or still queued; by_source panics if a number carries two samples.
    let all = by_source(&[exported(&dir.path().join("out")), queued_payloads(&db)].concat());
    for source in ["changing", "steady"] {
        let next_seq = common::next_seq(&db, source) as i64;
        assert!(next_seq > 20, "{source} made progress over the cycles");
        let missing: Vec<i64> = (1..next_seq)
            .filter(|s| !all[source].contains_key(&(*s as u64)))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "{source}: committed samples lost across reload crashes: {missing:?} (seed {seed})"
        );
    }
}
