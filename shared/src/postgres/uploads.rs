//! Uploads, clicks and batches as the slicer writes them.
//!
//! An upload is identified by (bucket, key, version or ETag). The slicer leases it before reading, writes it
//! in chunks (each one transaction: clicks, batches, rejects, the chunk's row range and the counts together) and
//! completes it at the end. A duplicate or concurrent invocation finds the upload leased or done and leaves it
//! alone; a retry after a crash or a timeout resumes, reading past every committed chunk.
//!
//! Chunks of one upload may be written on several connections at once and commit in any order, so what is
//! committed is a set of disjoint row ranges (`upload_chunks`), not a prefix. Nothing a chunk writes depends on
//! another chunk of the same upload: its batch slots are derived from its first row, and concurrent chunks meet
//! only on the upload's row, whose update (the lease fence and the counts) is the chunk's last statement.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio_postgres::binary_copy::BinaryCopyInWriter;
use tokio_postgres::error::SqlState;
use tokio_postgres::types::Type;
use uuid::Uuid;

use super::DbError;
use crate::domain::CampaignId;
use crate::ingest::{ClickRow, RejectedRow};

/// A pooled connection, as chunk writers hold one each (prepared statements are cached per connection).
pub type PooledClient = deadpool_postgres::Client;

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

impl UploadCounts {
    /// Adds what a committed chunk did.
    pub fn add(&mut self, chunk: &ChunkResult) {
        self.rows += chunk.rows;
        self.accepted += chunk.accepted;
        self.rejected += chunk.rejected;
        self.duplicate += chunk.duplicate;
    }
}

/// Data rows `first..=last` of a file (the header is not a data row; the first data row is 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RowRange {
    pub first: u64,
    pub last: u64,
}

impl RowRange {
    pub fn rows(&self) -> u64 {
        self.last + 1 - self.first
    }
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
    /// Rows committed so far, in order, adjacent ranges merged: a resumed upload reads past them.
    pub committed: Vec<RowRange>,
}

impl UploadLease {
    /// The upload as its chunk writers share it (one per connection, behind an `Arc`).
    pub fn writer(&self) -> UploadWriter {
        UploadWriter {
            upload_id: self.upload_id,
            owner: self.owner,
            expect_duplicates: AtomicBool::new(self.expect_duplicates),
        }
    }
}

/// A leased upload as concurrent chunk writers share it.
#[derive(Debug)]
pub struct UploadWriter {
    pub upload_id: i64,
    pub owner: Uuid,
    /// Set once a chunk met click ids its campaign already had: later chunks look them up before writing.
    expect_duplicates: AtomicBool,
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
    let status: String = row.get("status");
    Ok(if row.get("acquired") {
        // Read again, now that the lease is ours: the statement above saw the upload as it was when it began,
        // which misses a chunk the previous owner committed while this lease waited for the upload's row lock.
        // From here on nobody else can commit a chunk of this upload.
        let (done, committed) = resume_state(db, upload_id, owner).await?;
        LeaseOutcome::Acquired(UploadLease { upload_id, owner, done, expect_duplicates: done.duplicate > 0, committed })
    } else if status == "processing" {
        LeaseOutcome::LeasedElsewhere { upload_id }
    } else {
        LeaseOutcome::Finished { upload_id, status, counts: counts_of(&row) }
    })
}

fn counts_of(row: &tokio_postgres::Row) -> UploadCounts {
    UploadCounts {
        rows: row.get::<_, i64>("rows_done") as u64,
        accepted: row.get::<_, i64>("accepted_rows") as u64,
        rejected: row.get::<_, i64>("rejected_rows") as u64,
        duplicate: row.get::<_, i64>("duplicate_rows") as u64,
    }
}

