//! Pacer benchmark, four measurements in one run, each on its own fresh database:
//!
//! 1. **Claim + reserve + mark throughput** with 1, 2, 4 and 8 concurrent pacers on the same PostgreSQL and a
//!    sender that accepts everything, so only PostgreSQL (and the planning between its statements) costs. Each
//!    worker count gets an identical seed: `--batches` batches (default 200,000) of 10 clicks over 50 campaigns
//!    of 5 partners, no limits, due over the hour before the (fixed, injected) clock, then `VACUUM ANALYZE`. Each
//!    pacer runs on its own thread with its own connections and calls `pacer::run_once` in a loop until a run
//!    finds nothing; `batches_per_s` = batches released / wall time. Claims use a 1-second horizon (no SQS
//!    delays, the planner walks one slot) and the production `max_batches` (5,000). Afterwards every batch must be
//!    queued once and the ledger must hold every click.
//! 2. The same with **the real SQS sender** (`SqsQueue` through the AWS SDK to the local moto), one pacer, 2,000
//!    batches (one run). moto is no model of SQS: its SendMessage walks the whole queue for every message.
//! 3. **Pacing accuracy over simulated days**: an even-mode campaign in Europe/Berlin with a 90-per-minute rate and
//!    a daily cap of 86,400 (one click a second: six batches a minute), 50,000 (a minute's share is not a whole
//!    number of batches) or 5,000 (a minute's share is less than a batch), 4 % more clicks than the cap in
//!    batches of 10 due at local midnight. The injected clock steps one minute per `run_once` (1,440 runs,
//!    production settings: 60-second horizon); messages are recorded in memory. Clicks per local hour are counted
//!    at the instant the bridge sends them (click k of n at k/n of the message's spread from its `release_at`)
//!    and compared with the plan (cap / 24): `even_error_pct` is the largest hourly
//!    |actual - plan| / plan over the three days. `over_cap` counts clicks released on the day above the cap plus
//!    clicks above the per-minute rate in any UTC minute (a message's clicks spread evenly over its
//!    `spread_seconds`, as the bridge delivers them). Also reported: clicks the ledger counts as released that no
//!    message carries.
//! 4. **Release latency**: 10 batches due at each second of a coming minute; at the first of those seconds one
//!    pacer runs with the wall clock and the real SQS sender (production settings), as the schedule would invoke
//!    it; two receivers poll the queue without long polling (moto's long poll does not wake for delayed messages),
//!    every 25 ms when empty. A batch's latency is the instant it was first received minus its due second
//!    (negative: visible before its second). Alongside: SentTimestamp + the DelaySeconds the pacer gave it minus
//!    the due second (no polling in it), and how long after the run's clock each message was sent. Not included:
//!    how late the scheduler itself invokes the pacer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::Instant;

use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, MessageSystemAttributeName};
use chrono::{DateTime, Duration, DurationRound, TimeZone, Utc};
use clickpacer::aws::AwsError;
use clickpacer::aws::sqs::{FailedEntry, OutgoingMessage, SqsQueue};
use clickpacer::config::DatabaseConfig;
use clickpacer::domain::{Campaign, CampaignId, PacingMode, Partner, PartnerId};
use clickpacer::postgres::pacer::ClaimSettings;
use clickpacer::postgres::{build_pool, campaigns, partners};
use clickpacer::release::ReleaseMessage;
use clickpacer::testing::{TestAws, TestDb};
use pacer::{ClickQueue, Pacer, PacerSettings};
use serde_json::json;

const CLICKS_PER_BATCH: i32 = 10;
const CAMPAIGNS: usize = 50;
const PARTNERS: usize = 5;
const WORKER_COUNTS: [usize; 4] = [1, 2, 4, 8];
/// Batches for the run through the local SQS: one pacer run. moto's SendMessage scans the whole queue for every
/// message (its queue attributes), so its cost grows with the queue and more batches would measure moto alone.
const SQS_BATCHES: i64 = 2_000;
/// Daily caps of the simulated days: one click a second exactly (six batches a minute), a cap whose minute share
/// is not a whole number of batches, and one whose minute share is less than a batch.
const DAY_CAPS: [u64; 3] = [86_400, 50_000, 5_000];
const DAY_RATE_PER_MINUTE: u32 = 90;
/// Batches due in each second of the latency minute.
const LATENCY_PER_SECOND: i64 = 10;

