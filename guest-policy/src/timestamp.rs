//! Converts TOML offset date-times into `SystemTime`.
//!
//! Policy times must carry a UTC offset (`2026-11-01T09:00:00Z`): a local
//! time would mean different instants on machines in different zones.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use toml::value::{Datetime, Offset};

/// Converts an offset date-time; the error says what would be valid.
pub(crate) fn to_system_time(datetime: &Datetime) -> Result<SystemTime, String> {
    let (Some(date), Some(time), Some(offset)) = (datetime.date, datetime.time, datetime.offset)
    else {
        return Err(format!(
            "time {datetime} has no UTC offset; write a full date-time like 2026-11-01T09:00:00Z"
        ));
    };
    let days = days_from_civil(i64::from(date.year), date.month, date.day);
    let offset_seconds = match offset {
        Offset::Z => 0,
        Offset::Custom { minutes } => i64::from(minutes) * 60,
    };
    let seconds = days * 86_400
        + i64::from(time.hour) * 3_600
        + i64::from(time.minute) * 60
        + i64::from(time.second.unwrap_or(0))
        - offset_seconds;
    let seconds = u64::try_from(seconds)
        .map_err(|_| format!("time {datetime} is before 1970; use a current date"))?;
    Ok(UNIX_EPOCH + Duration::new(seconds, time.nanosecond.unwrap_or(0)))
}

/// Seconds since the Unix epoch, for messages and the state file.
pub(crate) fn unix_seconds(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |duration| duration.as_secs())
}

/// Formats a time as `YYYY-MM-DDTHH:MM:SSZ`.
pub(crate) fn format_utc(time: SystemTime) -> String {
    let seconds = unix_seconds(time);
    let days = (seconds / 86_400) as i64;
    let rest = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rest / 3_600,
        rest % 3_600 / 60,
        rest % 60
    )
}

// Howard Hinnant's days-from-civil algorithm (proleptic Gregorian calendar).
fn days_from_civil(year: i64, month: u8, day: u8) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year - era * 400;
    let month = i64::from(month);
    let shifted_month = if month > 2 { month - 3 } else { month + 9 };
    let day_of_year = (153 * shifted_month + 2) / 5 + i64::from(day) - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let shifted = days + 719_468;
    let era = shifted.div_euclid(146_097);
    let day_of_era = shifted - era * 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    // day_of_year is 0..=365 and shifted_month 0..=11, so the day is
    // 1..=31 and the month 1..=12.
    #[allow(clippy::cast_possible_truncation)]
    let (day, month) = (
        (day_of_year - (153 * shifted_month + 2) / 5 + 1) as u32,
        if shifted_month < 10 {
            shifted_month + 3
        } else {
            shifted_month - 9
        } as u32,
    );
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Datetime {
        text.parse().unwrap()
    }

    #[test]
    fn known_instants() {
        let time = to_system_time(&parse("2026-11-01T09:00:00Z")).unwrap();
        assert_eq!(unix_seconds(time), 1_793_523_600);
        assert_eq!(format_utc(time), "2026-11-01T09:00:00Z");
        let shifted = to_system_time(&parse("2026-11-01T10:30:00+01:30")).unwrap();
        assert_eq!(shifted, time);
        let leap = to_system_time(&parse("2024-02-29T00:00:00Z")).unwrap();
        assert_eq!(format_utc(leap), "2024-02-29T00:00:00Z");
    }

    #[test]
    fn local_times_and_dates_are_refused() {
        for text in ["2026-11-01T09:00:00", "2026-11-01", "09:00:00"] {
            let error = to_system_time(&parse(text)).unwrap_err();
            assert!(error.contains("has no UTC offset"), "{error}");
        }
        assert!(to_system_time(&parse("1969-12-31T23:59:59Z")).is_err());
    }
}
