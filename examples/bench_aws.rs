//! Benchmark of the Kinesis exporter against a local moto server (started here, killed at the
//! end): samples/s exported, samples per PutRecords call, and what packing and compression do
//! to the shard budget (1,000 records/s and 1 MiB/s per shard).
//!
//!     cargo run --release --example bench_aws [seconds per mode, default 5]
//!
//! moto is far slower than Kinesis, so samples/s here measure moto more than streamgate; the
//! shard figures are computed from the records actually sent and hold for the real service.

use std::process::{Child, Command, Stdio};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use streamgate::app::config::parse;
use streamgate::exporters::aws::{AwsExporter, packer};
use streamgate::exporters::{ExportKind, Exporter, Outcome};
use streamgate::payload::{Flags, Meta, PAYLOAD_VERSION, Payload, Quality, Value};
use streamgate::queue::Record;

const SHARD_RECORDS_PER_S: f64 = 1_000.0;
const SHARD_BYTES_PER_S: f64 = 1_048_576.0;

struct Moto(Child);

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn samples(n: usize) -> Vec<Record> {
    let tags = [
        "water_temperature",
        "bowl_pressure",
        "filler_state",
        "bottles_filled",
    ];
    let t0 = 1_764_150_000_000i64;
    (0..n)
        .map(|i| {
            let mut payload = Vec::new();
            Payload {
                version: PAYLOAD_VERSION,
                timestamp: t0 + i as i64 * 10,
                equipment_id: "84068f2f-3f39-4b9c-a995-d2a84d878689",
                tag: tags[i % tags.len()],
                value: Value::Float(12.0 + ((i * 7919) % 3000) as f64 / 1000.0),
                quality: Quality::Ok,
                meta: Meta {
                    sequence_number: i as u64,
                    flags: Flags::empty(),
                    created_at: t0 + i as i64 * 10 + 3,
                    source_id: "filling_machine",
                },
            }
            .encode(&mut payload);
            Record {
                id: i as i64 + 1,
                at_ms: t0,
                payload,
            }
        })
        .collect()
}

fn main() -> anyhow::Result<()> {
    streamgate::runtime::one_malloc_arena();
    let secs: u64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    // Single-threaded here: nothing else reads the environment yet.
    unsafe {
        std::env::set_var("AWS_ACCESS_KEY_ID", "testing");
        std::env::set_var("AWS_SECRET_ACCESS_KEY", "testing");
        std::env::set_var("AWS_EC2_METADATA_DISABLED", "true");
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let _moto = Moto(
        Command::new("moto_server")
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?,
    );
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(run(port, Duration::from_secs(secs)))
}

async fn run(port: u16, per_mode: Duration) -> anyhow::Result<()> {
    let endpoint = format!("http://127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        anyhow::ensure!(Instant::now() < deadline, "moto_server did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let data = samples(200_000);
    let avg = data.iter().map(|r| r.payload.len()).sum::<usize>() as f64 / data.len() as f64;
    println!("sample size: {avg:.0} bytes of JSON; {per_mode:?} per mode against moto_server\n");
    println!(
        "{:<22} {:>10} {:>13} {:>14} {:>13} {:>22}",
        "mode",
        "samples/s",
        "samples/call",
        "samples/record",
        "bytes/sample",
        "samples/shard-second"
    );
    let modes: [(&str, &str, usize); 4] = [
        ("one sample per record", "", 500),
        ("packed", "packing = true", 5_000),
        (
            "packed + gzip",
            "packing = true\ncompression = \"gzip\"",
            5_000,
        ),
        (
            "packed + zstd",
            "packing = true\ncompression = \"zstd\"",
            5_000,
        ),
    ];
    let mut plan_rates = Vec::new();
    for (n, (label, extra, batch)) in modes.into_iter().enumerate() {
        let stream = format!("bench{n}");
        let text = format!(
            "[[streams]]\nname = \"s\"\n[[streams.exports]]\nkind = \"kinesis\"\nstream_name = \"{stream}\"\nregion = \"eu-central-1\"\nendpoint_url = \"{endpoint}\"\nbatch_size = {batch}\n{extra}\n"
        );
        let cfg = parse(&text).map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let ExportKind::Aws(aws) = cfg.streams[0].exports[0].kind.clone() else {
            anyhow::bail!("not an AWS export");
        };
        let sdk = streamgate::exporters::aws::sdk_config(&aws, None)
            .await
            .map_err(|e| anyhow::anyhow!(e))?;
        let admin = aws_sdk_kinesis::Client::new(&sdk);
        admin
            .create_stream()
            .stream_name(&stream)
            .shard_count(1)
            .send()
            .await?;
        // CPU cost of packing and compressing alone (no I/O), on this machine's one core.
        let payloads: Vec<&[u8]> = data.iter().map(|r| r.payload.as_slice()).collect();
        let t = Instant::now();
        for chunk in payloads.chunks(batch) {
            let plan = packer::plan(chunk, &aws.pack, &aws.partition_key, &mut || {
                "0123456789abcdef0123456789abcdef".into()
            });
            std::hint::black_box(plan);
        }
        plan_rates.push((label, payloads.len() as f64 / t.elapsed().as_secs_f64()));
        let mut exporter = AwsExporter::new(aws, Default::default(), Default::default());
        let stats = exporter.stats();
        let start = Instant::now();
        let mut sent = 0usize;
        let mut offset = 0;
        while start.elapsed() < per_mode {
            let end = (offset + batch).min(data.len());
            let outcomes = exporter
                .send(&data[offset..end])
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            anyhow::ensure!(
                outcomes.iter().all(|o| *o == Outcome::Delivered),
                "not all delivered"
            );
            sent += end - offset;
            offset = if end == data.len() { 0 } else { end };
        }
        let elapsed = start.elapsed().as_secs_f64();
        let calls = stats.requests.load(Ordering::Relaxed) as f64;
        let records = stats.wire_records.load(Ordering::Relaxed) as f64;
        let bytes = stats.wire_bytes.load(Ordering::Relaxed) as f64;
        let per_record = sent as f64 / records;
        let bytes_per_sample = bytes / sent as f64;
        // A shard takes 1,000 records/s and 1 MiB/s (key bytes included: 32 per record).
        let key_bytes = records * 32.0 / sent as f64;
        let shard = (SHARD_RECORDS_PER_S * per_record)
            .min(SHARD_BYTES_PER_S / (bytes_per_sample + key_bytes));
        println!(
            "{label:<22} {:>10.0} {:>13.0} {:>14.1} {:>13.1} {:>22.0}",
            sent as f64 / elapsed,
            sent as f64 / calls,
            per_record,
            bytes_per_sample,
            shard
        );
    }
    println!("\npacking + compression alone (CPU, one thread, no I/O):");
    for (label, rate) in plan_rates {
        println!("{label:<22} {rate:>10.0} samples/s");
    }
    Ok(())
}
