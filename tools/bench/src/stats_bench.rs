//! Statistics benchmark: how long the management API takes to answer a 30-day statistics query, measured through
//! the real router (HTTP request in, JSON out) on a database holding `--clicks` delivery outcomes (default
//! 10,000,000) over 30 days, with the raw-table query the rollups replace as the baseline in the same run.
//!
//! Set-up, on a fresh database: 20 campaigns of 4 partners, one delivery attempt per click, spread evenly over
//! the 30 days before the current hour (2 campaigns' clicks a second, together about 3.9 a second), 97 % delivered,
//! 1 % throttled (429) and retried, 1 % failed (503) and retried, 1 % dead; latencies 20-499 ms, every
//! thousandth 5 s. The raw attempts go into `delivery_results` (generated in SQL); the rollups are written by
//! the same writer the pacer and the bridge use (`postgres::stats::add`), an hour of the month at a time, from
//! the same attempts generated again in Rust (the formulas are mirrored; the totals are compared at the end).
//!
//! Measured, each 20 times after one warm-up (median and slowest):
//! - a campaign's 30 days per hour (`GET /campaigns/{id}/stats?granularity=hour`, 720 points);
//! - a partner's 30 days per hour (its 5 campaigns added up);
//! - a campaign's last 7 days per minute (10,080 points);
//! - baseline, 3 times: the campaign's 30 days per hour from `delivery_results` (counts per outcome and
//!   percentiles per hour), the query the API would run without rollups.

use std::collections::BTreeMap;
use std::time::Instant;

use anyhow::{Context, ensure};
use axum::body::Body;
use axum::http::Request;
use chrono::{DateTime, Duration, DurationRound, Utc};
use clickpacer::domain::{Campaign, CampaignId, Partner, PartnerId};
use clickpacer::postgres::stats::{self, StatsKey};
use clickpacer::postgres::{campaigns, partners};
use clickpacer::stats::{Attempt, AttemptOutcome, Counts, tally};
use clickpacer::testing::{TestAws, TestDb};
use serde_json::{Value, json};
use tower::ServiceExt;

const CAMPAIGNS: i64 = 20;
const PARTNERS: i64 = 4;
const DAYS: i64 = 30;
const REPEATS: usize = 20;

/// The attempt of click `g` of `n`, as the SQL below generates it too.
fn attempt(g: i64, n: i64, t0: DateTime<Utc>) -> (i64, Attempt) {
    let span_ms = DAYS * 86_400_000;
    let at = t0 + Duration::milliseconds(g * span_ms / n);
    // Per campaign, every hundredth of its clicks of each kind.
    let (outcome, status) = match (g / CAMPAIGNS) % 100 {
        97 => (AttemptOutcome::Retrying, 429),
        98 => (AttemptOutcome::Retrying, 503),
        99 => (AttemptOutcome::Dead, 500),
        _ => (AttemptOutcome::Delivered, 200),
    };
    let latency = if g % 1000 == 0 { 5_000 } else { 20 + (g * 7919) % 480 };
    (g % CAMPAIGNS, Attempt { at, outcome, http_status: Some(status), latency_ms: Some(latency as u32) })
}

const RAW_ATTEMPTS: &str = "
    INSERT INTO delivery_results (batch_id, fence, campaign_id, click_id, partner_id, attempt, outcome, http_status,
                                  latency_ms, recorded_at)
    SELECT b.batch_id, 1, b.campaign_id, 'k' || g, b.partner_id, 1,
           CASE (g / $6::bigint) % 100 WHEN 97 THEN 'retrying' WHEN 98 THEN 'retrying' WHEN 99 THEN 'dead'
                ELSE 'delivered' END,
           CASE (g / $6::bigint) % 100 WHEN 97 THEN 429 WHEN 98 THEN 503 WHEN 99 THEN 500 ELSE 200 END,
           CASE WHEN g % 1000 = 0 THEN 5000 ELSE 20 + (g * 7919) % 480 END,
           $1::timestamptz + make_interval(secs => (g * $3::bigint / $2::bigint) / 1000.0)
    FROM generate_series($4::bigint, $5::bigint - 1) g
    JOIN bench_batches b ON b.i = g % $6::bigint";

