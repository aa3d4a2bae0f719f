//! Modbus register decoding, every data type x byte order over arbitrary registers. Never a
//! panic; too few registers give `None`; numbers re-encode to the same registers (decode and
//! encode are inverses), so no byte order loses or mixes up bytes. Also the Modicon address
//! notation on arbitrary text.
#![no_main]

use libfuzzer_sys::fuzz_target;
use streamgate::payload::{Quality, Value};
use streamgate::readers::modbus::address::parse_modicon;
use streamgate::readers::modbus::decode::{ByteOrder, DataType, decode, encode};

/// Input layout: type selector, type argument (bit or string registers), byte order, then the
/// registers as they arrive (big-endian pairs). The register bytes are also parsed as a
/// Modicon address (text).
struct Input {
    ty: u8,
    arg: u8,
    order: u8,
    regs: Vec<u16>,
    address: String,
}

fn data_type(ty: u8, arg: u8) -> DataType {
    match ty % 11 {
        0 => DataType::Bool,
        1 => DataType::Bit(arg % 16), // validation allows 0..=15
        2 => DataType::U16,
        3 => DataType::I16,
        4 => DataType::U32,
        5 => DataType::I32,
        6 => DataType::U64,
        7 => DataType::I64,
        8 => DataType::F32,
        9 => DataType::F64,
        _ => DataType::Str(u16::from(arg).max(1)),
    }
}

fuzz_target!(|data: &[u8]| {
    let [ty, arg, order, rest @ ..] = data else {
        return;
    };
    let input = Input {
        ty: *ty,
        arg: *arg,
        order: *order,
        regs: rest
            .chunks_exact(2)
            .map(|c| u16::from_be_bytes([c[0], c[1]]))
            .collect(),
        address: String::from_utf8_lossy(rest).into_owned(),
    };
    let _ = parse_modicon(&input.address);
    let ty = data_type(input.ty, input.arg);
    let order = [
        ByteOrder::Abcd,
        ByteOrder::Cdab,
        ByteOrder::Badc,
        ByteOrder::Dcba,
    ][usize::from(input.order % 4)];
    let regs = &input.regs;
    let width = usize::from(ty.width());
    let Some(d) = decode(ty, order, regs) else {
        assert!(ty == DataType::Bool || regs.len() < width);
        return;
    };
    assert!(regs.len() >= width);
    let regs = &regs[..width];
    let exact = match (&d.value, d.quality) {
        (Value::Int(_), Quality::Ok) => true,
        (Value::Float(f), Quality::Ok) => !f.is_nan(),
        // u64 above i64::MAX: the nearest float, flagged Uncertain.
        (Value::Float(f), Quality::Uncertain) => {
            assert_eq!(ty, DataType::U64);
            assert!(*f >= 9.223372036854775807e18);
            false
        }
        (Value::Bool(b), Quality::Ok) => {
            let DataType::Bit(n) = ty else {
                panic!("{ty:?} decoded as a bool")
            };
            assert_eq!(*b, regs[0] >> n & 1 == 1);
            false
        }
        (Value::Text(t), Quality::Ok) => {
            assert!(matches!(ty, DataType::Str(_)));
            assert!(t.len() <= width * 2 * 3, "lossy UTF-8 at most triples");
            false
        }
        (v, q) => panic!("{ty:?} decoded as {v:?} {q:?}"),
    };
    if exact {
        assert_eq!(
            encode(ty, order, &d.value),
            regs,
            "{ty:?} {order:?}: {:?} does not encode back",
            d.value
        );
    }
});