/// The counts and committed row ranges of an upload we hold the lease of.
async fn resume_state(
    db: &impl tokio_postgres::GenericClient,
    upload_id: i64,
    owner: Uuid,
) -> Result<(UploadCounts, Vec<RowRange>), DbError> {
    let row = db
        .query_one(
            "SELECT rows_done, accepted_rows, rejected_rows, duplicate_rows,
                    ARRAY(SELECT first_row FROM upload_chunks c WHERE c.upload_id = u.upload_id ORDER BY first_row)
                        AS firsts,
                    ARRAY(SELECT last_row FROM upload_chunks c WHERE c.upload_id = u.upload_id ORDER BY first_row)
                        AS lasts
             FROM uploads u WHERE upload_id = $1",
            &[&upload_id],
        )
        .await?;
    let done = counts_of(&row);
    let firsts: Vec<i64> = row.get("firsts");
    let lasts: Vec<i64> = row.get("lasts");
    let ranges = firsts.iter().zip(&lasts).map(|(&first, &last)| RowRange { first: first as u64, last: last as u64 });
    let (mut committed, covered) = merge_ranges(ranges)
        .map_err(|r| DbError::Invalid(format!("upload {upload_id}: committed chunks overlap at rows {r:?}")))?;
    if covered == done.rows {
        return Ok((done, committed));
    }
    // Progress a slicer older than `upload_chunks` committed (a deployment running old and new code side by
    // side) is a prefix without chunk ranges: record it, so the ranges again account for every row done.
    let prefix_end = match committed.as_slice() {
        [] => 0,
        [only] if only.first == 1 => only.last,
        _ => u64::MAX,
    };
    if prefix_end >= done.rows {
        return Err(DbError::Invalid(format!(
            "upload {upload_id}: committed chunks cover {covered} rows but {} are counted done",
            done.rows
        )));
    }
    let legacy = RowRange { first: prefix_end + 1, last: done.rows };
    let inserted = db
        .execute(
            "INSERT INTO upload_chunks (upload_id, first_row, last_row)
             SELECT upload_id, $3, $4 FROM uploads WHERE upload_id = $1 AND lease_owner = $2",
            &[&upload_id, &owner, &(legacy.first as i64), &(legacy.last as i64)],
        )
        .await?;
    if inserted != 1 {
        return Err(DbError::Invalid(format!("upload {upload_id}: the lease was lost while resuming")));
    }
    committed = vec![RowRange { first: 1, last: done.rows }];
    Ok((done, committed))
}

/// Sorted ranges merged where adjacent, with the number of rows they cover; `Err` names an overlapping range.
pub fn merge_ranges(sorted: impl IntoIterator<Item = RowRange>) -> Result<(Vec<RowRange>, u64), RowRange> {
    let mut merged: Vec<RowRange> = Vec::new();
    let mut covered = 0;
    for range in sorted {
        if range.first == 0 || range.last < range.first {
            return Err(range);
        }
        covered += range.rows();
        match merged.last_mut() {
            Some(last) if range.first <= last.last => return Err(range),
            Some(last) if range.first == last.last + 1 => last.last = range.last,
            _ => merged.push(range),
        }
    }
    Ok((merged, covered))
}

/// One chunk as read: `rows`, a contiguous run of rows none of which is committed yet, each of them either
/// a click or a rejected row.
#[derive(Debug, Clone, Copy)]
pub struct ChunkRows<'a> {
    pub rows: RowRange,
    pub clicks: &'a [StagedClick],
    pub rejects: &'a [RejectedRow],
}

/// A click ready for COPY, its attributes already in jsonb's binary form: serialised where the click is read,
/// off the writers' path, and far smaller than the parsed map while the click waits to be written.
#[derive(Debug, Clone, PartialEq)]
pub struct StagedClick {
    /// The click, its `attributes` left empty.
    pub click: ClickRow,
    attributes: Vec<u8>,
}

impl From<ClickRow> for StagedClick {
    fn from(mut click: ClickRow) -> Self {
        let map = std::mem::take(&mut click.attributes);
        // jsonb's binary form: the format version (1), then the JSON text.
        let mut attributes = Vec::with_capacity(64);
        attributes.push(1);
        serde_json::to_writer(&mut attributes, &map).expect("a JSON map serialises");
        attributes.shrink_to_fit();
        Self { click, attributes }
    }
}

impl StagedClick {
    /// The attributes as JSON text.
    pub fn attributes_json(&self) -> &str {
        std::str::from_utf8(&self.attributes[1..]).expect("serialised as UTF-8")
    }
}

/// How a campaign's fresh clicks are batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchTerms {
    /// Clicks per batch (the last batch of a chunk may hold fewer).
    pub size: usize,
    pub due_at: DateTime<Utc>,
}

/// A batch the chunk needs: `clicks` fresh clicks of `campaign_id` in slot `seq` of this upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlannedBatch {
    pub campaign_id: CampaignId,
    pub seq: i32,
    pub clicks: i64,
    pub due_at: DateTime<Utc>,
}

