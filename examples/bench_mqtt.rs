//! MQTT export benchmark: sustained samples/s through QoS 1 into a local mosquitto (started
//! here on a free 127.0.0.1 port, its default settings: Nagle on), peak RSS and CPU.
//! Prints figures; never fails on a slow machine.
//!
//!     cargo run --release --example bench_mqtt [backlog_samples] [seconds] [fixed_rate]
//!
//! Two settings: the export's defaults (window 100, batch 1000, 2 batches in flight) and a
//! large window (1000, batches of 10,000). Per setting: (1) queue a backlog with the export
//! stopped, then time its drain (each record acknowledged by a PUBACK); (2) an unthrottled
//! simulator and the export together for `seconds` (producers must slow down, not the
//! export); (3) a simulator at a fixed `fixed_rate` (default 50,000 samples/s).

use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streamgate::app::{Pipeline, StartOptions};
use streamgate::telemetry::rss;

struct Broker(Child);

impl Drop for Broker {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// `window`: `None` keeps the export's defaults. `rate`: samples/s of the simulator (500 tags
/// every `500 / rate` s), or unthrottled.
fn config(
    data: &Path,
    port: u16,
    window: Option<u16>,
    rate: Option<u64>,
) -> streamgate::app::config::Config {
    let export = match window {
        None => String::new(),
        Some(w) => format!(
            "max_in_flight = {w}\nbatch_size = 10000\nbatch_bytes = \"8MiB\"\nbatch_interval = \"20ms\"\n"
        ),
    };
    let (interval, tags) = match rate {
        None => ("0".to_string(), 100),
        Some(r) => (format!("{}us", 500_000_000 / r.max(1)), 500),
    };
    let text = format!(
        r#"
[gateway]
data_dir = "{data}"
equipment_id = "bench-line-1"
status_interval = "1s"
shutdown_timeout = "30s"

[[streams]]
name = "bench"
max_size = "4GiB"

[[streams.exports]]
name = "mqtt"
kind = "mqtt"
host = "127.0.0.1"
port = {port}
client_id = "bench-{client}"
topic = "lines/{{sourceId}}/{{equipmentId}}/{{tag}}"
{export}
[[sources]]
kind = "simulator"
id = "bench-sim"
stream = "bench"
interval = "{interval}"

[[sources.tags]]
name = "temperature"
waveform = "sine"
min = 10.0
max = 90.0
repeat = {tags}
"#,
        data = data.display(),
        client = window.unwrap_or(0),
    );
    match streamgate::app::config::parse(&text) {
        Ok(c) => c,
        Err(e) => panic!("bench config: {e:?}"),
    }
}

/// CPU time of this process so far (user + system), in seconds.
fn cpu_seconds() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    // Fields 14 and 15 (utime, stime) are at 11 and 12 after the command name.
    (ticks(11) + ticks(12)) / 100.0
}

/// Runs the pipeline for `seconds` after a 1 s warm-up; prints read/s, acknowledged/s, CPU and
/// peak RSS.
async fn live(label: &str, cfg: &streamgate::app::config::Config, seconds: u64) {
    let p = Pipeline::start(cfg, StartOptions::default()).expect("pipeline");
    tokio::time::sleep(Duration::from_secs(1)).await;
    streamgate::telemetry::reset_rss_peak();
    let (r0, d0, c0, t0) = (
        p.samples_read(),
        p.records_delivered(),
        cpu_seconds(),
        Instant::now(),
    );
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    let (r1, d1, c1, el) = (
        p.samples_read(),
        p.records_delivered(),
        cpu_seconds(),
        t0.elapsed().as_secs_f64(),
    );
    let (_, peak) = rss().unwrap_or((0, 0));
    let (_, left) = backlog(&p).await;
    println!(
        "{label}: {seconds} s: {:.0} samples/s read, {:.0} samples/s acknowledged end to end (backlog at end {left}), CPU {:.0} % of a core, peak RSS {:.1} MiB",
        (r1 - r0) as f64 / el,
        (d1 - d0) as f64 / el,
        100.0 * (c1 - c0) / el,
        mib(peak)
    );
    p.stop().await;
}

async fn backlog(p: &Pipeline) -> (u64, u64) {
    match p.handle.status().await {
        Ok(s) => (s[0].records, s[0].exports[0].backlog),
        Err(_) => (0, 0),
    }
}

/// Set up as `streamgate run` is (`streamgate::runtime`), so the figures are the binary's.
fn main() {
    streamgate::runtime::start().block_on(bench())
}

async fn bench() {
    let args: Vec<String> = std::env::args().collect();
    let target: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(300_000);
    let seconds: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(5);
    let fixed: u64 = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(50_000);
    let tmp = tempfile::tempdir().expect("temp dir");
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port");
    let conf = tmp.path().join("mosquitto.conf");
    std::fs::write(
        &conf,
        format!("listener {port} 127.0.0.1\nallow_anonymous true\nuser root\n"),
    )
    .expect("write mosquitto.conf");
    let _broker = Broker(
        Command::new("mosquitto")
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("mosquitto not installed: run tests/peers/setup.sh"),
    );
    let until = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(20));
    }
    let version = Command::new("mosquitto")
        .arg("-h")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_string)
        })
        .unwrap_or_default();
    println!(
        "bench_mqtt: QoS 1 to a local {version} (its defaults), one sample (~240 bytes) per message"
    );

    for window in [None, Some(1000u16)] {
        let name = match window {
            None => "defaults".to_string(),
            Some(w) => format!("window {w}, batch 10000"),
        };
        // 1. Backlog drain.
        let data = tmp.path().join(format!("data-{}", window.unwrap_or(0)));
        let cfg = config(&data, port, window, None);
        let mut p = Pipeline::start(
            &cfg,
            StartOptions {
                sources: true,
                exports: false,
            },
        )
        .expect("pipeline");
        while p.samples_read() < target {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        p.stop_sources(Duration::from_secs(30)).await;
        let queued = p.samples_read();
        while backlog(&p).await.0 < queued {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        streamgate::telemetry::reset_rss_peak();
        let t = Instant::now();
        p.start_exports();
        while backlog(&p).await.1 > 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let el = t.elapsed().as_secs_f64();
        let (_, peak) = rss().unwrap_or((0, 0));
        let m = p.export_stats[0]
            .1
            .connection
            .clone()
            .expect("connection counters");
        println!(
            "{name}: backlog of {queued} drained in {el:.2} s = {:.0} samples/s acknowledged (PUBACK), peak RSS {:.1} MiB, connects {}",
            queued as f64 / el,
            mib(peak),
            m.connects.load(Ordering::Relaxed)
        );
        p.stop().await;

        // 2. Live: simulator as fast as the queue takes it, export running.
        let data = tmp.path().join(format!("live-{}", window.unwrap_or(0)));
        let cfg = config(&data, port, window, None);
        live(&format!("{name}: unthrottled producer"), &cfg, seconds).await;

        // 3. A fixed rate.
        let data = tmp.path().join(format!("fixed-{}", window.unwrap_or(0)));
        let cfg = config(&data, port, window, Some(fixed));
        live(&format!("{name}: {fixed} samples/s offered"), &cfg, seconds).await;
    }
}
