//! What the engine needs to know about the past: counters per local day, per rate window, and per partner.
//!
//! Every counter carries the day or window it belongs to, so a counter left over from an earlier day or window
//! reads as zero (rate windows are kept for every window still ahead, see [`WindowCounts`]). A pacer that loads a row written an hour ago therefore cannot be misled by it, and the rows can be
//! updated with a plain "reset if the key changed, then add" in the same transaction as the claim.

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::{at_millis, clamp, local_date};
use crate::domain::{Campaign, Micros, Partner};

/// A fixed UTC window for rate limits, aligned to the Unix epoch: `[12:34:56, 12:34:57)`, `[12:34, 12:35)`,
/// `[12:00, 13:00)`. Fixed rather than sliding windows because fixed windows are `(start, count)` pairs that the
/// claim's row lock keeps consistent; UTC rather than local because a rate is about the partner's load, not the
/// campaign's calendar (and local hours can be 30 minutes long).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RateWindow {
    Second,
    Minute,
    Hour,
}

impl RateWindow {
    pub fn length(self) -> Duration {
        Duration::milliseconds(self.millis())
    }

    /// The start of the window `at` falls in.
    pub fn start_of(self, at: DateTime<Utc>) -> DateTime<Utc> {
        at_millis(self.start_millis(clamp(at).timestamp_millis()))
    }

    pub(crate) fn millis(self) -> i64 {
        match self {
            Self::Second => 1_000,
            Self::Minute => 60_000,
            Self::Hour => 3_600_000,
        }
    }

    pub(crate) fn start_millis(self, at_ms: i64) -> i64 {
        at_ms.div_euclid(self.millis()) * self.millis()
    }
}

/// Clicks released per rate window, for every window still ahead: a run plans a minute of one-second slots, and
/// an overlapping run (another pacer holding other campaigns of the same partner, or the next run) must see each
/// of those seconds, not only the last one planned. Windows that ended are dropped when the counts are stored
/// ([`WindowCounts::forget_before`]).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(transparent)]
pub struct WindowCounts(Vec<(DateTime<Utc>, u64)>);

impl WindowCounts {
    /// Clicks released in the window starting at `window_start` (zero for a window nobody released in).
    pub fn released_in(&self, window_start: DateTime<Utc>) -> u64 {
        self.0.iter().find(|(start, _)| *start == window_start).map_or(0, |(_, n)| *n)
    }

    fn add(&mut self, window_start: DateTime<Utc>, clicks: u64) {
        match self.0.binary_search_by_key(&window_start, |(start, _)| *start) {
            Ok(i) => self.0[i].1 = self.0[i].1.saturating_add(clicks),
            Err(i) => self.0.insert(i, (window_start, clicks)),
        }
    }

    /// Takes back clicks counted in the window starting at `window_start` that no message carries after all.
    pub(crate) fn subtract(&mut self, window_start: DateTime<Utc>, clicks: u64) {
        if let Ok(i) = self.0.binary_search_by_key(&window_start, |(start, _)| *start) {
            self.0[i].1 = self.0[i].1.saturating_sub(clicks);
            if self.0[i].1 == 0 {
                self.0.remove(i);
            }
        }
    }

    /// Drops the windows that start before `window_start` (they ended: nothing can be released in them).
    pub fn forget_before(&mut self, window_start: DateTime<Utc>) {
        self.0.retain(|(start, _)| *start >= window_start);
    }

    /// The windows with releases, in order.
    pub fn iter(&self) -> impl Iterator<Item = (DateTime<Utc>, u64)> + '_ {
        self.0.iter().copied()
    }
}

/// A campaign's pacing counters, as last committed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PacingState {
    /// Local date (in the campaign's zone) that `released_today` and `reserved_today` belong to; `None` before the
    /// first release.
    pub day: Option<NaiveDate>,
    pub released_today: u64,
    /// Spend reserved for the clicks released on `day`.
    pub reserved_today: Micros,
    /// Spend reserved over the campaign's life.
    pub reserved_total: Micros,
    pub second: WindowCounts,
    pub minute: WindowCounts,
    pub hour: WindowCounts,
}

impl PacingState {
    /// Clicks released on local `date` (zero when the counters belong to another day).
    pub fn released_on(&self, date: NaiveDate) -> u64 {
        if self.day == Some(date) { self.released_today } else { 0 }
    }

    /// Spend reserved on local `date` (zero when the counters belong to another day).
    pub fn reserved_on(&self, date: NaiveDate) -> Micros {
        if self.day == Some(date) { self.reserved_today } else { Micros(0) }
    }

    pub fn window(&self, window: RateWindow) -> &WindowCounts {
        match window {
            RateWindow::Second => &self.second,
            RateWindow::Minute => &self.minute,
            RateWindow::Hour => &self.hour,
        }
    }

