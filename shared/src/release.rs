//! Planning one pacer run: which claimed batches go out in which second of the coming minute, which wait and
//! why. Pure: the pacer loads the inputs in its claim transaction, applies the plan there, and sends after
//! commit.
//!
//! The schedule fires at most once a minute, so a run plans a horizon (60 one-second slots) and gives each
//! released batch an SQS delay equal to its slot: releases flow second by second, never as a burst at the top
//! of the minute. Each slot asks the pacing engine ([`crate::pacing::allowance`]) with the counters the earlier
//! slots left, so every rule holds in every window. Campaigns with a plan (even, curve) go first in each slot,
//! then ASAP campaigns take what their partners have left; within each class campaigns take turns (the starting
//! campaign rotates each second), so a huge campaign cannot starve small ones that share its partner.
//!
//! A batch larger than what one second allows (a low partner rate, say) is reserved across consecutive
//! seconds and the message tells the bridge to spread its clicks over them. A batch that only the even or
//! curve plan holds back (its first click is due, every cap, budget and rate would let it all go) is released
//! whole and spread until the plan has accrued its last click, so a slow plan becomes a flow, not a lump per
//! batch. If the horizon ends first, the
//! batch waits for the next run and what it had reserved is given back (the campaign's day ledger and pacing
//! counters, the partner's seconds), so no click is counted as released that no message carries: a partner's
//! seconds booked for clicks that did not go would be seconds of its rate that nobody sends in, run after run
//! (with overlapping runs, every run ends with such a batch). Limits that accrue (the even plan, rates)
//! then let the whole batch go in a later run. A batch's reservation never crosses local midnight: one that
//! would is given back and starts over on the new day, so its clicks, deliveries and spend all belong to one
//! local day (the ledger row the bridge counts them on, at the price the claim reserved).

use std::collections::{BTreeMap, HashMap, VecDeque};

use chrono::{DateTime, Duration, NaiveDate, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::{Campaign, CampaignId, Micros, PartnerId};
use crate::pacing::{
    DeferReason, PacingState, PartnerLimit, PlanSpread, allowance, cap_short_of, local_date, plan_spread,
};

/// How long batches held by a rule that does not relax with time (a pause, an archive, the end of the flight, the
/// total budget) sleep before a run looks at them again, when no change to the campaign woke them first.
pub const DORMANT_RECHECK: chrono::Duration = chrono::Duration::hours(1);

/// The longest a batch released ahead of its plan is spread (the bridge delivers its clicks over that time).
pub const MAX_PLAN_SPREAD: Duration = Duration::minutes(15);

/// The message the pacer puts on the click queue for the bridge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReleaseMessage {
    pub batch_id: i64,
    /// The claim's fencing value: a message whose fence is not the batch's current one is stale.
    pub fence: i64,
    pub campaign_id: CampaignId,
    pub partner_id: PartnerId,
    pub clicks: u32,
    /// Deliver the batch's clicks evenly over this many seconds from `release_at`.
    pub spread_seconds: u32,
    pub release_at: DateTime<Utc>,
}

/// A due (or soon due) batch the claim locked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CandidateBatch {
    pub batch_id: i64,
    pub campaign_id: CampaignId,
    pub clicks: u64,
    pub due_at: DateTime<Utc>,
}

