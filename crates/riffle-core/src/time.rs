//! Time in Riffle: event time is always epoch milliseconds (`i64`, UTC), and
//! wall-clock reads go through an injectable [`Clock`] so that windows,
//! watermarks and future-skew checks can be tested without sleeping.
//!
//! RFC 3339 parsing is hand-written rather than delegated to the `time` crate
//! because it runs once per ingested event on the hot path; a differential
//! property test keeps it in agreement with `time`'s parser.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

/// A source of wall-clock time in epoch milliseconds.
pub trait Clock: Send + Sync + 'static {
    fn now_ms(&self) -> i64;
}

/// The operating system's real-time clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        match SystemTime::now().duration_since(UNIX_EPOCH) {
            Ok(since) => i64::try_from(since.as_millis()).unwrap_or(i64::MAX),
            // A host clock set before 1970 is broken, but reporting it as a
            // negative time keeps ordering intact instead of panicking.
            Err(before) => i64::try_from(before.duration().as_millis()).map_or(i64::MIN, |ms| -ms),
        }
    }
}

/// A clock that only moves when told to. Clones share the same time, so a test
/// can keep one handle and give another to the component under test.
#[derive(Debug, Default, Clone)]
pub struct ManualClock {
    now_ms: Arc<AtomicI64>,
}

impl ManualClock {
    pub fn new(now_ms: i64) -> Self {
        Self {
            now_ms: Arc::new(AtomicI64::new(now_ms)),
        }
    }

    // SeqCst rather than Relaxed: tests use the clock to order steps across
    // threads, and the cost is irrelevant outside production paths.
    pub fn set(&self, now_ms: i64) {
        self.now_ms.store(now_ms, Ordering::SeqCst);
    }

    pub fn advance(&self, by_ms: i64) {
        self.now_ms.fetch_add(by_ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now_ms.load(Ordering::SeqCst)
    }
}

/// Lets components hold `Arc<dyn Clock>` and still pass it where `impl Clock`
/// is expected.
impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now_ms(&self) -> i64 {
        (**self).now_ms()
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimeError {
    #[error("invalid rfc 3339 timestamp {}: {reason}", quoted(value))]
    Rfc3339 { value: String, reason: &'static str },
    #[error(
        "invalid time {}: expected epoch milliseconds or an rfc 3339 timestamp",
        quoted(value)
    )]
    NotATime { value: String },
    #[error("epoch milliseconds {} out of range", quoted(value))]
    OutOfRange { value: String },
}

/// Quotes a user-supplied value for an error message, cut short so that a
/// hostile 64 KiB string cannot bloat logs and HTTP error bodies.
pub(crate) fn quoted(value: &str) -> String {
    const MAX_QUOTED_BYTES: usize = 64;
    if value.len() <= MAX_QUOTED_BYTES {
        return format!("{value:?}");
    }
    let mut end = MAX_QUOTED_BYTES;
    while !value.is_char_boundary(end) {
        end -= 1;
    }
    format!("{:?}...", &value[..end])
}

const MS_PER_SECOND: i64 = 1_000;
const MS_PER_MINUTE: i64 = 60 * MS_PER_SECOND;
const MS_PER_HOUR: i64 = 60 * MS_PER_MINUTE;
const MS_PER_DAY: i64 = 24 * MS_PER_HOUR;

/// `0000-01-01T00:00:00.000Z`, the earliest instant RFC 3339 can write.
pub const MIN_RFC3339_MS: i64 = -62_167_219_200_000;
/// `9999-12-31T23:59:59.999Z`, the latest instant RFC 3339 can write.
pub const MAX_RFC3339_MS: i64 = 253_402_300_799_999;

/// Parses an RFC 3339 `date-time` (e.g. `2024-05-01T12:00:00.123+02:00`) into
/// epoch milliseconds. Digits below the millisecond are truncated (towards the
/// past), `t`/`z` may be lowercase, and a leap second `:60` is accepted only at
/// the end of a UTC month, read as `:59.999`.
pub fn parse_rfc3339_ms(s: &str) -> Result<i64, TimeError> {
    parse_rfc3339_bytes(s.as_bytes()).map_err(|reason| TimeError::Rfc3339 {
        value: s.to_owned(),
        reason,
    })
}

fn parse_rfc3339_bytes(b: &[u8]) -> Result<i64, &'static str> {
    // Fixed-width prefix: "YYYY-MM-DDTHH:MM:SS" is 19 bytes.
    if b.len() < 19 {
        return Err("too short");
    }
    let year = digits(&b[0..4]).ok_or("invalid year")?;
    expect_byte(b[4], b'-')?;
    let month = digits(&b[5..7]).ok_or("invalid month")?;
    expect_byte(b[7], b'-')?;
    let day = digits(&b[8..10]).ok_or("invalid day")?;
    if !matches!(b[10], b'T' | b't') {
        return Err("expected 'T' between date and time");
    }
    let hour = digits(&b[11..13]).ok_or("invalid hour")?;
    expect_byte(b[13], b':')?;
    let minute = digits(&b[14..16]).ok_or("invalid minute")?;
    expect_byte(b[16], b':')?;
    let second = digits(&b[17..19]).ok_or("invalid second")?;