    /// Counts `clicks` released at `at`, resetting the daily counters when the campaign's local date changed and
    /// each window's count when its window rolled. This is the same update the Postgres row receives.
    pub fn record_release(&mut self, campaign: &Campaign, at: DateTime<Utc>, clicks: u64) {
        let date = local_date(campaign.time_zone, at);
        if self.day != Some(date) {
            self.day = Some(date);
            self.released_today = 0;
            self.reserved_today = Micros(0);
        }
        let cost = cost_of(campaign.cost_per_click, clicks);
        self.released_today = self.released_today.saturating_add(clicks);
        self.reserved_today = Micros(self.reserved_today.0.saturating_add(cost));
        self.reserved_total = Micros(self.reserved_total.0.saturating_add(cost));
        self.second.add(RateWindow::Second.start_of(at), clicks);
        self.minute.add(RateWindow::Minute.start_of(at), clicks);
        self.hour.add(RateWindow::Hour.start_of(at), clicks);
    }

    /// Takes back what an earlier claim reserved on local `date` for clicks it never released (a batch claimed
    /// and not sent, or whose message was lost): the day's counters only if they still belong to that day, the
    /// campaign's total always. Rate windows keep their counts: the partner may have seen some of those clicks,
    /// and keeping them errs on the side of its rate.
    pub fn give_back(&mut self, date: NaiveDate, clicks: u64, micros: Micros) {
        if self.day == Some(date) {
            self.released_today = self.released_today.saturating_sub(clicks);
            self.reserved_today = Micros(self.reserved_today.0.saturating_sub(micros.0.max(0)).max(0));
        }
        self.reserved_total = Micros(self.reserved_total.0.saturating_sub(micros.0.max(0)).max(0));
    }
}

/// What a partner can take right now: its configured rate, scaled by how it has been coping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartnerLimit {
    /// The partner's contractual ceiling; `None` for a partner without one.
    pub rate_per_second: Option<u32>,
    /// Adaptive factor in (0, 1] applied to `rate_per_second`: cut multiplicatively when the partner answers 429,
    /// 5xx or times out, raised additively while it is healthy (AIMD), so we slow down before it throttles us.
    /// It has nothing to scale for a partner without a rate.
    pub allowance: f64,
    /// The partner asked us (Retry-After) not to send anything before this instant.
    pub retry_after_until: Option<DateTime<Utc>>,
    /// Clicks released to this partner, by all its campaigns, per second ahead.
    pub second: WindowCounts,
    /// Clicks released earlier that the bridges should have sent by now and have not (they are behind: retries,
    /// a throttle, late invocations). They take the partner's first seconds from the run's start, so the pacer
    /// releases less until the bridges catch up instead of queueing ever more in front of them, where the clicks
    /// of every other campaign of the partner would wait behind them. They hold back ASAP campaigns only: a planned
    /// campaign's due clicks go on plan (the partner's rate still bounds them).
    #[serde(default)]
    pub overdue: Option<Overdue>,
}

/// Clicks owed to a partner from `since` on (see [`PartnerLimit::overdue`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Overdue {
    pub clicks: u64,
    pub since: DateTime<Utc>,
}

impl PartnerLimit {
    /// A partner that takes anything: no rate, full allowance, no Retry-After.
    pub fn unlimited() -> Self {
        Self {
            rate_per_second: None,
            allowance: 1.0,
            retry_after_until: None,
            second: WindowCounts::default(),
            overdue: None,
        }
    }

    /// A healthy partner at its configured rate.
    pub fn of(partner: &Partner) -> Self {
        Self { rate_per_second: partner.rate_per_second, ..Self::unlimited() }
    }

    /// Clicks per second the partner may receive now. At least one per second whenever the configured rate allows
    /// any, however low the allowance fell: a throttled partner still gets the probe traffic that lets AIMD
    /// notice it recovered. A nonsensical allowance (NaN, zero, negative) is read as that floor.
    pub fn effective_rate_per_second(&self) -> Option<u64> {
        let rate = u64::from(self.rate_per_second?);
        let factor = if self.allowance > 0.0 { self.allowance.min(1.0) } else { 0.0 };
        // `as` saturates on floats; the product is within [0, rate].
        let scaled = (rate as f64 * factor).floor() as u64;
        Some(scaled.clamp(rate.min(1), rate))
    }

    /// The overdue clicks that take the second starting at `start` at `rate` a second: the seconds from the one
    /// holding `since` are filled in order.
    pub fn overdue_in(&self, start: DateTime<Utc>, rate: u64) -> u64 {
        let Some(overdue) = self.overdue else { return 0 };
        let k = (start - RateWindow::Second.start_of(overdue.since)).num_seconds();
        if k < 0 {
            return 0;
        }
        overdue.clicks.saturating_sub(rate.saturating_mul(k as u64)).min(rate)
    }

    /// Counts `clicks` released to the partner at `at`.
    pub fn record_release(&mut self, at: DateTime<Utc>, clicks: u64) {
        self.second.add(RateWindow::Second.start_of(at), clicks);
    }

    /// Takes back a reservation [`Self::record_release`] made within the same plan, for clicks that did not go.
    pub fn cancel_release(&mut self, at: DateTime<Utc>, clicks: u64) {
        self.second.subtract(RateWindow::Second.start_of(at), clicks);
    }
}

