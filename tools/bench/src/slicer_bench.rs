//! Slicer throughput: a generated click file in the local S3 (CSV, and with `--format parquet` the same rows
//! as Parquet too), ingested into PostgreSQL by the slicer's own handler; then, in the same run and database, a plain binary COPY of the same rows into a table of the same
//! shape as `clicks`: the practical limit for getting rows into PostgreSQL.

use std::io::Write;

use anyhow::Context;
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

/// The file formats the benchmark can generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    Csv,
    Parquet,
}

impl Format {
    pub fn parse(text: &str) -> anyhow::Result<Self> {
        match text {
            "csv" => Ok(Self::Csv),
            "parquet" => Ok(Self::Parquet),
            other => anyhow::bail!("unknown format {other:?}: use csv or parquet"),
        }
    }

    fn key(self) -> &'static str {
        match self {
            Self::Csv => "incoming/bench/clicks.csv",
            Self::Parquet => "incoming/bench/clicks.parquet",
        }
    }
}

/// Ingests `rows` generated clicks as CSV, and with `Format::Parquet` also as Parquet (other click ids, the same
/// values), in the same run, then a plain COPY of the same rows.
pub async fn run(rows: u64, format: Format) -> anyhow::Result<()> {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (objects, bucket) = aws.bucket().await;
    let formats: &[Format] = match format {
        Format::Csv => &[Format::Csv],
        Format::Parquet => &[Format::Csv, Format::Parquet],
    };
    let result = measure(rows, formats, &db, &objects, &bucket).await;
    // A run leaves hundreds of MiB behind in each service (the database, the objects): remove them.
    for format in formats {
        let _ = objects.client().delete_object().bucket(&bucket).key(format.key()).send().await;
    }
    db.pool.close();
    let admin = clickpacer::config::DatabaseConfig { url: std::env::var("DATABASE_URL")?, pool_size: 1 };
    let admin = clickpacer::postgres::build_pool(&admin)?;
    admin.get().await?.batch_execute(&format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", db.name)).await?;
    result
}

/// One format's figures.
struct Ingested {
    file_mib: f64,
    seconds: f64,
    rows_per_s: f64,
    peak_rss_mib: f64,
}

async fn measure(rows: u64, formats: &[Format], db: &TestDb, objects: &S3Objects, bucket: &str) -> anyhow::Result<()> {
    {
        let client = db.client().await;
        let partner = Partner::get(PartnerId::parse("bench")?, "https://partner.example/c?id={click_id}");
        partners::upsert(&**client, &partner).await?;
        let mut campaign = Campaign::unlimited(CampaignId::parse("bench")?, partner.partner_id);
        campaign.batch_size = 100;
        campaigns::upsert(&**client, &campaign).await?;
    }
    let settings = settings_from_env()?;
    eprintln!("slicer settings: {} rows a chunk, {} writers", settings.chunk_rows, settings.writers);
    let slicer = Slicer { pool: db.pool.clone(), objects: objects.clone(), settings };

    let mut figures = Vec::new();
    for &format in formats {
        figures.push((format, ingest(rows, format, &slicer, objects, bucket).await?));
    }

    let copy = plain_copy(db, rows).await?;
    let copy_rps = rows as f64 / copy.as_secs_f64();
    eprintln!("plain binary COPY: {rows} rows in {:.2} s = {copy_rps:.0} rows/s", copy.as_secs_f64());

    let round = |x: f64, places: i32| (x * 10f64.powi(places)).round() / 10f64.powi(places);
    let csv = &figures[0].1;
    let mut summary = json!({
        "benchmark": "slicer",
        "rows": rows,
        "file_mib": round(csv.file_mib, 1),
        "seconds": round(csv.seconds, 2),
        "rows_per_s": csv.rows_per_s.round(),
        "copy_rows_per_s": copy_rps.round(),
        "copy_ratio": round(csv.rows_per_s / copy_rps, 3),
        "peak_rss_mib": round(csv.peak_rss_mib, 1),
        "chunk_rows": slicer.settings.chunk_rows,
        "writers": slicer.settings.writers,
    });
    if let Some((_, parquet)) = figures.iter().find(|(f, _)| *f == Format::Parquet) {
        summary["parquet_file_mib"] = json!(round(parquet.file_mib, 1));
        summary["parquet_seconds"] = json!(round(parquet.seconds, 2));
        summary["parquet_rows_per_s"] = json!(parquet.rows_per_s.round());
        summary["parquet_peak_rss_mib"] = json!(round(parquet.peak_rss_mib, 1));
        summary["parquet_to_csv_ratio"] = json!(round(parquet.rows_per_s / csv.rows_per_s, 3));
    }
    println!("{summary}");
    Ok(())
}

/// Generates the file on disk, streams it to S3 (so its bytes never sit in this process's memory), and has the
/// slicer's own handler ingest it.
async fn ingest(
    rows: u64,
    format: Format,
    slicer: &Slicer,
    objects: &S3Objects,
    bucket: &str,
) -> anyhow::Result<Ingested> {
    let path = std::env::temp_dir().join(format!("clickpacer-bench-{}-{format:?}", std::process::id()));
    match format {
        Format::Csv => write_csv(&path, rows)?,
        Format::Parquet => write_parquet(&path, rows)?,
    }
    let size = std::fs::metadata(&path)?.len();
    let key = format.key();
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
    let file_mib = size as f64 / 1048576.0;
    eprintln!("generated {rows} rows as {format:?}, {file_mib:.1} MiB, in the local S3");

    let event: S3Event = serde_json::from_value(json!({"Records": [{
        "eventName": "ObjectCreated:Put", "eventTime": "2026-11-28T10:00:00Z",
        "userIdentity": {}, "requestParameters": {}, "responseElements": {},
        "s3": {"bucket": {"name": bucket}, "object": {"key": key, "size": size, "eTag": info.version}}
    }]}))?;
    reset_peak_rss();
    let started = Instant::now();
    let reports = slicer::handle_event(slicer, event, &Unlimited).await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let peak_rss_mib = peak_rss_mib();
    let UploadOutcome::Completed { counts, .. } = &reports[0].outcome else {
        anyhow::bail!("slicer did not complete: {:?}", reports[0].outcome)
    };
    anyhow::ensure!(counts.accepted == rows, "accepted {} of {rows}", counts.accepted);
    let rows_per_s = rows as f64 / seconds;
    eprintln!(
        "slicer, {format:?}: {rows} rows in {seconds:.2} s = {rows_per_s:.0} rows/s, peak RSS {peak_rss_mib:.1} MiB"
    );
    Ok(Ingested { file_mib, seconds, rows_per_s, peak_rss_mib })
}

pub(crate) fn write_csv(path: &std::path::Path, rows: u64) -> anyhow::Result<()> {
    let mut file = std::io::BufWriter::new(std::fs::File::create(path)?);
    file.write_all(b"click_id,clicked_at,ip,user_agent,landing_url,sub_id,country\n")?;
    for i in 0..rows {
        file.write_all(row(i).as_bytes())?;
    }
    file.flush()?;
    Ok(())
}

/// The same values as [`row`] in Parquet, as a warehouse unload writes it: snappy pages, a timestamp column, row
/// groups of 100,000 rows; click ids `pq-…` so they do not repeat the CSV's.
fn write_parquet(path: &std::path::Path, rows: u64) -> anyhow::Result<()> {
    use parquet::data_type::{ByteArray, ByteArrayType, Int64Type};
    use parquet::file::properties::WriterProperties;
    use parquet::file::writer::SerializedFileWriter;

    let schema = std::sync::Arc::new(parquet::schema::parser::parse_message_type(
        "message clicks {
            required binary click_id (STRING);
            required int64 clicked_at (TIMESTAMP(MILLIS, true));
            required binary ip (STRING);
            required binary user_agent (STRING);
            required binary landing_url (STRING);
            required binary sub_id (STRING);
            required binary country (STRING);
        }",
    )?);
    let properties =
        std::sync::Arc::new(WriterProperties::builder().set_compression(parquet::basic::Compression::SNAPPY).build());
    let file = std::fs::File::create(path)?;
    let mut writer = SerializedFileWriter::new(file, schema, properties)?;
    const GROUP: u64 = 100_000;
    for start in (0..rows).step_by(GROUP as usize) {
        let range = start..(start + GROUP).min(rows);
        let mut group = writer.next_row_group()?;
        let texts: [Box<dyn Fn(u64) -> String>; 6] = [
            Box::new(|i| format!("pq-{i:09}")),
            Box::new(|i| format!("10.{}.{}.{}", i >> 16 & 255, i >> 8 & 255, i & 255)),
            Box::new(|_| "Mozilla/5.0 (X11; Linux x86_64) Chrome/126.0".to_owned()),
            Box::new(|i| format!("https://shop.example/p/{}", i % 5000)),
            Box::new(|i| format!("sub-{}", i % 97)),
            Box::new(|_| "DE".to_owned()),
        ];
        for (column_index, text) in texts.iter().enumerate() {
            if column_index == 1 {
                let times: Vec<i64> = range.clone().map(|i| (1_764_324_000 + (i / 100) as i64) * 1000).collect();
                let mut column = group.next_column()?.context("the clicked_at column")?;
                column.typed::<Int64Type>().write_batch(&times, None, None)?;
                column.close()?;
            }
            let values: Vec<ByteArray> = range.clone().map(|i| ByteArray::from(text(i).into_bytes())).collect();
            let mut column = group.next_column()?.context("a text column")?;
            column.typed::<ByteArrayType>().write_batch(&values, None, None)?;
            column.close()?;
        }
        group.close()?;
    }
    writer.close()?;
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
