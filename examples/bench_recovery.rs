//! Start-up cost of the queue's safety checks on a large queue: `Queue::open` runs
//! `PRAGMA quick_check` (reads every page) on every start, and a recovery (damaged database)
//! copies every readable record into a fresh queue. Prints the figures.
//!
//!     cargo run --release --example bench_recovery -- [records]   (default 1,000,000)

use std::time::Instant;

use streamgate::queue::{AppendBatch, NewRecord, Queue, QueueOptions, StreamSpec};
use streamgate::queue::{Durability, StrategyOnFull};

fn spec() -> Vec<StreamSpec> {
    vec![StreamSpec {
        name: "line".into(),
        priority: 5,
        max_size: 4 << 30,
        strategy_on_full: StrategyOnFull::RejectNew,
        time_to_live: None,
        durability: Durability::ProcessCrash,
        exports: vec![("stuck".into(), "file".into(), true)],
    }]
}

fn payload(seq: u64) -> Vec<u8> {
    format!(
        r#"{{"version":1,"timestamp":{ts},"equipmentId":"84068f2f-3f39-4b9c-a995-d2a84d878689","tag":"water_temperature_{t}","value":13.45,"quality":"Ok","meta":{{"sequenceNumber":{seq},"flags":[],"createdAt":{ts},"sourceId":"sim"}}}}"#,
        ts = 1_764_000_000_000u64 + seq,
        t = seq % 50
    )
    .into_bytes()
}

/// Set up as `streamgate run` is (`streamgate::runtime`), so the figures are the binary's.
fn main() {
    streamgate::runtime::start().block_on(bench())
}

async fn bench() {
    let n: u64 = std::env::args()
        .nth(1)
        .and_then(|a| a.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().expect("temp dir");
    let sources = vec!["sim".to_string()];
    let q = Queue::open(dir.path(), spec(), &sources, QueueOptions::default()).expect("open");
    let t = Instant::now();
    let mut seq = 1;
    while seq <= n {
        let records: Vec<NewRecord> = (seq..(seq + 1000).min(n + 1))
            .map(|s| NewRecord {
                stream: 0,
                created_ms: 0,
                payload: payload(s),
            })
            .collect();
        seq += records.len() as u64;
        q.appender
            .append(AppendBatch {
                source: 0,
                next_seq: seq,
                records,
            })
            .await
            .expect("append");
    }
    tokio::task::spawn_blocking(move || q.close())
        .await
        .expect("close");
    let size = std::fs::metadata(streamgate::queue::db_path(dir.path()))
        .expect("db")
        .len();
    println!(
        "filled {n} records ({:.0} MB) in {:.1} s",
        size as f64 / 1e6,
        t.elapsed().as_secs_f64()
    );

    let t = Instant::now();
    let q = Queue::open(dir.path(), spec(), &sources, QueueOptions::default()).expect("reopen");
    println!(
        "open with quick_check: {:.2} s ({:.0} MB/s)",
        t.elapsed().as_secs_f64(),
        size as f64 / 1e6 / t.elapsed().as_secs_f64()
    );
    q.close();

    std::fs::write(
        dir.path().join(streamgate::queue::recover::CORRUPT_MARKER),
        "bench",
    )
    .expect("marker");
    let t = Instant::now();
    let q = Queue::open(dir.path(), spec(), &sources, QueueOptions::default()).expect("recover");
    let status = q.handle.status().await.expect("status");
    println!(
        "recovery (move aside + salvage all {} records): {:.2} s",
        status[0].records,
        t.elapsed().as_secs_f64()
    );
    q.close();
}
