//! The unified payload: one JSON object per sample, the same for every reader and exporter.
//!
//! ```json
//! {"version":1,"timestamp":1234,"equipmentId":"...","tag":"water_temperature","value":13.45,
//!  "quality":"Ok","meta":{"sequenceNumber":123,"flags":["Fst"],"createdAt":1240,"sourceId":"filler"}}
//! ```
//! Readers hand over [`Sample`]s; [`Payload::encode`] writes the bytes the queue stores.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

/// The payload format version written into every record.
pub const PAYLOAD_VERSION: u32 = 1;

/// A sample value: number, bool or string.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Value {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

#[cfg(test)]
mod value_tests {
    use super::Value;

    #[test]
    fn a_f32_keeps_its_own_shortest_decimal() {
        for (f, text) in [
            (11.4f32, "11.4"),
            (0.1, "0.1"),
            (-1234.5, "-1234.5"),
            (3.4028235e38, "3.4028235e+38"),
        ] {
            let Value::Float(x) = Value::from_f32(f) else {
                panic!()
            };
            assert_eq!(serde_json::to_string(&x).unwrap(), text, "{f}");
            assert_eq!(
                (x as f32).to_bits(),
                f.to_bits(),
                "reads back as the same f32"
            );
        }
        assert!(matches!(Value::from_f32(f32::NAN), Value::Float(x) if x.is_nan()));
    }

    #[test]
    fn a_u64_is_exact_up_to_i64_max_then_the_nearest_float() {
        assert_eq!(Value::from_u64(7), (Value::Int(7), true));
        assert_eq!(
            Value::from_u64(i64::MAX as u64),
            (Value::Int(i64::MAX), true)
        );
        assert_eq!(
            Value::from_u64(u64::MAX),
            (Value::Float(u64::MAX as f64), false)
        );
    }
}

impl Value {
    /// A 32-bit float as the device gave it: the f64 whose shortest decimal is the f32's own
    /// (`11.4`, not `11.40000057220459`, the exact value of the f32 widened). The one rule of
    /// every reader for REAL / Float / f32 values.
    pub fn from_f32(f: f32) -> Value {
        if !f.is_finite() {
            return Value::Float(f64::from(f));
        }
        Value::Float(f.to_string().parse::<f64>().unwrap_or(f64::from(f)))
    }

    /// An unsigned 64-bit integer as the payload carries it, the one rule of every reader: an
    /// integer (exact) up to `i64::MAX`; above, the nearest float, and `false` (not exact: the
    /// reader sends the sample with quality `Uncertain`, never a wrapped negative number).
    pub fn from_u64(n: u64) -> (Value, bool) {
        match i64::try_from(n) {
            Ok(i) => (Value::Int(i), true),
            Err(_) => (Value::Float(n as f64), false),
        }
    }

    /// The value as a float, when it is a number.
    pub fn as_f64(&self) -> Option<f64> {
        match self {
            Value::Int(i) => Some(*i as f64),
            Value::Float(f) => Some(*f),
            _ => None,
        }
    }
}

/// Quality of a sample, as OPC UA and most PLCs report it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Quality {
    Ok,
    Uncertain,
    Bad,
}

/// The flags of `meta.flags`, as a small bit set. Meanings are in FIELD.md and README.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Flags(u8);

impl Flags {
    /// First sample of a tag after the source (re)connected or the gateway started.
    pub const FST: Flags = Flags(1);
    /// Last sample of a tag before its source was lost or stopped.
    pub const LST: Flags = Flags(2);
    /// Watermark / heartbeat: the source's event time has reached `timestamp`.
    pub const WMK: Flags = Flags(4);
    /// Synthetic: not a fresh reading from the device.
    pub const SYN: Flags = Flags(8);
    /// The gateway replaced or corrected the device's timestamp.
    pub const ATS: Flags = Flags(16);

