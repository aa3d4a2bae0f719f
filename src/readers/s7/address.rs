//! S7 addresses in the notation S7 users know, parsed without I/O, and the decoding of the
//! bytes read at an address into a payload value.
//!
//! Forms (case-insensitive):
//! - absolute DB access: `DB1.DBX0.0` (bool), `DB1.DBB2` (byte), `DB1.DBW4` (word), `DB1.DBD6` (dword)
//! - typed: `DB1,REAL8`, `DB1,INT12`, `DB1,STRING20.10` (string at byte 20, up to 10 characters),
//!   and the same on merkers, inputs and outputs: `M,REAL20`, `I,INT64`, `Q,DINT4`
//! - merker / input / output areas: `M10.1`, `MB10`, `MW20`, `MD24`, `I0.0`, `IB0`, `IW64`,
//!   `ID0`, `Q1.0`, `QB1`, `QW2`, `QD4` (German `E`/`A` are accepted for `I`/`Q`)

use thiserror::Error;

/// The memory area of an address, with its S7 area code on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Area {
    /// Process inputs (I / E), area code 0x81.
    Inputs,
    /// Process outputs (Q / A), area code 0x82.
    Outputs,
    /// Merkers / flags (M), area code 0x83.
    Merker,
    /// A data block, area code 0x84.
    Db(u16),
}

impl Area {
    pub fn code(self) -> u8 {
        match self {
            Area::Inputs => 0x81,
            Area::Outputs => 0x82,
            Area::Merker => 0x83,
            Area::Db(_) => 0x84,
        }
    }

    pub fn db_number(self) -> u16 {
        match self {
            Area::Db(n) => n,
            _ => 0,
        }
    }
}

/// The S7 data type at an address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// One bit (0..=7) of the byte.
    Bool(u8),
    Byte,
    Word,
    DWord,
    Int,
    DInt,
    Real,
    LReal,
    Char,
    /// An S7 STRING of up to this many characters (2 header bytes: max and actual length).
    String(u8),
    /// Days since 1990-01-01 (2 bytes).
    Date,
    /// Signed milliseconds (4 bytes).
    Time,
    /// Milliseconds since midnight (4 bytes).
    TimeOfDay,
    /// 8 BCD bytes: year, month, day, hour, minute, second, ms and weekday.
    DateAndTime,
}

impl DataType {
    /// Bytes this type occupies in the PLC.
    pub fn size(self) -> u32 {
        match self {
            DataType::Bool(_) | DataType::Byte | DataType::Char => 1,
            DataType::Word | DataType::Int | DataType::Date => 2,
            DataType::DWord
            | DataType::DInt
            | DataType::Real
            | DataType::Time
            | DataType::TimeOfDay => 4,
            DataType::LReal | DataType::DateAndTime => 8,
            DataType::String(n) => u32::from(n) + 2,
        }
    }

    /// Whether scale, offset and deadband apply.
    pub fn is_numeric(self) -> bool {
        !matches!(
            self,
            DataType::Bool(_)
                | DataType::Char
                | DataType::String(_)
                | DataType::Date
                | DataType::DateAndTime
        )
    }
}

/// A parsed address: area, first byte, type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Address {
    pub area: Area,
    pub byte: u32,
    pub data_type: DataType,
}

/// The highest byte offset the 3-byte bit address of the S7 ANY pointer can carry.
pub const MAX_BYTE_OFFSET: u32 = (1 << 21) - 1;
/// The longest S7 STRING.
pub const MAX_STRING_LEN: u32 = 254;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum AddressError {
    #[error("empty address")]
    Empty,
    #[error(
        "unknown area \"{0}\": use DB<n>.DBX/DBB/DBW/DBD, DB<n>,<TYPE><byte>, M, I, Q (or E, A)"
    )]
    UnknownArea(String),
    #[error("DB number {0} is out of range 1..=65535")]
    DbNumber(String),
    #[error("unknown DB access \"{0}\": use DBX, DBB, DBW or DBD")]
    DbAccess(String),
    #[error(
        "unknown type \"{0}\": use X, BYTE, WORD, DWORD, INT, DINT, REAL, LREAL, CHAR, STRING, DATE, TIME, TOD, DT"
    )]
    UnknownType(String),
    #[error("byte offset \"{0}\" is not a number in 0..=2097151")]
    Offset(String),
    #[error("a bool needs a bit: <byte>.<bit> with bit 0..=7")]
    MissingBit,
    #[error("bit \"{0}\" is out of range 0..=7")]
    Bit(String),
    #[error("only a bool takes a bit number (\"{0}\")")]
    UnexpectedBit(String),
    #[error("STRING needs a length: STRING<byte>.<length>")]
    MissingLength,
    #[error("string length \"{0}\" is out of range 1..=254")]
    StringLength(String),
    #[error("the value ends at byte {0}, beyond the addressable 2097151")]
    TooFar(u32),
}