/// What one committed chunk added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ChunkResult {
    pub rows: u64,
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

/// Writes a chunk this many times at most when it races with another writer over click ids.
const CHUNK_ATTEMPTS: u32 = 5;

/// The batch slots of a chunk are numbered from its first row: a chunk of n rows makes at most n batches per
/// campaign, so the slots of disjoint chunks never meet, whichever order the chunks commit in.
const MAX_SLOTTED_ROW: u64 = i32::MAX as u64 + 1;

/// Writes one chunk in one transaction: the fresh clicks (a click id the campaign already has, or one repeated
/// within the chunk, is counted as a duplicate, not inserted), their batches on the campaign's `terms`, the
/// rejected rows, the chunk's row range and the counts. Other chunks of the same upload may be written at the
/// same time on other connections.
///
/// Fresh clicks go in with binary COPY straight into `click_ids` and `clicks`, the shape a plain COPY would
/// have. Two chunks (of this upload or another) racing on the same click id make one COPY wait for the other's
/// transaction and then fail on the `click_ids` key (or deadlock); that chunk is rolled back and written again,
/// and its lookup then sees the winner's row.
pub async fn write_chunk(
    client: &mut PooledClient,
    upload: &UploadWriter,
    chunk: &ChunkRows<'_>,
    terms: impl Fn(&CampaignId) -> Option<BatchTerms>,
) -> Result<ChunkResult, ChunkError> {
    let RowRange { first, last } = chunk.rows;
    let outside = |row: u64| row < first || row > last;
    if first == 0
        || last < first
        || last > MAX_SLOTTED_ROW
        || (chunk.clicks.len() + chunk.rejects.len()) as u64 != chunk.rows.rows()
        || chunk.clicks.iter().any(|c| outside(c.click.row_number))
        || chunk.rejects.iter().any(|r| outside(r.row_number))
    {
        return Err(DbError::Invalid(format!(
            "a chunk of rows {first}..={last} must hold each of its rows once (at most {MAX_SLOTTED_ROW} rows a file): \
             it holds {} clicks and {} rejected rows",
            chunk.clicks.len(),
            chunk.rejects.len()
        ))
        .into());
    }
    let mut attempt = 1;
    loop {
        match write_chunk_once(client, upload, chunk, &terms).await {
            Err(ChunkError::Db(e)) if attempt < CHUNK_ATTEMPTS && is_click_race(&e) => {
                tracing::info!(
                    upload_id = upload.upload_id,
                    first_row = first,
                    attempt,
                    error = %e,
                    "click ids raced with another chunk; rewriting the chunk"
                );
                attempt += 1;
            }
            result => return result,
        }
    }
}

/// Worth writing the chunk again: it raced with another transaction over a click id (or, at the start of a
/// month, over creating the month's partition of `clicks`).
fn is_click_race(e: &DbError) -> bool {
    matches!(e.sql_state(), Some(s) if *s == SqlState::UNIQUE_VIOLATION
        || *s == SqlState::T_R_DEADLOCK_DETECTED
        || *s == SqlState::DUPLICATE_TABLE)
}

/// Creates the partitions of `clicks` for now and for a day ahead where missing, before chunks are written: so
/// that concurrent chunks do not all try to create one at the start of a month (the loser waits for the
/// creator's whole chunk and then fails on the name, as it can when two invocations create it at once: then
/// this tries again).
pub async fn prepare_click_partitions(db: &impl tokio_postgres::GenericClient) -> Result<(), DbError> {
    let mut attempt = 1;
    loop {
        match db
            .batch_execute("SELECT ensure_click_partition(now()), ensure_click_partition(now() + interval '1 day')")
            .await
        {
            Err(e)
                if attempt < 3
                    && matches!(e.code(), Some(s) if *s == SqlState::DUPLICATE_TABLE
                        || *s == SqlState::UNIQUE_VIOLATION) =>
            {
                attempt += 1;
            }
            result => return Ok(result?),
        }
    }
}

