//! The chaos runner: the real pipeline (the handlers the Lambdas run, through the local runner's triggers) with
//! its slicer, pacer and bridge workers as separate OS processes, on real PostgreSQL and the local AWS endpoint,
//! delivering to the partner simulator, while faults chosen from a seed hit it: workers SIGKILLed at any moment
//! and crashed at named points (failpoints), PostgreSQL restarted and its backends terminated, SQS and DynamoDB
//! failing at the adapters, partners failing every way they do, S3 events repeated and objects overwritten.
//! After each round's faults the pipeline drains and every invariant is checked, one line each; the run stops
//! at the first round that breaks one and prints its seed and round.
//!
//! Lambda's limits hold as in AWS, scaled down so a round takes seconds (see [`timing`]): an invocation still
//! running at its function's timeout is stopped, and its messages come back after the visibility timeout.

pub mod faults;
pub mod invariants;
pub mod worker;

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use anyhow::Context;
use chrono::Utc;
use clickpacer::aws::sqs::OutgoingMessage;
use clickpacer::config::DatabaseConfig;
use clickpacer::domain::{Campaign, CampaignId, Micros, Partner, PartnerId};
use clickpacer::postgres::{campaigns, partners};
use faults::{FaultKind, PostgresControl, Worker, WorkerLauncher};
use invariants::{FaultCounts, Figures};
use local::{FunctionTimeouts, Names, Pipeline, Timing};
use partner_sim::{Behaviour, Running};

/// A worker's function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    Slicer,
    Pacer,
    Bridge,
}

impl Role {
    pub fn name(self) -> &'static str {
        match self {
            Self::Slicer => "slicer",
            Self::Pacer => "pacer",
            Self::Bridge => "bridge",
        }
    }
}

/// The workers of each role a run keeps alive: concurrency is part of what is under test.
const WORKERS: [(Role, usize); 3] = [(Role::Slicer, 2), (Role::Pacer, 2), (Role::Bridge, 2)];

/// AWS's timing scaled to seconds: the pacer every second, messages back after 4 s, the functions' timeouts
/// and the leases cut by the same logic as in AWS (a lease outlives the invocation that holds it).
pub fn timing() -> Timing {
    Timing {
        pacer_every: Duration::from_secs(1),
        visibility: Duration::from_secs(4),
        timeouts: FunctionTimeouts {
            slicer: Duration::from_secs(30),
            pacer: Duration::from_secs(10),
            bridge: Duration::from_secs(6),
        },
        upload_lease: Duration::from_secs(3),
        claim_lease: Duration::from_secs(5),
        queued_lease: Duration::from_secs(20),
    }
}

pub struct RunOptions {
    pub rounds: u32,
    pub seed: u64,
    pub clicks: u32,
    pub fault_seconds: u64,
    pub postgres: Option<PostgresControl>,
}

/// The partners every round delivers to: (id, configured rate, concurrency, success pattern).
const PARTNERS: [(&str, Option<u32>, u32, Option<&str>); 3] =
    [("steady", None, 8, None), ("rated", Some(40), 4, None), ("picky", None, 4, Some("ACCEPTED"))];

