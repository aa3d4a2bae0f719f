//! What every polling reader (Modbus, S7) does with a fresh reading before it becomes a
//! sample, with ONE meaning for all of them (docs/readers.md):
//! - **scaling**: `value * scale + offset` for numbers (sent as a float); other types as read;
//! - **report by exception** (`deadband`, `max_silence`): without a deadband every reading is
//!   sent; with one, a reading is sent when it moved by more than `deadband` from the last one
//!   sent (numbers; `deadband = 0`: on any change), changed at all (bool, text), or its quality
//!   changed; an unchanged value is re-sent, flagged `Syn`, after `max_silence` (default 60 s).
//!
//! OPC UA's subscriptions apply the same deadband meaning on the server (DataChangeFilter).
//! Pure; the reader passes time in. Validated by [`validate`], so the keys and messages are the
//! same for every reader.

use std::time::Duration;

use tokio::time::Instant;

use crate::config::Errors;
use crate::payload::{Flags, Quality, Value};

/// `value * scale + offset`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Scaling {
    pub scale: f64,
    pub offset: f64,
}

impl Scaling {
    /// Numbers become `value * scale + offset` (a float); other values are left as they are.
    pub fn apply(&self, value: Value) -> Value {
        match value.as_f64() {
            Some(x) if matches!(value, Value::Int(_) | Value::Float(_)) => {
                Value::Float(x * self.scale + self.offset)
            }
            _ => value,
        }
    }
}

/// The default of `max_silence`.
pub const DEFAULT_MAX_SILENCE: Duration = Duration::from_secs(60);

/// The tag keys of scaling and report by exception, as written.
#[derive(Debug, Clone, Copy, Default)]
pub struct RawSignal<'a> {
    pub scale: Option<f64>,
    pub offset: Option<f64>,
    pub deadband: Option<f64>,
    pub max_silence: Option<&'a str>,
}

/// Validates a tag's `scale`, `offset`, `deadband` and `max_silence` at `path`. `numeric`:
/// whether the tag's type is a number (scaling applies to numbers only; a deadband on a bool or
/// text tag means "on change").
pub fn validate(
    path: &str,
    raw: RawSignal<'_>,
    numeric: bool,
    errs: &mut Errors,
) -> (Option<Scaling>, ReportPolicy) {
    let scaling = if raw.scale.is_some() || raw.offset.is_some() {
        let scaling = Scaling {
            scale: raw.scale.unwrap_or(1.0),
            offset: raw.offset.unwrap_or(0.0),
        };
        let key = if raw.scale.is_some() {
            "scale"
        } else {
            "offset"
        };
        if !numeric {
            errs.push(
                format!("{path}.{key}"),
                "scale and offset apply to numeric types only",
            );
        }
        if !scaling.scale.is_finite() || !scaling.offset.is_finite() {
            errs.push(
                format!("{path}.{key}"),
                "scale and offset must be finite numbers",
            );
        }
        Some(scaling)
    } else {
        None
    };
    if let Some(d) = raw.deadband
        && (!d.is_finite() || d < 0.0)
    {
        errs.push(format!("{path}.deadband"), "must be a number >= 0");
    }
    let max_silence = errs.duration(
        &format!("{path}.max_silence"),
        raw.max_silence,
        DEFAULT_MAX_SILENCE,
        Duration::from_millis(1),
    );
    if raw.max_silence.is_some() && raw.deadband.is_none() {
        errs.push(
            format!("{path}.max_silence"),
            "only applies with a deadband (use deadband = 0 to send on any change)",
        );
    }
    (
        scaling,
        ReportPolicy {
            deadband: raw.deadband,
            max_silence,
        },
    )
}

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

    /// A reading sent whatever the policy says (the last round before a stop, flagged `Lst`):
    /// the next decision compares against it.
    pub fn sent(&mut self, value: &Value, quality: Quality, now: Instant) {
        self.last = Some((value.clone(), quality, now));
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
    fn scaling_applies_to_numbers_only() {
        let s = Scaling {
            scale: 0.5,
            offset: 10.0,
        };
        assert_eq!(s.apply(Value::Int(4)), Value::Float(12.0));
        let tenth = Scaling {
            scale: 0.1,
            offset: -1.0,
        };
        assert_eq!(
            tenth.apply(Value::Int(215)),
            Value::Float(215.0 * 0.1 - 1.0)
        );
        assert_eq!(s.apply(Value::Float(-2.0)), Value::Float(9.0));
        assert_eq!(s.apply(Value::Bool(true)), Value::Bool(true));
        assert_eq!(s.apply(Value::Text("x".into())), Value::Text("x".into()));
    }

    #[test]
    fn validation_names_each_key() {
        let mut errs = Errors::default();
        let raw = RawSignal {
            scale: Some(f64::NAN),
            deadband: Some(-1.0),
            max_silence: Some("5s"),
            ..RawSignal::default()
        };
        validate("t", raw, true, &mut errs);
        let raw = RawSignal {
            offset: Some(1.0),
            deadband: Some(0.0),
            max_silence: Some("5s"),
            ..RawSignal::default()
        };
        let (scaling, policy) = validate("u", raw, false, &mut errs);
        let paths: Vec<String> = errs.into_vec().into_iter().map(|e| e.path).collect();
        assert_eq!(paths, ["t.scale", "t.deadband", "u.offset"]);
        assert_eq!(scaling.map(|s| s.offset), Some(1.0));
        assert_eq!(policy.deadband, Some(0.0));
        assert_eq!(policy.max_silence, Duration::from_secs(5));
        let mut errs = Errors::default();
        let raw = RawSignal {
            max_silence: Some("5s"),
            ..RawSignal::default()
        };
        validate("v", raw, true, &mut errs);
        let errs = errs.into_vec();
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].path, "v.max_silence");
    }

    #[test]
    fn zero_deadband_sends_on_change_only() {
        let policy = ReportPolicy {
            deadband: Some(0.0),
            max_silence: Duration::from_secs(60),
        };
        let t0 = Instant::now();
        let mut r = Reporter::default();
        let ok = Quality::Ok;
        assert!(r.decide(&policy, &Value::Float(1.0), ok, t0).is_some());
        assert_eq!(r.decide(&policy, &Value::Float(1.0), ok, t0), None);
        assert!(r.decide(&policy, &Value::Float(1.0001), ok, t0).is_some());
        assert_eq!(
            r.decide(&policy, &Value::Bool(true), ok, t0),
            Some(Flags::empty())
        );
        assert_eq!(r.decide(&policy, &Value::Bool(true), ok, t0), None);
        r.sent(&Value::Bool(false), ok, t0);
        assert!(r.decide(&policy, &Value::Bool(true), ok, t0).is_some());
    }

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