async fn write_chunk_once(
    client: &mut PooledClient,
    upload: &UploadWriter,
    chunk: &ChunkRows<'_>,
    terms: &impl Fn(&CampaignId) -> Option<BatchTerms>,
) -> Result<ChunkResult, ChunkError> {
    let upload_id = upload.upload_id;
    // Statements are prepared once per connection; independent ones are sent together (pipelined) and their
    // results read in order, so a chunk costs few round trips besides its two COPYs.
    let tx = client.transaction().await?;
    let now_statement = tx.prepare_cached("SELECT now() FROM ensure_click_partition(now())").await?;
    let click_ids_statement =
        tx.prepare_cached("COPY click_ids (campaign_id, click_id, ingested_at) FROM STDIN BINARY").await?;
    let batches_statement = tx
        .prepare_cached(
            "INSERT INTO batches (campaign_id, partner_id, upload_id, upload_seq, click_count, due_at)
             SELECT p.campaign_id, c.partner_id, $1, p.seq, p.clicks, p.due_at
             FROM unnest($2::text[], $3::int[], $4::int[], $5::timestamptz[]) AS p(campaign_id, seq, clicks, due_at)
             JOIN campaigns c USING (campaign_id)
             RETURNING campaign_id, upload_seq, batch_id",
        )
        .await?;
    let clicks_statement = tx
        .prepare_cached(
            "COPY clicks (campaign_id, click_id, upload_id, row_number, batch_id, clicked_at, ip, user_agent,
                          landing_url, sub_id, attributes, ingested_at) FROM STDIN BINARY",
        )
        .await?;
    let rejects_statement = tx
        .prepare_cached(
            "INSERT INTO upload_rejects (upload_id, row_number, reason, raw, code, field)
             SELECT $1, * FROM unnest($2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[])",
        )
        .await?;
    // The lease fence and the counts: the chunk's last write, so concurrent chunks of the upload hold its row
    // lock only from here to their commit. If another invocation took the upload over, nothing commits.
    let fence_statement = tx
        .prepare_cached(
            "UPDATE uploads SET rows_done = rows_done + $3, accepted_rows = accepted_rows + $4,
                    rejected_rows = rejected_rows + $5, duplicate_rows = duplicate_rows + $6, updated_at = now()
             WHERE upload_id = $1 AND lease_owner = $2 AND lease_expires_at > now()",
        )
        .await?;
    // After the fence, in a statement of its own: holding the upload's row lock, its snapshot sees every chunk
    // committed before, so a range overlapping one of them (a bug) is refused instead of counted twice. With
    // disjoint ranges, only the committed range starting last at or before this one's end can overlap it.
    let range_statement = tx
        .prepare_cached(
            "INSERT INTO upload_chunks (upload_id, first_row, last_row)
             SELECT $1, $2, $3
             WHERE NOT EXISTS (
                 SELECT 1 FROM (SELECT last_row FROM upload_chunks
                                WHERE upload_id = $1 AND first_row <= $3
                                ORDER BY first_row DESC LIMIT 1) AS before
                 WHERE before.last_row >= $2)",
        )
        .await?;

    // Duplicates: repeats within the chunk (the earliest row wins), then ids the campaigns already have.
    let clicks = chunk.clicks;
    let mut seen = std::collections::HashSet::with_capacity(clicks.len());
    let mut candidates: Vec<&StagedClick> = Vec::with_capacity(clicks.len());
    for staged in clicks {
        if seen.insert((staged.click.campaign_id.as_str(), staged.click.click_id.as_str())) {
            candidates.push(staged);
        }
    }
    drop(seen);

    // Optimistic first: most chunks hold only new click ids, so they go straight into `click_ids` by COPY.
    // When the key says otherwise (a re-sent file, overlapping uploads), the savepoint undoes the attempt and
    // one indexed lookup for the whole chunk sorts the fresh from the duplicates. An upload that met
    // duplicates once looks them up first from then on.
    let optimistic = !upload.expect_duplicates.load(Ordering::Relaxed);
    let (now, savepoint) = tokio::join!(biased; tx.query_one(&now_statement, &[]), async {
        if optimistic { tx.batch_execute("SAVEPOINT click_ids").await } else { Ok(()) }
    });
    let now: DateTime<Utc> = now?.get(0);
    savepoint?;
    let mut fresh: Vec<&StagedClick> = Vec::new();
    let mut inserted = false;
    let mut release_savepoint = false;
    if optimistic {
        match copy_click_ids(&tx, &click_ids_statement, &candidates, now).await {
            Ok(()) => {
                fresh = candidates.clone();
                inserted = true;
                release_savepoint = true;
            }
            Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                tx.batch_execute("ROLLBACK TO SAVEPOINT click_ids").await?;
                upload.expect_duplicates.store(true, Ordering::Relaxed);
            }
            Err(e) => return Err(DbError::from(e).into()),
        }
    }
    if !inserted {
        let campaign_col: Vec<&str> = candidates.iter().map(|c| c.click.campaign_id.as_str()).collect();
        let click_col: Vec<&str> = candidates.iter().map(|c| c.click.click_id.as_str()).collect();
        let existing: std::collections::HashSet<(String, String)> = tx
            .query_typed(
                "SELECT k.campaign_id, k.click_id FROM click_ids k
                 JOIN unnest($1::text[], $2::text[]) AS c(campaign_id, click_id)
                   ON k.campaign_id = c.campaign_id COLLATE \"C\" AND k.click_id = c.click_id COLLATE \"C\"",
                &[(&campaign_col, Type::TEXT_ARRAY), (&click_col, Type::TEXT_ARRAY)],
            )
            .await?
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        fresh = candidates
            .into_iter()
            .filter(|c| !existing.contains(&(c.click.campaign_id.to_string(), c.click.click_id.to_string())))
            .collect();
        copy_click_ids(&tx, &click_ids_statement, &fresh, now).await?;
    }

    // Batches: per campaign, fresh clicks in row order fill slots of the campaign's batch size, numbered from
    // the chunk's first row.
    let mut per_campaign: HashMap<&CampaignId, Vec<usize>> = HashMap::new();
    for (i, staged) in fresh.iter().enumerate() {
        per_campaign.entry(&staged.click.campaign_id).or_default().push(i);
    }
    let mut campaign_keys: Vec<&CampaignId> = per_campaign.keys().copied().collect();
    campaign_keys.sort();
    let first_seq = (chunk.rows.first - 1) as i32;
    // For each fresh click: its batch (index into `planned`).
    let mut batch_of_click = vec![0usize; fresh.len()];
    let mut planned: Vec<PlannedBatch> = Vec::new();
    for campaign in &campaign_keys {
        let BatchTerms { size, due_at } = terms(campaign)
            .ok_or_else(|| DbError::Invalid(format!("campaign {campaign} is not known to the writer")))?;
        for (n, members) in per_campaign[campaign].chunks(size.max(1)).enumerate() {
            for &i in members {
                batch_of_click[i] = planned.len();
            }
            planned.push(PlannedBatch {
                campaign_id: (*campaign).clone(),
                seq: first_seq + n as i32,
                clicks: members.len() as i64,
                due_at,
            });
        }
    }
    let ids: Vec<&str> = planned.iter().map(|b| b.campaign_id.as_str()).collect();
    let seqs: Vec<i32> = planned.iter().map(|b| b.seq).collect();
    let counts: Vec<i32> = planned.iter().map(|b| b.clicks as i32).collect();
    let dues: Vec<DateTime<Utc>> = planned.iter().map(|b| b.due_at).collect();
    let (released, batch_rows) = tokio::join!(biased; async {
        if release_savepoint { tx.batch_execute("RELEASE SAVEPOINT click_ids").await } else { Ok(()) }
    }, async { tx.query(&batches_statement, &[&upload_id, &ids, &seqs, &counts, &dues]).await });
    released?;
    let batch_ids: HashMap<(String, i32), i64> = batch_rows?.iter().map(|r| ((r.get(0), r.get(1)), r.get(2))).collect();
    let planned_ids: Vec<i64> = planned
        .iter()
        .map(|b| {
            batch_ids.get(&(b.campaign_id.to_string(), b.seq)).copied().ok_or_else(|| {
                DbError::Invalid(format!(
                    "campaign {} has no batch in slot {} (unknown campaign?)",
                    b.campaign_id, b.seq
                ))
            })
        })
        .collect::<Result<_, _>>()?;

    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(
        tx.copy_in(&clicks_statement).await?,
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
            // The attributes, already in jsonb's binary form: sent as they are.
            Type::BYTEA,
            Type::TIMESTAMPTZ,
        ],
    ));
    for (staged, &planned_index) in fresh.iter().zip(&batch_of_click) {
        let click = &staged.click;
        writer
            .as_mut()
            .write(&[
                &click.campaign_id.as_str(),
                &click.click_id.as_str(),
                &upload_id,
                &(click.row_number as i64),
                &planned_ids[planned_index],
                &click.clicked_at,
                &click.ip,
                &click.user_agent,
                &click.landing_url,
                &click.sub_id,
                &staged.attributes.as_slice(),
                &now,
            ])
            .await?;
    }
    writer.finish().await?;

    let result = ChunkResult {
        rows: chunk.rows.rows(),
        accepted: fresh.len() as u64,
        duplicate: (clicks.len() - fresh.len()) as u64,
        rejected: chunk.rejects.len() as u64,
        batches: planned.len() as u64,
    };
    let rejects = chunk.rejects;
    let reject_rows: Vec<i64> = rejects.iter().map(|r| r.row_number as i64).collect();
    let reasons: Vec<String> = rejects.iter().map(|r| r.reason.to_string()).collect();
    let raws: Vec<&str> = rejects.iter().map(|r| r.raw.as_str()).collect();
    let codes: Vec<&str> = rejects.iter().map(|r| r.reason.code()).collect();
    let fields: Vec<Option<&str>> = rejects.iter().map(|r| r.reason.field()).collect();
    let (first_row, last_row) = (chunk.rows.first as i64, chunk.rows.last as i64);
    let (rejected, fenced, recorded) = tokio::join!(
        biased;
        async {
            if rejects.is_empty() {
                Ok(0)
            } else {
                tx.execute(&rejects_statement, &[&upload_id, &reject_rows, &reasons, &raws, &codes, &fields]).await
            }
        },
        async {
            let counts = [result.rows, result.accepted, result.rejected, result.duplicate].map(|n| n as i64);
            tx.execute(&fence_statement, &[&upload_id, &upload.owner, &counts[0], &counts[1], &counts[2], &counts[3]])
                .await
        },
        async { tx.execute(&range_statement, &[&upload_id, &first_row, &last_row]).await },
    );
    rejected?;
    if fenced? != 1 {
        return Err(ChunkError::LeaseLost);
    }
    if recorded? != 1 {
        return Err(DbError::Invalid(format!(
            "upload {upload_id}: rows {first_row}..={last_row} overlap a committed chunk"
        ))
        .into());
    }
    tx.commit().await?;
    Ok(result)
}

