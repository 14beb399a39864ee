//! Many pacer runs in a row, as the scheduled pacers make them: each run plans a short horizon that overlaps the
//! ones before it, and carries the counters (campaigns' and the partner's) and the batches' due times the runs
//! before it left. What a single plan gets right can still drift over runs; these follow a partner's seconds
//! across them.

use std::collections::HashMap;

use chrono::{DateTime, Duration, Utc};
use clickpacer::domain::{Campaign, CampaignId, PacingMode, PartnerId};
use clickpacer::pacing::{PacingState, PartnerLimit};
use clickpacer::release::{CandidateBatch, PlanInput, plan_releases};

/// The most batches a run claims of one campaign (the pacer's share at its default run size).
const CLAIM_SHARE: usize = 50;

struct Runs {
    campaigns: HashMap<CampaignId, (Campaign, PacingState)>,
    partner: PartnerLimit,
    batches: HashMap<i64, CandidateBatch>,
    /// Clicks released per campaign.
    released: HashMap<CampaignId, u64>,
    /// Every second the partner's counter ever held, as the last run left it.
    booked: HashMap<DateTime<Utc>, u64>,
}

fn partner_id() -> PartnerId {
    PartnerId::parse("steady").unwrap()
}

impl Runs {
    fn new(rate: u32, campaigns: Vec<(Campaign, u64)>, start: DateTime<Utc>) -> Self {
        let mut batches = HashMap::new();
        for (campaign, backlog) in &campaigns {
            for i in 0..backlog.div_ceil(campaign.batch_size as u64) {
                let batch_id = batches.len() as i64 + 1;
                batches.insert(
                    batch_id,
                    CandidateBatch {
                        batch_id,
                        campaign_id: campaign.campaign_id.clone(),
                        clicks: (backlog - i * campaign.batch_size as u64).min(campaign.batch_size as u64),
                        due_at: start,
                    },
                );
            }
        }
        Self {
            released: HashMap::new(),
            campaigns: campaigns
                .into_iter()
                .map(|(c, _)| (c.campaign_id.clone(), (c, PacingState::default())))
                .collect(),
            partner: PartnerLimit { rate_per_second: Some(rate), ..PartnerLimit::unlimited() },
            batches,
            booked: HashMap::new(),
        }
    }

    /// One run at `now` over `horizon` seconds, as the pacer applies it.
    fn run(&mut self, now: DateTime<Utc>, horizon: u32) {
        let horizon_end = now + Duration::seconds(i64::from(horizon));
        // Each campaign's first batches in due order, as the claim takes them (its share of a run).
        let mut candidates: Vec<CandidateBatch> = Vec::new();
        for id in self.campaigns.keys() {
            let mut due: Vec<&CandidateBatch> =
                self.batches.values().filter(|b| &b.campaign_id == id && b.due_at <= horizon_end).collect();
            due.sort_by_key(|b| (b.due_at, b.batch_id));
            candidates.extend(due.into_iter().take(CLAIM_SHARE).cloned());
        }
        candidates.sort_by_key(|b| (b.due_at, b.batch_id));
        let plan = plan_releases(PlanInput {
            now,
            horizon_seconds: horizon,
            max_batches: 10_000,
            campaigns: self.campaigns.clone(),
            partners: HashMap::from([(partner_id(), self.partner.clone())]),
            batches: candidates,
        });
        for release in &plan.releases {
            let batch = self.batches.remove(&release.batch_id).unwrap();
            *self.released.entry(batch.campaign_id).or_default() += batch.clicks;
        }
        for deferral in &plan.deferrals {
            if let Some(b) = self.batches.get_mut(&deferral.batch_id) {
                b.due_at = deferral.until;
            }
        }
        for (id, state) in plan.states {
            self.campaigns.get_mut(&id).unwrap().1 = state;
        }
        if let Some(partner) = plan.partners.get(&partner_id()) {
            self.partner.second = partner.second.clone();
            self.partner.second.forget_before(now - Duration::milliseconds(now.timestamp_subsec_millis().into()));
            for (second, clicks) in self.partner.second.iter() {
                self.booked.insert(second, clicks);
            }
        }
    }
}

fn asap(id: &str, batch_size: u32, change: impl FnOnce(&mut Campaign)) -> Campaign {
    let mut c = Campaign::unlimited(CampaignId::parse(id).unwrap(), partner_id());
    c.batch_size = batch_size;
    change(&mut c);
    c
}

/// Four pacers each running every 10 s with a 10 s horizon, staggered: a run every 2.5 s, each overlapping the
/// last by 7.5 s. A partner's second is booked only by clicks some message carries: what the partner's counter
/// says it was sent equals what the runs released, so the partner's rate is spent on clicks, not on bookings.
#[test]
fn a_partners_seconds_hold_only_released_clicks_over_overlapping_runs() {
    let start: DateTime<Utc> = "2026-12-03T00:00:00Z".parse().unwrap();
    let even = asap("even", 10, |c| {
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(864_000); // 10 a second over the UTC day
    });
    let fill = asap("fill", 10, |_| ());
    let per_second = asap("per-second", 10, |c| c.max_per_second = Some(5));
    let mut runs = Runs::new(40, vec![(even, 20_000), (fill, 20_000), (per_second, 20_000)], start);
    let seconds = 300;
    for k in 0..seconds * 2 / 5 {
        runs.run(start + Duration::milliseconds(2_500 * k), 10);
    }
    // Seconds the runs booked in full (every run after the first few, before the last horizon).
    let booked: u64 = runs.booked.values().sum();
    let released: u64 = runs.released.values().sum();
    assert!(
        booked <= released,
        "the partner's seconds hold {booked} clicks; the runs released {released} ({:?})",
        runs.released
    );
    let of = |id: &str| runs.released.get(&CampaignId::parse(id).unwrap()).copied().unwrap_or(0);
    // Released up to the last run's horizon end.
    let planned = (seconds + 10) as u64;
    assert!(of("even") >= 10 * planned * 95 / 100, "even released {} in {planned} s", of("even"));
    assert!(released >= 40 * planned * 95 / 100, "released {released} in {planned} s: {:?}", runs.released);
}

/// A partner with room for a planned campaign's plan and little more, shared with an ASAP backlog: the plan has a
/// schedule to keep and the backlog has none, so the plan's due clicks go first in every second and the backlog
/// takes what is left. Taking turns instead would leave the plan behind by half the backlog's turns, for good:
/// even pacing spreads a shortfall over the rest of the day, it does not make it up.
#[test]
fn a_planned_campaign_keeps_its_plan_on_a_partner_an_asap_backlog_fills() {
    let start: DateTime<Utc> = "2026-12-03T00:00:00Z".parse().unwrap();
    let even = asap("even", 10, |c| {
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(864_000);
    });
    let fill = asap("fill", 10, |_| ());
    let mut runs = Runs::new(14, vec![(even, 20_000), (fill, 20_000)], start);
    let seconds = 300;
    for k in 0..seconds * 2 / 5 {
        runs.run(start + Duration::milliseconds(2_500 * k), 10);
    }
    let of = |id: &str| runs.released.get(&CampaignId::parse(id).unwrap()).copied().unwrap_or(0);
    let planned = (seconds + 10) as u64;
    assert!(
        of("even") >= 10 * planned * 98 / 100,
        "even released {} of {} planned: {:?}",
        of("even"),
        10 * planned,
        runs.released
    );
    assert!(of("fill") > 0, "the backlog takes what the plan leaves");
}
