//! Rollups: what happened to a campaign's clicks per UTC minute and per UTC hour, added to by every transaction
//! that records an outcome, so that a month of statistics is a few hundred bucket rows, never the clicks.

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, Utc};
use serde::Serialize;

use super::histogram::{LatencyHistogram, LatencySummary};

/// The width of a rollup bucket. Buckets are aligned to UTC, so a local hour of a zone 30 or 45 minutes off UTC
/// is read from minute buckets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum Granularity {
    Minute,
    Hour,
}

impl Granularity {
    pub const ALL: [Self; 2] = [Self::Minute, Self::Hour];

    pub fn step(self) -> Duration {
        match self {
            Self::Minute => Duration::minutes(1),
            Self::Hour => Duration::hours(1),
        }
    }

    /// The longest span one query may ask for: a week of minutes, a quarter of hours (a few thousand points).
    pub fn max_span(self) -> Duration {
        match self {
            Self::Minute => Duration::days(7),
            Self::Hour => Duration::days(93),
        }
    }

    /// The start of the bucket `at` falls in.
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        at.duration_trunc(self.step()).unwrap_or(at)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Minute => "minute",
            Self::Hour => "hour",
        }
    }
}

/// How one delivery attempt ended, for the rollups.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttemptOutcome {
    Delivered,
    /// Failed, to be tried again.
    Retrying,
    /// Failed for the last time: the click is dead.
    Dead,
}

/// One recorded attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    pub at: DateTime<Utc>,
    pub outcome: AttemptOutcome,
    pub http_status: Option<u16>,
    pub latency_ms: Option<u32>,
}

/// What one bucket counts.
///
/// - `released`: clicks the pacer released (sent to the click queue) for this bucket; a release the pacer took
///   back (never sent, or its message lost) is taken off again, as the day ledger does.
/// - `delivered`: clicks the partner accepted; `spend_micros` is their cost at the price their release reserved.
/// - `failed`: attempts that did not deliver (each retry counts), of which `throttled` were answered 429.
/// - `dead`: clicks that failed for the last time.
/// - latency: of every attempt that got an answer or timed out, as a histogram with its exact sum.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub released: i64,
    pub delivered: i64,
    pub failed: i64,
    pub throttled: i64,
    pub dead: i64,
    pub spend_micros: i64,
    pub latency_sum_ms: i64,
    pub latency: LatencyHistogram,
}

impl Counts {
    pub fn add_attempt(&mut self, attempt: &Attempt) {
        match attempt.outcome {
            AttemptOutcome::Delivered => self.delivered += 1,
            AttemptOutcome::Retrying | AttemptOutcome::Dead => {
                self.failed += 1;
                if attempt.http_status == Some(429) {
                    self.throttled += 1;
                }
                if attempt.outcome == AttemptOutcome::Dead {
                    self.dead += 1;
                }
            }
        }
        if let Some(ms) = attempt.latency_ms {
            self.latency.record(ms);
            self.latency_sum_ms += i64::from(ms);
        }
    }

    pub fn merge(&mut self, other: &Self) {
        self.released += other.released;
        self.delivered += other.delivered;
        self.failed += other.failed;
        self.throttled += other.throttled;
        self.dead += other.dead;
        self.spend_micros += other.spend_micros;
        self.latency_sum_ms += other.latency_sum_ms;
        self.latency.merge(&other.latency);
    }

    pub fn point(&self, start: DateTime<Utc>) -> StatsPoint {
        StatsPoint {
            start,
            released: self.released,
            delivered: self.delivered,
            failed: self.failed,
            throttled: self.throttled,
            dead: self.dead,
            spend_micros: self.spend_micros,
            latency: self.latency.summary(self.latency_sum_ms),
        }
    }
}

/// The attempts of one delivery pass, per minute and per hour bucket they fall in.
pub fn tally(attempts: &[Attempt]) -> BTreeMap<(Granularity, DateTime<Utc>), Counts> {
    let mut buckets: BTreeMap<(Granularity, DateTime<Utc>), Counts> = BTreeMap::new();
    for attempt in attempts {
        for granularity in Granularity::ALL {
            buckets.entry((granularity, granularity.start_of(attempt.at))).or_default().add_attempt(attempt);
        }
    }
    buckets
}