    if !(1..=12).contains(&month) {
        return Err("month out of range");
    }
    if day < 1 || day > days_in_month(year, month) {
        return Err("day out of range");
    }
    if hour > 23 {
        return Err("hour out of range");
    }
    if minute > 59 {
        return Err("minute out of range");
    }
    if second > 60 {
        return Err("second out of range");
    }

    let mut rest = &b[19..];
    let mut millis = 0;
    if let [b'.', frac @ ..] = rest {
        let frac_len = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if frac_len == 0 {
            return Err("expected digits after '.'");
        }
        for (i, &c) in frac
            .iter()
            .take(3)
            .take_while(|c| c.is_ascii_digit())
            .enumerate()
        {
            millis += i64::from(c - b'0') * [100, 10, 1][i];
        }
        rest = &frac[frac_len..];
    }

    let offset_ms = match rest {
        [b'Z' | b'z'] => 0,
        [sign @ (b'+' | b'-'), oh1, oh2, b':', om1, om2] => {
            let offset_hour = digits(&[*oh1, *oh2]).ok_or("invalid offset hour")?;
            let offset_minute = digits(&[*om1, *om2]).ok_or("invalid offset minute")?;
            if offset_hour > 23 {
                return Err("offset hour out of range");
            }
            if offset_minute > 59 {
                return Err("offset minute out of range");
            }
            let magnitude = offset_hour * MS_PER_HOUR + offset_minute * MS_PER_MINUTE;
            if *sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        [] => return Err("missing utc offset"),
        _ => return Err("invalid utc offset"),
    };

    let local_ms = days_from_civil(year, month, day) * MS_PER_DAY
        + hour * MS_PER_HOUR
        + minute * MS_PER_MINUTE
        + second.min(59) * MS_PER_SECOND
        + millis;
    let utc_ms = local_ms - offset_ms;

    if second == 60 {
        // A leap second is only real at 23:59:60 UTC on the last day of a
        // month; POSIX time has no slot for it, so it becomes the last
        // representable instant of that minute.
        let utc_ms_of_day = utc_ms.rem_euclid(MS_PER_DAY);
        let (utc_year, utc_month, utc_day) = civil_from_days(utc_ms.div_euclid(MS_PER_DAY));
        let is_month_end = utc_day == days_in_month(utc_year, utc_month);
        if !is_month_end || utc_ms_of_day / MS_PER_MINUTE != 23 * 60 + 59 {
            return Err("leap second outside the end of a utc month");
        }
        return Ok(utc_ms - millis + 999);
    }
    Ok(utc_ms)
}

fn expect_byte(found: u8, expected: u8) -> Result<(), &'static str> {
    if found == expected {
        Ok(())
    } else {
        Err("unexpected character in date or time")
    }
}

