//! How many tags/s one gateway reads from a local Modbus TCP server (pymodbus 3.16, started
//! here), with and without request coalescing. Prints figures; asserts nothing.
//!
//!     bash tests/peers/setup.d/modbus.sh   # pymodbus
//!     cargo run --release --example bench_modbus [-- TAGS SECONDS]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use streamgate::app::{Pipeline, StartOptions};

const SERVER: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/peers/modbus/server.py");

struct Guard(Child);
impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn server(dir: &Path, port: u16, tags: usize) -> Result<Guard, String> {
    let values: Vec<serde_json::Value> = (0..tags)
        .map(|i| serde_json::json!({"area": "holding_register", "address": i, "type": "u16", "value": i % 65536}))
        .collect();
    let spec = serde_json::json!({"devices": [{"id": 1, "size": tags + 8, "values": values}]});
    let spec_path = dir.join("spec.json");
    std::fs::write(&spec_path, spec.to_string()).map_err(|e| e.to_string())?;
    let log = dir.join("server.log");
    let out = std::fs::File::create(&log).map_err(|e| e.to_string())?;
    let child = Command::new("python3")
        .arg(SERVER)
        .args(["--tcp", &port.to_string(), "--spec"])
        .arg(&spec_path)
        .stdout(out.try_clone().map_err(|e| e.to_string())?)
        .stderr(out)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| format!("python3: {e}"))?;
    let guard = Guard(child);
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(&log)
        .unwrap_or_default()
        .lines()
        .any(|l| l == "READY")
    {
        if Instant::now() > deadline {
            return Err("server did not start (is pymodbus installed?)".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(guard)
}

async fn run(dir: &Path, port: u16, tags: usize, secs: u64, coalesce: bool) -> Result<f64, String> {
    let data = dir.join(format!("data-{coalesce}"));
    let limits = if coalesce {
        ""
    } else {
        "max_gap = 0\nmax_registers = 1\n"
    };
    let mut cfg = format!(
        "[gateway]\ndata_dir = \"{}\"\nequipment_id = \"bench\"\nreport_interval = \"0s\"\n\n\
         [[streams]]\nname = \"s\"\nmax_size = \"4GiB\"\nstrategy_on_full = \"overwrite_oldest\"\ndurability = \"process_crash\"\n\n\
         [[sources]]\nkind = \"modbus_tcp\"\nid = \"plc\"\nhost = \"127.0.0.1\"\nport = {port}\ninterval = \"1ms\"\n{limits}\n",
        data.display()
    );
    for i in 0..tags {
        cfg += &format!(
            "[[sources.tags]]\nname = \"t{i}\"\narea = \"holding_register\"\naddress = {i}\n\n"
        );
    }
    let cfg = streamgate::app::config::parse(&cfg).map_err(|e| format!("{e:?}"))?;
    let pipeline = Pipeline::start(&cfg, StartOptions::default()).map_err(|e| e.to_string())?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let start = (Instant::now(), pipeline.samples_read());
    tokio::time::sleep(Duration::from_secs(secs)).await;
    let read = pipeline.samples_read() - start.1;
    let rate = read as f64 / start.0.elapsed().as_secs_f64();
    pipeline.stop().await;
    Ok(rate)
}

/// Set up as `streamgate run` is (`streamgate::runtime`), so the figures are the binary's.
fn main() -> Result<(), String> {
    streamgate::runtime::start().block_on(bench())
}

async fn bench() -> Result<(), String> {
    let args: Vec<String> = std::env::args().collect();
    let tags: usize = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let secs: u64 = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(8);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let _server = server(dir.path(), port, tags)?;
    println!(
        "bench_modbus: {tags} u16 holding registers, one source, local pymodbus 3.16 over TCP, {secs} s per run"
    );
    for coalesce in [true, false] {
        let rate = run(dir.path(), port, tags, secs, coalesce).await?;
        let per_request = if coalesce { 125.0 } else { 1.0 };
        println!(
            "  {:<34} {:>9.0} tags/s  (~{:.0} requests/s)",
            if coalesce {
                "coalesced (125 registers/request)"
            } else {
                "one request per tag"
            },
            rate,
            rate / per_request
        );
    }
    Ok(())
}
