//! Simulated signals: pure functions of time (plus a seeded random walk), and injected
//! anomalies. No I/O, no clock: the simulator passes time in.

use std::time::Duration;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::payload::Value;

#[derive(Debug, Clone, PartialEq)]
pub enum Waveform {
    /// `min..max` sine over `period`.
    Sine {
        min: f64,
        max: f64,
        period: Duration,
    },
    /// Sawtooth rising from `min` to `max` over `period`.
    Ramp {
        min: f64,
        max: f64,
        period: Duration,
    },
    /// Square wave: `min` for the first half of `period`, `max` for the second.
    Step {
        min: f64,
        max: f64,
        period: Duration,
    },
    /// A random walk of 1% of the range per sample, kept within `min..=max`.
    RandomWalk { min: f64, max: f64 },
    /// Integers counting up by one per sample from `start`, back to `start` after `wrap`.
    Counter { start: i64, wrap: i64 },
    /// A bool that flips every half `period`.
    Toggle { period: Duration },
    /// Strings in turn, each for `period / values.len()`.
    Cycle {
        values: Vec<String>,
        period: Duration,
    },
}

#[derive(Debug, Clone, PartialEq)]
pub enum AnomalyKind {
    /// The value jumps up by this much.
    Spike(f64),
    /// The value drops to this constant (a sensor that died).
    Drop(f64),
    /// The value freezes at what it was when the anomaly began.
    Stuck,
}

/// An anomaly that lasts `duration` at the end of every `every` period.
#[derive(Debug, Clone, PartialEq)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    pub every: Duration,
    pub duration: Duration,
}

impl Anomaly {
    pub fn active(&self, t_ms: u64) -> bool {
        let every = self.every.as_millis().max(1) as u64;
        let duration = self.duration.as_millis() as u64;
        t_ms % every >= every.saturating_sub(duration)
    }
}

/// Generates one tag's values.
#[derive(Debug, Clone)]
pub struct Generator {
    waveform: Waveform,
    anomalies: Vec<Anomaly>,
    walk: Option<f64>,
    count: i64,
    stuck: Option<Value>,
    rng: SmallRng,
}

fn phase(t_ms: u64, period: Duration) -> f64 {
    let p = period.as_millis().max(1) as u64;
    (t_ms % p) as f64 / p as f64
}

impl Generator {
    pub fn new(waveform: Waveform, anomalies: Vec<Anomaly>, seed: u64) -> Generator {
        Generator {
            waveform,
            anomalies,
            walk: None,
            count: 0,
            stuck: None,
            rng: SmallRng::seed_from_u64(seed),
        }
    }

    fn base(&mut self, t_ms: u64) -> Value {
        match &self.waveform {
            Waveform::Sine { min, max, period } => {
                let x = (phase(t_ms, *period) * std::f64::consts::TAU).sin();
                Value::Float(min + (max - min) * (x + 1.0) / 2.0)
            }
            Waveform::Ramp { min, max, period } => {
                Value::Float(min + (max - min) * phase(t_ms, *period))
            }
            Waveform::Step { min, max, period } => Value::Float(if phase(t_ms, *period) < 0.5 {
                *min
            } else {
                *max
            }),
            Waveform::RandomWalk { min, max } => {
                let (min, max) = (*min, *max);
                let step = (max - min) / 100.0;
                let current = self.walk.unwrap_or((min + max) / 2.0);
                let next = (current + self.rng.random_range(-1.0..=1.0) * step).clamp(min, max);
                self.walk = Some(next);
                Value::Float(next)
            }
            Waveform::Counter { start, wrap } => {
                let span = (wrap - start).max(0) + 1;
                let v = start + self.count.rem_euclid(span);
                self.count = self.count.wrapping_add(1);
                Value::Int(v)
            }
            Waveform::Toggle { period } => Value::Bool(phase(t_ms, *period) >= 0.5),
            Waveform::Cycle { values, period } => {
                let i =
                    ((phase(t_ms, *period) * values.len() as f64) as usize).min(values.len() - 1);
                Value::Text(values[i].clone())
            }
        }
    }

