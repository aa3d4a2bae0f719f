//! Bytes read from the PLC -> payload values (big-endian, as S7 stores them).
//!
//! BOOL -> Bool; BYTE, WORD, DWORD, INT, DINT -> Int; REAL, LREAL -> Float (a REAL is widened
//! through its shortest decimal form, so 12.34 arrives as 12.34, not 12.34000015258789);
//! CHAR, STRING -> Text (Latin-1, as S7 stores them); TIME, TIME_OF_DAY -> Int milliseconds;
//! DATE -> Text `YYYY-MM-DD`; DATE_AND_TIME -> Text ISO-8601 `YYYY-MM-DDTHH:MM:SS.mmm` without
//! zone (the PLC clock's local time: S7 does not store a zone).

use thiserror::Error;

use super::address::DataType;
use crate::payload::Value;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("{want} bytes expected, {got} read")]
    Short { want: usize, got: usize },
    #[error("DATE_AND_TIME byte {0} is not valid BCD")]
    Bcd(usize),
}

/// Decodes the value of `data_type` from `bytes` (starting at its first byte).
pub fn decode(data_type: DataType, bytes: &[u8]) -> Result<Value, DecodeError> {
    let need = data_type.size() as usize;
    // A STRING only needs its two header bytes plus the characters it holds.
    let min = if let DataType::String(_) = data_type {
        2
    } else {
        need
    };
    if bytes.len() < min {
        return Err(DecodeError::Short {
            want: need,
            got: bytes.len(),
        });
    }
    let be2 = || u16::from_be_bytes([bytes[0], bytes[1]]);
    let be4 = || [bytes[0], bytes[1], bytes[2], bytes[3]];
    Ok(match data_type {
        DataType::Bool(bit) => Value::Bool(bytes[0] >> bit & 1 == 1),
        DataType::Byte => Value::Int(i64::from(bytes[0])),
        DataType::Word => Value::Int(i64::from(be2())),
        DataType::Int => Value::Int(i64::from(be2() as i16)),
        DataType::DWord => Value::Int(i64::from(u32::from_be_bytes(be4()))),
        DataType::DInt | DataType::Time => Value::Int(i64::from(i32::from_be_bytes(be4()))),
        DataType::TimeOfDay => Value::Int(i64::from(u32::from_be_bytes(be4()))),
        DataType::Real => Value::from_f32(f32::from_be_bytes(be4())),
        DataType::LReal => {
            let mut b = [0u8; 8];
            b.copy_from_slice(&bytes[..8]);
            Value::Float(f64::from_be_bytes(b))
        }
        DataType::Char => Value::Text(latin1(&bytes[..1])),
        DataType::String(max) => {
            let declared = usize::from(bytes[0]).min(usize::from(max));
            let actual = usize::from(bytes[1]).min(declared);
            let end = (2 + actual).min(bytes.len());
            Value::Text(latin1(&bytes[2..end]))
        }
        DataType::Date => Value::Text(date_text(be2())),
        DataType::DateAndTime => Value::Text(date_and_time(&bytes[..8])?),
    })
}

fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