/// Accepts every message: PostgreSQL's cost alone.
struct NoopQueue;

impl ClickQueue for NoopQueue {
    async fn send_batch(&self, _messages: &[OutgoingMessage]) -> Result<Vec<FailedEntry>, AwsError> {
        Ok(Vec::new())
    }
}

/// Accepts every message and keeps it, for the simulated day.
#[derive(Default)]
struct RecordingQueue(Mutex<Vec<ReleaseMessage>>);

impl ClickQueue for RecordingQueue {
    async fn send_batch(&self, messages: &[OutgoingMessage]) -> Result<Vec<FailedEntry>, AwsError> {
        let parsed = messages.iter().map(|m| serde_json::from_str(&m.body)).collect::<Result<Vec<_>, _>>();
        let parsed = parsed.map_err(|e| AwsError { operation: "record", message: e.to_string() })?;
        self.0.lock().unwrap_or_else(|e| e.into_inner()).extend(parsed);
        Ok(Vec::new())
    }
}

fn t0() -> DateTime<Utc> {
    "2026-11-28T10:00:00Z".parse().unwrap_or_default()
}

fn round(x: f64, decimals: i32) -> f64 {
    let f = 10f64.powi(decimals);
    (x * f).round() / f
}

pub async fn run(batches: i64) -> anyhow::Result<()> {
    let aws = TestAws::new().await;
    let max_batches = ClaimSettings::default().max_batches;
    eprintln!(
        "throughput: {batches} batches of {CLICKS_PER_BATCH} clicks, {CAMPAIGNS} campaigns, {PARTNERS} partners, \
         no limits; claims with horizon 1 s, max_batches {max_batches}; no-op sender"
    );
    let mut by_workers = BTreeMap::new();
    for workers in WORKER_COUNTS {
        let r = throughput(workers, batches, max_batches, |_| NoopQueue).await?;
        eprintln!(
            "  {workers} pacer(s): {} batches in {:.2} s = {:.0} batches/s ({} runs, {:.0} ms per run)",
            r.released,
            r.seconds,
            r.batches_per_s(),
            r.runs,
            r.ms_per_run(workers)
        );
        by_workers.insert(workers, r);
    }
    let (best_workers, best) = by_workers
        .iter()
        .max_by(|a, b| a.1.batches_per_s().total_cmp(&b.1.batches_per_s()))
        .map(|(w, r)| (*w, r.batches_per_s()))
        .unwrap_or_default();
    let scaling = by_workers[&2].batches_per_s() / by_workers[&1].batches_per_s();

    let sqs_queue = aws.queue_with_dead_letter(30, 5).await.0;
    let sqs = throughput(1, SQS_BATCHES, max_batches, |_| sqs_queue.clone()).await?;
    eprintln!(
        "local SQS sender (moto), 1 pacer: {} batches in {:.2} s = {:.0} batches/s",
        sqs.released,
        sqs.seconds,
        sqs.batches_per_s()
    );

    // The days run side by side, each in its own database.
    let (a, b, c) = tokio::join!(
        simulated_day(DAY_CAPS[0], DAY_RATE_PER_MINUTE),
        simulated_day(DAY_CAPS[1], DAY_RATE_PER_MINUTE),
        simulated_day(DAY_CAPS[2], DAY_RATE_PER_MINUTE)
    );
    let days = [a?, b?, c?];
    for day in &days {
        eprintln!(
            "simulated day (even, cap {}, {DAY_RATE_PER_MINUTE}/min, Europe/Berlin): released {} clicks, reserved but \
             never released {}; hourly error max {:.3} %, minute deviation max {:.1} clicks; over cap {}, over rate \
             {}; 1,440 runs in {:.1} s",
            day.cap,
            day.released,
            day.reserved_not_released,
            day.error_pct,
            day.max_minute_deviation,
            day.over_cap,
            day.over_rate,
            day.seconds
        );
        eprintln!("  clicks per local hour: {:?}", day.hours);
    }

    let latency = release_latency(&aws, LATENCY_PER_SECOND).await?;
    let (r, v, lag) = (latency.received, latency.visible, latency.send_lag);
    eprintln!(
        "release latency ({} batches due over one minute, SqsQueue to moto), ms after the due second: received \
         min {} p50 {} p99 {} max {} ({} received before their second); visible (SentTimestamp + DelaySeconds) \
         min {} p50 {} p99 {} max {}; sent after the run's clock: p50 {} p99 {} max {}; the run started {} ms \
         after the first due second and took {} ms",
        latency.count,
        r.min,
        r.p50,
        r.p99,
        r.max,
        latency.early,
        v.min,
        v.p50,
        v.p99,
        v.max,
        lag.p50,
        lag.p99,
        lag.max,
        latency.start_offset_ms,
        latency.run_ms
    );

    let per_workers: serde_json::Map<String, serde_json::Value> = by_workers
        .iter()
        .map(|(w, r)| {
            let figures = json!({
                "batches_per_s": r.batches_per_s().round(),
                "seconds": round(r.seconds, 2),
                "runs": r.runs,
                "ms_per_run": round(r.ms_per_run(*w), 1),
            });
            (w.to_string(), figures)
        })
        .collect();
    let per_day: serde_json::Map<String, serde_json::Value> = days
        .iter()
        .map(|d| {
            let figures = json!({
                "released_clicks": d.released,
                "reserved_not_released_clicks": d.reserved_not_released,
                "even_error_pct": round(d.error_pct, 3),
                "max_minute_deviation_clicks": round(d.max_minute_deviation, 1),
                "over_cap": d.over_cap,
                "over_rate": d.over_rate,
                "seconds": round(d.seconds, 1),
            });
            (d.cap.to_string(), figures)
        })
        .collect();
    println!(
        "{}",
        json!({
            "benchmark": "pacer",
            "batches": batches,
            "clicks_per_batch": CLICKS_PER_BATCH,
            "campaigns": CAMPAIGNS,
            "horizon_seconds": 1,
            "max_batches": max_batches,
            "batches_per_s": best.round(),
            "clicks_per_s": (best * f64::from(CLICKS_PER_BATCH)).round(),
            "best_workers": best_workers,
            "scaling": round(scaling, 3),
            "workers": per_workers,
            "sqs_batches": SQS_BATCHES,
            "sqs_batches_per_s": sqs.batches_per_s().round(),
            "over_cap": days.iter().map(|d| d.over_cap + d.over_rate).sum::<u64>(),
            "even_error_pct": round(days.iter().map(|d| d.error_pct).fold(0.0, f64::max), 3),
            "days": per_day,
            "latency_batches": latency.count,
            "min_release_latency_ms": r.min,
            "p50_release_latency_ms": r.p50,
            "p99_release_latency_ms": r.p99,
            "max_release_latency_ms": r.max,
            "early_releases": latency.early,
            "p99_visible_latency_ms": v.p99,
            "p99_send_lag_ms": lag.p99,
            "latency_run_ms": latency.run_ms,
        })
    );
    Ok(())
}