async fn copy_click_ids(
    tx: &tokio_postgres::Transaction<'_>,
    statement: &tokio_postgres::Statement,
    fresh: &[&StagedClick],
    now: DateTime<Utc>,
) -> Result<(), tokio_postgres::Error> {
    let sink = tx.copy_in(statement).await?;
    let mut writer = std::pin::pin!(BinaryCopyInWriter::new(sink, &[Type::TEXT, Type::TEXT, Type::TIMESTAMPTZ]));
    for staged in fresh {
        let click = &staged.click;
        writer.as_mut().write(&[&click.campaign_id.as_str(), &click.click_id.as_str(), &now]).await?;
    }
    writer.finish().await?;
    Ok(())
}

/// Ends the upload (completed, or failed with a reason) and gives up the lease, recording its rejected rows per
/// reason code. A completed upload every row of which was rejected for one reason says so in its status detail.
pub async fn finish(
    db: &impl tokio_postgres::GenericClient,
    lease: &UploadLease,
    failure: Option<&str>,
    rejects_key: Option<&str>,
) -> Result<(), ChunkError> {
    let status = if failure.is_some() { "failed" } else { "completed" };
    let updated = db
        .execute(
            "WITH counts AS (
                 SELECT code, count(*) AS n, min(reason) AS reason, count(DISTINCT reason) AS reasons
                 FROM upload_rejects WHERE upload_id = $1 GROUP BY code
             ), summary AS (
                 SELECT coalesce(jsonb_object_agg(code, n), '{}') AS by_code,
                        CASE WHEN count(*) = 1 THEN min(n) END AS only_n,
                        CASE WHEN count(*) = 1 AND sum(reasons) = 1 THEN min(reason)
                             WHEN count(*) = 1 THEN min(code) || ', e.g. ' || min(reason) END AS only_reason
                 FROM counts
             )
             UPDATE uploads u SET status = $3,
                    status_detail = coalesce($4, CASE WHEN s.only_n > 0 AND s.only_n = u.rows_done
                        THEN 'every row (' || s.only_n || ') was rejected: ' || s.only_reason END),
                    reject_counts = s.by_code, rejects_key = $5, completed_at = now(),
                    lease_owner = NULL, lease_expires_at = NULL, updated_at = now()
             FROM summary s
             WHERE u.upload_id = $1 AND u.lease_owner = $2",
            &[&lease.upload_id, &lease.owner, &status, &failure, &rejects_key],
        )
        .await
        .map_err(DbError::from)?;
    if updated != 1 {
        return Err(ChunkError::LeaseLost);
    }
    Ok(())
}

