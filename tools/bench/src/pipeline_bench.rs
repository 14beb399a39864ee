//! Pipeline benchmark: the local runtime exactly as `scripts/demo run --fast` runs it (the `clickpacer-local`
//! binary the demo builds, in its own process, with its slicer, pacer every 5 s, bridge, API and partner
//! simulator, against the same PostgreSQL and moto), on a database and resource names of its own. One CSV file of
//! `--clicks` clicks (default 1,000,000) is put into the bucket for an ASAP campaign (batches of
//! `--batch-size`, default 100, the API's default) on the simulator's healthy partner (no rate, no latency), and
//! the run is watched from PostgreSQL every half second (the statistics rollups, which cost next to nothing to
//! read) until every click is delivered and its events have left
//! the outbox for the event log, or `--timeout` seconds (default 1,200) pass.
//!
//! Reported: seconds from the put to the upload's end (`seconds_to_ingest`), to the first and to the last
//! delivery, end-to-end clicks/s (delivered / seconds to the last delivery, or to the timeout), CPU seconds and
//! peak RSS of each process (the runner, which holds the simulator too; the whole PostgreSQL server; moto). Then,
//! in the same run, the bridge's standalone deliveries/s (`scripts/bench bridge`'s first measurement, 20,000
//! clicks, its best invocation count) for `pipeline_ratio` = end-to-end clicks/s / standalone clicks/s.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clickpacer::aws::s3::S3Objects;
use clickpacer::domain::{Campaign, CampaignId, PartnerId};
use clickpacer::postgres::campaigns;
use clickpacer::testing::{TestDb, unique_suffix};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::bridge_bench::{proc_cpu, processes_matching};
use crate::peak_rss_of;

const CAMPAIGN: &str = "pipeline-asap";

/// The runner the demo runs (`cargo build -p local`, a debug build), built first when this runs under cargo.
async fn runner_binary() -> anyhow::Result<PathBuf> {
    let target = std::env::current_exe()?.parent().and_then(|d| d.parent()).map(PathBuf::from).context("target dir")?;
    if let Ok(cargo) = std::env::var("CARGO") {
        let status = tokio::process::Command::new(cargo).args(["build", "-q", "-p", "local"]).status().await?;
        anyhow::ensure!(status.success(), "cargo build -p local failed");
    }
    let binary = target.join("debug").join("clickpacer-local");
    anyhow::ensure!(binary.exists(), "{} is missing: cargo build -p local", binary.display());
    Ok(binary)
}

fn arg<T: std::str::FromStr>(args: &[String], name: &str, default: T) -> anyhow::Result<T> {
    match args.iter().position(|a| a == name) {
        Some(i) => args
            .get(i + 1)
            .map(|v| v.replace('_', ""))
            .and_then(|v| v.parse().ok())
            .with_context(|| format!("{name} needs a number")),
        None => Ok(default),
    }
}

/// CPU seconds and peak RSS of the processes a run involves.
#[derive(Debug, Clone, Copy, Default)]
struct Usage {
    runner: f64,
    postgres: f64,
    moto: f64,
}