/// A fresh database with `PARTNERS` partners and the given campaigns.
async fn seeded_db(campaign_list: &[Campaign]) -> anyhow::Result<TestDb> {
    let db = TestDb::new().await;
    let client = db.client().await;
    let mut seen = Vec::new();
    for c in campaign_list {
        if !seen.contains(&c.partner_id) {
            let partner = Partner::get(c.partner_id.clone(), "https://partner.example/c?id={click_id}");
            partners::upsert(&**client, &partner).await?;
            seen.push(c.partner_id.clone());
        }
        campaigns::upsert(&**client, c).await?;
    }
    Ok(db)
}

fn bench_campaigns() -> anyhow::Result<Vec<Campaign>> {
    (0..CAMPAIGNS)
        .map(|i| {
            let partner = PartnerId::parse(format!("partner-{}", i % PARTNERS))?;
            let mut c = Campaign::unlimited(CampaignId::parse(format!("campaign-{i:02}"))?, partner);
            c.batch_size = CLICKS_PER_BATCH as u32;
            Ok(c)
        })
        .collect()
}

/// `n` batches of one campaign, as the slicer writes them; batch `s` is due at `base + (s % spread)` seconds.
async fn insert_batches(
    db: &TestDb,
    campaign_id: &str,
    n: i64,
    base: DateTime<Utc>,
    spread_seconds: i64,
) -> anyhow::Result<()> {
    let client = db.client().await;
    let upload: i64 = client
        .query_one(
            "INSERT INTO uploads (bucket, object_key, object_version) VALUES ('bench', $1, 'v') RETURNING upload_id",
            &[&format!("incoming/{campaign_id}/bench.csv")],
        )
        .await?
        .get(0);
    client
        .execute(
            "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
             SELECT c.campaign_id, c.partner_id, $2, s, $4,
                    $5::timestamptz + make_interval(secs => (s % $6::bigint)::double precision)
             FROM campaigns c, generate_series(0::bigint, $3::bigint - 1) s
             WHERE c.campaign_id = $1",
            &[&campaign_id, &upload, &n, &CLICKS_PER_BATCH, &base, &spread_seconds],
        )
        .await?;
    client.batch_execute("VACUUM ANALYZE batches").await?;
    Ok(())
}

