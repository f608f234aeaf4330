//! Parsing of durations (`300`, `1.5`, `300s`, `250ms`, `5m`, `1h`) and byte
//! sizes (`1048576`, `512K`, `50MB`, `2GiB`), with errors that quote the input.

use std::time::Duration;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum UnitError {
    #[error("invalid duration {0:?}: expected seconds like 300, 1.5, 250ms, 30s, 5m or 1h")]
    Duration(String),
    #[error("invalid size {0:?}: expected bytes like 1048576, 512K, 50MB or 2GiB")]
    Size(String),
    #[error("invalid count {0:?}: expected a whole number")]
    Count(String),
    /// A value above zero that would round to zero, which means "no cap".
    #[error("invalid value {0:?}: below the smallest unit ({1}), and 0 would mean no cap")]
    TooSmall(String, &'static str),
}

fn split_number(s: &str) -> (&str, &str) {
    let end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    (&s[..end], s[end..].trim())
}

/// A duration; a bare number is seconds. Zero is allowed (means "off" to callers).
pub fn parse_duration(input: &str) -> Result<Duration, UnitError> {
    let err = || UnitError::Duration(input.to_string());
    let s = input.trim();
    let (num, unit) = split_number(s);
    if num.is_empty() || num.starts_with('.') && num.len() == 1 {
        return Err(err());
    }
    let value: f64 = num.parse().map_err(|_| err())?;
    let scale = match unit {
        "" | "s" | "sec" | "secs" => 1.0,
        "ms" => 1e-3,
        "m" | "min" => 60.0,
        "h" => 3600.0,
        _ => return Err(err()),
    };
    let secs = value * scale;
    if !secs.is_finite() || secs > 1e9 {
        return Err(err());
    }
    if secs > 0.0 && secs < 1e-3 {
        return Err(UnitError::TooSmall(input.to_string(), "1ms"));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A byte size; K/M/G/T are powers of 1024 (`K`, `KB`, `KiB` all alike, as
/// cgroup files and most operators read them).
pub fn parse_size(input: &str) -> Result<u64, UnitError> {
    let err = || UnitError::Size(input.to_string());
    let s = input.trim();
    let (num, unit) = split_number(s);
    if num.is_empty() {
        return Err(err());
    }
    let shift = match unit.to_ascii_uppercase().as_str() {
        "" | "B" => 0,
        "K" | "KB" | "KIB" => 10,
        "M" | "MB" | "MIB" => 20,
        "G" | "GB" | "GIB" => 30,
        "T" | "TB" | "TIB" => 40,
        _ => return Err(err()),
    };
    if num.contains('.') {
        let v: f64 = num.parse().map_err(|_| err())?;
        let bytes = v * (1u64 << shift) as f64;
        if !bytes.is_finite() || bytes >= u64::MAX as f64 {
            return Err(err());
        }
        if bytes > 0.0 && bytes < 1.0 {
            return Err(UnitError::TooSmall(input.to_string(), "1 byte"));
        }
        return Ok(bytes as u64);
    }
    let v: u64 = num.parse().map_err(|_| err())?;
    v.checked_mul(1u64 << shift).ok_or_else(err)
}

/// A whole number (no sign, no unit).
pub fn parse_count(input: &str) -> Result<u64, UnitError> {
    input
        .trim()
        .parse()
        .map_err(|_| UnitError::Count(input.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("300"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
        for bad in ["", "-1", "abc", "5 years", ".", "1e999", "nan"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
        // Above zero but below a millisecond: not "no cap" (0).
        for tiny in ["0.0000000001", "0.0005", "0.5ms"] {
            assert!(
                matches!(parse_duration(tiny), Err(UnitError::TooSmall(..))),
                "{tiny}"
            );
        }
        assert_eq!(parse_duration("0.001"), Ok(Duration::from_millis(1)));
        assert_eq!(parse_duration("0.0"), Ok(Duration::ZERO));
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("1048576"), Ok(1 << 20));
        assert_eq!(parse_size("512K"), Ok(512 << 10));
        assert_eq!(parse_size("50MB"), Ok(50 << 20));
        assert_eq!(parse_size("2GiB"), Ok(2 << 30));
        assert_eq!(parse_size("1.5M"), Ok(3 << 19));
        for bad in ["", "-5", "12Q", "M", "99999999999999999999T"] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
        // 0.5 bytes used to truncate to 0, which means "no cap".
        assert!(matches!(parse_size("0.5"), Err(UnitError::TooSmall(..))));
        assert_eq!(parse_size("0.5K"), Ok(512));
        assert_eq!(parse_size("0.0"), Ok(0));
    }

    #[test]
    fn counts() {
        assert_eq!(parse_count("10"), Ok(10));
        assert!(parse_count("-1").is_err());
        assert!(parse_count("1.5").is_err());
    }
}
