//! S7 value decoding: every data type over arbitrary bytes. Never a panic; enough bytes always
//! give a value (only DATE_AND_TIME may refuse bytes that are not BCD); too few bytes give
//! `Short`; numbers come out as the big-endian integers they are.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate::payload::Value;
use streamgate::readers::s7::address::DataType;
use streamgate::readers::s7::value::{DecodeError, decode};

/// Input layout: type selector, type argument (bit or string length), the bytes read.
struct Input<'a> {
    ty: u8,
    arg: u8,
    bytes: &'a [u8],
}

fn data_type(ty: u8, arg: u8) -> DataType {
    match ty % 14 {
        0 => DataType::Bool(arg % 8),
        1 => DataType::Byte,
        2 => DataType::Word,
        3 => DataType::DWord,
        4 => DataType::Int,
        5 => DataType::DInt,
        6 => DataType::Real,
        7 => DataType::LReal,
        8 => DataType::Char,
        9 => DataType::String(arg.clamp(1, 254)),
        10 => DataType::Date,
        11 => DataType::Time,
        12 => DataType::TimeOfDay,
        _ => DataType::DateAndTime,
    }
}

fuzz_target!(|data: &[u8]| {
    let [ty, arg, bytes @ ..] = data else { return };
    let input = Input {
        ty: *ty,
        arg: *arg,
        bytes,
    };
    let ty = data_type(input.ty, input.arg);
    let b = input.bytes;
    let need = ty.size() as usize;
    let result = decode(ty, b);
    let enough = match ty {
        DataType::String(_) => b.len() >= 2,
        _ => b.len() >= need,
    };
    match &result {
        Err(DecodeError::Short { .. }) => assert!(!enough, "{ty:?} refused {b:?}"),
        Err(DecodeError::Bcd(i)) => {
            assert_eq!(ty, DataType::DateAndTime);
            assert!(*i < 8);
        }
        Ok(_) => assert!(enough),
    }
    let Ok(value) = result else { return };
    match (ty, value) {
        (DataType::Word, Value::Int(v)) => {
            assert_eq!(v, i64::from(u16::from_be_bytes([b[0], b[1]])))
        }
        (DataType::Int, Value::Int(v)) => {
            assert_eq!(v, i64::from(i16::from_be_bytes([b[0], b[1]])))
        }
        (DataType::DInt, Value::Int(v)) => {
            assert_eq!(v, i64::from(i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
        }
        (DataType::Real, Value::Float(f)) => {
            let raw = f32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            if raw.is_nan() {
                assert!(f.is_nan());
            } else {
                assert_eq!(f as f32, raw, "REAL widened to another value");
            }
        }
        (DataType::String(max), Value::Text(t)) => {
            assert!(t.chars().count() <= usize::from(max));
        }
        (DataType::Word | DataType::Int | DataType::DInt | DataType::Real, v) => {
            panic!("{ty:?} decoded as {v:?}")
        }
        _ => {}
    }
});
