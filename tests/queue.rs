//! The queue against the real SQLite: acks and cursors, restarts, strategies on full, TTL,
//! sequence numbers, and a property test against a simple in-memory model (restarts included).

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use proptest::prelude::*;
use streamgate::queue::{
    AckBatch, AppendBatch, DeadLetter, ExportId, NewRecord, Queue, QueueOptions, StreamSpec,
};
use streamgate::queue::{Durability, StrategyOnFull};

fn spec(
    max_size: u64,
    strategy: StrategyOnFull,
    ttl: Option<Duration>,
    exports: &[&str],
) -> StreamSpec {
    StreamSpec {
        name: "s".into(),
        priority: 1,
        max_size,
        strategy_on_full: strategy,
        time_to_live: ttl,
        durability: Durability::ProcessCrash,
        exports: exports
            .iter()
            .map(|e| (e.to_string(), "file".to_string(), true))
            .collect(),
    }
}

fn open(dir: &Path, s: StreamSpec) -> Queue {
    Queue::open(
        dir,
        vec![s],
        &["src".to_string()],
        QueueOptions {
            maintenance_interval: Duration::from_millis(50),
        },
    )
    .expect("open queue")
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn records(from: usize, n: usize, size: usize, created_ms: i64) -> Vec<NewRecord> {
    (from..from + n)
        .map(|i| {
            let mut payload = format!("r{i}:").into_bytes();
            payload.resize(size.max(payload.len()), b'.');
            NewRecord {
                stream: 0,
                created_ms,
                payload,
            }
        })
        .collect()
}

/// Appends and waits until the batch is committed: every record has an id or was counted as
/// rejected (the queue may hold appends back for a while when it paces producers behind a busy
/// export).
async fn put(q: &Queue, batch: AppendBatch) {
    let landed = |st: &[streamgate::queue::StreamStatus]| -> Vec<i64> {
        st.iter()
            .map(|s| s.last_id + s.dropped_full as i64)
            .collect()
    };
    let before = landed(&q.handle.status().await.unwrap());
    let mut want = before.clone();
    for r in &batch.records {
        want[r.stream] += 1;
    }
    q.appender.append(batch).await.unwrap();
    common::wait_until_async(
        "the append committed",
        Duration::from_secs(10),
        async || {
            let now = landed(&q.handle.status().await.unwrap());
            now.iter().zip(&want).all(|(n, w)| n >= w)
        },
    )
    .await;
}

fn label(p: &[u8]) -> String {
    String::from_utf8_lossy(p)
        .split(':')
        .next()
        .unwrap_or("")
        .to_string()
}

const E0: ExportId = ExportId {
    stream: 0,
    export: 0,
};
const E1: ExportId = ExportId {
    stream: 0,
    export: 1,
};

fn ack(export: ExportId, ids: Vec<i64>) -> AckBatch {
    AckBatch {
        export,
        delivered: ids,
        dead: vec![],
        retries: 0,
        error: None,
    }
}

#[test]
fn a_record_leaves_only_when_every_export_acked_it() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(1 << 30, StrategyOnFull::RejectNew, None, &["a", "b"]),
        );
        let now = streamgate::time::now_ms();
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 11,
                records: records(0, 10, 10, now),
            },
        )
        .await;
        let got = q
            .handle
            .read(E0, q.handle.export_start(E0), 100, 1 << 20)
            .await
            .unwrap();
        assert_eq!(got.len(), 10);
        assert_eq!(
            got.iter().map(|r| r.id).collect::<Vec<_>>(),
            (1..=10).collect::<Vec<_>>()
        );
        // Export a acknowledges out of order; export b only the first three.
        q.handle
            .ack(ack(E0, vec![3, 1, 2, 5, 4, 10, 9, 8, 7, 6]))
            .unwrap();
        q.handle.ack(ack(E1, vec![2, 1, 3])).unwrap();
        let st = q.handle.status().await.unwrap();
        assert_eq!(st[0].exports[0].acked_upto, 10);
        assert_eq!(st[0].exports[1].acked_upto, 3);
        assert_eq!(st[0].records, 7, "records 4..=10 wait for export b");
        assert_eq!(st[0].exports[1].backlog, 7);
        q.close();
    });
    // After a restart, export b starts where it left off and a is done.
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(1 << 30, StrategyOnFull::RejectNew, None, &["a", "b"]),
        );
        assert_eq!(q.handle.export_start(E0), 11);
        assert_eq!(q.handle.export_start(E1), 4);
        assert_eq!(
            q.source_next_seq,
            vec![11],
            "sequence numbers survive restarts"
        );
        let got = q.handle.read(E1, 4, 100, 1 << 20).await.unwrap();
        assert_eq!(
            got.iter().map(|r| label(&r.payload)).collect::<Vec<_>>(),
            (3..10).map(|i| format!("r{i}")).collect::<Vec<_>>()
        );
        q.close();
    });
}

