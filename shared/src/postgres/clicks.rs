//! One click as PostgreSQL knows it, for the management API's click timeline: the row it came from, its batch,
//! and every delivery attempt's outcome. The click is found through `click_ids` (campaign, click id) and its
//! ingestion time, so only its own month's partition of `clicks` is read.

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio_postgres::GenericClient;

use super::DbError;
use crate::domain::ClickState;

#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClickRecord {
    pub campaign_id: String,
    pub click_id: String,
    pub upload_id: i64,
    /// The data row of the upload it was read from.
    pub row_number: i64,
    pub batch_id: i64,
    /// The batch's state now.
    pub batch_state: String,
    pub clicked_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user_agent: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub landing_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub attributes: serde_json::Value,
    pub attempts: Vec<Attempt>,
}

/// One recorded outcome of a delivery attempt (or a replay).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Attempt {
    pub attempt: i32,
    /// `delivered`, `retrying`, `failed`, `dead`, `skipped` or `replayed`.
    pub outcome: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_status: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub latency_ms: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The answer did not say whether the partner took the click (a reset after sending, a timeout).
    pub ambiguous: bool,
    pub recorded_at: DateTime<Utc>,
}

pub async fn get(db: &impl GenericClient, campaign_id: &str, click_id: &str) -> Result<Option<ClickRecord>, DbError> {
    let Some(row) = db
        .query_opt(
            "SELECT c.upload_id, c.row_number, c.batch_id, b.state, c.clicked_at, c.ingested_at, host(c.ip) AS ip,
                    c.user_agent, c.landing_url, c.sub_id, c.attributes
             FROM click_ids k
             JOIN clicks c ON c.campaign_id = k.campaign_id AND c.click_id = k.click_id
                          AND c.ingested_at = k.ingested_at
             JOIN batches b ON b.batch_id = c.batch_id
             WHERE k.campaign_id = $1 AND k.click_id = $2",
            &[&campaign_id, &click_id],
        )
        .await?
    else {
        return Ok(None);
    };
    let batch_id: i64 = row.get("batch_id");
    let attempts = db
        .query(
            "SELECT attempt, outcome, http_status, latency_ms, error, ambiguous, recorded_at FROM delivery_results
             WHERE batch_id = $1 AND campaign_id = $2 AND click_id = $3 ORDER BY result_id",
            &[&batch_id, &campaign_id, &click_id],
        )
        .await?
        .iter()
        .map(|r| Attempt {
            attempt: r.get("attempt"),
            outcome: r.get("outcome"),
            http_status: r.get("http_status"),
            latency_ms: r.get("latency_ms"),
            error: r.get("error"),
            ambiguous: r.get("ambiguous"),
            recorded_at: r.get("recorded_at"),
        })
        .collect();
    Ok(Some(ClickRecord {
        campaign_id: campaign_id.to_owned(),
        click_id: click_id.to_owned(),
        upload_id: row.get("upload_id"),
        row_number: row.get("row_number"),
        batch_id,
        batch_state: row.get("state"),
        clicked_at: row.get("clicked_at"),
        ingested_at: row.get("ingested_at"),
        ip: row.get("ip"),
        user_agent: row.get("user_agent"),
        landing_url: row.get("landing_url"),
        sub_id: row.get("sub_id"),
        attributes: row.get("attributes"),
        attempts,
    }))
}

/// One click as a search lists it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct ClickSummary {
    pub click_id: String,
    pub upload_id: i64,
    pub row_number: i64,
    pub batch_id: i64,
    pub state: ClickState,
    pub clicked_at: DateTime<Utc>,
    pub ingested_at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sub_id: Option<String>,
    /// Delivery attempts so far.
    pub attempts: i64,
    /// The last attempt's error, while the click is not delivered.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
}

/// Which of a campaign's clicks a search holds; every filter given must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClickFilter {
    pub upload_id: Option<i64>,
    pub state: Option<ClickState>,
    /// Clicked at or after this instant.
    pub clicked_from: Option<DateTime<Utc>>,
    /// Clicked before this instant.
    pub clicked_until: Option<DateTime<Utc>>,
}

/// Up to `limit` (at least 1) of the campaign's clicks matching `filter`, by click id after `after`, through the
/// primary key of each month's partition; and the click id to pass as `after` for the next page.
pub async fn page(
    db: &impl GenericClient,
    campaign_id: &str,
    filter: &ClickFilter,
    after: Option<&str>,
    limit: u32,
) -> Result<(Vec<ClickSummary>, Option<String>), DbError> {
    let limit = limit.max(1);
    let state = filter.state.map(ClickState::as_str);
    // A click's state: delivered once a `delivered` row exists; dead while it has more `dead` rows than
    // `replayed` ones; else what its batch says.
    let rows = db
        .query(
            "SELECT * FROM (
                 SELECT c.click_id, c.upload_id, c.row_number, c.batch_id, c.clicked_at, c.ingested_at, c.sub_id,
                        r.attempts, r.last_error,
                        CASE WHEN r.delivered THEN 'delivered'
                             WHEN r.dead > r.replayed THEN 'dead'
                             WHEN b.state = 'cancelled' THEN 'cancelled'
                             WHEN b.state IN ('claimed', 'queued') THEN 'in_flight'
                             ELSE 'pending' END AS state
                 FROM clicks c
                 JOIN batches b ON b.batch_id = c.batch_id
                 CROSS JOIN LATERAL (
                     SELECT count(*) FILTER (WHERE outcome NOT IN ('replayed', 'skipped')) AS attempts,
                            coalesce(bool_or(outcome = 'delivered'), false) AS delivered,
                            count(*) FILTER (WHERE outcome = 'dead') AS dead,
                            count(*) FILTER (WHERE outcome = 'replayed') AS replayed,
                            (array_agg(error ORDER BY result_id DESC) FILTER (WHERE error IS NOT NULL))[1]
                                AS last_error
                     FROM delivery_results d
                     WHERE d.batch_id = c.batch_id AND d.campaign_id = c.campaign_id AND d.click_id = c.click_id
                 ) r
                 WHERE c.campaign_id = $1
                   AND ($2::bigint IS NULL OR c.upload_id = $2)
                   AND ($3::timestamptz IS NULL OR c.clicked_at >= $3)
                   AND ($4::timestamptz IS NULL OR c.clicked_at < $4)
                   AND ($5::text IS NULL OR c.click_id > $5)
             ) x
             WHERE ($6::text IS NULL OR state = $6)
             ORDER BY click_id LIMIT $7",
            &[
                &campaign_id,
                &filter.upload_id,
                &filter.clicked_from,
                &filter.clicked_until,
                &after,
                &state,
                &(i64::from(limit) + 1),
            ],
        )
        .await?;
    let page = &rows[..rows.len().min(limit as usize)];
    let next = (rows.len() > page.len()).then(|| page.last().map(|r| r.get::<_, String>("click_id"))).flatten();
    let clicks = page
        .iter()
        .map(|r| {
            let state = ClickState::parse(r.get("state")).unwrap_or(ClickState::Pending);
            ClickSummary {
                click_id: r.get("click_id"),
                upload_id: r.get("upload_id"),
                row_number: r.get("row_number"),
                batch_id: r.get("batch_id"),
                state,
                clicked_at: r.get("clicked_at"),
                ingested_at: r.get("ingested_at"),
                sub_id: r.get("sub_id"),
                attempts: r.get("attempts"),
                last_error: if state == ClickState::Delivered { None } else { r.get("last_error") },
            }
        })
        .collect();
    Ok((clicks, next))
}