impl Usage {
    fn now(runner: u32) -> Self {
        Self {
            runner: proc_cpu(runner, false),
            postgres: processes_matching(|comm, _| comm == "postgres").into_iter().map(|p| proc_cpu(p, true)).sum(),
            moto: processes_matching(|_, cmdline| cmdline.contains("moto_server"))
                .into_iter()
                .map(|p| proc_cpu(p, false))
                .sum(),
        }
    }
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

pub async fn run(args: &[String]) -> anyhow::Result<()> {
    let clicks: u64 = arg(args, "--clicks", 1_000_000)?;
    let batch_size: u32 = arg(args, "--batch-size", 100)?;
    let timeout = Duration::from_secs(arg(args, "--timeout", 1_200)?);
    let runner = runner_binary().await?;
    let db = TestDb::new().await;
    let prefix = format!("bp{}", &unique_suffix()[..8]);
    eprintln!("pipeline: {clicks} clicks, one CSV file, ASAP campaign, batches of {batch_size}, healthy partner");

    let mut child = tokio::process::Command::new(&runner)
        .args(["run", "--fast", "--names-prefix", &prefix, "--api-port", "0"])
        .env("DATABASE_URL", &db.config.url)
        .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into()))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {}", runner.display()))?;
    let runner_pid = child.id().context("runner pid")?;
    let mut lines = BufReader::new(child.stdout.take().context("runner stdout")?).lines();
    // The runner is up once it prints where the partners are (after its migrations, resources and seeds).
    let started = Instant::now();
    loop {
        let Some(line) = tokio::time::timeout(Duration::from_secs(120), lines.next_line()).await?? else {
            bail!("the runner exited before it was up");
        };
        if line.starts_with("partners:") {
            break;
        }
    }
    // Keep reading its output so it never blocks on a full pipe.
    tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
    eprintln!("  runner up in {:.1} s (pid {runner_pid})", started.elapsed().as_secs_f64());

    let client = db.client().await;
    let mut campaign = Campaign::unlimited(CampaignId::parse(CAMPAIGN)?, PartnerId::parse("healthy")?);
    campaign.batch_size = batch_size;
    campaigns::upsert(&**client, &campaign).await?;

    let dir = std::env::temp_dir().join(format!("clickpacer-{prefix}"));
    std::fs::create_dir_all(&dir)?;
    let file = dir.join("clicks.csv");
    crate::slicer_bench::write_csv(&file, clicks)?;
    let body = std::fs::read(&file)?;
    let size_mib = body.len() as f64 / 1_048_576.0;
    let objects = S3Objects::new(clickpacer::aws::s3_client(&clickpacer::aws::load_sdk_config().await));
    let bucket = format!("{prefix}-uploads");

    let before = Usage::now(runner_pid);
    let t0 = Instant::now();
    objects.put(&bucket, &format!("incoming/{CAMPAIGN}/clicks.csv"), body, "text/csv").await?;
    let put_s = t0.elapsed().as_secs_f64();
    eprintln!("  put {size_mib:.1} MiB in {put_s:.1} s");
    let (mut ingested, mut first, mut last) = (None, None, None);
    let mut confirmed = None;
    let mut report_at = Duration::ZERO;
    let mut delivered = 0_i64;
    while t0.elapsed() < timeout {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let row = client
            .query_one(
                // From the statistics rollups: counting delivery_results every half second would cost
                // PostgreSQL more than the pipeline does.
                "SELECT (SELECT status FROM uploads ORDER BY upload_id LIMIT 1),
                        (SELECT coalesce(sum(delivered), 0)::bigint FROM delivery_stats_hour),
                        (SELECT count(*) FROM event_outbox),
                        (SELECT coalesce(sum(released), 0)::bigint FROM delivery_stats_hour)",
                &[],
            )
            .await?;
        let status: Option<String> = row.get(0);
        delivered = row.get(1);
        let outbox: i64 = row.get(2);
        let released: i64 = row.get(3);
        let at = t0.elapsed();
        if ingested.is_none() && status.as_deref().is_some_and(|s| s != "processing") {
            ingested = Some(at);
        }
        if first.is_none() && delivered > 0 {
            first = Some(at);
        }
        if last.is_none() && delivered as u64 >= clicks {
            last = Some(at);
        }
        if last.is_some() && outbox == 0 {
            confirmed = Some(at);
            break;
        }
        if at >= report_at {
            eprintln!(
                "  {:>5.0} s: upload {}, released {released}, delivered {delivered}, events waiting {outbox}",
                at.as_secs_f64(),
                status.as_deref().unwrap_or("not yet seen")
            );
            report_at = at + Duration::from_secs(15);
        }
    }
    let elapsed = last.unwrap_or(t0.elapsed()).as_secs_f64();
    let usage = Usage::now(runner_pid);
    let runner_rss = peak_rss_of(runner_pid);
    let moto_rss: f64 =
        processes_matching(|_, cmdline| cmdline.contains("moto_server")).into_iter().map(peak_rss_of).sum();
    let _ = child.start_kill();
    let _ = child.wait().await;
    let _ = std::fs::remove_dir_all(&dir);
    let clicks_per_s = delivered as f64 / elapsed;
    let cpu = json!({
        "runner": round(usage.runner - before.runner),
        "postgres": round(usage.postgres - before.postgres),
        "moto": round(usage.moto - before.moto),
    });
    eprintln!(
        "  ingested in {}, first delivery at {}, last at {}, event log confirmed at {}",
        seconds(ingested),
        seconds(first),
        seconds(last),
        seconds(confirmed)
    );
    eprintln!("  {delivered} of {clicks} delivered: {clicks_per_s:.0} clicks/s end to end; CPU seconds {cpu}");

    eprintln!("standalone bridge, for the ratio (scripts/bench bridge --only throughput --clicks 20000):");
    let bridge = crate::bridge_bench::deliveries_per_s(&["--clicks".into(), "20000".into()]).await?;
    let ratio = clicks_per_s / bridge;
    eprintln!("  bridge alone {bridge:.0} clicks/s; pipeline_ratio {ratio:.3}");
    println!(
        "{}",
        json!({
            "clicks": clicks,
            "delivered": delivered,
            "batch_size": batch_size,
            "file_mib": round(size_mib),
            "seconds_to_ingest": ingested.map(|d| round(d.as_secs_f64())),
            "seconds_to_first_delivery": first.map(|d| round(d.as_secs_f64())),
            "seconds_to_last_delivery": last.map(|d| round(d.as_secs_f64())),
            "seconds_to_event_log_confirmed": confirmed.map(|d| round(d.as_secs_f64())),
            "clicks_per_s": round(clicks_per_s),
            "bridge_clicks_per_s": round(bridge),
            "pipeline_ratio": (ratio * 1000.0).round() / 1000.0,
            "cpu_seconds": cpu,
            "peak_rss_mib": {"runner": round(runner_rss), "moto": round(moto_rss)},
            "timed_out": last.is_none(),
        })
    );
    Ok(())
}

fn seconds(at: Option<Duration>) -> String {
    at.map_or("-".into(), |d| format!("{:.1} s", d.as_secs_f64()))
}
