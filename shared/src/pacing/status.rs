//! Whether a campaign is delivering now, and if not, why and until when, in words a campaign manager reads in a
//! list ("not delivering: daily cap reached, resets 00:00 America/New_York"). Built from the campaign and what
//! its batches say: the clicks waiting, those due or on their way now, and the rule the pacer last deferred the
//! earliest of the others for (the `defer_reason` it stores, with the instant it rechecks).

use chrono::{DateTime, Utc};
use serde::Serialize;

use super::DeferReason;
use crate::domain::{Campaign, CampaignStatus};

/// What a campaign's batches say right now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PendingWork {
    /// Clicks in pending, claimed or queued batches.
    pub clicks: u64,
    /// Clicks due now or on their way (claimed, queued): being delivered.
    pub moving: u64,
    /// The rule holding back the deferred batch due first, and when it is due.
    pub deferred: Option<(DeferReason, DateTime<Utc>)>,
}

/// The campaign's delivery, in one word and a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeliveryStatus {
    pub state: DeliveryState,
    /// Why, for a person: "paused", "not delivering: daily cap reached, resets 00:00 America/New_York",
    /// "waiting for 21:00 Asia/Tokyo".
    pub reason: String,
    /// When the state may change by the clock (a reset, a daypart, a flight start, a partner's pause).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub until: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Clicks are going out now.
    Delivering,
    /// Clicks wait for a time to come (a daypart, the flight's start, a partner's pause, the plan's pace).
    Waiting,
    /// Clicks wait for a rule only a new day or a person changes (a cap, a budget, the flight's end).
    NotDelivering,
    Paused,
    Archived,
    /// Nothing to deliver.
    Idle,
}

