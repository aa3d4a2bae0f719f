//! Register contents -> values: every data type in every byte/word order. Pure, no I/O.
//!
//! Orders name where the bytes of a big-endian value `A B C D` (A most significant) sit in
//! the registers as they arrive (each register is read high byte first):
//! - `ABCD`: big-endian, high word first (the Modbus default).
//! - `CDAB`: words swapped (low word first), bytes big-endian: the common "word swap".
//! - `BADC`: bytes swapped within each word, high word first.
//! - `DCBA`: fully little-endian.
//!
//! For 64-bit values the same rule applies over four words (`CDAB` = word order reversed).
//! For 16-bit values only the byte swap matters (`BADC`/`DCBA` swap the two bytes).

use crate::payload::{Quality, Value};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// A coil or discrete input.
    Bool,
    /// One bit of a register, 0 = least significant.
    Bit(u8),
    U16,
    I16,
    U32,
    I32,
    U64,
    I64,
    F32,
    F64,
    /// Text in this many registers, two bytes per register, trailing NULs trimmed.
    Str(u16),
}

impl DataType {
    /// Registers (or bits, for `Bool`) the type occupies.
    pub fn width(self) -> u16 {
        match self {
            DataType::Bool | DataType::Bit(_) | DataType::U16 | DataType::I16 => 1,
            DataType::U32 | DataType::I32 | DataType::F32 => 2,
            DataType::U64 | DataType::I64 | DataType::F64 => 4,
            DataType::Str(n) => n,
        }
    }

