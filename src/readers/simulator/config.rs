//! Settings of `kind = "simulator"`.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::waveform::{Anomaly, AnomalyKind, Waveform};
use crate::config::{Errors, StreamNames};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimulator {
    pub interval: Option<String>,
    #[serde(default)]
    pub tags: Vec<RawSimTag>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSimTag {
    pub name: String,
    pub stream: Option<String>,
    pub waveform: Option<String>,
    pub min: Option<f64>,
    pub max: Option<f64>,
    pub period: Option<String>,
    pub values: Option<Vec<String>>,
    pub repeat: Option<i64>,
    #[serde(default)]
    pub anomalies: Vec<RawAnomaly>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawAnomaly {
    pub kind: String,
    pub every: String,
    pub duration: Option<String>,
    pub value: Option<f64>,
    pub magnitude: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Time between two samples of a tag; zero = as fast as the queue takes them (benchmarks).
    pub interval: Duration,
    pub tags: Vec<SimTag>,
}

#[derive(Debug, Clone)]
pub struct SimTag {
    pub name: String,
    pub stream: Option<usize>,
    pub waveform: Waveform,
    pub anomalies: Vec<Anomaly>,
}

/// Upper bound on the tags one simulator may generate (with `repeat`).
pub const MAX_TAGS: usize = 100_000;

impl RawSimulator {
    pub fn validate(
        &self,
        path: &str,
        streams: &StreamNames,
        errs: &mut Errors,
    ) -> SimulatorConfig {
        let interval = errs.duration(
            &format!("{path}.interval"),
            self.interval.as_deref(),
            Duration::from_secs(1),
            Duration::ZERO,
        );
        if self.tags.is_empty() {
            errs.push(
                format!("{path}.tags"),
                "a simulator needs at least one [[sources.tags]]",
            );
        }
        let mut tags = Vec::new();
        let mut names = HashSet::new();
        for (i, t) in self.tags.iter().enumerate() {
            let tpath = format!("{path}.tags[{i}]");
            let Some(tag) = tag(&tpath, t, streams, errs) else {
                continue;
            };
            let repeat =
                errs.int(&format!("{tpath}.repeat"), t.repeat, 1, 1, MAX_TAGS as i64) as usize;
            if t.repeat.is_some() {
                for k in 0..repeat {
                    let mut copy = tag.clone();
                    copy.name = format!("{}_{k}", tag.name);
                    tags.push(copy);
                }
            } else {
                tags.push(tag);
            }
            if !names.insert(t.name.clone()) {
                errs.push(
                    format!("{tpath}.name"),
                    format!("tag \"{}\" is defined twice in this source", t.name),
                );
            }
        }
        if tags.len() > MAX_TAGS {
            errs.push(
                format!("{path}.tags"),
                format!("{} tags is above the limit of {MAX_TAGS}", tags.len()),
            );
        }
        SimulatorConfig { interval, tags }
    }
}

fn tag(path: &str, t: &RawSimTag, streams: &StreamNames, errs: &mut Errors) -> Option<SimTag> {
    let stream = errs.tag_name_and_stream(path, &t.name, t.stream.as_deref(), streams);
    let min = t.min.unwrap_or(0.0);
    let max = t.max.unwrap_or(100.0);
    if !(min.is_finite() && max.is_finite()) || min > max {
        errs.push(
            format!("{path}.max"),
            format!("min ({min}) must not be above max ({max})"),
        );
    }
    let period = errs.duration(
        &format!("{path}.period"),
        t.period.as_deref(),
        Duration::from_secs(60),
        Duration::from_millis(1),
    );
    let name = t.waveform.as_deref().unwrap_or("sine");
    let waveform = match name {
        "sine" => Waveform::Sine { min, max, period },
        "ramp" => Waveform::Ramp { min, max, period },
        "step" => Waveform::Step { min, max, period },
        "random_walk" => Waveform::RandomWalk { min, max },
        "counter" => Waveform::Counter {
            start: min as i64,
            wrap: max as i64,
        },
        "toggle" => Waveform::Toggle { period },
        "cycle" => match &t.values {
            Some(v) if !v.is_empty() => Waveform::Cycle {
                values: v.clone(),
                period,
            },
            _ => {
                errs.push(
                    format!("{path}.values"),
                    "waveform \"cycle\" needs a non-empty list of values",
                );
                Waveform::Cycle {
                    values: vec![String::new()],
                    period,
                }
            }
        },
        other => {
            errs.push(
                format!("{path}.waveform"),
                format!(
                    "\"{other}\" is not one of \"sine\", \"ramp\", \"step\", \"random_walk\", \"counter\", \"toggle\", \"cycle\""
                ),
            );
            Waveform::Sine { min, max, period }
        }
    };
    if t.values.is_some() && name != "cycle" {
        errs.push(
            format!("{path}.values"),
            "only applies to waveform = \"cycle\"",
        );
    }
    let mut anomalies = Vec::new();
    for (j, a) in t.anomalies.iter().enumerate() {
        let apath = format!("{path}.anomalies[{j}]");
        let every = errs.duration(
            &format!("{apath}.every"),
            Some(&a.every),
            Duration::from_secs(60),
            Duration::from_millis(1),
        );
        let duration = errs.duration(
            &format!("{apath}.duration"),
            a.duration.as_deref(),
            Duration::from_secs(5).min(every),
            Duration::from_millis(1),
        );
        if duration > every {
            errs.push(
                format!("{apath}.duration"),
                "must not be longer than `every`",
            );
        }
        let kind = match a.kind.as_str() {
            "spike" => AnomalyKind::Spike(a.magnitude.unwrap_or(max - min)),
            "drop" => AnomalyKind::Drop(a.value.unwrap_or(min)),
            "stuck" => AnomalyKind::Stuck,
            other => {
                errs.push(
                    format!("{apath}.kind"),
                    format!("\"{other}\" is not one of \"spike\", \"drop\", \"stuck\""),
                );
                AnomalyKind::Stuck
            }
        };
        anomalies.push(Anomaly {
            kind,
            every,
            duration,
        });
    }
    Some(SimTag {
        name: t.name.clone(),
        stream,
        waveform,
        anomalies,
    })
}
