//! Pacing benchmark: pacing judged where the partner judges it, by the arrival of requests.
//!
//! `--pacers` pacers (default 4) and `--bridges` bridge invocations (default 8: the click queue's event source
//! scales up to `BridgeMaxConcurrency`, 20 by default, while messages wait) run concurrently on the wall clock
//! for `--seconds` (default 240), each on its own thread with its own pool, as separate Lambda execution
//! environments do: the pacers call `pacer::run_once` every `--pacer-every` seconds (default 10, with that horizon),
//! staggered across the period; the bridges poll the local SQS click queue (10 messages, 1 s long poll), call
//! `bridge::handle_event` and delete what it did not report as failed. The partners are endpoints of the partner
//! simulator in its own process; the event log goes to a DynamoDB stand-in (see the bridge benchmark).
//!
//! Three partners, each shared by several campaigns:
//! - `steady`: configured at 40 requests a second, answers in 10 ms. Campaigns: `even-local` (even over the rest
//!   of its local day, a daily cap that makes 10 clicks a second), `fill-steady` (ASAP, a backlog larger than the
//!   partner takes: the partner's rate is the only limit), `per-second` (ASAP, at most 5 a second).
//! - `flaky`: configured at 30 a second, answers 10 % of requests with 500 (retried). Campaigns: `curve-local`
//!   (an hourly curve, about 8 a second in the current local hour), `per-minute` (ASAP, at most 240 a minute),
//!   `capped` (ASAP, a daily cap of 600 with 1,000 clicks waiting).
//! - `under`: configured at 40 a second, but the simulator admits only 20 a second and answers 429 (Retry-After
//!   1 s) beyond: a partner that throttles below its configured rate. Campaigns: `fill-under` (ASAP, a backlog
//!   larger than 20 a second carries) and `per-hour` (ASAP, at most 7,200 an hour).
//!
//! The even and curve campaigns' flights start when the run starts, so their plan is even (or along the curve)
//! from the first second, and their daily caps are computed from what is left of their local day.
//!
//! From the simulator's arrival record (requests per wall-clock second, per partner and per campaign, by the second
//! they arrived in), over the run:
//! - `partner_peak_ratio`: the most requests any partner got in one second divided by its configured rate (target
//!   at most 1.0);
//! - `rate_violations`: one-second windows in which a partner got more requests than its rate, plus UTC-aligned
//!   second, minute and hour windows in which a campaign had more clicks accepted than its limit (target 0);
//! - `even_error_pct`: for the even and curve campaigns, per local hour, |delivered - planned| / planned over the
//!   part of that hour the run measures: its whole minutes after the first (the minute in which bridges and
//!   pacers start up) and before the last, where planned is the plan's rate integrated over them; the largest
//!   over campaigns and hours (target at most 1 %). A run shorter than an hour measures part of one or two local
//!   hours. The worst single minute is printed too (`even_error_pct_worst_minute`, not a target);
//! - `over_cap`: clicks accepted above a daily cap, summed over campaigns (target 0);
//! - `throttled_share`: 429 answers / requests, over all partners (target under 1 %);
//! - `capacity_share`: what `under` accepted per second from its first request to the end, divided by the 20 a
//!   second it really takes (target at least 0.9).
//!
//! Also checked: no click accepted twice (the simulator's count of keys accepted more than once after the first
//! acceptance of their key). Last line: one JSON object with the figures.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bridge::BridgeSettings;
use chrono::{DateTime, DurationRound, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;
use clickpacer::config::DatabaseConfig;
use clickpacer::domain::{Campaign, CampaignId, HourlyWeights, PacingMode, Partner, PartnerId};
use clickpacer::pacing::LocalDay;
use clickpacer::postgres::{build_pool, campaigns, partners};
use clickpacer::testing::{TestAws, TestDb};
use partner_sim::{Behaviour, SecondCounts};
use serde_json::json;

use crate::bridge_bench::{
    BRIDGE_POOL_SIZE, Cpu, Environment, Meter, Metered, SimProcess, delete_handled, event_log_stand_in, event_of,
    insert_clicks, join, option, pacer, round,
};

/// The rate `under` really takes, below the 40 a second it is configured at.
const UNDER_REAL_RATE: u32 = 20;
const EVEN_RATE: f64 = 10.0;
const CURVE_RATE_NOW: f64 = 8.0;
/// The hourly curve: weights 1 to 4, repeating, so neighbouring hours differ.
const CURVE: [f64; 24] =
    [1., 2., 3., 4., 1., 2., 3., 4., 1., 2., 3., 4., 1., 2., 3., 4., 1., 2., 3., 4., 1., 2., 3., 4.];
/// Zones the even and curve campaigns may use: the first with at least this long left of its local day.
const ZONES: [&str; 5] = ["Europe/Berlin", "America/New_York", "Asia/Kolkata", "Asia/Tokyo", "Pacific/Auckland"];
const DAY_LEFT_AT_LEAST: TimeDelta = TimeDelta::hours(2);

struct Options {
    seconds: u64,
    pacers: usize,
    bridges: usize,
    pacer_every: u32,
}

impl Options {
    fn parse(args: &[String]) -> anyhow::Result<Self> {
        let options = Self {
            seconds: option(args, "--seconds")?.unwrap_or(240),
            pacers: option(args, "--pacers")?.unwrap_or(4),
            bridges: option(args, "--bridges")?.unwrap_or(8),
            pacer_every: option(args, "--pacer-every")?.unwrap_or(10),
        };
        anyhow::ensure!(options.seconds >= 150, "--seconds must be at least 150 (two whole minutes are measured)");
        anyhow::ensure!(options.pacers > 0 && options.bridges > 0, "--pacers and --bridges must be at least 1");
        anyhow::ensure!(options.pacer_every > 0, "--pacer-every must be at least 1");
        Ok(options)
    }
}

/// A campaign of the benchmark, its clicks and what its plan says per second (even and curve only).
struct BenchCampaign {
    campaign: Campaign,
    clicks: i64,
    plan: Option<Plan>,
}

/// The planned delivery rate of an even or curve campaign: `volume` over its plan window, weighted by local hour.
struct Plan {
    volume: f64,
    tz: Tz,
    weights: [f64; 24],
    /// Σ weight × seconds over the plan window.
    weighted_seconds: f64,
}

impl Plan {
    fn new(volume: f64, tz: Tz, weights: [f64; 24], start: DateTime<Utc>) -> Self {
        let day = LocalDay::containing(tz, start);
        let weighted_seconds = day
            .hours(tz)
            .iter()
            .map(|h| weights[h.hour as usize] * (h.end - h.start.max(start)).num_seconds().max(0) as f64)
            .sum();
        Self { volume, tz, weights, weighted_seconds }
    }

    /// Clicks planned in `[from, from + 1 s)`.
    fn per_second(&self, from: DateTime<Utc>) -> f64 {
        let hour = clickpacer::pacing::local_hour(self.tz, from) as usize;
        self.volume * self.weights[hour] / self.weighted_seconds
    }
}

fn partner(sim: &SimProcess, name: &str, rate: u32) -> anyhow::Result<Partner> {
    let mut p = Partner::get(
        PartnerId::parse(name)?,
        format!("{}/click?id={{click_id}}&c={{campaign_id}}", sim.partner_url(name)),
    );
    p.rate_per_second = Some(rate);
    p.max_concurrency = 8;
    p.retry_base_ms = 500;
    Ok(p)
}

fn asap(id: &str, partner: &str, clicks: i64, change: impl FnOnce(&mut Campaign)) -> anyhow::Result<BenchCampaign> {
    let mut campaign = Campaign::unlimited(CampaignId::parse(id)?, PartnerId::parse(partner)?);
    campaign.batch_size = 10;
    change(&mut campaign);
    Ok(BenchCampaign { campaign, clicks, plan: None })
}

/// The zone whose local day has at least [`DAY_LEFT_AT_LEAST`] left at `at`.
fn zone_with_day_left(at: DateTime<Utc>, skip: usize) -> anyhow::Result<Tz> {
    ZONES
        .iter()
        .filter_map(|z| z.parse::<Tz>().ok())
        .filter(|tz| LocalDay::containing(*tz, at).end - at >= DAY_LEFT_AT_LEAST)
        .nth(skip)
        .context("no zone with enough of its day left")
}

/// An even or curve campaign whose flight starts at `start`, with a daily cap that plans `rate_now` clicks a
/// second in the current local hour, and enough clicks for the run and a fifth more.
fn planned(
    id: &str,
    partner: &str,
    tz: Tz,
    weights: Option<[f64; 24]>,
    rate_now: f64,
    start: DateTime<Utc>,
    seconds: u64,
) -> anyhow::Result<BenchCampaign> {
    let shape = weights.unwrap_or([1.0; 24]);
    let unit = Plan::new(1.0, tz, shape, start);
    let volume = (rate_now / unit.per_second(start)).round();
    let mut campaign = Campaign::unlimited(CampaignId::parse(id)?, PartnerId::parse(partner)?);
    campaign.batch_size = 10;
    campaign.time_zone = tz;
    campaign.flight_start = Some(start);
    campaign.daily_cap = Some(volume as u64);
    campaign.pacing = match weights {
        Some(w) => PacingMode::HourlyCurve(HourlyWeights::parse(&w).map_err(anyhow::Error::msg)?),
        None => PacingMode::Even,
    };
    let clicks = (rate_now * 4.0 * seconds as f64 * 1.2) as i64;
    Ok(BenchCampaign { campaign, clicks, plan: Some(Plan::new(volume, tz, shape, start)) })
}

fn bench_campaigns(start: DateTime<Utc>, seconds: u64) -> anyhow::Result<Vec<BenchCampaign>> {
    let s = seconds as i64;
    Ok(vec![
        planned("even-local", "steady", zone_with_day_left(start, 0)?, None, EVEN_RATE, start, seconds)?,
        asap("fill-steady", "steady", 40 * s, |_| ())?,
        asap("per-second", "steady", 10 * s, |c| c.max_per_second = Some(5))?,
        planned("curve-local", "flaky", zone_with_day_left(start, 1)?, Some(CURVE), CURVE_RATE_NOW, start, seconds)?,
        asap("per-minute", "flaky", 8 * s, |c| c.max_per_minute = Some(240))?,
        asap("capped", "flaky", 1_000, |c| c.daily_cap = Some(600))?,
        asap("fill-under", "under", i64::from(UNDER_REAL_RATE) * 2 * s, |_| ())?,
        asap("per-hour", "under", 4 * s, |c| c.max_per_hour = Some(7_200))?,
    ])
}

/// What the pacers' runs did, summed over them.
#[derive(Debug, Default)]
struct PacerRuns {
    runs: u64,
    released_clicks: u64,
    deferred: BTreeMap<String, u64>,
}

impl PacerRuns {
    fn add(&mut self, summary: &pacer::RunSummary) {
        self.merge(PacerRuns { runs: 1, released_clicks: summary.released_clicks, deferred: summary.deferred.clone() });
    }

    fn merge(&mut self, other: PacerRuns) {
        self.runs += other.runs;
        self.released_clicks += other.released_clicks;
        for (reason, n) in other.deferred {
            *self.deferred.entry(reason).or_default() += n;
        }
    }
}

/// Where a simulated bridge invocation's time went.
#[derive(Debug, Default)]
struct Tally {
    events: u64,
    messages: u64,
    receiving: f64,
    handling: f64,
    deleting: f64,
    /// Events that took longer than [`SLOW_EVENT_S`], with their messages.
    slow: Vec<String>,
}

const SLOW_EVENT_S: f64 = 10.0;

/// The event source's poller, as [`crate::bridge_bench::poll_queue`], timing each step.
async fn poll_timed(bridge: &bridge::Bridge<Metered, bridge::SystemClock>, tally: &mut Tally) -> anyhow::Result<()> {
    let queue = &bridge.click_queue;
    let began = Instant::now();
    let got = queue.receive(10, 1).await?;
    tally.receiving += began.elapsed().as_secs_f64();
    if got.is_empty() {
        return Ok(());
    }
    let began = Instant::now();
    let received_at = Utc::now();
    let response = bridge::handle_event(bridge, event_of(&got), &clickpacer::invocation::Unlimited).await;
    let took = began.elapsed().as_secs_f64();
    tally.handling += took;
    if took > SLOW_EVENT_S {
        // What made it slow: each message's campaign, spread and release instant against the receipt.
        let detail: Vec<String> = got
            .iter()
            .filter_map(|m| serde_json::from_str::<clickpacer::release::ReleaseMessage>(&m.body).ok())
            .map(|r| {
                let late = (received_at - r.release_at).as_seconds_f64();
                format!("{} {}x{}s@{late:+.0}s", r.campaign_id, r.clicks, r.spread_seconds)
            })
            .collect();
        tally.slow.push(format!("{took:.1} s: {}", detail.join(", ")));
    }
    tally.events += 1;
    tally.messages += got.len() as u64;
    let began = Instant::now();
    delete_handled(queue, &got, response).await?;
    tally.deleting += began.elapsed().as_secs_f64();
    Ok(())
}

/// Counts of one series (a partner or a campaign) in `[from, to)` unix seconds.
fn in_run(series: Option<&BTreeMap<u64, SecondCounts>>, from: u64, to: u64) -> BTreeMap<u64, SecondCounts> {
    series.map(|s| s.range(from..to).map(|(k, v)| (*k, *v)).collect()).unwrap_or_default()
}

/// Windows of `width` seconds (aligned to the epoch, as UTC minutes and hours are) whose `count` exceeds `limit`.
fn windows_over(
    seconds: &BTreeMap<u64, SecondCounts>,
    width: u64,
    limit: u64,
    count: impl Fn(&SecondCounts) -> u64,
) -> (u64, u64) {
    let mut windows: BTreeMap<u64, u64> = BTreeMap::new();
    for (second, counts) in seconds {
        *windows.entry(second / width).or_default() += count(counts);
    }
    let over = windows.values().filter(|&&n| n > limit).count() as u64;
    (over, windows.values().copied().max().unwrap_or(0))
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let options = Options::parse(args)?;
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let sim = SimProcess::start().await?;
    let (events, _log_sim) = event_log_stand_in(&aws, 10).await?;
    let (queue, _dead) = aws.queue_with_dead_letter(30, 5).await;

    // The run starts on a whole second a few seconds from now, once everything is seeded.
    let start = (Utc::now() + TimeDelta::seconds(5)).duration_trunc(TimeDelta::seconds(1))?;
    let partner_list = [partner(&sim, "steady", 40)?, partner(&sim, "flaky", 30)?, partner(&sim, "under", 40)?];
    sim.set_behaviour("steady", &Behaviour { latency_ms: 10, ..Behaviour::default() }).await?;
    sim.set_behaviour("flaky", &Behaviour { latency_ms: 10, error_rate: 0.1, ..Behaviour::default() }).await?;
    let under =
        Behaviour { latency_ms: 10, rate_limit: Some(UNDER_REAL_RATE), retry_after_s: 1, ..Behaviour::default() };
    sim.set_behaviour("under", &under).await?;
    let list = bench_campaigns(start, options.seconds)?;
    {
        let client = db.client().await;
        for p in &partner_list {
            partners::upsert(&**client, p).await?;
        }
        for c in &list {
            campaigns::upsert(&**client, &c.campaign).await?;
            insert_clicks(&client, &c.campaign, c.clicks).await?;
        }
        client.execute("ANALYZE", &[]).await?;
    }
    eprintln!(
        "pacing: {} pacers (every {} s, staggered), {} bridge invocations, {} s; partners steady 40/s, flaky 30/s \
         (10 % answered 500), under configured 40/s taking {UNDER_REAL_RATE}/s",
        options.pacers, options.pacer_every, options.bridges, options.seconds
    );
    for c in &list {
        let k = &c.campaign;
        eprintln!(
            "  {:<12} on {:<6} {:<6} {:>6} clicks{}{}{}{}{}",
            k.campaign_id.as_str(),
            k.partner_id.as_str(),
            k.pacing.name(),
            c.clicks,
            k.daily_cap.map_or(String::new(), |v| format!(", daily cap {v}")),
            k.max_per_second.map_or(String::new(), |v| format!(", {v}/s")),
            k.max_per_minute.map_or(String::new(), |v| format!(", {v}/min")),
            k.max_per_hour.map_or(String::new(), |v| format!(", {v}/h")),
            if c.plan.is_some() { format!(", {} from the run's start", k.time_zone.name()) } else { String::new() },
        );
    }

    let environment = Environment {
        db_url: db.config.url.clone(),
        queue: queue.clone(),
        events,
        meter: Arc::new(Meter::default()),
        settings: BridgeSettings::default(),
        pool_size: BRIDGE_POOL_SIZE,
    };
    sim.reset().await?;
    let wall_start = Instant::now() + (start - Utc::now()).to_std().unwrap_or_default();
    let deadline = wall_start + Duration::from_secs(options.seconds);
    let cpu_before = Cpu::now(sim.pid());
    let every = Duration::from_secs(u64::from(options.pacer_every));
    let pacers: Vec<_> = (0..options.pacers)
        .map(|i| {
            let pool = build_pool(&DatabaseConfig { url: db.config.url.clone(), pool_size: 2 })?;
            let pacer = pacer(&pool, &queue, options.pacer_every);
            let first = wall_start + every * i as u32 / options.pacers as u32;
            Ok(std::thread::spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move {
                    let mut tick = tokio::time::interval_at(tokio::time::Instant::from_std(first), every);
                    let mut runs = PacerRuns::default();
                    let work = async {
                        loop {
                            tick.tick().await;
                            match pacer::run_once(&pacer, Utc::now()).await {
                                Ok(summary) => runs.add(&summary),
                                Err(e) => eprintln!("  pacer run failed: {e}"),
                            }
                        }
                    };
                    let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work).await;
                    anyhow::Ok(runs)
                })
            }))
        })
        .collect::<anyhow::Result<_>>()?;
    let bridges: Vec<_> = (0..options.bridges)
        .map(|_| {
            environment.clone().spawn(move |bridge| async move {
                let mut tally = Tally::default();
                let work = async {
                    loop {
                        if let Err(e) = poll_timed(&bridge, &mut tally).await {
                            eprintln!("  {e}");
                        }
                    }
                };
                let _ = tokio::time::timeout_at(tokio::time::Instant::from_std(deadline), work).await;
                Ok(tally)
            })
        })
        .collect();
    let mut runs = PacerRuns::default();
    for handle in pacers {
        runs.merge(join(handle).await?);
    }
    eprintln!(
        "  pacer runs: {}, {} clicks released; batches held back, by reason (once per run that held them): {}",
        runs.runs,
        runs.released_clicks,
        runs.deferred.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
    );
    for handle in bridges {
        let t = join(handle).await?;
        eprintln!(
            "  bridge invocation: {} events, {} messages; {:.1} s receiving, {:.1} s in handle_event ({:.2} s an \
             event), {:.1} s deleting",
            t.events,
            t.messages,
            t.receiving,
            t.handling,
            t.handling / t.events.max(1) as f64,
            t.deleting
        );
        for line in t.slow.iter().take(5) {
            eprintln!("    slow event {line}");
        }
    }
    let cpu = Cpu::now(sim.pid()).since(cpu_before);
    let arrivals = sim.arrivals().await?;
    // What the pacers released per campaign, by 10 s of release instant, and the states the batches ended in.
    let client = db.client().await;
    let mut released: BTreeMap<(String, i64), i64> = BTreeMap::new();
    for row in client
        .query(
            "SELECT campaign_id, floor(extract(epoch FROM released_at) / 10)::bigint * 10, sum(click_count)::bigint
             FROM batches WHERE released_at IS NOT NULL GROUP BY 1, 2",
            &[],
        )
        .await?
    {
        released.insert((row.get(0), row.get(1)), row.get(2));
    }
    let mut states: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for row in client
        .query("SELECT campaign_id, state, sum(click_count)::bigint FROM batches GROUP BY 1, 2 ORDER BY 1, 2", &[])
        .await?
    {
        let (campaign, state, n): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        states.entry(campaign).or_default().push(format!("{state} {n}"));
    }
    // Attempts that did not deliver, by outcome and reason.
    for row in client
        .query(
            "SELECT outcome, coalesce(left(error, 80), ''), count(*) FROM delivery_results
             WHERE outcome <> 'delivered' GROUP BY 1, 2 ORDER BY 3 DESC LIMIT 6",
            &[],
        )
        .await?
    {
        let (outcome, error, n): (String, String, i64) = (row.get(0), row.get(1), row.get(2));
        eprintln!("  {n} attempts {outcome}: {error}");
    }
    // What the bridges learned about each partner by the end.
    for row in client
        .query(
            "SELECT p.partner_id, h.allowance, CASE WHEN h.send_rate_learned THEN h.send_rate END
             FROM partners p LEFT JOIN partner_health h USING (partner_id) ORDER BY 1",
            &[],
        )
        .await?
    {
        let (id, allowance, learned): (String, Option<f64>, Option<f64>) = (row.get(0), row.get(1), row.get(2));
        eprintln!(
            "  partner {id:<6} at the end: allowance {:.2}, {}",
            allowance.unwrap_or(1.0),
            learned.map_or("no learned rate".into(), |r| format!("learned rate {r:.1}/s"))
        );
    }
    let report = sim.report_all().await?;

    let (from, to) = (start.timestamp() as u64, start.timestamp() as u64 + options.seconds);
    let mut out = serde_json::Map::new();
    let (mut peak_ratio, mut violations, mut requests, mut throttled) = (0.0f64, 0u64, 0u64, 0u64);
    let mut partner_json = serde_json::Map::new();
    for p in &partner_list {
        let name = p.partner_id.as_str();
        let seconds = in_run(arrivals.partners.get(name), from, to);
        let rate = u64::from(p.rate_per_second.unwrap_or(u32::MAX));
        let (over, peak) = windows_over(&seconds, 1, rate, |c| c.requests);
        let sum = |f: fn(&SecondCounts) -> u64| seconds.values().map(f).sum::<u64>();
        let (n, accepted, refused) = (sum(|c| c.requests), sum(|c| c.accepted), sum(|c| c.throttled));
        peak_ratio = peak_ratio.max(peak as f64 / rate as f64);
        violations += over;
        requests += n;
        throttled += refused;
        eprintln!(
            "  partner {name:<6}: {n} requests, {accepted} accepted, {refused} answered 429; peak {peak} in one second \
             of {rate}/s, {over} seconds over"
        );
        let trace: Vec<String> = (from..to)
            .step_by(10)
            .map(|t| {
                let part = seconds.range(t..t + 10);
                let (a, r) = part.fold((0, 0), |(a, r), (_, c)| (a + c.accepted, r + c.throttled));
                if r > 0 { format!("{a}/{r}") } else { a.to_string() }
            })
            .collect();
        eprintln!("    accepted(/429) per 10 s: {}", trace.join(" "));
        partner_json.insert(
            name.into(),
            json!({"requests": n, "accepted": accepted, "throttled": refused, "peak_per_second": peak, "rate": rate}),
        );
    }
    let under_seconds = in_run(arrivals.partners.get("under"), from, to);
    let under_first = under_seconds.keys().next().copied().unwrap_or(from);
    let under_accepted: u64 = under_seconds.values().map(|c| c.accepted).sum();
    let capacity_share = under_accepted as f64 / (f64::from(UNDER_REAL_RATE) * (to - under_first).max(1) as f64);

    let (mut over_cap, mut even_error, mut campaign_json) = (0u64, None::<f64>, serde_json::Map::new());
    let mut minute_error = None::<f64>;
    // Whole minutes after the first one of the run and before its last.
    let first_minute = from.div_ceil(60) * 60 + 60;
    let last_minute = (to / 60) * 60;
    for c in &list {
        let k = &c.campaign;
        let name = k.campaign_id.as_str();
        let seconds = in_run(arrivals.campaigns.get(name), from, to);
        let accepted: u64 = seconds.values().map(|s| s.accepted).sum();
        let mut line = format!("  campaign {name:<12}: {accepted} accepted");
        for (width, limit, label) in
            [(1, k.max_per_second, "second"), (60, k.max_per_minute, "minute"), (3600, k.max_per_hour, "hour")]
        {
            if let Some(limit) = limit {
                let (over, peak) = windows_over(&seconds, width, u64::from(limit), |s| s.accepted);
                violations += over;
                line += &format!(", peak {peak} in a {label} of {limit} ({over} over)");
            }
        }
        if let Some(cap) = k.daily_cap {
            let above = accepted.saturating_sub(cap);
            over_cap += above;
            line += &format!(", cap {cap} ({above} above)");
        }
        let mut minutes = Vec::new();
        if let Some(plan) = &c.plan {
            // Per local hour: the measured minutes of that hour summed, planned against delivered.
            let mut hours: BTreeMap<String, (f64, u64)> = BTreeMap::new();
            for minute in (first_minute..last_minute).step_by(60) {
                let planned: f64 = (minute..minute + 60)
                    .map(|s| plan.per_second(Utc.timestamp_opt(s as i64, 0).single().unwrap_or_default()))
                    .sum();
                let delivered: u64 = seconds.range(minute..minute + 60).map(|(_, s)| s.accepted).sum();
                let error = (delivered as f64 - planned).abs() / planned * 100.0;
                minute_error = Some(minute_error.map_or(error, |e: f64| e.max(error)));
                let hour = hour_label(minute, plan.tz);
                let sums = hours.entry(hour).or_default();
                sums.0 += planned;
                sums.1 += delivered;
                minutes.push(json!({"minute": minute, "planned": round(planned, 1), "delivered": delivered}));
                line += &format!("; minute {}: {delivered} of {planned:.1} planned", minute_label(minute, plan.tz));
            }
            for (hour, (planned, delivered)) in hours {
                let error = (delivered as f64 - planned).abs() / planned * 100.0;
                even_error = Some(even_error.map_or(error, |e: f64| e.max(error)));
                line += &format!("; local hour {hour}: {delivered} of {planned:.1} planned ({error:.2} %)");
            }
        }
        eprintln!("{line}");
        let trace: Vec<String> = (from..to)
            .step_by(10)
            .map(|t| {
                let got: u64 = seconds.range(t..t + 10).map(|(_, c)| c.accepted).sum();
                let bucket = (t as i64 / 10) * 10;
                let out = released.get(&(name.to_owned(), bucket)).copied().unwrap_or(0);
                format!("{out}>{got}")
            })
            .collect();
        eprintln!("    released>accepted per 10 s: {}", trace.join(" "));
        eprintln!("    batches end as: {}", states.get(name).map(|v| v.join(", ")).unwrap_or_default());
        campaign_json.insert(name.into(), json!({"accepted": accepted, "minutes": minutes}));
    }
    let throttled_share = if requests > 0 { throttled as f64 / requests as f64 } else { 0.0 };
    eprintln!("    {}", cpu.describe(options.seconds as f64, "second"));
    eprintln!(
        "partner_peak_ratio = {peak_ratio:.3} (target <= 1.0), rate_violations = {violations} (0), even_error_pct = \
         {} (<= 1), over_cap = {over_cap} (0), throttled_share = {throttled_share:.4} (< 0.01), \
         capacity_share = {capacity_share:.3} (>= 0.9); keys accepted twice: {}",
        even_error.map_or("none (no whole minute measured)".into(), |e| format!("{e:.2}")),
        report.duplicate_accepted_keys
    );
    anyhow::ensure!(report.duplicate_accepted_keys == 0, "a click was accepted twice");
    out.insert("benchmark".into(), json!("pacing"));
    out.insert("partner_peak_ratio".into(), json!(round(peak_ratio, 3)));
    out.insert("rate_violations".into(), json!(violations));
    out.insert("even_error_pct".into(), json!(even_error.map(|e| round(e, 2))));
    out.insert("even_error_pct_worst_minute".into(), json!(minute_error.map(|e| round(e, 2))));
    out.insert("over_cap".into(), json!(over_cap));
    out.insert("throttled_share".into(), json!(round(throttled_share, 4)));
    out.insert("capacity_share".into(), json!(round(capacity_share, 3)));
    out.insert("seconds".into(), json!(options.seconds));
    out.insert("pacers".into(), json!(options.pacers));
    out.insert("bridges".into(), json!(options.bridges));
    out.insert("partners".into(), serde_json::Value::Object(partner_json));
    out.insert("campaigns".into(), serde_json::Value::Object(campaign_json));
    out.insert("cpu_ms_per_second".into(), cpu.json(options.seconds as f64));
    println!("{}", serde_json::Value::Object(out));
    Ok(())
}

/// The local hour (`YYYY-MM-DD HH` and the offset, so a repeated hour is two) in the campaign's zone.
fn hour_label(unix_second: u64, tz: Tz) -> String {
    Utc.timestamp_opt(unix_second as i64, 0)
        .single()
        .map_or_else(String::new, |t| t.with_timezone(&tz).format("%Y-%m-%d %H %z").to_string())
}

/// `HH:MM` in the campaign's zone.
fn minute_label(unix_second: u64, tz: Tz) -> String {
    Utc.timestamp_opt(unix_second as i64, 0)
        .single()
        .map_or_else(String::new, |t| t.with_timezone(&tz).format("%H:%M").to_string())
}
