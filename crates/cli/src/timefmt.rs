//! Instants for people: RFC 3339 in UTC, and offsets from a job's submission.

/// `ms` (Unix milliseconds) as RFC 3339 in UTC with milliseconds, e.g.
/// `2001-09-09T01:46:40.000Z`.
pub fn rfc3339(ms: u64) -> String {
    let secs = ms / 1000;
    let days = i64::try_from(secs / 86_400).unwrap_or(i64::MAX / 2);
    let rem = secs % 86_400;
    let (y, mo, d) = civil_from_days(days);
    format!(
        "{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// `at` relative to `start`, e.g. `+1.234 s` (or `-0.010 s` for a clock skewed backwards).
pub fn since(at: u64, start: u64) -> String {
    let (sign, d) = if at >= start {
        ('+', at - start)
    } else {
        ('-', start - at)
    };
    format!("{sign}{}.{:03} s", d / 1000, d % 1000)
}

/// The proleptic Gregorian date of a day count since 1970-01-01 (H. Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_000_000_000_123), "2001-09-09T01:46:40.123Z");
        // A leap day, and the day after.
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00.000Z");
        assert_eq!(rfc3339(951_868_800_000), "2000-03-01T00:00:00.000Z");
        assert_eq!(rfc3339(1_767_225_599_999), "2025-12-31T23:59:59.999Z");
    }

    #[test]
    fn offsets_are_seconds_with_milliseconds() {
        assert_eq!(since(1_234, 0), "+1.234 s");
        assert_eq!(since(5_000, 5_000), "+0.000 s");
        assert_eq!(since(90, 100), "-0.010 s");
    }
}
