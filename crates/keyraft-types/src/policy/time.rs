//! Instants for the `Date*` condition operators: a small RFC 3339 parser and printer.
//!
//! AWS accepts a date condition value either as ISO 8601 text or as seconds since the
//! Unix epoch, and so do we. The accepted text forms are the RFC 3339 profile plus two
//! conveniences AWS also takes: a bare date (`2026-01-01`, midnight UTC) and a time
//! without a zone (read as UTC). Anything else fails to parse — at parse time a policy
//! with such a value is malformed; at evaluation time a request value that does not
//! parse satisfies no date comparison.
//!
//! The calendar arithmetic is the proleptic Gregorian "days from civil" conversion, exact
//! for every year from 0000 to 9999, so no dependency is needed.

/// A point in time: seconds since the Unix epoch and nanoseconds within the second.
/// Ordering the pair orders the instants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Instant {
    pub(crate) secs: i64,
    pub(crate) nanos: u32,
}

/// Parses epoch seconds (`1767225600`, `-5`) or RFC 3339 text
/// (`2026-01-01T00:00:00Z`, `2026-01-01T01:00:00.5+01:00`, `2026-01-01`).
pub(crate) fn parse_instant(s: &str) -> Option<Instant> {
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse::<i64>().ok().map(|secs| Instant { secs, nanos: 0 });
    }
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let year = c.digits(4)?;
    c.expect(b'-')?;
    let month = c.digits(2)?;
    c.expect(b'-')?;
    let day = c.digits(2)?;
    if !(1..=12).contains(&month) || day < 1 || day > days_in_month(year, month) {
        return None;
    }
    let days = days_from_civil(year, month, day);
    if c.done() {
        return Some(Instant {
            secs: days * 86_400,
            nanos: 0,
        });
    }
    if !matches!(c.next()?, b'T' | b't') {
        return None;
    }
    let hour = c.digits(2)?;
    c.expect(b':')?;
    let minute = c.digits(2)?;
    let mut second = 0;
    let mut nanos = 0u32;
    if c.peek() == Some(b':') {
        c.next()?;
        second = c.digits(2)?;
        if c.peek() == Some(b'.') {
            c.next()?;
            let start = c.i;
            let mut scale = 100_000_000u32;
            while let Some(d) = c.peek().filter(u8::is_ascii_digit) {
                c.next()?;
                if c.i - start > 9 {
                    return None;
                }
                nanos += u32::from(d - b'0') * scale;
                scale /= 10;
            }
            if c.i == start {
                return None;
            }
        }
    }
    // 60 is a leap second; it counts as the first second of the next minute.
    if hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let offset = match c.next() {
        None => 0,
        Some(b'Z' | b'z') => 0,
        Some(sign @ (b'+' | b'-')) => {
            let h = c.digits(2)?;
            c.expect(b':')?;
            let m = c.digits(2)?;
            if h > 23 || m > 59 {
                return None;
            }
            let off = h * 3600 + m * 60;
            if sign == b'-' {
                -off
            } else {
                off
            }
        }
        Some(_) => return None,
    };
    if !c.done() {
        return None;
    }
    Some(Instant {
        secs: days * 86_400 + hour * 3600 + minute * 60 + second - offset,
        nanos,
    })
}

/// Formats seconds since the epoch as `YYYY-MM-DDTHH:MM:SSZ` (what `aws:CurrentTime`
/// carries).
pub(crate) fn format_rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn is_leap(y: i64) -> bool {
    y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date.
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = (m + 9) % 12; // March is 0
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The inverse of [`days_from_civil`].
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn next(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.i += 1;
        Some(b)
    }

    fn done(&self) -> bool {
        self.i == self.b.len()
    }

    fn expect(&mut self, want: u8) -> Option<()> {
        (self.next()? == want).then_some(())
    }

    fn digits(&mut self, n: usize) -> Option<i64> {
        let mut v = 0i64;
        for _ in 0..n {
            let d = self.next().filter(u8::is_ascii_digit)?;
            v = v * 10 + i64::from(d - b'0');
        }
        Some(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: &str) -> Option<i64> {
        parse_instant(s).map(|i| i.secs)
    }

    #[test]
    fn parses_the_accepted_forms() {
        assert_eq!(secs("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(secs("2026-01-01T00:00:00Z"), Some(1_767_225_600));
        assert_eq!(secs("2026-01-01"), Some(1_767_225_600));
        assert_eq!(secs("2026-01-01T00:00Z"), Some(1_767_225_600));
        assert_eq!(secs("2026-01-01T00:00:00"), Some(1_767_225_600));
        assert_eq!(secs("2026-01-01t01:00:00+01:00"), Some(1_767_225_600));
        assert_eq!(secs("2025-12-31T19:00:00-05:00"), Some(1_767_225_600));
        assert_eq!(secs("1767225600"), Some(1_767_225_600));
        assert_eq!(secs("-1"), Some(-1));
        assert_eq!(secs("2000-02-29T12:00:00Z"), Some(951_825_600));
        assert_eq!(secs("1969-12-31T23:59:59Z"), Some(-1));
        assert_eq!(secs("2016-12-31T23:59:60Z"), Some(1_483_228_800));
        let i = parse_instant("2026-01-01T00:00:00.250Z").unwrap();
        assert_eq!((i.secs, i.nanos), (1_767_225_600, 250_000_000));
    }

    #[test]
    fn refuses_the_rest() {
        for bad in [
            "",
            "-",
            "2026-01",
            "2026-1-01",
            "2026-13-01",
            "2026-02-29",
            "2026-04-31",
            "2026-00-10",
            "2026-01-01T24:00:00Z",
            "2026-01-01T00:60:00Z",
            "2026-01-01 00:00:00Z",
            "2026-01-01T00:00:00.Z",
            "2026-01-01T00:00:00.1234567891Z",
            "2026-01-01T00:00:00+0100",
            "2026-01-01T00:00:00ZZ",
            "2026-01-01T00",
            "1.5",
            "99999999999999999999",
            "now",
        ] {
            assert_eq!(parse_instant(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn formats_and_round_trips() {
        assert_eq!(format_rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_rfc3339(1_767_225_599), "2025-12-31T23:59:59Z");
        assert_eq!(format_rfc3339(-1), "1969-12-31T23:59:59Z");
        for s in [
            -62_167_219_200,
            -1,
            0,
            951_825_600,
            4_102_444_800,
            253_402_300_799,
        ] {
            assert_eq!(secs(&format_rfc3339(s)), Some(s), "{s}");
        }
    }
}