fn digits(b: &[u8]) -> Option<i64> {
    b.iter().try_fold(0i64, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
    })
}

fn is_leap_year(year: i64) -> bool {
    year % 4 == 0 && (year % 100 != 0 || year % 400 == 0)
}

fn days_in_month(year: i64, month: i64) -> i64 {
    match month {
        2 if is_leap_year(year) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
/// `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let shifted_month = (month + 9) % 12; // March = 0
    let day_of_year = (153 * shifted_month + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Inverse of [`days_from_civil`]: `(year, month, day)`.
fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

/// Length of [`format_rfc3339_ms`]'s output: `YYYY-MM-DDTHH:MM:SS.mmmZ`.
pub(crate) const RFC3339_MS_LEN: usize = 24;

/// Formats epoch milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ` (UTC, always
/// millisecond precision, so the output has a fixed width and sorts like the
/// number). Instants outside years 0000–9999 cannot be written in RFC 3339 and
/// are clamped to [`MIN_RFC3339_MS`]..=[`MAX_RFC3339_MS`]; [`parse_rfc3339_ms`]
/// never yields such values.
pub fn format_rfc3339_ms(ms: i64) -> String {
    let buf = format_rfc3339_ms_buf(ms);
    // The buffer holds only ASCII digits and separators.
    String::from_utf8_lossy(&buf).into_owned()
}

/// Allocation-free form of [`format_rfc3339_ms`] for serializers on the hot path.
pub(crate) fn format_rfc3339_ms_buf(ms: i64) -> [u8; RFC3339_MS_LEN] {
    let ms = ms.clamp(MIN_RFC3339_MS, MAX_RFC3339_MS);
    let (year, month, day) = civil_from_days(ms.div_euclid(MS_PER_DAY));
    let ms_of_day = ms.rem_euclid(MS_PER_DAY);
    let mut buf = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, mut value: i64| {
        for i in (at..at + width).rev() {
            buf[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, month);
    put(8, 2, day);
    put(11, 2, ms_of_day / MS_PER_HOUR);
    put(14, 2, ms_of_day / MS_PER_MINUTE % 60);
    put(17, 2, ms_of_day / MS_PER_SECOND % 60);
    put(20, 3, ms_of_day % MS_PER_SECOND);
    buf
}

/// Parses a time given by a person or a query string: either integer epoch
/// milliseconds (`1714564800000`) or an RFC 3339 timestamp.
pub fn parse_time_arg(s: &str) -> Result<i64, TimeError> {
    let unsigned = s.strip_prefix('-').unwrap_or(s);
    if !unsigned.is_empty() && unsigned.bytes().all(|c| c.is_ascii_digit()) {
        return s.parse::<i64>().map_err(|_| TimeError::OutOfRange {
            value: s.to_owned(),
        });
    }
    // Anything that starts like a date gets the specific RFC 3339 complaint;
    // anything else gets told which two forms are accepted.
    let looks_like_date =
        s.len() >= 5 && s.as_bytes()[..4].iter().all(u8::is_ascii_digit) && s.as_bytes()[4] == b'-';
    if looks_like_date {
        return parse_rfc3339_ms(s);
    }
    Err(TimeError::NotATime {
        value: s.to_owned(),
    })
}

/// Parses a duration given by a person: an integer and a unit, `500ms`,
/// `90s`, `5m`, `2h` or `7d`, into milliseconds.
pub fn parse_duration_ms(s: &str) -> Result<i64, crate::InvalidValue> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (number, unit) = s.split_at(digits);
    let factor = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => 0,
    };
    match number.parse::<i64>() {
        Ok(n) if factor > 0 => n
            .checked_mul(factor)
            .ok_or_else(|| crate::InvalidValue::new(format!("{s:?} is too long"))),
        _ => Err(crate::InvalidValue::new(format!(
            "{s:?} is not a duration like 500ms, 60s, 5m, 1h or 7d"
        ))),
    }
}

#[cfg(test)]
mod duration_tests {
    use super::*;

    #[test]
    fn durations_parse_and_errors_name_the_value() {
        assert_eq!(parse_duration_ms("500ms").unwrap(), 500);
        assert_eq!(parse_duration_ms("60s").unwrap(), 60_000);
        assert_eq!(parse_duration_ms("5m").unwrap(), 300_000);
        assert_eq!(parse_duration_ms("2h").unwrap(), 7_200_000);
        assert_eq!(parse_duration_ms("7d").unwrap(), 604_800_000);
        for bad in ["", "60", "s", "1.5s", "-1s", "10w"] {
            assert_eq!(
                parse_duration_ms(bad).unwrap_err().message(),
                format!("{bad:?} is not a duration like 500ms, 60s, 5m, 1h or 7d")
            );
        }
        assert!(parse_duration_ms("99999999999999999d")
            .unwrap_err()
            .message()
            .contains("too long"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ::time::format_description::well_known::Rfc3339;
    use ::time::OffsetDateTime;
    use proptest::prelude::*;

    #[test]
    fn parses_utc_and_offsets() {
        assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.123Z"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T14:00:00.123+02:00"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01t07:30:00.123-04:30"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.123456789z"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(
            parse_rfc3339_ms("2024-05-01T12:00:00.1Z"),
            Ok(1_714_564_800_100)
        );
    }

    #[test]
    fn truncates_sub_millisecond_digits_towards_the_past() {
        assert_eq!(parse_rfc3339_ms("1969-12-31T23:59:59.9999Z"), Ok(-1));
        assert_eq!(format_rfc3339_ms(-1), "1969-12-31T23:59:59.999Z");
    }

    #[test]
    fn leap_second_only_at_month_end() {
        assert_eq!(
            parse_rfc3339_ms("2016-12-31T23:59:60Z"),
            Ok(1_483_228_799_999)
        );
        assert_eq!(
            parse_rfc3339_ms("2017-01-01T00:59:60+01:00"),
            Ok(1_483_228_799_999)
        );
        let err = parse_rfc3339_ms("2016-12-30T23:59:60Z").unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid rfc 3339 timestamp \"2016-12-30T23:59:60Z\": leap second outside the end of a utc month"
        );
    }

    #[test]
    fn rejects_malformed_timestamps_with_a_reason() {
        let cases = [
            ("2024-13-01T00:00:00Z", "month out of range"),
            ("2023-02-29T00:00:00Z", "day out of range"),
            ("2024-01-01T24:00:00Z", "hour out of range"),
            ("2024-01-01T00:00:00", "missing utc offset"),
            ("2024-01-01T00:00:00.Z", "expected digits after '.'"),
            ("2024-01-01 00:00:00Z", "expected 'T' between date and time"),
            ("2024-01-01T00:00:00+0100", "invalid utc offset"),
            ("2024-01-01T00:00:00+24:00", "offset hour out of range"),
            ("2024", "too short"),
        ];
        for (input, reason) in cases {
            assert_eq!(
                parse_rfc3339_ms(input),
                Err(TimeError::Rfc3339 {
                    value: input.to_owned(),
                    reason
                }),
                "{input}"
            );
        }
    }

    #[test]
    fn formats_fixed_width_utc() {
        assert_eq!(format_rfc3339_ms(0), "1970-01-01T00:00:00.000Z");
        assert_eq!(
            format_rfc3339_ms(1_714_564_800_123),
            "2024-05-01T12:00:00.123Z"
        );
        assert_eq!(
            format_rfc3339_ms(MIN_RFC3339_MS),
            "0000-01-01T00:00:00.000Z"
        );
        assert_eq!(
            format_rfc3339_ms(MAX_RFC3339_MS),
            "9999-12-31T23:59:59.999Z"
        );
        assert_eq!(format_rfc3339_ms(i64::MAX), "9999-12-31T23:59:59.999Z");
        assert_eq!(format_rfc3339_ms(i64::MIN), "0000-01-01T00:00:00.000Z");
    }

    #[test]
    fn time_arg_accepts_epoch_ms_and_rfc3339() {
        assert_eq!(parse_time_arg("1714564800123"), Ok(1_714_564_800_123));
        assert_eq!(parse_time_arg("-5"), Ok(-5));
        assert_eq!(
            parse_time_arg("2024-05-01T12:00:00.123Z"),
            Ok(1_714_564_800_123)
        );
        assert_eq!(
            parse_time_arg("yesterday").unwrap_err().to_string(),
            "invalid time \"yesterday\": expected epoch milliseconds or an rfc 3339 timestamp"
        );
        assert_eq!(
            parse_time_arg("99999999999999999999")
                .unwrap_err()
                .to_string(),
            "epoch milliseconds \"99999999999999999999\" out of range"
        );
        assert_eq!(
            parse_time_arg("2024-05-01").unwrap_err().to_string(),
            "invalid rfc 3339 timestamp \"2024-05-01\": too short"
        );
    }

    #[test]
    fn quoted_values_are_cut_at_a_char_boundary() {
        let long = "é".repeat(100);
        let q = quoted(&long);
        assert!(q.ends_with("\"..."));
        assert_eq!(q.chars().filter(|&c| c == 'é').count(), 32);
    }

    #[test]
    fn manual_clock_is_shared_between_clones() {
        let clock = ManualClock::new(1_000);
        let handle = clock.clone();
        handle.advance(500);
        assert_eq!(clock.now_ms(), 1_500);
        handle.set(42);
        let shared: Arc<dyn Clock> = Arc::new(clock);
        assert_eq!(shared.now_ms(), 42);
    }

    #[test]
    fn system_clock_is_after_2020() {
        assert!(SystemClock.now_ms() > 1_577_836_800_000);
    }

    fn reference_parse(s: &str) -> Option<i64> {
        let parsed = OffsetDateTime::parse(s, &Rfc3339).ok()?;
        i64::try_from(parsed.unix_timestamp_nanos().div_euclid(1_000_000)).ok()
    }

    /// Strings that are mostly well-formed timestamps with occasional bad
    /// characters, so the comparison exercises both accept and reject paths.
    fn timestamp_like() -> impl Strategy<Value = String> {
        (
            0u32..10_000,
            0u32..14,
            0u32..33,
            0u32..25,
            0u32..61,
            0u32..62,
            prop::option::of("[0-9]{0,12}"),
            prop_oneof![
                Just("Z".to_owned()),
                Just("z".to_owned()),
                (prop::bool::ANY, 0u32..25, 0u32..61).prop_map(|(neg, h, m)| format!(
                    "{}{h:02}:{m:02}",
                    if neg { '-' } else { '+' }
                )),
                "[-+:Z0-9 ]{0,6}",
            ],
            prop::sample::select(vec!['T', 't']),
        )
            .prop_map(|(y, mo, d, h, mi, s, frac, offset, sep)| {
                let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
                format!("{y:04}-{mo:02}-{d:02}{sep}{h:02}:{mi:02}:{s:02}{frac}{offset}")
            })
    }

    proptest! {
        #[test]
        fn agrees_with_the_time_crate(s in timestamp_like()) {
            prop_assert_eq!(parse_rfc3339_ms(&s).ok(), reference_parse(&s), "{}", s);
        }

        #[test]
        fn agrees_with_the_time_crate_on_noise(s in "[0-9T:Z.+-]{0,30}") {
            prop_assert_eq!(parse_rfc3339_ms(&s).ok(), reference_parse(&s), "{}", s);
        }

        #[test]
        fn format_then_parse_is_identity(ms in MIN_RFC3339_MS..=MAX_RFC3339_MS) {
            let text = format_rfc3339_ms(ms);
            prop_assert_eq!(text.len(), RFC3339_MS_LEN);
            prop_assert_eq!(parse_rfc3339_ms(&text), Ok(ms));
            prop_assert_eq!(reference_parse(&text), Some(ms));
        }

        #[test]
        fn time_arg_never_panics(s in "\\PC{0,40}") {
            let _ = parse_time_arg(&s);
        }
    }
}
