//! Property tests: a pacer loop with an injected clock, over random campaigns, zones, start instants and steps.
//!
//! The loop asks for the allowance, releases exactly that many, and books them twice: into the engine's own
//! [`PacingState`] (as the pacer would commit it) and into an independent ledger keyed by local date (computed with
//! chrono directly) and by UTC window start. Every invariant is checked against the ledger.

use std::collections::HashMap;

use chrono::{DateTime, Duration, NaiveDate, TimeZone, Timelike, Utc};
use chrono_tz::{America, Asia, Australia, Europe, Pacific, Tz};
use proptest::prelude::*;
use proptest::test_runner::FileFailurePersistence;

use super::*;
use crate::domain::{Campaign, CampaignId, CampaignStatus, HourlyWeights, Micros, PacingMode, PartnerId};

const ZONES: [Tz; 10] = [
    America::New_York,
    Europe::Berlin,
    Australia::Lord_Howe,
    Asia::Kolkata,
    Pacific::Chatham,
    Tz::UTC,
    America::Santiago,
    Asia::Beirut,
    America::Havana,
    Pacific::Apia,
];

/// Local dates worth starting near: DST changes of the zones above (midnight ones included), Samoa's skipped day.
const DATES: [(i32, u32, u32); 16] = [
    (2024, 3, 10),
    (2024, 11, 3),
    (2024, 3, 31),
    (2024, 10, 27),
    (2024, 4, 7),
    (2024, 10, 6),
    (2024, 9, 29),
    (2024, 9, 8),
    (2024, 4, 6),
    (2022, 3, 27),
    (2022, 10, 30),
    (2011, 12, 30),
    (2011, 9, 24),
    (2024, 2, 29),
    (2023, 12, 31),
    (2025, 6, 15),
];

/// Deterministic step sizes and events, so a failing case replays exactly.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

fn start_instant() -> impl Strategy<Value = DateTime<Utc>> {
    (0..DATES.len(), -36 * 3_600_000_i64..36 * 3_600_000_i64).prop_map(|(i, offset_ms)| {
        let (y, m, d) = DATES[i];
        Utc.with_ymd_and_hms(y, m, d, 0, 0, 0).unwrap() + Duration::milliseconds(offset_ms)
    })
}

fn weights() -> impl Strategy<Value = HourlyWeights> {
    proptest::collection::vec(prop_oneof![2 => Just(0.0), 3 => 0.1..10.0_f64], 24).prop_map(|mut w| {
        if w.iter().all(|x| *x == 0.0) {
            w[12] = 1.0;
        }
        HourlyWeights::parse(&w).unwrap()
    })
}

fn mode() -> impl Strategy<Value = PacingMode> {
    prop_oneof![Just(PacingMode::Asap), Just(PacingMode::Even), weights().prop_map(PacingMode::HourlyCurve)]
}

#[derive(Debug, Clone)]
struct Scenario {
    campaign: Campaign,
    partner: PartnerLimit,
    start: DateTime<Utc>,
    pending: u64,
    seed: u64,
}

fn scenario() -> impl Strategy<Value = Scenario> {
    let limits = (
        proptest::option::of(1..40_u32),
        proptest::option::of(1..900_u32),
        proptest::option::of(1..20_000_u32),
        proptest::option::of(0..4_000_u64),
    );
    let money = (
        prop_oneof![Just(0_i64), 1..2_000_000_i64],
        proptest::option::of(0..400_000_000_i64),
        proptest::option::of(0..2_000_000_000_i64),
    );
    let flight = (proptest::option::of(-86_400..86_400_i64), proptest::option::of(0..8 * 86_400_i64));
    let partner = (proptest::option::of(0..50_u32), -0.2..1.2_f64, proptest::option::of(0..4 * 3_600_i64));
    let status = prop_oneof![17 => Just(CampaignStatus::Active), 2 => Just(CampaignStatus::Paused), 1 => Just(CampaignStatus::Archived)];
    (0..ZONES.len(), start_instant(), mode(), limits, money, flight, partner, status, 0..20_000_u64, any::<u64>())
        .prop_map(|(zone, start, pacing, limits, money, flight, partner, status, pending, seed)| {
            let mut c = Campaign::unlimited(CampaignId::parse("c1").unwrap(), PartnerId::parse("p1").unwrap());
            c.time_zone = ZONES[zone];
            c.status = status;
            c.pacing = pacing;
            (c.max_per_second, c.max_per_minute, c.max_per_hour, c.daily_cap) = limits;
            c.cost_per_click = Micros(money.0);
            c.daily_budget = money.1.map(Micros);
            c.total_budget = money.2.map(Micros);
            c.flight_start = flight.0.map(|s| start + Duration::seconds(s));
            c.flight_end = flight.1.map(|len| c.flight_start.unwrap_or(start) + Duration::seconds(len));
            let partner = PartnerLimit {
                rate_per_second: partner.0,
                allowance: partner.1,
                retry_after_until: partner.2.map(|s| start + Duration::seconds(s)),
                ..PartnerLimit::unlimited()
            };
            Scenario { campaign: c, partner, start, pending, seed }
        })
}

