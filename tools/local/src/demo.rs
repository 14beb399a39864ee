//! The demo: three partners on the local simulator (healthy, slow, throttling), campaigns with different
//! rules, and realistic click files (a few bad rows and repeated click ids included) dropped into the bucket.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use chrono::{Duration, Timelike, Utc};
use clickpacer::aws::s3::S3Objects;
use clickpacer::aws::sqs::{OutgoingMessage, SqsQueue};
use clickpacer::domain::{Campaign, CampaignId, HourlyWeights, Micros, PacingMode, Partner, PartnerId};
use clickpacer::postgres::{PgPool, campaigns, partners};
use partner_sim::{Behaviour, Running};

/// Partners: name, simulator behaviour, and our configured rate (the throttling one hides a lower limit).
pub async fn seed_partners(pool: &PgPool, sim: &Running) -> anyhow::Result<()> {
    let client = pool.get().await?;
    for (id, behaviour, rate, concurrency) in [
        ("healthy", Behaviour::default(), None, 16),
        ("slow", Behaviour { latency_ms: 250, ..Behaviour::default() }, None, 8),
        ("throttling", Behaviour { rate_limit: Some(40), ..Behaviour::default() }, Some(60), 8),
    ] {
        sim.sim.set_behaviour(id, behaviour).map_err(anyhow::Error::msg)?;
        let mut p = Partner::get(
            PartnerId::parse(id)?,
            format!("{}/click?id={{click_id}}&campaign={{campaign_id}}&ip={{ip}}&sub={{sub_id}}", sim.partner_url(id)),
        );
        p.rate_per_second = rate;
        p.max_concurrency = concurrency;
        p.retry_base_ms = 500;
        p.retry_max_ms = 30_000;
        partners::upsert(&**client, &p).await?;
    }
    Ok(())
}

/// Campaigns: one per pacing story. Returns their ids.
pub async fn seed_campaigns(pool: &PgPool, clicks_per_file: u32) -> anyhow::Result<Vec<CampaignId>> {
    let client = pool.get().await?;
    let mut ids = Vec::new();
    let partner = |p: &str| PartnerId::parse(p);
    let mut asap = Campaign::unlimited(CampaignId::parse("spring-asap")?, partner("healthy")?);
    asap.batch_size = 50;

    let mut even = Campaign::unlimited(CampaignId::parse("summer-even")?, partner("healthy")?);
    even.pacing = PacingMode::Even;
    even.time_zone = chrono_tz::America::New_York;
    even.daily_cap = Some(u64::from(clicks_per_file) * 2);
    even.batch_size = 10;

    let mut capped = Campaign::unlimited(CampaignId::parse("autumn-capped")?, partner("slow")?);
    capped.daily_cap = Some(u64::from(clicks_per_file) / 2);
    capped.time_zone = chrono_tz::Europe::Berlin;
    capped.batch_size = 20;

    let mut budget = Campaign::unlimited(CampaignId::parse("winter-budget")?, partner("throttling")?);
    budget.cost_per_click = Micros(10_000);
    budget.daily_budget = Some(Micros(i64::from(clicks_per_file) * 6 / 10 * 10_000));
    budget.batch_size = 10;
    budget.max_per_second = Some(50);

    // Dayparting: only the local hour two hours from now is open, so the demo shows clicks waiting for it.
    let mut daypart = Campaign::unlimited(CampaignId::parse("night-daypart")?, partner("healthy")?);
    daypart.time_zone = chrono_tz::Asia::Tokyo;
    let open = (Utc::now().with_timezone(&daypart.time_zone).hour() as usize + 2) % 24;
    let mut weights = [0.0; 24];
    weights[open] = 1.0;
    daypart.pacing = PacingMode::HourlyCurve(HourlyWeights::parse(&weights).map_err(anyhow::Error::msg)?);
    daypart.batch_size = 25;

    for c in [asap, even, capped, budget, daypart] {
        campaigns::upsert(&**client, &c).await?;
        ids.push(c.campaign_id);
    }
    Ok(ids)
}