/// Days since 1990-01-01 -> `YYYY-MM-DD`.
fn date_text(days: u16) -> String {
    // 1990-01-01 is day 7305 after 1970-01-01.
    let (y, m, d) = civil_from_days(7305 + i64::from(days));
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil algorithm (proleptic Gregorian).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn bcd(b: u8, index: usize) -> Result<u32, DecodeError> {
    let (hi, lo) = (b >> 4, b & 0x0F);
    if hi > 9 || lo > 9 {
        return Err(DecodeError::Bcd(index));
    }
    Ok(u32::from(hi) * 10 + u32::from(lo))
}

fn date_and_time(b: &[u8]) -> Result<String, DecodeError> {
    let yy = bcd(b[0], 0)?;
    let year = if yy >= 90 { 1900 + yy } else { 2000 + yy };
    let month = bcd(b[1], 1)?;
    let day = bcd(b[2], 2)?;
    let hour = bcd(b[3], 3)?;
    let minute = bcd(b[4], 4)?;
    let second = bcd(b[5], 5)?;
    // Byte 6 and the high nibble of byte 7 hold milliseconds; the low nibble is the weekday.
    let ms = bcd(b[6], 6)? * 10 + bcd(b[7] & 0xF0, 7)? / 10;
    Ok(format!(
        "{year:04}-{month:02}-{day:02}T{hour:02}:{minute:02}:{second:02}.{ms:03}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers() {
        use DataType::*;
        assert_eq!(decode(Bool(0), &[0x01]), Ok(Value::Bool(true)));
        assert_eq!(decode(Bool(7), &[0x7F]), Ok(Value::Bool(false)));
        assert_eq!(decode(Byte, &[0xFE]), Ok(Value::Int(254)));
        assert_eq!(decode(Word, &[0xFF, 0xFE]), Ok(Value::Int(65534)));
        assert_eq!(decode(Int, &[0xFF, 0xFE]), Ok(Value::Int(-2)));
        assert_eq!(
            decode(DWord, &[0xFF, 0xFF, 0xFF, 0xFF]),
            Ok(Value::Int(4_294_967_295))
        );
        assert_eq!(
            decode(DInt, &[0x80, 0, 0, 0]),
            Ok(Value::Int(-2_147_483_648))
        );
        assert_eq!(
            decode(Real, &12.34f32.to_be_bytes()),
            Ok(Value::Float(12.34))
        );
        assert_eq!(
            decode(LReal, &(-1.0e300f64).to_be_bytes()),
            Ok(Value::Float(-1.0e300))
        );
        assert_eq!(
            decode(Time, &(-86_400_000i32).to_be_bytes()),
            Ok(Value::Int(-86_400_000))
        );
        assert_eq!(
            decode(Word, &[1]),
            Err(DecodeError::Short { want: 2, got: 1 })
        );
    }

    #[test]
    fn texts() {
        use DataType::*;
        assert_eq!(decode(Char, b"A"), Ok(Value::Text("A".into())));
        assert_eq!(decode(Char, &[0xE4]), Ok(Value::Text("ä".into())));
        // max 10, actual 5
        let s = [10, 5, b'h', b'e', b'l', b'l', b'o', 0, 0, 0, 0, 0];
        assert_eq!(decode(String(10), &s), Ok(Value::Text("hello".into())));
        // The configured length caps a header that claims more.
        assert_eq!(decode(String(3), &s), Ok(Value::Text("hel".into())));
        assert_eq!(
            decode(String(10), &[10, 0]),
            Ok(Value::Text(std::string::String::new()))
        );
    }

    #[test]
    fn dates() {
        use DataType::*;
        assert_eq!(decode(Date, &[0, 0]), Ok(Value::Text("1990-01-01".into())));
        // 2024-02-29 is day 12477 after 1990-01-01.
        assert_eq!(
            decode(Date, &12477u16.to_be_bytes()),
            Ok(Value::Text("2024-02-29".into()))
        );
        assert_eq!(
            decode(Date, &[0xFF, 0xFF]),
            Ok(Value::Text("2169-06-06".into()))
        );
        // 2026-11-26 13:45:07.123, Thursday (5)
        let dt = [0x26, 0x11, 0x26, 0x13, 0x45, 0x07, 0x12, 0x35];
        assert_eq!(
            decode(DateAndTime, &dt),
            Ok(Value::Text("2026-11-26T13:45:07.123".into()))
        );
        let dt = [0x95, 0x01, 0x02, 0x00, 0x00, 0x00, 0x00, 0x01];
        assert_eq!(
            decode(DateAndTime, &dt),
            Ok(Value::Text("1995-01-02T00:00:00.000".into()))
        );
        let bad = [0x2A, 0x11, 0x26, 0x13, 0x45, 0x07, 0x12, 0x35];
        assert_eq!(decode(DateAndTime, &bad), Err(DecodeError::Bcd(0)));
        assert_eq!(
            decode(TimeOfDay, &86_399_999u32.to_be_bytes()),
            Ok(Value::Int(86_399_999))
        );
    }
}
