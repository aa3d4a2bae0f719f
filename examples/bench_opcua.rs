//! How many OPC UA data changes per second one gateway takes in from a local server.
//!
//!     cargo run --release --example bench_opcua [-- VARIABLES SECONDS]
//!
//! Starts the asyncua peer (tests/peers/opcua/server.py --bench VARIABLES) on 127.0.0.1,
//! which rewrites VARIABLES Double nodes as fast as it can, and one `kind = "opcua"` source
//! subscribed to all of them (sampling 0 = every change, publishing 20ms, queue 1000) feeding
//! the real SQLite queue and a file export. Prints data changes/s queued and exported, and
//! what the server wrote, so a Python-bound figure is visible as such. Figures, no assertions.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use streamgate::app::{Pipeline, StartOptions};

/// Set up as `streamgate run` is (`streamgate::runtime`), so the figures are the binary's.
fn main() {
    streamgate::runtime::start().block_on(bench())
}

async fn bench() {
    let args: Vec<String> = std::env::args().collect();
    let variables: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(200);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(15);
    let dir = std::env::temp_dir().join(format!("streamgate-bench-opcua-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("temp dir");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/opcua/server.py");
    let mut server = Command::new("python3")
        .args(["-u", script, "--port", &port.to_string(), "--bench"])
        .arg(variables.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("python3 with asyncua (bash tests/peers/setup.d/opcua.sh)");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("READY") => break,
            Some(_) => {}
            None => panic!("the asyncua server did not start"),
        }
    }
    // The server reports its total writes once a second.
    let wrote = Arc::new(AtomicU64::new(0));
    let w = wrote.clone();
    std::thread::spawn(move || {
        for l in lines.map_while(Result::ok) {
            if let Some(n) = l.strip_prefix("WROTE ").and_then(|n| n.parse().ok()) {
                w.store(n, Ordering::Relaxed);
            }
        }
    });
    let mut toml = format!(
        r#"
[gateway]
data_dir = "{d}/data"
equipment_id = "bench"
report_interval = "0"
[[streams]]
name = "line"
[[streams.exports]]
name = "files"
kind = "file"
path = "{d}/out"
batch_size = 500
rotate_size = "64MiB"
max_files = 2
[[sources]]
kind = "opcua"
id = "plc"
endpoint = "opc.tcp://127.0.0.1:{port}/streamgate/"
publishing_interval = "20ms"
sampling_interval = "0"
queue_size = 1000
pki_dir = "{d}/pki"
"#,
        d = dir.display()
    );
    for k in 0..variables {
        toml.push_str(&format!(
            "[[sources.tags]]\nname = \"b{k}\"\nnode = \"nsu=urn:streamgate:test;s=Bench.{k}\"\n"
        ));
    }
    let cfg = streamgate::app::config::parse(&toml).expect("bench config");
    let p = Pipeline::start(&cfg, StartOptions::default()).expect("pipeline");
    // Warm-up: until the subscription delivers.
    let t0 = Instant::now();
    while p.samples_read() < variables as u64 && t0.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cpu0 = cpu_seconds();
    let (r0, d0, w0, start) = (
        p.samples_read(),
        p.records_delivered(),
        wrote.load(Ordering::Relaxed),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let secs = start.elapsed().as_secs_f64();
    let cpu = (cpu_seconds() - cpu0) / secs * 100.0;
    let (r1, d1, w1) = (
        p.samples_read(),
        p.records_delivered(),
        wrote.load(Ordering::Relaxed),
    );
    p.stop().await;
    let _ = server.kill();
    let _ = server.wait();
    println!(
        "opcua bench: {variables} monitored items, {secs:.1}s: {:.0} data changes/s queued, {:.0} records/s exported; the Python server wrote {:.0} values/s (reported once a second); gateway process CPU {cpu:.0}% of one core",
        (r1 - r0) as f64 / secs,
        (d1 - d0) as f64 / secs,
        w1.saturating_sub(w0) as f64 / secs
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// User + system CPU seconds of this process (Linux /proc; 0 elsewhere).
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which may contain spaces) start after the last ')'.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // utime and stime are fields 14 and 15 of stat, i.e. 11 and 12 after the name.
    (ticks(11) + ticks(12)) / 100.0
}