/// The demo's click files, generated once into `dir` (deterministic, so a restarted demo puts the same bytes and
/// the slicer resumes the same uploads). Returns `(key, path)` pairs.
pub fn generate_files(
    dir: &Path,
    campaigns: &[CampaignId],
    clicks: u32,
) -> anyhow::Result<Vec<(String, std::path::PathBuf)>> {
    std::fs::create_dir_all(dir)?;
    let mut files = Vec::new();
    let started = Utc::now() - Duration::hours(1);
    for (n, campaign) in campaigns.iter().enumerate() {
        let name = if n == 0 { "Clicks März 2026.csv".to_owned() } else { format!("clicks-{n}.csv") };
        let key = format!("incoming/{campaign}/{name}");
        let path = dir.join(format!("{campaign}-{n}.csv"));
        if !path.exists() {
            let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
            writeln!(file, "click_id,clicked_at,ip,user_agent,landing_url,sub_id,country")?;
            for i in 0..clicks {
                let at = (started + Duration::milliseconds(i64::from(i) * 997)).to_rfc3339();
                let ip = format!("203.0.{}.{}", i / 250 % 250, i % 250 + 1);
                let id = if i % 150 == 149 { format!("{campaign}-{}", i - 7) } else { format!("{campaign}-{i}") };
                let row = match i % 97 {
                    13 => format!(",{at},{ip},Mozilla/5.0,https://shop.example/p/{i},s{},DE", i % 7),
                    29 => format!("{id},yesterday,{ip},Mozilla/5.0,https://shop.example/p/{i},s{},DE", i % 7),
                    51 => format!("{id},{at},999.1.1.1,Mozilla/5.0,https://shop.example/p/{i},s{},DE", i % 7),
                    77 => format!("{id},{at},{ip}"),
                    _ => format!("{id},{at},{ip},Mozilla/5.0 (X11; Linux),https://shop.example/p/{i},s{},DE", i % 7),
                };
                writeln!(file, "{row}")?;
            }
            file.flush()?;
        }
        files.push((key, path));
    }
    // One gzip NDJSON file, another format a data team may send.
    let key = format!("incoming/{}/late-clicks.ndjson.gz", campaigns[0]);
    let path = dir.join("late-clicks.ndjson.gz");
    if !path.exists() {
        let mut gz = flate2::write::GzEncoder::new(std::fs::File::create(&path)?, flate2::Compression::default());
        for i in 0..clicks / 4 {
            let line = serde_json::json!({
                "click_id": format!("late-{i}"), "ts": started.timestamp() + i64::from(i),
                "ip": "198.51.100.7", "ua": "Mozilla/5.0", "sub": "late", "channel": "email"
            });
            writeln!(gz, "{line}")?;
        }
        gz.finish()?;
    }
    files.push((key, path));
    // A tool's export: a pretty-printed JSON array, naive SQL-style times (read as UTC), a nested attribute,
    // zstd-compressed.
    let key = format!("incoming/{}/crm-export.json.zst", campaigns[0]);
    let path = dir.join("crm-export.json.zst");
    if !path.exists() {
        let rows: Vec<serde_json::Value> = (0..clicks / 5)
            .map(|i| {
                let at = (started + Duration::seconds(i64::from(i))).format("%Y-%m-%d %H:%M:%S").to_string();
                serde_json::json!({
                    "click_id": format!("crm-{i}"), "clicked_at": at, "ip": "192.0.2.10",
                    "extra": {"segment": ["returning", "mobile"], "score": i % 10}
                })
            })
            .collect();
        let mut zst = zstd::stream::write::Encoder::new(std::fs::File::create(&path)?, 3)?;
        serde_json::to_writer_pretty(&mut zst, &rows)?;
        zst.finish()?;
    }
    files.push((key, path));
    Ok(files)
}

/// Puts each file unless the object is already there. For one that is (a restarted demo), its notification is
/// sent again instead: the slicer finishes the upload if it was cut short and ignores it if it was done.
pub async fn upload(
    objects: &S3Objects,
    upload_events: &SqsQueue,
    bucket: &str,
    files: &[(String, std::path::PathBuf)],
) -> anyhow::Result<usize> {
    let mut put = 0;
    for (key, path) in files {
        if let Ok(head) = objects.client().head_object().bucket(bucket).key(key).send().await {
            let event = crate::s3_event_json(bucket, key, head.e_tag().unwrap_or_default().trim_matches('"'));
            upload_events
                .send_batch(&[OutgoingMessage { id: "again".into(), body: event.to_string(), delay_seconds: 0 }])
                .await?;
            continue;
        }
        let body = aws_sdk_s3::primitives::ByteStream::from_path(path).await.context("reading a demo file")?;
        objects.client().put_object().bucket(bucket).key(key).body(body).send().await.context("putting a demo file")?;
        put += 1;
    }
    Ok(put)
}