/// Everything released, booked independently of the engine.
#[derive(Default)]
struct Ledger {
    per_day: HashMap<NaiveDate, u64>,
    per_window: HashMap<(RateWindow, i64), u64>,
    total: u64,
}

impl Ledger {
    fn book(&mut self, tz: Tz, at: DateTime<Utc>, clicks: u64) {
        *self.per_day.entry(at.with_timezone(&tz).date_naive()).or_default() += clicks;
        for w in [RateWindow::Second, RateWindow::Minute, RateWindow::Hour] {
            let ms = at.timestamp_millis();
            *self.per_window.entry((w, ms - ms.rem_euclid(w.length().num_milliseconds()))).or_default() += clicks;
        }
        self.total += clicks;
    }

    fn in_window(&self, w: RateWindow, at: DateTime<Utc>) -> u64 {
        let ms = at.timestamp_millis();
        self.per_window.get(&(w, ms - ms.rem_euclid(w.length().num_milliseconds()))).copied().unwrap_or(0)
    }
}

fn weight_at(mode: &PacingMode, tz: Tz, at: DateTime<Utc>) -> Option<f64> {
    match mode {
        PacingMode::HourlyCurve(w) => Some(w.weights()[at.with_timezone(&tz).hour() as usize]),
        _ => None,
    }
}

fn check_run(s: Scenario, steps: usize) -> Result<(), TestCaseError> {
    let Scenario { mut campaign, mut partner, start, mut pending, seed } = s;
    let tz = campaign.time_zone;
    let mut rng = SplitMix(seed);
    let mut state = PacingState::default();
    let mut ledger = Ledger::default();
    let mut now = start;
    // The last answer that held clicks back, and whether anything but the clock changed since.
    let mut promise: Option<Option<DateTime<Utc>>> = None;
    for _ in 0..steps {
        let a = allowance(&campaign, &state, &partner, pending, now);
        prop_assert!(a.clicks <= pending);
        prop_assert_eq!(a.reason.is_some(), a.clicks < pending, "{:?}", a);
        if a.reason.is_none() {
            prop_assert_eq!(a.next_release_at, None);
        }
        if let Some(next) = a.next_release_at {
            prop_assert!(next > now, "next {next} not after {now}");
        }
        match promise {
            Some(None) => prop_assert_eq!(a.clicks, 0, "released at {} after a final deferral", now),
            Some(Some(next)) if now < next => prop_assert_eq!(a.clicks, 0, "released at {} before {}", now, next),
            Some(Some(next)) if now == next => prop_assert!(a.clicks > 0, "nothing at promised {next}: {a:?}"),
            _ => {}
        }

        if a.clicks > 0 {
            prop_assert_eq!(campaign.status, CampaignStatus::Active);
            prop_assert!(campaign.flight_start.is_none_or(|s| s <= now));
            prop_assert!(campaign.flight_end.is_none_or(|e| now < e));
            prop_assert!(partner.retry_after_until.is_none_or(|u| u <= now));
            prop_assert!(weight_at(&campaign.pacing, tz, now).is_none_or(|w| w > 0.0), "zero-weight hour at {now}");
        }
        state.record_release(&campaign, now, a.clicks);
        partner.record_release(now, a.clicks);
        ledger.book(tz, now, a.clicks);
        pending -= a.clicks;

        let day = ledger.per_day.get(&now.with_timezone(&tz).date_naive()).copied().unwrap_or(0);
        if let Some(cap) = campaign.daily_cap {
            prop_assert!(day <= cap, "{day} released today, cap {cap}");
        }
        let price = campaign.cost_per_click.0;
        if price > 0 {
            if let Some(b) = campaign.daily_budget {
                prop_assert!(i128::from(day) * i128::from(price) <= i128::from(b.0), "daily budget exceeded");
            }
            if let Some(b) = campaign.total_budget {
                prop_assert!(i128::from(ledger.total) * i128::from(price) <= i128::from(b.0), "total budget exceeded");
            }
        }
        for (w, max) in [
            (RateWindow::Second, campaign.max_per_second),
            (RateWindow::Minute, campaign.max_per_minute),
            (RateWindow::Hour, campaign.max_per_hour),
        ] {
            if let Some(max) = max {
                prop_assert!(ledger.in_window(w, now) <= u64::from(max), "{w:?} limit {max} exceeded at {now}");
            }
        }
        if let Some(rate) = partner.effective_rate_per_second() {
            prop_assert!(ledger.in_window(RateWindow::Second, now) <= rate, "partner rate exceeded at {now}");
        }

        promise = a.reason.map(|_| a.next_release_at);
        // Inputs other than the clock: new clicks arrive, a person pauses or resumes.
        match rng.below(100) {
            0..6 => {
                pending += rng.below(3_000);
                promise = None;
            }
            6 if campaign.status == CampaignStatus::Active => {
                campaign.status = CampaignStatus::Paused;
                promise = None;
            }
            7..20 if campaign.status == CampaignStatus::Paused => {
                campaign.status = CampaignStatus::Active;
                promise = None;
            }
            _ => {}
        }
        let step_ms = match rng.below(100) {
            0..35 => 1 + rng.below(1_500),
            35..65 => 1_000 + rng.below(120_000),
            65..80 => 120_000 + rng.below(4 * 3_600_000),
            _ => match a.next_release_at {
                Some(next) => u64::try_from((next - now).num_milliseconds()).unwrap_or(1).max(1),
                None => 1 + rng.below(600_000),
            },
        };
        now += Duration::milliseconds(i64::try_from(step_ms).unwrap_or(1));
    }
    Ok(())
}