/// Parses an address; see the module documentation for the forms.
pub fn parse(text: &str) -> Result<Address, AddressError> {
    let s = text.trim().to_ascii_uppercase();
    if s.is_empty() {
        return Err(AddressError::Empty);
    }
    let address = if let Some(rest) = s.strip_prefix("DB") {
        let (db, tail) = split_digits(rest);
        let db_number = match db.parse::<u32>() {
            Ok(n) if (1..=65535).contains(&n) => n as u16,
            _ => return Err(AddressError::DbNumber(db.to_string())),
        };
        let area = Area::Db(db_number);
        if let Some(typed) = tail.strip_prefix(',') {
            typed_address(area, typed)?
        } else if let Some(access) = tail.strip_prefix('.') {
            let Some(access) = access.strip_prefix("DB") else {
                return Err(AddressError::DbAccess(access.to_string()));
            };
            let (letter, offset) = split_letters(access);
            let sized = match letter {
                "X" => 'X',
                "B" => 'B',
                "W" => 'W',
                "D" => 'D',
                _ => return Err(AddressError::DbAccess(format!("DB{letter}"))),
            };
            sized_address(area, sized, offset)?
        } else {
            return Err(AddressError::DbAccess(tail.to_string()));
        }
    } else {
        let mut chars = s.chars();
        let area = match chars.next() {
            Some('M') => Area::Merker,
            Some('I' | 'E') => Area::Inputs,
            Some('Q' | 'A') => Area::Outputs,
            _ => {
                let (letters, _) = split_letters(&s);
                return Err(AddressError::UnknownArea(letters.to_string()));
            }
        };
        let rest = chars.as_str();
        if let Some(typed) = rest.strip_prefix(',') {
            typed_address(area, typed)?
        } else {
            let (letter, offset) = split_letters(rest);
            let sized = match letter {
                "" => 'X',
                "B" => 'B',
                "W" => 'W',
                "D" => 'D',
                _ => {
                    let (letters, _) = split_letters(&s);
                    return Err(AddressError::UnknownArea(letters.to_string()));
                }
            };
            sized_address(area, sized, offset)?
        }
    };
    let end = address.byte + address.data_type.size() - 1;
    if end > MAX_BYTE_OFFSET {
        return Err(AddressError::TooFar(end));
    }
    Ok(address)
}

fn split_digits(s: &str) -> (&str, &str) {
    let n = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    s.split_at(n)
}

fn split_letters(s: &str) -> (&str, &str) {
    let n = s
        .find(|c: char| !(c.is_ascii_alphabetic() || c == '_'))
        .unwrap_or(s.len());
    s.split_at(n)
}

/// `<byte>` or `<byte>.<suffix>`, with the suffix (bit or string length) if present.
fn offset_and_suffix(text: &str) -> Result<(u32, Option<&str>), AddressError> {
    let (byte, suffix) = match text.split_once('.') {
        Some((b, s)) => (b, Some(s)),
        None => (text, None),
    };
    match byte.parse::<u32>() {
        Ok(n) if n <= MAX_BYTE_OFFSET && byte.bytes().all(|c| c.is_ascii_digit()) => {
            Ok((n, suffix))
        }
        _ => Err(AddressError::Offset(byte.to_string())),
    }
}

fn bit(suffix: Option<&str>) -> Result<u8, AddressError> {
    let Some(bit) = suffix else {
        return Err(AddressError::MissingBit);
    };
    match bit.parse::<u8>() {
        Ok(b) if b <= 7 && bit.len() == 1 => Ok(b),
        _ => Err(AddressError::Bit(bit.to_string())),
    }
}

