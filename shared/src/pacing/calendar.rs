//! Local-day arithmetic in a campaign's IANA time zone.
//!
//! Daily caps, daily budgets and dayparts are promised in the campaign's wall-clock time, while everything the
//! system stores and compares is a UTC instant. These functions translate between the two without ever assuming
//! that a day lasts 24 hours or that midnight exists:
//!
//! - A local day is the half-open UTC interval from the first instant whose local date is D to the first instant
//!   whose local date is after D. That is 23 or 25 hours on DST changes, 23.5 or 24.5 in Australia/Lord_Howe, and
//!   whatever a zone's history says elsewhere (Pacific/Apia skipped 30 December 2011 altogether).
//! - When local midnight does not exist (zones that spring forward at midnight, such as America/Santiago or
//!   Asia/Beirut), the day starts at the first instant that does exist; when midnight happens twice (zones that
//!   fall back onto midnight, such as America/Havana), the day starts at the earlier one. In both cases the day
//!   starts at the earliest valid instant, so a cap can never reset twice in one local date.
//! - A local hour is a maximal UTC interval with one wall-clock hour and one UTC offset. A repeated hour on a
//!   fall-back day is therefore two spans, and a partially skipped hour (Lord_Howe, Pacific/Chatham) is a short one.
//!
//! Instants are handled to the whole second where zones are concerned: tz offsets and transitions are whole seconds.

use chrono::{DateTime, Duration, LocalResult, NaiveDate, NaiveTime, Offset, TimeZone, Timelike, Utc};
use chrono_tz::Tz;

/// How far around an instant the day-boundary search looks. No local day in the tz database lasts more than
/// 48 hours, so three days always bracket the boundary.
const SEARCH_SECS: i64 = 3 * 86_400;

/// Margin kept from the ends of chrono's range: adding a zone offset or a search span to an instant there would
/// overflow (and chrono panics on that), and the pacer must answer whatever timestamp a row holds.
const EDGE_SECS: i64 = 8 * 86_400;

/// The campaign's local calendar date at `at`.
pub fn local_date(tz: Tz, at: DateTime<Utc>) -> NaiveDate {
    clamp(at).with_timezone(&tz).date_naive()
}

/// The campaign's wall-clock hour (0..24) at `at`: the index into an hourly pacing curve.
pub fn local_hour(tz: Tz, at: DateTime<Utc>) -> u32 {
    clamp(at).with_timezone(&tz).hour()
}

/// One local calendar day, as the UTC interval `[start, end)` it occupies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalDay {
    pub date: NaiveDate,
    /// The earliest instant whose local date is `date`.
    pub start: DateTime<Utc>,
    /// The start of the next local day (exclusive end of this one): when daily counters reset.
    pub end: DateTime<Utc>,
}

impl LocalDay {
    /// The local day `at` falls in.
    pub fn containing(tz: Tz, at: DateTime<Utc>) -> Self {
        let at = clamp(at);
        let date = local_date(tz, at);
        let at_s = at.timestamp();
        let start = first_second_on_or_after(tz, date, at_s - SEARCH_SECS, at_s);
        let end = match date.succ_opt() {
            Some(next) => first_second_on_or_after(tz, next, at_s, at_s + SEARCH_SECS),
            None => at_s + SEARCH_SECS,
        };
        Self { date, start: at_secs(start), end: at_secs(end) }
    }

    /// The local day of `date`; `None` when the zone skipped that date (Pacific/Apia, 30 December 2011).
    pub fn on(tz: Tz, date: NaiveDate) -> Option<Self> {
        // Local noon is within 14 hours of UTC noon in every zone, so one of these instants falls on `date`.
        let noon = date.and_hms_opt(12, 0, 0)?.and_utc();
        [0, -14, 14].into_iter().map(|h| Self::containing(tz, noon + Duration::hours(h))).find(|day| day.date == date)
    }

    /// The local day after this one (which may not be `date + 1` where a zone skipped a date).
    pub fn following(&self, tz: Tz) -> Self {
        Self::containing(tz, self.end)
    }

    /// Real elapsed time of the day: 23 or 25 hours on DST changes.
    pub fn length(&self) -> Duration {
        self.end - self.start
    }

    pub fn contains(&self, at: DateTime<Utc>) -> bool {
        self.start <= at && at < self.end
    }