/// Runs the rounds; returns whether every invariant held after every one.
pub async fn run(options: RunOptions, database: &DatabaseConfig) -> anyhow::Result<bool> {
    let seed = options.seed;
    println!(
        "chaos: seed {seed}, {} rounds of {} s of faults, {} clicks a file",
        options.rounds, options.fault_seconds, options.clicks
    );
    let database = fresh_database(database, seed).await?;
    let sdk = clickpacer::aws::load_sdk_config().await;
    let prefix = format!("chaos-{seed}");
    let pipeline = Pipeline::start(&sdk, &database, Names::with_prefix(&prefix), timing()).await?;
    let sim = partner_sim::spawn(partner_sim::Config { seed: Some(seed), ..partner_sim::Config::default() }).await?;
    let healthy = seed_partners(&pipeline, &sim).await?;
    let rated: Vec<(String, u32)> =
        PARTNERS.iter().filter_map(|(id, rate, ..)| rate.map(|r| ((*id).to_owned(), r))).collect();

    let logs = std::path::PathBuf::from(format!(".local/chaos/{seed}"));
    std::fs::create_dir_all(&logs)?;
    let mut launcher = WorkerLauncher {
        binary: std::env::current_exe()?,
        prefix: prefix.clone(),
        database_url: database.url.clone(),
        logs: logs.clone(),
        started: 0,
    };
    let mut workers = Vec::new();
    for (role, n) in WORKERS {
        for _ in 0..n {
            workers.push(launcher.spawn(role, None)?);
        }
    }

    let mut injected = FaultCounts::new();
    let mut table = Vec::new();
    let mut passed = true;
    for round in 1..=options.rounds {
        let started = Instant::now();
        let mut rng = fastrand::Rng::with_seed(seed.wrapping_mul(1_000_003).wrapping_add(u64::from(round)));
        let mut faults = FaultCounts::new();
        let round_campaigns = seed_campaigns(&pipeline, round, &mut rng).await?;
        drop_files(&pipeline, round, &round_campaigns, options.clicks, &mut rng, &mut faults).await?;

        // Faults, one every 0.2-1.5 s; dead workers come back (as Lambda starts a new execution environment).
        let until = Instant::now() + Duration::from_secs(options.fault_seconds);
        let running = FaultKind::running();
        let mut healing: Vec<(Instant, String)> = Vec::new();
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(rng.u64(200..1500))).await;
            let kind = running[rng.usize(..running.len())];
            inject(kind, &mut rng, &mut workers, &mut launcher, &options, &pipeline, &sim, &healthy, &mut healing)
                .await?;
            *faults.entry(kind.name()).or_default() += 1;
            restart_dead(&mut workers, &mut launcher)?;
            heal_partners(&sim, &healthy, &mut healing, false);
        }
        // Heal: partners answer normally, every worker runs without failpoints.
        heal_partners(&sim, &healthy, &mut healing, true);
        for w in workers.iter_mut().filter(|w| w.armed.is_some()) {
            let _ = w.child.start_kill();
        }
        restart_dead(&mut workers, &mut launcher)?;
        for w in workers.iter_mut().filter(|w| w.armed.is_some()) {
            let _ = w.child.wait().await;
            *w = launcher.spawn(w.role, None)?;
        }

        let drained = drain(&pipeline, &mut workers, &mut launcher, Duration::from_secs(180)).await?;
        let (checks, figures) = invariants::check(&pipeline, &sim, &rated).await?;
        println!("round {round} (seed {seed}): {} faults {}", faults.values().sum::<u32>(), describe(&faults));
        let mut round_ok = drained;
        if !drained {
            println!("  BAD drained: work still in progress after 180 s");
            for line in in_progress(&pipeline).await.unwrap_or_else(|e| vec![format!("(unreadable: {e:#})")]) {
                println!("    {line}");
            }
        }
        for c in &checks {
            println!("  {} {}: {}", if c.holds { "ok " } else { "BAD" }, c.name, c.detail);
            round_ok &= c.holds;
        }
        for (k, v) in &faults {
            *injected.entry(k).or_default() += v;
        }
        table.push((round, faults, figures, started.elapsed()));
        if !round_ok {
            println!("chaos: round {round} of seed {seed} broke an invariant; replay with --seed {seed}");
            println!("chaos: worker logs in {}", logs.display());
            passed = false;
            break;
        }
    }
    for w in workers.iter_mut() {
        let _ = w.child.start_kill();
    }
    print_table(&table);
    let never: Vec<&str> =
        FaultKind::ALL.iter().map(|k| k.name()).filter(|name| !injected.contains_key(name)).collect();
    println!(
        "faults injected: {}{}",
        describe(&injected),
        if never.is_empty() { String::new() } else { format!("; never drawn: {}", never.join(", ")) }
    );
    println!("{}", summary_json(seed, &table, &injected, passed));
    Ok(passed)
}

