//! A Modbus device that answers one tag's read with something that is not an answer (a
//! register count other than asked) while the other tag reads fine: the failing tag reaches
//! the export as one `Bad` sample per episode saying why, not silence. A small Modbus/TCP
//! server in the test (the real peers answer correctly by construction).

#![cfg(feature = "modbus")]

mod common;

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Answers "read holding registers": address 0 correctly (value 7), any other address with
/// one register more than asked (a malformed answer).
async fn device() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut req = [0u8; 12];
                while s.read_exact(&mut req).await.is_ok() {
                    let (tid, unit) = ([req[0], req[1]], req[6]);
                    let (address, count) = (
                        u16::from_be_bytes([req[8], req[9]]),
                        u16::from_be_bytes([req[10], req[11]]),
                    );
                    let n = if address == 0 { count } else { count + 1 };
                    let mut pdu = vec![3u8, (n * 2) as u8];
                    for _ in 0..n {
                        pdu.extend_from_slice(&7u16.to_be_bytes());
                    }
                    let mut frame = Vec::new();
                    frame.extend_from_slice(&tid);
                    frame.extend_from_slice(&[0, 0]);
                    frame.extend_from_slice(&((pdu.len() + 1) as u16).to_be_bytes());
                    frame.push(unit);
                    frame.extend_from_slice(&pdu);
                    if s.write_all(&frame).await.is_err() {
                        return;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_whose_reads_fail_at_transport_level_is_sent_as_bad() {
    let port = device().await;
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
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
id = "plc"
host = "127.0.0.1"
port = {port}
interval = "50ms"
initial_backoff = "20ms"
max_backoff = "100ms"

[[sources.tags]]
name = "good"
address = "40001"

[[sources.tags]]
name = "broken"
address = "40101"
interval = "60ms"
"#,
        data = common::toml_path(&dir.path().join("data")),
        out = common::toml_path(&out),
    );
    let cfg = streamgate::app::config::parse(&text).unwrap_or_else(|e| panic!("{e:?}"));
    let mut p =
        streamgate::app::Pipeline::start(&cfg, streamgate::app::StartOptions::default()).unwrap();
    let samples = || common::exported_json(&out);
    common::wait_until_async(
        "Bad samples of the broken tag",
        Duration::from_secs(30),
        async || {
            let s = samples();
            s.iter()
                .filter(|r| r["tag"] == "good" && r["quality"] == "Ok")
                .count()
                >= 5
                && s.iter().any(|r| r["tag"] == "broken")
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
    // One per episode, not one per failed read (it failed many times meanwhile).
    let reads_failed = broken
        .iter()
        .filter(|r| {
            !r["meta"]["flags"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f == "Lst")
        })
        .count();
    assert!(
        reads_failed <= 3,
        "one Bad sample per failure episode, not per read: {broken:?}"
    );
    assert!(
        all.iter()
            .any(|r| r["tag"] == "good" && r["quality"] == "Ok"),
        "the good tag reads"
    );
}