    /// The local hours of the day in order, covering `[start, end)` without gaps or overlaps.
    pub fn hours(&self, tz: Tz) -> Vec<LocalHour> {
        let (mut s, end) = (self.start.timestamp(), self.end.timestamp());
        let mut hours = Vec::with_capacity(26);
        // A day has at most ~50 hour spans (48-hour day with transitions); the bound only guards against a zone
        // database that would make no progress.
        while s < end && hours.len() < 128 {
            let e = hour_end(tz, s).min(end);
            if e <= s {
                break;
            }
            hours.push(LocalHour { hour: hour_label(tz, s), start: at_secs(s), end: at_secs(e) });
            s = e;
        }
        hours
    }
}

/// One span of a wall-clock hour at one UTC offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct LocalHour {
    /// Wall-clock hour, 0..24.
    pub hour: u32,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
}

impl LocalHour {
    /// The local hour span `at` falls in.
    pub fn containing(tz: Tz, at: DateTime<Utc>) -> Self {
        let s = clamp(at).timestamp();
        Self { hour: hour_label(tz, s), start: at_secs(hour_start(tz, s)), end: at_secs(hour_end(tz, s)) }
    }

    pub fn length(&self) -> Duration {
        self.end - self.start
    }
}

/// `at`, moved inside the range where zone arithmetic cannot overflow.
pub(crate) fn clamp(at: DateTime<Utc>) -> DateTime<Utc> {
    let s = at.timestamp();
    if s < earliest_secs() {
        at_secs(earliest_secs())
    } else if s > latest_secs() {
        at_secs(latest_secs())
    } else {
        at
    }
}

