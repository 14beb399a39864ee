//! The slicer: an S3 upload of a click file becomes validated clicks and paced batches in PostgreSQL.
//!
//! Every row is taken exactly once or rejected with a reason. Uploads are idempotent per (bucket, key, version
//! or ETag); a file too large for one invocation stops between chunks and the next invocation resumes, reading
//! past every committed chunk.
//!
//! A blocking thread streams and validates the file into chunks; up to `writers` connections write chunks at
//! the same time, each chunk in one transaction, so chunks commit in any order (see
//! [`clickpacer::postgres::uploads`]). At most one chunk waits between the reader and the writers: memory stays
//! flat whatever the file's size.

mod reader;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use aws_lambda_events::event::s3::{S3Event, S3EventRecord};
use chrono::Utc;
use clickpacer::aws::s3::{ObjectVersion, S3Objects};
use clickpacer::domain::{Campaign, CampaignId};
use clickpacer::ingest::{CampaignDirectory, IngestLimits, UploadKey, campaign_from_key, decode_event_key, rejects};
use clickpacer::postgres::uploads::{
    self, BatchTerms, ChunkError, ChunkResult, LeaseOutcome, UploadCounts, UploadIdentity, UploadLease,
};
use clickpacer::postgres::{DbError, PgPool, campaigns};
use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::io::SyncIoBridge;

pub use clickpacer::invocation::{Deadline, TimeBudget};
pub use reader::{Chunk, ReadError};

/// What the slicer needs, built once per execution environment.
pub struct Slicer {
    pub pool: PgPool,
    pub objects: S3Objects,
    pub settings: SlicerSettings,
}

#[derive(Debug, Clone)]
pub struct SlicerSettings {
    /// Rows validated and committed together.
    pub chunk_rows: usize,
    /// Connections writing chunks of one upload at the same time (at most the pool's size).
    pub writers: usize,
    /// Stop taking new chunks when less than this is left: enough to commit one chunk and write the report.
    pub reserve: Duration,
    /// How long a lease lasts without renewal (it is renewed every third of it while the upload is worked on):
    /// a crashed invocation's upload is free again after it.
    pub lease_for: Duration,
    /// Most rejected rows listed in one report (all are counted and kept in the database).
    pub max_report_rows: usize,
    /// How much one file may hold.
    pub limits: IngestLimits,
}

impl Default for SlicerSettings {
    fn default() -> Self {
        Self {
            chunk_rows: 10_000,
            writers: 2,
            reserve: Duration::from_secs(20),
            lease_for: Duration::from_secs(60),
            max_report_rows: 100_000,
            limits: IngestLimits::default(),
        }
    }
}

/// What happened to one object.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum UploadOutcome {
    Completed {
        upload_id: i64,
        counts: UploadCounts,
        rejects_key: Option<String>,
    },
    /// The file cannot be read (not CSV or NDJSON, bad gzip, no click_id column): the upload failed.
    Failed {
        upload_id: i64,
        reason: String,
        counts: UploadCounts,
    },
    /// Time ran out: committed up to a checkpoint, to be resumed by the next invocation.
    Suspended {
        upload_id: i64,
        counts: UploadCounts,
    },
    /// A duplicate event for an upload already finished.
    AlreadyFinished {
        upload_id: i64,
        status: String,
    },
    /// Another invocation is working on it right now.
    InProgressElsewhere {
        upload_id: i64,
    },
    /// Not a click file upload (e.g. outside `incoming/`, or S3's test event).
    Ignored {
        reason: String,
    },
}