#[test]
fn dead_letters_are_kept_with_their_reason_and_count_as_handled() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(1 << 30, StrategyOnFull::RejectNew, None, &["a"]),
        );
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 3,
                records: records(0, 2, 10, 0),
            },
        )
        .await;
        let got = q.handle.read(E0, 1, 10, 1 << 20).await.unwrap();
        q.handle
            .ack(AckBatch {
                export: E0,
                delivered: vec![1],
                dead: vec![DeadLetter {
                    record: got[1].clone(),
                    reason: "record too large".into(),
                }],
                retries: 0,
                error: None,
            })
            .unwrap();
        let st = q.handle.status().await.unwrap();
        assert_eq!(st[0].records, 0);
        assert_eq!(st[0].exports[0].dead_lettered, 1);
        q.close();
    });
    let report = streamgate::status::read(dir.path()).unwrap();
    assert_eq!(
        report.streams[0].exports[0].recent_dead_letters,
        vec![(2, "record too large".to_string())]
    );
}

#[test]
fn reject_new_keeps_the_oldest_and_counts_the_rest() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(64 * 1024, StrategyOnFull::RejectNew, None, &["a"]),
        );
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 101,
                records: records(0, 100, 1024, 0),
            },
        )
        .await;
        let st = q.handle.status().await.unwrap();
        assert_eq!(st[0].records, 64);
        assert_eq!(st[0].dropped_full, 36);
        let got = q.handle.read(E0, 1, 1000, 1 << 30).await.unwrap();
        assert_eq!(label(&got[0].payload), "r0");
        assert_eq!(label(&got[63].payload), "r63");
        q.close();
    });
}

#[test]
fn overwrite_oldest_keeps_the_newest_and_moves_cursors() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(64 * 1024, StrategyOnFull::OverwriteOldest, None, &["a"]),
        );
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 101,
                records: records(0, 100, 1024, 0),
            },
        )
        .await;
        let st = q.handle.status().await.unwrap();
        assert!(st[0].bytes <= 64 * 1024);
        assert_eq!(st[0].records + st[0].dropped_overwritten, 100);
        assert!(st[0].dropped_overwritten >= 36);
        assert_eq!(
            st[0].exports[0].acked_upto, st[0].dropped_overwritten as i64,
            "the cursor moved past overwritten records"
        );
        let got = q.handle.read(E0, 1, 1000, 1 << 30).await.unwrap();
        assert_eq!(label(&got.last().unwrap().payload), "r99");
        assert_eq!(got.len() as u64, st[0].records);
        q.close();
    });
}

#[test]
fn time_to_live_drops_old_records_and_counts_them() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(
                1 << 30,
                StrategyOnFull::RejectNew,
                Some(Duration::from_secs(60)),
                &["a"],
            ),
        );
        let now = streamgate::time::now_ms();
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 6,
                records: records(0, 5, 10, now - 120_000),
            },
        )
        .await;
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 9,
                records: records(5, 3, 10, now),
            },
        )
        .await;
        // Maintenance runs every 50 ms here.
        let mut st = Vec::new();
        common::poll_until_async(Duration::from_secs(10), async || {
            st = q.handle.status().await.unwrap();
            st[0].dropped_ttl > 0
        })
        .await;
        assert_eq!(st[0].dropped_ttl, 5);
        assert_eq!(st[0].records, 3);
        let got = q.handle.read(E0, 1, 100, 1 << 20).await.unwrap();
        assert_eq!(
            got.iter().map(|r| label(&r.payload)).collect::<Vec<_>>(),
            vec!["r5", "r6", "r7"]
        );
        q.close();
    });
}

