//! The unified payload: whatever bytes come in, `payload::decode` never panics; a payload that
//! decodes encodes back to the same payload; and a payload built from arbitrary fields survives
//! encode -> decode unchanged (what the readers write is what the exporters read).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use streamgate::payload::{self, Flags, Meta, Payload, Quality, Value};

#[derive(Debug, Arbitrary)]
enum AnyValue {
    Bool(bool),
    Int(i64),
    Float(f64),
    Text(String),
}

#[derive(Debug, Arbitrary)]
struct Fields {
    timestamp: i64,
    equipment_id: String,
    tag: String,
    value: AnyValue,
    quality: u8,
    sequence_number: u64,
    flags: u8,
    created_at: i64,
    source_id: String,
}

#[derive(Debug, Arbitrary)]
enum Input<'a> {
    Bytes(&'a [u8]),
    Fields(Fields),
}

fn borrowed(p: &Payload) -> Payload<&str> {
    Payload {
        version: p.version,
        timestamp: p.timestamp,
        equipment_id: &p.equipment_id,
        tag: &p.tag,
        value: p.value.clone(),
        quality: p.quality,
        meta: Meta {
            sequence_number: p.meta.sequence_number,
            flags: p.meta.flags,
            created_at: p.meta.created_at,
            source_id: &p.meta.source_id,
        },
    }
}

fn flags(bits: u8) -> Flags {
    [Flags::FST, Flags::LST, Flags::WMK, Flags::SYN, Flags::ATS]
        .into_iter()
        .enumerate()
        .filter(|(i, _)| bits >> i & 1 == 1)
        .fold(Flags::empty(), |acc, (_, f)| acc | f)
}

fn round_trip(p: &Payload) {
    let mut out = Vec::new();
    borrowed(p).encode(&mut out);
    let back = payload::decode(&out)
        .unwrap_or_else(|e| panic!("{} does not decode: {e}", String::from_utf8_lossy(&out)));
    assert_eq!(&back, p, "{}", String::from_utf8_lossy(&out));
    assert!(
        !out.contains(&b'\n'),
        "a payload is one line (NDJSON packing needs it)"
    );
}

fuzz_target!(|input: Input| match input {
    Input::Bytes(bytes) => {
        if let Ok(p) = payload::decode(bytes) {
            round_trip(&p);
        }
    }
    Input::Fields(f) => {
        let value = match f.value {
            AnyValue::Bool(b) => Value::Bool(b),
            AnyValue::Int(i) => Value::Int(i),
            // The normaliser turns non-finite floats into text before encoding.
            AnyValue::Float(x) if x.is_finite() => Value::Float(x),
            AnyValue::Float(x) => Value::Text(x.to_string()),
            AnyValue::Text(t) => Value::Text(t),
        };
        let quality = match f.quality % 3 {
            0 => Quality::Ok,
            1 => Quality::Uncertain,
            _ => Quality::Bad,
        };
        let p = Payload {
            version: payload::PAYLOAD_VERSION,
            timestamp: f.timestamp,
            equipment_id: f.equipment_id,
            tag: f.tag,
            value,
            quality,
            meta: Meta {
                sequence_number: f.sequence_number,
                flags: flags(f.flags),
                created_at: f.created_at,
                source_id: f.source_id,
            },
        };
        round_trip(&p);
    }
});