impl UploadOutcome {
    /// The outcome's name, as the serialised `outcome` field and log lines spell it.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Completed { .. } => "completed",
            Self::Failed { .. } => "failed",
            Self::Suspended { .. } => "suspended",
            Self::AlreadyFinished { .. } => "already_finished",
            Self::InProgressElsewhere { .. } => "in_progress_elsewhere",
            Self::Ignored { .. } => "ignored",
        }
    }

    pub fn upload_id(&self) -> Option<i64> {
        match self {
            Self::Completed { upload_id, .. }
            | Self::Failed { upload_id, .. }
            | Self::Suspended { upload_id, .. }
            | Self::AlreadyFinished { upload_id, .. }
            | Self::InProgressElsewhere { upload_id } => Some(*upload_id),
            Self::Ignored { .. } => None,
        }
    }

    /// The rows read so far, for outcomes that read the file.
    pub fn counts(&self) -> Option<&UploadCounts> {
        match self {
            Self::Completed { counts, .. } | Self::Failed { counts, .. } | Self::Suspended { counts, .. } => {
                Some(counts)
            }
            _ => None,
        }
    }

    /// Why the upload failed or was ignored.
    pub fn reason(&self) -> Option<&str> {
        match self {
            Self::Failed { reason, .. } | Self::Ignored { reason } => Some(reason),
            _ => None,
        }
    }
}

/// Logs one object's outcome as fields (queryable in CloudWatch Logs Insights), not as a `Debug` dump.
fn log_outcome(bucket: &str, key: &str, outcome: &UploadOutcome) {
    let counts = outcome.counts();
    tracing::info!(
        bucket,
        key,
        outcome = outcome.name(),
        upload_id = outcome.upload_id(),
        rows = counts.map(|c| c.rows),
        accepted = counts.map(|c| c.accepted),
        rejected = counts.map(|c| c.rejected),
        duplicate = counts.map(|c| c.duplicate),
        reason = outcome.reason(),
        "object handled"
    );
}

#[derive(Debug, Clone, Serialize)]
pub struct ObjectReport {
    pub bucket: String,
    pub key: String,
    #[serde(flatten)]
    pub outcome: UploadOutcome,
}

#[derive(Debug, thiserror::Error)]
pub enum SlicerError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("{0}")]
    Aws(#[from] clickpacer::aws::AwsError),
    #[error("the upload's lease was lost to another invocation")]
    LeaseLost,
    #[error("{0}")]
    Transient(String),
}

impl From<ChunkError> for SlicerError {
    fn from(e: ChunkError) -> Self {
        match e {
            ChunkError::LeaseLost => Self::LeaseLost,
            ChunkError::Db(e) => Self::Db(e),
        }
    }
}

/// Unfinished work in this event: Lambda's retry (or the local runner) invokes again and the uploads resume.
#[derive(Debug, thiserror::Error)]
#[error("{unfinished} of {total} objects are not finished yet; retry resumes them: {details}")]
pub struct RetryNeeded {
    pub unfinished: usize,
    pub total: usize,
    pub details: String,
    pub reports: Vec<ObjectReport>,
}

/// Handles one S3 notification. Every record is handled, whatever happens to the others; the event fails
/// (so that it is retried) only when some object is left unfinished (suspended or a transient error).
pub async fn handle_event(
    slicer: &Slicer,
    event: S3Event,
    budget: &dyn TimeBudget,
) -> Result<Vec<ObjectReport>, RetryNeeded> {
    let total = event.records.len();
    let mut reports = Vec::with_capacity(total);
    let mut unfinished = Vec::new();
    for record in event.records {
        let (bucket, key) = object_of(&record);
        let outcome = slice_object(slicer, &record, budget).await;
        match outcome {
            Ok(outcome) => {
                if matches!(outcome, UploadOutcome::Suspended { .. }) {
                    unfinished.push(format!("{key}: suspended at the time budget"));
                }
                log_outcome(&bucket, &key, &outcome);
                reports.push(ObjectReport { bucket, key, outcome });
            }
            Err(e) => {
                tracing::error!(bucket, key, error = %e, "object not finished");
                unfinished.push(format!("{key}: {e}"));
            }
        }
    }
    if unfinished.is_empty() {
        Ok(reports)
    } else {
        Err(RetryNeeded { unfinished: unfinished.len(), total, details: unfinished.join("; "), reports })
    }
}

