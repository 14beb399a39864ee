//! A campaign's local day as a campaign manager reads it: the engine's expected curve hour by hour, what was
//! released and delivered in each hour, how far along the plan the day is, and where it will end. Local hours are
//! the zone's own: a spring-forward day has 23 of them, a fall-back day 25 (the repeated hour twice, each with its
//! offset), and a zone 30 or 45 minutes off UTC counts its hours from minute buckets, never UTC hours.

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::calendar::LocalDay;
use super::engine::day_plan;
use crate::domain::{Campaign, CampaignStatus};

/// What happened in one minute bucket of the day (from the statistics rollups).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MinuteActuals {
    pub start: DateTime<Utc>,
    pub released: i64,
    pub delivered: i64,
    pub dead: i64,
}

/// What the day view is built from, besides the campaign.
#[derive(Debug, Clone)]
pub struct DayInputs {
    pub day: LocalDay,
    /// Clicks the day's counters hold as released (the day ledger: what the plan and the cap count).
    pub released: u64,
    /// Clicks waiting in pending batches due before the day ends.
    pub waiting: u64,
    pub minutes: Vec<MinuteActuals>,
    pub now: DateTime<Utc>,
}

/// One local hour span of the day.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct HourView {
    /// The span's start in the campaign's zone, with its offset (`2026-11-01T01:00:00-05:00`): a repeated hour
    /// appears twice, with two offsets.
    pub local_start: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// Clicks the plan has due by the span's end (cumulative from the day's start); absent for ASAP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_cumulative: Option<u64>,
    pub released: i64,
    pub delivered: i64,
    pub delivered_cumulative: i64,
}

/// The day, against its plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DayView {
    pub local_day: chrono::NaiveDate,
    pub time_zone: String,
    pub start: DateTime<Utc>,
    pub end: DateTime<Utc>,
    /// 24, or 23 and 25 on DST changes (23.5 or 24.5 in Australia/Lord_Howe).
    pub length_hours: f64,
    /// The plan's volume for the day: the cap, what the daily budget buys, or (without either) what was released
    /// plus what is waiting. Absent for ASAP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub volume: Option<u64>,
    /// Clicks the plan has due by now (by the day's end for a past day). Absent for ASAP.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expected_now: Option<u64>,
    pub released: u64,
    pub delivered: i64,
    pub dead: i64,
    /// Delivered against expected now, in percent (100 = on plan). Absent for ASAP or before anything is due.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pace_percent: Option<f64>,
    /// Delivered by the day's end if the rules stay as they are and no other clicks arrive: what is delivered,
    /// plus what is released and not yet final, plus what is waiting as far as the plan's volume (or the cap)
    /// and the campaign's own rate limits over the time left let it go. A paused or archived campaign, or one
    /// past its flight, releases nothing more. Past days: what was delivered.
    pub projected_delivered: i64,
    pub hours: Vec<HourView>,
}

pub fn day_view(campaign: &Campaign, inputs: &DayInputs) -> DayView {
    let DayInputs { day, released, waiting, minutes, now } = inputs;
    let tz = campaign.time_zone;
    let plan = day_plan(campaign, day, *released, *waiting);
    let mut hours = Vec::new();
    let mut cumulative = 0;
    for h in day.hours(tz) {
        let inside = minutes.iter().filter(|m| h.start <= m.start && m.start < h.end);
        let (released, delivered) = inside.fold((0, 0), |(r, d), m| (r + m.released, d + m.delivered));
        cumulative += delivered;
        hours.push(HourView {
            local_start: h.start.with_timezone(&tz).to_rfc3339(),
            start: h.start,
            end: h.end,
            expected_cumulative: plan.as_ref().map(|p| p.due_by(h.end)),
            released,
            delivered,
            delivered_cumulative: cumulative,
        });
    }
    let delivered: i64 = minutes.iter().map(|m| m.delivered).sum();
    let dead: i64 = minutes.iter().map(|m| m.dead).sum();
    let until = (*now).clamp(day.start, day.end);
    let expected_now = plan.as_ref().map(|p| if until <= day.start { 0 } else { p.due_by(until) });
    let pace_percent = expected_now.filter(|e| *e > 0).map(|e| (delivered as f64 * 1000.0 / e as f64).round() / 10.0);
    let projected_delivered = if *now >= day.end {
        delivered
    } else {
        let outstanding = (*released as i64 - delivered - dead).max(0);
        let room = plan.as_ref().map(|p| p.volume()).or(campaign.daily_cap).map(|v| v.saturating_sub(*released));
        let more = (*waiting).min(room.unwrap_or(u64::MAX)).min(rate_room(campaign, until, day.end, *now));
        let active = campaign.status == CampaignStatus::Active && campaign.flight_end.is_none_or(|e| *now < e);
        delivered + outstanding + if active { i64::try_from(more).unwrap_or(i64::MAX) } else { 0 }
    };
    DayView {
        local_day: day.date,
        time_zone: tz.name().to_string(),
        start: day.start,
        end: day.end,
        length_hours: day.length().num_seconds() as f64 / 3600.0,
        volume: plan.as_ref().map(|p| p.volume()),
        expected_now,
        released: *released,
        delivered,
        dead,
        pace_percent,
        projected_delivered,
        hours,
    }
}

