//! The allowance: how many of a campaign's waiting clicks may be released at one instant, and if not all, why not
//! and when to come back.
//!
//! Every rule a campaign or its partner carries is evaluated on its own as "how many more clicks would this rule
//! let go right now"; the allowance is the minimum of those and of what is pending. The rules are pure functions of
//! the campaign, the counters, the partner's limit and the clock, so any number of pacers reading the same committed
//! counters reach the same answer, and a pacer can plan ahead (e.g. per-message SQS delays within a minute) by
//! asking about future instants with the counters it would have by then.

use std::cmp::Reverse;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::calendar::{LocalDay, at_millis, clamp};
use super::state::{PacingState, PartnerLimit, RateWindow};
use crate::domain::{Campaign, CampaignStatus, CatchUp, HourlyWeights, Micros, PacingMode};

/// Why fewer clicks than are pending may go now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DeferReason {
    /// The campaign is archived: nothing will ever go.
    Archived,
    /// A person paused the campaign: nothing goes until a person resumes it.
    Paused,
    BeforeFlight,
    AfterFlight,
    TotalBudget,
    DailyCap,
    DailyBudget,
    /// The partner answered with Retry-After and that instant has not come yet.
    PartnerRetryAfter,
    /// The hourly curve gives the current local hour no weight.
    Daypart,
    /// Even or curve pacing: delivery is on (or ahead of) plan for this point of the day.
    PacingPlan,
    RatePerHour,
    RatePerMinute,
    RatePerSecond,
    /// The partner's rate, scaled by its adaptive allowance.
    PartnerRate,
}

impl DeferReason {
    pub const ALL: [Self; 14] = [
        Self::Archived,
        Self::Paused,
        Self::BeforeFlight,
        Self::AfterFlight,
        Self::TotalBudget,
        Self::DailyCap,
        Self::DailyBudget,
        Self::PartnerRetryAfter,
        Self::Daypart,
        Self::PacingPlan,
        Self::RatePerHour,
        Self::RatePerMinute,
        Self::RatePerSecond,
        Self::PartnerRate,
    ];

    /// The reason a stored name (`batches.defer_reason`) stands for.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == name)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Archived => "archived",
            Self::Paused => "paused",
            Self::BeforeFlight => "before_flight",
            Self::AfterFlight => "after_flight",
            Self::TotalBudget => "total_budget",
            Self::DailyCap => "daily_cap",
            Self::DailyBudget => "daily_budget",
            Self::PartnerRetryAfter => "partner_retry_after",
            Self::Daypart => "daypart",
            Self::PacingPlan => "pacing_plan",
            Self::RatePerHour => "rate_per_hour",
            Self::RatePerMinute => "rate_per_minute",
            Self::RatePerSecond => "rate_per_second",
            Self::PartnerRate => "partner_rate",
        }
    }
}

/// The engine's answer for one campaign at one instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Allowance {
    /// Clicks that may be released now: never more than were pending.
    pub clicks: u64,
    /// The rule that held clicks back; `None` when every pending click may go.
    pub reason: Option<DeferReason>,
    /// When clicks were held back: the earliest instant at which at least one more could go, assuming the
    /// `clicks` allowed now are released now and nothing else changes (no new clicks, no edits to the campaign or
    /// the partner). `None` when nothing was held back, or when the wait does not end by the clock: archived,
    /// paused, after the flight, total budget spent, a zero cap or rate.
    pub next_release_at: Option<DateTime<Utc>>,
}

/// How many of `pending` clicks of `campaign` may be released at `now`.
///
/// `state` holds the campaign's committed counters and `partner` its partner's limit; counters that belong to an
/// earlier day or window are read as zero. The answer obeys every rule at once:
///
/// - **Status and flight**: nothing while paused or archived, nothing outside `[flight_start, flight_end)`.
/// - **Budgets**: `floor(remaining / cost_per_click)` for the daily and total budgets, when the price is positive
///   (free clicks are not limited by budgets).
/// - **Daily cap**: the cap minus what the local day already released; resets at local midnight, DST included.
/// - **Rates**: the campaign's per-second, per-minute and per-hour limits hold in every fixed UTC window (see
///   [`RateWindow`]). Within a minute or an hour window the limit accrues second by second (`ceil(limit ×
///   elapsed / window)`, the current second counted as elapsed), so a per-minute limit becomes a steady flow,
///   never a burst at the top of the minute; behind that schedule, the backlog is caught up at once.
/// - **Partner**: nothing before its Retry-After; at most its effective rate per UTC second.
/// - **Pacing plan** (even and hourly curve): see [`PacingMode`] and the module documentation.
pub fn allowance(
    campaign: &Campaign,
    state: &PacingState,
    partner: &PartnerLimit,
    pending: u64,
    now: DateTime<Utc>,
) -> Allowance {
    let now = clamp(now);
    let rules = rules_at(campaign, state, partner, pending, now);
    let limit = rules.iter().map(|r| r.limit).min().unwrap_or(u64::MAX);
    if limit >= pending {
        return Allowance { clicks: pending, reason: None, next_release_at: None };
    }
    let clicks = limit;
    // Among the rules that bind, report the one that holds on longest (never relaxing counts as longest): it is
    // what the wait is for, and when it relaxes is a lower bound for the next release. Ties go to the more
    // fundamental rule, which is the earlier one in `rules`.
    let Some(binding) =
        rules.iter().filter(|r| r.limit == clicks).min_by_key(|r| Reverse(r.relaxes_at.unwrap_or(i64::MAX)))
    else {
        return Allowance { clicks, reason: None, next_release_at: None };
    };
    let next_release_at = binding
        .relaxes_at
        .and_then(|lower_bound| earliest_release(campaign, state, partner, pending, now, clicks, lower_bound));
    let reason = binding.reason;
    Allowance { clicks, reason: Some(reason), next_release_at }
}

