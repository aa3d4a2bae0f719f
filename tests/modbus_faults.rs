//! Modbus devices that misbehave in ways the real peers (pymodbus) cannot be made to: a small
//! Modbus/TCP server in the test, answering as each test says.
//! - One tag's read answered with another register count than asked while the other tags read
//!   fine: the failing tag reaches the export as one `Bad` sample saying why, not silence; the
//!   connection is kept, so the other tags neither flap (no `Lst`/`Fst` mid-run) nor stop, and
//!   a tag coalesced with the broken one in one request is split off and reads.
//! - A slow answer: the tags of the next request are stamped when that request went out.
//! - Replies with unit id 255: refused with a hint, read with `ignore_reply_unit_id`.

#![cfg(feature = "modbus")]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How the test device answers one "read holding registers" request.
#[derive(Clone, Copy)]
struct Answer {
    /// Registers sent back (the value 7 in each): the count asked, or another (malformed).
    registers: u16,
    /// The unit id of the reply.
    unit: u8,
    delay: Duration,
}

/// A Modbus/TCP device answering every request as `answer(address, count, unit)` says.
/// Returns its port and the count of connections it accepted.
async fn device(answer: fn(u16, u16, u8) -> Answer) -> (u16, Arc<AtomicUsize>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            tokio::spawn(async move {
                let mut req = [0u8; 12];
                while s.read_exact(&mut req).await.is_ok() {
                    let (tid, unit) = ([req[0], req[1]], req[6]);
                    let address = u16::from_be_bytes([req[8], req[9]]);
                    let count = u16::from_be_bytes([req[10], req[11]]);
                    let a = answer(address, count, unit);
                    tokio::time::sleep(a.delay).await;
                    let mut pdu = vec![3u8, (a.registers * 2) as u8];
                    for _ in 0..a.registers {
                        pdu.extend_from_slice(&7u16.to_be_bytes());
                    }
                    let mut frame = Vec::new();
                    frame.extend_from_slice(&tid);
                    frame.extend_from_slice(&[0, 0]);
                    frame.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
                    frame.push(a.unit);
                    frame.extend_from_slice(&pdu);
                    if s.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    (port, connections)
}

/// A test's directory and the file export's folder in it.
fn dirs() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    (dir, out)
}

/// Starts a pipeline: one stream, a file export to `dir/out`, and one `modbus_tcp` source
/// whose keys and tags are `source` (the lines after `kind`).
fn start(dir: &tempfile::TempDir, source: &str) -> streamgate::app::Pipeline {
    let text = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "line1"

[[streams]]
name = "line"

[[streams.exports]]
name = "file"
kind = "file"
path = "{out}"
batch_interval = "50ms"

[[sources]]
kind = "modbus_tcp"
{source}"#,
        data = common::toml_path(&dir.path().join("data")),
        out = common::toml_path(&dir.path().join("out")),
    );
    let cfg = streamgate::app::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    streamgate::app::Pipeline::start(&cfg, streamgate::app::StartOptions::default()).unwrap()
}

/// Answers as asked, at once.
fn correct(count: u16, unit: u8) -> Answer {
    Answer {
        registers: count,
        unit,
        delay: Duration::ZERO,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_reads_fail_at_transport_level_is_sent_as_bad() {
    // A read that covers register 100 gets one register more than asked (malformed).
    let (port, connections) = device(|address, count, unit| Answer {
        registers: if address <= 100 && address + count > 100 {
            count + 1
        } else {
            count
        },
        ..correct(count, unit)
    })
    .await;
    let (dir, out) = dirs();
    let mut p = start(
        &dir,
        &format!(
            r#"id = "plc"
host = "127.0.0.1"
port = {port}
interval = "50ms"
reconnect_min = "20ms"
reconnect_max = "100ms"

[[sources.tags]]
name = "good"
address = "40001"

[[sources.tags]]
name = "broken"
address = "40101"
interval = "60ms"

# Two registers below the broken one: coalesced with it into one read of 99..=101.
[[sources.tags]]
name = "neighbour"
address = "40099"
interval = "60ms"
"#
        ),
    );
    let samples = || common::exported_json(&out);
    common::wait_until_async(
        "Bad samples of the broken tag",
        Duration::from_secs(30),
        async || {
            let s = samples();
            let ok = |tag: &str| {
                s.iter()
                    .filter(|r| r["tag"] == tag && r["quality"] == "Ok")
                    .count()
            };
            ok("good") >= 5 && ok("neighbour") >= 5 && s.iter().any(|r| r["tag"] == "broken")
        },
    )
    .await;
    common::stop_sources_and_drain(&mut p, Duration::from_secs(30)).await;
    p.stop().await;
    let all = samples();
    let broken: Vec<&serde_json::Value> = all.iter().filter(|r| r["tag"] == "broken").collect();
    assert!(!broken.is_empty());
    assert!(
        broken.iter().all(|r| r["quality"] == "Bad"),
        "the broken tag never reads Ok: {broken:?}"
    );
    let first = broken[0];
    assert!(
        first["value"].as_str().is_some_and(|v| !v.is_empty()),
        "says why: {first}"
    );
    assert!(
        first["value"]
            .as_str()
            .is_some_and(|v| v.contains("malformed answer")),
        "says why: {first}"
    );
    let flagged = |r: &serde_json::Value, flag: &str| {
        r["meta"]["flags"]
            .as_array()
            .unwrap()
            .iter()
            .any(|f| f == flag)
    };
    // One Bad sample, not one per failed read: the tag is left out for `failed_tag_retry`
    // (60 s by default) after the malformed answer. Its other sample is the shutdown's Lst.
    let reads_failed = broken.iter().filter(|r| !flagged(r, "Lst")).count();
    assert_eq!(
        reads_failed, 1,
        "one Bad sample per fault, not per read: {broken:?}"
    );
    // The malformed answer is about one read: the connection was kept and the other tags
    // never saw an outage (Lst only at shutdown, Fst at most at the first connect).
    assert_eq!(connections.load(Ordering::SeqCst), 1, "one connection");
    for tag in ["good", "neighbour"] {
        let samples: Vec<&serde_json::Value> = all.iter().filter(|r| r["tag"] == tag).collect();
        let lst = samples.iter().filter(|r| flagged(r, "Lst")).count();
        let fst = samples.iter().filter(|r| flagged(r, "Fst")).count();
        assert!(lst <= 1 && fst <= 1, "{tag} flapped: {lst} Lst, {fst} Fst");
        assert!(
            samples
                .iter()
                .filter(|r| !flagged(r, "Lst"))
                .all(|r| r["quality"] == "Ok" && r["value"] == 7),
            "{tag} reads 7: {samples:?}"
        );
    }
}

/// Each tag is stamped when its own request went out, not when the poll round started: behind
/// a read that takes 400 ms, the next read's samples are 400 ms later (they were stamped with
/// the round's start, 400 ms early).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_tag_is_stamped_at_its_own_request() {
    const SLOW_MS: i64 = 400;
    // The read that starts at address 0 is answered after SLOW_MS, the others at once.
    let (port, _) = device(|address, count, unit| Answer {
        delay: Duration::from_millis(if address == 0 { SLOW_MS as u64 } else { 0 }),
        ..correct(count, unit)
    })
    .await;
    let (dir, out) = dirs();
    let mut p = start(
        &dir,
        &format!(
            r#"id = "plc"
host = "127.0.0.1"
port = {port}
interval = "100ms"
request_timeout = "2s"

# Far apart: two reads in one round, the slow one first.
[[sources.tags]]
name = "slow"
address = "40001"

[[sources.tags]]
name = "after"
address = "40201"
"#
        ),
    );
    let ok = |tag: &str| -> Vec<i64> {
        common::exported_json(&out)
            .iter()
            .filter(|r| r["tag"] == tag && r["quality"] == "Ok")
            .map(|r| r["timestamp"].as_i64().unwrap())
            .collect()
    };
    common::wait_until_async("three rounds", Duration::from_secs(30), async || {
        ok("after").len() >= 3
    })
    .await;
    common::stop_sources_and_drain(&mut p, Duration::from_secs(30)).await;
    p.stop().await;
    let (slow, after) = (ok("slow"), ok("after"));
    // Round by round: the second read went out after the slow answer came back.
    for (s, a) in slow.iter().zip(&after).take(3) {
        assert!(
            a - s >= SLOW_MS - 20,
            "the tag read after a {SLOW_MS} ms answer is stamped {} ms after it: {slow:?} {after:?}",
            a - s
        );
    }
}

/// `ignore_reply_unit_id = true` reads a device that answers unit 255 to a request for unit 3;
/// without it, the same device's answers are refused (the tag is Bad, never 7).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_with_another_unit_id_are_taken_when_asked() {
    // Every reply carries unit id 255, whatever unit was asked.
    let (port, _) = device(|_, count, _| Answer {
        unit: 255,
        ..correct(count, 0)
    })
    .await;
    for ignore in [true, false] {
        let (dir, out) = dirs();
        let mut p = start(
            &dir,
            &format!(
                r#"id = "meter"
host = "127.0.0.1"
port = {port}
unit_id = 3
interval = "50ms"
reconnect_min = "20ms"
reconnect_max = "100ms"
ignore_reply_unit_id = {ignore}

[[sources.tags]]
name = "energy"
address = "40001"
"#
            ),
        );
        let samples = || {
            common::exported_json(&out)
                .into_iter()
                .filter(|r| r["tag"] == "energy")
                .collect::<Vec<_>>()
        };
        // Refused, the source never reads: one Bad sample says so (and the reason).
        let want = if ignore { 3 } else { 1 };
        common::wait_until_async("samples of the tag", Duration::from_secs(30), async || {
            samples().len() >= want
        })
        .await;
        common::stop_sources_and_drain(&mut p, Duration::from_secs(30)).await;
        p.stop().await;
        let all = samples();
        let read = all
            .iter()
            .filter(|r| r["quality"] == "Ok" && r["value"] == 7)
            .count();
        if ignore {
            assert!(read >= 3, "read with ignore_reply_unit_id: {all:?}");
        } else {
            assert_eq!(read, 0, "refused without it: {all:?}");
            assert!(all.iter().all(|r| r["quality"] == "Bad"), "{all:?}");
            assert!(
                all[0]["value"]
                    .as_str()
                    .is_some_and(|v| v.contains("set ignore_reply_unit_id = true")),
                "the Bad sample says what to do: {}",
                all[0]
            );
        }
    }
}
