//! Weekly recurring UTC windows: `"mon-fri 18:00-23:00"`, `"sat,sun
//! 00:00-24:00"`, `"daily 22:00-02:00"`.
//!
//! An end before the start runs across midnight, and the window belongs to
//! the day it starts on: `"sun 22:00-02:00"` is Sunday 22:00 to Monday 02:00.
//! An empty list of windows means "always".

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::time::{second_of_week, WEEK_SECS};

const DAY_NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
const ALL_DAYS: u8 = 0x7f;
const MINUTES_PER_DAY: u16 = 1440;

/// One weekly window: on each day in `days` (bit 0 = Monday ... bit 6 =
/// Sunday), from `start_min` to `end_min` minutes after 00:00 UTC.
/// Always valid: build it with [`Window::new`] or by parsing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Window {
    days: u8,
    start_min: u16,
    end_min: u16,
}

/// A window string or value that is not valid; names the bad part.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("window {input:?}: {reason}")]
pub struct WindowError {
    /// The rejected text (or the values, for [`Window::new`]).
    pub input: String,
    /// What was wrong and what was expected.
    pub reason: String,
}

impl Window {
    /// A window on `days` (bitmask, Monday = bit 0) from `start_min`
    /// (0..1440) to `end_min` (0..=1440, not equal to `start_min`; smaller
    /// means across midnight).
    pub fn new(days: u8, start_min: u16, end_min: u16) -> Result<Window, WindowError> {
        let err = |reason: &str| WindowError {
            input: format!("days={days:#04x} start_min={start_min} end_min={end_min}"),
            reason: reason.to_string(),
        };
        if days == 0 || days & !ALL_DAYS != 0 {
            return Err(err("days must be a non-empty 7-bit mask (Monday = bit 0)"));
        }
        if start_min >= MINUTES_PER_DAY {
            return Err(err("start must be 00:00..=23:59"));
        }
        if end_min > MINUTES_PER_DAY {
            return Err(err("end must be 00:00..=24:00"));
        }
        if start_min == end_min {
            return Err(err("start and end are equal (an empty window)"));
        }
        Ok(Window {
            days,
            start_min,
            end_min,
        })
    }

    /// The days bitmask, Monday = bit 0.
    pub fn days(&self) -> u8 {
        self.days
    }

    /// Start, minutes after 00:00 UTC.
    pub fn start_min(&self) -> u16 {
        self.start_min
    }

    /// End, minutes after 00:00 UTC (smaller than the start: the next day).
    pub fn end_min(&self) -> u16 {
        self.end_min
    }

    /// Length of one occurrence in seconds.
    fn len_secs(&self) -> u64 {
        let len = if self.end_min > self.start_min {
            self.end_min - self.start_min
        } else {
            MINUTES_PER_DAY - self.start_min + self.end_min
        };
        u64::from(len) * 60
    }

    /// Start of each occurrence, seconds after Monday 00:00 UTC.
    fn starts(&self) -> impl Iterator<Item = u64> + '_ {
        (0..7u64)
            .filter(|d| self.days & (1 << d) != 0)
            .map(|d| d * 86_400 + u64::from(self.start_min) * 60)
    }

    /// Whether `unix` falls inside one of this window's occurrences.
    pub fn contains(&self, unix: u64) -> bool {
        let sow = second_of_week(unix);
        let len = self.len_secs();
        self.starts()
            .any(|s| (sow + WEEK_SECS - s) % WEEK_SECS < len)
    }
}

/// Whether a coupon with these windows is active at `unix` (an empty list
/// is always active).
pub fn active_at(windows: &[Window], unix: u64) -> bool {
    windows.is_empty() || windows.iter().any(|w| w.contains(unix))
}