async fn drop_db(db: TestDb) -> anyhow::Result<()> {
    let TestDb { pool, name, .. } = db;
    pool.close();
    drop(pool);
    let admin = build_pool(&DatabaseConfig { url: std::env::var("DATABASE_URL")?, pool_size: 1 })?;
    admin.get().await?.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    Ok(())
}

struct Throughput {
    released: u64,
    runs: u64,
    seconds: f64,
}

impl Throughput {
    fn batches_per_s(&self) -> f64 {
        self.released as f64 / self.seconds
    }

    /// Wall time of one `run_once`, on average, with `workers` pacers running side by side.
    fn ms_per_run(&self, workers: usize) -> f64 {
        self.seconds * 1000.0 * workers as f64 / self.runs.max(1) as f64
    }
}

/// `workers` pacers, each with its own connections (as separate Lambda invocations would have), releasing `n`
/// due batches until none is left.
async fn throughput<Q, F>(workers: usize, n: i64, max_batches: usize, queue: F) -> anyhow::Result<Throughput>
where
    Q: ClickQueue + Send + 'static,
    F: Fn(usize) -> Q,
{
    let campaign_list = bench_campaigns()?;
    let db = seeded_db(&campaign_list).await?;
    let per_campaign = n / CAMPAIGNS as i64;
    for (i, c) in campaign_list.iter().enumerate() {
        let count = per_campaign + i64::from((i as i64) < n % CAMPAIGNS as i64);
        insert_batches(&db, c.campaign_id.as_str(), count, t0() - Duration::hours(1), 3600).await?;
    }
    let settings = PacerSettings {
        claim: ClaimSettings { horizon_seconds: 1, max_batches, ..ClaimSettings::default() },
        ..PacerSettings::default()
    };
    // One thread and runtime per pacer: `run_once`'s future is not `Send` (its send stream borrows), and separate
    // Lambda invocations share nothing but the database anyway.
    let barrier = Arc::new(Barrier::new(workers + 1));
    let handles: Vec<_> = (0..workers)
        .map(|w| {
            let (url, queue, settings, barrier) = (db.config.url.clone(), queue(w), settings.clone(), barrier.clone());
            std::thread::spawn(move || -> anyhow::Result<(u64, u64, Instant)> {
                let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
                runtime.block_on(async move {
                    let pool = build_pool(&DatabaseConfig { url, pool_size: 2 })?;
                    drop(pool.get().await?); // connect before the clock starts
                    let p = Pacer { pool, queue, settings };
                    barrier.wait();
                    let (mut released, mut runs) = (0u64, 0u64);
                    loop {
                        let summary = pacer::run_once(&p, t0()).await?;
                        runs += 1;
                        released += summary.released;
                        anyhow::ensure!(summary.unsent == 0, "unsent batches: {summary:?}");
                        if summary.examined == 0 {
                            return Ok((released, runs, Instant::now()));
                        }
                    }
                })
            })
        })
        .collect();
    let waiting = barrier.clone();
    tokio::task::spawn_blocking(move || waiting.wait()).await?;
    let started = Instant::now();
    let results =
        tokio::task::spawn_blocking(move || handles.into_iter().map(|h| h.join()).collect::<Vec<_>>()).await?;
    let mut total = Throughput { released: 0, runs: 0, seconds: 0.0 };
    for result in results {
        let (released, runs, finished) = result.map_err(|_| anyhow::anyhow!("a pacer thread panicked"))??;
        total.released += released;
        total.runs += runs;
        total.seconds = total.seconds.max((finished - started).as_secs_f64());
    }

    // Every batch released exactly once: all queued, none twice, and the ledger holds every click.
    let client = db.client().await;
    let queued: i64 = client.query_one("SELECT count(*) FROM batches WHERE state = 'queued'", &[]).await?.get(0);
    let ledger: i64 = client
        .query_one("SELECT coalesce(sum(released_clicks), 0)::bigint FROM campaign_day_ledger", &[])
        .await?
        .get(0);
    anyhow::ensure!(
        queued == n && total.released == n as u64 && ledger == n * i64::from(CLICKS_PER_BATCH),
        "{workers} pacers: {n} batches seeded, {queued} queued, {} released, {ledger} clicks in the ledger",
        total.released
    );
    drop(client);
    drop_db(db).await?;
    Ok(total)
}

