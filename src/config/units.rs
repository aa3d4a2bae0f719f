//! Human units in the configuration: durations ("500ms", "7d", "1h30m") and sizes ("256MiB").

use std::time::Duration;

/// A duration or size that cannot be read; the message says how to write it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UnitError {
    #[error("expected a duration such as \"500ms\", \"10s\" or \"7d\", found an empty string")]
    EmptyDuration,
    #[error(
        "\"{0}\" is not a duration; write a number and a unit (us, ms, s, m, h, d), such as \"500ms\", \"10s\" or \"7d\""
    )]
    NotADuration(String),
    #[error("duration \"{0}\" is too large")]
    DurationTooLarge(String),
    #[error(
        "\"{0}\" is not a size; write a number and a unit (B, KiB, MiB, GiB, KB, MB, GB), such as \"256MiB\""
    )]
    NotASize(String),
    #[error("size \"{0}\" is too large")]
    SizeTooLarge(String),
}

/// Parses a duration such as `"500ms"`, `"10s"`, `"5m"`, `"1h30m"`, `"7d"` or `"250us"`.
/// A bare `"0"` is zero. Units: us, ms, s, m, h, d.
pub fn parse_duration(text: &str) -> Result<Duration, UnitError> {
    let s = text.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    if s.is_empty() {
        return Err(UnitError::EmptyDuration);
    }
    let mut total: u128 = 0; // microseconds
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad_duration(text));
        }
        let number: u128 = rest[..digits].parse().map_err(|_| bad_duration(text))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let micros_per: u128 = match unit {
            "us" | "µs" => 1,
            "ms" => 1_000,
            "s" => 1_000_000,
            "m" | "min" => 60_000_000,
            "h" => 3_600_000_000,
            "d" => 86_400_000_000,
            _ => return Err(bad_duration(text)),
        };
        total = total
            .checked_add(
                number
                    .checked_mul(micros_per)
                    .ok_or_else(|| bad_duration(text))?,
            )
            .ok_or_else(|| bad_duration(text))?;
    }
    let micros = u64::try_from(total).map_err(|_| UnitError::DurationTooLarge(text.to_string()))?;
    Ok(Duration::from_micros(micros))
}

fn bad_duration(text: &str) -> UnitError {
    UnitError::NotADuration(text.to_string())
}

/// Parses a size such as `"256MiB"`, `"1GB"`, `"512KiB"` or `"1000"` (bytes).
/// Binary units (KiB, MiB, GiB) are powers of 1024, decimal ones (KB, MB, GB) of 1000.
pub fn parse_size(text: &str) -> Result<u64, UnitError> {
    let s = text.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    if digits == 0 {
        return Err(bad_size(text));
    }
    let number: u64 = s[..digits].parse().map_err(|_| bad_size(text))?;
    let factor: u64 = match s[digits..].trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" | "kB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => return Err(bad_size(text)),
    };
    number
        .checked_mul(factor)
        .ok_or_else(|| UnitError::SizeTooLarge(text.to_string()))
}

fn bad_size(text: &str) -> UnitError {
    UnitError::NotASize(text.to_string())
}

/// Formats a byte count for people: "1.5 MiB".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Formats a duration for people: "350ms", "12.0s", "3m 20s", "2h 5m", "3d 4h".
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1_000 {
        format!("{ms}ms")
    } else if ms < 60_000 {
        format!("{:.1}s", ms as f64 / 1000.0)
    } else if ms < 3_600_000 {
        format!("{}m {}s", ms / 60_000, (ms % 60_000) / 1000)
    } else if ms < 86_400_000 {
        format!("{}h {}m", ms / 3_600_000, (ms % 3_600_000) / 60_000)
    } else {
        format!("{}d {}h", ms / 86_400_000, (ms % 86_400_000) / 3_600_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86_400)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5_400)));
        assert_eq!(parse_duration("250us"), Ok(Duration::from_micros(250)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        assert!(parse_duration("10").is_err());
        assert!(parse_duration("ms").is_err());
        assert!(parse_duration("5 weeks").is_err());
        assert!(parse_duration("").is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("256MiB"), Ok(256 << 20));
        assert_eq!(parse_size("1GB"), Ok(1_000_000_000));
        assert_eq!(parse_size("1000"), Ok(1000));
        assert_eq!(parse_size("4 KiB"), Ok(4096));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("12 parsecs").is_err());
        assert!(parse_size("99999999999TiB").is_err());
    }

    #[test]
    fn formatting() {
        assert_eq!(format_bytes(512), "512 B");
        assert_eq!(format_bytes(3 << 20), "3.0 MiB");
        assert_eq!(format_duration(Duration::from_millis(350)), "350ms");
        assert_eq!(format_duration(Duration::from_secs(200)), "3m 20s");
    }
}