/// How many times [`earliest_release`] re-evaluates before settling for a lower bound. Each round jumps at least
/// to the next rule boundary (a window, an hour, a day), so real campaigns settle in a handful.
const MAX_ROUNDS: usize = 64;

/// Walks forward from `lower_bound` (when the rules that bind now relax) until every rule lets a click go, with
/// the counters as they will be once `clicks` are released at `now`. Each step jumps to the latest instant at
/// which a rule that still says zero relaxes, so the answer stays a lower bound while it tightens.
fn earliest_release(
    campaign: &Campaign,
    state: &PacingState,
    partner: &PartnerLimit,
    pending: u64,
    now: DateTime<Utc>,
    clicks: u64,
    lower_bound: i64,
) -> Option<DateTime<Utc>> {
    let mut state = state.clone();
    state.record_release(campaign, now, clicks);
    let mut partner = partner.clone();
    partner.record_release(now, clicks);
    let pending = pending.saturating_sub(clicks).max(1);
    let mut t = lower_bound;
    for _ in 0..MAX_ROUNDS {
        let at = at_millis(t);
        let mut next = t;
        for rule in rules_at(campaign, &state, &partner, pending, at).iter().filter(|r| r.limit == 0) {
            next = next.max(rule.relaxes_at?);
        }
        if next <= t {
            return Some(at);
        }
        t = next;
    }
    Some(at_millis(t))
}

/// The cap or budget that cannot take all of `pending` at `now`, with when it relaxes (the next local day; `None`
/// for the total budget). Rates and the plan refill with time, so part of a batch may be reserved against them;
/// a cap or budget does not, and a batch it cannot take whole must wait for it, whatever binds first now.
pub fn cap_short_of(
    campaign: &Campaign,
    state: &PacingState,
    partner: &PartnerLimit,
    pending: u64,
    now: DateTime<Utc>,
) -> Option<(DeferReason, Option<DateTime<Utc>>)> {
    let now = clamp(now);
    rules_at(campaign, state, partner, pending, now)
        .into_iter()
        .filter(|r| matches!(r.reason, DeferReason::DailyCap | DeferReason::DailyBudget | DeferReason::TotalBudget))
        .find(|r| r.limit < pending)
        .map(|r| (r.reason, r.relaxes_at.map(at_millis)))
}

/// What [`plan_spread`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PlanSpread {
    /// Release the whole of `pending` now, its clicks spread until this instant (the second by which the plan has
    /// accrued the last of them).
    Until(DateTime<Utc>),
    /// Not now, but at this instant (within a minute) every other rule lets the whole of `pending` go: a rate
    /// window that accrues second by second (per minute, per hour) has not accrued it yet.
    NotBefore(DateTime<Utc>),
}

/// When the pacing plan alone holds back part of `pending` (every other rule lets all of it go at `now`, and the
/// plan lets at least one click go), the instant by which the plan has accrued all of it. The planner then
/// releases the batch whole and has the bridge spread its clicks until that instant: the partner sees the plan's
/// flow instead of a batch-sized lump each time the plan has accrued a batch. Releasing ahead of the plan this
/// way never passes a cap, budget or rate: those rules let the whole batch go at the release instant. `None`
/// when the plan does not bind, or when another rule will not let the whole batch go within a minute.
pub fn plan_spread(
    campaign: &Campaign,
    state: &PacingState,
    partner: &PartnerLimit,
    pending: u64,
    now: DateTime<Utc>,
) -> Option<PlanSpread> {
    let now = clamp(now);
    let (plan_limit, others_allow) = plan_and_others(campaign, state, partner, pending, now)?;
    if plan_limit == 0 || plan_limit >= pending {
        return None;
    }
    if !others_allow {
        // A rate window accruing second by second may let the whole batch go a few seconds on.
        return (1..=60).map(|s| now + chrono::Duration::seconds(s)).find_map(|at| {
            let (plan_limit, others_allow) = plan_and_others(campaign, state, partner, pending, at)?;
            (others_allow && plan_limit > 0).then_some(PlanSpread::NotBefore(at))
        });
    }
    let at_ms = now.timestamp_millis();
    let day = LocalDay::containing(campaign.time_zone, now);
    let released_today = state.released_on(day.date);
    let Plan::Accruing { plan, .. } = plan_at(campaign, &day, released_today, pending, at_ms) else { return None };
    // The plan has accrued `released_today + pending` by the end of the second `next_above` names.
    let last = plan.next_above(at_ms, released_today.saturating_add(pending) - 1)?;
    Some(PlanSpread::Until(at_millis(last)))
}

/// The plan rule's limit at `at`, and whether every other rule lets all of `pending` go; `None` without a plan.
fn plan_and_others(
    campaign: &Campaign,
    state: &PacingState,
    partner: &PartnerLimit,
    pending: u64,
    at: DateTime<Utc>,
) -> Option<(u64, bool)> {
    let rules = rules_at(campaign, state, partner, pending, at);
    let plan = rules.iter().find(|r| r.reason == DeferReason::PacingPlan)?;
    let others_allow = rules.iter().filter(|r| r.reason != DeferReason::PacingPlan).all(|r| r.limit >= pending);
    Some((plan.limit, others_allow))
}

/// The pacing plan over the part of the local day inside the flight.
enum Plan {
    /// ASAP: no plan.
    None,
    /// A closed daypart: nothing goes, catch-up or not.
    Closed(Rule),
    Accruing {
        plan: Accrual,
        window_end: i64,
    },
}