/// Spend for `clicks` at `cost_per_click`; a zero or negative price reserves nothing.
pub(crate) fn cost_of(cost_per_click: Micros, clicks: u64) -> i64 {
    i64::try_from(clicks).unwrap_or(i64::MAX).saturating_mul(cost_per_click.0.max(0))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{CampaignId, PartnerId};

    #[test]
    fn overdue_clicks_fill_the_partners_first_seconds_in_order() {
        let t0 = Utc.with_ymd_and_hms(2026, 12, 2, 10, 0, 0).unwrap();
        let since = t0 + Duration::milliseconds(300);
        let p = PartnerLimit { overdue: Some(Overdue { clicks: 25, since }), ..PartnerLimit::unlimited() };
        let in_second = |k: i64| p.overdue_in(t0 + Duration::seconds(k), 10);
        assert_eq!([in_second(-1), in_second(0), in_second(1), in_second(2), in_second(3)], [0, 10, 10, 5, 0]);
        assert_eq!(PartnerLimit::unlimited().overdue_in(t0, 10), 0);
    }

    #[test]
    fn windows_are_aligned_to_utc() {
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 34, 56).unwrap() + Duration::milliseconds(789);
        assert_eq!(RateWindow::Second.start_of(at), Utc.with_ymd_and_hms(2024, 5, 1, 12, 34, 56).unwrap());
        assert_eq!(RateWindow::Minute.start_of(at), Utc.with_ymd_and_hms(2024, 5, 1, 12, 34, 0).unwrap());
        assert_eq!(RateWindow::Hour.start_of(at), Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap());
    }

    #[test]
    fn stale_counters_read_as_zero_and_reset_on_record() {
        let mut campaign = Campaign::unlimited(CampaignId::parse("c").unwrap(), PartnerId::parse("p").unwrap());
        campaign.time_zone = chrono_tz::America::New_York;
        campaign.cost_per_click = Micros(250_000);
        let mut state = PacingState::default();
        let evening = Utc.with_ymd_and_hms(2024, 5, 2, 3, 59, 59).unwrap(); // 23:59:59 EDT on May 1st
        state.record_release(&campaign, evening, 4);
        let date = NaiveDate::from_ymd_opt(2024, 5, 1).unwrap();
        assert_eq!((state.released_on(date), state.reserved_on(date)), (4, Micros(1_000_000)));
        let midnight = evening + Duration::seconds(1);
        assert_eq!(state.released_on(local_date(campaign.time_zone, midnight)), 0);
        assert_eq!(state.second.released_in(RateWindow::Second.start_of(midnight)), 0);
        assert_eq!(state.hour.released_in(RateWindow::Hour.start_of(midnight)), 0);
        state.record_release(&campaign, midnight, 1);
        assert_eq!(
            (state.released_today, state.reserved_today, state.reserved_total),
            (1, Micros(250_000), Micros(1_250_000))
        );
        let counts = |w: RateWindow| state.window(w).released_in(w.start_of(midnight));
        assert_eq!((counts(RateWindow::Second), counts(RateWindow::Minute), counts(RateWindow::Hour)), (1, 1, 1));
        // Every window keeps its count until it is forgotten.
        assert_eq!(state.second.released_in(RateWindow::Second.start_of(evening)), 4);
        state.second.forget_before(RateWindow::Second.start_of(midnight));
        assert_eq!(state.second.iter().collect::<Vec<_>>(), vec![(RateWindow::Second.start_of(midnight), 1)]);
    }

    #[test]
    fn a_reservation_given_back_leaves_the_rate_windows_and_other_days_alone() {
        let mut campaign = Campaign::unlimited(CampaignId::parse("c").unwrap(), PartnerId::parse("p").unwrap());
        campaign.cost_per_click = Micros(10);
        let at = Utc.with_ymd_and_hms(2024, 5, 1, 12, 0, 0).unwrap();
        let mut state = PacingState::default();
        state.record_release(&campaign, at, 7);
        let day = at.date_naive();
        state.give_back(day, 5, Micros(50));
        assert_eq!((state.released_today, state.reserved_today, state.reserved_total), (2, Micros(20), Micros(20)));
        assert_eq!(state.second.released_in(at), 7, "the partner may have seen them");
        // A reservation of another day: only the campaign's total; never below zero.
        state.give_back(day.pred_opt().unwrap(), 1, Micros(100));
        assert_eq!((state.released_today, state.reserved_today, state.reserved_total), (2, Micros(20), Micros(0)));
    }

    #[test]
    fn partner_allowance_scales_the_rate_but_keeps_probing() {
        let mut p = PartnerLimit { rate_per_second: Some(10), allowance: 0.55, ..PartnerLimit::unlimited() };
        assert_eq!(p.effective_rate_per_second(), Some(5));
        for (allowance, rate) in [(0.01, 1), (f64::NAN, 1), (-1.0, 1), (7.0, 10), (1.0, 10)] {
            p.allowance = allowance;
            assert_eq!(p.effective_rate_per_second(), Some(rate), "allowance {allowance}");
        }
        p.rate_per_second = Some(0);
        assert_eq!(p.effective_rate_per_second(), Some(0));
        assert_eq!(PartnerLimit::unlimited().effective_rate_per_second(), None);
    }
}