    /// The value at `t_ms` after the source started.
    pub fn value(&mut self, t_ms: u64) -> Value {
        let base = self.base(t_ms);
        let active = self
            .anomalies
            .iter()
            .find(|a| a.active(t_ms))
            .map(|a| a.kind.clone());
        match active {
            None => {
                self.stuck = None;
                base
            }
            Some(AnomalyKind::Stuck) => self.stuck.get_or_insert(base).clone(),
            Some(AnomalyKind::Spike(m)) => match base {
                Value::Float(f) => Value::Float(f + m),
                Value::Int(i) => Value::Int(i + m as i64),
                other => other,
            },
            Some(AnomalyKind::Drop(c)) => match base {
                Value::Float(_) => Value::Float(c),
                Value::Int(_) => Value::Int(c as i64),
                other => other,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN: Duration = Duration::from_secs(60);

    fn f(v: Value) -> f64 {
        v.as_f64().unwrap()
    }

    #[test]
    fn sine_spans_min_to_max() {
        let mut g = Generator::new(
            Waveform::Sine {
                min: 10.0,
                max: 20.0,
                period: MIN,
            },
            vec![],
            1,
        );
        assert!((f(g.value(0)) - 15.0).abs() < 1e-9);
        assert!((f(g.value(15_000)) - 20.0).abs() < 1e-9);
        assert!((f(g.value(45_000)) - 10.0).abs() < 1e-9);
    }

    #[test]
    fn ramp_step_counter_toggle_cycle() {
        let mut ramp = Generator::new(
            Waveform::Ramp {
                min: 0.0,
                max: 100.0,
                period: MIN,
            },
            vec![],
            1,
        );
        assert_eq!(f(ramp.value(30_000)), 50.0);
        let mut step = Generator::new(
            Waveform::Step {
                min: 1.0,
                max: 2.0,
                period: MIN,
            },
            vec![],
            1,
        );
        assert_eq!((f(step.value(1_000)), f(step.value(31_000))), (1.0, 2.0));
        let mut counter = Generator::new(Waveform::Counter { start: 5, wrap: 7 }, vec![], 1);
        let seen: Vec<Value> = (0..4).map(|t| counter.value(t)).collect();
        assert_eq!(
            seen,
            vec![Value::Int(5), Value::Int(6), Value::Int(7), Value::Int(5)]
        );
        let mut toggle = Generator::new(Waveform::Toggle { period: MIN }, vec![], 1);
        assert_eq!(
            (toggle.value(0), toggle.value(40_000)),
            (Value::Bool(false), Value::Bool(true))
        );
        let values = vec!["idle".to_string(), "filling".to_string()];
        let mut cycle = Generator::new(
            Waveform::Cycle {
                values,
                period: MIN,
            },
            vec![],
            1,
        );
        assert_eq!(cycle.value(31_000), Value::Text("filling".into()));
    }

    #[test]
    fn random_walk_stays_in_range() {
        let mut g = Generator::new(
            Waveform::RandomWalk {
                min: -1.0,
                max: 1.0,
            },
            vec![],
            7,
        );
        for t in 0..10_000 {
            let v = f(g.value(t));
            assert!((-1.0..=1.0).contains(&v));
        }
    }

    #[test]
    fn anomalies_apply_in_their_window() {
        let every = Duration::from_secs(10);
        let duration = Duration::from_secs(2);
        let wave = Waveform::Ramp {
            min: 0.0,
            max: 100.0,
            period: MIN,
        };
        let mut spike = Generator::new(
            wave.clone(),
            vec![Anomaly {
                kind: AnomalyKind::Spike(1000.0),
                every,
                duration,
            }],
            1,
        );
        assert!(f(spike.value(5_000)) < 100.0);
        assert!(f(spike.value(8_500)) > 1000.0);
        let mut drop = Generator::new(
            wave.clone(),
            vec![Anomaly {
                kind: AnomalyKind::Drop(-1.0),
                every,
                duration,
            }],
            1,
        );
        assert_eq!(f(drop.value(9_000)), -1.0);
        assert!(f(drop.value(10_500)) > 0.0);
        let mut stuck = Generator::new(
            wave,
            vec![Anomaly {
                kind: AnomalyKind::Stuck,
                every,
                duration,
            }],
            1,
        );
        let first = f(stuck.value(8_000));
        assert_eq!(f(stuck.value(9_900)), first);
        assert_ne!(f(stuck.value(10_100)), first);
    }
}