fn plan_at(campaign: &Campaign, day: &LocalDay, released_today: u64, pending: u64, at_ms: i64) -> Plan {
    let Some((plan, window_end)) = plan_of_day(campaign, day, released_today, pending) else { return Plan::None };
    if let PacingMode::HourlyCurve(weights) = &campaign.pacing
        && let Some(i) = plan.segments.iter().position(|s| s.start <= at_ms && at_ms < s.end)
        && plan.segments[i].weight == 0
    {
        // A daypart is closed even when delivery is behind plan: no catch-up in a zero hour.
        let reopens = plan.segments[i..].iter().find(|s| s.weight > 0).map_or(window_end, |s| s.start);
        let relaxes_at = fixed_point(weights).iter().any(|w| *w > 0).then_some(reopens);
        return Plan::Closed(Rule::closed(DeferReason::Daypart, relaxes_at));
    }
    Plan::Accruing { plan, window_end }
}

/// The plan's accrual over the part of `day` inside the flight, and that part's end (Unix ms); `None` for ASAP.
fn plan_of_day(campaign: &Campaign, day: &LocalDay, released_today: u64, pending: u64) -> Option<(Accrual, i64)> {
    let window_start = campaign.flight_start.map_or(day.start, |s| s.max(day.start)).timestamp_millis();
    let window_end = campaign.flight_end.map_or(day.end, |e| e.min(day.end)).timestamp_millis();
    let volume = daily_limit(campaign).unwrap_or_else(|| released_today.saturating_add(pending));
    let segments = match &campaign.pacing {
        PacingMode::Asap => return None,
        PacingMode::Even => vec![Segment { start: window_start, end: window_end, weight: 1 }],
        PacingMode::HourlyCurve(weights) => {
            let weights = fixed_point(weights);
            day.hours(campaign.time_zone)
                .iter()
                .map(|h| Segment {
                    start: h.start.timestamp_millis().max(window_start),
                    end: h.end.timestamp_millis().min(window_end),
                    weight: weights[h.hour as usize % 24],
                })
                .filter(|s| s.start < s.end)
                .collect()
        }
    };
    Some((Accrual::new(volume, segments), window_end))
}

/// The plan of `day` as the engine paces it: the day's volume (the cap or what the daily budget buys; without
/// either, `released` that day plus `pending`) and, for each instant asked, the clicks due by then. `None` for
/// ASAP, which has no plan.
pub fn day_plan(campaign: &Campaign, day: &LocalDay, released: u64, pending: u64) -> Option<DayPlan> {
    plan_of_day(campaign, day, released, pending).map(|(accrual, _)| DayPlan { accrual })
}

/// See [`day_plan`].
#[derive(Debug, Clone)]
pub struct DayPlan {
    accrual: Accrual,
}

impl DayPlan {
    pub fn volume(&self) -> u64 {
        self.accrual.volume
    }

    /// Clicks the plan has due by `at` (by the end of the second before it: an hour ending at `at` counts whole).
    pub fn due_by(&self, at: DateTime<Utc>) -> u64 {
        self.accrual.due(at.timestamp_millis().saturating_sub(1))
    }
}

/// One rule's verdict at one instant.
#[derive(Debug, Clone, Copy)]
struct Rule {
    reason: DeferReason,
    /// Clicks this rule lets go now.
    limit: u64,
    /// Earliest instant (Unix ms) at which the rule would let one more click go than `limit`, once `limit` clicks
    /// are released now; `None` if it never will by the clock alone.
    relaxes_at: Option<i64>,
}

impl Rule {
    fn closed(reason: DeferReason, relaxes_at: Option<i64>) -> Self {
        Self { reason, limit: 0, relaxes_at }
    }
}

/// Every rule's verdict at `at`, most fundamental first.
fn rules_at(
    campaign: &Campaign,
    state: &PacingState,
    partner: &PartnerLimit,
    pending: u64,
    at: DateTime<Utc>,
) -> Vec<Rule> {
    match campaign.status {
        CampaignStatus::Archived => return vec![Rule::closed(DeferReason::Archived, None)],
        CampaignStatus::Paused => return vec![Rule::closed(DeferReason::Paused, None)],
        CampaignStatus::Active => {}
    }
    if let Some(end) = campaign.flight_end
        && at >= end
    {
        return vec![Rule::closed(DeferReason::AfterFlight, None)];
    }
    if let Some(start) = campaign.flight_start
        && at < start
    {
        return vec![Rule::closed(DeferReason::BeforeFlight, Some(clamp(start).timestamp_millis()))];
    }

    let at_ms = at.timestamp_millis();
    let day = LocalDay::containing(campaign.time_zone, at);
    let day_end = day.end.timestamp_millis();
    let released_today = state.released_on(day.date);
    let price = campaign.cost_per_click.0;
    let mut rules = Vec::with_capacity(10);

    if price > 0
        && let Some(budget) = campaign.total_budget
    {
        let limit = affordable(budget, state.reserved_total, price);
        rules.push(Rule { reason: DeferReason::TotalBudget, limit, relaxes_at: None });
    }
    if let Some(cap) = campaign.daily_cap {
        let relaxes_at = (cap > 0).then_some(day_end);
        rules.push(Rule { reason: DeferReason::DailyCap, limit: cap.saturating_sub(released_today), relaxes_at });
    }
    if price > 0
        && let Some(budget) = campaign.daily_budget
    {
        let limit = affordable(budget, state.reserved_on(day.date), price);
        let relaxes_at = (affordable(budget, Micros(0), price) > 0).then_some(day_end);
        rules.push(Rule { reason: DeferReason::DailyBudget, limit, relaxes_at });
    }
    if let Some(until) = partner.retry_after_until
        && at < until
    {
        rules.push(Rule::closed(DeferReason::PartnerRetryAfter, Some(clamp(until).timestamp_millis())));
    }

    match plan_at(campaign, &day, released_today, pending, at_ms) {
        Plan::None => {}
        Plan::Closed(rule) => rules.push(rule),
        Plan::Accruing { plan, window_end } => {
            let rule = plan_rule(&plan, at_ms, released_today, window_end);
            rules.push(match campaign.catch_up {
                CatchUp::Asap => rule,
                CatchUp::Spread => catch_up_rule(rule, &plan, state, at_ms, released_today, 100),
                CatchUp::Ahead(percent) => catch_up_rule(rule, &plan, state, at_ms, released_today, percent),
            });
        }
    }

    for (window, max, reason) in [
        (RateWindow::Hour, campaign.max_per_hour, DeferReason::RatePerHour),
        (RateWindow::Minute, campaign.max_per_minute, DeferReason::RatePerMinute),
        (RateWindow::Second, campaign.max_per_second, DeferReason::RatePerSecond),
    ] {
        if let Some(max) = max {
            let start = window.start_millis(at_ms);
            let used = state.window(window).released_in(at_millis(start));
            rules.push(rate_rule(reason, u64::from(max), used, start, window.millis(), at_ms));
        }
    }
    if let Some(rate) = partner.effective_rate_per_second() {
        let start = RateWindow::Second.start_millis(at_ms);
        // Clicks the bridges still owe the partner hold back ASAP campaigns only. A planned (even or curve)
        // campaign's due clicks are part of a promise per local hour: deferring them behind an ASAP backlog
        // turns that backlog into plan error, while the ASAP campaigns, which have no such promise, absorb it.
        let owed = if campaign.pacing == PacingMode::Asap { partner.overdue_in(at_millis(start), rate) } else { 0 };
        let used = partner.second.released_in(at_millis(start)) + owed;
        rules.push(rate_rule(DeferReason::PartnerRate, rate, used, start, 1_000, at_ms));
    }
    rules
}