/// Extends a live lease by `lease_for` from now; `false` when it is no longer `owner`'s (taken over after it
/// expired, or the upload finished).
pub async fn renew(
    db: &impl tokio_postgres::GenericClient,
    upload_id: i64,
    owner: Uuid,
    lease_for: Duration,
) -> Result<bool, DbError> {
    let lease_ms = i64::try_from(lease_for.as_millis()).unwrap_or(i64::MAX);
    let renewed = db
        .execute(
            "UPDATE uploads SET lease_expires_at = now() + make_interval(secs => $3::bigint / 1000.0)
             WHERE upload_id = $1 AND lease_owner = $2 AND status = 'processing' AND lease_expires_at > now()",
            &[&upload_id, &owner, &lease_ms],
        )
        .await?;
    Ok(renewed == 1)
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

/// One rejected row as the report lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportedReject {
    pub row_number: i64,
    pub reason: String,
    pub field: Option<String>,
    pub raw: String,
}

/// The upload's first `limit` rejected rows in row order.
pub async fn rejects(
    db: &impl tokio_postgres::GenericClient,
    upload_id: i64,
    limit: i64,
) -> Result<Vec<ReportedReject>, DbError> {
    let rows = db
        .query(
            "SELECT row_number, reason, field, raw FROM upload_rejects WHERE upload_id = $1
             ORDER BY row_number LIMIT $2",
            &[&upload_id, &limit],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| ReportedReject { row_number: r.get(0), reason: r.get(1), field: r.get(2), raw: r.get(3) })
        .collect())
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

