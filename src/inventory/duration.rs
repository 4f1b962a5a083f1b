//! Humane durations for the inventory: `"10s"`, `"5m"`, `"1h30m"`, `"250ms"`.

use std::time::Duration;

/// Parse a duration written as one or more `<number><unit>` parts, units
/// `ms`, `s`, `m`, `h`, `d`. A bare `0` is accepted; anything else needs a unit.
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
        let value: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{text:?} is not a duration: number too large"))?;
        rest = &rest[digits..];
        if rest.starts_with('.') {
            return Err(format!(
                "{text:?} is not a duration: fractions are not supported; use a smaller unit, e.g. \"1500ms\" or \"90s\""
            ));
        }
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(value),
            "s" => Duration::from_secs(value),
            "m" => Duration::from_secs(value.saturating_mul(60)),
            "h" => Duration::from_secs(value.saturating_mul(3600)),
            "d" => Duration::from_secs(value.saturating_mul(86400)),
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
        total = total.saturating_add(part);
    }
    Ok(total)
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

    #[test]
    fn formats_round_trip() {
        for s in ["1h30m", "45s", "250ms", "1d", "0s"] {
            assert_eq!(format(parse(s).unwrap()), s);
        }
    }
}