fn object_of(record: &S3EventRecord) -> (String, String) {
    let bucket = record.s3.bucket.name.clone().unwrap_or_default();
    let raw = record.s3.object.key.clone().unwrap_or_default();
    let key = decode_event_key(&raw).unwrap_or(raw);
    (bucket, key)
}

async fn slice_object(
    slicer: &Slicer,
    record: &S3EventRecord,
    budget: &dyn TimeBudget,
) -> Result<UploadOutcome, SlicerError> {
    let (bucket, key) = object_of(record);
    if record.event_name.as_deref().is_some_and(|n| !n.starts_with("ObjectCreated")) {
        return Ok(UploadOutcome::Ignored { reason: format!("event {:?}", record.event_name) });
    }
    if bucket.is_empty() || !key.starts_with("incoming/") {
        return Ok(UploadOutcome::Ignored { reason: "not under incoming/".into() });
    }
    let event_version = record.s3.object.version_id.clone().filter(|v| !v.is_empty() && v != "null");
    let event_etag = record.s3.object.e_tag.clone().map(|v| v.trim_matches('"').to_owned()).filter(|v| !v.is_empty());
    let version = event_version.clone().or(event_etag.clone());

    // The identity comes from the event when it carries one, so a duplicate event maps to the same upload
    // even if the object was overwritten since; otherwise from the object itself. The bytes read are the ones
    // the event names (its version, or the object while its ETag is still the event's), never newer ones
    // under the old identity: those have their own event.
    let wanted = match (event_version, event_etag) {
        (Some(id), _) => ObjectVersion::Version(id),
        (None, Some(etag)) => ObjectVersion::ETag(etag),
        (None, None) => ObjectVersion::Latest,
    };
    // A live lease elsewhere is waited out for one lease period: a holder that dies (killed, out of memory, at
    // its timeout) stops renewing, and this invocation (often its own retry) takes the upload over; one still
    // holding it after that is alive, and its own event's retries cover it from here on.
    let started = std::time::Instant::now();
    let poll = (slicer.settings.lease_for / 10).clamp(Duration::from_millis(100), Duration::from_secs(2));
    let (lease, info, body) = loop {
        let Some((info, body)) = slicer.objects.open_version(&bucket, &key, &wanted).await? else {
            let reason = match &wanted {
                ObjectVersion::Version(id) => format!("version {id} of the object no longer exists"),
                _ => "the object was overwritten or deleted after this event (its ETag no longer matches); \
                      the newer object's own event ingests it"
                    .to_owned(),
            };
            tracing::warn!(bucket, key, reason, "event names bytes that are gone");
            return Ok(UploadOutcome::Ignored { reason });
        };
        let identity = UploadIdentity {
            bucket: bucket.clone(),
            key: key.clone(),
            version: version.clone().unwrap_or(info.version.clone()),
            size: info.size,
        };
        let client = slicer.pool.get().await.map_err(DbError::from)?;
        match uploads::lease(&**client, &identity, slicer.settings.lease_for).await? {
            LeaseOutcome::Acquired(lease) => break (lease, info, body),
            LeaseOutcome::Finished { upload_id, status, .. } => {
                return Ok(UploadOutcome::AlreadyFinished { upload_id, status });
            }
            LeaseOutcome::LeasedElsewhere { upload_id } => {
                // Not read while waiting: the stream is opened again once the lease is ours.
                drop(body);
                if started.elapsed() > slicer.settings.lease_for + poll {
                    return Ok(UploadOutcome::InProgressElsewhere { upload_id });
                }
                if budget.remaining() < slicer.settings.reserve + 2 * poll {
                    return Err(SlicerError::Transient(format!(
                        "upload {upload_id} is leased elsewhere and time ran out waiting for it"
                    )));
                }
                drop(client);
                tokio::time::sleep(poll).await;
            }
        }
    };
    // The lease is renewed while the upload is worked on; if it is lost (the database judged it expired), the
    // work stops: another invocation owns the upload now.
    // On a task of its own, so that nothing the invocation does can starve it, and stopped with the invocation
    // (a killed invocation's lease must run out).
    let (lost, lease_lost) = tokio::sync::oneshot::channel();
    let _heartbeat = AbortOnDrop(tokio::spawn(keep_leased(
        slicer.pool.clone(),
        slicer.settings.lease_for,
        lease.upload_id,
        lease.owner,
        lost,
    )));
    tokio::select! {
        biased;
        outcome = ingest(slicer, lease, info, body, bucket, key, budget) => outcome,
        Ok(()) = lease_lost => Err(SlicerError::LeaseLost),
    }
}