/// A database of the run's own, created afresh (and left behind for inspection).
async fn fresh_database(database: &DatabaseConfig, seed: u64) -> anyhow::Result<DatabaseConfig> {
    let mut url = url_parts(&database.url)?;
    let name = format!("clickpacer_chaos_{seed}");
    let admin = clickpacer::postgres::build_pool(database)?;
    let client = admin.get().await.context("connecting to PostgreSQL")?;
    client.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)")).await?;
    client.batch_execute(&format!("CREATE DATABASE {name}")).await?;
    // Committed means committed, as in RDS: the test cluster's speed setting (synchronous_commit off) lets an
    // immediate restart lose the last commits, which no deployment does.
    client.batch_execute(&format!("ALTER DATABASE {name} SET synchronous_commit = on")).await?;
    url.1 = name;
    Ok(DatabaseConfig { url: format!("{}/{}{}", url.0, url.1, url.2), ..database.clone() })
}

/// `(scheme://authority, database, ?query)` of a connection URL.
fn url_parts(url: &str) -> anyhow::Result<(String, String, String)> {
    let after_scheme = url.find("://").map(|i| i + 3).context("DATABASE_URL is not a URL")?;
    let path = url[after_scheme..].find('/').map(|i| i + after_scheme).unwrap_or(url.len());
    let query = url[path..].find('?').map(|i| i + path).unwrap_or(url.len());
    Ok((url[..path].to_owned(), url[path..query].trim_start_matches('/').to_owned(), url[query..].to_owned()))
}

async fn seed_partners(pipeline: &Pipeline, sim: &Running) -> anyhow::Result<BTreeMap<String, Behaviour>> {
    let client = pipeline.pool.get().await?;
    let mut healthy = BTreeMap::new();
    for (id, rate, concurrency, pattern) in PARTNERS {
        let behaviour = Behaviour { body: pattern.unwrap_or("OK").to_owned(), ..Behaviour::default() };
        sim.sim.set_behaviour(id, behaviour.clone()).map_err(anyhow::Error::msg)?;
        healthy.insert(id.to_owned(), behaviour);
        let mut p =
            Partner::get(PartnerId::parse(id)?, format!("{}/c?id={{click_id}}&c={{campaign_id}}", sim.partner_url(id)));
        p.rate_per_second = rate;
        p.max_concurrency = concurrency;
        p.success_body_match = pattern.map(str::to_owned);
        p.timeout_ms = 800;
        p.max_attempts = 10;
        p.retry_base_ms = 100;
        p.retry_max_ms = 1_000;
        partners::upsert(&**client, &p).await?;
    }
    Ok(healthy)
}

/// Three campaigns a round, one per partner, with rules drawn from the round's seed.
async fn seed_campaigns(pipeline: &Pipeline, round: u32, rng: &mut fastrand::Rng) -> anyhow::Result<Vec<CampaignId>> {
    let client = pipeline.pool.get().await?;
    let mut ids = Vec::new();
    for (n, (partner, ..)) in PARTNERS.iter().enumerate() {
        let id = CampaignId::parse(format!("r{round}-{partner}"))?;
        let mut c = Campaign::unlimited(id.clone(), PartnerId::parse(*partner)?);
        c.batch_size = [5, 10, 25][rng.usize(..3)];
        c.time_zone = [chrono_tz::UTC, chrono_tz::America::New_York, chrono_tz::Asia::Tokyo][n];
        match rng.u8(..3) {
            0 => c.daily_cap = Some(rng.u64(50..250)),
            1 => {
                c.cost_per_click = Micros(10_000);
                c.daily_budget = Some(Micros(10_000 * rng.i64(50..250)));
            }
            _ => c.max_per_second = Some(rng.u32(20..60)),
        }
        campaigns::upsert(&**client, &c).await?;
        ids.push(id);
    }
    Ok(ids)
}