struct Day {
    cap: u64,
    hours: [u64; 24],
    released: u64,
    /// Clicks the ledger counts as released that no message carries.
    reserved_not_released: u64,
    error_pct: f64,
    max_minute_deviation: f64,
    over_cap: u64,
    over_rate: u64,
    seconds: f64,
}

async fn simulated_day(cap: u64, rate_per_minute: u32) -> anyhow::Result<Day> {
    let tz = chrono_tz::Europe::Berlin;
    let midnight = tz
        .with_ymd_and_hms(2026, 3, 10, 0, 0, 0)
        .single()
        .ok_or_else(|| anyhow::anyhow!("no single local midnight"))?
        .with_timezone(&Utc);
    let mut c = Campaign::unlimited(CampaignId::parse("even-day")?, PartnerId::parse("partner-0")?);
    c.pacing = PacingMode::Even;
    c.time_zone = tz;
    c.daily_cap = Some(cap);
    c.max_per_minute = Some(rate_per_minute);
    c.batch_size = CLICKS_PER_BATCH as u32;
    let db = seeded_db(std::slice::from_ref(&c)).await?;
    // About 4 % more clicks than the cap, so the cap has something to hold back.
    let batches = (cap * 26 / 25).div_ceil(CLICKS_PER_BATCH as u64) as i64;
    insert_batches(&db, "even-day", batches, midnight, 1).await?;

    let pacer = Pacer { pool: db.pool.clone(), queue: RecordingQueue::default(), settings: PacerSettings::default() };
    let started = Instant::now();
    for minute in 0..1440 {
        pacer::run_once(&pacer, midnight + Duration::minutes(minute)).await?;
    }
    let seconds = started.elapsed().as_secs_f64();
    let messages = std::mem::take(&mut *pacer.queue.0.lock().unwrap_or_else(|e| e.into_inner()));

    let day_end = midnight + Duration::days(1);
    let mut hours = [0u64; 24];
    let mut minutes = vec![0u64; 1440];
    let mut per_utc_minute: HashMap<i64, u64> = HashMap::new();
    let mut released = 0;
    for m in &messages {
        anyhow::ensure!(m.release_at >= midnight && m.release_at < day_end, "released outside the day: {m:?}");
        released += u64::from(m.clicks);
        // Each click counts at the instant the bridge sends it: click k of n at k/n of the message's spread
        // from its release second (a batch released ahead of a slow plan is spread until its last click is due).
        let spread_ms = i64::from(m.spread_seconds.max(1)) * 1000;
        let n = i64::from(m.clicks.max(1));
        for k in 0..i64::from(m.clicks) {
            let at = m.release_at + Duration::milliseconds(spread_ms * k / n);
            let offset = (at - midnight).num_seconds().clamp(0, 86_399);
            hours[(offset / 3600) as usize] += 1;
            minutes[(offset / 60) as usize] += 1;
            *per_utc_minute.entry(at.timestamp().div_euclid(60)).or_default() += 1;
        }
    }
    let hour_plan = cap as f64 / 24.0;
    let error_pct = hours.iter().map(|&h| (h as f64 - hour_plan).abs() / hour_plan * 100.0).fold(0.0, f64::max);
    let minute_plan = cap as f64 / 1440.0;
    let max_minute_deviation = minutes.iter().map(|&m| (m as f64 - minute_plan).abs()).fold(0.0, f64::max);
    let over_rate = per_utc_minute.values().map(|&n| n.saturating_sub(u64::from(rate_per_minute))).sum();
    let ledger: i64 = db
        .client()
        .await
        .query_one("SELECT coalesce(sum(released_clicks), 0)::bigint FROM campaign_day_ledger", &[])
        .await?
        .get(0);
    drop_db(db).await?;
    Ok(Day {
        cap,
        hours,
        released,
        reserved_not_released: (ledger.max(0) as u64).saturating_sub(released),
        error_pct,
        max_minute_deviation,
        over_cap: released.saturating_sub(cap),
        over_rate,
        seconds,
    })
}

