//! Go-style duration strings (`90s`, `15m`, `1h30m`, `336h`), the form Kubernetes users know
//! from every other API. The CRD schema checks the shape and bounds; this parser turns an
//! accepted string into a [`Duration`] for the controllers.

use std::time::Duration;

/// The regular expression the CRD schema uses for every duration field. Kept in one place so
/// the schema and [`parse`] accept the same language.
pub(crate) const PATTERN: &str = r"^([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+$";

/// A duration string that does not follow Go's `time.ParseDuration` syntax (without sign).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: expected a Go-style duration such as 90s, 15m or 336h")]
pub struct InvalidDuration {
    input: String,
}

/// Parses a non-negative Go-style duration such as `1h30m` or `1.5s`.
pub fn parse(input: &str) -> Result<Duration, InvalidDuration> {
    let err = || InvalidDuration {
        input: input.to_owned(),
    };
    if input.is_empty() {
        return Err(err());
    }
    let mut rest = input;
    let mut total_nanos: u128 = 0;
    while !rest.is_empty() {
        let number_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(err)?;
        let (number, tail) = rest.split_at(number_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let unit_nanos: u128 = match unit {
            "ns" => 1,
            "us" | "µs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60 * 1_000_000_000,
            "h" => 3_600 * 1_000_000_000,
            _ => return Err(err()),
        };
        let (whole, frac) = match number.split_once('.') {
            Some((w, f)) if !w.is_empty() && !f.is_empty() => (w, f),
            Some(_) => return Err(err()),
            None if !number.is_empty() => (number, ""),
            None => return Err(err()),
        };
        let whole: u128 = whole.parse().map_err(|_| err())?;
        let mut nanos = whole.checked_mul(unit_nanos).ok_or_else(err)?;
        if !frac.is_empty() {
            // Fractions beyond nanosecond precision are truncated, as Go does.
            let digits = frac.len().min(18) as u32;
            let frac_value: u128 = frac[..digits as usize].parse().map_err(|_| err())?;
            nanos += frac_value * unit_nanos / 10u128.pow(digits);
        }
        total_nanos = total_nanos.checked_add(nanos).ok_or_else(err)?;
        rest = tail;
    }
    let secs = u64::try_from(total_nanos / 1_000_000_000).map_err(|_| err())?;
    Ok(Duration::new(secs, (total_nanos % 1_000_000_000) as u32))
}

/// Formats a duration the way Go prints whole-second durations (`1h30m0s` -> `1h30m`).
pub fn format(duration: Duration) -> String {
    let total = duration.as_secs();
    let (h, m, s) = (total / 3600, (total % 3600) / 60, total % 60);
    let mut out = String::new();
    if h > 0 {
        out.push_str(&format!("{h}h"));
    }
    if m > 0 {
        out.push_str(&format!("{m}m"));
    }
    if s > 0 || out.is_empty() {
        out.push_str(&format!("{s}s"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_go_style_durations() {
        let cases = [
            ("90s", Duration::from_secs(90)),
            ("15m", Duration::from_secs(900)),
            ("336h", Duration::from_secs(336 * 3600)),
            ("1h30m", Duration::from_secs(5400)),
            ("1.5s", Duration::from_millis(1500)),
            ("250ms", Duration::from_millis(250)),
            ("10us", Duration::from_micros(10)),
            ("10µs", Duration::from_micros(10)),
            ("7ns", Duration::from_nanos(7)),
        ];
        for (input, want) in cases {
            assert_eq!(parse(input), Ok(want), "{input}");
        }
    }

    #[test]
    fn rejects_what_go_rejects() {
        for input in [
            "", "15", "m", "1d", "-5m", "1.m", ".5s", "1h 30m", "15M", "1e3s",
        ] {
            assert!(parse(input).is_err(), "{input:?} should be rejected");
        }
    }

    #[test]
    fn pattern_and_parser_agree() {
        let re = regex_lite::Regex::new(PATTERN).unwrap();
        for input in ["90s", "1h30m", "1.5s", "10µs", "15", "1d", "-5m", "1.m", ""] {
            assert_eq!(re.is_match(input), parse(input).is_ok(), "{input:?}");
        }
    }

    #[test]
    fn formats_whole_seconds_like_go() {
        assert_eq!(format(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format(Duration::from_secs(90)), "1m30s");
        assert_eq!(format(Duration::ZERO), "0s");
    }
}
