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
    /// This upload met click ids its campaign already had: look them up before writing.
    pub expect_duplicates: bool,
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
        LeaseOutcome::Acquired(UploadLease { upload_id, owner, done: counts, expect_duplicates: counts.duplicate > 0 })
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

/// Writes one chunk in one transaction: the fresh clicks (a click id the campaign already has, or one repeated
/// within the chunk, is counted as a duplicate, not inserted), their batches with the due times `due_at`
/// assigns, the rejected rows, and the checkpoint (`rows_read` more rows done).
///
/// Fresh clicks go in with binary COPY straight into `click_ids` and `clicks`, the shape a plain COPY would
/// have: duplicates are found first with one indexed lookup for the whole chunk. Two uploads racing on the same
/// click id make one COPY fail on the `click_ids` key; that chunk is rolled back and written again, and the
/// second lookup sees the winner's row.
pub async fn write_chunk(
    client: &mut tokio_postgres::Client,
    lease: &mut UploadLease,
    clicks: &[ClickRow],
    rejects: &[RejectedRow],
    rows_read: u64,
    mut due_at: impl FnMut(&PlannedBatch) -> DateTime<Utc>,
) -> Result<ChunkResult, ChunkError> {
    let mut attempt = 1;
    loop {
        match write_chunk_once(client, lease, clicks, rejects, rows_read, &mut due_at).await {
            Err(ChunkError::Db(e)) if attempt < 3 && e.is_unique_violation() => {
                tracing::info!(
                    upload_id = lease.upload_id,
                    attempt,
                    "click ids raced with another upload; rewriting the chunk"
                );
                attempt += 1;
            }
            result => return result,
        }
    }
}