/// The instants a pacer must not step over for the plan to complete: the last second of each positive-weight
/// hour (curve) or of the day (even).
fn closing_seconds(campaign: &Campaign, day: &LocalDay) -> Vec<DateTime<Utc>> {
    let last_second = |end: DateTime<Utc>| end - Duration::seconds(1);
    match &campaign.pacing {
        PacingMode::HourlyCurve(w) => day
            .hours(campaign.time_zone)
            .iter()
            .filter(|h| w.weights()[h.hour as usize] > 0.0)
            .map(|h| last_second(h.end))
            .collect(),
        _ => vec![last_second(day.end)],
    }
}

fn check_delivery(campaign: Campaign, start: DateTime<Utc>, seed: u64) -> Result<(), TestCaseError> {
    let tz = campaign.time_zone;
    let cap = campaign.daily_cap.unwrap_or(0);
    let mut rng = SplitMix(seed);
    let mut state = PacingState::default();
    let partner = PartnerLimit::unlimited();
    let mut per_day: HashMap<NaiveDate, u64> = HashMap::new();
    let first_day = LocalDay::containing(tz, start);
    let stop = first_day.following(tz).following(tz).end;
    let mut now = start;
    while now < stop {
        let a = allowance(&campaign, &state, &partner, u64::MAX / 2, now);
        state.record_release(&campaign, now, a.clicks);
        *per_day.entry(local_date(tz, now)).or_default() += a.clicks;
        let day = LocalDay::containing(tz, now);
        let step = Duration::milliseconds(1 + i64::try_from(rng.below(1_800_000)).unwrap_or(0));
        let closing = closing_seconds(&campaign, &day);
        let next_closing = closing.iter().copied().find(|t| *t > now);
        now = next_closing.map_or(now + step, |c| c.min(now + step)).max(now + Duration::milliseconds(1));
        if now >= day.end {
            // Every day the loop went through delivered its cap, including a partial first one (behind plan is
            // caught up), unless its last planned hour was over before the loop started: zero-weight hours never
            // catch up. A curve can also weight only hours the day skips.
            let released = per_day.get(&day.date).copied().unwrap_or(0);
            let expected = if closing.iter().any(|t| *t + Duration::seconds(1) > start) { cap } else { 0 };
            prop_assert!(released <= expected && expected - released <= 1, "{}: {released} of {expected}", day.date);
        }
    }
    Ok(())
}

proptest! {
    // Failures are persisted beside this file (proptests.regressions) rather than in a crate-level directory.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource("regressions"))),
        ..ProptestConfig::default()
    })]

    #[test]
    fn pacer_loop_never_breaks_a_rule(s in scenario()) {
        check_run(s, 600)?;
    }

    #[test]
    fn even_and_curve_pacing_deliver_the_daily_cap(
        zone in 0..ZONES.len(),
        start in start_instant(),
        curve in proptest::option::of(weights()),
        cap in 1..3_000_u64,
        seed in any::<u64>(),
    ) {
        let mut c = Campaign::unlimited(CampaignId::parse("c1").unwrap(), PartnerId::parse("p1").unwrap());
        c.time_zone = ZONES[zone];
        c.pacing = curve.map_or(PacingMode::Even, PacingMode::HourlyCurve);
        c.daily_cap = Some(cap);
        check_delivery(c, start, seed)?;
    }
}
