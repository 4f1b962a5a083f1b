//! Humane durations for the inventory: `"10s"`, `"5m"`, `"1h30m"`, `"250ms"`.

use std::time::Duration;

/// Parse a duration written as one or more `<number><unit>` parts, units
/// `ms`, `s`, `m`, `h`, `d`. A bare `0` is accepted; anything else needs a unit.
/// A number, a product or a sum too large for a `Duration` is an error, never
/// a panic or a wrapped value; each inventory key then has its own maximum
/// (`limits`), since even a valid `Duration` can overflow `Instant + d`.
pub fn parse(text: &str) -> Result<Duration, String> {
    let s = text.trim();
    if s.is_empty() {
        return Err("empty duration; write e.g. \"10s\", \"5m\" or \"1h30m\"".into());
    }
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{text:?} is not a duration: expected a number at {rest:?}; write e.g. \"10s\", \"5m\" or \"1h30m\""
            ));
        }
        let value: u64 = rest[..digits].parse().map_err(|_| too_large(text))?;
        rest = &rest[digits..];
        if rest.starts_with('.') {
            return Err(format!(
                "{text:?} is not a duration: fractions are not supported; use a smaller unit, e.g. \"1500ms\" or \"90s\""
            ));
        }
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let secs_per = match unit {
            "ms" => None,
            "s" => Some(1),
            "m" => Some(60),
            "h" => Some(3600),
            "d" => Some(86400),
            "" => {
                return Err(format!(
                    "{text:?} is not a duration: {value} has no unit (ms, s, m, h, d)"
                ));
            }
            other => {
                return Err(format!(
                    "{text:?} is not a duration: unknown unit {other:?} (use ms, s, m, h, d)"
                ));
            }
        };
        let part = match secs_per {
            None => Some(Duration::from_millis(value)),
            Some(n) => value.checked_mul(n).map(Duration::from_secs),
        };
        total = part
            .and_then(|p| total.checked_add(p))
            .ok_or_else(|| too_large(text))?;
    }
    Ok(total)
}

fn too_large(text: &str) -> String {
    format!("{text:?} is not a duration: the number is too large to count")
}

/// Format a duration the way the inventory writes it (`1h30m`, `45s`, `250ms`).
pub fn format(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if !ms.is_multiple_of(1000) {
        return format!("{ms}ms");
    }
    let mut secs = d.as_secs();
    let mut out = String::new();
    for (unit, size) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if secs >= size {
            out.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_humane_forms() {
        assert_eq!(parse("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse("1h30m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse("2d"), Ok(Duration::from_secs(172800)));
        assert_eq!(parse("0"), Ok(Duration::ZERO));
        assert_eq!(parse(" 1m5s "), Ok(Duration::from_secs(65)));
    }

    #[test]
    fn rejects_with_reasons() {
        assert!(parse("").unwrap_err().contains("empty"));
        assert!(parse("10").unwrap_err().contains("no unit"));
        assert!(parse("10x").unwrap_err().contains("unknown unit \"x\""));
        assert!(parse("s").unwrap_err().contains("expected a number"));
        assert!(
            parse("1.5s")
                .unwrap_err()
                .contains("fractions are not supported")
        );
        assert!(parse("-1s").unwrap_err().contains("expected a number"));
    }

    /// Numbers past u64, a unit's product past u64 seconds, and a sum past
    /// `Duration::MAX` are errors, never a panic or a wrapped value.
    #[test]
    fn overflow_is_an_error() {
        for s in [
            "10000000000000000000000s",
            "18446744073709551616ms",
            "18446744073709551615d",
            "5124095576030432h",
            "18446744073709551615s1s",
            "18446744073709551615s999ms1ms",
        ] {
            let e = parse(s).expect_err(s);
            assert!(e.contains("too large"), "{s}: {e}");
        }
        // The largest sums that fit still parse, exactly.
        assert_eq!(
            parse("18446744073709551615s"),
            Ok(Duration::from_secs(u64::MAX))
        );
        assert_eq!(
            parse("18446744073709551614s999ms"),
            Ok(Duration::new(u64::MAX - 1, 999_000_000))
        );
    }

    #[test]
    fn formats_round_trip() {
        for s in ["1h30m", "45s", "250ms", "1d", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
