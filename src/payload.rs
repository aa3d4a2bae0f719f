//! The unified payload: one JSON object per sample, the same for every reader and exporter.
//!
//! ```json
//! {"version":1,"timestamp":1234,"equipmentId":"...","tag":"water_temperature","value":13.45,
//!  "quality":"Ok","meta":{"sequenceNumber":123,"flags":["Fst"],"createdAt":1240,"sourceId":"filler"}}
//! ```
//! Readers hand over [`Sample`]s; [`Payload::encode`] writes the bytes the queue stores.

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

impl Value {
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

#[cfg(test)]
mod tests {
    use super::*;

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