/// The next unix second after `unix` at which [`active_at`] changes value,
/// or `None` if it never does (no windows, or windows covering the whole
/// week).
pub fn next_change(windows: &[Window], unix: u64) -> Option<u64> {
    if windows.is_empty() {
        return None;
    }
    let now_active = active_at(windows, unix);
    let sow = second_of_week(unix);
    // Activity only changes at an occurrence's start or end; the schedule
    // repeats weekly, so the candidates within the next week are enough.
    let mut candidates: Vec<u64> = windows
        .iter()
        .flat_map(|w| {
            let len = w.len_secs();
            w.starts()
                .flat_map(move |s| [s, (s + len) % WEEK_SECS])
                .collect::<Vec<_>>()
        })
        .map(|b| {
            let delta = (b + WEEK_SECS - sow) % WEEK_SECS;
            unix.saturating_add(if delta == 0 { WEEK_SECS } else { delta })
        })
        .collect();
    candidates.sort_unstable();
    candidates.dedup();
    candidates
        .into_iter()
        .find(|&t| active_at(windows, t) != now_active)
}

impl fmt::Display for Window {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.days == ALL_DAYS {
            f.write_str("daily")?;
        } else {
            // Runs of consecutive days (Monday..Sunday, no wrap): three or
            // more as a range, shorter ones listed.
            let mut parts = Vec::new();
            let mut d = 0;
            while d < 7 {
                if self.days & (1 << d) == 0 {
                    d += 1;
                    continue;
                }
                let start = d;
                while d + 1 < 7 && self.days & (1 << (d + 1)) != 0 {
                    d += 1;
                }
                if d - start >= 2 {
                    parts.push(format!("{}-{}", DAY_NAMES[start], DAY_NAMES[d]));
                } else {
                    parts.extend((start..=d).map(|i| DAY_NAMES[i].to_string()));
                }
                d += 1;
            }
            f.write_str(&parts.join(","))?;
        }
        write!(
            f,
            " {:02}:{:02}-{:02}:{:02}",
            self.start_min / 60,
            self.start_min % 60,
            self.end_min / 60,
            self.end_min % 60
        )
    }
}

fn parse_day(s: &str) -> Option<usize> {
    DAY_NAMES.iter().position(|d| d.eq_ignore_ascii_case(s))
}

fn parse_hhmm(s: &str) -> Option<u16> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 || !h.bytes().chain(m.bytes()).all(|b| b.is_ascii_digit()) {
        return None;
    }
    let (h, m): (u16, u16) = (h.parse().ok()?, m.parse().ok()?);
    (h <= 24 && m < 60 && h * 60 + m <= MINUTES_PER_DAY).then_some(h * 60 + m)
}

impl FromStr for Window {
    type Err = WindowError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = |reason: String| WindowError {
            input: s.to_string(),
            reason,
        };
        let mut fields = s.split_whitespace();
        let (Some(days_s), Some(times_s), None) = (fields.next(), fields.next(), fields.next())
        else {
            return Err(err(
                "expected \"<days> HH:MM-HH:MM\", e.g. \"mon-fri 18:00-23:00\"".to_string(),
            ));
        };
        let days = if days_s.eq_ignore_ascii_case("daily") {
            ALL_DAYS
        } else {
            let mut days = 0u8;
            for item in days_s.split(',') {
                let bad_day = || {
                    err(format!(
                        "bad day {item:?}: expected daily, mon..sun, a range like mon-fri, or a comma list"
                    ))
                };
                let (a, b) = match item.split_once('-') {
                    Some((a, b)) => (
                        parse_day(a).ok_or_else(bad_day)?,
                        parse_day(b).ok_or_else(bad_day)?,
                    ),
                    None => {
                        let a = parse_day(item).ok_or_else(bad_day)?;
                        (a, a)
                    }
                };
                // A range may wrap around the week end (fri-mon).
                let mut d = a;
                loop {
                    if days & (1 << d) != 0 {
                        return Err(err(format!("day {} listed twice", DAY_NAMES[d])));
                    }
                    days |= 1 << d;
                    if d == b {
                        break;
                    }
                    d = (d + 1) % 7;
                }
            }
            days
        };
        let (start, end) = times_s
            .split_once('-')
            .and_then(|(a, b)| Some((parse_hhmm(a)?, parse_hhmm(b)?)))
            .ok_or_else(|| {
                err(format!(
                    "bad time range {times_s:?}: expected HH:MM-HH:MM, 00:00..=24:00"
                ))
            })?;
        if start == MINUTES_PER_DAY {
            return Err(err(
                "start 24:00: a window starts at 00:00..=23:59".to_string()
            ));
        }
        if start == end {
            return Err(err("start and end are equal (an empty window)".to_string()));
        }
        Ok(Window {
            days,
            start_min: start,
            end_min: end,
        })
    }
}