    pub fn is_numeric(self) -> bool {
        !matches!(self, DataType::Bool | DataType::Bit(_) | DataType::Str(_))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ByteOrder {
    Abcd,
    Cdab,
    Badc,
    Dcba,
}

impl ByteOrder {
    fn swaps_words(self) -> bool {
        matches!(self, ByteOrder::Cdab | ByteOrder::Dcba)
    }
    fn swaps_bytes(self) -> bool {
        matches!(self, ByteOrder::Badc | ByteOrder::Dcba)
    }
}

/// Big-endian bytes of the value held by `regs` in `order`. The transform is its own inverse,
/// so [`encode`] uses it too.
fn reorder(regs: &[u16], order: ByteOrder) -> Vec<u8> {
    let mut words: Vec<u16> = regs.to_vec();
    if order.swaps_words() {
        words.reverse();
    }
    let mut out = Vec::with_capacity(words.len() * 2);
    for w in words {
        let w = if order.swaps_bytes() {
            w.swap_bytes()
        } else {
            w
        };
        out.extend_from_slice(&w.to_be_bytes());
    }
    out
}

fn array<const N: usize>(bytes: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&bytes[..N]);
    a
}

/// A decoded reading: the value and whether it is exact.
#[derive(Debug, Clone, PartialEq)]
pub struct Decoded {
    pub value: Value,
    pub quality: Quality,
}

/// Decodes a register-typed value. `regs` must hold at least `ty.width()` registers (the
/// planner guarantees it); fewer gives `None`. `Bool` is not register-typed: use [`bit`].
///
/// A `u64` above `i64::MAX` does not fit `Value::Int`: it is sent as the nearest `f64` with
/// quality `Uncertain` (never wrapped to a negative number).
pub fn decode(ty: DataType, order: ByteOrder, regs: &[u16]) -> Option<Decoded> {
    let width = ty.width() as usize;
    if regs.len() < width {
        return None;
    }
    let regs = &regs[..width];
    let ok = |value| {
        Some(Decoded {
            value,
            quality: Quality::Ok,
        })
    };
    let b = reorder(regs, order);
    match ty {
        DataType::Bool => None,
        DataType::Bit(n) => ok(Value::Bool(regs[0] >> n & 1 == 1)),
        DataType::U16 => ok(Value::Int(u16::from_be_bytes(array(&b)) as i64)),
        DataType::I16 => ok(Value::Int(i16::from_be_bytes(array(&b)) as i64)),
        DataType::U32 => ok(Value::Int(u32::from_be_bytes(array(&b)) as i64)),
        DataType::I32 => ok(Value::Int(i32::from_be_bytes(array(&b)) as i64)),
        DataType::U64 => match Value::from_u64(u64::from_be_bytes(array(&b))) {
            (value, true) => ok(value),
            (value, false) => Some(Decoded {
                value,
                quality: Quality::Uncertain,
            }),
        },
        DataType::I64 => ok(Value::Int(i64::from_be_bytes(array(&b)))),
        DataType::F32 => ok(Value::from_f32(f32::from_be_bytes(array(&b)))),
        DataType::F64 => ok(Value::Float(f64::from_be_bytes(array(&b)))),
        DataType::Str(_) => {
            // Strings are byte sequences: only the byte swap within a register applies.
            let order = if order.swaps_bytes() {
                ByteOrder::Badc
            } else {
                ByteOrder::Abcd
            };
            let mut bytes = reorder(regs, order);
            while bytes.last() == Some(&0) {
                bytes.pop();
            }
            ok(Value::Text(String::from_utf8_lossy(&bytes).into_owned()))
        }
    }
}

/// Registers holding `value` as `ty` in `order`: the inverse of [`decode`] (tests, the
/// in-process test server and the benchmark use it). Values that do not fit are truncated.
pub fn encode(ty: DataType, order: ByteOrder, value: &Value) -> Vec<u16> {
    let int = |v: &Value| match v {
        Value::Int(i) => *i as i128,
        Value::Float(f) => *f as i128,
        Value::Bool(b) => *b as i128,
        Value::Text(_) => 0,
    };
    let float = |v: &Value| v.as_f64().unwrap_or(0.0);
    let be: Vec<u8> = match ty {
        DataType::Bool | DataType::Bit(_) => {
            let on = matches!(value, Value::Bool(true));
            let bit = if let DataType::Bit(n) = ty { n } else { 0 };
            return vec![(on as u16) << bit];
        }
        DataType::U16 => (int(value) as u16).to_be_bytes().to_vec(),
        DataType::I16 => (int(value) as i16).to_be_bytes().to_vec(),
        DataType::U32 => (int(value) as u32).to_be_bytes().to_vec(),
        DataType::I32 => (int(value) as i32).to_be_bytes().to_vec(),
        DataType::U64 => match value {
            Value::Float(f) => (*f as u64).to_be_bytes().to_vec(),
            v => (int(v) as u64).to_be_bytes().to_vec(),
        },
        DataType::I64 => (int(value) as i64).to_be_bytes().to_vec(),
        DataType::F32 => (float(value) as f32).to_be_bytes().to_vec(),
        DataType::F64 => float(value).to_be_bytes().to_vec(),
        DataType::Str(n) => {
            let mut bytes = match value {
                Value::Text(s) => s.as_bytes().to_vec(),
                _ => Vec::new(),
            };
            bytes.resize(n as usize * 2, 0);
            let regs: Vec<u16> = bytes
                .chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect();
            return if order.swaps_bytes() {
                regs.iter().map(|r| r.swap_bytes()).collect()
            } else {
                regs
            };
        }
    };
    let regs: Vec<u16> = be
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect();
    let bytes = reorder(&regs, order);
    bytes
        .chunks(2)
        .map(|c| u16::from_be_bytes([c[0], c[1]]))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const ORDERS: [ByteOrder; 4] = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ];

    fn value(ty: DataType, order: ByteOrder, regs: &[u16]) -> Value {
        decode(ty, order, regs).unwrap().value
    }

    #[test]
    fn f32_in_every_order() {
        // 1.5f32 = 0x3FC00000: A=3F B=C0 C=00 D=00.
        let cases = [
            (ByteOrder::Abcd, [0x3FC0, 0x0000]),
            (ByteOrder::Cdab, [0x0000, 0x3FC0]),
            (ByteOrder::Badc, [0xC03F, 0x0000]),
            (ByteOrder::Dcba, [0x0000, 0xC03F]),
        ];
        for (order, regs) in cases {
            assert_eq!(
                value(DataType::F32, order, &regs),
                Value::Float(1.5),
                "{order:?}"
            );
        }
    }

