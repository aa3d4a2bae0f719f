//! Report by exception: whether a fresh reading is sent. Pure; the reader passes time in.

use std::time::Duration;

use tokio::time::Instant;

use crate::payload::{Flags, Quality, Value};

/// When a tag's readings are sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReportPolicy {
    /// `None`: every reading is sent. `Some(d)`: a reading is sent when it differs from the
    /// last one sent by more than `d` (numbers) or at all (bools, text), or its quality changed.
    pub deadband: Option<f64>,
    /// With a deadband: an unchanged value is re-sent (flagged `Syn`) after this long.
    pub max_silence: Duration,
}

#[derive(Debug, Clone, Default)]
pub struct Reporter {
    last: Option<(Value, Quality, Instant)>,
}

impl Reporter {
    /// Forget the last value sent (after a reconnect every tag is sent again).
    pub fn reset(&mut self) {
        self.last = None;
    }

    /// `Some(flags)` when the reading is to be sent.
    pub fn decide(
        &mut self,
        policy: &ReportPolicy,
        value: &Value,
        quality: Quality,
        now: Instant,
    ) -> Option<Flags> {
        let Some(deadband) = policy.deadband else {
            return Some(Flags::empty());
        };
        let flags = match &self.last {
            None => Flags::empty(),
            Some((v, q, _)) if *q != quality || changed(v, value, deadband) => Flags::empty(),
            Some((_, _, at)) if now.duration_since(*at) >= policy.max_silence => Flags::SYN,
            Some(_) => return None,
        };
        self.last = Some((value.clone(), quality, now));
        Some(flags)
    }
}

fn changed(old: &Value, new: &Value, deadband: f64) -> bool {
    match (old.as_f64(), new.as_f64()) {
        (Some(a), Some(b)) => (a - b).abs() > deadband || a.is_nan() != b.is_nan(),
        _ => old != new,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deadband_and_max_silence() {
        let policy = ReportPolicy {
            deadband: Some(0.5),
            max_silence: Duration::from_secs(10),
        };
        let t0 = Instant::now();
        let s = Duration::from_secs(1);
        let mut r = Reporter::default();
        let ok = Quality::Ok;
        assert_eq!(
            r.decide(&policy, &Value::Float(1.0), ok, t0),
            Some(Flags::empty())
        );
        assert_eq!(r.decide(&policy, &Value::Float(1.4), ok, t0 + s), None);
        assert_eq!(
            r.decide(&policy, &Value::Float(1.6), ok, t0 + 2 * s),
            Some(Flags::empty())
        );
        assert_eq!(
            r.decide(&policy, &Value::Float(1.6), Quality::Bad, t0 + 3 * s),
            Some(Flags::empty())
        );
        assert_eq!(
            r.decide(&policy, &Value::Float(1.6), Quality::Bad, t0 + 4 * s),
            None
        );
        assert_eq!(
            r.decide(&policy, &Value::Float(1.6), Quality::Bad, t0 + 13 * s),
            Some(Flags::SYN)
        );
        assert_eq!(
            r.decide(&policy, &Value::Text("a".into()), ok, t0 + 14 * s),
            Some(Flags::empty())
        );
        assert_eq!(
            r.decide(&policy, &Value::Text("a".into()), ok, t0 + 15 * s),
            None
        );
        r.reset();
        assert_eq!(
            r.decide(&policy, &Value::Text("a".into()), ok, t0 + 16 * s),
            Some(Flags::empty())
        );
        let every = ReportPolicy {
            deadband: None,
            max_silence: s,
        };
        assert_eq!(
            r.decide(&every, &Value::Int(1), ok, t0),
            Some(Flags::empty())
        );
        assert_eq!(
            r.decide(&every, &Value::Int(1), ok, t0),
            Some(Flags::empty())
        );
    }
}