impl TryFrom<String> for Window {
    type Error = WindowError;

    fn try_from(s: String) -> Result<Self, Self::Error> {
        s.parse()
    }
}

impl From<Window> for String {
    fn from(w: Window) -> String {
        w.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// 2026-01-05 00:00 UTC, a Monday.
    const MONDAY: u64 = 1_767_571_200;
    const H: u64 = 3600;
    const D: u64 = 86_400;

    fn w(s: &str) -> Window {
        s.parse().unwrap()
    }

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(
            w("mon-fri 18:00-23:00"),
            Window::new(0x1f, 1080, 1380).unwrap()
        );
        assert_eq!(
            w("sat,sun 00:00-24:00"),
            Window::new(0x60, 0, 1440).unwrap()
        );
        assert_eq!(
            w("daily 22:00-02:00"),
            Window::new(0x7f, 1320, 120).unwrap()
        );
        assert_eq!(w("fri-mon 10:00-11:00").days(), 0b111_0001);
        assert_eq!(w("MON 10:00-11:00").days(), 1);
    }

    #[test]
    fn display_is_canonical() {
        assert_eq!(w("mon-fri 18:00-23:00").to_string(), "mon-fri 18:00-23:00");
        assert_eq!(w("sun,sat 00:00-24:00").to_string(), "sat,sun 00:00-24:00");
        assert_eq!(w("mon-sun 22:00-02:00").to_string(), "daily 22:00-02:00");
        assert_eq!(
            w("fri-mon 10:00-11:00").to_string(),
            "mon,fri-sun 10:00-11:00"
        );
        assert_eq!(
            w("mon,wed,thu 09:05-10:00").to_string(),
            "mon,wed,thu 09:05-10:00"
        );
    }

    #[test]
    fn rejects_bad_windows_naming_the_part() {
        for (s, needle) in [
            ("", "expected"),
            ("mon", "expected"),
            ("mon 10:00-11:00 x", "expected"),
            ("mun 10:00-11:00", "mun"),
            ("mon,mon 10:00-11:00", "twice"),
            ("mon-fri,wed 10:00-11:00", "twice"),
            ("mon 10:00", "10:00"),
            ("mon 1:00-2:00", "1:00-2:00"),
            ("mon 10:60-11:00", "10:60"),
            ("mon 24:00-01:00", "24:00"),
            ("mon 10:00-24:01", "24:01"),
            ("mon 10:00-10:00", "equal"),
            ("mon -1:00-02:00", "-1:00"),
        ] {
            let e = s.parse::<Window>().unwrap_err().to_string();
            assert!(e.contains(needle), "{s:?}: {e}");
        }
        assert!(Window::new(0, 0, 60).is_err());
        assert!(Window::new(0x80, 0, 60).is_err());
        assert!(Window::new(1, 1440, 60).is_err());
        assert!(Window::new(1, 0, 1441).is_err());
    }