    const NAMES: [(Flags, &'static str); 5] = [
        (Flags::FST, "Fst"),
        (Flags::LST, "Lst"),
        (Flags::WMK, "Wmk"),
        (Flags::SYN, "Syn"),
        (Flags::ATS, "Ats"),
    ];

    pub const fn empty() -> Flags {
        Flags(0)
    }
    pub const fn union(self, other: Flags) -> Flags {
        Flags(self.0 | other.0)
    }
    pub const fn contains(self, other: Flags) -> bool {
        self.0 & other.0 == other.0
    }
    pub fn insert(&mut self, other: Flags) {
        self.0 |= other.0;
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for Flags {
    type Output = Flags;
    fn bitor(self, rhs: Flags) -> Flags {
        self.union(rhs)
    }
}

impl Serialize for Flags {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        let mut seq = serializer.serialize_seq(None)?;
        for (flag, name) in Flags::NAMES {
            if self.contains(flag) {
                seq.serialize_element(name)?;
            }
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for Flags {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let names: Vec<String> = Vec::deserialize(deserializer)?;
        let mut flags = Flags::empty();
        for name in names {
            match Flags::NAMES.iter().find(|(_, n)| *n == name) {
                Some((flag, _)) => flags.insert(*flag),
                None => return Err(serde::de::Error::custom(format!("unknown flag {name}"))),
            }
        }
        Ok(flags)
    }
}

/// `meta` of the payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Meta<S = String> {
    pub sequence_number: u64,
    pub flags: Flags,
    pub created_at: i64,
    pub source_id: S,
}

/// The unified payload. Borrowed strings when encoding, owned when decoding.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Payload<S = String> {
    pub version: u32,
    pub timestamp: i64,
    pub equipment_id: S,
    pub tag: S,
    pub value: Value,
    pub quality: Quality,
    pub meta: Meta<S>,
}

impl Payload<&str> {
    /// Appends the JSON of this payload to `out` (no trailing newline).
    pub fn encode(&self, out: &mut Vec<u8>) {
        // Serialising plain structs into a Vec cannot fail: no map keys that are not strings,
        // and non-finite floats are turned into text by the normaliser before they get here.
        if let Err(e) = serde_json::to_writer(&mut *out, self) {
            out.extend_from_slice(format!("{{\"encodeError\":\"{e}\"}}").as_bytes());
        }
    }
}

/// Decodes a stored payload (used by tests, `status` and exporters that route by field).
pub fn decode(bytes: &[u8]) -> Result<Payload, serde_json::Error> {
    serde_json::from_slice(bytes)
}

/// The payload fields a template (MQTT topic, Kinesis partition key) can name, borrowed from
/// an encoded payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fields<'a> {
    pub equipment_id: Cow<'a, str>,
    pub tag: Cow<'a, str>,
    pub quality: Cow<'a, str>,
    pub source_id: Cow<'a, str>,
}

/// The same fields, as serde sees them (the slow path: any JSON layout).
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct FieldsDe<'a> {
    #[serde(borrow)]
    equipment_id: Cow<'a, str>,
    #[serde(borrow)]
    tag: Cow<'a, str>,
    #[serde(borrow)]
    quality: Cow<'a, str>,
    meta: MetaFieldsDe<'a>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct MetaFieldsDe<'a> {
    #[serde(borrow)]
    source_id: Cow<'a, str>,
}

/// Reads the template fields of an encoded payload without decoding it: [`Payload::encode`]
/// writes compact JSON, so each field is found as `"key":"` and its string is borrowed as it
/// is (unescaped only when it holds a backslash). A `"` inside a JSON string is always escaped,
/// so the pattern cannot match inside a value. Any other layout (whitespace, a producer other
/// than ours) falls back to serde. `None`: the payload lacks a field or is not JSON.
pub fn fields(bytes: &[u8]) -> Option<Fields<'_>> {
    /// `pattern` is `"key":"` (no allocation per call: this runs for every record sent).
    fn string_at<'a>(bytes: &'a [u8], pattern: &[u8]) -> Option<Cow<'a, str>> {
        let start = find(bytes, pattern)? + pattern.len();
        let mut i = start;
        let mut escaped = false;
        while i < bytes.len() {
            match bytes[i] {
                b'\\' => {
                    escaped = true;
                    i += 2;
                    continue;
                }
                b'"' => break,
                _ => i += 1,
            }
        }
        let raw = bytes.get(start..i)?;
        if escaped {
            // Only this string, with its quotes.
            serde_json::from_slice::<String>(bytes.get(start - 1..=i)?)
                .ok()
                .map(Cow::Owned)
        } else {
            std::str::from_utf8(raw).ok().map(Cow::Borrowed)
        }
    }
    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }
    let fast = (|| {
        Some(Fields {
            equipment_id: string_at(bytes, br#""equipmentId":""#)?,
            tag: string_at(bytes, br#""tag":""#)?,
            quality: string_at(bytes, br#""quality":""#)?,
            source_id: string_at(bytes, br#""sourceId":""#)?,
        })
    })();
    fast.or_else(|| {
        let f: FieldsDe = serde_json::from_slice(bytes).ok()?;
        Some(Fields {
            equipment_id: f.equipment_id,
            tag: f.tag,
            quality: f.quality,
            source_id: f.meta.source_id,
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_read_without_decoding_and_agree_with_serde() {
        let texts = ["plain", "with \"quotes\" and \\", "ünï/\"tag\":\"x", ""];
        for t in texts {
            let mut out = Vec::new();
            Payload {
                version: PAYLOAD_VERSION,
                timestamp: 1,
                equipment_id: t,
                tag: "a\"tag\":\"b",
                value: Value::Text(format!("\"quality\":\"{t}")),
                quality: Quality::Bad,
                meta: Meta {
                    sequence_number: 1,
                    flags: Flags::empty(),
                    created_at: 2,
                    source_id: t,
                },
            }
            .encode(&mut out);
            let f = fields(&out).expect("fields");
            assert_eq!(f.equipment_id, t);
            assert_eq!(f.tag, "a\"tag\":\"b");
            assert_eq!(f.quality, "Bad");
            assert_eq!(f.source_id, t);
            if !t.contains(['"', '\\']) {
                assert!(
                    matches!(f.equipment_id, Cow::Borrowed(_)),
                    "no copy for plain text"
                );
            }
        }
        // Another layout (spaces) takes serde's path; a payload without the fields has none.
        let spaced =
            br#"{ "equipmentId": "e", "tag": "t", "quality": "Ok", "meta": { "sourceId": "s" } }"#;
        assert_eq!(fields(spaced).map(|f| f.tag.into_owned()), Some("t".into()));
        assert_eq!(fields(b"{}"), None);
        assert_eq!(fields(b"not json"), None);
    }

    #[test]
    fn encodes_the_field_md_shape() {
        let p = Payload {
            version: PAYLOAD_VERSION,
            timestamp: 1234,
            equipment_id: "84068f2f-3f39-4b9c-a995-d2a84d878689",
            tag: "water_temperature",
            value: Value::Float(13.45),
            quality: Quality::Ok,
            meta: Meta {
                sequence_number: 123,
                flags: Flags::FST | Flags::ATS,
                created_at: 12345690,
                source_id: "filling_machine",
            },
        };
        let mut out = Vec::new();
        p.encode(&mut out);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            r#"{"version":1,"timestamp":1234,"equipmentId":"84068f2f-3f39-4b9c-a995-d2a84d878689","tag":"water_temperature","value":13.45,"quality":"Ok","meta":{"sequenceNumber":123,"flags":["Fst","Ats"],"createdAt":12345690,"sourceId":"filling_machine"}}"#
        );
        let back = decode(&out).unwrap();
        assert_eq!(back.meta.flags, Flags::FST | Flags::ATS);
        assert_eq!(back.value, Value::Float(13.45));
        assert_eq!(back.tag, "water_temperature");
    }

    #[test]
    fn values_keep_their_json_type() {
        for (v, json) in [
            (Value::Int(7), "7"),
            (Value::Bool(true), "true"),
            (Value::Text("filling".into()), "\"filling\""),
        ] {
            assert_eq!(serde_json::to_string(&v).unwrap(), json);
            assert_eq!(serde_json::from_str::<Value>(json).unwrap(), v);
        }
    }
}