pub struct PlanInput {
    pub now: DateTime<Utc>,
    /// One-second slots planned by this run.
    pub horizon_seconds: u32,
    /// Most batches one run releases (bounds the transaction and the sending time).
    pub max_batches: usize,
    pub campaigns: HashMap<CampaignId, (Campaign, PacingState)>,
    pub partners: HashMap<PartnerId, PartnerLimit>,
    /// In the claim's fair order; each campaign's batches in due order.
    pub batches: Vec<CandidateBatch>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRelease {
    pub batch_id: i64,
    /// Seconds after `now` at which the batch becomes visible on the queue.
    pub delay_seconds: u32,
    pub spread_seconds: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Deferral {
    pub batch_id: i64,
    pub until: DateTime<Utc>,
    pub reason: DeferReason,
}

/// Clicks and spend a run reserved against one campaign's local day.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DayReservation {
    pub clicks: u64,
    pub micros: i64,
}

#[derive(Debug, Default)]
pub struct ReleasePlan {
    pub releases: Vec<PlannedRelease>,
    pub deferrals: Vec<Deferral>,
    /// Counters to write back (only campaigns and partners that reserved something).
    pub states: HashMap<CampaignId, PacingState>,
    pub partners: HashMap<PartnerId, PartnerLimit>,
    pub ledger: BTreeMap<(CampaignId, NaiveDate), DayReservation>,
    /// What each released batch reserved, on the campaign's local day of its first reservation: stored with the
    /// claim, so that a batch taken back later (never sent, or its message lost) gives it back first.
    pub reservations: HashMap<i64, (NaiveDate, DayReservation)>,
}

struct Lane {
    campaign_id: CampaignId,
    queue: VecDeque<CandidateBatch>,
    /// Clicks of the front batch still to reserve, and the slot of its first reservation.
    partial: Option<(u64, u32)>,
    /// What the front batch's reservations so far changed, to give back if it cannot complete in this run.
    undo: Option<Undo>,
    /// Nothing more can go before this instant (from the engine's `next_release_at`).
    wait_until: Option<DateTime<Utc>>,
    /// Why the lane stopped, and until when, once it cannot release within the horizon.
    blocked: Option<(DeferReason, Option<DateTime<Utc>>)>,
}

/// A partial batch's reservations: the campaign's counters before it, the ledger rows it added to and the
/// partner's seconds it took.
struct Undo {
    state: PacingState,
    touched_states: bool,
    ledger: Vec<((CampaignId, NaiveDate), DayReservation)>,
    partner_seconds: Vec<(DateTime<Utc>, u64)>,
}

pub fn plan_releases(input: PlanInput) -> ReleasePlan {
    let PlanInput { now, horizon_seconds, max_batches, mut campaigns, mut partners, batches } = input;
    let horizon_end = now + Duration::seconds(i64::from(horizon_seconds));
    let mut lanes: Vec<Lane> = Vec::new();
    for batch in batches {
        match lanes.iter_mut().find(|l| l.campaign_id == batch.campaign_id) {
            Some(lane) => lane.queue.push_back(batch),
            None => lanes.push(Lane {
                campaign_id: batch.campaign_id.clone(),
                queue: VecDeque::from([batch]),
                partial: None,
                undo: None,
                wait_until: None,
                blocked: None,
            }),
        }
    }
    let mut plan = ReleasePlan::default();
    let mut touched_partners = Vec::new();

    // Campaigns with a plan (even, curve) have a schedule to keep, ASAP ones only a backlog: in every second the
    // plan's due clicks go first and ASAP campaigns share what their partners have left. Taking turns with a
    // backlog would leave a plan behind for good, since a shortfall is spread over the rest of its window.
    let (planned, asap): (Vec<usize>, Vec<usize>) = (0..lanes.len()).partition(|&i| {
        campaigns.get(&lanes[i].campaign_id).is_some_and(|(c, _)| c.pacing != crate::domain::PacingMode::Asap)
    });
    'slots: for slot in 0..horizon_seconds {
        let t = now + Duration::seconds(i64::from(slot));
        // Rounds of one batch per campaign, the first campaign of each class rotating with the second, until
        // nobody can release more in this slot: fair shares of a partner's capacity whatever the backlogs.
        let order: Vec<usize> = [&planned, &asap]
            .into_iter()
            .flat_map(|class| (0..class.len()).map(move |i| class[(i + slot as usize) % class.len()]))
            .collect();
        loop {
            let mut progressed = false;
            for &lane_index in &order {
                if plan.releases.len() >= max_batches {
                    break 'slots;
                }
                let lane = &mut lanes[lane_index];
                if lane.blocked.is_some() || lane.wait_until.is_some_and(|w| t < w) {
                    continue;
                }
                let Some(batch) = lane.queue.front() else { continue };
                if batch.due_at > t {
                    continue;
                }
                let Some((campaign, state)) = campaigns.get_mut(&lane.campaign_id) else {
                    lane.blocked = Some((DeferReason::Archived, None));
                    continue;
                };
                if let Some((_, first)) = lane.partial {
                    // A batch's reservation belongs to one local day (the ledger row its deliveries and spend are
                    // counted on, and the day its cap counts it): one that would cross local midnight gives back
                    // what it reserved and starts over on the new day.
                    let started = now + Duration::seconds(i64::from(first));
                    if local_date(campaign.time_zone, started) != local_date(campaign.time_zone, t) {
                        if let Some(undo) = lane.undo.take() {
                            *state = undo.state.clone();
                            give_back(&mut plan, &lane.campaign_id, partners.get_mut(&campaign.partner_id), undo);
                        }
                        lane.partial = None;
                    }
                }
                let partner = partners.entry(campaign.partner_id.clone()).or_insert_with(PartnerLimit::unlimited);
                let remaining = lane.partial.map_or(batch.clicks, |(r, _)| r);
                if let Some(short) = cap_short_of(campaign, state, partner, remaining, t) {
                    // Not part of it now against a rate and the rest never: the batch waits for the cap.
                    lane.blocked = Some(short);
                    continue;
                }
                let answer = allowance(campaign, state, partner, remaining, t);
                // Part of a batch is reserved only against limits that refill with time (rates, the pacing
                // plan); a cap or budget that cannot take the whole batch takes none of it, so no capacity is
                // spent on clicks that cannot go.
                let refills = matches!(
                    answer.reason,
                    None | Some(
                        DeferReason::RatePerSecond
                            | DeferReason::RatePerMinute
                            | DeferReason::RatePerHour
                            | DeferReason::PartnerRate
                            | DeferReason::PacingPlan
                    )
                );
                // Held back by the plan alone, with its first click due: the whole batch goes now, spread until
                // the plan has accrued its last click (within MAX_PLAN_SPREAD), rather than in one lump once it
                // has.
                let spread = (lane.partial.is_none() && answer.reason == Some(DeferReason::PacingPlan))
                    .then(|| plan_spread(campaign, state, partner, remaining, t))
                    .flatten();
                let plan_spread = match spread {
                    Some(PlanSpread::Until(last)) if last - t <= MAX_PLAN_SPREAD => Some(last),
                    Some(PlanSpread::NotBefore(at)) if at < horizon_end => {
                        // A few seconds on the whole batch can go spread: wait for that rather than start
                        // reserving it click by click.
                        lane.wait_until = Some(at);
                        continue;
                    }
                    _ => None,
                };
                let take = if plan_spread.is_some() {
                    remaining
                } else if refills {
                    answer.clicks.min(remaining)
                } else {
                    0
                };
                if take > 0 {
                    if take < batch.clicks && lane.undo.is_none() {
                        lane.undo = Some(Undo {
                            state: state.clone(),
                            touched_states: plan.states.contains_key(&lane.campaign_id),
                            ledger: Vec::new(),
                            partner_seconds: Vec::new(),
                        });
                    }
                    state.record_release(campaign, t, take);
                    partner.record_release(t, take);
                    // A batch's whole reservation belongs to the local day of its first click, the day the
                    // bridge counts its deliveries and spend on, even if its spread crosses midnight.
                    let first_slot = lane.partial.map_or(slot, |(_, first)| first);
                    let first = now + Duration::seconds(i64::from(first_slot));
                    let key = (lane.campaign_id.clone(), local_date(campaign.time_zone, first));
                    let reserved = DayReservation { clicks: take, micros: cost(campaign.cost_per_click, take) };
                    if let Some(undo) = lane.undo.as_mut() {
                        undo.ledger.push((key.clone(), reserved));
                        undo.partner_seconds.push((t, take));
                    }
                    let day = plan.ledger.entry(key).or_default();
                    day.clicks += reserved.clicks;
                    day.micros = day.micros.saturating_add(reserved.micros);
                    plan.states.insert(lane.campaign_id.clone(), state.clone());
                    if !touched_partners.contains(&campaign.partner_id) {
                        touched_partners.push(campaign.partner_id.clone());
                    }
                    progressed = true;
                }
                let first_slot = lane.partial.map_or(slot, |(_, first)| first);
                if take == remaining {
                    let spread_seconds = match plan_spread {
                        Some(last) => (last - t).num_seconds().max(0) as u32 + 1,
                        None => slot - first_slot + 1,
                    };
                    plan.releases.push(PlannedRelease {
                        batch_id: batch.batch_id,
                        delay_seconds: first_slot,
                        spread_seconds,
                    });
                    let first = now + Duration::seconds(i64::from(first_slot));
                    plan.reservations.insert(
                        batch.batch_id,
                        (
                            local_date(campaign.time_zone, first),
                            DayReservation {
                                clicks: batch.clicks,
                                micros: cost(campaign.cost_per_click, batch.clicks),
                            },
                        ),
                    );
                    lane.partial = None;
                    lane.undo = None;
                    lane.queue.pop_front();
                    continue;
                }
                if take > 0 {
                    lane.partial = Some((remaining - take, first_slot));
                }
                let reason = answer.reason.unwrap_or(DeferReason::PacingPlan);
                match answer.next_release_at {
                    Some(next) if next < horizon_end => lane.wait_until = Some(next),
                    next => lane.blocked = Some((reason, next)),
                }
            }
            if !progressed {
                break;
            }
        }
    }