struct Latency {
    count: usize,
    /// First receive minus due second, ms.
    received: Percentiles,
    /// Batches received before their due second.
    early: usize,
    /// SentTimestamp + DelaySeconds minus due second, ms.
    visible: Percentiles,
    /// SentTimestamp minus the run's clock (claim time plus the wait for earlier sends), ms.
    send_lag: Percentiles,
    start_offset_ms: i64,
    run_ms: i64,
}

/// One received message: when this process got it, SQS's SentTimestamp (ms), and the message.
type Received = (DateTime<Utc>, i64, ReleaseMessage);

async fn release_latency(aws: &TestAws, per_second: i64) -> anyhow::Result<Latency> {
    let mut c = Campaign::unlimited(CampaignId::parse("latency")?, PartnerId::parse("partner-0")?);
    c.batch_size = CLICKS_PER_BATCH as u32;
    let db = seeded_db(std::slice::from_ref(&c)).await?;
    let (queue, _dlq) = aws.queue_with_dead_letter(60, 5).await;
    // The minute starts at a whole second a few seconds from now (time to seed and start the receivers).
    let first_due = (Utc::now() + Duration::seconds(4)).duration_trunc(Duration::seconds(1))?;
    let n = per_second * 60;
    insert_batches(&db, "latency", n, first_due, 60).await?;
    let due: HashMap<i64, DateTime<Utc>> = db
        .client()
        .await
        .query("SELECT batch_id, due_at FROM batches", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();

    let pacer = Pacer { pool: db.pool.clone(), queue: queue.clone(), settings: PacerSettings::default() };
    drop(pacer.pool.get().await?);
    let received: Arc<Mutex<Vec<Received>>> = Arc::default();
    let done = Arc::new(AtomicBool::new(false));
    let receivers: Vec<_> =
        (0..2).map(|_| tokio::spawn(receive_loop(queue.clone(), received.clone(), done.clone()))).collect();

    tokio::time::sleep((first_due - Utc::now()).to_std().unwrap_or_default()).await;
    let now = Utc::now();
    let started = Instant::now();
    let summary = pacer::run_once(&pacer, now).await?;
    let run_ms = started.elapsed().as_millis() as i64;
    anyhow::ensure!(summary.released == n as u64, "latency run released {summary:?}");

    let deadline = Instant::now() + std::time::Duration::from_secs(90);
    while received.lock().unwrap_or_else(|e| e.into_inner()).len() < n as usize && Instant::now() < deadline {
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    done.store(true, Ordering::Relaxed);
    for r in receivers {
        r.await??;
    }
    let got = std::mem::take(&mut *received.lock().unwrap_or_else(|e| e.into_inner()));
    let mut first: HashMap<i64, &Received> = HashMap::new();
    for r in &got {
        first
            .entry(r.2.batch_id)
            .and_modify(|f| {
                if r.0 < f.0 {
                    *f = r
                }
            })
            .or_insert(r);
    }
    anyhow::ensure!(first.len() == n as usize, "received {} of {n} batches", first.len());
    let mut recv_ms = Vec::new();
    let mut visible_ms = Vec::new();
    let mut lag_ms = Vec::new();
    for (id, (at, sent_ms, m)) in &first {
        let due_at = due[id];
        recv_ms.push((*at - due_at).num_milliseconds());
        // The delay the pacer gave the message, as `pacer::run_once` computes it.
        let delay = (m.release_at - now).num_seconds().clamp(0, 900);
        visible_ms.push(sent_ms + delay * 1000 - due_at.timestamp_millis());
        lag_ms.push(sent_ms - now.timestamp_millis());
    }
    drop_db(db).await?;
    Ok(Latency {
        count: first.len(),
        early: recv_ms.iter().filter(|&&ms| ms < 0).count(),
        received: percentiles(&mut recv_ms),
        visible: percentiles(&mut visible_ms),
        send_lag: percentiles(&mut lag_ms),
        start_offset_ms: (now - first_due).num_milliseconds(),
        run_ms,
    })
}

/// Polls without long polling (moto's long poll does not wake for delayed messages), deleting what it gets.
async fn receive_loop(queue: SqsQueue, out: Arc<Mutex<Vec<Received>>>, done: Arc<AtomicBool>) -> anyhow::Result<()> {
    while !done.load(Ordering::Relaxed) {
        let reply = queue
            .client()
            .receive_message()
            .queue_url(queue.url())
            .max_number_of_messages(10)
            .wait_time_seconds(0)
            .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
            .send()
            .await?;
        let at = Utc::now();
        let messages = reply.messages();
        if messages.is_empty() {
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
            continue;
        }
        let mut deletes = Vec::new();
        for (i, m) in messages.iter().enumerate() {
            let sent: i64 = m
                .attributes()
                .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                .and_then(|v| v.parse().ok())
                .unwrap_or_default();
            let message: ReleaseMessage = serde_json::from_str(m.body().unwrap_or_default())?;
            out.lock().unwrap_or_else(|e| e.into_inner()).push((at, sent, message));
            deletes.push(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().unwrap_or_default())
                    .build()?,
            );
        }
        queue.client().delete_message_batch().queue_url(queue.url()).set_entries(Some(deletes)).send().await?;
    }
    Ok(())
}

/// Min, p50, p99 and max (nearest rank).
fn percentiles(values: &mut [i64]) -> Percentiles {
    values.sort_unstable();
    let rank = |p: f64| values[((p * values.len() as f64).ceil() as usize).clamp(1, values.len()) - 1];
    Percentiles { min: values[0], p50: rank(0.50), p99: rank(0.99), max: values[values.len() - 1] }
}

#[derive(Debug, Clone, Copy)]
struct Percentiles {
    min: i64,
    p50: i64,
    p99: i64,
    max: i64,
}
