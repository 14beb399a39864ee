//! Uploads, clicks and batches as the slicer writes them.
//!
//! An upload is identified by (bucket, key, version or ETag). The slicer leases it before reading, writes it
//! in chunks (each one transaction: clicks, batches, rejects and the checkpoint together) and completes it at
//! the end. A duplicate or concurrent invocation finds the upload leased or done and leaves it alone; a retry
//! after a crash or a timeout resumes after the last committed chunk.

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::DbError;
use crate::domain::CampaignId;
use crate::ingest::{ClickRow, RejectedRow};

/// The identity of the bytes being ingested.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadIdentity {
    pub bucket: String,
    pub key: String,
    /// Version id when the bucket is versioned, otherwise the ETag.
    pub version: String,
    pub size: Option<i64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct UploadCounts {
    pub rows: u64,
    pub accepted: u64,
    pub rejected: u64,
    pub duplicate: u64,
}

/// The right to write an upload, until `expires_at`; every write checks it is still ours.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadLease {
    pub upload_id: i64,
    pub owner: Uuid,
    /// Counts committed so far (non-zero when resuming).
    pub done: UploadCounts,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseOutcome {
    Acquired(UploadLease),
    /// Another invocation holds a live lease on this upload.
    LeasedElsewhere {
        upload_id: i64,
    },
    /// Already finished (completed or failed): nothing to do.
    Finished {
        upload_id: i64,
        status: String,
        counts: UploadCounts,
    },
}

/// Registers the upload (once per identity) and leases it for `lease_for`.
pub async fn lease(
    db: &impl tokio_postgres::GenericClient,
    identity: &UploadIdentity,
    lease_for: Duration,
) -> Result<LeaseOutcome, DbError> {
    db.execute(
        "INSERT INTO uploads (bucket, object_key, object_version, object_size) VALUES ($1, $2, $3, $4)
         ON CONFLICT (bucket, object_key, object_version) DO NOTHING",
        &[&identity.bucket, &identity.key, &identity.version, &identity.size],
    )
    .await?;
    let owner = Uuid::new_v4();
    let lease_ms = i64::try_from(lease_for.as_millis()).unwrap_or(i64::MAX);
    // One statement: the lease is taken only if nobody holds a live one, so two concurrent invocations of
    // the same event cannot both get it.
    let row = db
        .query_one(
            "WITH target AS (
                 SELECT upload_id FROM uploads
                 WHERE bucket = $1 AND object_key = $2 AND object_version = $3
             ), taken AS (
                 UPDATE uploads u SET lease_owner = $4,
                        lease_expires_at = now() + make_interval(secs => $5::bigint / 1000.0),
                        updated_at = now()
                 FROM target
                 WHERE u.upload_id = target.upload_id AND u.status = 'processing'
                   AND (u.lease_expires_at IS NULL OR u.lease_expires_at < now())
                 RETURNING u.upload_id
             )
             SELECT u.upload_id, u.status, u.rows_done, u.accepted_rows, u.rejected_rows, u.duplicate_rows,
                    EXISTS (SELECT 1 FROM taken) AS acquired
             FROM uploads u JOIN target USING (upload_id)",
            &[&identity.bucket, &identity.key, &identity.version, &owner, &lease_ms],
        )
        .await?;
    let upload_id: i64 = row.get("upload_id");
    let counts = UploadCounts {
        rows: row.get::<_, i64>("rows_done") as u64,
        accepted: row.get::<_, i64>("accepted_rows") as u64,
        rejected: row.get::<_, i64>("rejected_rows") as u64,
        duplicate: row.get::<_, i64>("duplicate_rows") as u64,
    };
    let status: String = row.get("status");
    Ok(if row.get("acquired") {
        LeaseOutcome::Acquired(UploadLease { upload_id, owner, done: counts })
    } else if status == "processing" {
        LeaseOutcome::LeasedElsewhere { upload_id }
    } else {
        LeaseOutcome::Finished { upload_id, status, counts }
    })
}

/// A batch the chunk needs: `clicks` fresh clicks of `campaign_id` in slot `seq` of this upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    pub campaign_id: CampaignId,
    pub seq: i32,
    pub clicks: i64,
}

/// What one committed chunk added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkResult {
    pub accepted: u64,
    pub duplicate: u64,
    pub rejected: u64,
    pub batches: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ChunkError {
    #[error("the upload's lease was lost to another invocation")]
    LeaseLost,
    #[error(transparent)]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ChunkError {
    fn from(e: tokio_postgres::Error) -> Self {
        Self::Db(e.into())
    }
}