const RAW_SERIES: &str = "
    SELECT date_trunc('hour', recorded_at, 'UTC') AS hour,
           count(*) FILTER (WHERE outcome = 'delivered') AS delivered,
           count(*) FILTER (WHERE outcome <> 'delivered') AS failed,
           count(*) FILTER (WHERE outcome <> 'delivered' AND http_status = 429) AS throttled,
           count(*) FILTER (WHERE outcome = 'dead') AS dead,
           percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP (ORDER BY latency_ms) AS latency
    FROM delivery_results WHERE campaign_id = $1 AND recorded_at >= $2 AND recorded_at < $3
    GROUP BY 1 ORDER BY 1";

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let clicks: i64 = match args.iter().position(|a| a == "--clicks") {
        Some(i) => args.get(i + 1).context("--clicks needs a number")?.replace('_', "").parse()?,
        None => 10_000_000,
    };
    let db = TestDb::new().await;
    let now = Utc::now();
    let to = now.duration_trunc(Duration::hours(1))?;
    let t0 = to - Duration::days(DAYS);
    eprintln!("stats: {clicks} clicks over {DAYS} days, {CAMPAIGNS} campaigns of {PARTNERS} partners");

    let loading = Instant::now();
    seed(&db, clicks, t0).await?;
    let raw_seconds = loading.elapsed().as_secs_f64();
    eprintln!("  raw attempts in delivery_results: {raw_seconds:.1} s");
    let rolling = Instant::now();
    let written = roll_up(&db, clicks, t0).await?;
    let rollup_seconds = rolling.elapsed().as_secs_f64();
    eprintln!("  rollups through the writer: {written} bucket deltas in {rollup_seconds:.1} s");
    let client = db.client().await;
    client.batch_execute("VACUUM ANALYZE delivery_results, delivery_stats_minute, delivery_stats_hour").await?;
    let count = |table: &str| format!("SELECT count(*) FROM {table}");
    let minute_rows: i64 = client.query_one(&count("delivery_stats_minute"), &[]).await?.get(0);
    let hour_rows: i64 = client.query_one(&count("delivery_stats_hour"), &[]).await?.get(0);

    let app = api::router(api::AppState {
        pool: db.pool.clone(),
        objects: TestAws::new().await.objects(),
        upload_bucket: "clickpacer-bench".into(),
        queues: None,
        events: None,
        transport: bridge::HttpTransport::new(false)?,
        allow_private_partners: false,
    });
    let utc = |at: DateTime<Utc>| at.format("%Y-%m-%dT%H:%M:%SZ").to_string();
    let (from_s, to_s, week) = (utc(t0), utc(to), utc(to - Duration::days(7)));
    let campaign_path = format!("/campaigns/c00/stats?granularity=hour&from={from_s}&to={to_s}");
    let (campaign, campaign_body) = time_api(&app, &campaign_path).await?;
    let (partner, partner_body) =
        time_api(&app, &format!("/partners/p0/stats?granularity=hour&from={from_s}&to={to_s}")).await?;
    let (minutes, minutes_body) =
        time_api(&app, &format!("/campaigns/c00/stats?granularity=minute&from={week}&to={to_s}")).await?;
    ensure!(campaign_body["points"].as_array().map(Vec::len) == Some(720), "720 hourly points");
    ensure!(partner_body["points"].as_array().map(Vec::len) == Some(720), "720 hourly points");
    ensure!(minutes_body["points"].as_array().map(Vec::len) == Some(10_080), "10,080 minute points");

    let mut raw_ms = Vec::new();
    let mut raw_rows = Vec::new();
    for _ in 0..3 {
        let started = Instant::now();
        raw_rows = client.query(RAW_SERIES, &[&"c00", &t0, &to]).await?;
        raw_ms.push(started.elapsed().as_secs_f64() * 1000.0);
    }
    raw_ms.sort_by(f64::total_cmp);
    let sum = |i: usize| raw_rows.iter().map(|r| r.get::<_, i64>(i)).sum::<i64>();
    let raw_totals = [sum(1), sum(2), sum(3), sum(4)];
    let totals = &campaign_body["totals"];
    let api_totals = ["delivered", "failed", "throttled", "dead"].map(|k| totals[k].as_i64().unwrap_or(-1));
    let totals_match = raw_totals == api_totals;

    let report = |name: &str, t: &Timing, points: usize| {
        eprintln!("  {name}: {points} points, median {:.1} ms, slowest {:.1} ms", t.median, t.slowest);
    };
    report("campaign, 30 days per hour (API)", &campaign, 720);
    report("partner of 5 campaigns, 30 days per hour (API)", &partner, 720);
    report("campaign, 7 days per minute (API)", &minutes, 10_080);
    eprintln!("  baseline, campaign 30 days per hour from delivery_results: median {:.1} ms", raw_ms[1]);
    eprintln!(
        "  rollup rows: {minute_rows} minute, {hour_rows} hour; totals (delivered, failed, throttled, dead) \
         API {api_totals:?} raw {raw_totals:?}: {}",
        if totals_match { "equal" } else { "DIFFERENT" }
    );
    println!(
        "{}",
        json!({
            "clicks": clicks,
            "days": DAYS,
            "campaigns": CAMPAIGNS,
            "partners": PARTNERS,
            "campaign_30d_hourly_ms": campaign.median,
            "campaign_30d_hourly_slowest_ms": campaign.slowest,
            "partner_30d_hourly_ms": partner.median,
            "campaign_7d_minute_ms": minutes.median,
            "raw_30d_hourly_ms": (raw_ms[1] * 10.0).round() / 10.0,
            "speedup_vs_raw": (raw_ms[1] / campaign.median * 10.0).round() / 10.0,
            "totals_match": totals_match,
            "rollup_rows_minute": minute_rows,
            "rollup_rows_hour": hour_rows,
            "seconds_raw_load": (raw_seconds * 10.0).round() / 10.0,
            "seconds_rollup_write": (rollup_seconds * 10.0).round() / 10.0,
        })
    );
    ensure!(totals_match, "the rollups and the raw attempts disagree");
    Ok(())
}

