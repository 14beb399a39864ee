//! Slicer throughput: a generated click file in the local S3, ingested into PostgreSQL by the slicer's own
//! handler; then, in the same run and database, a plain binary COPY of the same rows into a table of the same
//! shape as `clicks`: the practical limit for getting rows into PostgreSQL.

use std::io::Write;
use std::time::{Duration, Instant};

use aws_lambda_events::event::s3::S3Event;
use clickpacer::aws::s3::S3Objects;
use clickpacer::domain::{Campaign, CampaignId, Partner, PartnerId};
use clickpacer::invocation::Unlimited;
use clickpacer::postgres::{campaigns, partners};
use clickpacer::testing::{TestAws, TestDb};
use serde_json::json;
use slicer::{Slicer, SlicerSettings, UploadOutcome};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;

use crate::{peak_rss_mib, reset_peak_rss};

fn row(i: u64) -> String {
    format!(
        "bench-{i:09},{},10.{}.{}.{},Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0,https://shop.example/p/{},sub-{},DE\n",
        1_764_324_000 + i / 100,
        i >> 16 & 255,
        i >> 8 & 255,
        i & 255,
        i % 5000,
        i % 97
    )
}

pub async fn run(rows: u64) -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (objects, bucket) = aws.bucket().await;
    let result = measure(rows, &db, &objects, &bucket).await;
    // A run leaves hundreds of MiB behind in each service (the database, the object): remove them.
    let _ = objects.client().delete_object().bucket(&bucket).key(KEY).send().await;
    db.pool.close();
    let admin = clickpacer::config::DatabaseConfig { url: std::env::var("DATABASE_URL")?, pool_size: 1 };
    let admin = clickpacer::postgres::build_pool(&admin)?;
    admin.get().await?.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name)).await?;
    result
}

const KEY: &str = "incoming/bench/clicks.csv";

async fn measure(rows: u64, db: &TestDb, objects: &S3Objects, bucket: &str) -> anyhow::Result<()> {
    {
        let client = db.client().await;
        let partner = Partner::get(PartnerId::parse("bench")?, "https://partner.example/c?id={click_id}");
        partners::upsert(&**client, &partner).await?;
        let mut campaign = Campaign::unlimited(CampaignId::parse("bench")?, partner.partner_id);
        campaign.batch_size = 100;
        campaigns::upsert(&**client, &campaign).await?;
    }

    // The file is generated on disk and streamed to S3, so its bytes never sit in this process's memory.
    let path = std::env::temp_dir().join(format!("clickpacer-bench-{}.csv", std::process::id()));
    {
        let mut file = std::io::BufWriter::new(std::fs::File::create(&path)?);
        file.write_all(b"click_id,clicked_at,ip,user_agent,landing_url,sub_id,country\n")?;
        for i in 0..rows {
            file.write_all(row(i).as_bytes())?;
        }
        file.flush()?;
    }
    let size = std::fs::metadata(&path)?.len();
    let key = KEY;
    objects
        .client()
        .put_object()
        .bucket(bucket)
        .key(key)
        .body(aws_sdk_s3::primitives::ByteStream::from_path(&path).await?)
        .send()
        .await?;
    std::fs::remove_file(&path)?;
    let (info, _) = objects.open(bucket, key).await?;
    eprintln!("generated {rows} rows, {:.1} MiB, in the local S3", size as f64 / 1048576.0);

    let settings = settings_from_env()?;
    eprintln!("slicer settings: {} rows a chunk, {} writers", settings.chunk_rows, settings.writers);
    let slicer = Slicer { pool: db.pool.clone(), objects: objects.clone(), settings };
    let event: S3Event = serde_json::from_value(json!({"Records": [{
        "eventName": "ObjectCreated:Put", "eventTime": "2026-11-28T10:00:00Z",
        "userIdentity": {}, "requestParameters": {}, "responseElements": {},
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": info.version}}
    }]}))?;

    reset_peak_rss();
    let started = Instant::now();
    let reports = slicer::handle_event(&slicer, event, &Unlimited).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let ours = started.elapsed();
    let peak = peak_rss_mib();
    let UploadOutcome::Completed { counts, .. } = &reports[0].outcome else {
        anyhow::bail!("slicer did not complete: {:?}", reports[0].outcome)
    };
    anyhow::ensure!(counts.accepted == rows, "accepted {} of {rows}", counts.accepted);
    let ours_rps = rows as f64 / ours.as_secs_f64();
    eprintln!("slicer: {rows} rows in {:.2} s = {ours_rps:.0} rows/s, peak RSS {peak:.1} MiB", ours.as_secs_f64());

    let copy = plain_copy(db, rows).await?;
    let copy_rps = rows as f64 / copy.as_secs_f64();
    eprintln!("plain binary COPY: {rows} rows in {:.2} s = {copy_rps:.0} rows/s", copy.as_secs_f64());

    println!(
        "{}",
        json!({
            "benchmark": "slicer",
            "rows": rows,
            "file_mib": (size as f64 / 1048576.0 * 10.0).round() / 10.0,
            "seconds": (ours.as_secs_f64() * 100.0).round() / 100.0,
            "rows_per_s": ours_rps.round(),
            "copy_rows_per_s": copy_rps.round(),
            "copy_ratio": (ours_rps / copy_rps * 1000.0).round() / 1000.0,
            "peak_rss_mib": (peak * 10.0).round() / 10.0,
            "chunk_rows": slicer.settings.chunk_rows,
            "writers": slicer.settings.writers,
        })
    );
    Ok(())
}

