//! Power-cut style crashes: the real binary is killed with SIGKILL mid-stream several times and
//! restarted. After every kill, every sample the queue had committed (sources.next_seq says how
//! far) is either in the exported files or still queued, sequence numbers have no holes, and a
//! sequence number seen twice always carries the same sample (never reused for another one).

mod common;

use std::path::Path;
use std::time::Duration;

use common::Gateway;
use rand::Rng;

/// How long the test waits for a condition before it fails.
const T: Duration = Duration::from_secs(30);

fn config(dir: &Path) -> String {
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "crash-test"
status_interval = "100ms"
report_interval = "0"

[[streams]]
name = "line"
durability = "power_loss"

[[streams.exports]]
name = "files"
kind = "file"
path = "{dir}/out"
batch_size = 300
batch_interval = "5ms"
rotate_size = "256KiB"

[[sources]]
kind = "simulator"
id = "sim"
interval = "1ms"

[[sources.tags]]
name = "t"
waveform = "counter"
repeat = 20
"#,
        dir = dir.display()
    )
}

#[test]
fn sigkill_mid_stream_loses_no_committed_sample() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("crash.toml");
    std::fs::write(&cfg, config(dir.path())).unwrap();
    let mut rng = rand::rng();
    let mut last_committed = 0u64;
    let data = dir.path().join("data");
    // The source's next sequence number as the running gateway committed it.
    let committed_now = || {
        common::status(&data)
            .and_then(|s| s.sources.first().map(|s| s.next_sequence_number as u64 - 1))
            .unwrap_or(0)
    };
    for cycle in 0..6 {
        let mut gw = Gateway::start(&cfg, "warn");
        // The kill comes at a random moment (the scenario), once the gateway made progress.
        std::thread::sleep(Duration::from_millis(rng.random_range(300..900)));
        common::wait_until("progress before the kill", T, || {
            committed_now() > last_committed
        });
        gw.sigkill();

        let (seen, next_seq, duplicates) = collect(dir.path());
        let committed = next_seq - 1;
        assert!(
            committed > last_committed,
            "cycle {cycle}: the gateway made progress ({committed} > {last_committed})"
        );
        // Every committed sequence number, 1..=committed, is exported or still queued.
        let missing: Vec<u64> = (1..=committed)
            .filter(|s| !seen.contains_key(s))
            .take(10)
            .collect();
        assert!(
            missing.is_empty(),
            "cycle {cycle}: committed samples lost: {missing:?} (committed up to {committed})"
        );
        // Nothing beyond what was committed ever left the queue.
        assert_eq!(
            seen.keys().next_back().copied(),
            Some(committed),
            "cycle {cycle}"
        );
        eprintln!(
            "cycle {cycle}: {committed} samples committed, all present, {duplicates} duplicate deliveries"
        );
        last_committed = committed;
    }

    // A last, graceful run: SIGTERM, clean exit, sequence numbers go on from where they were.
    let mut gw = Gateway::start(&cfg, "warn,streamgate::app=info");
    gw.wait_running();
    common::wait_until("progress in the graceful run", T, || {
        committed_now() > last_committed + 100
    });
    gw.sigterm();
    let exit = gw.wait_exit(Duration::from_secs(30));
    assert!(exit.success(), "graceful shutdown exits 0, got {exit:?}");
    let (seen, next_seq, _) = collect(dir.path());
    assert!(next_seq - 1 > last_committed);
    assert!(
        (1..next_seq).all(|s| seen.contains_key(&s)),
        "no holes after the graceful run either"
    );
    // The graceful stop flags the last round Lst (queued or exported).
    let lst = common::queued(&dir.path().join("data/queue.db"))
        .into_iter()
        .chain(exported_lines(&dir.path().join("out")))
        .map(|p| streamgate::payload::decode(&p).unwrap().meta)
        .filter(|m| m.flags.contains(streamgate::payload::Flags::LST))
        .map(|m| m.sequence_number)
        .collect::<std::collections::BTreeSet<u64>>()
        .len();
    assert_eq!(lst, 20, "one Lst sample per tag at a graceful stop");
}

/// Sequence number -> sample, the committed next sequence number, duplicate deliveries.
fn collect(dir: &Path) -> (std::collections::BTreeMap<u64, u64>, u64, u64) {
    common::collect(&dir.join("data/queue.db"), &dir.join("out"), "sim")
}

fn exported_lines(out: &Path) -> Vec<Vec<u8>> {
    let mut lines = Vec::new();
    for e in std::fs::read_dir(out).unwrap() {
        let text = std::fs::read(e.unwrap().path()).unwrap();
        lines.extend(
            text.split(|b| *b == b'\n')
                .filter(|l| !l.is_empty() && streamgate::payload::decode(l).is_ok())
                .map(|l| l.to_vec()),
        );
    }
    lines
}