/// What the campaign's own rate limits let go between `from` and `to` (from the flight's start if later).
fn rate_room(campaign: &Campaign, from: DateTime<Utc>, to: DateTime<Utc>, now: DateTime<Utc>) -> u64 {
    let from = campaign.flight_start.map_or(from, |s| s.max(from)).max(now);
    let seconds = (to - from).num_seconds().max(0) as u64;
    [(campaign.max_per_second, 1), (campaign.max_per_minute, 60), (campaign.max_per_hour, 3600)]
        .into_iter()
        .filter_map(|(limit, window)| limit.map(|l| u64::from(l).saturating_mul(seconds.div_ceil(window))))
        .min()
        .unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, TimeZone};
    use chrono_tz::America::New_York;

    use super::*;
    use crate::domain::{CampaignId, PacingMode, PartnerId};

    fn campaign(mode: PacingMode, cap: Option<u64>) -> Campaign {
        let mut c = Campaign::unlimited(CampaignId::parse("spring").unwrap(), PartnerId::parse("acme").unwrap());
        c.time_zone = New_York;
        c.pacing = mode;
        c.daily_cap = cap;
        c
    }

    fn utc(y: i32, mo: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, 0, 0).unwrap()
    }

    fn minute(start: DateTime<Utc>, released: i64, delivered: i64) -> MinuteActuals {
        MinuteActuals { start, released, delivered, dead: 0 }
    }

    #[test]
    fn a_spring_forward_day_has_23_hours_and_the_even_plan_ends_at_its_volume() {
        let c = campaign(PacingMode::Even, Some(2_300));
        // 2026-03-08 in New York: 23 hours, 05:00Z to 04:00Z next day.
        let day = LocalDay::containing(New_York, utc(2026, 3, 8, 12));
        let inputs = DayInputs { day, released: 0, waiting: 5_000, minutes: vec![], now: day.start };
        let v = day_view(&c, &inputs);
        assert_eq!((v.hours.len(), v.length_hours), (23, 23.0));
        let expected: Vec<u64> = v.hours.iter().map(|h| h.expected_cumulative.unwrap()).collect();
        assert_eq!(expected[0], 100, "an even day of 23 hours: 100 an hour");
        assert_eq!(expected[22], 2_300);
        assert!(v.hours[2].local_start.starts_with("2026-03-08T03:00:00-04:00"), "02:00 does not exist");
        assert_eq!(v.expected_now, Some(0));
        assert_eq!(v.projected_delivered, 2_300, "the cap, not everything waiting");
    }

    #[test]
    fn a_fall_back_day_shows_the_repeated_hour_twice_with_its_offsets() {
        let c = campaign(PacingMode::Even, Some(2_500));
        let day = LocalDay::containing(New_York, utc(2026, 11, 1, 12));
        let v = day_view(&c, &DayInputs { day, released: 0, waiting: 0, minutes: vec![], now: day.start });
        assert_eq!(v.hours.len(), 25);
        assert!(v.hours[1].local_start.ends_with("01:00:00-04:00"), "{}", v.hours[1].local_start);
        assert!(v.hours[2].local_start.ends_with("01:00:00-05:00"), "{}", v.hours[2].local_start);
        assert_eq!(v.hours[1].expected_cumulative, Some(200));
    }

    #[test]
    fn actuals_fall_in_their_local_hour_and_the_pace_compares_them_with_the_plan() {
        let c = campaign(PacingMode::Even, Some(2_400));
        let day = LocalDay::containing(New_York, utc(2026, 12, 7, 12));
        let now = day.start + Duration::hours(6);
        let minutes =
            vec![minute(day.start + Duration::minutes(59), 300, 250), minute(day.start + Duration::hours(1), 300, 250)];
        let v = day_view(&c, &DayInputs { day, released: 600, waiting: 10_000, minutes, now });
        assert_eq!((v.hours[0].delivered, v.hours[1].delivered, v.hours[1].delivered_cumulative), (250, 250, 500));
        assert_eq!(v.expected_now, Some(600));
        assert_eq!(v.pace_percent, Some(83.3));
        // Delivered 500, 100 released and not final, and 1,800 more under the cap.
        assert_eq!(v.projected_delivered, 2_400);
    }

    #[test]
    fn asap_has_no_plan_and_its_projection_keeps_to_its_rate() {
        let mut c = campaign(PacingMode::Asap, None);
        c.max_per_hour = Some(100);
        let day = LocalDay::containing(New_York, utc(2026, 12, 7, 12));
        let now = day.end - Duration::hours(2);
        let v = day_view(&c, &DayInputs { day, released: 0, waiting: 10_000, minutes: vec![], now });
        assert_eq!((v.volume, v.expected_now, v.pace_percent), (None, None, None));
        assert!(v.hours.iter().all(|h| h.expected_cumulative.is_none()));
        assert_eq!(v.projected_delivered, 200, "two hours at 100 an hour");
        c.status = CampaignStatus::Paused;
        assert_eq!(
            day_view(&c, &DayInputs { day, released: 0, waiting: 10_000, minutes: vec![], now }).projected_delivered,
            0
        );
    }

    #[test]
    fn a_past_day_projects_what_it_delivered() {
        let c = campaign(PacingMode::Even, Some(2_400));
        let day = LocalDay::containing(New_York, utc(2026, 12, 6, 12));
        let minutes = vec![minute(day.start, 10, 7)];
        let v =
            day_view(&c, &DayInputs { day, released: 10, waiting: 500, minutes, now: day.end + Duration::hours(3) });
        assert_eq!((v.projected_delivered, v.expected_now), (7, Some(2_400)));
    }
}
