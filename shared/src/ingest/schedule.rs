//! When a new batch first becomes due.
//!
//! The slicer gives each batch the earliest instant its campaign's plan could send it: not before the flight
//! starts, and under an hourly curve not inside a zero-weight (dayparted-out) local hour. Spreading within the
//! day (even mode, the curve's shape, caps, budgets, rates) is the pacer's job: it defers a due batch to the
//! instant its rules allow, so a plan change takes effect without re-slicing.

use chrono::{DateTime, Duration, DurationRound, Timelike, Utc};

use crate::domain::{Campaign, PacingMode};

pub fn first_due_at(campaign: &Campaign, now: DateTime<Utc>) -> DateTime<Utc> {
    let start = campaign.flight_start.map_or(now, |s| s.max(now));
    match &campaign.pacing {
        PacingMode::HourlyCurve(weights) => next_open_hour(campaign, weights.weights(), start),
        PacingMode::Asap | PacingMode::Even => start,
    }
}

/// The first instant at or after `from` whose local hour has a positive weight. Every zone's offset is a
/// multiple of 15 minutes, so local hours begin on UTC quarter hours: stepping by quarters finds the start.
fn next_open_hour(campaign: &Campaign, weights: &[f64; 24], from: DateTime<Utc>) -> DateTime<Utc> {
    let open = |t: DateTime<Utc>| weights[t.with_timezone(&campaign.time_zone).hour() as usize] > 0.0;
    if open(from) {
        return from;
    }
    let quarter = Duration::minutes(15);
    let mut t = from.duration_trunc(quarter).unwrap_or(from);
    // Two days of quarters covers any curve with a positive weight, DST days included.
    for _ in 0..(2 * 24 * 4) {
        t += quarter;
        if open(t) {
            return t;
        }
    }
    from
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{CampaignId, HourlyWeights, PartnerId};

    fn campaign() -> Campaign {
        Campaign::unlimited(CampaignId::parse("c").unwrap(), PartnerId::parse("p").unwrap())
    }

    #[test]
    fn asap_is_now_or_the_flight_start() {
        let now: DateTime<Utc> = "2026-11-28T10:00:00Z".parse().unwrap();
        let mut c = campaign();
        assert_eq!(first_due_at(&c, now), now);
        c.flight_start = Some("2026-12-01T00:00:00Z".parse().unwrap());
        assert_eq!(first_due_at(&c, now), c.flight_start.unwrap());
    }

    #[test]
    fn dayparting_waits_for_an_open_local_hour() {
        let mut weights = [0.0; 24];
        weights[9] = 1.0; // 09:00-10:00 local only
        let mut c = campaign();
        c.pacing = PacingMode::HourlyCurve(HourlyWeights::parse(&weights).unwrap());
        c.time_zone = chrono_tz::Asia::Kolkata; // UTC+05:30
        let now: DateTime<Utc> = "2026-11-28T10:07:00Z".parse().unwrap(); // 15:37 local
        assert_eq!(first_due_at(&c, now), "2026-11-29T03:30:00Z".parse::<DateTime<Utc>>().unwrap());
        let inside: DateTime<Utc> = "2026-11-29T03:45:00Z".parse().unwrap();
        assert_eq!(first_due_at(&c, inside), inside);
    }
}