/// One CSV per campaign (a few bad rows and repeated ids), some events repeated, one object overwritten.
async fn drop_files(
    pipeline: &Pipeline,
    round: u32,
    ids: &[CampaignId],
    clicks: u32,
    rng: &mut fastrand::Rng,
    faults: &mut FaultCounts,
) -> anyhow::Result<()> {
    let bucket = &pipeline.names.bucket;
    for (n, id) in ids.iter().enumerate() {
        let key = format!("incoming/{id}/round-{round}.csv");
        let body = click_file(id, clicks, 0);
        pipeline.objects.put(bucket, &key, body, "text/csv").await?;
        if n == 0 && rng.bool() {
            // Overwritten before the slicer reads it: its first event names bytes that are gone.
            pipeline.objects.put(bucket, &key, click_file(id, clicks, 1), "text/csv").await?;
            *faults.entry(FaultKind::ObjectOverwritten.name()).or_default() += 1;
        }
        if rng.u8(..3) > 0 {
            let head = pipeline.objects.client().head_object().bucket(bucket).key(&key).send().await?;
            let event = local::s3_event_json(bucket, &key, head.e_tag().unwrap_or_default().trim_matches('"'));
            let copies: Vec<OutgoingMessage> = (0..rng.usize(2..5))
                .map(|i| OutgoingMessage { id: format!("again-{i}"), body: event.to_string(), delay_seconds: 0 })
                .collect();
            pipeline.upload_events.send_batch(&copies).await?;
            *faults.entry(FaultKind::DuplicateEvents.name()).or_default() += 1;
        }
    }
    Ok(())
}

/// `clicks` rows for a campaign: every 37th row bad, every 50th id repeated; `version` shifts the ids so an
/// overwritten object holds other clicks.
fn click_file(id: &CampaignId, clicks: u32, version: u32) -> Vec<u8> {
    let mut out = String::from("click_id,clicked_at,ip,user_agent\n");
    let at = Utc::now().timestamp();
    for i in 0..clicks {
        let n = i + version * 1_000_000;
        let click = if i % 50 == 49 { format!("{id}-{}", n - 3) } else { format!("{id}-{n}") };
        match i % 37 {
            36 => out.push_str(&format!("{click},not-a-time,10.0.0.1,Mozilla/5.0\n")),
            _ => out.push_str(&format!("{click},{at},10.0.{}.{},Mozilla/5.0\n", i / 250 % 250, i % 250)),
        }
    }
    out.into_bytes()
}

#[allow(clippy::too_many_arguments)]
async fn inject(
    kind: FaultKind,
    rng: &mut fastrand::Rng,
    workers: &mut [Worker],
    launcher: &mut WorkerLauncher,
    options: &RunOptions,
    pipeline: &Pipeline,
    sim: &Running,
    healthy: &BTreeMap<String, Behaviour>,
    healing: &mut Vec<(Instant, String)>,
) -> anyhow::Result<()> {
    match kind {
        FaultKind::KillWorker => {
            let w = &mut workers[rng.usize(..workers.len())];
            w.child.start_kill()?;
            let _ = w.child.wait().await;
        }
        FaultKind::CrashAfterClaim
        | FaultKind::CrashAfterSend
        | FaultKind::CrashAfterPartnerAnswer
        | FaultKind::SqsErrors
        | FaultKind::DynamoThrottling => {
            // A worker of the right role is replaced by one armed with the failpoints.
            let candidates: Vec<usize> = workers
                .iter()
                .enumerate()
                .filter(|(_, w)| kind.role().is_none_or(|r| r == w.role))
                .map(|(i, _)| i)
                .collect();
            let i = candidates[rng.usize(..candidates.len())];
            let role = workers[i].role;
            let Some(points) = kind.failpoints(role) else { return Ok(()) };
            workers[i].child.start_kill()?;
            let _ = workers[i].child.wait().await;
            workers[i] = launcher.spawn(role, Some(points))?;
        }
        FaultKind::PostgresRestart => match &options.postgres {
            Some(pg) => pg.restart_immediate().await?,
            // Not ours to restart: the nearest thing is every connection dropped.
            None => terminate_backends(pipeline).await?,
        },
        FaultKind::BackendsTerminated => terminate_backends(pipeline).await?,
        _ => {
            let partner = match kind {
                FaultKind::PartnerWrongBody => "picky",
                FaultKind::BridgeTimeout => "steady",
                _ => PARTNERS[rng.usize(..PARTNERS.len())].0,
            };
            if let Some(behaviour) = kind.partner_behaviour(&healthy[partner]) {
                sim.sim.set_behaviour(partner, behaviour).map_err(anyhow::Error::msg)?;
                healing.push((Instant::now() + faults::PARTNER_FAULT_FOR, partner.to_owned()));
            }
        }
    }
    Ok(())
}