/// Writes one chunk in one transaction: the fresh clicks (duplicates of click ids the campaign already has, or
/// repeated within the chunk, are counted, not inserted), their batches with the due times `due_at` assigns,
/// the rejected rows, and the checkpoint (`rows_read` more rows done).
pub async fn write_chunk(
    client: &mut tokio_postgres::Client,
    lease: &mut UploadLease,
    clicks: &[ClickRow],
    rejects: &[RejectedRow],
    rows_read: u64,
    mut due_at: impl FnMut(&PlannedBatch) -> DateTime<Utc>,
) -> Result<ChunkResult, ChunkError> {
    let tx = client.transaction().await?;
    let now: DateTime<Utc> = tx.query_one("SELECT now()", &[]).await?.get(0);
    tx.batch_execute(
        "CREATE TEMP TABLE IF NOT EXISTS slicer_staging (
             campaign_id text, click_id text, row_number bigint, clicked_at timestamptz, ip inet,
             user_agent text, landing_url text, sub_id text, attributes jsonb
         ) ON COMMIT DELETE ROWS;
         CREATE TEMP TABLE IF NOT EXISTS slicer_fresh (
             campaign_id text, click_id text, row_number bigint, seq integer
         ) ON COMMIT DELETE ROWS;",
    )
    .await?;

    let sink = tx
        .copy_in(
            "COPY slicer_staging (campaign_id, click_id, row_number, clicked_at, ip, user_agent, landing_url,
                                  sub_id, attributes) FROM STDIN BINARY",
        )
        .await?;
    let types = [
        Type::TEXT,
        Type::TEXT,
        Type::INT8,
        Type::TIMESTAMPTZ,
        Type::INET,
        Type::TEXT,
        Type::TEXT,
        Type::TEXT,
        Type::JSONB,
    ];
    let writer = BinaryCopyInWriter::new(sink, &types);
    futures_pin(writer, clicks).await?;

    // Fresh = click ids this campaign did not have. The earliest row wins within the chunk; later repeats and
    // ids already stored are duplicates. Positions number the fresh clicks per campaign after the batches
    // this upload already made, so slots continue across chunks and resumed invocations.
    let fresh = tx
        .execute(
            "WITH firsts AS (
                 SELECT DISTINCT ON (campaign_id, click_id) campaign_id, click_id, row_number
                 FROM slicer_staging ORDER BY campaign_id, click_id, row_number
             ), inserted AS (
                 INSERT INTO click_ids (campaign_id, click_id, ingested_at)
                 SELECT campaign_id, click_id, $2 FROM firsts
                 ON CONFLICT DO NOTHING
                 RETURNING campaign_id, click_id
             ), base AS (
                 SELECT c.campaign_id, c.batch_size,
                        COALESCE((SELECT max(upload_seq) + 1 FROM batches b
                                  WHERE b.upload_id = $1 AND b.campaign_id = c.campaign_id), 0) AS next_seq
                 FROM campaigns c WHERE c.campaign_id IN (SELECT campaign_id FROM inserted)
             )
             INSERT INTO slicer_fresh (campaign_id, click_id, row_number, seq)
             SELECT f.campaign_id, f.click_id, f.row_number,
                    base.next_seq + ((row_number() OVER (PARTITION BY f.campaign_id ORDER BY f.row_number) - 1)
                                     / base.batch_size)::integer
             FROM firsts f JOIN inserted USING (campaign_id, click_id) JOIN base USING (campaign_id)",
            &[&lease.upload_id, &now],
        )
        .await?;

    let groups = tx
        .query(
            "SELECT campaign_id, seq, count(*) FROM slicer_fresh GROUP BY campaign_id, seq ORDER BY campaign_id, seq",
            &[],
        )
        .await?;
    let mut campaign_ids = Vec::with_capacity(groups.len());
    let mut seqs = Vec::with_capacity(groups.len());
    let mut counts = Vec::with_capacity(groups.len());
    let mut dues = Vec::with_capacity(groups.len());
    for row in &groups {
        let campaign: String = row.get(0);
        let planned = PlannedBatch {
            campaign_id: CampaignId::parse(campaign.clone())
                .map_err(|e| DbError::Invalid(format!("stored campaign id: {e}")))?,
            seq: row.get(1),
            clicks: row.get(2),
        };
        dues.push(due_at(&planned));
        campaign_ids.push(campaign);
        seqs.push(planned.seq);
        counts.push(planned.clicks as i32);
    }
    tx.execute(
        "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
         SELECT p.campaign_id, c.partner_id, $1, p.seq, p.clicks, p.due_at
         FROM unnest($2::text[], $3::int[], $4::int[], $5::timestamptz[]) AS p(campaign_id, seq, clicks, due_at)
         JOIN campaigns c USING (campaign_id)",
        &[&lease.upload_id, &campaign_ids, &seqs, &counts, &dues],
    )
    .await?;
    tx.execute(
        "INSERT INTO clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, ip, user_agent,
                             landing_url, sub_id, attributes, ingested_at)
         SELECT s.campaign_id, s.click_id, $1, s.row_number, b.batch_id, s.clicked_at, s.ip, s.user_agent,
                s.landing_url, s.sub_id, s.attributes, $2
         FROM slicer_staging s
         JOIN slicer_fresh f USING (campaign_id, click_id, row_number)
         JOIN batches b ON b.upload_id = $1 AND b.campaign_id = f.campaign_id AND b.upload_seq = f.seq",
        &[&lease.upload_id, &now],
    )
    .await?;

    if !rejects.is_empty() {
        let rows: Vec<i64> = rejects.iter().map(|r| r.row_number as i64).collect();
        let reasons: Vec<String> = rejects.iter().map(|r| r.reason.to_string()).collect();
        let raws: Vec<&str> = rejects.iter().map(|r| r.raw.as_str()).collect();
        tx.execute(
            "INSERT INTO upload_rejects (upload_id, row_number, reason, raw)
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[])",
            &[&lease.upload_id, &rows, &reasons, &raws],
        )
        .await?;
    }

    let result = ChunkResult {
        accepted: fresh,
        duplicate: clicks.len() as u64 - fresh,
        rejected: rejects.len() as u64,
        batches: groups.len() as u64,
    };
    // The checkpoint, fenced by the lease: if another invocation took the upload over, nothing commits.
    let updated = tx
        .execute(
            "UPDATE uploads SET rows_done = rows_done + $3, accepted_rows = accepted_rows + $4,
                    rejected_rows = rejected_rows + $5, duplicate_rows = duplicate_rows + $6, updated_at = now()
             WHERE upload_id = $1 AND lease_owner = $2 AND lease_expires_at > now()",
            &[
                &lease.upload_id,
                &lease.owner,
                &(rows_read as i64),
                &(result.accepted as i64),
                &(result.rejected as i64),
                &(result.duplicate as i64),
            ],
        )
        .await?;
    if updated != 1 {
        return Err(ChunkError::LeaseLost);
    }
    tx.commit().await?;
    lease.done.rows += rows_read;
    lease.done.accepted += result.accepted;
    lease.done.rejected += result.rejected;
    lease.done.duplicate += result.duplicate;
    Ok(result)
}

