//! `streamgate bench`: drives the simulator through the real SQLite queue into the file export
//! and prints what was measured. Figures, not assertions: it never fails on a slow machine.
//!
//! Phases (each on a fresh data directory):
//! 1. backlog: queue N samples with exports stopped, report resident memory and bytes on disk,
//!    then start the export and time the drain;
//! 2. sustained: offered rates in steps (1,000 simulated tags): the highest rate at which the
//!    export keeps up end to end, with p50/p99 latency from sample creation to acknowledgement;
//! 3. overload: the simulator unthrottled: what is read and what is exported (no starvation).
//!
//! The file export runs with its default batching, as a gateway's would; each phase reports
//! its own peak resident memory.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::app::config::{self, Config, ConfigError};
use crate::app::{Pipeline, StartOptions};
use crate::queue::QueueError;
use crate::telemetry::{reset_rss_peak, rss};

#[derive(Debug, Clone)]
pub struct BenchOptions {
    pub dir: PathBuf,
    pub seconds: u64,
    pub backlog: u64,
    /// First offered rate of the sustained phase (samples/s).
    pub rate: u64,
    /// Step and ceiling of the sustained phase.
    pub rate_step: u64,
    pub max_rate: u64,
    pub durability: String,
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Queue(#[from] QueueError),
    #[error("benchmark config is invalid: {0:?}")]
    Config(Vec<ConfigError>),
    #[error("benchmark I/O: {0}")]
    Io(#[from] std::io::Error),
}

fn bench_config(
    data_dir: &Path,
    out_dir: &Path,
    interval: &str,
    tags: usize,
    durability: &str,
) -> Result<Config, BenchError> {
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
durability = "{durability}"

[[streams.exports]]
name = "file"
kind = "file"
path = "{out}"
rotate_size = "256MiB"
max_files = 2

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
        data = data_dir.display(),
        out = out_dir.display(),
    );
    config::parse(&text).map_err(BenchError::Config)
}

fn fresh(dir: &Path, name: &str) -> Result<(PathBuf, PathBuf), BenchError> {
    let base = dir.join(name);
    let _ = std::fs::remove_dir_all(&base);
    std::fs::create_dir_all(&base)?;
    Ok((base.join("data"), base.join("out")))
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok()?.metadata().ok())
                .map(|m| m.len())
                .sum()
        })
        .unwrap_or(0)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// Prints the phase's peak resident memory, keeps it for the summary and starts the next
/// phase's peak.
fn end_phase(phase: &'static str, peaks: &mut Vec<(&'static str, u64)>) {
    let (_, peak) = rss().unwrap_or((0, 0));
    println!(
        "{phase}: peak resident memory (whole phase) {:.1} MiB",
        mib(peak)
    );
    peaks.push((phase, peak));
    reset_rss_peak();
}

async fn backlog_of(p: &Pipeline) -> Result<(u64, u64), QueueError> {
    let s = p.handle.status().await?;
    Ok((s[0].records, s[0].exports.first().map_or(0, |e| e.backlog)))
}