    // What could not go within the horizon waits: due batches get a new due time (the instant the binding
    // rule relaxes, or the next run when the wait is not bounded by the clock) and the reason.
    for lane in &mut lanes {
        let Some(undo) = lane.undo.take() else { continue };
        if !carry_beyond_the_run(&mut plan, lane, &mut campaigns, &mut partners, now, horizon_seconds) {
            let partner = campaigns.get(&lane.campaign_id).and_then(|(c, _)| partners.get_mut(&c.partner_id));
            give_back(&mut plan, &lane.campaign_id, partner, undo);
        }
    }
    for lane in lanes {
        let (reason, until) = match lane.blocked {
            // A rule only a person can relax (paused, archived, past the flight, out of total budget) lets its
            // batches sleep: they are looked at again after `DORMANT_RECHECK`, or at once when the campaign
            // changes (`campaigns::wake_deferred`), not taken and rewritten by every run.
            Some((reason, until)) => (reason, until.unwrap_or(now + DORMANT_RECHECK).max(horizon_end)),
            None => match lane.wait_until {
                Some(w) => (DeferReason::PacingPlan, w.max(horizon_end)),
                None => continue, // not due yet, or the run's batch limit was reached: left as they are
            },
        };
        for batch in lane.queue.iter().filter(|b| b.due_at <= now || lane.partial.is_some()) {
            plan.deferrals.push(Deferral { batch_id: batch.batch_id, until, reason });
        }
    }
    plan.partners = touched_partners.into_iter().filter_map(|p| partners.remove_entry(&p)).collect();
    plan
}