    #[test]
    fn integers_in_every_order() {
        // 0x01020304
        let cases = [
            (ByteOrder::Abcd, [0x0102, 0x0304]),
            (ByteOrder::Cdab, [0x0304, 0x0102]),
            (ByteOrder::Badc, [0x0201, 0x0403]),
            (ByteOrder::Dcba, [0x0403, 0x0201]),
        ];
        for (order, regs) in cases {
            assert_eq!(value(DataType::U32, order, &regs), Value::Int(0x01020304));
        }
        assert_eq!(
            value(DataType::I16, ByteOrder::Abcd, &[0xFFFE]),
            Value::Int(-2)
        );
        assert_eq!(
            value(DataType::I16, ByteOrder::Badc, &[0xFEFF]),
            Value::Int(-2)
        );
        assert_eq!(
            value(DataType::U16, ByteOrder::Cdab, &[0xFFFE]),
            Value::Int(65534)
        );
        // CDAB over four words: [w0 w1 w2 w3] on the wire hold w3 w2 w1 w0 big-endian.
        assert_eq!(
            value(
                DataType::I64,
                ByteOrder::Cdab,
                &[0xFFFF, 0xFFFF, 0xFFFF, 0xFFFE]
            ),
            Value::Int(0xFFFE_FFFF_FFFF_FFFFu64 as i64)
        );
    }

    #[test]
    fn u64_above_i64_max_is_an_uncertain_float_not_a_wrap() {
        let d = decode(DataType::U64, ByteOrder::Abcd, &[0xFFFF; 4]).unwrap();
        assert_eq!(d.value, Value::Float(u64::MAX as f64));
        assert_eq!(d.quality, Quality::Uncertain);
        let d = decode(
            DataType::U64,
            ByteOrder::Abcd,
            &[0x7FFF, 0xFFFF, 0xFFFF, 0xFFFF],
        )
        .unwrap();
        assert_eq!(d.value, Value::Int(i64::MAX));
        assert_eq!(d.quality, Quality::Ok);
    }

    #[test]
    fn strings_bits_and_short_input() {
        assert_eq!(
            value(DataType::Str(3), ByteOrder::Abcd, &[0x4142, 0x4300, 0x0000]),
            Value::Text("ABC".into())
        );
        assert_eq!(
            value(DataType::Str(2), ByteOrder::Badc, &[0x4241, 0x0043]),
            Value::Text("ABC".into())
        );
        assert_eq!(
            value(DataType::Bit(15), ByteOrder::Abcd, &[0x8000]),
            Value::Bool(true)
        );
        assert_eq!(
            value(DataType::Bit(0), ByteOrder::Abcd, &[0x8000]),
            Value::Bool(false)
        );
        assert_eq!(decode(DataType::F64, ByteOrder::Abcd, &[1, 2, 3]), None);
    }

    fn types() -> impl Strategy<Value = DataType> {
        prop_oneof![
            Just(DataType::U16),
            Just(DataType::I16),
            Just(DataType::U32),
            Just(DataType::I32),
            Just(DataType::U64),
            Just(DataType::I64),
            Just(DataType::F32),
            Just(DataType::F64),
            (0u8..16).prop_map(DataType::Bit),
        ]
    }

    proptest! {
        /// decode(encode(regs)) is the identity on raw registers for every type and order:
        /// decoding then re-encoding gives back the registers the device held.
        #[test]
        fn registers_round_trip(ty in types(), o in 0usize..4, regs in prop::collection::vec(any::<u16>(), 4)) {
            let order = ORDERS[o];
            let regs = &regs[..ty.width() as usize];
            let d = decode(ty, order, regs).unwrap();
            prop_assume!(d.quality == Quality::Ok);
            if let Value::Float(f) = d.value { prop_assume!(f.is_finite()); }
            let back = encode(ty, order, &d.value);
            match ty {
                DataType::Bit(n) => prop_assert_eq!(back[0], regs[0] & (1 << n)),
                _ => prop_assert_eq!(back, regs.to_vec()),
            }
        }

        #[test]
        fn strings_round_trip(s in "[ -~]{0,12}", badc in any::<bool>()) {
            let order = if badc { ByteOrder::Badc } else { ByteOrder::Abcd };
            let regs = encode(DataType::Str(6), order, &Value::Text(s.clone()));
            prop_assert_eq!(value(DataType::Str(6), order, &regs), Value::Text(s));
        }
    }
}