/// The day's volume when it is fixed by the campaign: the daily cap or what the daily budget buys, whichever is
/// smaller. `None` when neither limits the day.
fn daily_limit(campaign: &Campaign) -> Option<u64> {
    let price = campaign.cost_per_click.0;
    let by_budget = campaign.daily_budget.filter(|_| price > 0).map(|b| affordable(b, Micros(0), price));
    match (campaign.daily_cap, by_budget) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Whole clicks the rest of `budget` pays for at `price` (> 0).
fn affordable(budget: Micros, reserved: Micros, price: i64) -> u64 {
    let remaining = budget.0.saturating_sub(reserved.0);
    if remaining <= 0 || price <= 0 { 0 } else { u64::try_from(remaining / price).unwrap_or(0) }
}

/// A rate limit over one fixed window. A one-second window is the atom and allows its whole limit at once; longer
/// windows accrue the limit over their seconds.
fn rate_rule(reason: DeferReason, max: u64, used: u64, start: i64, length: i64, at_ms: i64) -> Rule {
    if max == 0 {
        return Rule::closed(reason, None);
    }
    let end = start.saturating_add(length);
    if length <= 1_000 {
        return Rule { reason, limit: max.saturating_sub(used), relaxes_at: Some(end) };
    }
    let schedule = Accrual::new(max, vec![Segment { start, end, weight: 1 }]);
    let due = schedule.due(at_ms);
    let relaxes_at = schedule.next_above(at_ms, used.max(due)).unwrap_or(end);
    Rule { reason, limit: due.saturating_sub(used), relaxes_at: Some(relaxes_at) }
}

/// The plan's verdict: what is due by the end of the current second, minus what already went today.
fn plan_rule(plan: &Accrual, at_ms: i64, released_today: u64, window_end: i64) -> Rule {
    let due = plan.due(at_ms);
    let relaxes_at = plan.next_above(at_ms, released_today.max(due)).unwrap_or(window_end);
    Rule { reason: DeferReason::PacingPlan, limit: due.saturating_sub(released_today), relaxes_at: Some(relaxes_at) }
}

/// Behind plan, the pace at which the campaign catches up: from the start of the current UTC hour, the volume
/// still to go then (the plan's volume minus what the day released before the hour) accrues over the rest of
/// the plan window at `percent` % of the pace that spreads it evenly (or along the curve) to the window's end,
/// and the plan's own limit still bounds it (never ahead of plan). At 100 % a late file goes even from now on;
/// on plan, the two schedules are the same. Re-planned each hour, so a campaign that fell behind mid-hour
/// releases at most that hour's share of its spread at once. (A local day that starts mid-hour, in a half-hour
/// zone, counts the hour's releases from before its midnight too: the catch-up is then a little slower.)
fn catch_up_rule(
    plan_rule: Rule,
    plan: &Accrual,
    state: &PacingState,
    at_ms: i64,
    released_today: u64,
    percent: u16,
) -> Rule {
    let hour = RateWindow::Hour.start_millis(at_ms);
    let released_before = released_today.saturating_sub(state.hour.released_in(at_millis(hour)));
    let to_go = plan.volume.saturating_sub(released_before);
    let scaled = u64::try_from(u128::from(to_go) * u128::from(percent) / 100).unwrap_or(u64::MAX);
    let rest = plan.from(hour, scaled);
    let since_hour = released_today - released_before;
    let due = rest.due(at_ms).min(to_go);
    let limit = due.saturating_sub(since_hour);
    if limit >= plan_rule.limit {
        return plan_rule;
    }
    // The next hour re-plans the catch-up, which may let a click go sooner than this hour's schedule would.
    let next_hour = hour.saturating_add(RateWindow::Hour.millis());
    let relaxes_at = rest.next_above(at_ms, since_hour.max(due)).map_or(next_hour, |t| t.min(next_hour));
    Rule { reason: DeferReason::PacingPlan, limit, relaxes_at: Some(relaxes_at) }
}

/// Hourly weights as integers (largest = 1,000,000), so the plan is exact integer arithmetic and every pacer
/// computes the same numbers. A positive weight stays positive, however small.
fn fixed_point(weights: &HourlyWeights) -> [u64; 24] {
    let weights = weights.weights();
    let max = weights.iter().copied().fold(0.0_f64, f64::max);
    let mut fixed = [0_u64; 24];
    if max.is_finite() && max > 0.0 {
        for (f, w) in fixed.iter_mut().zip(weights) {
            if *w > 0.0 {
                *f = ((w / max * 1_000_000.0).round() as u64).max(1);
            }
        }
    }
    fixed
}

/// A span of time (Unix ms) with a relative delivery rate.
#[derive(Debug, Clone, Copy)]
struct Segment {
    start: i64,
    end: i64,
    weight: u64,
}

/// `volume` clicks accruing over `segments` in proportion to weight × duration, all of them by the end of the
/// last segment. It is evaluated at the end of the current second, which lets the first click go in the first
/// second and the last one in the last second: in seconds, "what is due by now" is "due by this second's end".
#[derive(Debug, Clone)]
struct Accrual {
    volume: u64,
    segments: Vec<Segment>,
    total: u128,
}

impl Accrual {
    fn new(volume: u64, segments: Vec<Segment>) -> Self {
        let total = segments.iter().map(|s| weighted(s, s.end)).sum();
        Self { volume, segments, total }
    }

    /// `volume` clicks accruing over the part of these segments from `start_ms` on.
    fn from(&self, start_ms: i64, volume: u64) -> Self {
        let segments = self
            .segments
            .iter()
            .filter(|s| s.end > start_ms)
            .map(|s| Segment { start: s.start.max(start_ms), ..*s })
            .collect();
        Self::new(volume, segments)
    }

    /// Clicks due by the end of the second containing `at_ms`: `ceil(volume × accrued / total)`.
    fn due(&self, at_ms: i64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let horizon = end_of_second(at_ms);
        let accrued: u128 = self.segments.iter().map(|s| weighted(s, horizon)).sum();
        let due = u128::from(self.volume).saturating_mul(accrued).div_ceil(self.total);
        u64::try_from(due).unwrap_or(u64::MAX).min(self.volume)
    }

    /// The first second (after the one containing `at_ms`) by whose end more than `released` is due; `None` when
    /// no more than `released` will ever be due.
    fn next_above(&self, at_ms: i64, released: u64) -> Option<i64> {
        if released >= self.volume || self.total == 0 {
            return None;
        }
        // due > released  ⇔  volume × accrued > released × total  ⇔  accrued ≥ needed
        let needed = u128::from(released).saturating_mul(self.total) / u128::from(self.volume) + 1;
        let mut accrued = 0_u128;
        for s in &self.segments {
            let here = weighted(s, s.end);
            if s.weight > 0 && accrued + here >= needed {
                let ms = (needed - accrued).div_ceil(u128::from(s.weight));
                let horizon = s.start.saturating_add(i64::try_from(ms).unwrap_or(i64::MAX));
                // The horizon is the end of the release second.
                let second = ceil_to_second(horizon.saturating_sub(1_000));
                return Some(second.max(end_of_second(at_ms)));
            }
            accrued += here;
        }
        None
    }
}

/// The weighted time of `segment` that has passed by `until`.
fn weighted(segment: &Segment, until: i64) -> u128 {
    let elapsed = until.min(segment.end).saturating_sub(segment.start).max(0);
    u128::from(segment.weight) * u128::from(elapsed.unsigned_abs())
}

fn end_of_second(ms: i64) -> i64 {
    RateWindow::Second.start_millis(ms).saturating_add(1_000)
}

fn ceil_to_second(ms: i64) -> i64 {
    let floor = RateWindow::Second.start_millis(ms);
    if floor == ms { ms } else { floor.saturating_add(1_000) }
}

#[cfg(test)]
mod tests {
    use chrono::{Duration, NaiveDate, TimeZone};
    use chrono_tz::{America, Tz};

    use super::*;
    use crate::domain::{CampaignId, PartnerId};
    use crate::pacing::local_date;

    fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
    }

    fn campaign(tz: Tz) -> Campaign {
        let mut c = Campaign::unlimited(CampaignId::parse("c1").unwrap(), PartnerId::parse("p1").unwrap());
        c.time_zone = tz;
        c
    }

    fn ask(c: &Campaign, state: &PacingState, pending: u64, now: DateTime<Utc>) -> Allowance {
        allowance(c, state, &PartnerLimit::unlimited(), pending, now)
    }

    fn released(c: &Campaign, at: DateTime<Utc>, clicks: u64) -> PacingState {
        let mut state = PacingState::default();
        state.record_release(c, at, clicks);
        state
    }

    fn curve(hours: &[usize]) -> PacingMode {
        let mut w = [0.0; 24];
        for h in hours {
            w[*h] = 1.0;
        }
        PacingMode::HourlyCurve(HourlyWeights::parse(&w).unwrap())
    }

    #[track_caller]
    fn assert_deferred(a: Allowance, clicks: u64, reason: DeferReason, next: Option<DateTime<Utc>>) {
        assert_eq!(a, Allowance { clicks, reason: Some(reason), next_release_at: next });
    }

    #[test]
    fn everything_goes_when_no_rule_binds() {
        let c = campaign(Tz::UTC);
        let now = utc(2024, 5, 1, 12, 0, 0);
        assert_eq!(
            ask(&c, &PacingState::default(), 1_000_000, now),
            Allowance { clicks: 1_000_000, reason: None, next_release_at: None }
        );
        assert_eq!(ask(&c, &PacingState::default(), 0, now).clicks, 0);
    }

    #[test]
    fn paused_and_archived_wait_for_a_person() {
        let mut c = campaign(Tz::UTC);
        let now = utc(2024, 5, 1, 12, 0, 0);
        c.status = CampaignStatus::Paused;
        assert_deferred(ask(&c, &PacingState::default(), 5, now), 0, DeferReason::Paused, None);
        c.status = CampaignStatus::Archived;
        assert_deferred(ask(&c, &PacingState::default(), 5, now), 0, DeferReason::Archived, None);
    }

    #[test]
    fn flight_opens_at_its_start_and_never_after_its_end() {
        let mut c = campaign(Tz::UTC);
        let start = utc(2024, 5, 2, 8, 30, 0);
        c.flight_start = Some(start);
        c.flight_end = Some(utc(2024, 5, 3, 0, 0, 0));
        let s = PacingState::default();
        assert_deferred(ask(&c, &s, 5, utc(2024, 5, 1, 12, 0, 0)), 0, DeferReason::BeforeFlight, Some(start));
        assert_eq!(ask(&c, &s, 5, start).clicks, 5);
        assert_deferred(ask(&c, &s, 5, utc(2024, 5, 3, 0, 0, 0)), 0, DeferReason::AfterFlight, None);
        // A flight that ends before it starts never opens.
        c.flight_end = Some(start - Duration::hours(1));
        assert_deferred(ask(&c, &s, 5, utc(2024, 5, 1, 12, 0, 0)), 0, DeferReason::BeforeFlight, None);
    }

    #[test]
    fn daily_cap_waits_for_local_midnight_on_dst_days() {
        let mut c = campaign(America::New_York);
        c.daily_cap = Some(5);
        // Fall-back day: 25 hours, next midnight is 05:00 UTC.
        let now = utc(2024, 11, 3, 12, 0, 0);
        let a = ask(&c, &released(&c, now, 3), 10, now);
        assert_deferred(a, 2, DeferReason::DailyCap, Some(utc(2024, 11, 4, 5, 0, 0)));
        // Spring-forward day: 23 hours, next midnight is 04:00 UTC.
        let now = utc(2024, 3, 10, 12, 0, 0);
        let a = ask(&c, &released(&c, now, 5), 10, now);
        assert_deferred(a, 0, DeferReason::DailyCap, Some(utc(2024, 3, 11, 4, 0, 0)));
        c.daily_cap = Some(0);
        assert_deferred(ask(&c, &PacingState::default(), 10, now), 0, DeferReason::DailyCap, None);
    }

    #[test]
    fn budgets_allow_what_the_remaining_money_buys() {
        let mut c = campaign(Tz::UTC);
        c.cost_per_click = Micros(300_000);
        c.daily_budget = Some(Micros(1_000_000));
        let now = utc(2024, 5, 1, 12, 0, 0);
        let a = ask(&c, &PacingState::default(), 10, now);
        assert_deferred(a, 3, DeferReason::DailyBudget, Some(utc(2024, 5, 2, 0, 0, 0)));
        c.total_budget = Some(Micros(2_000_000));
        let mut state = released(&c, now - Duration::days(1), 5);
        assert_deferred(ask(&c, &state, 10, now), 1, DeferReason::TotalBudget, None);
        state.record_release(&c, now, 1);
        assert_deferred(ask(&c, &state, 10, now), 0, DeferReason::TotalBudget, None);
        // Free clicks are not limited by money.
        c.cost_per_click = Micros(0);
        assert_eq!(ask(&c, &state, 10, now).clicks, 10);
    }

    #[test]
    fn per_second_limit_waits_for_the_next_second() {
        let mut c = campaign(Tz::UTC);
        c.max_per_second = Some(5);
        let now = utc(2024, 5, 1, 12, 0, 0) + Duration::milliseconds(250);
        assert_deferred(
            ask(&c, &PacingState::default(), 10, now),
            5,
            DeferReason::RatePerSecond,
            Some(utc(2024, 5, 1, 12, 0, 1)),
        );
    }

    #[test]
    fn per_minute_limit_accrues_across_the_minute() {
        let mut c = campaign(Tz::UTC);
        c.max_per_minute = Some(10);
        let top = utc(2024, 5, 1, 12, 0, 0);
        // ceil(10 × 1s/60s) = 1 now; the second is due by the end of second 6 (10 × 7 / 60 > 1).
        let a = ask(&c, &PacingState::default(), 100, top);
        assert_deferred(a, 1, DeferReason::RatePerMinute, Some(utc(2024, 5, 1, 12, 0, 6)));
        assert_eq!(ask(&c, &released(&c, top, 1), 100, utc(2024, 5, 1, 12, 0, 6)).clicks, 1);
        // Spent for the minute: wait for the next one.
        let late = utc(2024, 5, 1, 12, 0, 59);
        let a = ask(&c, &released(&c, late, 10), 100, late);
        assert_deferred(a, 0, DeferReason::RatePerMinute, Some(utc(2024, 5, 1, 12, 1, 0)));
    }

    #[test]
    fn per_hour_limit_accrues_across_the_hour() {
        let mut c = campaign(Tz::UTC);
        c.max_per_hour = Some(2);
        let top = utc(2024, 5, 1, 10, 0, 0);
        let a = ask(&c, &PacingState::default(), 100, top);
        assert_deferred(a, 1, DeferReason::RatePerHour, Some(utc(2024, 5, 1, 10, 30, 0)));
    }

    #[test]
    fn partner_rate_and_retry_after() {
        let c = campaign(Tz::UTC);
        let now = utc(2024, 5, 1, 12, 0, 0);
        let mut partner = PartnerLimit { rate_per_second: Some(4), allowance: 0.5, ..PartnerLimit::unlimited() };
        let a = allowance(&c, &PacingState::default(), &partner, 10, now);
        assert_deferred(a, 2, DeferReason::PartnerRate, Some(now + Duration::seconds(1)));
        let until = now + Duration::seconds(90);
        partner.retry_after_until = Some(until);
        let a = allowance(&c, &PacingState::default(), &partner, 10, now);
        assert_deferred(a, 0, DeferReason::PartnerRetryAfter, Some(until));
        assert_eq!(allowance(&c, &PacingState::default(), &partner, 10, until).clicks, 2);
    }

    #[test]
    fn clicks_the_bridges_still_owe_a_partner_take_its_first_seconds() {
        let c = campaign(Tz::UTC);
        let now = utc(2024, 5, 1, 12, 0, 0);
        let overdue = Some(crate::pacing::Overdue { clicks: 6, since: now });
        let partner = PartnerLimit { rate_per_second: Some(4), overdue, ..PartnerLimit::unlimited() };
        let a = allowance(&c, &PacingState::default(), &partner, 10, now);
        assert_deferred(a, 0, DeferReason::PartnerRate, Some(now + Duration::seconds(1)));
        let next = now + Duration::seconds(1);
        assert_deferred(
            allowance(&c, &PacingState::default(), &partner, 10, next),
            2,
            DeferReason::PartnerRate,
            Some(next + Duration::seconds(1)),
        );
        assert_eq!(allowance(&c, &PacingState::default(), &partner, 10, now + Duration::seconds(2)).clicks, 4);
    }

    #[test]
    fn clicks_the_bridges_owe_hold_back_asap_campaigns_but_not_a_plan_that_is_due() {
        let mut c = campaign(Tz::UTC);
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(86_400 * 3);
        let now = utc(2024, 5, 1, 12, 0, 0);
        let overdue = Some(crate::pacing::Overdue { clicks: 40, since: now });
        let partner = PartnerLimit { rate_per_second: Some(4), overdue, ..PartnerLimit::unlimited() };
        // Half the day is due and nothing went yet: the partner's rate bounds the plan, the backlog does not.
        let a = allowance(&c, &PacingState::default(), &partner, 10, now);
        assert_deferred(a, 4, DeferReason::PartnerRate, Some(now + Duration::seconds(1)));
        // An ASAP campaign waits until the 40 owed clicks had their 10 seconds at 4 a second.
        c.pacing = PacingMode::Asap;
        let a = allowance(&c, &PacingState::default(), &partner, 10, now);
        assert_deferred(a, 0, DeferReason::PartnerRate, Some(now + Duration::seconds(10)));
    }

    #[test]
    fn even_plan_lets_the_first_click_go_at_midnight_and_the_next_on_schedule() {
        let mut c = campaign(Tz::UTC);
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(24);
        let midnight = utc(2024, 5, 1, 0, 0, 0);
        let a = ask(&c, &PacingState::default(), 100, midnight);
        assert_deferred(a, 1, DeferReason::PacingPlan, Some(utc(2024, 5, 1, 1, 0, 0)));
        let a = ask(&c, &released(&c, midnight, 1), 100, utc(2024, 5, 1, 0, 59, 59));
        assert_deferred(a, 0, DeferReason::PacingPlan, Some(utc(2024, 5, 1, 1, 0, 0)));
        assert_eq!(ask(&c, &released(&c, midnight, 1), 100, utc(2024, 5, 1, 1, 0, 0)).clicks, 1);
        // The last second of the day completes the cap.
        let a = ask(&c, &released(&c, midnight, 20), 100, utc(2024, 5, 1, 23, 59, 59));
        assert_deferred(a, 4, DeferReason::DailyCap, Some(utc(2024, 5, 2, 0, 0, 0)));
    }

    #[test]
    fn even_plan_spreads_over_the_23_hour_day() {
        let mut c = campaign(America::New_York);
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(23);
        let start = utc(2024, 3, 10, 5, 0, 0);
        // One click per real hour of the 23-hour day.
        let a = ask(&c, &released(&c, start, 1), 100, start + Duration::minutes(30));
        assert_deferred(a, 0, DeferReason::PacingPlan, Some(start + Duration::hours(1)));
    }

    #[test]
    fn even_plan_spreads_the_cap_over_a_flight_inside_the_day() {
        let mut c = campaign(Tz::UTC);
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(10);
        c.flight_start = Some(utc(2024, 5, 1, 12, 0, 0));
        c.flight_end = Some(utc(2024, 5, 1, 13, 0, 0));
        assert_eq!(ask(&c, &PacingState::default(), 100, utc(2024, 5, 1, 12, 0, 0)).clicks, 1);
        let a = ask(&c, &PacingState::default(), 100, utc(2024, 5, 1, 12, 59, 59));
        assert_deferred(a, 10, DeferReason::DailyCap, None);
    }

    #[test]
    fn even_plan_without_a_cap_spreads_what_is_pending_over_the_day() {
        let mut c = campaign(Tz::UTC);
        c.pacing = PacingMode::Even;
        // 8,640 waiting at midnight: one every 10 seconds.
        let midnight = utc(2024, 5, 1, 0, 0, 0);
        assert_eq!(ask(&c, &PacingState::default(), 8_640, midnight).clicks, 1);
        let a = ask(&c, &released(&c, midnight, 1), 8_639, midnight + Duration::seconds(5));
        assert_deferred(a, 0, DeferReason::PacingPlan, Some(midnight + Duration::seconds(10)));
        // At noon, with nothing released yet, half of them are due: at once when told to catch up so, else spread
        // over the rest of the day (ten seconds' worth per ten seconds: one now).
        let noon = utc(2024, 5, 1, 12, 0, 0);
        assert_eq!(ask(&c, &PacingState::default(), 8_640, noon).clicks, 1);
        c.catch_up = CatchUp::Asap;
        assert_eq!(ask(&c, &PacingState::default(), 8_640, noon).clicks, 4_321);
    }

    /// A file of 9,000 clicks dropped at 15:00 into an even campaign capped at 9,000 a day that has released
    /// nothing: catching up at once would send 5,625 (15/24 of the day) in one burst. Spread (the default) goes
    /// even from now on: 9,000 over the nine hours left, one click a second or so.
    #[test]
    fn a_late_upload_spreads_over_the_rest_of_the_day_unless_told_to_catch_up() {
        let mut c = campaign(Tz::UTC);
        c.pacing = PacingMode::Even;
        c.daily_cap = Some(9_000);
        let at = utc(2026, 12, 2, 15, 0, 0);
        let state = PacingState::default();
        // 9,000 over 32,400 s: ceil(0.28) = 1 in the first second, the next when the spread has accrued it.
        let spread = ask(&c, &state, 9_000, at);
        assert_eq!((spread.clicks, spread.reason), (1, Some(DeferReason::PacingPlan)), "{spread:?}");
        let later = ask(&c, &released(&c, at, 1), 8_999, at + Duration::seconds(1));
        assert_eq!(later.clicks, 0, "{later:?}");
        // An hour on, with the hour's 1,000 gone (9,000 x 1/9), the next hour goes the same way: no burst.
        let hour_on = ask(&c, &released(&c, at, 1_000), 8_000, at + Duration::hours(1));
        assert!(hour_on.clicks <= 2, "{hour_on:?}");

        c.catch_up = CatchUp::Ahead(120);
        let ahead = ask(&c, &PacingState::default(), 9_000, at + Duration::minutes(30));
        // 1.2 x 9,000 x 1,801 s / 32,400 s, due at once after half an hour of the new schedule.
        assert_eq!(ahead.clicks, 601, "{ahead:?}");

        c.catch_up = CatchUp::Asap;
        assert_eq!(ask(&c, &PacingState::default(), 9_000, at).clicks, 5_626);
    }

    #[test]
    fn hourly_curve_follows_the_weights_and_closes_zero_hours() {
        let mut c = campaign(America::New_York);
        c.pacing = curve(&[9, 10]);
        c.daily_cap = Some(120);
        let nine = utc(2024, 5, 1, 13, 0, 0); // 09:00 EDT
        // 120 clicks over two hours: one per minute (the second is due by the end of 09:01:00).
        assert_eq!(ask(&c, &PacingState::default(), 500, nine).clicks, 1);
        let a = ask(&c, &released(&c, nine, 1), 500, nine + Duration::seconds(30));
        assert_deferred(a, 0, DeferReason::PacingPlan, Some(nine + Duration::seconds(60)));
        // Behind plan at 10:30: the hour's half of its spread (60 of the 120 still to go over 10:00-11:00), or the
        // plan's 90 at once when told to catch up so.
        assert_eq!(ask(&c, &PacingState::default(), 500, nine + Duration::minutes(90)).clicks, 61);
        let asap = Campaign { catch_up: CatchUp::Asap, ..c.clone() };
        assert_eq!(ask(&asap, &PacingState::default(), 500, nine + Duration::minutes(90)).clicks, 91);
        // After 11:00 nothing goes until 09:00 tomorrow, even behind plan.
        let a = ask(&c, &PacingState::default(), 500, utc(2024, 5, 1, 15, 0, 0));
        assert_deferred(a, 0, DeferReason::Daypart, Some(utc(2024, 5, 2, 13, 0, 0)));
    }

    #[test]
    fn a_daypart_in_a_skipped_hour_waits_for_the_next_day_it_exists() {
        let mut c = campaign(America::New_York);
        c.pacing = curve(&[2]);
        // 02:00 does not exist on 2024-03-10: the next 2 a.m. is on the 11th (06:00 UTC, EDT).
        let a = ask(&c, &PacingState::default(), 5, utc(2024, 3, 10, 5, 30, 0));
        assert_deferred(a, 0, DeferReason::Daypart, Some(utc(2024, 3, 11, 6, 0, 0)));
    }

    #[test]
    fn the_longest_wait_is_the_reason_and_the_next_release_clears_every_rule() {
        let mut c = campaign(America::New_York);
        c.daily_cap = Some(3);
        c.max_per_second = Some(1);
        c.pacing = curve(&[6]);
        let now = utc(2024, 5, 1, 10, 30, 0); // 06:30 EDT
        let a = ask(&c, &released(&c, now, 3), 10, now);
        // The cap reopens at midnight, but hour 0 is closed: the next release is 06:00 tomorrow.
        assert_deferred(a, 0, DeferReason::DailyCap, Some(utc(2024, 5, 2, 10, 0, 0)));
    }

    #[test]
    fn cap_resets_exactly_once_per_local_day_across_dst_changes() {
        let tz = America::New_York;
        let mut c = campaign(tz);
        c.daily_cap = Some(3);
        for (from, days) in [(utc(2024, 3, 9, 5, 0, 0), 3), (utc(2024, 11, 2, 4, 0, 0), 3)] {
            let mut state = PacingState::default();
            let mut per_day = std::collections::BTreeMap::<NaiveDate, (u64, DateTime<Utc>)>::new();
            let mut t = from;
            let end = (0..days).fold(LocalDay::containing(tz, from), |d, _| d.following(tz)).start;
            while t < end {
                let a = ask(&c, &state, 1, t);
                if a.clicks > 0 {
                    state.record_release(&c, t, a.clicks);
                    per_day.entry(local_date(tz, t)).or_insert((0, t)).0 += a.clicks;
                } else {
                    assert_eq!(a.reason, Some(DeferReason::DailyCap));
                    assert_eq!(a.next_release_at, Some(LocalDay::containing(tz, t).end));
                }
                t += Duration::minutes(1);
            }
            assert_eq!(per_day.len(), days as usize);
            for (date, (count, first)) in per_day {
                assert_eq!(count, 3, "{date}");
                // The first release of each day happens at its local midnight, not an hour off.
                assert_eq!(first, LocalDay::containing(tz, first).start, "{date}");
            }
        }
    }
}
