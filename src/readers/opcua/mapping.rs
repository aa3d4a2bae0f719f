//! Pure mapping of OPC UA data values into samples: StatusCode -> quality, Variant -> value,
//! and which timestamp a sample carries. No I/O; unit-tested below.

use opcua::types::{DataValue, DateTime, StatusCode, Variant};

use crate::payload::{Flags, Quality, Value};

/// OPC UA status severity -> quality: Good -> Ok, Uncertain -> Uncertain, Bad -> Bad.
/// A missing status means Good (the encoding omits Good).
pub fn quality(status: Option<StatusCode>) -> Quality {
    match status {
        None => Quality::Ok,
        Some(s) if s.is_good() => Quality::Ok,
        Some(s) if s.is_uncertain() => Quality::Uncertain,
        Some(_) => Quality::Bad,
    }
}

/// Why a value could not be turned into a payload value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Unsupported {
    /// No value (typically with a Bad status).
    Empty,
    /// An array; tags select one element with `index`.
    Array(usize),
    /// A structure (ExtensionObject) or a nested Variant/DataValue/DiagnosticInfo.
    Structure(&'static str),
}

impl std::fmt::Display for Unsupported {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unsupported::Empty => write!(f, "the server sent no value"),
            Unsupported::Array(n) => write!(
                f,
                "the node holds an array of {n} values; set `index` on the tag to read one element"
            ),
            Unsupported::Structure(what) => write!(
                f,
                "the node holds a {what}, which streamgate does not flatten; subscribe to the nodes of its scalar fields instead"
            ),
        }
    }
}

/// The name of a status code without its flag bits ("BadSensorFailure").
pub fn status_name(s: StatusCode) -> &'static str {
    s.sub_code().name()
}

impl Unsupported {
    /// A short text for the sample's value.
    pub fn short(&self) -> String {
        match self {
            Unsupported::Empty => "no value".into(),
            Unsupported::Array(n) => format!("array of {n} values"),
            Unsupported::Structure(what) => (*what).into(),
        }
    }
}

/// The element a tag with `index` wants (one index per dimension). Servers should apply the
/// IndexRange themselves and send a one-element array; some (asyncua) send the whole array, so
/// pick it here too: a matrix's elements are stored row after row (the last index varies
/// fastest), as its `dimensions` say.
pub fn element<'a>(v: &'a Variant, index: Option<&[u32]>) -> &'a Variant {
    let (Variant::Array(a), Some(index)) = (v, index) else {
        return v;
    };
    if a.values.len() <= 1 {
        return v;
    }
    let flat = match index {
        [i] => Some(*i as usize),
        _ => a.dimensions.as_deref().and_then(|dims| {
            if dims.len() != index.len() || index.iter().zip(dims).any(|(i, d)| i >= d) {
                return None;
            }
            Some(
                index
                    .iter()
                    .zip(dims)
                    .fold(0usize, |at, (i, d)| at * *d as usize + *i as usize),
            )
        }),
    };
    flat.and_then(|i| a.values.get(i)).unwrap_or(v)
}

/// ms since the Unix epoch of an OPC UA DateTime (100 ns ticks since 1601).
pub fn datetime_ms(dt: &DateTime) -> i64 {
    const TICKS_1601_TO_1970: i64 = 116_444_736_000_000_000;
    (dt.checked_ticks() - TICKS_1601_TO_1970).div_euclid(10_000)
}

/// Whether [`value`] of `v` is only near the device's value (a UInt64 above i64::MAX).
pub fn inexact(v: &Variant) -> bool {
    match v {
        Variant::UInt64(n) => i64::try_from(*n).is_err(),
        Variant::Array(a) if a.values.len() == 1 => inexact(&a.values[0]),
        _ => false,
    }
}

