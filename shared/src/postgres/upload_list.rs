//! Uploads a page at a time, newest first, for the management API: by campaign (the campaign the key names) and
//! by status, with keyset pages on the upload id (a page starts below the last id of the page before, so pages
//! stay stable while files keep arriving). Every value is a query parameter.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use crate::domain::CampaignId;
use crate::ingest::campaign_from_key;

/// Where an upload is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum UploadStatus {
    /// Being read (or waiting for the retry of an invocation that ran out of time).
    Processing,
    Completed,
    /// The file could not be read on; the rows before the point where reading stopped are kept.
    Failed,
}

impl UploadStatus {
    pub const NAMES: [&'static str; 3] = ["processing", "completed", "failed"];

    pub fn parse(text: &str) -> Option<Self> {
        match text {
            "processing" => Some(Self::Processing),
            "completed" => Some(Self::Completed),
            "failed" => Some(Self::Failed),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        Self::NAMES[self as usize]
    }
}

/// One upload as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct UploadSummary {
    pub upload_id: i64,
    pub bucket: String,
    pub object_key: String,
    /// The campaign the key names (`incoming/<campaign>/...`), when it names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub campaign_id: Option<String>,
    pub status: UploadStatus,
    /// Why it failed, or what every rejected row had in common.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub object_size: Option<i64>,
    /// Rows read so far: `accepted_rows + rejected_rows + duplicate_rows`.
    pub rows: i64,
    pub accepted_rows: i64,
    pub rejected_rows: i64,
    pub duplicate_rows: i64,
    /// Rejected rows per reason code, e.g. `{"invalid_clicked_at": 2}` (written when the upload ends).
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub reject_counts: serde_json::Value,
    /// The rejects report's key, when rows were rejected.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rejects_key: Option<String>,
    pub created_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub completed_at: Option<DateTime<Utc>>,
}

/// Which uploads a list holds; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UploadFilter {
    pub campaign_id: Option<CampaignId>,
    pub status: Option<UploadStatus>,
}

const COLUMNS: &str = "upload_id, bucket, object_key, status, status_detail, object_size, rows_done, accepted_rows,
    rejected_rows, duplicate_rows, reject_counts, rejects_key, created_at, completed_at";

/// Up to `limit` (at least 1) uploads matching `filter`, newest first, below `before` (an upload id); and the id
/// to pass as `before` for the next page, when there is one.
pub async fn page(
    db: &impl GenericClient,
    filter: &UploadFilter,
    before: Option<i64>,
    limit: u32,
) -> Result<(Vec<UploadSummary>, Option<i64>), DbError> {
    let limit = limit.max(1);
    let prefix = filter.campaign_id.as_ref().map(|c| format!("incoming/{c}/"));
    let status = filter.status.map(UploadStatus::as_str);
    let rows = db
        .query(
            &format!(
                "SELECT {COLUMNS} FROM uploads
                 WHERE ($1::text IS NULL OR starts_with(object_key, $1))
                   AND ($2::text IS NULL OR status = $2)
                   AND ($3::bigint IS NULL OR upload_id < $3)
                 ORDER BY upload_id DESC LIMIT $4"
            ),
            &[&prefix, &status, &before, &(i64::from(limit) + 1)],
        )
        .await?;
    // One row more than the page says whether another page follows.
    let page = &rows[..rows.len().min(limit as usize)];
    let next = (rows.len() > page.len()).then(|| page.last().map(|r| r.get::<_, i64>("upload_id"))).flatten();
    Ok((page.iter().map(summary).collect::<Result<_, _>>()?, next))
}

/// One upload.
pub async fn get(db: &impl GenericClient, upload_id: i64) -> Result<Option<UploadSummary>, DbError> {
    let sql = format!("SELECT {COLUMNS} FROM uploads WHERE upload_id = $1");
    db.query_opt(&sql, &[&upload_id]).await?.as_ref().map(summary).transpose()
}

fn summary(row: &tokio_postgres::Row) -> Result<UploadSummary, DbError> {
    let object_key: String = row.try_get("object_key")?;
    let status: String = row.try_get("status")?;
    Ok(UploadSummary {
        upload_id: row.try_get("upload_id")?,
        bucket: row.try_get("bucket")?,
        campaign_id: campaign_from_key(&object_key).ok().flatten().map(|c| c.to_string()),
        object_key,
        status: UploadStatus::parse(&status).ok_or_else(|| {
            DbError::Invalid(format!("upload status {status:?} is not one of processing, completed, failed"))
        })?,
        status_detail: row.try_get("status_detail")?,
        object_size: row.try_get("object_size")?,
        rows: row.try_get("rows_done")?,
        accepted_rows: row.try_get("accepted_rows")?,
        rejected_rows: row.try_get("rejected_rows")?,
        duplicate_rows: row.try_get("duplicate_rows")?,
        reject_counts: row.try_get("reject_counts")?,
        rejects_key: row.try_get("rejects_key")?,
        created_at: row.try_get("created_at")?,
        completed_at: row.try_get("completed_at")?,
    })
}
