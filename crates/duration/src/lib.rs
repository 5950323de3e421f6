//! Durations as operators write them: `90s`, `15m`, `36h`, `14d`, `1h30m`, `500ms`.
//!
//! Written here rather than taken from a crate on purpose: the accepted units
//! are exactly these (no months or years, whose length is ambiguous), and
//! every error says which part is wrong.
#![forbid(unsafe_code)]

use std::fmt;
use std::time::Duration;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DurationError(pub String);

impl fmt::Display for DurationError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for DurationError {}

/// Parse a non-negative duration: one or more `<integer><unit>` with units
/// `ms`, `s`, `m`, `h`, `d`, `w`.
///
/// ```
/// use std::time::Duration;
/// use kcr_duration::parse;
/// assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
/// assert!(parse("1.5h").is_err());
/// ```
pub fn parse(text: &str) -> Result<Duration, DurationError> {
    let s = text.trim();
    if s.is_empty() {
        return Err(DurationError(
            "empty duration; write e.g. \"90s\", \"15m\", \"36h\" or \"14d\"".into(),
        ));
    }
    let mut total: u128 = 0;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(DurationError(format!(
                "invalid duration {text:?}: expected a number at {rest:?}"
            )));
        }
        let (num, after) = rest.split_at(digits);
        let unit_len = after.bytes().take_while(u8::is_ascii_alphabetic).count();
        let (unit, after) = after.split_at(unit_len);
        let n: u128 = num
            .parse()
            .map_err(|_| DurationError(format!("invalid duration {text:?}: number too large")))?;
        let millis_per: u128 = match unit {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            "d" => 86_400_000,
            "w" => 604_800_000,
            "" if after.starts_with('.') => {
                return Err(DurationError(format!(
                    "invalid duration {text:?}: fractions are not supported (write 90m, not 1.5h)"
                )));
            }
            "" => {
                return Err(DurationError(format!(
                    "invalid duration {text:?}: missing unit after {num} (use ms, s, m, h, d or w)"
                )));
            }
            other => {
                return Err(DurationError(format!(
                    "invalid duration {text:?}: unknown unit {other:?} (use ms, s, m, h, d or w)"
                )));
            }
        };
        total = total
            .checked_add(
                n.checked_mul(millis_per)
                    .ok_or_else(|| DurationError(format!("duration {text:?} is too large")))?,
            )
            .ok_or_else(|| DurationError(format!("duration {text:?} is too large")))?;
        rest = after;
    }
    // Ten thousand years is more than any schedule or lifetime needs.
    if total > 10_000 * 365 * 86_400_000 {
        return Err(DurationError(format!("duration {text:?} is too large")));
    }
    Ok(Duration::from_millis(total as u64))
}

/// Format a duration compactly in the largest exact units: `14d`, `1h30m`, `0s`.
pub fn format(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("d", 86_400_000u128),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_documented_forms() {
        assert_eq!(parse("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse("15m").unwrap(), Duration::from_secs(900));
        assert_eq!(parse("36h").unwrap(), Duration::from_secs(36 * 3600));
        assert_eq!(parse("14d").unwrap(), Duration::from_secs(14 * 86400));
        assert_eq!(parse("1h30m").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse("2w").unwrap(), Duration::from_secs(14 * 86400));
        assert_eq!(parse("0s").unwrap(), Duration::ZERO);
    }

    #[test]
    fn rejects_with_a_reason() {
        assert!(parse("").unwrap_err().0.contains("empty"));
        assert!(parse("14").unwrap_err().0.contains("missing unit"));
        assert!(parse("14x").unwrap_err().0.contains("unknown unit \"x\""));
        assert!(parse("-1s").unwrap_err().0.contains("expected a number"));
        assert!(parse("1.5h").unwrap_err().0.contains("fractions"));
        assert!(
            parse("99999999999999999999d")
                .unwrap_err()
                .0
                .contains("too large")
        );
    }

    #[test]
    fn formats_round_trip() {
        for s in ["14d", "1h30m", "90s", "0s", "1d2h3m4s5ms"] {
            assert_eq!(
                format(parse(s).unwrap()),
                if s == "90s" { "1m30s" } else { s }
            );
        }
    }
}