/// A batch that had the whole run and still could not be reserved in full, held back only by rates (a partner's,
/// a campaign's per-second one), would wait forever for a run that takes it whole: with a low rate (a partner's
/// allowance cut low) nothing would ever be released. It goes now, spread over the time its rate needs at the pace
/// this run achieved (up to [`MAX_PLAN_SPREAD`]), if the campaign's caps and budgets take the rest of it, which is
/// reserved with it; the bridge sends each click at its share of the spread, and every request to a partner at a
/// slot of its shared send pace, so the rate still holds where it is measured. Returns whether it went.
fn carry_beyond_the_run(
    plan: &mut ReleasePlan,
    lane: &mut Lane,
    campaigns: &mut HashMap<CampaignId, (Campaign, PacingState)>,
    partners: &mut HashMap<PartnerId, PartnerLimit>,
    now: DateTime<Utc>,
    horizon_seconds: u32,
) -> bool {
    let by_rates = match lane.blocked {
        None => true,
        Some((reason, _)) => matches!(
            reason,
            DeferReason::PartnerRate
                | DeferReason::RatePerSecond
                | DeferReason::RatePerMinute
                | DeferReason::RatePerHour
        ),
    };
    let (Some((remaining, 0)), true, Some(batch)) = (lane.partial, by_rates, lane.queue.front()) else {
        return false;
    };
    let reserved = batch.clicks - remaining;
    let Some((campaign, state)) = campaigns.get_mut(&lane.campaign_id) else { return false };
    if reserved == 0 {
        return false;
    }
    let spread = (batch.clicks * u64::from(horizon_seconds)).div_ceil(reserved);
    if spread > MAX_PLAN_SPREAD.num_seconds() as u64 {
        return false;
    }
    let day = local_date(campaign.time_zone, now);
    let micros = cost(campaign.cost_per_click, remaining);
    let fits = campaign.daily_cap.is_none_or(|cap| state.released_on(day) + remaining <= cap)
        && campaign.daily_budget.is_none_or(|b| state.reserved_on(day).0.saturating_add(micros) <= b.0)
        && campaign.total_budget.is_none_or(|b| state.reserved_total.0.saturating_add(micros) <= b.0);
    if !fits {
        return false;
    }
    // The rest counts in the run's last second (the campaign's day, rate windows and its partner's second):
    // never less than what was released.
    let last = now + Duration::seconds(i64::from(horizon_seconds.max(1) - 1));
    state.record_release(campaign, last, remaining);
    if let Some(partner) = partners.get_mut(&campaign.partner_id) {
        partner.record_release(last, remaining);
    }
    plan.states.insert(lane.campaign_id.clone(), state.clone());
    let entry = plan.ledger.entry((lane.campaign_id.clone(), day)).or_default();
    entry.clicks += remaining;
    entry.micros = entry.micros.saturating_add(micros);
    plan.reservations.insert(
        batch.batch_id,
        (day, DayReservation { clicks: batch.clicks, micros: cost(campaign.cost_per_click, batch.clicks) }),
    );
    plan.releases.push(PlannedRelease { batch_id: batch.batch_id, delay_seconds: 0, spread_seconds: spread as u32 });
    lane.queue.pop_front();
    lane.partial = None;
    true
}