async fn futures_pin(writer: BinaryCopyInWriter, clicks: &[ClickRow]) -> Result<(), tokio_postgres::Error> {
    let mut writer = std::pin::pin!(writer);
    for c in clicks {
        let attributes = serde_json::Value::Object(c.attributes.clone());
        writer
            .as_mut()
            .write(&[
                &c.campaign_id.as_str(),
                &c.click_id.as_str(),
                &(c.row_number as i64),
                &c.clicked_at,
                &c.ip,
                &c.user_agent,
                &c.landing_url,
                &c.sub_id,
                &attributes,
            ])
            .await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Ends the upload (completed, or failed with a reason) and gives up the lease.
pub async fn finish(
    db: &impl tokio_postgres::GenericClient,
    lease: &UploadLease,
    failure: Option<&str>,
    rejects_key: Option<&str>,
) -> Result<(), ChunkError> {
    let status = if failure.is_some() { "failed" } else { "completed" };
    let updated = db
        .execute(
            "UPDATE uploads SET status = $3, status_detail = $4, rejects_key = $5, completed_at = now(),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             WHERE upload_id = $1 AND lease_owner = $2",
            &[&lease.upload_id, &lease.owner, &status, &failure, &rejects_key],
        )
        .await
        .map_err(DbError::from)?;
    if updated != 1 {
        return Err(ChunkError::LeaseLost);
    }
    Ok(())
}

/// Gives the lease up without finishing (time ran out): the next invocation resumes at once.
pub async fn release(db: &impl tokio_postgres::GenericClient, lease: &UploadLease) -> Result<(), DbError> {
    db.execute(
        "UPDATE uploads SET lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
         WHERE upload_id = $1 AND lease_owner = $2",
        &[&lease.upload_id, &lease.owner],
    )
    .await?;
    Ok(())
}

/// The upload's first `limit` rejected rows in row order: `(row, reason, raw)`.
pub async fn rejects(
    db: &impl tokio_postgres::GenericClient,
    upload_id: i64,
    limit: i64,
) -> Result<Vec<(i64, String, String)>, DbError> {
    let rows = db
        .query(
            "SELECT row_number, reason, raw FROM upload_rejects WHERE upload_id = $1 ORDER BY row_number LIMIT $2",
            &[&upload_id, &limit],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
}

/// Clicks of each campaign already waiting (not yet released): where new batches queue up behind.
pub async fn pending_clicks_by_campaign(
    db: &impl tokio_postgres::GenericClient,
) -> Result<HashMap<String, i64>, DbError> {
    let rows = db
        .query(
            "SELECT campaign_id, sum(click_count)::bigint FROM batches WHERE state IN ('pending', 'claimed')
             GROUP BY campaign_id",
            &[],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}