/// A scalar Variant as a payload value:
/// - Boolean -> bool; SByte..Int64, Byte, UInt16, UInt32 -> integer; UInt64 -> integer when it
///   fits in i64, else the nearest number (see [`inexact`]: the sample is `Uncertain`, the rule
///   of every reader); Float -> the number with the Float's shortest decimal; Double -> number;
/// - String, XmlElement -> text (null -> ""); LocalizedText -> its text (locale dropped);
///   QualifiedName, NodeId, ExpandedNodeId, Guid -> their standard text form;
///   StatusCode -> its name ("BadSensorFailure"); ByteString -> base64 text;
///   DateTime -> integer ms since the Unix epoch;
/// - an array of exactly one element (what a server sends for a tag with `index`) -> that
///   element; longer arrays, structures and nested values -> [`Unsupported`].
pub fn value(v: &Variant) -> Result<Value, Unsupported> {
    Ok(match v {
        Variant::Empty => return Err(Unsupported::Empty),
        Variant::Boolean(b) => Value::Bool(*b),
        Variant::SByte(n) => Value::Int(i64::from(*n)),
        Variant::Byte(n) => Value::Int(i64::from(*n)),
        Variant::Int16(n) => Value::Int(i64::from(*n)),
        Variant::UInt16(n) => Value::Int(i64::from(*n)),
        Variant::Int32(n) => Value::Int(i64::from(*n)),
        Variant::UInt32(n) => Value::Int(i64::from(*n)),
        Variant::Int64(n) => Value::Int(*n),
        Variant::UInt64(n) => Value::from_u64(*n).0,
        Variant::Float(f) => Value::from_f32(*f),
        Variant::Double(f) => Value::Float(*f),
        Variant::String(s) => Value::Text(s.value().clone().unwrap_or_default()),
        Variant::XmlElement(s) => Value::Text(s.to_string()),
        Variant::LocalizedText(t) => Value::Text(t.text.value().clone().unwrap_or_default()),
        Variant::QualifiedName(q) => Value::Text(q.to_string()),
        Variant::NodeId(n) => Value::Text(n.to_string()),
        Variant::ExpandedNodeId(n) => Value::Text(n.to_string()),
        Variant::Guid(g) => Value::Text(g.to_string()),
        Variant::StatusCode(s) => Value::Text(status_name(*s).to_string()),
        Variant::ByteString(b) => Value::Text(b.as_base64()),
        Variant::DateTime(d) => Value::Int(datetime_ms(d)),
        Variant::Array(a) if a.values.len() == 1 => return value(&a.values[0]),
        Variant::Array(a) => return Err(Unsupported::Array(a.values.len())),
        Variant::ExtensionObject(_) => return Err(Unsupported::Structure("structure")),
        Variant::Variant(_) => return Err(Unsupported::Structure("nested Variant")),
        Variant::DataValue(_) => return Err(Unsupported::Structure("nested DataValue")),
        Variant::DiagnosticInfo(_) => return Err(Unsupported::Structure("DiagnosticInfo")),
    })
}

/// Timestamps before 2000-01-01 come from devices whose clock was never set.
pub const MIN_PLAUSIBLE_MS: i64 = 946_684_800_000;

