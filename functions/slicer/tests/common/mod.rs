//! What the slicer's test files share: a database and a bucket with three campaigns, S3 events shaped like
//! AWS's, and readers of the outcome and the rejects report.
// Each test file uses a part of these.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use aws_lambda_events::event::s3::S3Event;
use clickpacer::aws::s3::S3Objects;
use clickpacer::domain::{Campaign, CampaignId, CampaignStatus, Partner, PartnerId};
use clickpacer::ingest::IngestLimits;
use clickpacer::invocation::Unlimited;
use clickpacer::postgres::{campaigns, partners};
use clickpacer::testing::{TestAws, TestDb};
use slicer::{Slicer, SlicerSettings, TimeBudget, UploadOutcome};

pub struct World {
    pub db: TestDb,
    pub slicer: Slicer,
    pub objects: S3Objects,
    pub bucket: String,
}

pub async fn world(chunk_rows: usize) -> World {
    world_with(SlicerSettings { chunk_rows, reserve: Duration::from_secs(1), ..SlicerSettings::default() }).await
}

pub async fn world_with(settings: SlicerSettings) -> World {
    let db = TestDb::new().await;
    let aws = TestAws::new().await;
    let (objects, bucket) = aws.bucket().await;
    {
        let client = db.client().await;
        let partner = Partner::get(PartnerId::parse("acme").unwrap(), "https://acme.example/c?id={click_id}");
        partners::upsert(&**client, &partner).await.unwrap();
        for (id, status, batch_size) in [
            ("spring", CampaignStatus::Active, 10),
            ("summer", CampaignStatus::Paused, 3),
            ("old", CampaignStatus::Archived, 10),
        ] {
            let mut c = Campaign::unlimited(CampaignId::parse(id).unwrap(), partner.partner_id.clone());
            c.status = status;
            c.batch_size = batch_size;
            campaigns::upsert(&**client, &c).await.unwrap();
        }
    }
    let slicer = Slicer { pool: db.pool.clone(), objects: objects.clone(), settings };
    World { db, slicer, objects, bucket }
}

/// S3 encodes keys in notifications form-style: `+` for a space, `%XX` for reserved and non-ASCII bytes.
pub fn s3_encode(key: &str) -> String {
    key.bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' => (b as char).to_string(),
            b' ' => "+".into(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn event(records: &[(&str, &str, &str)]) -> S3Event {
    let records: Vec<_> = records
        .iter()
        .map(|(bucket, key, etag)| {
            serde_json::json!({
                "eventVersion": "2.1", "eventSource": "aws:s3", "awsRegion": "us-east-1",
                "eventTime": "2026-11-28T10:00:00.000Z", "eventName": "ObjectCreated:Put",
                "userIdentity": {"principalId": "AWS:AIDAEXAMPLE"},
                "requestParameters": {"sourceIPAddress": "127.0.0.1"},
                "responseElements": {"x-amz-request-id": "C3D13FE58DE4C810", "x-amz-id-2": "FMyUVURIY8/IgAtTv8xRjskZQpcIZ9KG4V5Wp6S7S/JRWeUWerMUE5JgHvANOjpD"},
                "s3": {
                    "s3SchemaVersion": "1.0", "configurationId": "incoming-clicks",
                    "bucket": {"name": bucket, "ownerIdentity": {"principalId": "A3NL1KOZZKExample"}, "arn": format!("arn:aws:s3:::{bucket}")},
                    "object": {"key": s3_encode(key), "size": 1024, "eTag": etag, "sequencer": "0055AED6DCD90281E5"}
                }
            })
        })
        .collect();
    serde_json::from_value(serde_json::json!({ "Records": records })).unwrap()
}

impl World {
    pub async fn put(&self, key: &str, body: impl Into<Vec<u8>>) -> String {
        self.objects.put(&self.bucket, key, body.into(), "text/plain").await.unwrap();
        let (info, _) = self.objects.open(&self.bucket, key).await.unwrap();
        info.version
    }

    pub async fn slice(&self, key: &str, etag: &str) -> UploadOutcome {
        let reports =
            slicer::handle_event(&self.slicer, event(&[(&self.bucket, key, etag)]), &Unlimited).await.unwrap();
        assert_eq!(reports.len(), 1);
        reports.into_iter().next().unwrap().outcome
    }

    pub async fn scalar(&self, sql: &str) -> i64 {
        self.db.client().await.query_one(sql, &[]).await.unwrap().get(0)
    }

    /// Clicks stored, clicks counted in batches, and batches: these must always agree.
    pub async fn stored(&self) -> (i64, i64, i64) {
        let clicks = self.scalar("SELECT count(*) FROM clicks").await;
        let in_batches = self.scalar("SELECT COALESCE(sum(click_count), 0)::bigint FROM batches").await;
        let batches = self.scalar("SELECT count(*) FROM batches").await;
        assert_eq!(clicks, in_batches, "every stored click is in exactly one batch");
        let orphans = self
            .scalar("SELECT count(*) FROM clicks c LEFT JOIN batches b USING (batch_id) WHERE b.batch_id IS NULL")
            .await;
        assert_eq!(orphans, 0);
        (clicks, in_batches, batches)
    }
}

pub fn counts(outcome: &UploadOutcome) -> (u64, u64, u64, u64) {
    match outcome {
        UploadOutcome::Completed { counts, .. }
        | UploadOutcome::Failed { counts, .. }
        | UploadOutcome::Suspended { counts, .. } => (counts.rows, counts.accepted, counts.rejected, counts.duplicate),
        other => panic!("no counts in {other:?}"),
    }
}

pub fn csv_rows(range: std::ops::Range<u32>) -> String {
    let mut s = String::from("click_id,clicked_at,ip,user_agent,url,tier\n");
    for i in range {
        s.push_str(&format!(
            "c{i},1764324000,10.0.{}.{},Mozilla/5.0,https://shop.example/p?i={i},gold\n",
            i / 256 % 256,
            i % 256
        ));
    }
    s
}

pub fn limited(limits: IngestLimits) -> SlicerSettings {
    SlicerSettings { chunk_rows: 4, reserve: Duration::from_secs(1), limits, ..SlicerSettings::default() }
}

/// The rejects report's lines after the header.
pub async fn report_lines(w: &World, key: &str) -> Vec<String> {
    let upload = clickpacer::ingest::UploadKey { bucket: w.bucket.clone(), key: key.to_owned() };
    let report = w.objects.get_bytes(&w.bucket, &upload.rejects_key()).await.unwrap();
    String::from_utf8(report).unwrap().lines().skip(1).map(str::to_owned).collect()
}

/// A fake clock: plenty of time for `chunks` chunks, then none.
pub struct ChunksLeft(pub AtomicU32);
impl TimeBudget for ChunksLeft {
    fn remaining(&self) -> Duration {
        let left = self.0.load(Ordering::SeqCst);
        if left == 0 {
            return Duration::ZERO;
        }
        self.0.store(left - 1, Ordering::SeqCst);
        Duration::from_secs(3600)
    }
}