async fn terminate_backends(pipeline: &Pipeline) -> anyhow::Result<()> {
    let client = pipeline.pool.get().await?;
    client
        .execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = current_database() AND pid <> pg_backend_pid()",
            &[],
        )
        .await?;
    Ok(())
}

/// Partners whose fault has lasted its time (or all, with `all`) answer normally again.
fn heal_partners(
    sim: &Running,
    healthy: &BTreeMap<String, Behaviour>,
    healing: &mut Vec<(Instant, String)>,
    all: bool,
) {
    let now = Instant::now();
    healing.retain(|(until, partner)| {
        if all || *until <= now {
            let _ = sim.sim.set_behaviour(partner, healthy[partner].clone());
            false
        } else {
            true
        }
    });
}

/// Workers that died (killed, or crashed at a failpoint) are started again, clean.
fn restart_dead(workers: &mut [Worker], launcher: &mut WorkerLauncher) -> anyhow::Result<()> {
    for w in workers.iter_mut() {
        if w.child.try_wait()?.is_some() {
            *w = launcher.spawn(w.role, None)?;
        }
    }
    Ok(())
}

/// Waits until nothing is left to do now and the event outbox is empty (three checks in a row).
async fn drain(
    pipeline: &Pipeline,
    workers: &mut [Worker],
    launcher: &mut WorkerLauncher,
    limit: Duration,
) -> anyhow::Result<bool> {
    let started = Instant::now();
    let mut quiet = 0;
    while started.elapsed() < limit {
        tokio::time::sleep(Duration::from_secs(1)).await;
        restart_dead(workers, launcher)?;
        let outbox = match pipeline.pool.get().await {
            Ok(client) => clickpacer::postgres::bridge::outbox_depth(&**client).await.unwrap_or(1),
            Err(_) => 1,
        };
        let drained = pipeline.drained().await.unwrap_or(false) && outbox == 0;
        quiet = if drained { quiet + 1 } else { 0 };
        if quiet >= 3 {
            return Ok(true);
        }
    }
    Ok(false)
}

