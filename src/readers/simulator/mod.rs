//! `kind = "simulator"`: a source of synthetic line data (sine, ramp, step, random walk,
//! counter, toggle, cycle) with injectable anomalies. It is the default source of the demo and
//! of the benchmarks, and behaves like a device: `Fst` after start, `Lst` on its last round.

pub mod config;
pub mod waveform;

use std::time::Duration;

use tokio_util::sync::CancellationToken;

pub use config::{RawSimulator, SimulatorConfig};
use waveform::Generator;

use super::{Sample, SourceContext};
use crate::payload::{Flags, Quality};

/// Catch-up limit per wake-up, so a stalled simulator does not emit a burst of stale samples.
const MAX_ROUNDS_PER_WAKE: u64 = 1_000;

pub struct Simulator {
    config: SimulatorConfig,
    generators: Vec<Generator>,
}

impl Simulator {
    pub fn new(config: SimulatorConfig, seed: u64) -> Simulator {
        let generators = config
            .tags
            .iter()
            .enumerate()
            .map(|(i, t)| {
                Generator::new(
                    t.waveform.clone(),
                    t.anomalies.clone(),
                    seed.wrapping_add(i as u64),
                )
            })
            .collect();
        Simulator { config, generators }
    }

    fn round(&mut self, ctx: &mut SourceContext, t_ms: u64, timestamp_ms: i64, flags: Flags) {
        for (i, g) in self.generators.iter_mut().enumerate() {
            ctx.push(Sample {
                tag: i,
                value: g.value(t_ms),
                quality: Quality::Ok,
                timestamp_ms,
                flags,
            });
        }
    }

    /// Runs until `shutdown`; the last round is flagged `Lst` and flushed before returning.
    pub async fn run(mut self, mut ctx: SourceContext, shutdown: CancellationToken) {
        let start_ms = crate::time::now_ms();
        ctx.connected();
        let interval = self.config.interval;
        tracing::info!(tags = self.config.tags.len(), interval = ?interval, "simulator started");
        if interval.is_zero() {
            // As fast as the queue takes them: flushing waits for the queue (backpressure).
            while !shutdown.is_cancelled() {
                let now = crate::time::now_ms();
                self.round(&mut ctx, (now - start_ms) as u64, now, Flags::empty());
                if ctx.should_flush() && ctx.flush().await.is_err() {
                    return;
                }
            }
        } else {
            let interval_us = interval.as_micros().max(1) as u64;
            let wake = interval.max(Duration::from_millis(1));
            let mut ticker = tokio::time::interval(wake);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let started = tokio::time::Instant::now();
            let mut rounds_done: u64 = 0;
            loop {
                let heartbeat = ctx.heartbeat_due();
                tokio::select! {
                    _ = ticker.tick() => {}
                    _ = tokio::time::sleep_until(heartbeat.unwrap_or_else(tokio::time::Instant::now)), if heartbeat.is_some() => {}
                    _ = shutdown.cancelled() => break,
                }
                let due = started.elapsed().as_micros() as u64 / interval_us + 1;
                if due > rounds_done + MAX_ROUNDS_PER_WAKE {
                    rounds_done = due - MAX_ROUNDS_PER_WAKE;
                }
                while rounds_done < due {
                    let t_ms = rounds_done * interval_us / 1000;
                    self.round(&mut ctx, t_ms, start_ms + t_ms as i64, Flags::empty());
                    rounds_done += 1;
                    if ctx.should_flush() && ctx.flush().await.is_err() {
                        return;
                    }
                }
                ctx.heartbeats(crate::time::now_ms());
                if ctx.flush().await.is_err() {
                    return;
                }
            }
        }
        let now = crate::time::now_ms();
        self.round(&mut ctx, (now - start_ms) as u64, now, Flags::LST);
        if let Err(e) = ctx.flush().await {
            tracing::warn!(error = %e, "could not queue the simulator's last samples");
        }
        tracing::info!(next_sequence = ctx.next_seq(), "simulator stopped");
    }
}
