//! When to try a click again: capped exponential backoff with full jitter ("Exponential Backoff And Jitter",
//! AWS Architecture Blog), never earlier than the partner's Retry-After.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

/// The wait after the `attempt`-th failed attempt (1 for the first): a uniform draw from
/// `[0, min(max_ms, base_ms * 2^(attempt-1)))`, with `random` the draw in `[0, 1)` (an input, so it is testable;
/// values outside are clamped, NaN counts as 0). Full jitter spreads the retries of clicks that failed together
/// (a partner's outage) instead of sending them back as one burst.
pub fn backoff(attempt: u32, base_ms: u32, max_ms: u32, random: f64) -> Duration {
    let exponent = attempt.saturating_sub(1).min(63);
    let ceiling = u64::from(base_ms).saturating_mul(1u64 << exponent).min(u64::from(max_ms));
    let random = if random.is_nan() { 0.0 } else { random.clamp(0.0, 1.0) };
    // `as` saturates; the product is within [0, ceiling].
    Duration::from_millis((ceiling as f64 * random) as u64)
}

/// The next attempt's time: `now + backoff`, but not before the partner's `retry_after`.
pub fn next_attempt_at(now: DateTime<Utc>, backoff: Duration, retry_after: Option<DateTime<Utc>>) -> DateTime<Utc> {
    let by_backoff =
        TimeDelta::from_std(backoff).ok().and_then(|d| now.checked_add_signed(d)).unwrap_or(DateTime::<Utc>::MAX_UTC);
    retry_after.map_or(by_backoff, |r| r.max(by_backoff))
}

/// Whether a click that has been tried `attempts` times is out of attempts (dead-letter it).
pub fn attempts_exhausted(attempts: u32, max_attempts: u32) -> bool {
    attempts >= max_attempts.max(1)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn doubles_up_to_the_cap_with_full_jitter() {
        let ms = |attempt, random| backoff(attempt, 1000, 60_000, random).as_millis();
        assert_eq!(ms(1, 0.999_999), 999);
        assert_eq!(ms(2, 0.5), 1000);
        assert_eq!(ms(3, 0.5), 2000);
        assert_eq!(ms(6, 0.5), 16_000);
        assert_eq!(ms(7, 0.5), 30_000, "64 s capped at 60 s");
        assert_eq!(ms(200, 0.5), 30_000, "no overflow however many attempts");
        assert_eq!(ms(0, 0.5), 500, "attempt 0 reads as the first");
        assert_eq!(ms(5, 0.0), 0, "full jitter may retry at once");
        assert_eq!(ms(5, f64::NAN), 0);
        assert_eq!(ms(5, 7.0), 16_000, "random is clamped to [0, 1]");
        assert_eq!(backoff(40, u32::MAX, u32::MAX, 1.0).as_millis(), u128::from(u32::MAX));
    }

    #[test]
    fn the_mean_grows_and_stays_under_the_ceiling() {
        for attempt in 1..12 {
            let draws: Vec<u128> =
                (0..100).map(|i| backoff(attempt, 100, 10_000, f64::from(i) / 100.0).as_millis()).collect();
            let ceiling = (100u128 << (attempt - 1)).min(10_000);
            assert!(draws.iter().all(|d| *d < ceiling), "attempt {attempt}");
            let mean = draws.iter().sum::<u128>() / 100;
            assert!(mean.abs_diff(ceiling / 2) <= ceiling / 50 + 1, "attempt {attempt}: mean {mean}");
        }
    }

    #[test]
    fn retry_after_wins_when_later() {
        let now = Utc.with_ymd_and_hms(2026, 11, 28, 10, 0, 0).unwrap();
        let two = Duration::from_secs(2);
        assert_eq!(next_attempt_at(now, two, None), now + TimeDelta::seconds(2));
        assert_eq!(next_attempt_at(now, two, Some(now + TimeDelta::seconds(30))), now + TimeDelta::seconds(30));
        assert_eq!(next_attempt_at(now, two, Some(now + TimeDelta::seconds(1))), now + TimeDelta::seconds(2));
    }

    #[test]
    fn attempts_run_out() {
        assert!(!attempts_exhausted(1, 8));
        assert!(attempts_exhausted(8, 8));
        assert!(attempts_exhausted(1, 0), "zero attempts allowed reads as one");
    }
}
