//! Power-loss harness: the real binary (simulator with many tags -> queue -> `file` export,
//! which acknowledges after fsync) is killed with SIGKILL at random moments, many times. After
//! every kill: every committed sequence number (the queue's `sources.next_seq`) is exported or
//! still queued, nothing beyond it left the queue, and no sequence number ever carries two
//! different samples (checked across all cycles).
//!
//! Some cycles kill inside the final WAL checkpoint: SIGTERM, wait for the queue's debug line
//! "final WAL checkpoint started" (logged just before `PRAGMA wal_checkpoint(TRUNCATE)`), then
//! SIGKILL at once. A non-empty `queue.db-wal` after the kill proves the checkpoint had not
//! finished (a finished TRUNCATE checkpoint leaves it empty); those are counted and printed.
//!
//! Others change the config file (batch size, tag count), send SIGHUP (live reload) and
//! SIGKILL 0..300 ms later, while or just after the reload is applied.
//!
//!     STREAMGATE_POWERLOSS_CYCLES=200 cargo test --test powerloss -- --nocapture
//!
//! runs the nightly-size version (STREAMGATE_POWERLOSS_SEED=<n> repeats a run's kill schedule).

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Gateway, Ledger};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

const LOG: &str = "warn,streamgate::queue=debug,streamgate::app=info";

/// `variant` changes what a live reload applies: the export's batch size and the tag count
/// (so the reader restarts).
fn config(dir: &Path, variant: bool) -> String {
    let (batch, repeat) = if variant { (300, 40) } else { (500, 50) };
    format!(
        r#"
[gateway]
data_dir = "{dir}/data"
equipment_id = "powerloss-test"
status_interval = "100ms"
report_interval = "0"

[[streams]]
name = "line"
durability = "power_loss"

[[streams.exports]]
name = "files"
kind = "file"
path = "{dir}/out"
batch_size = {batch}
batch_interval = "5ms"
rotate_size = "1MiB"

[[sources]]
kind = "simulator"
id = "sim"
interval = "2ms"

[[sources.tags]]
name = "t"
waveform = "sine"
repeat = {repeat}
"#,
        dir = dir.display()
    )
}

/// What happens to the running gateway in one cycle.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Disturbance {
    /// SIGKILL after a random delay (power cut while running: appends, acks, autocheckpoints).
    Kill,
    /// SIGTERM, then SIGKILL as soon as the final WAL checkpoint started.
    KillInShutdownCheckpoint,
    /// Write a changed config, SIGHUP (live reload: the queue commits, the reader and the
    /// export restart), SIGKILL 0..300 ms later: while the reload is being applied or just after.
    KillDuringReload,
}

fn pick(rng: &mut SmallRng) -> Disturbance {
    match rng.random_range(0..20) {
        0..=6 => Disturbance::KillInShutdownCheckpoint,
        7..=10 => Disturbance::KillDuringReload,
        _ => Disturbance::Kill,
    }
}

#[test]
fn sigkill_at_random_moments_loses_no_committed_sample() {
    let cycles: usize = std::env::var("STREAMGATE_POWERLOSS_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15);
    let seed: u64 = std::env::var("STREAMGATE_POWERLOSS_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| streamgate::time::now_ms() as u64);
    eprintln!(
        "powerloss: {cycles} cycles, seed {seed} (repeat with STREAMGATE_POWERLOSS_SEED={seed})"
    );
    let mut rng = SmallRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("powerloss.toml");
    let mut variant = false;
    std::fs::write(&cfg, config(dir.path(), variant)).unwrap();
    let db = dir.path().join("data/queue.db");
    let wal = dir.path().join("data/queue.db-wal");
    let out = dir.path().join("out");

    let started = Instant::now();
    let mut ledger = Ledger::default();
    let mut last_committed = 0u64;
    let (mut kills, mut checkpoint_kills, mut inside_checkpoint) = (0, 0, 0);
    let (mut reload_kills, mut reloads_applied) = (0, 0);
    let mut wal_sizes = Vec::new();
    for cycle in 0..cycles {
        let what = pick(&mut rng);
        let delay = Duration::from_millis(rng.random_range(30..1200));
        let mut gw = Gateway::start(&cfg, LOG);
        // The moment of the disturbance is the scenario (random), not synchronisation.
        std::thread::sleep(delay);
        assert!(
            gw.child.try_wait().unwrap().is_none(),
            "cycle {cycle}: the gateway exited by itself; log:\n{}",
            gw.log().join("\n")
        );
        match what {
            Disturbance::Kill => {
                gw.sigkill();
                kills += 1;
            }
            Disturbance::KillDuringReload => {
                variant = !variant;
                std::fs::write(&cfg, config(dir.path(), variant)).unwrap();
                gw.signal("HUP");
                // A kill moment during the reload (the scenario).
                std::thread::sleep(Duration::from_millis(rng.random_range(0..300)));
                gw.sigkill();
                reload_kills += 1;
                if gw.count("config reloaded") > 0 {
                    reloads_applied += 1;
                }
            }
            Disturbance::KillInShutdownCheckpoint => {
                // SIGTERM before the handler is installed would kill, not stop.
                gw.wait_running();
                gw.sigterm();
                let started =
                    gw.wait_for("final WAL checkpoint started", 1, Duration::from_secs(30));
                gw.sigkill();
                assert!(
                    started,
                    "cycle {cycle}: no shutdown checkpoint; log:\n{}",
                    gw.log().join("\n")
                );
                checkpoint_kills += 1;
                let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
                if wal_len > 0 && gw.count("queue closed") == 0 {
                    inside_checkpoint += 1;
                    wal_sizes.push(wal_len);
                }
            }
        }
        let present = ledger.present(&db, &out);
        let next_seq = common::next_seq(&db, "sim");
        let committed = next_seq - 1;
        assert!(
            committed >= last_committed,
            "cycle {cycle} ({what:?} after {delay:?}): committed went back from {last_committed} to {committed}"
        );
        common::assert_all_committed_present(
            &present,
            next_seq,
            &format!("cycle {cycle} ({what:?} after {delay:?}, seed {seed})"),
        );
        last_committed = committed;
    }
    assert!(last_committed > 0, "the gateway never committed anything");
    eprintln!(
        "powerloss: {cycles} cycles in {:.1} s: {kills} SIGKILLs while running, {reload_kills} during a live reload ({reloads_applied} of them after the reload was applied), \
         {checkpoint_kills} SIGKILLs after the shutdown checkpoint started, \
         {inside_checkpoint} of them inside it (WAL not yet truncated: {wal_sizes:?} bytes); \
         {last_committed} samples committed, all exported or queued, none reused; {} duplicate deliveries (at least once)",
        started.elapsed().as_secs_f64(),
        ledger.duplicates
    );
}