/// A task that ends when its handle is dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Renews the upload's lease every third of its length; says so on `lost` once it is no longer ours.
async fn keep_leased(
    pool: PgPool,
    lease_for: Duration,
    upload_id: i64,
    owner: uuid::Uuid,
    lost: tokio::sync::oneshot::Sender<()>,
) {
    loop {
        tokio::time::sleep(lease_for / 3).await;
        let renewed = match pool.get().await {
            Ok(client) => uploads::renew(&**client, upload_id, owner, lease_for).await,
            Err(e) => Err(DbError::from(e)),
        };
        match renewed {
            Ok(true) => {}
            Ok(false) => {
                tracing::warn!(upload_id, "the upload's lease was taken over");
                let _ = lost.send(());
                return;
            }
            // The database is unreachable: the chunk fence decides; keep trying.
            Err(e) => tracing::warn!(upload_id, error = %e, "lease not renewed"),
        }
    }
}

/// Reads the leased upload to its end (or its time budget) and finishes it.
async fn ingest(
    slicer: &Slicer,
    mut lease: UploadLease,
    info: clickpacer::aws::s3::ObjectInfo,
    body: impl tokio::io::AsyncRead + Send + Unpin + 'static,
    bucket: String,
    key: String,
    budget: &dyn TimeBudget,
) -> Result<UploadOutcome, SlicerError> {
    let client = slicer.pool.get().await.map_err(DbError::from)?;
    uploads::prepare_click_partitions(&**client).await?;
    drop(client);

    let upload_key = UploadKey { bucket: bucket.clone(), key: key.clone() };
    let key_campaign = match campaign_from_key(&key) {
        Ok(campaign) => campaign,
        Err(e) => {
            let reason = format!("the key names an invalid campaign: {e}");
            return fail(slicer, &lease, &upload_key, reason).await;
        }
    };
    if let Some(size) = info.size.filter(|&size| size as u64 > slicer.settings.limits.max_object_bytes) {
        let reason = format!(
            "the object is {size} bytes, more than the limit of {} bytes ({})",
            slicer.settings.limits.max_object_bytes,
            clickpacer::config::vars::SLICER_MAX_OBJECT_BYTES
        );
        return fail(slicer, &lease, &upload_key, reason).await;
    }
    let (campaign_list, unloadable) =
        campaigns::list_loadable(&**slicer.pool.get().await.map_err(DbError::from)?).await?;
    let statuses = CampaignDirectory {
        statuses: campaign_list.iter().map(|c| (c.campaign_id.clone(), c.status)).collect(),
        unusable: unloadable.into_iter().collect(),
    };
    let campaigns_by_id: HashMap<CampaignId, Campaign> =
        campaign_list.into_iter().map(|c| (c.campaign_id.clone(), c)).collect();

    // The reader runs ahead of the writers by at most one waiting chunk: with one chunk being read and one being
    // written per writer, memory stays flat whatever the file's size.
    // The mapping and the zone of naive timestamps are the key campaign's (a file without one in its key reads
    // with the defaults).
    let key_campaign_config = key_campaign.as_ref().and_then(|id| campaigns_by_id.get(id));
    let mapping = key_campaign_config.map(|c| c.ingest.clone()).unwrap_or_default();
    let naive_zone = mapping.timestamp_zone.resolve(key_campaign_config.map_or(chrono_tz::Tz::UTC, |c| c.time_zone));
    let (tx, mut rx) = mpsc::channel(1);
    let plan = reader::ReadPlan {
        key: key.clone(),
        content_encoding: info.content_encoding.clone(),
        key_campaign,
        campaigns: statuses,
        committed: std::mem::take(&mut lease.committed),
        chunk_rows: slicer.settings.chunk_rows,
        limits: slicer.settings.limits,
        mapping,
        naive_zone,
    };
    let reading = tokio::task::spawn_blocking(move || reader::read_file(SyncIoBridge::new(body), plan, tx));

    // Chunks are written on up to `writers` connections at once, each chunk in its own transaction; they commit
    // in any order (the committed row ranges, not a prefix, are the checkpoint).
    let writers = slicer.settings.writers.clamp(1, slicer.pool.status().max_size.max(1));
    let upload = Arc::new(lease.writer());
    let campaigns_by_id = Arc::new(campaigns_by_id);
    let mut idle: Vec<PgClient> = Vec::with_capacity(writers);
    let mut running: JoinSet<(PgClient, Result<ChunkResult, ChunkError>)> = JoinSet::new();
    let mut stop = None;
    while let Some(message) = rx.recv().await {
        let chunk = match message {
            Ok(chunk) => chunk,
            Err(ReadError::File(e)) => {
                stop = Some(Stop::Unreadable(e.to_string()));
                break;
            }
            Err(ReadError::Transient(e)) => {
                stop = Some(Stop::Error(SlicerError::Transient(e)));
                break;
            }
        };
        if budget.remaining() < slicer.settings.reserve {
            // Stop between chunks: everything committed so far stays, the rest is read again next time.
            stop = Some(Stop::Suspend);
            break;
        }
        // A connection for the chunk: a new one while fewer than `writers` are busy, else the first to be done.
        while let Some(joined) = running.try_join_next() {
            if let Some(e) = take_back(joined, &mut lease.done, &mut idle) {
                stop = Some(Stop::Error(e));
                break;
            }
        }
        if stop.is_some() {
            break;
        }
        let client = match idle.pop() {
            Some(client) => client,
            None if running.len() < writers => match slicer.pool.get().await {
                Ok(client) => client,
                Err(e) => {
                    stop = Some(Stop::Error(DbError::from(e).into()));
                    break;
                }
            },
            None => {
                let joined = running.join_next().await.expect("a writer is running");
                if let Some(e) = take_back(joined, &mut lease.done, &mut idle) {
                    stop = Some(Stop::Error(e));
                    break;
                }
                idle.pop().expect("the writer gave its connection back")
            }
        };
        let upload = Arc::clone(&upload);
        let campaigns_by_id = Arc::clone(&campaigns_by_id);
        running.spawn(async move {
            let mut client = client;
            let now = Utc::now();
            let result = uploads::write_chunk(&mut client, &upload, &chunk.as_rows(), |campaign| {
                let campaign = campaigns_by_id.get(campaign)?;
                Some(BatchTerms {
                    size: campaign.batch_size as usize,
                    due_at: clickpacer::ingest::schedule::first_due_at(campaign, now),
                })
            })
            .await;
            (client, result)
        });
    }
    // Whatever stopped the loop, the chunks already handed to writers finish (each commits whole or not at all)
    // and are counted.
    drop(rx);
    while let Some(joined) = running.join_next().await {
        if let Some(e) = take_back(joined, &mut lease.done, &mut idle)
            && !matches!(stop, Some(Stop::Error(_)))
        {
            stop = Some(Stop::Error(e));
        }
    }
    let _ = reading.await;
    let release = async |idle: &mut Vec<PgClient>, lease: &UploadLease| -> Result<(), SlicerError> {
        let client = match idle.pop() {
            Some(client) => client,
            None => slicer.pool.get().await.map_err(DbError::from)?,
        };
        uploads::release(&**client, lease).await?;
        Ok(())
    };
    match stop {
        Some(Stop::Error(SlicerError::LeaseLost)) => Err(SlicerError::LeaseLost),
        Some(Stop::Error(e)) => {
            // Give the upload up at once, so that the retry resumes it instead of waiting for the lease to expire.
            if let Err(release_error) = release(&mut idle, &lease).await {
                tracing::warn!(upload_id = lease.upload_id, error = %release_error, "releasing the lease failed");
            }
            Err(e)
        }
        Some(Stop::Suspend) => {
            release(&mut idle, &lease).await?;
            Ok(UploadOutcome::Suspended { upload_id: lease.upload_id, counts: lease.done })
        }
        Some(Stop::Unreadable(reason)) => {
            drop(idle);
            fail(slicer, &lease, &upload_key, reason).await
        }
        None => {
            drop(idle);
            let rejects_key = write_rejects_report(slicer, &lease, &upload_key).await?;
            let client = slicer.pool.get().await.map_err(DbError::from)?;
            uploads::finish(&**client, &lease, None, rejects_key.as_deref()).await?;
            Ok(UploadOutcome::Completed { upload_id: lease.upload_id, counts: lease.done, rejects_key })
        }
    }
}