/// The event time of a data value: its SourceTimestamp, else its ServerTimestamp (both are
/// device-side clocks, so no `Ats`). The gateway's own time replaces it, flagged `Ats`, when
/// there is none, when it is before 2000 (clock never set), or when it is more than
/// `max_skew_ms` ahead of the gateway clock (a future event time cannot be right; past ones
/// can be: a value unchanged for an hour arrives with its hour-old source timestamp).
/// `max_skew_ms = None` turns the future check off.
pub fn timestamp(dv: &DataValue, now_ms: i64, max_skew_ms: Option<i64>) -> (i64, Flags) {
    let device = [dv.source_timestamp.as_ref(), dv.server_timestamp.as_ref()]
        .into_iter()
        .flatten()
        .find(|d| !d.is_null())
        .map(datetime_ms);
    match device {
        Some(t) if t < MIN_PLAUSIBLE_MS => (now_ms, Flags::ATS),
        Some(t) if max_skew_ms.is_some_and(|max| t - now_ms > max) => (now_ms, Flags::ATS),
        Some(t) => (t, Flags::empty()),
        None => (now_ms, Flags::ATS),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opcua::types::{
        Array, ByteString, Guid, LocalizedText, NodeId, QualifiedName, UAString,
        VariantScalarTypeId,
    };
    use std::str::FromStr;

    #[test]
    fn status_codes_map_by_severity() {
        assert_eq!(quality(None), Quality::Ok);
        assert_eq!(quality(Some(StatusCode::Good)), Quality::Ok);
        assert_eq!(quality(Some(StatusCode::GoodClamped)), Quality::Ok);
        assert_eq!(quality(Some(StatusCode::Uncertain)), Quality::Uncertain);
        assert_eq!(
            quality(Some(StatusCode::UncertainLastUsableValue)),
            Quality::Uncertain
        );
        assert_eq!(quality(Some(StatusCode::Bad)), Quality::Bad);
        assert_eq!(quality(Some(StatusCode::BadSensorFailure)), Quality::Bad);
        assert_eq!(
            quality(Some(StatusCode::BadCommunicationError)),
            Quality::Bad
        );
    }

    #[test]
    fn an_element_of_a_matrix_is_picked_row_after_row() {
        let mut a = Array::new(
            VariantScalarTypeId::Int32,
            (0..6).map(Variant::Int32).collect::<Vec<_>>(),
        )
        .unwrap();
        a.dimensions = Some(vec![2, 3]);
        let m = Variant::from(a);
        assert_eq!(element(&m, Some(&[1, 2])), &Variant::Int32(5));
        assert_eq!(element(&m, Some(&[0, 1])), &Variant::Int32(1));
        assert_eq!(
            element(&m, Some(&[4])),
            &Variant::Int32(4),
            "one index: flat"
        );
        // Out of its dimensions, or another rank: the whole array (reported as unsupported).
        assert_eq!(element(&m, Some(&[2, 0])), &m);
        assert_eq!(element(&m, Some(&[0, 0, 0])), &m);
    }

    #[test]
    fn scalars_become_values() {
        assert_eq!(value(&Variant::Boolean(true)), Ok(Value::Bool(true)));
        assert_eq!(value(&Variant::SByte(-3)), Ok(Value::Int(-3)));
        assert_eq!(
            value(&Variant::UInt32(u32::MAX)),
            Ok(Value::Int(4294967295))
        );
        assert_eq!(value(&Variant::Int64(i64::MIN)), Ok(Value::Int(i64::MIN)));
        assert_eq!(value(&Variant::UInt64(7)), Ok(Value::Int(7)));
        assert_eq!(
            value(&Variant::UInt64(u64::MAX)),
            Ok(Value::Float(u64::MAX as f64))
        );
        assert!(inexact(&Variant::UInt64(u64::MAX)) && !inexact(&Variant::UInt64(7)));
        assert_eq!(value(&Variant::Float(1.5)), Ok(Value::Float(1.5)));
        assert_eq!(value(&Variant::Float(11.4)), Ok(Value::Float(11.4)));
        assert_eq!(value(&Variant::Double(-2.25)), Ok(Value::Float(-2.25)));
        assert_eq!(
            value(&Variant::String(UAString::from("abc"))),
            Ok(Value::Text("abc".into()))
        );
        assert_eq!(
            value(&Variant::String(UAString::null())),
            Ok(Value::Text(String::new()))
        );
        assert_eq!(
            value(&Variant::from(LocalizedText::new("de", "Kessel"))),
            Ok(Value::Text("Kessel".into()))
        );
        assert_eq!(
            value(&Variant::from(QualifiedName::new(2, "Temp"))),
            Ok(Value::Text("2:Temp".into()))
        );
        assert_eq!(
            value(&Variant::from(NodeId::new(2, 1001))),
            Ok(Value::Text("ns=2;i=1001".into()))
        );
        let g = Guid::from_str("09087e75-8e5e-499b-954f-f2a9603db28a").unwrap();
        assert_eq!(
            value(&Variant::from(g)),
            Ok(Value::Text("09087e75-8e5e-499b-954f-f2a9603db28a".into()))
        );
        assert_eq!(
            value(&Variant::StatusCode(StatusCode::BadSensorFailure)),
            Ok(Value::Text("BadSensorFailure".into()))
        );
        assert_eq!(
            value(&Variant::ByteString(ByteString::from(vec![1u8, 2, 3]))),
            Ok(Value::Text("AQID".into()))
        );
        let dt = DateTime::parse_from_rfc3339("2026-01-02T03:04:05.678Z").unwrap();
        assert_eq!(value(&Variant::from(dt)), Ok(Value::Int(1_767_323_045_678)));
    }

    #[test]
    fn arrays_structures_and_empty_are_reported() {
        assert_eq!(value(&Variant::Empty), Err(Unsupported::Empty));
        let one = Array::new(VariantScalarTypeId::Double, vec![Variant::Double(4.0)]).unwrap();
        assert_eq!(value(&Variant::from(one)), Ok(Value::Float(4.0)));
        let three = Array::new(
            VariantScalarTypeId::Int32,
            vec![Variant::Int32(1), Variant::Int32(2), Variant::Int32(3)],
        )
        .unwrap();
        let three = Variant::from(three);
        assert_eq!(value(element(&three, Some(&[1]))), Ok(Value::Int(2)));
        assert_eq!(
            element(&three, Some(&[7])),
            &three,
            "out of range: the array, reported"
        );
        let err = value(&three).unwrap_err();
        assert_eq!(err, Unsupported::Array(3));
        assert_eq!(
            err.to_string(),
            "the node holds an array of 3 values; set `index` on the tag to read one element"
        );
        assert_eq!(
            value(&Variant::Variant(Box::new(Variant::Int32(1)))),
            Err(Unsupported::Structure("nested Variant"))
        );
    }

    // What the OPC UA layer hands us, generated: proptest rather than libFuzzer, because the
    // input is a typed Variant (the crate's binary decoder sits in between, so raw bytes would
    // mostly test async-opcua, not us), async-opcua has no `Arbitrary`, and building the crate
    // under cargo-fuzz's instrumentation would double the fuzz build time.
    mod generated {
        use super::*;
        use proptest::prelude::*;

        fn scalar() -> impl Strategy<Value = Variant> {
            prop_oneof![
                Just(Variant::Empty),
                any::<bool>().prop_map(Variant::Boolean),
                any::<i8>().prop_map(Variant::SByte),
                any::<u8>().prop_map(Variant::Byte),
                any::<i16>().prop_map(Variant::Int16),
                any::<u16>().prop_map(Variant::UInt16),
                any::<i32>().prop_map(Variant::Int32),
                any::<u32>().prop_map(Variant::UInt32),
                any::<i64>().prop_map(Variant::Int64),
                any::<u64>().prop_map(Variant::UInt64),
                any::<f32>().prop_map(Variant::Float),
                any::<f64>().prop_map(Variant::Double),
                ".{0,40}".prop_map(|s| Variant::String(UAString::from(s))),
                Just(Variant::String(UAString::null())),
                any::<u32>().prop_map(|c| Variant::StatusCode(StatusCode::from(c))),
                proptest::collection::vec(any::<u8>(), 0..40)
                    .prop_map(|b| Variant::ByteString(ByteString::from(b))),
                any::<i64>().prop_map(|t| Variant::DateTime(Box::new(DateTime::from(t)))),
                (any::<u16>(), any::<u32>()).prop_map(|(ns, i)| Variant::from(NodeId::new(ns, i))),
            ]
        }

        fn variant() -> impl Strategy<Value = Variant> {
            prop_oneof![
                4 => scalar(),
                1 => proptest::collection::vec(any::<i32>(), 0..5).prop_map(|v| {
                    let values: Vec<Variant> = v.into_iter().map(Variant::Int32).collect();
                    match Array::new(VariantScalarTypeId::Int32, values) {
                        Ok(a) => Variant::from(a),
                        Err(_) => Variant::Empty,
                    }
                }),
            ]
        }

        proptest! {
            #[test]
            fn every_variant_maps_or_is_reported(v in variant(), index in proptest::option::of(0u32..8)) {
                let index = index.map(|i| vec![i]);
                let picked = element(&v, index.as_deref());
                match value(picked) {
                    Ok(Value::Int(i)) => match picked {
                        Variant::SByte(n) => prop_assert_eq!(i, i64::from(*n)),
                        Variant::Int32(n) => prop_assert_eq!(i, i64::from(*n)),
                        Variant::UInt32(n) => prop_assert_eq!(i, i64::from(*n)),
                        Variant::Int64(n) => prop_assert_eq!(i, *n),
                        Variant::UInt64(n) => prop_assert_eq!(i as u64, *n),
                        _ => {}
                    },
                    Ok(Value::Text(_)) => prop_assert!(!matches!(picked, Variant::UInt64(_))),
                    Ok(Value::Float(f)) => match picked {
                        Variant::Double(d) => prop_assert!(f.to_bits() == d.to_bits()),
                        // The shortest decimal of the f32, which reads back as the same f32.
                        Variant::Float(x) => prop_assert!(
                            (f.is_nan() && x.is_nan()) || (f as f32).to_bits() == x.to_bits()
                        ),
                        Variant::UInt64(n) => prop_assert!(inexact(picked) && f == *n as f64),
                        _ => prop_assert!(false, "{picked:?} became a float"),
                    },
                    Ok(Value::Bool(_)) => prop_assert!(matches!(picked, Variant::Boolean(_))),
                    Err(Unsupported::Array(n)) => prop_assert!(n != 1),
                    Err(e) => prop_assert!(!e.to_string().is_empty() && !e.short().is_empty()),
                }
            }

            #[test]
            fn any_status_code_has_a_quality_and_name(code in any::<u32>()) {
                let s = StatusCode::from(code);
                let q = quality(Some(s));
                prop_assert_eq!(q == Quality::Ok, s.is_good());
                let _ = status_name(s);
            }

            #[test]
            fn any_timestamps_give_a_plausible_event_time(
                source in proptest::option::of(any::<i64>()),
                server in proptest::option::of(any::<i64>()),
                now in MIN_PLAUSIBLE_MS..4_102_444_800_000i64,
                skew in proptest::option::of(0i64..86_400_000),
            ) {
                let dv = DataValue {
                    value: Some(Variant::Double(1.0)),
                    status: None,
                    source_timestamp: source.map(DateTime::from),
                    source_picoseconds: None,
                    server_timestamp: server.map(DateTime::from),
                    server_picoseconds: None,
                };
                let (t, flags) = timestamp(&dv, now, skew);
                prop_assert!(t >= MIN_PLAUSIBLE_MS, "implausible event time {t}");
                if let Some(max) = skew {
                    prop_assert!(t - now <= max);
                }
                prop_assert!(flags.is_empty() || flags == Flags::ATS);
            }
        }
    }

    fn dv(source: Option<&str>, server: Option<&str>) -> DataValue {
        DataValue {
            value: Some(Variant::Double(1.0)),
            status: None,
            source_timestamp: source.map(|s| DateTime::parse_from_rfc3339(s).unwrap()),
            source_picoseconds: None,
            server_timestamp: server.map(|s| DateTime::parse_from_rfc3339(s).unwrap()),
            server_picoseconds: None,
        }
    }

    #[test]
    fn timestamp_choice_and_skew() {
        let now = 1_767_323_045_678; // 2026-01-02T03:04:05.678Z
        let skew = Some(60_000);
        // Source wins over server; an hour-old source time is kept (stale but right).
        let v = dv(
            Some("2026-01-02T02:04:05.678Z"),
            Some("2026-01-02T03:04:05.000Z"),
        );
        assert_eq!(timestamp(&v, now, skew), (now - 3_600_000, Flags::empty()));
        // No source timestamp: the server's.
        let v = dv(None, Some("2026-01-02T03:04:05.000Z"));
        assert_eq!(timestamp(&v, now, skew), (now - 678, Flags::empty()));
        // Neither: the gateway's, flagged.
        assert_eq!(timestamp(&dv(None, None), now, skew), (now, Flags::ATS));
        // Ahead of the gateway by more than the limit: replaced, flagged.
        let v = dv(Some("2026-01-02T03:06:05.678Z"), None);
        assert_eq!(timestamp(&v, now, skew), (now, Flags::ATS));
        // Ahead within the limit: kept.
        let v = dv(Some("2026-01-02T03:04:35.678Z"), None);
        assert_eq!(timestamp(&v, now, skew), (now + 30_000, Flags::empty()));
        // Check off: kept.
        let v = dv(Some("2026-01-02T03:06:05.678Z"), None);
        assert_eq!(timestamp(&v, now, None), (now + 120_000, Flags::empty()));
        // A clock never set (1970) is replaced.
        let v = dv(Some("1970-01-01T00:00:10Z"), None);
        assert_eq!(timestamp(&v, now, skew), (now, Flags::ATS));
    }
}
