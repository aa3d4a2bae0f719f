//! How many tags per second one gateway reads from a local S7 server (python-snap7 3.x's
//! pure-Python server, tests/peers/s7/server.py; install it with tests/peers/setup.sh).
//!
//!     cargo run --release --example bench_s7
//!
//! Runs the whole pipeline (S7 reader -> SQLite queue -> file export) with `interval = "0s"`
//! (back-to-back rounds) for a few seconds per layout, and prints tags/s and read jobs/s.
//! The server is pure Python: it, not the gateway, is the bottleneck here; a real S7-1500
//! answers a job in a few milliseconds over the network.

#[path = "../tests/peers/s7/peer.rs"]
mod peer;
#[path = "../tests/common/port.rs"]
mod port;

use std::time::{Duration, Instant};

use peer::Peer;
use port::free_port;
use streamgate::app::{Pipeline, StartOptions};
use streamgate::readers::s7::codec::Item;
use streamgate::readers::s7::{Client, ConnectOptions};

const RUN: Duration = Duration::from_secs(8);

async fn pipeline_run(label: &str, tags: usize, stride: usize, extra: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut plc = Peer::start(free_port());
    let mut text = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "bench"
[[streams]]
name = "plc"
[[streams.exports]]
name = "out"
kind = "file"
path = "{out}"
[[sources]]
kind = "s7"
id = "bench"
stream = "plc"
host = "127.0.0.1"
port = {port}
interval = "0s"
{extra}
"#,
        data = dir.path().join("data").display(),
        out = dir.path().join("out").display(),
        port = plc.port,
    );
    for i in 0..tags {
        text.push_str(&format!(
            "[[sources.tags]]\nname = \"t{i}\"\naddress = \"DB3.DBW{}\"\n",
            i * stride
        ));
    }
    let cfg = match streamgate::app::config::parse(&text) {
        Ok(c) => c,
        Err(e) => panic!("{e:?}"),
    };
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).expect("start");
    // Warm up: connected and reading.
    let warm = Instant::now() + Duration::from_secs(10);
    while pipeline.samples_read() == 0 && Instant::now() < warm {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let jobs0 = plc.read_jobs();
    let samples0 = pipeline.samples_read();
    let t0 = Instant::now();
    tokio::time::sleep(RUN).await;
    let secs = t0.elapsed().as_secs_f64();
    let samples = pipeline.samples_read() - samples0;
    let jobs = plc.read_jobs() - jobs0;
    pipeline.stop().await;
    println!(
        "{label:<44} {tags:>4} tags: {:>8.0} tags/s, {:>6.0} read jobs/s, {:>5.1} tags per job",
        samples as f64 / secs,
        jobs as f64 / secs,
        samples as f64 / jobs.max(1) as f64,
    );
}

async fn client_run() {
    let plc = Peer::start(free_port());
    let options = ConnectOptions {
        host: "127.0.0.1".into(),
        port: plc.port,
        local_tsap: 0x0100,
        remote_tsap: 0x0101,
        pdu_size: 480,
        connect_timeout: Duration::from_secs(2),
        request_timeout: Duration::from_secs(2),
    };
    let mut client = Client::connect(&options).await.expect("connect");
    let items: Vec<Item> = (0..20)
        .map(|i| Item {
            area: 0x84,
            db: 1,
            start: i * 16,
            len: 4,
        })
        .collect();
    let t0 = Instant::now();
    let mut n = 0u64;
    while t0.elapsed() < Duration::from_secs(3) {
        client.read(&items).await.expect("read");
        n += 1;
    }
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "{:<44} {:>4} tags: {:>8.0} tags/s, {:>6.0} read jobs/s (client only, no queue)",
        "raw client, 20-item jobs",
        20,
        n as f64 * 20.0 / secs,
        n as f64 / secs
    );
}

/// Set up as `streamgate run` is (`streamgate::runtime`), so the figures are the binary's.
fn main() {
    streamgate::runtime::start().block_on(bench())
}

async fn bench() {
    println!("S7 reader against python-snap7's server on 127.0.0.1, {RUN:?} per run");
    client_run().await;
    pipeline_run(
        "scattered words, 20 items per job",
        200,
        16,
        "merge_gap = 0",
    )
    .await;
    pipeline_run(
        "scattered words, 39 items per job",
        200,
        16,
        "merge_gap = 0\nmax_items_per_request = 79",
    )
    .await;
    pipeline_run("adjacent words, merged ranges", 200, 2, "").await;
}
