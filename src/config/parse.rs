//! Typed parsers for configuration values.
//!
//! Each parser returns the accepted form on failure so that the caller can build an error that
//! names the variable, the value and what would have been accepted.

use std::time::Duration;

/// Accepted form of a duration, quoted in error messages.
pub const DURATION_FORM: &str =
    r#"seconds ("10") or a duration ("500ms", "10s", "1m30s") up to 10 years; "0" means no limit"#;

/// The longest duration accepted: deadlines are computed by adding durations to the current
/// time, which must not overflow.
pub const MAX_DURATION: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// Accepted form of a boolean, quoted in error messages.
pub const BOOL_FORM: &str = "true, false, 1 or 0 (any case)";
/// Accepted form of a non-negative integer, quoted in error messages.
pub const UINT_FORM: &str = "a non-negative integer";
/// Accepted form of a TCP port, quoted in error messages.
pub const PORT_FORM: &str = "a port number from 0 to 65535";

/// Accepted form of sizes.
pub const SIZE_FORM: &str =
    "a size in bytes, optionally with a unit: 512, 64KiB, 8MiB, 1GiB (or KB, MB, GB)";

/// Parses a size: bytes, or a number with a binary (`KiB`, `MiB`, `GiB`) or decimal (`KB`,
/// `MB`, `GB`) unit; `K`, `M`, `G` alone are binary.
pub fn size(value: &str) -> Result<usize, &'static str> {
    let v = value.trim();
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (number, unit) = v.split_at(split);
    let n: usize = number.parse().map_err(|_| SIZE_FORM)?;
    let factor: usize = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kib" => 1 << 10,
        "m" | "mib" => 1 << 20,
        "g" | "gib" => 1 << 30,
        "kb" => 1_000,
        "mb" => 1_000_000,
        "gb" => 1_000_000_000,
        _ => return Err(SIZE_FORM),
    };
    n.checked_mul(factor).ok_or(SIZE_FORM)
}

/// Parses a duration: a bare integer is seconds, anything else goes through humantime.
///
/// `0` (in any form) means "no limit" and is returned as `None`.
pub fn duration(value: &str) -> Result<Option<Duration>, &'static str> {
    let value = value.trim();
    let parsed = if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        value
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| DURATION_FORM)?
    } else {
        humantime::parse_duration(value).map_err(|_| DURATION_FORM)?
    };
    if parsed > MAX_DURATION {
        return Err(DURATION_FORM);
    }
    Ok((!parsed.is_zero()).then_some(parsed))
}

/// Parses a boolean: `true`/`false`/`1`/`0`, case-insensitive.
pub fn boolean(value: &str) -> Result<bool, &'static str> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Ok(true),
        "false" | "0" => Ok(false),
        _ => Err(BOOL_FORM),
    }
}

/// Parses a non-negative integer.
pub fn uint(value: &str) -> Result<usize, &'static str> {
    value.trim().parse::<usize>().map_err(|_| UINT_FORM)
}

/// Parses a TCP port.
pub fn port(value: &str) -> Result<u16, &'static str> {
    value.trim().parse::<u16>().map_err(|_| PORT_FORM)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_capped() {
        assert_eq!(duration("315360000"), Ok(Some(MAX_DURATION)));
        assert_eq!(duration("315360001"), Err(DURATION_FORM));
        assert_eq!(duration("18446744073709551615"), Err(DURATION_FORM));
        assert_eq!(duration("100000y"), Err(DURATION_FORM));
    }

    #[test]
    fn sizes() {
        assert_eq!(size("512"), Ok(512));
        assert_eq!(size("64KiB"), Ok(65536));
        assert_eq!(size("8MiB"), Ok(8 << 20));
        assert_eq!(size("8M"), Ok(8 << 20));
        assert_eq!(size("2 MB"), Ok(2_000_000));
        assert_eq!(size("1gib"), Ok(1 << 30));
        assert_eq!(size("lots"), Err(SIZE_FORM));
        assert_eq!(size("5 parsecs"), Err(SIZE_FORM));
        assert_eq!(size("-1"), Err(SIZE_FORM));
    }

    #[test]
    fn durations() {
        let table: &[(&str, Option<Duration>)] = &[
            ("10", Some(Duration::from_secs(10))),
            (" 7 ", Some(Duration::from_secs(7))),
            ("0", None),
            ("0s", None),
            ("500ms", Some(Duration::from_millis(500))),
            ("10s", Some(Duration::from_secs(10))),
            ("1m30s", Some(Duration::from_secs(90))),
            ("2h", Some(Duration::from_secs(7200))),
        ];
        for (input, want) in table {
            assert_eq!(duration(input), Ok(*want), "input {input:?}");
        }
        for bad in [
            "",
            "abc",
            "-1",
            "10x",
            "1.5",
            "s10",
            "99999999999999999999999",
        ] {
            assert_eq!(duration(bad), Err(DURATION_FORM), "input {bad:?}");
        }
    }

    #[test]
    fn booleans() {
        for (input, want) in [
            ("true", true),
            ("TRUE", true),
            ("True", true),
            ("1", true),
            ("false", false),
            ("FALSE", false),
            ("0", false),
        ] {
            assert_eq!(boolean(input), Ok(want), "input {input:?}");
        }
        for bad in ["", "yes", "no", "2", "t"] {
            assert_eq!(boolean(bad), Err(BOOL_FORM), "input {bad:?}");
        }
    }

    #[test]
    fn integers_and_ports() {
        assert_eq!(uint("0"), Ok(0));
        assert_eq!(uint("42"), Ok(42));
        assert_eq!(uint("-1"), Err(UINT_FORM));
        assert_eq!(uint("4k"), Err(UINT_FORM));
        assert_eq!(port("0"), Ok(0));
        assert_eq!(port("8080"), Ok(8080));
        assert_eq!(port("65536"), Err(PORT_FORM));
        assert_eq!(port("http"), Err(PORT_FORM));
    }
}