/// Takes back what a batch that did not complete within the run had reserved: its campaign's counters and
/// ledger, and its partner's seconds, which other campaigns of the partner can then use (in a later run).
fn give_back(plan: &mut ReleasePlan, campaign_id: &CampaignId, partner: Option<&mut PartnerLimit>, undo: Undo) {
    if let Some(partner) = partner {
        for (at, clicks) in &undo.partner_seconds {
            partner.cancel_release(*at, *clicks);
        }
    }
    if undo.touched_states {
        plan.states.insert(campaign_id.clone(), undo.state);
    } else {
        plan.states.remove(campaign_id);
    }
    for (key, reserved) in undo.ledger {
        if let Some(day) = plan.ledger.get_mut(&key) {
            day.clicks -= reserved.clicks.min(day.clicks);
            day.micros = day.micros.saturating_sub(reserved.micros);
            if day.clicks == 0 && day.micros == 0 {
                plan.ledger.remove(&key);
            }
        }
    }
}

fn cost(cost_per_click: Micros, clicks: u64) -> i64 {
    i64::try_from(clicks).unwrap_or(i64::MAX).saturating_mul(cost_per_click.0.max(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::CampaignStatus;

    fn campaign(id: &str) -> Campaign {
        Campaign::unlimited(CampaignId::parse(id).unwrap(), PartnerId::parse("p").unwrap())
    }

    fn batches(campaign: &str, first_id: i64, n: usize, clicks: u64, due_at: DateTime<Utc>) -> Vec<CandidateBatch> {
        (0..n)
            .map(|i| CandidateBatch {
                batch_id: first_id + i as i64,
                campaign_id: CampaignId::parse(campaign).unwrap(),
                clicks,
                due_at,
            })
            .collect()
    }

    fn input(campaigns: Vec<Campaign>, batches: Vec<CandidateBatch>, now: DateTime<Utc>) -> PlanInput {
        PlanInput {
            now,
            horizon_seconds: 60,
            max_batches: 10_000,
            campaigns: campaigns.into_iter().map(|c| (c.campaign_id.clone(), (c, PacingState::default()))).collect(),
            partners: HashMap::new(),
            batches,
        }
    }

    fn now() -> DateTime<Utc> {
        "2026-11-28T10:00:00Z".parse().unwrap()
    }

    #[test]
    fn asap_releases_everything_due_at_once() {
        let plan = plan_releases(input(vec![campaign("a")], batches("a", 1, 5, 10, now()), now()));
        assert_eq!(plan.releases.len(), 5);
        assert!(plan.releases.iter().all(|r| r.delay_seconds == 0 && r.spread_seconds == 1));
        assert_eq!(plan.ledger.values().map(|d| d.clicks).sum::<u64>(), 50);
    }

    #[test]
    fn a_minute_rate_becomes_a_flow_over_the_minute() {
        let mut c = campaign("a");
        c.max_per_minute = Some(60);
        let plan = plan_releases(input(vec![c], batches("a", 1, 10, 6, now()), now()));
        assert_eq!(plan.releases.len(), 10);
        let delays: Vec<u32> = plan.releases.iter().map(|r| r.delay_seconds).collect();
        assert_eq!(delays, vec![0, 6, 12, 18, 24, 30, 36, 42, 48, 54], "6 clicks every 6 seconds");
        assert!(plan.releases.iter().all(|r| r.spread_seconds == 6), "one click a second: {:?}", plan.releases);
    }

    #[test]
    fn the_daily_cap_defers_the_rest_until_local_midnight() {
        let mut c = campaign("a");
        c.daily_cap = Some(25);
        c.time_zone = chrono_tz::Europe::Berlin;
        let plan = plan_releases(input(vec![c], batches("a", 1, 5, 10, now()), now()));
        assert_eq!(plan.releases.len(), 2);
        assert_eq!(plan.deferrals.len(), 3);
        let midnight: DateTime<Utc> = "2026-11-28T23:00:00Z".parse().unwrap();
        assert!(plan.deferrals.iter().all(|d| d.reason == DeferReason::DailyCap && d.until == midnight));
    }

    #[test]
    fn a_paused_campaign_releases_nothing() {
        let mut c = campaign("a");
        c.status = CampaignStatus::Paused;
        let plan = plan_releases(input(vec![c], batches("a", 1, 3, 10, now()), now()));
        assert!(plan.releases.is_empty());
        assert_eq!(plan.deferrals.len(), 3);
        assert!(plan.deferrals.iter().all(|d| d.reason == DeferReason::Paused && d.until == now() + DORMANT_RECHECK));
        assert!(plan.states.is_empty() && plan.ledger.is_empty());
    }

    #[test]
    fn campaigns_sharing_a_partner_take_turns() {
        let mut big = batches("big", 1, 500, 1, now());
        big.extend(batches("small", 1000, 3, 1, now()));
        let mut inp = input(vec![campaign("big"), campaign("small")], big, now());
        inp.partners.insert(
            PartnerId::parse("p").unwrap(),
            PartnerLimit { rate_per_second: Some(2), ..PartnerLimit::unlimited() },
        );
        let plan = plan_releases(inp);
        let small: Vec<u32> = plan.releases.iter().filter(|r| r.batch_id >= 1000).map(|r| r.delay_seconds).collect();
        assert_eq!(small, vec![0, 1, 2], "one of the two per-second slots goes to the small campaign");
        assert_eq!(plan.releases.len(), 120, "the partner's 2/s over the minute");
    }

    #[test]
    fn a_batch_larger_than_a_second_allows_is_spread() {
        let mut c = campaign("a");
        c.max_per_second = Some(4);
        let plan = plan_releases(input(vec![c], batches("a", 1, 1, 10, now()), now()));
        assert_eq!(plan.releases, vec![PlannedRelease { batch_id: 1, delay_seconds: 0, spread_seconds: 3 }]);
    }

    #[test]
    fn a_batch_the_horizon_cannot_complete_gives_its_reservations_back() {
        let mut c = campaign("a");
        c.max_per_minute = Some(25);
        c.cost_per_click = Micros(1000);
        let plan = plan_releases(input(vec![c], batches("a", 1, 3, 10, now()), now()));
        // 25 a minute: two whole batches, and 5 clicks of the third that cannot go before the next run.
        assert_eq!(plan.releases.len(), 2);
        assert_eq!(plan.ledger.values().map(|d| (d.clicks, d.micros)).collect::<Vec<_>>(), vec![(20, 20_000)]);
        assert_eq!(plan.deferrals.iter().map(|d| d.batch_id).collect::<Vec<_>>(), vec![3]);
        let state = &plan.states[&CampaignId::parse("a").unwrap()];
        assert_eq!(state.released_today, 20, "{state:?}");
    }

    #[test]
    fn a_slow_plan_spreads_each_batch_until_its_last_click_is_due() {
        let mut c = campaign("a");
        c.pacing = crate::domain::PacingMode::Even;
        c.daily_cap = Some(8_640); // one click every 10 seconds over the UTC day
        let midnight: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
        let plan = plan_releases(input(vec![c], batches("a", 1, 3, 10, midnight), midnight));
        // The first click is due in the first second and the tenth by second 90: the whole batch goes at once,
        // spread over 91 seconds; the next one waits for the plan to catch up.
        assert_eq!(plan.releases, vec![PlannedRelease { batch_id: 1, delay_seconds: 0, spread_seconds: 91 }]);
        assert_eq!(plan.ledger.values().map(|d| d.clicks).sum::<u64>(), 10);
        assert!(plan.deferrals.iter().all(|d| d.reason == DeferReason::PacingPlan));
    }

    #[test]
    fn a_slow_plan_waits_for_a_minute_rate_to_accrue_the_batch_then_spreads_it() {
        let mut c = campaign("a");
        c.pacing = crate::domain::PacingMode::Even;
        c.daily_cap = Some(8_640);
        c.max_per_minute = Some(90); // accrues 1.5 a second: 10 clicks by the end of second 6
        let midnight: DateTime<Utc> = "2026-11-28T00:00:00Z".parse().unwrap();
        let plan = plan_releases(input(vec![c], batches("a", 1, 3, 10, midnight), midnight));
        assert_eq!(plan.releases, vec![PlannedRelease { batch_id: 1, delay_seconds: 6, spread_seconds: 85 }]);
        assert_eq!(plan.ledger.values().map(|d| d.clicks).sum::<u64>(), 10);
    }

    #[test]
    fn a_batch_is_never_reserved_across_local_midnight() {
        let mut c = campaign("a");
        c.max_per_second = Some(2);
        c.cost_per_click = Micros(100);
        let before_midnight: DateTime<Utc> = "2026-11-28T23:59:58Z".parse().unwrap();
        let plan = plan_releases(input(vec![c], batches("a", 1, 1, 6, before_midnight), before_midnight));
        // Two seconds before midnight would not carry it: it starts over at midnight, so its whole reservation is
        // one day's, the day the bridge counts its deliveries on and the day its cap counts it.
        assert_eq!(plan.releases, vec![PlannedRelease { batch_id: 1, delay_seconds: 2, spread_seconds: 3 }]);
        let day = before_midnight.date_naive().succ_opt().unwrap();
        let ledger: Vec<_> = plan.ledger.iter().map(|((_, d), r)| (*d, r.clicks, r.micros)).collect();
        assert_eq!(ledger, vec![(day, 6, 600)]);
        assert_eq!(plan.reservations[&1], (day, DayReservation { clicks: 6, micros: 600 }));
    }

    #[test]
    fn a_batch_no_run_can_carry_goes_spread_over_the_time_its_rate_needs() {
        let mut c = campaign("a");
        c.daily_cap = Some(100);
        let mut inp = input(vec![c.clone()], batches("a", 1, 2, 10, now()), now());
        inp.horizon_seconds = 1;
        inp.partners.insert(
            PartnerId::parse("p").unwrap(),
            PartnerLimit { rate_per_second: Some(2), ..PartnerLimit::unlimited() },
        );
        let plan = plan_releases(inp);
        // Two clicks a second and a one-second run: the batch of ten would wait forever for a run that can take
        // it whole. It goes, spread over the five seconds its rate needs; the next one waits its turn.
        assert_eq!(plan.releases, vec![PlannedRelease { batch_id: 1, delay_seconds: 0, spread_seconds: 5 }]);
        assert_eq!(plan.ledger.values().map(|d| d.clicks).sum::<u64>(), 10);
        assert_eq!(plan.states[&CampaignId::parse("a").unwrap()].released_today, 10);
        assert_eq!(plan.deferrals.iter().map(|d| d.batch_id).collect::<Vec<_>>(), vec![2]);

        // Unless the cap cannot take the rest: then it waits, nothing reserved.
        c.daily_cap = Some(5);
        let mut inp = input(vec![c], batches("a", 1, 1, 10, now()), now());
        inp.horizon_seconds = 1;
        inp.partners.insert(
            PartnerId::parse("p").unwrap(),
            PartnerLimit { rate_per_second: Some(2), ..PartnerLimit::unlimited() },
        );
        let plan = plan_releases(inp);
        assert!(plan.releases.is_empty() && plan.ledger.is_empty(), "{:?}", plan.releases);
    }

    /// A daily cap with room for fewer clicks than the batch holds, on a partner whose rate binds first: the
    /// partner's rate let part of the batch be reserved, the cap could not take the rest, the reservation was
    /// given back, and the batch was deferred to the next second, every run, for the rest of the day (a chaos
    /// round's campaign sat "due in 1 s" for minutes). A cap that cannot take the whole batch defers it to the
    /// next local day however the rates stand.
    #[test]
    fn a_batch_the_days_cap_cannot_take_waits_for_the_next_day_even_when_a_rate_binds_first() {
        let tokyo = chrono_tz::Asia::Tokyo;
        let mut c = campaign("a");
        c.time_zone = tokyo;
        c.daily_cap = Some(163);
        let mut state = PacingState::default();
        state.record_release(&c, now() - Duration::minutes(5), 141);
        let mut inp = input(vec![c.clone()], batches("a", 1, 2, 25, now()), now());
        inp.horizon_seconds = 1;
        inp.campaigns.insert(c.campaign_id.clone(), (c, state));
        inp.partners.insert(
            PartnerId::parse("p").unwrap(),
            PartnerLimit { rate_per_second: Some(16), ..PartnerLimit::unlimited() },
        );
        let plan = plan_releases(inp);
        assert!(plan.releases.is_empty() && plan.ledger.is_empty(), "{:?}", plan.releases);
        let next_day = crate::pacing::LocalDay::containing(tokyo, now()).end;
        let deferrals: Vec<_> = plan.deferrals.iter().map(|d| (d.batch_id, d.reason, d.until)).collect();
        assert_eq!(deferrals, vec![(1, DeferReason::DailyCap, next_day), (2, DeferReason::DailyCap, next_day)]);
    }

    #[test]
    fn future_batches_wait_for_their_second() {
        let plan =
            plan_releases(input(vec![campaign("a")], batches("a", 1, 1, 5, now() + Duration::seconds(42)), now()));
        assert_eq!(plan.releases[0].delay_seconds, 42);
    }
}
