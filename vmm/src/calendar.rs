//! Dates in the proleptic Gregorian calendar, as days since 1970-01-01 and
//! back, for the audit log's timestamps and the guest's real-time clock.
//! Both need the conversion without a time-zone database or a date crate.

/// Days since 1970-01-01 of a proleptic Gregorian date: years are counted
/// from March, so that the leap day ends a 400-year era's year.
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let year = if month <= 2 { year - 1 } else { year };
    let era = year.div_euclid(400);
    let year_of_era = year.rem_euclid(400);
    let month_from_march = (month + 9) % 12;
    let day_of_year = (153 * month_from_march + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// The inverse of [`days_from_civil`]: (year, month, day).
pub fn civil_from_days(days: i64) -> (i64, u8, u8) {
    let days = days + 719_468;
    let era = days.div_euclid(146_097);
    let day_of_era = days.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153;
    // day_of_year is 0..=365 and month_from_march 0..=11: the day is
    // 1..=31 and the month 1..=12.
    #[allow(clippy::cast_possible_truncation)]
    let (day, month) = (
        (day_of_year - (153 * month_from_march + 2) / 5 + 1) as u8,
        ((month_from_march + 2) % 12 + 1) as u8,
    );
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
