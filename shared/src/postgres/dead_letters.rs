//! Dead clicks, for the management API: each with the partner's last answer (status and error), newest first in
//! keyset pages, and grouped by what went wrong. A click is dead while its latest 'dead' row has no later
//! 'replayed' row and it was never delivered (see `migrations/V13__dead_click_replay.sql`).

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use crate::domain::{CampaignId, PartnerId};

/// One dead click.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadClick {
    pub campaign_id: String,
    pub click_id: String,
    pub batch_id: i64,
    pub partner_id: String,
    /// Attempts made before it died.
    pub attempts: i32,
    /// The partner's last HTTP status, when it answered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    /// Why it died (the partner's answer, a timeout, the retry budget spent).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub died_at: DateTime<Utc>,
}

/// Dead clicks sharing a partner, a status and a reason.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct DeadReason {
    pub partner_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub clicks: i64,
    /// Batches holding them: what a replay of this group reopens.
    pub batch_ids: Vec<i64>,
    pub last_died_at: DateTime<Utc>,
}

/// Which dead clicks; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadFilter {
    pub campaign_id: Option<CampaignId>,
    pub partner_id: Option<PartnerId>,
}

/// The dead clicks' last 'dead' rows, as a subquery over `delivery_results d` with the filters as $1 and $2.
const DEAD: &str = "SELECT d.result_id, d.batch_id, d.campaign_id, d.click_id, d.partner_id, d.attempt, d.http_status,
           d.error, d.recorded_at
    FROM delivery_results d
    WHERE d.outcome = 'dead'
      AND ($1::text IS NULL OR d.campaign_id = $1)
      AND ($2::text IS NULL OR d.partner_id = $2)
      AND NOT EXISTS (SELECT 1 FROM delivery_results r
                      WHERE r.batch_id = d.batch_id AND r.campaign_id = d.campaign_id AND r.click_id = d.click_id
                        AND (r.outcome = 'delivered' OR (r.result_id > d.result_id
                                                          AND r.outcome IN ('dead', 'replayed'))))";

fn params(filter: &DeadFilter) -> (Option<&str>, Option<&str>) {
    (filter.campaign_id.as_ref().map(CampaignId::as_str), filter.partner_id.as_ref().map(PartnerId::as_str))
}

/// Up to `limit` (at least 1) dead clicks, newest first, below `before` (the cursor the page before gave); and
/// the cursor of the next page, when there is one.
pub async fn page(
    db: &impl GenericClient,
    filter: &DeadFilter,
    before: Option<i64>,
    limit: u32,
) -> Result<(Vec<DeadClick>, Option<i64>), DbError> {
    let (campaign, partner) = params(filter);
    let rows = db
        .query(
            &format!(
                "SELECT * FROM ({DEAD}) dead WHERE $3::bigint IS NULL OR result_id < $3
                 ORDER BY result_id DESC LIMIT $4"
            ),
            &[&campaign, &partner, &before, &(i64::from(limit.max(1)) + 1)],
        )
        .await?;
    let page = &rows[..rows.len().min(limit.max(1) as usize)];
    let next = (rows.len() > page.len()).then(|| page.last().map(|r| r.get::<_, i64>("result_id"))).flatten();
    let clicks = page
        .iter()
        .map(|r| DeadClick {
            campaign_id: r.get("campaign_id"),
            click_id: r.get("click_id"),
            batch_id: r.get("batch_id"),
            partner_id: r.get("partner_id"),
            attempts: r.get("attempt"),
            http_status: r.get("http_status"),
            reason: r.get("error"),
            died_at: r.get("recorded_at"),
        })
        .collect();
    Ok((clicks, next))
}

/// How many clicks are dead.
pub async fn count(db: &impl GenericClient, filter: &DeadFilter) -> Result<i64, DbError> {
    let (campaign, partner) = params(filter);
    Ok(db.query_one(&format!("SELECT count(*) FROM ({DEAD}) dead"), &[&campaign, &partner]).await?.get(0))
}

/// Dead clicks grouped by partner, status and reason, largest group first (at most 100 groups).
pub async fn reasons(db: &impl GenericClient, filter: &DeadFilter) -> Result<Vec<DeadReason>, DbError> {
    let (campaign, partner) = params(filter);
    let rows = db
        .query(
            &format!(
                "SELECT partner_id, http_status, error, count(*) AS clicks,
                        array_agg(DISTINCT batch_id ORDER BY batch_id) AS batch_ids, max(recorded_at) AS last_died_at
                 FROM ({DEAD}) dead
                 GROUP BY partner_id, http_status, error
                 ORDER BY clicks DESC, last_died_at DESC LIMIT 100"
            ),
            &[&campaign, &partner],
        )
        .await?;
    Ok(rows
        .iter()
        .map(|r| DeadReason {
            partner_id: r.get("partner_id"),
            http_status: r.get("http_status"),
            reason: r.get("error"),
            clicks: r.get("clicks"),
            batch_ids: r.get("batch_ids"),
            last_died_at: r.get("last_died_at"),
        })
        .collect())
}