type PgClient = uploads::PooledClient;

/// Why the chunk loop stopped before the end of the file.
enum Stop {
    /// The file cannot be read on: the upload fails with this reason.
    Unreadable(String),
    /// Time is running out.
    Suspend,
    Error(SlicerError),
}

/// Counts a finished chunk writer's chunk and takes its connection back; returns its error.
fn take_back(
    joined: Result<(PgClient, Result<ChunkResult, ChunkError>), tokio::task::JoinError>,
    done: &mut UploadCounts,
    idle: &mut Vec<PgClient>,
) -> Option<SlicerError> {
    match joined {
        Ok((client, Ok(result))) => {
            done.add(&result);
            idle.push(client);
            None
        }
        // A writer whose chunk failed hands its connection back to the pool, which checks it before reuse.
        Ok((_, Err(e))) => Some(e.into()),
        Err(e) => Some(SlicerError::Transient(format!("a chunk writer stopped: {e}"))),
    }
}

async fn fail(
    slicer: &Slicer,
    lease: &UploadLease,
    upload_key: &UploadKey,
    reason: String,
) -> Result<UploadOutcome, SlicerError> {
    let rejects_key = write_rejects_report(slicer, lease, upload_key).await?;
    let client = slicer.pool.get().await.map_err(DbError::from)?;
    uploads::finish(&**client, lease, Some(&reason), rejects_key.as_deref()).await?;
    Ok(UploadOutcome::Failed { upload_id: lease.upload_id, reason, counts: lease.done })
}