/// Runs every phase and prints the figures.
pub async fn run(opts: BenchOptions) -> Result<(), BenchError> {
    println!(
        "streamgate bench: {} s per phase, backlog {} samples, durability {}",
        opts.seconds, opts.backlog, opts.durability
    );

    // Each phase reports its own peak resident memory (the kernel's high-water mark is reset
    // at the start of each); without the reset, each figure is the peak since start.
    let per_phase = reset_rss_peak();
    let mut peaks = Vec::new();

    // 1. Backlog: fill with exports stopped, measure memory and disk, then drain.
    let (data, out) = fresh(&opts.dir, "backlog")?;
    let cfg = bench_config(&data, &out, "0", 100, &opts.durability)?;
    let mut p = Pipeline::start(
        &cfg,
        StartOptions {
            sources: true,
            exports: false,
        },
    )?;
    let t0 = Instant::now();
    while p.samples_read() < opts.backlog {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    p.stop_sources(Duration::from_secs(30)).await;
    let fill = t0.elapsed();
    let target = p.samples_read();
    while backlog_of(&p).await?.0 < target {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let queued = backlog_of(&p).await?.0;
    let (rss_now, rss_peak) = rss().unwrap_or((0, 0));
    let disk = dir_bytes(&data);
    println!(
        "backlog: queued {queued} samples in {:.2} s ({:.0} samples/s into the queue, exports stopped)",
        fill.as_secs_f64(),
        queued as f64 / fill.as_secs_f64()
    );
    println!(
        "backlog: resident memory with {queued} queued: {:.1} MiB (peak so far {:.1} MiB)",
        mib(rss_now),
        mib(rss_peak)
    );
    println!(
        "backlog: bytes on disk {:.1} MiB = {:.0} bytes per queued sample = {:.1} MiB per million",
        mib(disk),
        disk as f64 / queued.max(1) as f64,
        mib(disk) * 1e6 / queued.max(1) as f64
    );
    let t1 = Instant::now();
    p.start_exports();
    while backlog_of(&p).await?.1 > 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let drain = t1.elapsed();
    println!(
        "backlog: drained {queued} samples to the file export in {:.2} s ({:.0} samples/s)",
        drain.as_secs_f64(),
        queued as f64 / drain.as_secs_f64()
    );
    p.stop().await;
    end_phase("backlog", &mut peaks);

    // 2. Sustained: offered rates in steps; sustained = exported keeps up and the backlog stays
    //    under half a second of samples. Latency from sample creation to acknowledged export.
    let tags = 1000usize;
    let mut best: Option<(u64, f64, u64, u64)> = None;
    let mut rate = opts.rate;
    loop {
        let (data, out) = fresh(&opts.dir, "sustained")?;
        let interval_us = (tags as u64 * 1_000_000 / rate.max(1)).max(1);
        let cfg = bench_config(
            &data,
            &out,
            &format!("{interval_us}us"),
            tags,
            &opts.durability,
        )?;
        let p = Pipeline::start(&cfg, StartOptions::default())?;
        tokio::time::sleep(Duration::from_secs(2)).await;
        for (_, s) in &p.export_stats {
            s.latency.reset();
        }
        let (r0, d0, t0) = (p.samples_read(), p.records_delivered(), Instant::now());
        tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
        let (r1, d1, el) = (
            p.samples_read(),
            p.records_delivered(),
            t0.elapsed().as_secs_f64(),
        );
        let (_, backlog) = backlog_of(&p).await?;
        let (read, exported) = ((r1 - r0) as f64 / el, (d1 - d0) as f64 / el);
        let hist = &p.export_stats[0].1.latency;
        let (p50, p99) = (
            hist.quantile(0.5).unwrap_or(0),
            hist.quantile(0.99).unwrap_or(0),
        );
        let kept_up =
            exported >= read * 0.97 && (backlog as f64) < read * 0.5 && read >= rate as f64 * 0.9;
        println!(
            "sustained: offered {rate} samples/s: read {read:.0}/s, exported and acknowledged {exported:.0}/s, backlog {backlog}, latency p50 {p50} ms p99 {p99} ms: {}",
            if kept_up { "kept up" } else { "fell behind" }
        );
        p.stop().await;
        if !kept_up {
            break;
        }
        best = Some((rate, exported, p50, p99));
        if rate >= opts.max_rate {
            break;
        }
        rate += opts.rate_step;
    }
    end_phase("sustained", &mut peaks);
    match best {
        Some((rate, exported, p50, p99)) => println!(
            "sustained: highest rate kept up end to end: {rate} samples/s ({exported:.0} exported/s), latency p50 {p50} ms, p99 {p99} ms"
        ),
        None => println!(
            "sustained: even {} samples/s fell behind on this machine",
            opts.rate
        ),
    }

    // 3. Overload: the simulator as fast as the queue takes samples: the exports must not starve.
    let (data, out) = fresh(&opts.dir, "overload")?;
    let cfg = bench_config(&data, &out, "0", 100, &opts.durability)?;
    let p = Pipeline::start(&cfg, StartOptions::default())?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (r0, d0, t0) = (p.samples_read(), p.records_delivered(), Instant::now());
    tokio::time::sleep(Duration::from_secs(opts.seconds)).await;
    let (r1, d1, el) = (
        p.samples_read(),
        p.records_delivered(),
        t0.elapsed().as_secs_f64(),
    );
    println!(
        "overload: unthrottled simulator: {:.0} samples/s read, {:.0} samples/s exported and acknowledged",
        (r1 - r0) as f64 / el,
        (d1 - d0) as f64 / el
    );
    p.stop().await;
    end_phase("overload", &mut peaks);
    let (phase, peak) = peaks
        .iter()
        .max_by_key(|(_, b)| *b)
        .copied()
        .unwrap_or(("", 0));
    println!(
        "all phases: peak resident memory {:.1} MiB (in the {phase} phase{})",
        mib(peak),
        if per_phase {
            ""
        } else {
            "; peaks not reset by this kernel, each is since start"
        }
    );
    let _ = std::fs::remove_dir_all(&opts.dir);
    Ok(())
}
