//! The clock: now, and the calendar windows limits count in (UTC minutes and months), in one place
//! so every limiter and store agrees.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 if the system clock is before it).
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Milliseconds since the Unix epoch (0 if the system clock is before it).
pub fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Days since 1970-01-01 to (year, month), by Howard Hinnant's civil-from-days algorithm; a date
/// crate would be the only reason to pull one in.
fn civil_from_days(days: i64) -> (i64, u32) {
    let (year, month, _) = date_from_days(days);
    (year, month)
}

/// Days since 1970-01-01 to (year, month, day of the month).
fn date_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, (doy - (153 * mp + 2) / 5 + 1) as u32)
}

/// (year, month) to days since 1970-01-01 of its first day; the inverse of the above.
fn days_from_civil(year: i64, month: u32) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The UTC calendar day of a time, as days since 1970-01-01.
pub fn day_of(now_secs: u64) -> u32 {
    u32::try_from(now_secs / 86_400).unwrap_or(u32::MAX)
}

/// A day (days since 1970-01-01) as `YYYY-MM-DD`.
pub fn format_day(day: u32) -> String {
    let (year, month, day) = date_from_days(i64::from(day));
    format!("{year:04}-{month:02}-{day:02}")
}

/// `YYYY-MM-DD` (a real calendar date, from 1970 on) to days since 1970-01-01.
pub fn parse_day(text: &str) -> Option<u32> {
    let bytes = text.as_bytes();
    if bytes.len() != 10 || bytes.get(4) != Some(&b'-') || bytes.get(7) != Some(&b'-') {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u32> {
        let part = text.get(range)?;
        part.bytes()
            .all(|b| b.is_ascii_digit())
            .then(|| part.parse().ok())?
    };
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if year < 1970 || !(1..=12).contains(&month) || day == 0 {
        return None;
    }
    let first = days_from_civil(i64::from(year), month);
    let days = first + i64::from(day) - 1;
    // A day past the month's end lands in the next month.
    (date_from_days(days).1 == month).then(|| u32::try_from(days).ok())?
}

/// The UTC calendar month of a time, as YYYYMM.
pub fn month_of(now_secs: u64) -> u32 {
    let (year, month) = civil_from_days((now_secs / 86_400) as i64);
    year as u32 * 100 + month
}

/// Epoch seconds at the start of the YYYYMM `month`.
pub fn month_start_secs(month: u32) -> u64 {
    let days = days_from_civil(i64::from(month / 100), month % 100);
    u64::try_from(days).unwrap_or(0) * 86_400
}

pub fn secs_until_next_month(now_secs: u64) -> u64 {
    let (year, month) = civil_from_days((now_secs / 86_400) as i64);
    let (next_year, next_month) = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    let start = days_from_civil(next_year, next_month) as u64 * 86_400;
    start.saturating_sub(now_secs).max(1)
}