fn no_suffix(suffix: Option<&str>) -> Result<(), AddressError> {
    match suffix {
        Some(s) => Err(AddressError::UnexpectedBit(s.to_string())),
        None => Ok(()),
    }
}

fn sized_address(area: Area, letter: char, offset: &str) -> Result<Address, AddressError> {
    let (byte, suffix) = offset_and_suffix(offset)?;
    let data_type = match letter {
        'X' => DataType::Bool(bit(suffix)?),
        'B' => DataType::Byte,
        'W' => DataType::Word,
        _ => DataType::DWord,
    };
    if letter != 'X' {
        no_suffix(suffix)?;
    }
    Ok(Address {
        area,
        byte,
        data_type,
    })
}

fn typed_address(area: Area, typed: &str) -> Result<Address, AddressError> {
    let (name, offset) = split_letters(typed);
    if name.is_empty() {
        return Err(AddressError::UnknownType(typed.to_string()));
    }
    let (byte, suffix) = offset_and_suffix(offset)?;
    let data_type = match name {
        "X" | "BOOL" => DataType::Bool(bit(suffix)?),
        "S" | "STRING" => {
            let Some(len) = suffix else {
                return Err(AddressError::MissingLength);
            };
            match len.parse::<u32>() {
                Ok(n) if (1..=MAX_STRING_LEN).contains(&n) => DataType::String(n as u8),
                _ => return Err(AddressError::StringLength(len.to_string())),
            }
        }
        other => {
            let t = match other {
                "B" | "BYTE" => DataType::Byte,
                "W" | "WORD" => DataType::Word,
                "D" | "DW" | "DWORD" => DataType::DWord,
                "I" | "INT" => DataType::Int,
                "DI" | "DINT" => DataType::DInt,
                "R" | "REAL" => DataType::Real,
                "LR" | "LREAL" => DataType::LReal,
                "C" | "CHAR" => DataType::Char,
                "DATE" => DataType::Date,
                "T" | "TIME" => DataType::Time,
                "TOD" | "TIME_OF_DAY" => DataType::TimeOfDay,
                "DT" | "DATE_AND_TIME" => DataType::DateAndTime,
                _ => return Err(AddressError::UnknownType(other.to_string())),
            };
            no_suffix(suffix)?;
            t
        }
    };
    Ok(Address {
        area,
        byte,
        data_type,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn a(area: Area, byte: u32, data_type: DataType) -> Result<Address, AddressError> {
        Ok(Address {
            area,
            byte,
            data_type,
        })
    }

    #[test]
    fn examples() {
        use DataType::*;
        let db1 = Area::Db(1);
        let table: Vec<(&str, Result<Address, AddressError>)> = vec![
            ("DB1.DBX0.0", a(db1, 0, Bool(0))),
            ("db1.dbx3.7", a(db1, 3, Bool(7))),
            ("DB1.DBB2", a(db1, 2, Byte)),
            ("DB1.DBW4", a(db1, 4, Word)),
            ("DB1.DBD6", a(db1, 6, DWord)),
            ("DB65535.DBB0", a(Area::Db(65535), 0, Byte)),
            ("DB1,REAL8", a(db1, 8, Real)),
            ("DB1,INT12", a(db1, 12, Int)),
            ("DB1,DINT14", a(db1, 14, DInt)),
            ("DB1,LREAL16", a(db1, 16, LReal)),
            ("DB1,STRING20.10", a(db1, 20, String(10))),
            ("DB1,S20.254", a(db1, 20, String(254))),
            ("DB1,CHAR3", a(db1, 3, Char)),
            ("DB1,X5.1", a(db1, 5, Bool(1))),
            ("DB1,BYTE1", a(db1, 1, Byte)),
            ("DB1,WORD2", a(db1, 2, Word)),
            ("DB1,DWORD4", a(db1, 4, DWord)),
            ("DB1,DATE40", a(db1, 40, Date)),
            ("DB1,TIME42", a(db1, 42, Time)),
            ("DB1,TOD46", a(db1, 46, TimeOfDay)),
            ("DB1,DT50", a(db1, 50, DateAndTime)),
            ("DB2,DATE_AND_TIME0", a(Area::Db(2), 0, DateAndTime)),
            (" M10.1 ", a(Area::Merker, 10, Bool(1))),
            ("MB10", a(Area::Merker, 10, Byte)),
            ("MW20", a(Area::Merker, 20, Word)),
            ("MD24", a(Area::Merker, 24, DWord)),
            ("M,REAL20", a(Area::Merker, 20, Real)),
            ("I0.0", a(Area::Inputs, 0, Bool(0))),
            ("E0.3", a(Area::Inputs, 0, Bool(3))),
            ("IW64", a(Area::Inputs, 64, Word)),
            ("I,INT64", a(Area::Inputs, 64, Int)),
            ("Q1.0", a(Area::Outputs, 1, Bool(0))),
            ("AB1", a(Area::Outputs, 1, Byte)),
            ("QD4", a(Area::Outputs, 4, DWord)),
            ("", Err(AddressError::Empty)),
            ("DB0.DBX0.0", Err(AddressError::DbNumber("0".into()))),
            ("DB70000.DBB0", Err(AddressError::DbNumber("70000".into()))),
            ("DBX0.0", Err(AddressError::DbNumber("".into()))),
            ("DB1.DBQ0", Err(AddressError::DbAccess("DBQ".into()))),
            ("DB1.X0.0", Err(AddressError::DbAccess("X0.0".into()))),
            ("DB1DBB0", Err(AddressError::DbAccess("DBB0".into()))),
            ("DB1.DBX0", Err(AddressError::MissingBit)),
            ("DB1.DBX0.8", Err(AddressError::Bit("8".into()))),
            ("DB1.DBW4.1", Err(AddressError::UnexpectedBit("1".into()))),
            ("DB1.DBW-1", Err(AddressError::Offset("-1".into()))),
            ("DB1.DBWx", Err(AddressError::DbAccess("DBWX".into()))),
            ("DB1,FOO2", Err(AddressError::UnknownType("FOO".into()))),
            ("DB1,12", Err(AddressError::UnknownType("12".into()))),
            ("DB1,STRING20", Err(AddressError::MissingLength)),
            (
                "DB1,STRING20.0",
                Err(AddressError::StringLength("0".into())),
            ),
            (
                "DB1,STRING20.255",
                Err(AddressError::StringLength("255".into())),
            ),
            ("DB1,REAL8.1", Err(AddressError::UnexpectedBit("1".into()))),
            ("DB1,REAL2097150", Err(AddressError::TooFar(2_097_153))),
            (
                "DB1.DBB2097152",
                Err(AddressError::Offset("2097152".into())),
            ),
            ("Z10", Err(AddressError::UnknownArea("Z".into()))),
            ("MX10", Err(AddressError::UnknownArea("MX".into()))),
            ("PIW256", Err(AddressError::UnknownArea("PIW".into()))),
        ];
        for (text, want) in table {
            assert_eq!(parse(text), want, "{text}");
        }
    }

    #[test]
    fn error_texts() {
        let text = |s: &str| parse(s).err().map(|e| e.to_string()).unwrap_or_default();
        assert_eq!(text("DB0.DBX0.0"), "DB number 0 is out of range 1..=65535");
        assert_eq!(
            text("DB1.DBQ0"),
            "unknown DB access \"DBQ\": use DBX, DBB, DBW or DBD"
        );
        assert_eq!(
            text("DB1.DBX0"),
            "a bool needs a bit: <byte>.<bit> with bit 0..=7"
        );
        assert_eq!(text("DB1.DBX0.8"), "bit \"8\" is out of range 0..=7");
        assert_eq!(
            text("DB1,STRING20"),
            "STRING needs a length: STRING<byte>.<length>"
        );
        assert_eq!(
            text("DB1,STRING20.300"),
            "string length \"300\" is out of range 1..=254"
        );
        assert_eq!(
            text("Z10"),
            "unknown area \"Z\": use DB<n>.DBX/DBB/DBW/DBD, DB<n>,<TYPE><byte>, M, I, Q (or E, A)"
        );
        assert_eq!(
            text("DB1,FOO2"),
            "unknown type \"FOO\": use X, BYTE, WORD, DWORD, INT, DINT, REAL, LREAL, CHAR, STRING, DATE, TIME, TOD, DT"
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(DataType::String(10).size(), 12);
        assert_eq!(DataType::DateAndTime.size(), 8);
        assert_eq!(DataType::Bool(3).size(), 1);
    }
}