/// What a drain that did not finish left in progress, for the round's report: the batches not settled yet by
/// campaign and state, the queues' depths, and each partner's pacing (a learned rate cut low, a pause, an
/// allowance at its floor), so a stall says where it is without a rerun.
async fn in_progress(pipeline: &Pipeline) -> anyhow::Result<Vec<String>> {
    let client = pipeline.pool.get().await?;
    let mut lines = Vec::new();
    let uploads: i64 = client.query_one("SELECT count(*) FROM uploads WHERE status = 'processing'", &[]).await?.get(0);
    lines.push(format!("uploads processing: {uploads}"));
    let batches = client
        .query(
            "SELECT campaign_id, state, count(*), sum(click_count - settled_clicks)::bigint,
                    round(extract(epoch FROM min(due_at) - now()))::bigint, max(claim_count), min(defer_reason)
             FROM batches WHERE state IN ('pending', 'claimed', 'queued')
             GROUP BY 1, 2 ORDER BY 1, 2",
            &[],
        )
        .await?;
    for r in &batches {
        lines.push(format!(
            "batches {} {}: {} holding {} clicks, first due in {} s, claimed up to {} times, deferred: {}",
            r.get::<_, String>(0),
            r.get::<_, String>(1),
            r.get::<_, i64>(2),
            r.get::<_, Option<i64>>(3).unwrap_or(0),
            r.get::<_, Option<i64>>(4).unwrap_or(0),
            r.get::<_, Option<i32>>(5).unwrap_or(0),
            r.get::<_, Option<String>>(6).unwrap_or_else(|| "-".into()),
        ));
    }
    lines.push(format!(
        "queues: upload events {}, clicks {}, dead letters {}",
        pipeline.upload_events.depth().await?,
        pipeline.click_queue.depth().await?,
        pipeline.dead_letters.depth().await?
    ));
    let partners = client
        .query(
            "SELECT partner_id, allowance, send_rate, send_rate_learned,
                    round(extract(epoch FROM retry_after_until - now()))::bigint,
                    round(extract(epoch FROM next_send_at - now()))::bigint
             FROM partner_health ORDER BY 1",
            &[],
        )
        .await?;
    for r in &partners {
        lines.push(format!(
            "partner {}: allowance {:.2}, send rate {} ({}), paused for {} s, next slot in {} s",
            r.get::<_, String>(0),
            r.get::<_, f64>(1),
            r.get::<_, Option<f64>>(2).map_or_else(|| "-".into(), |v| format!("{v:.1}/s")),
            if r.get::<_, bool>(3) { "learned" } else { "slow start" },
            r.get::<_, Option<i64>>(4).unwrap_or(0),
            r.get::<_, Option<i64>>(5).unwrap_or(0),
        ));
    }
    Ok(lines)
}

fn describe(counts: &FaultCounts) -> String {
    counts.iter().map(|(k, v)| format!("{k} {v}")).collect::<Vec<_>>().join(", ")
}

fn print_table(table: &[(u32, FaultCounts, Figures, Duration)]) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(
        out,
        "| round | faults | clicks | delivered | dead | pending | stranded | duplicates | over cap | over rate | missing events | seconds |"
    );
    let _ = writeln!(out, "|---|---|---|---|---|---|---|---|---|---|---|---|");
    for (round, faults, f, took) in table {
        let _ = writeln!(
            out,
            "| {round} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} |",
            faults.values().sum::<u32>(),
            f.accepted,
            f.delivered,
            f.dead,
            f.pending,
            f.stranded,
            f.duplicates,
            f.over_cap,
            f.over_rate,
            f.missing_events,
            took.as_secs_f64()
        );
    }
}

fn summary_json(
    seed: u64,
    table: &[(u32, FaultCounts, Figures, Duration)],
    injected: &FaultCounts,
    passed: bool,
) -> String {
    let last = table.last().map(|t| t.2.clone()).unwrap_or_default();
    serde_json::json!({
        "seed": seed,
        "rounds": table.len(),
        "passed": passed,
        "faults": injected,
        "clicks": last.accepted,
        "delivered": last.delivered,
        "dead": last.dead,
        "stranded": last.stranded,
        "duplicates": last.duplicates,
        "over_cap": last.over_cap,
        "over_rate": last.over_rate,
        "missing_events": last.missing_events,
    })
    .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_are_split_around_the_name() {
        assert_eq!(
            url_parts("postgres://u@127.0.0.1:5432/clickpacer?sslmode=disable").unwrap(),
            ("postgres://u@127.0.0.1:5432".into(), "clickpacer".into(), "?sslmode=disable".into())
        );
        assert_eq!(url_parts("postgres://h").unwrap(), ("postgres://h".into(), String::new(), String::new()));
    }

    #[test]
    fn every_fault_has_a_name_of_its_own() {
        let names: std::collections::HashSet<&str> = FaultKind::ALL.iter().map(|k| k.name()).collect();
        assert_eq!(names.len(), FaultKind::ALL.len());
        assert_eq!(FaultKind::running().len(), FaultKind::ALL.len() - 2);
    }
}
