//! Tag addresses: the four Modbus areas and the two notations users write. Pure.
//!
//! - An integer (`address = 0`) is the 0-based protocol address sent on the wire, in the area
//!   named by `area`.
//! - A string (`address = "40001"`) is the 1-based Modicon notation whose first digit names the
//!   area: `0xxxx` coil, `1xxxx` discrete input, `3xxxx` input register, `4xxxx` holding
//!   register. Five digits cover 1..=9999, six digits (`"400001"`) 1..=65536. `"40001"` is
//!   holding register 0. Because the two notations have different TOML types, they never mix
//!   up: 40001 as an integer is register 40001 of `area`.

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Area {
    Coil,
    DiscreteInput,
    InputRegister,
    HoldingRegister,
}

impl Area {
    pub fn is_bits(self) -> bool {
        matches!(self, Area::Coil | Area::DiscreteInput)
    }

    pub fn name(self) -> &'static str {
        match self {
            Area::Coil => "coil",
            Area::DiscreteInput => "discrete_input",
            Area::InputRegister => "input_register",
            Area::HoldingRegister => "holding_register",
        }
    }

    pub const ALL: [(&'static str, Area); 4] = [
        ("coil", Area::Coil),
        ("discrete_input", Area::DiscreteInput),
        ("input_register", Area::InputRegister),
        ("holding_register", Area::HoldingRegister),
    ];
}

/// Why a Modicon address cannot be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ModiconError {
    #[error(
        "\"{0}\" is not Modicon notation: use 5 or 6 digits like \"40001\" or \"400001\" (or an integer for a 0-based address with `area`)"
    )]
    Notation(String),
    #[error(
        "\"{text}\": the first digit {digit} names no area (0 coil, 1 discrete input, 3 input register, 4 holding register)"
    )]
    Area { text: String, digit: String },
    #[error(
        "\"{text}\": the register number must be 1 to {max} in {digits}-digit notation (it is 1-based)"
    )]
    Range {
        text: String,
        max: u32,
        digits: usize,
    },
}

/// Parses Modicon notation (`"40001"`, `"300017"`) into area and 0-based address.
pub fn parse_modicon(text: &str) -> Result<(Area, u16), ModiconError> {
    let t = text.trim();
    if !(t.len() == 5 || t.len() == 6) || !t.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ModiconError::Notation(text.to_string()));
    }
    let area = match &t[..1] {
        "0" => Area::Coil,
        "1" => Area::DiscreteInput,
        "3" => Area::InputRegister,
        "4" => Area::HoldingRegister,
        d => {
            return Err(ModiconError::Area {
                text: text.to_string(),
                digit: d.to_string(),
            });
        }
    };
    let number: u32 = t[1..]
        .parse()
        .map_err(|_| ModiconError::Notation(text.to_string()))?;
    let max = if t.len() == 5 { 9_999 } else { 65_536 };
    if number == 0 || number > max {
        return Err(ModiconError::Range {
            text: text.to_string(),
            max,
            digits: t.len(),
        });
    }
    Ok((area, (number - 1) as u16))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modicon_notation() {
        assert_eq!(parse_modicon("40001"), Ok((Area::HoldingRegister, 0)));
        assert_eq!(parse_modicon("49999"), Ok((Area::HoldingRegister, 9998)));
        assert_eq!(parse_modicon("400001"), Ok((Area::HoldingRegister, 0)));
        assert_eq!(parse_modicon("465536"), Ok((Area::HoldingRegister, 65535)));
        assert_eq!(parse_modicon("30017"), Ok((Area::InputRegister, 16)));
        assert_eq!(parse_modicon("10001"), Ok((Area::DiscreteInput, 0)));
        assert_eq!(parse_modicon("00010"), Ok((Area::Coil, 9)));
        for bad in [
            "40000", "400000", "465537", "20001", "4001", "4000001", "4x001", "",
        ] {
            assert!(parse_modicon(bad).is_err(), "{bad}");
        }
    }
}