#[cfg(test)]
mod tests {
    use super::*;

    fn r(first: u64, last: u64) -> RowRange {
        RowRange { first, last }
    }

    #[test]
    fn staged_clicks_carry_their_attributes_as_jsonb() {
        let mut attributes = serde_json::Map::new();
        attributes.insert("country".into(), "DE".into());
        attributes.insert("tier".into(), serde_json::json!({"level": 2}));
        let click = ClickRow {
            campaign_id: CampaignId::parse("spring").unwrap(),
            click_id: crate::domain::ClickId::parse("c1").unwrap(),
            row_number: 7,
            clicked_at: DateTime::from_timestamp(1_764_324_000, 0).unwrap(),
            ip: None,
            user_agent: None,
            landing_url: None,
            sub_id: None,
            attributes: attributes.clone(),
        };
        let staged = StagedClick::from(click);
        assert!(staged.click.attributes.is_empty());
        assert_eq!(staged.attributes[0], 1, "jsonb format version");
        let back: serde_json::Map<String, serde_json::Value> = serde_json::from_str(staged.attributes_json()).unwrap();
        assert_eq!(back, attributes);
    }

    #[test]
    fn committed_ranges_merge_where_adjacent_and_never_overlap() {
        assert_eq!(merge_ranges([]), Ok((vec![], 0)));
        assert_eq!(merge_ranges([r(1, 10), r(11, 20), r(31, 40)]), Ok((vec![r(1, 20), r(31, 40)], 30)));
        assert_eq!(merge_ranges([r(5, 5), r(6, 6), r(8, 9)]), Ok((vec![r(5, 6), r(8, 9)], 4)));
        assert_eq!(merge_ranges([r(1, 10), r(10, 20)]), Err(r(10, 20)), "overlap");
        assert_eq!(merge_ranges([r(1, 10), r(3, 4)]), Err(r(3, 4)), "inside");
        assert_eq!(merge_ranges([r(0, 3)]), Err(r(0, 3)), "rows start at 1");
        assert_eq!(merge_ranges([r(4, 3)]), Err(r(4, 3)), "empty range");
    }
}