#[test]
fn a_second_process_on_the_same_data_dir_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let q = open(
        dir.path(),
        spec(1 << 30, StrategyOnFull::RejectNew, None, &["a"]),
    );
    let second = Queue::open(
        dir.path(),
        vec![spec(1 << 30, StrategyOnFull::RejectNew, None, &["a"])],
        &[],
        QueueOptions::default(),
    );
    let err = second.err().expect("must be refused").to_string();
    assert!(err.contains("another streamgate process"), "{err}");
    q.close();
}

/// Operations of the model test.
#[derive(Debug, Clone)]
enum Op {
    Append(usize),
    /// Export reads up to n records from where it is and acks those picked by the mask.
    Deliver {
        export: usize,
        n: usize,
        mask: u64,
        reverse: bool,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1usize..40).prop_map(Op::Append),
        4 => (0usize..2, 1usize..50, any::<u64>(), any::<bool>()).prop_map(|(export, n, mask, reverse)| Op::Deliver { export, n, mask, reverse }),
        1 => Just(Op::Restart),
    ]
}

/// The model: ids are 1.. in append order; each export has a set of acked ids, all of which
/// survive a restart (the prefix and the ranges above it); on restart an export reads again
/// from just above its prefix, and reads never return an id it acknowledged.
struct Model {
    next_id: i64,
    acked: [BTreeSet<i64>; 2],
    position: [i64; 2],
}