/// Writes the rejects report ([`UploadKey::rejects_key`]) when the upload has rejected rows (all of them, from every invocation).
async fn write_rejects_report(
    slicer: &Slicer,
    lease: &UploadLease,
    upload_key: &UploadKey,
) -> Result<Option<String>, SlicerError> {
    if lease.done.rejected == 0 {
        return Ok(None);
    }
    let client = slicer.pool.get().await.map_err(DbError::from)?;
    let limit = slicer.settings.max_report_rows;
    let rows = uploads::rejects(&**client, lease.upload_id, limit as i64).await?;
    let mut report = csv::Writer::from_writer(Vec::new());
    let csv_error = |e: csv::Error| SlicerError::Transient(format!("writing the rejects report: {e}"));
    report.write_record(rejects::REPORT_HEADER).map_err(csv_error)?;
    for row in &rows {
        let cells =
            rejects::report_cells(row.row_number as u64, &row.reason, row.field.as_deref().unwrap_or(""), &row.raw);
        report.write_record(cells).map_err(csv_error)?;
    }
    if lease.done.rejected > limit as u64 {
        let more = format!("{} more rejected rows are not listed", lease.done.rejected - limit as u64);
        report.write_record(["", more.as_str(), "", ""]).map_err(csv_error)?;
    }
    let body = report.into_inner().map_err(|e| SlicerError::Transient(e.to_string()))?;
    let key = upload_key.rejects_key();
    slicer.objects.put(&upload_key.bucket, &key, body, "text/csv").await?;
    Ok(Some(key))
}