/// The campaign's delivery status at `now`.
pub fn delivery_status(campaign: &Campaign, work: &PendingWork, now: DateTime<Utc>) -> DeliveryStatus {
    let zone = campaign.time_zone;
    let local = |at: DateTime<Utc>| {
        let at = at.with_timezone(&zone);
        let same_day = at.date_naive() == now.with_timezone(&zone).date_naive();
        if same_day { at.format("%H:%M").to_string() } else { at.format("%Y-%m-%d %H:%M").to_string() }
    };
    let status = |state, reason: String, until| DeliveryStatus { state, reason, until };
    match campaign.status {
        CampaignStatus::Archived => return status(DeliveryState::Archived, "archived".into(), None),
        CampaignStatus::Paused => {
            let reason = if work.clicks > 0 { format!("paused; {} clicks wait", work.clicks) } else { "paused".into() };
            return status(DeliveryState::Paused, reason, None);
        }
        CampaignStatus::Active => {}
    }
    if let Some(end) = campaign.flight_end.filter(|end| *end <= now) {
        let reason = format!("not delivering: the flight ended {} {zone}", local(end));
        return status(DeliveryState::NotDelivering, reason, None);
    }
    if work.clicks == 0 {
        return status(DeliveryState::Idle, "idle: no clicks waiting".into(), None);
    }
    if let Some(start) = campaign.flight_start.filter(|start| *start > now) {
        return status(
            DeliveryState::Waiting,
            format!("waiting for the flight to start {} {zone}", local(start)),
            Some(start),
        );
    }
    if work.moving > 0 {
        return status(DeliveryState::Delivering, "delivering".into(), None);
    }
    let Some((reason, until)) = work.deferred else {
        return status(DeliveryState::Delivering, "delivering: due clicks wait for the next pacer run".into(), None);
    };
    let until = (until > now).then_some(until);
    let at = until.map(|u| format!("{} {zone}", local(u))).unwrap_or_else(|| "soon".into());
    let (state, text) = match reason {
        DeferReason::DailyCap => {
            (DeliveryState::NotDelivering, format!("not delivering: daily cap reached, resets {at}"))
        }
        DeferReason::DailyBudget => {
            (DeliveryState::NotDelivering, format!("not delivering: daily budget spent, resets {at}"))
        }
        DeferReason::TotalBudget => (DeliveryState::NotDelivering, "not delivering: total budget spent".into()),
        DeferReason::AfterFlight => (DeliveryState::NotDelivering, "not delivering: the flight ended".into()),
        DeferReason::Daypart => {
            (DeliveryState::Waiting, format!("waiting for {at}: the hourly curve gives now no weight"))
        }
        DeferReason::BeforeFlight => (DeliveryState::Waiting, format!("waiting for the flight to start {at}")),
        DeferReason::PartnerRetryAfter => {
            (DeliveryState::Waiting, format!("waiting for {at}: the partner asked for a pause (Retry-After)"))
        }
        DeferReason::PacingPlan => (DeliveryState::Waiting, format!("on plan: the next clicks go at {at}")),
        DeferReason::RatePerSecond | DeferReason::RatePerMinute | DeferReason::RatePerHour => {
            (DeliveryState::Delivering, format!("delivering at its {} limit", reason.as_str().replace('_', " ")))
        }
        DeferReason::PartnerRate => (DeliveryState::Delivering, "delivering at its partner's rate".into()),
        DeferReason::Paused => (DeliveryState::Waiting, "resumed: the paused clicks go at the next pacer run".into()),
        DeferReason::Archived => (DeliveryState::NotDelivering, "not delivering: archived".into()),
    };
    status(state, text, until)
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::domain::{CampaignId, PartnerId};

    fn campaign(zone: chrono_tz::Tz) -> Campaign {
        let mut c = Campaign::unlimited(CampaignId::parse("c").unwrap(), PartnerId::parse("p").unwrap());
        c.time_zone = zone;
        c
    }

    #[test]
    fn each_reason_reads_in_the_campaigns_own_zone() {
        let now = Utc.with_ymd_and_hms(2026, 12, 7, 15, 0, 0).unwrap();
        let ny = campaign(chrono_tz::America::New_York);
        let midnight = Utc.with_ymd_and_hms(2026, 12, 8, 5, 0, 0).unwrap();
        let work = PendingWork { clicks: 40, moving: 0, deferred: Some((DeferReason::DailyCap, midnight)) };
        let s = delivery_status(&ny, &work, now);
        assert_eq!(
            (s.state, s.reason.as_str()),
            (
                DeliveryState::NotDelivering,
                "not delivering: daily cap reached, resets 2026-12-08 00:00 America/New_York"
            )
        );
        assert_eq!(s.until, Some(midnight));

        let tokyo = campaign(chrono_tz::Asia::Tokyo);
        let nine_pm = Utc.with_ymd_and_hms(2026, 12, 7, 12, 0, 0).unwrap();
        let now_tokyo = Utc.with_ymd_and_hms(2026, 12, 7, 10, 0, 0).unwrap();
        let work = PendingWork { clicks: 5, moving: 0, deferred: Some((DeferReason::Daypart, nine_pm)) };
        assert_eq!(
            delivery_status(&tokyo, &work, now_tokyo).reason,
            "waiting for 21:00 Asia/Tokyo: the hourly curve gives now no weight"
        );

        let mut paused = ny.clone();
        paused.status = CampaignStatus::Paused;
        assert_eq!(delivery_status(&paused, &work, now).reason, "paused; 5 clicks wait");
        let moving = PendingWork { clicks: 5, moving: 5, deferred: None };
        assert_eq!(delivery_status(&ny, &moving, now).state, DeliveryState::Delivering);
        assert_eq!(delivery_status(&ny, &PendingWork::default(), now).state, DeliveryState::Idle);
        let mut ended = ny.clone();
        ended.flight_end = Some(now - chrono::Duration::hours(1));
        assert_eq!(
            delivery_status(&ended, &moving, now).reason,
            "not delivering: the flight ended 09:00 America/New_York"
        );
    }
}