impl Model {
    fn prefix(&self, e: usize) -> i64 {
        let mut p = 0;
        while self.acked[e].contains(&(p + 1)) {
            p += 1;
        }
        p
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn queue_matches_the_model(ops in proptest::collection::vec(op(), 1..40)) {
        let dir = tempfile::tempdir().unwrap();
        let rt = rt();
        let mut q = Some(open(dir.path(), spec(1 << 30, StrategyOnFull::RejectNew, None, &["a", "b"])));
        let mut m = Model { next_id: 1, acked: [BTreeSet::new(), BTreeSet::new()], position: [1, 1] };
        for op in ops {
            let op_done = op.clone();
            let queue = q.as_ref().unwrap();
            match op {
                Op::Append(n) => {
                    let from = (m.next_id - 1) as usize;
                    rt.block_on(put(queue, AppendBatch { source: 0, next_seq: (from + n + 1) as u64, records: records(from, n, 20, 0) }));
                    m.next_id += n as i64;
                }
                Op::Deliver { export, n, mask, reverse } => {
                    let id = ExportId { stream: 0, export };
                    let got = rt.block_on(queue.handle.read(id, m.position[export], n, 1 << 20)).unwrap();
                    // What comes back is exactly the next unacknowledged records from the
                    // position.
                    let expect: Vec<i64> = (m.position[export]..m.next_id)
                        .filter(|i| !m.acked[export].contains(i))
                        .take(n)
                        .collect();
                    prop_assert_eq!(got.iter().map(|r| r.id).collect::<Vec<_>>(), expect.clone());
                    for r in &got {
                        prop_assert_eq!(label(&r.payload), format!("r{}", r.id - 1));
                    }
                    if let Some(last) = got.last() { m.position[export] = last.id + 1; }
                    let mut ids: Vec<i64> = got.iter().enumerate().filter(|(i, _)| mask & (1 << (i % 64)) != 0).map(|(_, r)| r.id).collect();
                    if reverse { ids.reverse(); }
                    m.acked[export].extend(ids.iter().copied());
                    queue.handle.ack(ack(id, ids)).unwrap();
                }
                Op::Restart => {
                    q.take().unwrap().close();
                    q = Some(open(dir.path(), spec(1 << 30, StrategyOnFull::RejectNew, None, &["a", "b"])));
                    for e in 0..2 {
                        let p = m.prefix(e);
                        m.position[e] = p + 1;
                        prop_assert_eq!(q.as_ref().unwrap().handle.export_start(ExportId { stream: 0, export: e }), p + 1);
                    }
                    prop_assert_eq!(q.as_ref().unwrap().source_next_seq.clone(), vec![m.next_id as u64]);
                }
            }
            let st = rt.block_on(q.as_ref().unwrap().handle.status()).unwrap();
            let min_prefix = m.prefix(0).min(m.prefix(1));
            prop_assert_eq!(st[0].exports[0].acked_upto, m.prefix(0), "export 0 after {:?}", op_done);
            prop_assert_eq!(st[0].exports[1].acked_upto, m.prefix(1), "export 1 after {:?}", op_done);
            prop_assert_eq!(st[0].records as i64, m.next_id - 1 - min_prefix, "nothing lost, nothing kept too long: last_id {} model next {} prefixes {} {} after {:?}", st[0].last_id, m.next_id, m.prefix(0), m.prefix(1), op_done);
            for e in 0..2 {
                prop_assert_eq!(
                    st[0].exports[e].backlog as usize,
                    (1..m.next_id).filter(|i| !m.acked[e].contains(i)).count(),
                    "backlog of export {}", e
                );
            }
        }
        q.take().unwrap().close();
    }
}

#[test]
fn reconfigure_matches_by_name_and_keeps_what_is_removed() {
    let dir = tempfile::tempdir().unwrap();
    rt().block_on(async {
        let q = open(
            dir.path(),
            spec(1 << 30, StrategyOnFull::RejectNew, None, &["a", "b"]),
        );
        let now = streamgate::time::now_ms();
        put(
            &q,
            AppendBatch {
                source: 0,
                next_seq: 11,
                records: records(0, 10, 10, now),
            },
        )
        .await;
        q.handle.ack(ack(E0, (1..=10).collect())).unwrap();
        q.handle.ack(ack(E1, vec![1, 2])).unwrap();
        // A new stream first (positions change), export b removed, export c added, a new
        // source before the old one.
        let mut other = spec(1 << 30, StrategyOnFull::RejectNew, None, &["x"]);
        other.name = "other".into();
        let r = q
            .handle
            .reconfigure(
                vec![
                    other,
                    spec(1 << 30, StrategyOnFull::RejectNew, None, &["c", "a"]),
                ],
                vec!["new".to_string(), "src".to_string()],
            )
            .await
            .unwrap();
        assert_eq!(r.slots.streams, vec![1, 0], "the old stream keeps slot 0");
        assert_eq!(r.slots.exports, vec![vec![0], vec![2, 0]]);
        assert_eq!(r.slots.sources, vec![1, 0]);
        assert_eq!(r.source_next_seq, vec![11, 1]);
        let c = ExportId {
            stream: 0,
            export: 2,
        };
        // Removing b lets what a acknowledged go; c starts at the head and holds the rest.
        // (1 and 2 were acknowledged by a and b before the reload and are gone.)
        assert_eq!(r.handle.export_start(c), 3, "new export starts at the head");
        let st = r.handle.status().await.unwrap();
        assert_eq!(st[0].records, 8, "c has acknowledged nothing yet");
        r.handle.ack(ack(c, (3..=6).collect())).unwrap();
        let st = r.handle.status().await.unwrap();
        assert_eq!(st[0].records, 4, "b no longer holds records back");
        assert!(!st[0].exports[1].in_config);
        // Then the old stream is removed altogether: its records stay.
        let r2 = r
            .handle
            .reconfigure(
                vec![{
                    let mut o = spec(1 << 30, StrategyOnFull::RejectNew, None, &["x"]);
                    o.name = "other".into();
                    o
                }],
                vec!["new".to_string()],
            )
            .await
            .unwrap();
        assert_eq!(r2.slots.streams, vec![1]);
        let st = r2.handle.status().await.unwrap();
        assert!(!st[0].in_config);
        assert_eq!(st[0].records, 4, "a removed stream keeps its records");
        drop((r, r2));
        q.close();
    });
    assert_eq!(
        streamgate::queue::purge_stream(dir.path(), "s").unwrap(),
        Some(streamgate::queue::Purged {
            records: 4,
            bytes: 40
        })
    );
    assert_eq!(
        streamgate::queue::purge_stream(dir.path(), "s").unwrap(),
        None
    );
}