/// One bucket of a series, as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct StatsPoint {
    /// The bucket's start (UTC).
    pub start: DateTime<Utc>,
    pub released: i64,
    pub delivered: i64,
    pub failed: i64,
    pub throttled: i64,
    pub dead: i64,
    pub spend_micros: i64,
    /// Absent when no attempt in the bucket took time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency: Option<LatencySummary>,
}

/// A dense series over `[from, to)` (every bucket present, empty ones as zeros; `from` rounded down to its bucket)
/// from stored buckets (several rows for one bucket, one per partner the campaign used, add up), with the totals.
pub fn series(
    granularity: Granularity,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    stored: impl IntoIterator<Item = (DateTime<Utc>, Counts)>,
) -> (Vec<StatsPoint>, StatsPoint) {
    let from = granularity.start_of(from);
    let mut by_start: BTreeMap<DateTime<Utc>, Counts> = BTreeMap::new();
    for (start, counts) in stored {
        by_start.entry(start).or_default().merge(&counts);
    }
    let mut total = Counts::default();
    let mut points = Vec::new();
    let mut start = from;
    while start < to {
        let counts = by_start.remove(&start).unwrap_or_default();
        total.merge(&counts);
        points.push(counts.point(start));
        start += granularity.step();
    }
    (points, total.point(from))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2026, 3, 8, h, m, s).unwrap()
    }

    fn attempt(at: DateTime<Utc>, outcome: AttemptOutcome, status: Option<u16>, ms: Option<u32>) -> Attempt {
        Attempt { at, outcome, http_status: status, latency_ms: ms }
    }

    #[test]
    fn a_pass_counts_each_attempt_in_its_minute_and_its_hour() {
        let attempts = [
            attempt(at(9, 59, 59), AttemptOutcome::Delivered, Some(200), Some(40)),
            attempt(at(10, 0, 1), AttemptOutcome::Retrying, Some(429), Some(5)),
            attempt(at(10, 0, 30), AttemptOutcome::Dead, Some(500), Some(7)),
            attempt(at(10, 0, 31), AttemptOutcome::Dead, None, None),
        ];
        let buckets = tally(&attempts);
        assert_eq!(buckets.len(), 4, "two minutes and two hours");
        let minute = &buckets[&(Granularity::Minute, at(10, 0, 0))];
        assert_eq!((minute.delivered, minute.failed, minute.throttled, minute.dead), (0, 3, 1, 2));
        assert_eq!((minute.latency.total(), minute.latency_sum_ms), (2, 12));
        let hour = &buckets[&(Granularity::Hour, at(9, 0, 0))];
        assert_eq!((hour.delivered, hour.failed), (1, 0));
    }

    #[test]
    fn a_series_is_dense_and_adds_up_rows_of_the_same_bucket() {
        let one = Counts { delivered: 2, spend_micros: 20, ..Counts::default() };
        let other = Counts { delivered: 3, released: 5, ..Counts::default() };
        let (points, total) = series(
            Granularity::Minute,
            at(10, 0, 30),
            at(10, 4, 0),
            [(at(10, 1, 0), one.clone()), (at(10, 1, 0), other), (at(10, 3, 0), one)],
        );
        let delivered: Vec<i64> = points.iter().map(|p| p.delivered).collect();
        assert_eq!(delivered, [0, 5, 0, 2]);
        assert_eq!(points[0].start, at(10, 0, 0));
        assert_eq!((total.delivered, total.released, total.spend_micros), (7, 5, 40));
        assert_eq!(total.start, at(10, 0, 0));
    }

    #[test]
    fn buckets_are_utc_aligned() {
        assert_eq!(Granularity::Hour.start_of(at(10, 59, 59)), at(10, 0, 0));
        assert_eq!(Granularity::Minute.start_of(at(10, 59, 59)), at(10, 59, 0));
    }
}