async fn write_chunk_once(
    client: &mut tokio_postgres::Client,
    lease: &mut UploadLease,
    clicks: &[ClickRow],
    rejects: &[RejectedRow],
    rows_read: u64,
    due_at: &mut impl FnMut(&PlannedBatch) -> DateTime<Utc>,
) -> Result<ChunkResult, ChunkError> {
    let tx = client.transaction().await?;
    // The month's partition of `clicks` exists before the first row of the month arrives (a no-op otherwise).
    let now: DateTime<Utc> = tx.query_one("SELECT now() FROM ensure_click_partition(now())", &[]).await?.get(0);

    // Duplicates: repeats within the chunk (the earliest row wins), then ids the campaigns already have.
    let mut seen = std::collections::HashSet::with_capacity(clicks.len());
    let mut candidates: Vec<&ClickRow> = Vec::with_capacity(clicks.len());
    for click in clicks {
        if seen.insert((click.campaign_id.as_str(), click.click_id.as_str())) {
            candidates.push(click);
        }
    }
    // Optimistic first: most chunks hold only new click ids, so they go straight into `click_ids` by COPY.
    // When the key says otherwise (a re-sent file, overlapping uploads), the savepoint undoes the attempt and
    // one indexed lookup for the whole chunk sorts the fresh from the duplicates. An upload that met
    // duplicates once looks them up first from then on.
    let mut fresh: Vec<&ClickRow> = Vec::new();
    let mut inserted = false;
    if !lease.expect_duplicates {
        tx.batch_execute("SAVEPOINT click_ids").await?;
        match copy_click_ids(&tx, &candidates, now).await {
            Ok(()) => {
                tx.batch_execute("RELEASE SAVEPOINT click_ids").await?;
                fresh = candidates.clone();
                inserted = true;
            }
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT click_ids").await?;
                lease.expect_duplicates = true;
            }
            Err(e) => return Err(DbError::from(e).into()),
        }
    }
    if !inserted {
        let campaign_col: Vec<&str> = candidates.iter().map(|c| c.campaign_id.as_str()).collect();
        let click_col: Vec<&str> = candidates.iter().map(|c| c.click_id.as_str()).collect();
        let existing: std::collections::HashSet<(String, String)> = tx
            .query(
                "SELECT k.campaign_id, k.click_id FROM click_ids k
                 JOIN unnest($1::text[], $2::text[]) AS c(campaign_id, click_id) USING (campaign_id, click_id)",
                &[&campaign_col, &click_col],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        fresh = candidates
            .into_iter()
            .filter(|c| !existing.contains(&(c.campaign_id.to_string(), c.click_id.to_string())))
            .collect();
        copy_click_ids(&tx, &fresh, now).await?;
    }

    // Batches: per campaign, fresh clicks in row order fill slots of the campaign's batch size, continuing
    // after the slots this upload already filled (earlier chunks, earlier invocations).
    let mut per_campaign: HashMap<&CampaignId, Vec<usize>> = HashMap::new();
    for (i, click) in fresh.iter().enumerate() {
        per_campaign.entry(&click.campaign_id).or_default().push(i);
    }
    let mut campaign_keys: Vec<&CampaignId> = per_campaign.keys().copied().collect();
    campaign_keys.sort();
    let key_strings: Vec<&str> = campaign_keys.iter().map(|c| c.as_str()).collect();
    let slots: HashMap<String, (i32, i32)> = tx
        .query(
            "SELECT c.campaign_id, c.batch_size,
                    COALESCE((SELECT max(upload_seq) + 1 FROM batches b
                              WHERE b.upload_id = $1 AND b.campaign_id = c.campaign_id), 0)
             FROM campaigns c WHERE c.campaign_id = ANY($2)",
            &[&lease.upload_id, &key_strings],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), (r.get::<_, i32>(1).max(1), r.get(2))))
        .collect();
    // For each fresh click: its batch (index into `planned`) and slot.
    let mut batch_of_click = vec![(0usize, 0i32); fresh.len()];
    let mut planned: Vec<PlannedBatch> = Vec::new();
    for campaign in &campaign_keys {
        let Some(&(size, next_seq)) = slots.get(campaign.as_str()) else { continue };
        for (n, chunk) in per_campaign[campaign].chunks(size as usize).enumerate() {
            let seq = next_seq + n as i32;
            for &i in chunk {
                batch_of_click[i] = (planned.len(), seq);
            }
            planned.push(PlannedBatch { campaign_id: (*campaign).clone(), seq, clicks: chunk.len() as i64 });
        }
    }
    let ids: Vec<&str> = planned.iter().map(|b| b.campaign_id.as_str()).collect();
    let seqs: Vec<i32> = planned.iter().map(|b| b.seq).collect();
    let counts: Vec<i32> = planned.iter().map(|b| b.clicks as i32).collect();
    let dues: Vec<DateTime<Utc>> = planned.iter().map(&mut *due_at).collect();
    let batch_ids: HashMap<(String, i32), i64> = tx
        .query(
            "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
             SELECT p.campaign_id, c.partner_id, $1, p.seq, p.clicks, p.due_at
             FROM unnest($2::text[], $3::int[], $4::int[], $5::timestamptz[]) AS p(campaign_id, seq, clicks, due_at)
             JOIN campaigns c USING (campaign_id)
             RETURNING campaign_id, upload_seq, batch_id",
            &[&lease.upload_id, &ids, &seqs, &counts, &dues],
        )
        .await?
        .iter()
        .map(|r| ((r.get(0), r.get(1)), r.get(2)))
        .collect();

    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(
        tx.copy_in(
            "COPY clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, ip, user_agent,
                          landing_url, sub_id, attributes, ingested_at) FROM STDIN BINARY",
        )
        .await?,
        &[
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
            Type::TIMESTAMPTZ,
        ],
    ));
    for (click, (planned_index, seq)) in fresh.iter().zip(&batch_of_click) {
        let batch = &planned[*planned_index];
        let batch_id = batch_ids
            .get(&(batch.campaign_id.to_string(), *seq))
            .copied()
            .ok_or_else(|| DbError::Invalid(format!("no batch for campaign {} slot {seq}", batch.campaign_id)))?;
        let attributes = serde_json::Value::Object(click.attributes.clone());
        writer
            .as_mut()
            .write(&[
                &click.campaign_id.as_str(),
                &click.click_id.as_str(),
                &lease.upload_id,
                &(click.row_number as i64),
                &batch_id,
                &click.clicked_at,
                &click.ip,
                &click.user_agent,
                &click.landing_url,
                &click.sub_id,
                &attributes,
                &now,
            ])
            .await?;
    }
    writer.finish().await?;

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
        accepted: fresh.len() as u64,
        duplicate: (clicks.len() - fresh.len()) as u64,
        rejected: rejects.len() as u64,
        batches: planned.len() as u64,
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

async fn copy_click_ids(
    tx: &tokio_postgres::Transaction<'_>,
    fresh: &[&ClickRow],
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in("COPY click_ids (campaign_id, click_id, ingested_at) FROM STDIN BINARY").await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ]));
    for click in fresh {
        writer.as_mut().write(&[&click.campaign_id.as_str(), &click.click_id.as_str(), &now]).await?;
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