struct Timing {
    median: f64,
    slowest: f64,
}

/// One warm-up, then [`REPEATS`] timed requests through the router; the last answer.
async fn time_api(app: &axum::Router, path: &str) -> anyhow::Result<(Timing, Value)> {
    let mut body = Value::Null;
    let mut ms = Vec::with_capacity(REPEATS);
    for i in 0..=REPEATS {
        let request = Request::get(path).extension(api::auth::Caller::local_admin()).body(Body::empty())?;
        let started = Instant::now();
        let response = app.clone().oneshot(request).await?;
        let status = response.status();
        let bytes = axum::body::to_bytes(response.into_body(), usize::MAX).await?;
        let elapsed = started.elapsed().as_secs_f64() * 1000.0;
        ensure!(status.is_success(), "{path}: {status} {}", String::from_utf8_lossy(&bytes));
        body = serde_json::from_slice(&bytes)?;
        if i > 0 {
            ms.push(elapsed);
        }
    }
    ms.sort_by(f64::total_cmp);
    let round = |v: f64| (v * 10.0).round() / 10.0;
    Ok((Timing { median: round(ms[ms.len() / 2]), slowest: round(ms[ms.len() - 1]) }, body))
}

/// Partners, campaigns, a batch per campaign (the attempts' parent), and the raw attempts in chunks.
async fn seed(db: &TestDb, clicks: i64, t0: DateTime<Utc>) -> anyhow::Result<()> {
    let client = db.client().await;
    for p in 0..PARTNERS {
        let partner = Partner::get(PartnerId::parse(format!("p{p}"))?, "https://partner.example/c?id={click_id}");
        partners::upsert(&**client, &partner).await?;
    }
    for c in 0..CAMPAIGNS {
        let id = CampaignId::parse(format!("c{c:02}"))?;
        let mut campaign = Campaign::unlimited(id, PartnerId::parse(format!("p{}", c % PARTNERS))?);
        campaign.cost_per_click = clickpacer::domain::Micros(1_000);
        campaigns::upsert(&**client, &campaign).await?;
    }
    client
        .batch_execute(
            "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('bench', 'incoming/stats', 'v');
             CREATE TEMP TABLE bench_batches AS SELECT 0::bigint AS batch_id, ''::text AS campaign_id,
                                                       ''::text AS partner_id, 0::bigint AS i LIMIT 0;
             WITH b AS (
                 INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
                 SELECT c.campaign_id, c.partner_id, (SELECT upload_id FROM uploads LIMIT 1), 0, 1, now()
                 FROM campaigns c RETURNING batch_id, campaign_id, partner_id)
             INSERT INTO bench_batches SELECT batch_id, campaign_id, partner_id,
                                              substr(campaign_id, 2)::bigint FROM b;",
        )
        .await?;
    let chunk = 1_000_000;
    let span_ms = DAYS * 86_400_000;
    let mut start = 0;
    while start < clicks {
        let end = (start + chunk).min(clicks);
        client.execute(RAW_ATTEMPTS, &[&t0, &clicks, &span_ms, &start, &end, &CAMPAIGNS]).await?;
        eprintln!("    {end} of {clicks} attempts");
        start = end;
    }
    Ok(())
}

/// The same attempts through the rollup writer, an hour of the month (all campaigns) at a time.
async fn roll_up(db: &TestDb, clicks: i64, t0: DateTime<Utc>) -> anyhow::Result<usize> {
    let client = db.client().await;
    let mut written = 0;
    let mut hour: Vec<(i64, Attempt)> = Vec::new();
    let mut flush = async |attempts: &mut Vec<(i64, Attempt)>| -> anyhow::Result<()> {
        let mut deltas: BTreeMap<StatsKey, Counts> = BTreeMap::new();
        for c in 0..CAMPAIGNS {
            let mine: Vec<Attempt> = attempts.iter().filter(|(i, _)| *i == c).map(|(_, a)| *a).collect();
            for ((granularity, bucket), mut counts) in tally(&mine) {
                counts.released = counts.delivered + counts.dead;
                counts.spend_micros = counts.delivered * 1_000;
                let key = StatsKey {
                    campaign_id: format!("c{c:02}"),
                    partner_id: format!("p{}", c % PARTNERS),
                    granularity,
                    bucket,
                };
                deltas.insert(key, counts);
            }
        }
        written += deltas.len();
        stats::add(&**client, deltas).await?;
        attempts.clear();
        Ok(())
    };
    let mut current = None;
    for g in 0..clicks {
        let a = attempt(g, clicks, t0);
        let h = a.1.at.duration_trunc(Duration::hours(1))?;
        if current.is_some_and(|c| c != h) {
            flush(&mut hour).await?;
        }
        current = Some(h);
        hour.push(a);
    }
    flush(&mut hour).await?;
    Ok(written)
}