/// The slicer's own defaults, unless `SLICER_CHUNK_ROWS` or `SLICER_WRITERS` say otherwise (for comparing).
fn settings_from_env() -> anyhow::Result<SlicerSettings> {
    let mut settings = SlicerSettings::default();
    if let Ok(rows) = std::env::var("SLICER_CHUNK_ROWS") {
        settings.chunk_rows = rows.parse()?;
    }
    if let Ok(writers) = std::env::var("SLICER_WRITERS") {
        settings.writers = writers.parse()?;
    }
    Ok(settings)
}

/// The same rows, already parsed, binary-COPYed into a table shaped like `clicks`: the same columns, defaults,
/// checks and indexes, partitioned by ingestion month the same way.
async fn plain_copy(db: &TestDb, rows: u64) -> anyhow::Result<Duration> {
    let client = db.client().await;
    client
        .batch_execute(
            "CREATE TABLE bench_copy (LIKE clicks INCLUDING DEFAULTS INCLUDING CONSTRAINTS INCLUDING INDEXES)
                 PARTITION BY RANGE (ingested_at);
             CREATE TABLE bench_copy_default PARTITION OF bench_copy DEFAULT;
             CREATE TABLE bench_copy_month PARTITION OF bench_copy
                 FOR VALUES FROM (date_trunc('month', now())) TO (date_trunc('month', now()) + interval '1 month');",
        )
        .await?;
    let started = Instant::now();
    let sink = client
        .copy_in(
            "COPY bench_copy (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, ip, user_agent,
                              landing_url, sub_id, attributes) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::INT8,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::INET,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    let mut writer = std::pin::pin!(writer);
    let attributes = json!({"country": "DE"});
    for i in 0..rows {
        let clicked_at = chrono::DateTime::from_timestamp(1_764_324_000 + (i / 100) as i64, 0).unwrap_or_default();
        let ip = std::net::IpAddr::from([10, (i >> 16 & 255) as u8, (i >> 8 & 255) as u8, (i & 255) as u8]);
        writer
            .as_mut()
            .write(&[
                &"bench",
                &format!("bench-{i:09}"),
                &1i64,
                &(i as i64 + 1),
                &((i / 100) as i64 + 1),
                &clicked_at,
                &ip,
                &"Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0",
                &format!("https://shop.example/p/{}", i % 5000),
                &format!("sub-{}", i % 97),
                &attributes,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(started.elapsed())
}
