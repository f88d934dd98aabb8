//! Unix-time helpers: the current time, the UTC week position, and a
//! human-readable UTC rendering (no time-zone database: coupons are UTC).

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds in a day.
pub const DAY_SECS: u64 = 86_400;
/// Seconds in a week.
pub const WEEK_SECS: u64 = 7 * DAY_SECS;

/// The current unix time in seconds (0 if the clock is before 1970).
pub fn now_unix() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Seconds since Monday 00:00 UTC of the week containing `unix`.
/// (1970-01-01 was a Thursday, three days after a Monday.)
pub fn second_of_week(unix: u64) -> u64 {
    (unix % WEEK_SECS + 3 * DAY_SECS) % WEEK_SECS
}

/// `unix` as `YYYY-MM-DD HH:MM:SS UTC`.
pub fn format_utc(unix: u64) -> String {
    let days = unix / DAY_SECS;
    let secs = unix % DAY_SECS;
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// Days since 1970-01-01 to a proleptic Gregorian (year, month, day)
/// (Howard Hinnant's `civil_from_days`, unsigned since we never go before
/// 1970).
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + u64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_known_instants() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_767_225_599), "2025-12-31 23:59:59 UTC");
        assert_eq!(format_utc(1_767_225_600), "2026-01-01 00:00:00 UTC");
    }

    #[test]
    fn week_starts_on_monday() {
        // 1970-01-05 was a Monday.
        assert_eq!(second_of_week(4 * DAY_SECS), 0);
        assert_eq!(second_of_week(0), 3 * DAY_SECS);
        // 2026-01-05 00:00 UTC is a Monday.
        assert_eq!(second_of_week(1_767_571_200), 0);
    }
}