    #[test]
    fn serde_uses_the_string_form() {
        let ws = vec![w("mon-fri 18:00-23:00")];
        let json = serde_json::to_string(&ws).unwrap();
        assert_eq!(json, r#"["mon-fri 18:00-23:00"]"#);
        assert_eq!(serde_json::from_str::<Vec<Window>>(&json).unwrap(), ws);
        assert!(serde_json::from_str::<Window>(r#""mon 25:00-01:00""#).is_err());
    }

    #[test]
    fn empty_list_is_always_active_and_never_changes() {
        assert!(active_at(&[], MONDAY));
        assert_eq!(next_change(&[], MONDAY), None);
        let always = [w("daily 00:00-24:00")];
        assert!(active_at(&always, MONDAY + 5 * D + 7));
        assert_eq!(next_change(&always, MONDAY), None);
    }

    #[test]
    fn evening_window_on_weekdays() {
        let ws = [w("mon-fri 18:00-23:00")];
        assert!(!active_at(&ws, MONDAY + 18 * H - 1));
        assert!(active_at(&ws, MONDAY + 18 * H));
        assert!(active_at(&ws, MONDAY + 23 * H - 1));
        assert!(!active_at(&ws, MONDAY + 23 * H));
        assert!(!active_at(&ws, MONDAY + 5 * D + 19 * H)); // Saturday
        assert_eq!(next_change(&ws, MONDAY), Some(MONDAY + 18 * H));
        assert_eq!(next_change(&ws, MONDAY + 18 * H), Some(MONDAY + 23 * H));
        // Friday 23:00 → next start is the following Monday 18:00.
        assert_eq!(
            next_change(&ws, MONDAY + 4 * D + 23 * H),
            Some(MONDAY + 7 * D + 18 * H)
        );
    }

    #[test]
    fn across_midnight_belongs_to_the_start_day() {
        let ws = [w("mon 22:00-02:00")];
        assert!(active_at(&ws, MONDAY + 23 * H));
        assert!(active_at(&ws, MONDAY + D + H)); // Tuesday 01:00
        assert!(!active_at(&ws, MONDAY + D + 2 * H));
        assert!(!active_at(&ws, MONDAY + H)); // Monday 01:00: Sunday did not start one
        assert_eq!(next_change(&ws, MONDAY + 23 * H), Some(MONDAY + D + 2 * H));
    }

    #[test]
    fn sunday_night_wraps_into_monday_of_the_next_week() {
        let ws = [w("sun 22:00-02:00")];
        let sunday = MONDAY + 6 * D;
        assert!(active_at(&ws, sunday + 22 * H));
        assert!(active_at(&ws, MONDAY + 7 * D + H)); // next Monday 01:00
        assert!(active_at(&ws, MONDAY + H)); // this Monday 01:00: last Sunday's
        assert!(!active_at(&ws, MONDAY + 2 * H));
        assert_eq!(
            next_change(&ws, sunday + 23 * H),
            Some(MONDAY + 7 * D + 2 * H)
        );
        assert_eq!(next_change(&ws, MONDAY + 2 * H), Some(sunday + 22 * H));
    }

    #[test]
    fn adjacent_windows_merge_for_next_change() {
        // Saturday 00:00-24:00 and Sunday 00:00-24:00 touch: one active span.
        let ws = [w("sat,sun 00:00-24:00")];
        let saturday = MONDAY + 5 * D;
        assert_eq!(next_change(&ws, saturday + H), Some(MONDAY + 7 * D));
        assert_eq!(next_change(&ws, MONDAY), Some(saturday));
    }

    fn any_window() -> impl Strategy<Value = Window> {
        (1u8..=0x7f, 0u16..1440, 0u16..=1440)
            .prop_filter_map("valid", |(d, s, e)| Window::new(d, s, e).ok())
    }

    proptest! {
        #[test]
        fn display_then_parse_is_identity(win in any_window()) {
            prop_assert_eq!(win.to_string().parse::<Window>(), Ok(win));
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Window>();
        }

        #[test]
        fn next_change_is_the_first_flip(
            ws in proptest::collection::vec(any_window(), 0..4),
            t in 0u64..4_000_000_000,
        ) {
            let now = active_at(&ws, t);
            match next_change(&ws, t) {
                Some(c) => {
                    prop_assert!(c > t);
                    prop_assert_ne!(active_at(&ws, c), now);
                    // Activity is constant between minute boundaries; check
                    // each minute start before the change.
                    let mut m = t - t % 60 + 60;
                    while m < c {
                        prop_assert_eq!(active_at(&ws, m), now, "flip at {} before {}", m, c);
                        m += 60;
                    }
                }
                None => {
                    for k in 0..(7 * 24) {
                        prop_assert_eq!(active_at(&ws, t + k * 3600), now);
                    }
                }
            }
        }
    }
}