/// The instant `secs` seconds after the Unix epoch, clamped into the supported range.
pub(crate) fn at_secs(secs: i64) -> DateTime<Utc> {
    let secs = secs.clamp(earliest_secs(), latest_secs());
    DateTime::from_timestamp(secs, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// The instant `ms` milliseconds after the Unix epoch, clamped into the supported range.
pub(crate) fn at_millis(ms: i64) -> DateTime<Utc> {
    let ms = ms.clamp(earliest_secs().saturating_mul(1000), latest_secs().saturating_mul(1000));
    DateTime::from_timestamp_millis(ms).unwrap_or(DateTime::UNIX_EPOCH)
}

fn earliest_secs() -> i64 {
    DateTime::<Utc>::MIN_UTC.timestamp() + EDGE_SECS
}

fn latest_secs() -> i64 {
    DateTime::<Utc>::MAX_UTC.timestamp() - EDGE_SECS
}

fn offset_secs(tz: Tz, secs: i64) -> i64 {
    i64::from(tz.offset_from_utc_datetime(&at_secs(secs).naive_utc()).fix().local_minus_utc())
}

fn hour_label(tz: Tz, secs: i64) -> u32 {
    local_hour(tz, at_secs(secs))
}

/// The first second `s` in `(lo, hi]` whose local date is on or after `date`, given that `lo`'s is before it and
/// `hi`'s is not. Local dates only move forward in every zone the tz database describes, so this is a boundary.
fn first_second_on_or_after(tz: Tz, date: NaiveDate, lo: i64, hi: i64) -> i64 {
    let reached = |s: i64| local_date(tz, at_secs(s)) >= date;
    // Fast path: local midnight, or its earlier occurrence when it happens twice.
    let midnight = match tz.from_local_datetime(&date.and_time(NaiveTime::MIN)) {
        LocalResult::Single(t) => Some(t.timestamp()),
        LocalResult::Ambiguous(a, b) => Some(a.timestamp().min(b.timestamp())),
        LocalResult::None => None,
    };
    if let Some(m) = midnight
        && lo < m
        && m <= hi
        && reached(m)
        && !reached(m - 1)
    {
        return m;
    }
    // Midnight is skipped (or the zone is unusual): bisect for the boundary.
    first_true(lo, hi, reached)
}

/// Bisects for the first second in `(lo, hi]` where `pred` holds, assuming it is false at `lo`, true at `hi`, and
/// changes once in between. Returns `hi` when the assumptions do not hold, which keeps callers' intervals non-empty.
fn first_true(mut lo: i64, mut hi: i64, pred: impl Fn(i64) -> bool) -> i64 {
    if pred(lo) || !pred(hi) {
        return hi;
    }
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if pred(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    hi
}

/// End of the local hour span containing second `s`: the next wall-clock hour boundary at the current offset, or
/// the offset transition before it.
fn hour_end(tz: Tz, s: i64) -> i64 {
    let offset = offset_secs(tz, s);
    let local = s + offset;
    let boundary = (local.div_euclid(3600) + 1) * 3600 - offset;
    if offset_secs(tz, boundary - 1) == offset {
        boundary
    } else {
        first_true(s, boundary - 1, |t| offset_secs(tz, t) != offset)
    }
}

/// Start of the local hour span containing second `s`: the wall-clock hour boundary at the current offset, or
/// the offset transition after it.
fn hour_start(tz: Tz, s: i64) -> i64 {
    let offset = offset_secs(tz, s);
    let local = s + offset;
    let boundary = local.div_euclid(3600) * 3600 - offset;
    if offset_secs(tz, boundary) == offset {
        boundary
    } else {
        first_true(boundary, s, |t| offset_secs(tz, t) == offset)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_day_is_found_by_its_date_in_any_zone_except_a_skipped_one() {
        for tz in [chrono_tz::Pacific::Kiritimati, chrono_tz::Pacific::Pago_Pago, chrono_tz::America::New_York] {
            let date = NaiveDate::from_ymd_opt(2026, 3, 8).unwrap();
            assert_eq!(LocalDay::on(tz, date).unwrap().date, date, "{tz}");
        }
        assert_eq!(LocalDay::on(chrono_tz::Pacific::Apia, NaiveDate::from_ymd_opt(2011, 12, 30).unwrap()), None);
    }

    use chrono::TimeZone;
    use chrono_tz::{America, Asia, Australia, Europe, Pacific};

    use super::*;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
    }

    fn day(tz: Tz, at: DateTime<Utc>) -> LocalDay {
        LocalDay::containing(tz, at)
    }

    #[test]
    fn new_york_spring_forward_day_has_23_hours() {
        let d = day(America::New_York, utc(2024, 3, 10, 12, 0));
        assert_eq!(d.date, NaiveDate::from_ymd_opt(2024, 3, 10).unwrap());
        assert_eq!(d.start, utc(2024, 3, 10, 5, 0));
        assert_eq!(d.end, utc(2024, 3, 11, 4, 0));
        assert_eq!(d.length(), Duration::hours(23));
        let hours: Vec<u32> = d.hours(America::New_York).iter().map(|h| h.hour).collect();
        assert_eq!(hours, [0, 1].into_iter().chain(3..24).collect::<Vec<_>>());
    }

    #[test]
    fn new_york_fall_back_day_has_25_hours_with_hour_one_twice() {
        let d = day(America::New_York, utc(2024, 11, 3, 12, 0));
        assert_eq!(d.start, utc(2024, 11, 3, 4, 0));
        assert_eq!(d.end, utc(2024, 11, 4, 5, 0));
        assert_eq!(d.length(), Duration::hours(25));
        let hours = d.hours(America::New_York);
        assert_eq!(hours.len(), 25);
        assert_eq!((hours[1].hour, hours[2].hour), (1, 1));
        assert!(hours.iter().all(|h| h.length() == Duration::hours(1)));
        assert!(hours.windows(2).all(|w| w[0].end == w[1].start));
    }

    #[test]
    fn day_boundaries_are_exact_at_the_second() {
        let tz = America::New_York;
        let midnight = utc(2024, 3, 10, 5, 0);
        assert_eq!(day(tz, midnight - Duration::seconds(1)).date, NaiveDate::from_ymd_opt(2024, 3, 9).unwrap());
        assert_eq!(day(tz, midnight - Duration::milliseconds(1)).end, midnight);
        assert_eq!(day(tz, midnight).start, midnight);
        assert_eq!(day(tz, midnight).following(tz).start, utc(2024, 3, 11, 4, 0));
    }

    #[test]
    fn missing_midnight_starts_the_day_at_the_first_valid_instant() {
        // Santiago springs forward at 00:00 -04 to 01:00 -03 on 2024-09-08.
        let d = day(America::Santiago, utc(2024, 9, 8, 12, 0));
        assert_eq!(d.start, utc(2024, 9, 8, 4, 0));
        assert_eq!(d.start.with_timezone(&America::Santiago).hour(), 1);
        assert_eq!(d.length(), Duration::hours(23));
        // Beirut sprang forward at 00:00 +02 to 01:00 +03 on 2022-03-27.
        let d = day(Asia::Beirut, utc(2022, 3, 27, 12, 0));
        assert_eq!(d.start, utc(2022, 3, 26, 22, 0));
        assert_eq!(d.length(), Duration::hours(23));
    }

    #[test]
    fn repeated_midnight_starts_the_day_at_the_earlier_instant() {
        // Havana falls back at 01:00 -04 to 00:00 -05 on 2024-11-03: midnight happens twice.
        let d = day(America::Havana, utc(2024, 11, 3, 12, 0));
        assert_eq!(d.start, utc(2024, 11, 3, 4, 0));
        assert_eq!(d.length(), Duration::hours(25));
        // Santiago falls back at 24:00 -03 to 23:00 -04 on 2024-04-06: that day has 25 hours.
        let d = day(America::Santiago, utc(2024, 4, 6, 12, 0));
        assert_eq!((d.start, d.end), (utc(2024, 4, 6, 3, 0), utc(2024, 4, 7, 4, 0)));
    }

    #[test]
    fn a_skipped_date_is_stepped_over() {
        // Samoa skipped 2011-12-30, moving from -10 to +14 at the end of the 29th.
        let tz = Pacific::Apia;
        let d = day(tz, utc(2011, 12, 30, 0, 0));
        assert_eq!(d.date, NaiveDate::from_ymd_opt(2011, 12, 29).unwrap());
        let next = d.following(tz);
        assert_eq!(next.date, NaiveDate::from_ymd_opt(2011, 12, 31).unwrap());
        assert_eq!(next.start, d.end);
    }

    #[test]
    fn half_hour_and_three_quarter_zones_have_short_hour_spans() {
        // Lord Howe moves 02:00 +10:30 -> 02:30 +11 on 2024-10-06: hour 2 lasts 30 minutes.
        let d = day(Australia::Lord_Howe, utc(2024, 10, 6, 6, 0));
        assert_eq!(d.length(), Duration::minutes(23 * 60 + 30));
        let h2 = d.hours(Australia::Lord_Howe).into_iter().find(|h| h.hour == 2).unwrap();
        assert_eq!(h2.length(), Duration::minutes(30));
        // Chatham moves 02:45 +12:45 -> 03:45 +13:45 on 2024-09-29: hour 2 lasts 45 minutes, hour 3 15.
        let d = day(Pacific::Chatham, utc(2024, 9, 29, 0, 0));
        let hours = d.hours(Pacific::Chatham);
        assert_eq!(hours[2].length(), Duration::minutes(45));
        assert_eq!((hours[3].hour, hours[3].length()), (3, Duration::minutes(15)));
        assert_eq!(hours.len(), 24);
        // Kolkata never changes: 24 one-hour spans starting at 18:30 UTC.
        let d = day(Asia::Kolkata, utc(2024, 6, 1, 0, 0));
        assert_eq!(d.start, utc(2024, 5, 31, 18, 30));
        assert_eq!(d.hours(Asia::Kolkata).len(), 24);
    }

    #[test]
    fn hour_span_containing_an_instant_splits_at_transitions() {
        // Lord Howe falls back 02:00 +11 -> 01:30 +10:30 on 2024-04-07 (15:00 UTC on the 6th).
        let tz = Australia::Lord_Howe;
        let after = LocalHour::containing(tz, utc(2024, 4, 6, 15, 10));
        assert_eq!(after.hour, 1);
        assert_eq!((after.start, after.end), (utc(2024, 4, 6, 15, 0), utc(2024, 4, 6, 15, 30)));
        let before = LocalHour::containing(tz, utc(2024, 4, 6, 14, 59));
        assert_eq!((before.hour, before.start, before.end), (1, utc(2024, 4, 6, 14, 0), utc(2024, 4, 6, 15, 0)));
        assert_eq!(local_hour(Europe::Berlin, utc(2024, 3, 31, 1, 0)), 3);
    }

    #[test]
    fn extreme_instants_do_not_panic() {
        for tz in [Pacific::Kiritimati, America::New_York, Tz::UTC] {
            for at in [DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC] {
                let d = day(tz, at);
                assert!(d.start <= d.end);
                let _ = d.hours(tz);
                let _ = LocalHour::containing(tz, at);
            }
        }
    }
}
