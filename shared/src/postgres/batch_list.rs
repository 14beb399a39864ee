//! Batches a page at a time, for the management API: by campaign, upload, state and due time, newest first, with
//! keyset pages on the batch id. Every value is a query parameter.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use crate::domain::{BatchState, CampaignId};

/// One batch as lists show it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BatchSummary {
    pub batch_id: i64,
    pub campaign_id: String,
    pub partner_id: String,
    pub upload_id: i64,
    /// `pending`, `claimed`, `queued`, `delivered`, `partially_failed`, `dead` or `cancelled`.
    pub state: String,
    pub clicks: i32,
    pub due_at: DateTime<Utc>,
    /// The rule the pacer last deferred it for, while it waits.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub defer_reason: Option<String>,
    /// Claims so far (a pacer's claim, or a lease taken back).
    pub claims: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub released_at: Option<DateTime<Utc>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
}

/// Which batches a list holds; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BatchFilter {
    pub campaign_id: Option<CampaignId>,
    pub upload_id: Option<i64>,
    pub state: Option<BatchState>,
    /// Due at or after this instant.
    pub due_from: Option<DateTime<Utc>>,
    /// Due before this instant.
    pub due_until: Option<DateTime<Utc>>,
}

/// Up to `limit` (at least 1) batches matching `filter`, newest first, below `before` (a batch id); and the id to
/// pass as `before` for the next page, when there is one.
pub async fn page(
    db: &impl GenericClient,
    filter: &BatchFilter,
    before: Option<i64>,
    limit: u32,
) -> Result<(Vec<BatchSummary>, Option<i64>), DbError> {
    let limit = limit.max(1);
    let campaign = filter.campaign_id.as_ref().map(CampaignId::as_str);
    let state = filter.state.map(BatchState::as_str);
    let rows = db
        .query(
            "SELECT batch_id, campaign_id, partner_id, upload_id, state, click_count, due_at, defer_reason,
                    claim_count, released_at, finished_at, created_at
             FROM batches
             WHERE ($1::text IS NULL OR campaign_id = $1)
               AND ($2::bigint IS NULL OR upload_id = $2)
               AND ($3::text IS NULL OR state = $3)
               AND ($4::timestamptz IS NULL OR due_at >= $4)
               AND ($5::timestamptz IS NULL OR due_at < $5)
               AND ($6::bigint IS NULL OR batch_id < $6)
             ORDER BY batch_id DESC LIMIT $7",
            &[
                &campaign,
                &filter.upload_id,
                &state,
                &filter.due_from,
                &filter.due_until,
                &before,
                &(i64::from(limit) + 1),
            ],
        )
        .await?;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = (rows.len() > page.len()).then(|| page.last().map(|r| r.get::<_, i64>("batch_id"))).flatten();
    let batches = page
        .iter()
        .map(|r| BatchSummary {
            batch_id: r.get("batch_id"),
            campaign_id: r.get("campaign_id"),
            partner_id: r.get("partner_id"),
            upload_id: r.get("upload_id"),
            state: r.get("state"),
            clicks: r.get("click_count"),
            due_at: r.get("due_at"),
            defer_reason: r.get("defer_reason"),
            claims: r.get("claim_count"),
            released_at: r.get("released_at"),
            finished_at: r.get("finished_at"),
            created_at: r.get("created_at"),
        })
        .collect();
    Ok((batches, next))
}
